"""preprocessing_dataset.py: a CSV or class folders in, speaker-independent features out, clips of any length.

The corpora are synthesised here with the project's own voice generator, then written the way real corpora
come: nested relative paths, WAV and FLAC, 8 kHz and 22.05 kHz, 0.3 s to 10 s. Expected values are computed here
(librosa, scikit-learn), never taken from the code under test.
"""
import csv
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import librosa
import numpy as np
import pytest
import soundfile as sf
from sklearn import metrics as skm

import demo_corpus
import feat_analysis
import preprocessing_dataset as pipeline
from routine_helpers import REPO, instance, run_routine, write_routine
from utility_functions import (XvalError, check_dataset, check_item_sums, dataset_fingerprint, dataset_paths,
                               feature_sums, load_clip_ids, load_config, load_dataset, load_item_sums)

SPEAKERS = ("spk1", "spk2", "spk3", "spk4")
EMOTIONS = {1: "neutral", 3: "happy", 5: "angry"}  # demo corpus emotion code -> label
LENGTHS = (0.3, 0.8, 1.6, 10.0, 2.4, 0.5)  # seconds, cycled over the clips of a speaker
SMALL = {"features": {"n_fft": "512", "win_length": "512", "hop_length": "256", "n_mels": "32"},
         "preprocessing": {"clip_seconds": "1.0", "window_seconds": "0.5", "window_hop_seconds": "0.25"}}


def synthesise(speaker_index, emotion, take, seconds):
    """One synthetic clip at 48 kHz, float32 (samples,)."""
    return demo_corpus.synthesize_clip(speaker_index + 1, emotion, 1, 1 + take % 2, 1 + take // 2, seed=7,
                                       clip_seconds_range=(seconds, seconds))


def write_audio(path, signal, rate, kind):
    """Resample a 48 kHz signal to rate and write it as WAV (16-bit) or FLAC."""
    path.parent.mkdir(parents=True, exist_ok=True)
    resampled = librosa.resample(signal, orig_sr=48000, target_sr=rate)
    sf.write(path, resampled, rate, subtype="PCM_16", format=kind)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """4 speakers x 3 emotions x 2 takes = 24 clips under audio/<speaker>/<session>/, every other one FLAC at
    22.05 kHz (else WAV at 8 kHz), lengths cycling through LENGTHS; corpus.csv lists them with extra columns."""
    root = tmp_path_factory.mktemp("csv_corpus")
    rows = []
    for index, speaker in enumerate(SPEAKERS):
        for number, (code, label) in enumerate((code, label) for code in EMOTIONS for label in [EMOTIONS[code]]
                                               for _ in range(2)):
            seconds = LENGTHS[number % len(LENGTHS)]
            flac = number % 2 == 1
            file = f"audio/{speaker}/session{number % 2 + 1}/clip{number}.{'flac' if flac else 'wav'}"
            write_audio(root / file, synthesise(index, code, number, seconds), 22050 if flac else 8000,
                        "FLAC" if flac else "WAV")
            rows.append({"file": file, "label": label, "speaker": speaker, "gender": "f" if index % 2 else "m",
                         "arousal": f"{code / 5:.1f}"})
    with open(root / "corpus.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return {"root": root, "rows": rows}


@pytest.fixture
def small_config(config_factory):
    return config_factory(SMALL)


def build_from_csv(csv_path, config_path, dataset, **options):
    """Run the CSV front end and the pipeline in this process (one job: no fork in a test process)."""
    config = load_config(config_path)
    clips, skipped, stats = pipeline.csv_table(csv_path, "file", options.pop("label_column", "label"),
                                               options.pop("fold_by", "speaker"))
    table = {"clips": clips, "skipped": skipped, "stats": stats, "source": str(csv_path),
             "fold_by": "speaker", "regroup": "give --fold-by the column of the speakers"}
    return pipeline.build_dataset(table, dataset, config, options.pop("target", "classification"), jobs=1,
                                  **options)


def read_dataset(config_path, dataset):
    config = load_config(config_path)
    paths = dataset_paths(config["paths"]["features_folder"], dataset)
    predictors, targets = load_dataset(config["paths"]["features_folder"], dataset)
    metadata = json.loads(paths["metadata"].read_text(encoding="utf-8"))
    return predictors, targets, metadata, paths


def librosa_log_mel(path, config):
    """The expected fixed-length log-mel of one file, computed the plain way with librosa."""
    pre, feat = config["preprocessing"], config["features"]
    signal, _ = librosa.load(path, sr=pre["sample_rate"])
    n = int(round(pre["clip_seconds"] * pre["sample_rate"]))
    start = (len(signal) - n) // 2 if len(signal) > n else 0
    signal = np.pad(signal[start:start + n], (0, max(0, n - len(signal))))
    power = librosa.feature.melspectrogram(y=signal, sr=pre["sample_rate"], n_fft=feat["n_fft"],
                                           hop_length=feat["hop_length"], win_length=feat["win_length"],
                                           window=feat["window"], n_mels=feat["n_mels"], fmin=feat["fmin"],
                                           fmax=pre["sample_rate"] / 2)
    return librosa.power_to_db(power, top_db=80.0).T


# ----------------------------------------------------------------------------------------------------------------
# The CSV front end

def test_a_csv_with_nested_paths_and_mixed_formats_gives_per_speaker_arrays(corpus, small_config, capsys):
    summary = build_from_csv(corpus["root"] / "corpus.csv", small_config, "from_csv")
    printed = capsys.readouterr().out
    predictors, targets, metadata, _ = read_dataset(small_config, "from_csv")
    assert sorted(predictors) == list(SPEAKERS) and summary["clips"] == 24
    assert all(len(predictors[speaker]) == 6 for speaker in SPEAKERS)
    assert metadata["class_names"] == ["angry", "happy", "neutral"]  # the sorted distinct labels
    assert metadata["foldable_item"] == "speaker" and metadata["speaker_independent"] is True
    assert metadata["audio_found"]["sample_rates"] == {"8000": 12, "22050": 12}
    assert metadata["audio_found"]["seconds"]["min"] == pytest.approx(0.3, abs=0.01)
    assert metadata["audio_found"]["seconds"]["max"] == pytest.approx(10.0, abs=0.01)
    assert "8000 Hz: 12, 22050 Hz: 12" in printed and "min 0.30 s" in printed and "max 10.00 s" in printed
    config = load_config(small_config)
    for row, record in enumerate(rec for rec in metadata["clips"] if rec["speaker"] == "spk2"):
        source = next(r for r in corpus["rows"] if r["file"] == record["file"])
        assert {key: record[key] for key in source} == source  # every CSV column is kept
        assert targets["spk2"][row].argmax() == metadata["class_names"].index(source["label"])
        np.testing.assert_allclose(predictors["spk2"][row], librosa_log_mel(corpus["root"] / source["file"], config),
                                   rtol=1e-5, atol=2e-3)
    assert check_dataset(predictors, targets, "from_csv") == list(SPEAKERS)


def test_a_regression_target_reads_a_numeric_column(corpus, small_config):
    build_from_csv(corpus["root"] / "corpus.csv", small_config, "arousal", label_column="arousal",
                   target="regression")
    _, targets, metadata, _ = read_dataset(small_config, "arousal")
    assert metadata["class_names"] is None and targets["spk1"].dtype == np.float32 and targets["spk1"].ndim == 1
    expected = [float(r["arousal"]) for r in corpus["rows"] if r["speaker"] == "spk1"]
    np.testing.assert_allclose(targets["spk1"], expected)


@pytest.mark.parametrize("layout", ["plain", "blank-line-and-quoted-line-break"])
def test_bad_rows_are_named_with_their_row_number_and_the_rest_succeeds(corpus, small_config, capsys, layout):
    rows = [dict(row) for row in corpus["rows"]]
    rows[2]["file"] = "audio/spk1/nowhere.wav"  # row 4 of the file
    rows[5]["label"] = ""  # row 7
    (corpus["root"] / "audio" / "broken.wav").write_bytes(b"RIFF not really audio")
    rows[8]["file"] = "audio/broken.wav"  # row 10
    shutil.copy(corpus["root"] / rows[0]["file"], corpus["root"] / "audio" / "spk9_only.wav")
    rows.append({**rows[0], "file": "audio/spk9_only.wav", "speaker": "spk9"})  # row 26: the only clip of spk9
    path = corpus["root"] / "bad.csv"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    expected = {4: "missing_file", 7: "empty_label", 10: "unreadable", 26: "single_clip_item"}
    if layout != "plain":  # the row is the line where it starts, as an editor shows it: every row moves down by 2
        lines = path.read_text(encoding="utf-8").split("\n")
        lines[2] = lines[2].replace(",m,", ',"m\nsecond line of a quoted cell",')
        path.write_text("\n".join(lines[:1] + [""] + lines[1:]), encoding="utf-8")
        expected = {row + 2: kind for row, kind in expected.items()}
    summary = build_from_csv(path, small_config, f"with_bad_rows_{layout}")
    printed = capsys.readouterr().out
    skipped = {entry["row"]: entry["kind"] for entry in summary["skipped"]}
    assert skipped == expected
    for row in expected:
        assert f"row {row}: " in printed
    assert summary["clips"] == 24 - 3 and sorted(summary["items"]) == list(SPEAKERS)


def test_the_command_line_refuses_with_one_line(corpus, small_config, tmp_path):
    def run(*arguments):
        return subprocess.run([sys.executable, str(REPO / "preprocessing_dataset.py"), *map(str, arguments),
                               "--config", str(small_config), "--jobs", "1"], capture_output=True, text=True,
                              timeout=300)
    empty_labels = tmp_path / "empty.csv"
    empty_labels.write_text("file,label,speaker\n" + "".join(f"{r['file']},,{r['speaker']}\n"
                                                           for r in corpus["rows"]))
    for arguments, words in (
            (["--csv", tmp_path / "missing.csv", "--dataset", "x"], "does not exist"),
            (["--csv", "/dev/null", "--dataset", "x"], "is not a regular file (a device or a pipe)"),
            (["--csv", corpus["root"] / "corpus.csv", "--dataset", "x", "--fold-by", "speakr"],
             "has no column 'speakr' for the foldable items"),
            (["--csv", empty_labels, "--dataset", "x", "--audio-root", corpus["root"]],
             "no usable clip"),
            (["--folders", corpus["root"] / "audio", "--dataset", "x"], "needs --group-pattern"),
            (["--folders", corpus["root"] / "audio", "--dataset", "x", "--group-pattern", "(unclosed"],
             "is not a regular expression")):
        completed = run(*arguments)
        assert completed.returncode == 2, completed.stderr
        lines = completed.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], completed.stderr


# ----------------------------------------------------------------------------------------------------------------
# Class folders

@pytest.fixture(scope="module")
def class_folders(corpus, tmp_path_factory):
    """The same clips as FOLDER/<label>/<speaker>_<n>.wav (gaia2's layout)."""
    root = tmp_path_factory.mktemp("folders")
    for number, row in enumerate(corpus["rows"]):
        target = root / row["label"] / f"{row['speaker']}_{number}{'.flac' if row['file'].endswith('flac') else '.wav'}"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes((corpus["root"] / row["file"]).read_bytes())
    return root


def test_class_folders_with_a_group_pattern(class_folders, small_config):
    completed = subprocess.run([sys.executable, str(REPO / "preprocessing_dataset.py"), "--folders", class_folders,
                                "--dataset", "folders", "--group-pattern", "^(?P<group>[^_]+)_", "--config",
                                small_config, "--jobs", "2"], capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr
    predictors, targets, metadata, _ = read_dataset(small_config, "folders")
    assert sorted(predictors) == list(SPEAKERS) and metadata["class_names"] == ["angry", "happy", "neutral"]
    assert sum(len(x) for x in predictors.values()) == 24 and "24 clips of 4 groups" in completed.stdout


def test_folding_by_file_is_allowed_only_by_name_and_said_everywhere(class_folders, small_config, tmp_path):
    completed = subprocess.run([sys.executable, str(REPO / "preprocessing_dataset.py"), "--folders", class_folders,
                                "--dataset", "by_file", "--fold-by", "file", "--config", small_config, "--jobs", "1"],
                               capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr
    assert "WARNING: folds by file" in completed.stdout
    predictors, _, metadata, _ = read_dataset(small_config, "by_file")
    assert len(predictors) == 24 and metadata["speaker_independent"] is False
    assert metadata["foldable_item"] == "file"
    routine = write_routine(tmp_path, {1: instance("by file", "num_epochs = 1")}, dataset="by_file", num_folds=2)
    trained = run_routine(routine, small_config)
    assert trained.returncode == 0, trained.stderr
    assert "WARNING: dataset 'by_file' folds by file" in trained.stdout
    experiment_dir = tmp_path / "experiments" / "experiment_1"
    document = json.loads((experiment_dir / "results" / "results_by_file_exp1_run1.json").read_text())
    assert document["speaker_independent"] is False and document["foldable_item"] == "file"
    import openpyxl
    title = openpyxl.load_workbook(experiment_dir / "by_file_exp1_results_spreadsheet.xlsx")["summary"]["A1"].value
    assert "folds by file" in title and "speaker-dependent" in title


# ----------------------------------------------------------------------------------------------------------------
# Windows: clips of any length, scored per clip

def test_windows_cover_every_clip_and_a_routine_scores_clips_not_windows(corpus, config_factory, tmp_path):
    config_path = config_factory({**SMALL, "preprocessing": {**SMALL["preprocessing"], "clip_mode": "windows"}})
    build_from_csv(corpus["root"] / "corpus.csv", config_path, "windows")
    predictors, targets, metadata, paths = read_dataset(config_path, "windows")
    clip_ids = load_clip_ids(load_config(config_path)["paths"]["features_folder"], "windows", predictors)
    config = load_config(config_path)
    rate, window, hop = config["preprocessing"]["sample_rate"], 8000, 4000  # 0.5 s and 0.25 s at 16 kHz
    for item in SPEAKERS:
        records = [record for record in metadata["clips"] if record["speaker"] == item]
        samples = [len(librosa.load(corpus["root"] / record["file"], sr=rate)[0]) for record in records]
        expected = [1 + max(0, int(np.ceil((n - window) / hop))) for n in samples]
        assert [record["windows"] for record in records] == expected
        np.testing.assert_array_equal(clip_ids[item], np.repeat(np.arange(len(records)), expected))
        assert len(predictors[item]) == len(targets[item]) == sum(expected)
    assert predictors["spk1"].shape[1] == 1 + window // 256
    from utility_functions import dataset_fingerprint  # what the index records is what a routine computes
    assert json.loads(paths["index"].read_text())["dataset_fingerprint"] == dataset_fingerprint(predictors, targets,
                                                                                                clip_ids)

    routine = write_routine(tmp_path, {1: instance("windows", "num_epochs = 1")}, dataset="windows", num_folds=2)
    completed = run_routine(routine, config_path)
    assert completed.returncode == 0, completed.stderr
    document = json.loads((tmp_path / "experiments" / "experiment_1" / "results" /
                           "results_windows_exp1_run1.json").read_text())
    import keras
    for fold in document["folds"]:
        predictions = fold["predictions"]["test"]
        clips_expected = sum(metadata["clips_per_item"][item] for item in fold["test_items"])
        assert len(predictions["y_pred"]) == clips_expected  # one prediction per clip, never per window
        y_true, y_pred = predictions["y_true"], predictions["y_pred"]
        labels = list(range(len(metadata["class_names"])))
        assert fold["metrics"]["test"]["balanced_accuracy"] == pytest.approx(
            skm.balanced_accuracy_score(y_true, y_pred))
        assert fold["confusion_matrix"]["test"] == skm.confusion_matrix(y_true, y_pred, labels=labels).tolist()
        model = keras.models.load_model(tmp_path / "experiments" / "experiment_1" / fold["model_file"])
        means = []
        for item in fold["test_items"]:
            output = model.predict(predictors[item], verbose=0)
            means += [output[clip_ids[item] == clip].mean(axis=0).argmax() for clip in np.unique(clip_ids[item])]
        assert means == y_pred
        files = [corpus["root"] / record["file"] for item in fold["test_items"] for record in metadata["clips"]
                 if record["speaker"] == item]
        out = tmp_path / f"fold{fold['fold']}.csv"
        model = tmp_path / "experiments" / "experiment_1" / fold["model_file"]
        predicted = subprocess.run([sys.executable, str(REPO / "use_model.py"), "predict", model, *files,
                                    "--out", out], capture_output=True, text=True, timeout=300)
        assert predicted.returncode == 0, predicted.stderr
        with open(out, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        assert [row["prediction"] for row in rows] == [metadata["class_names"][index] for index in y_pred]


def test_a_routine_runs_on_a_csv_dataset(corpus, small_config, tmp_path):
    build_from_csv(corpus["root"] / "corpus.csv", small_config, "csv_routine")
    routine = write_routine(tmp_path, {1: instance("csv", "num_epochs = 1")}, dataset="csv_routine", num_folds=2)
    completed = run_routine(routine, small_config)
    assert completed.returncode == 0, completed.stderr
    document = json.loads((tmp_path / "experiments" / "experiment_1" / "results" /
                           "results_csv_routine_exp1_run1.json").read_text())
    assert document["status"] == "complete" and document["class_names"] == ["angry", "happy", "neutral"]
    assert sorted(item for fold in document["folds"] for item in fold["test_items"]) == list(SPEAKERS)


def test_window_count_and_cut_windows():
    assert [feat_analysis.window_count(n, 10, 5) for n in (1, 10, 11, 15, 16, 30)] == [1, 1, 2, 2, 3, 5]
    signal = np.arange(1, 13, dtype=np.float32)
    windows = feat_analysis.cut_windows(signal, 5, 4)
    np.testing.assert_array_equal(windows, [[1, 2, 3, 4, 5], [5, 6, 7, 8, 9], [9, 10, 11, 12, 0]])
    np.testing.assert_array_equal(feat_analysis.cut_windows(signal[:3], 5, 4), [[1, 2, 3, 0, 0]])
    with pytest.raises(XvalError, match="no column"):
        pipeline.csv_table(REPO / "requirements.txt", "file", "label", "speaker")


def test_a_flat_folder_with_label_and_speaker_in_the_file_names(corpus, small_config, tmp_path):
    flat = tmp_path / "recordings"  # a spoken-digit set's layout: <label>_<speaker>_<index>.wav, one folder
    flat.mkdir()
    for number, row in enumerate(corpus["rows"]):
        suffix = ".flac" if row["file"].endswith("flac") else ".wav"
        (flat / f"{row['label']}_{row['speaker']}_{number}{suffix}").write_bytes(
            (corpus["root"] / row["file"]).read_bytes())
    completed = subprocess.run([sys.executable, str(REPO / "preprocessing_dataset.py"), "--folders", flat,
                                "--dataset", "flat", "--label-pattern", "^(?P<label>[a-z]+)_", "--group-pattern",
                                "_(?P<group>spk[0-9])_", "--config", small_config, "--jobs", "1"],
                               capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr
    predictors, targets, metadata, _ = read_dataset(small_config, "flat")
    assert sorted(predictors) == list(SPEAKERS) and metadata["class_names"] == ["angry", "happy", "neutral"]
    for record in metadata["clips"]:
        assert record["file"].startswith(record["label"] + "_" + record["group"] + "_")


# ----------------------------------------------------------------------------------------------------------------
# Storage: memory-mapped arrays (format 2); datasets of format 1 (.npz archives) still read, and rewritten

def test_features_are_memory_mapped_and_a_format_1_dataset_is_rewritten_with_the_same_fingerprint(
        corpus, config_factory, capsys):
    config_path = config_factory({**SMALL, "preprocessing": {**SMALL["preprocessing"], "clip_mode": "windows"}})
    build_from_csv(corpus["root"] / "corpus.csv", config_path, "stored")
    folder = load_config(config_path)["paths"]["features_folder"]
    predictors, targets, metadata, paths = read_dataset(config_path, "stored")
    clip_ids = load_clip_ids(folder, "stored", predictors)
    for arrays, kind in ((predictors, "predictors"), (targets, "target"), (clip_ids, "clips")):
        for array in arrays.values():  # views of one read-only map of the file: no private copy
            assert isinstance(array, np.memmap) and Path(array.filename) == paths[kind] and not array.flags.writeable
    index = json.loads(paths["index"].read_text())
    assert sorted(predictors) == metadata["items"] == [item for item, _, _ in index["items"]]
    fingerprint = dataset_fingerprint(predictors, targets, clip_ids)
    stored_sums = load_item_sums(folder, "stored", predictors)  # written while the features were copied into place
    for item, array in predictors.items():
        np.testing.assert_allclose(stored_sums[item], feature_sums(np.array(array)), rtol=1e-12)

    # the same dataset as the version before format 2 wrote it: one array per foldable item in .npz archives
    copies = [{item: np.array(array) for item, array in arrays.items()} for arrays in (predictors, targets, clip_ids)]
    del predictors, targets, clip_ids
    for kind, arrays in zip(("predictors", "target", "clips"), copies):
        np.savez(paths[f"{kind}_npz"], **arrays)
        paths[kind].unlink()
    paths["index"].unlink()
    old_x, old_y = load_dataset(folder, "stored")
    assert not any(isinstance(array, np.memmap) for array in old_x.values())  # read into memory
    assert dataset_fingerprint(old_x, old_y, load_clip_ids(folder, "stored", old_x)) == fingerprint
    computed = load_item_sums(folder, "stored", old_x)  # format 1 has no sums file: computed from the arrays
    assert all(np.allclose(computed[item], stored_sums[item], rtol=1e-12) for item in old_x)
    capsys.readouterr()

    build_from_csv(corpus["root"] / "corpus.csv", config_path, "stored")  # same inputs: rewritten in format 2
    assert "writing it again as memory-mapped .npy files" in capsys.readouterr().out
    assert not list(Path(folder).glob("stored_*.npz"))
    new_x, new_y = load_dataset(folder, "stored")
    assert dataset_fingerprint(new_x, new_y, load_clip_ids(folder, "stored", new_x)) == fingerprint
    assert all(isinstance(array, np.memmap) for array in new_x.values())
    assert build_from_csv(corpus["root"] / "corpus.csv", config_path, "stored")["reused"]  # and format 2 stays


def resident_file_bytes():
    """This process's resident file-backed memory (RssFile in /proc/self/status): the mapped file pages it holds."""
    status = Path("/proc/self/status").read_text()
    return next(int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("RssFile:"))


def test_a_pass_over_a_dataset_reads_it_without_keeping_it_in_memory(tmp_path):
    """The routine's checks and fingerprint, the baseline's pooling and preprocessing's fingerprint read every
    example once (load_dataset(scan=True): FileRows); a memory map kept every page such a pass touched in the
    process (preprocessing at 40x held 1.44 GiB for its 1.29 GiB of features). The values are the map's."""
    rng, spans, start = np.random.default_rng(0), [], 0
    x = rng.normal(size=(1600, 94, 64)).astype(np.float32)  # 38.5 MB, 4 items of 400 examples
    for item in ("a01", "a02", "b01", "b02"):
        spans.append([item, start, start + 400])
        start += 400
    paths = dataset_paths(tmp_path, "big")
    np.save(paths["predictors"], x)
    np.save(paths["target"], np.eye(4, dtype=np.float32)[np.arange(1600) % 4])
    np.save(paths["sums"], np.stack([feature_sums(x[first:end]) for _, first, end in spans]))
    paths["metadata"].write_text("{}")
    paths["index"].write_text(json.dumps({"format": 2, "examples": 1600, "items": spans, "windows": False}))
    ids = {item: np.arange(400, dtype=np.int32) for item, _, _ in spans}

    before = resident_file_bytes()
    mapped, targets = load_dataset(tmp_path, "big")
    fingerprint = dataset_fingerprint(mapped, targets, ids)
    kept_by_the_map = resident_file_bytes() - before
    del mapped
    before = resident_file_bytes()
    scanned, targets = load_dataset(tmp_path, "big", scan=True)
    assert dataset_fingerprint(scanned, targets, ids) == fingerprint
    check_item_sums(tmp_path, "big", scanned)
    assert check_dataset(scanned, targets, "big") == ["a01", "a02", "b01", "b02"]
    kept_by_the_scan = resident_file_bytes() - before
    assert kept_by_the_map > 0.9 * x.nbytes and kept_by_the_scan < 0.05 * x.nbytes
    np.testing.assert_array_equal(scanned["a02"][17:399], x[417:799])
    assert scanned["b01"].shape == (400, 94, 64) and len(scanned["b01"][390:]) == 10 and not len(scanned["b01"][5:5])


def test_a_dataset_whose_preprocessing_stopped_before_its_index_is_refused(corpus, small_config):
    from utility_functions import dataset_file_stats
    build_from_csv(corpus["root"] / "corpus.csv", small_config, "cut_short")
    paths = dataset_paths(load_config(small_config)["paths"]["features_folder"], "cut_short")
    paths["index"].unlink()  # as if killed between the arrays and the index
    with pytest.raises(XvalError, match=r"is incomplete \(no cut_short_index.json: its preprocessing was stopped.*"
                                        r"--dataset cut_short --force"):
        dataset_file_stats(paths["index"].parent, "cut_short")


def test_classes_that_lie_in_one_foldable_item_are_refused_when_all_do_and_warned_when_some_do(corpus, small_config,
                                                                                                capsys):
    rows = [dict(row, who=row["speaker"]) for row in corpus["rows"]]  # the speaker column again, under another name
    path = corpus["root"] / "who.csv"

    def write(rows):
        with open(path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    write(rows)
    with pytest.raises(XvalError, match=r"every class lies in one foldable item \(spk.*no test class would ever be "
                                        r"seen in training"):
        build_from_csv(path, small_config, "who", label_column="who")
    assert not dataset_paths(load_config(small_config)["paths"]["features_folder"], "who")["metadata"].exists()
    rows = [dict(row, label="whisper" if row["speaker"] == SPEAKERS[0] and row["label"] == "angry" else row["label"])
            for row in corpus["rows"]]  # one class said by one speaker only
    write(rows)
    summary = build_from_csv(path, small_config, "one_whisperer")
    assert summary["one_item_classes"] == {"whisper": SPEAKERS[0]}
    assert f"WARNING: class whisper has clips of one foldable item only ({SPEAKERS[0]})" in capsys.readouterr().out


def test_a_file_named_in_the_other_unicode_form_on_disk_is_found(corpus, small_config):
    import unicodedata
    rows = [dict(row) for row in corpus["rows"]]
    for number, row in enumerate(rows[:6]):  # files copied from a Mac: NFD names; the table typed in NFC
        disk = corpus["root"] / "audio" / unicodedata.normalize("NFD", f"Äpfel_{number}.wav")
        shutil.copy(corpus["root"] / row["file"], disk)
        row["file"] = "audio/" + unicodedata.normalize("NFC", f"Äpfel_{number}.wav")
        assert not (corpus["root"] / row["file"]).exists()
    path = corpus["root"] / "nfc.csv"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    summary = build_from_csv(path, small_config, "nfc_names")
    assert summary["clips"] == len(rows) and not summary["skipped"]


def test_a_damaged_dataset_is_computed_again_by_a_rerun_not_reused(corpus, small_config, capsys):
    build_from_csv(corpus["root"] / "corpus.csv", small_config, "truncated")
    folder = load_config(small_config)["paths"]["features_folder"]
    path = dataset_paths(folder, "truncated")["predictors"]
    path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])
    capsys.readouterr()
    summary = build_from_csv(corpus["root"] / "corpus.csv", small_config, "truncated")
    assert not summary["reused"]
    assert f"truncated: inputs and settings unchanged, but {path} is damaged and cannot be read" in \
        capsys.readouterr().out
    predictors, _ = load_dataset(folder, "truncated")
    assert sum(len(x) for x in predictors.values()) == summary["clips"]


def test_arrays_edited_after_preprocessing_are_computed_again_by_a_rerun(corpus, small_config, capsys):
    """The index records the fingerprint of what preprocessing wrote (the one a routine computes); a rerun whose
    inputs are unchanged but whose arrays are not what it wrote (a label edited by hand) computes them again."""
    from utility_functions import dataset_fingerprint, load_clip_ids
    build_from_csv(corpus["root"] / "corpus.csv", small_config, "edited")
    folder = load_config(small_config)["paths"]["features_folder"]
    paths = dataset_paths(folder, "edited")
    predictors, targets = load_dataset(folder, "edited")
    written = dataset_fingerprint(predictors, targets, load_clip_ids(folder, "edited", predictors))
    assert json.loads(paths["index"].read_text())["dataset_fingerprint"] == written
    capsys.readouterr()
    assert build_from_csv(corpus["root"] / "corpus.csv", small_config, "edited")["reused"]
    target = np.load(paths["target"])
    target[0] = np.roll(target[0], 1)  # clip 0 relabelled: still a one-hot row
    np.save(paths["target"], target)
    capsys.readouterr()
    summary = build_from_csv(corpus["root"] / "corpus.csv", small_config, "edited")
    assert not summary["reused"] and "edited: inputs and settings unchanged, but its arrays were edited since it " \
        "was preprocessed" in capsys.readouterr().out
    predictors, targets = load_dataset(folder, "edited")
    assert dataset_fingerprint(predictors, targets, load_clip_ids(folder, "edited", predictors)) == written


def test_a_second_preprocessing_of_the_same_name_commits_only_after_the_first(corpus, small_config):
    """Two preprocessings of one name (--force in two terminals) commit their files one after the other under a
    mutex, never interleaved: while another holds it, a second waits (seen as a blocked flock in /proc/locks)
    and leaves the dataset as it is; released, it commits a whole dataset."""
    from utility_functions import file_mutex
    build_from_csv(corpus["root"] / "corpus.csv", small_config, "twice")
    _, _, _, paths = read_dataset(small_config, "twice")
    before = {kind: paths[kind].read_bytes() for kind in ("index", "metadata", "predictors")}
    with file_mutex(paths["index"].with_name(f".{paths['index'].name}.mutex")):
        second = subprocess.Popen([sys.executable, str(REPO / "preprocessing_dataset.py"), "--csv",
                                   str(corpus["root"] / "corpus.csv"), "--dataset", "twice", "--force",
                                   "--config", str(small_config), "--jobs", "1"], stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True)
        try:
            while not any("-> FLOCK" in line and f" {second.pid} " in line
                          for line in Path("/proc/locks").read_text().splitlines()):
                assert second.poll() is None, "the second preprocessing committed while the mutex was held: " + \
                    second.stdout.read()
                time.sleep(0.05)  # polling for the second process to wait on the mutex
            assert {kind: paths[kind].read_bytes() for kind in before} == before
        except BaseException:
            second.kill()
            raise
    assert second.wait(timeout=300) == 0, second.stdout.read()
    predictors, targets, metadata, _ = read_dataset(small_config, "twice")
    assert sum(len(item) for item in predictors.values()) == json.loads(paths["index"].read_text())["examples"]


def test_metadata_rows_are_written_one_at_a_time_and_a_failure_leaves_the_old_file(tmp_path):
    """Preprocessing writes a corpus's clip records and input files as they are made (atomic_write_json rows):
    the file reads back as the same JSON as a whole write, NaN is null, and a failure half-way through the rows
    leaves the earlier file whole and no temporary file behind."""
    from utility_functions import atomic_write_json
    head = {"dataset": "d", "class_names": ["a", "ä"], "score": float("nan")}
    clips = [{"file": f"{n}.wav", "seconds": n / 3, "speaker": "spk1"} for n in range(5)]
    streamed, whole = tmp_path / "streamed.json", tmp_path / "whole.json"
    atomic_write_json(streamed, head, rows={"clips": (dict(clip) for clip in clips), "input_files": iter([])})
    atomic_write_json(whole, dict(head, clips=clips, input_files=[]))
    assert json.loads(streamed.read_text(encoding="utf-8")) == json.loads(whole.read_text(encoding="utf-8"))
    assert json.loads(streamed.read_text(encoding="utf-8"))["score"] is None

    def failing():
        yield clips[0]
        raise OSError(28, "No space left on device")
    before = streamed.read_bytes()
    with pytest.raises(XvalError, match="no space left to write .*streamed.json"):
        atomic_write_json(streamed, head, rows={"clips": failing()})
    assert streamed.read_bytes() == before and sorted(path.name for path in tmp_path.iterdir()) == \
        ["streamed.json", "whole.json"]


def test_input_files_are_listed_in_the_order_earlier_versions_fingerprinted(tmp_path):
    """A rerun recognises a dataset made by an earlier version only if its input files are listed in the same
    order: by path parts, as sorted Path objects ('a/b/c' before 'a/b.wav', 'a b/c', 'a-b' and 'ab'), not as
    strings (where ' ', '-' and '.' come before '/'). Each file once, however it is named."""
    names = ["ab.wav", "a-b.wav", "a b/c.wav", "a/b.wav", "a/b/c.wav", "a.wav", "a0/z.wav"]
    for name in names:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(name.encode())
    listed = [str(tmp_path / name) for name in names] + [str(tmp_path / "ab.wav"), str(tmp_path) + "//a.wav",
                                                         str(tmp_path / "a") + "/", str(tmp_path / "gone.wav")]
    stats = pipeline.file_stats(listed[::-1], tmp_path)
    assert [name for name, _, _ in stats] == ["a/b/c.wav", "a/b.wav", "a b/c.wav", "a-b.wav", "a.wav", "a0/z.wav",
                                              "ab.wav"]
    assert [size for _, size, _ in stats] == [len(name) for name, _, _ in stats]


def test_the_table_on_disk_orders_and_groups_names_as_python_does():
    """The clip table lives in SQLite, which sorts and groups its names: the default classes must still be
    Python's sorted() of the labels (their order is the model's outputs), for accents, other scripts, case and
    the surrogates an undecodable file name becomes, and each foldable item must be grouped as one name."""
    from clip_table import Clip, ClipTable
    labels = ["é", "z", "Z", "ä", "日本", "a\udcff", "a", "ab", "a b", "\U0001f600", "\ue000"]
    table = ClipTable()
    for number, label in enumerate(labels * 2):
        table.add(Clip(number + 2, f"f{number}.wav", f"/nowhere/f{number}.wav", label, labels[number % 3], {}))
    assert pipeline.label_targets(table, "classification") == sorted(labels)
    items = pipeline.kept_items(table)
    assert list(items) == ["Z", "z", "é"] and items == {"é": (8, 0), "z": (7, 0), "Z": (7, 0)}
    assert [file for file, _, _ in table.entries()] == [f"f{number}.wav" for number in range(len(labels) * 2)]


def test_a_full_temporary_folder_is_one_line_naming_where_the_table_goes():
    """The table of clips is a temporary SQLite file: when it cannot grow (a full /var/tmp), the user gets one line
    that says so and which variable moves it, not SQLite's traceback."""
    from clip_table import Clip, ClipTable
    table = ClipTable()
    table.database.execute("PRAGMA max_page_count = 3")  # what a full disk looks like to SQLite
    with pytest.raises(XvalError, match=r"table of clips cannot be kept in its temporary file \(database or disk is "
                                        r"full; .*point SQLITE_TMPDIR at a folder with room"):
        for number in range(5000):
            table.add(Clip(number + 2, f"f{number}.wav", f"/nowhere/f{number}.wav", "a", "spk", {"file": "x" * 99}))
        table.kept()


@pytest.mark.parametrize("written_by", ["this version", "v167406f"])
def test_a_rerun_reads_the_earlier_metadata_without_its_long_lists(tmp_path, written_by):
    """A rerun reads the earlier metadata a line at a time, its clip records, input files and identical audio as
    their counts (a 200x corpus's metadata is 100 MB): everything else must be what reading it whole gives, for a
    file this version writes (lists written a record at a time, an empty one, nested values, text with quotes,
    brackets and line breaks) and one an earlier version wrote (one indented document)."""
    from utility_functions import atomic_write_json
    if written_by == "this version":
        path = tmp_path / "x_metadata.json"
        head = {"dataset": "x", "skipped": [{"row": 3, "file": 'a "b" [c].wav', "reason": "line\nbreak }"}],
                "class_names": ["a", "b"], "clips_per_item": {"s1": 2}, "audio_found": {"seconds": {"min": 0.5}}}
        atomic_write_json(path, head, rows={"clips": ({"file": f"{n}.wav", "l": [1, {"x": "]"}]} for n in range(5)),
                                            "input_files": iter([]),
                                            "identical_audio": [["row 2 (a.wav)", "row 3 (b.wav)"]] * 3})
    else:
        path = REPO / "tests" / "fixtures" / "v167406f" / "features" / "fixture_metadata.json"
    whole = json.loads(path.read_text(encoding="utf-8"))
    counted = {key: len(whole[key]) for key in pipeline.GROWING_LISTS if key in whole}
    assert counted["clips"] == (5 if written_by == "this version" else 24)
    assert pipeline.metadata_without_lists(path) == dict(whole, **counted)
