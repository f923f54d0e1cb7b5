"""preprocessing_ravdess on small synthesised corpora: output format, correctness against librosa, odd files,
parallel = serial, reuse, the intensity target and the command line's one-line errors."""
import json
import re
import os
import shutil
import subprocess
import sys
from pathlib import Path

import librosa
import numpy as np
import pytest
import soundfile as sf

import demo_corpus
import feat_analysis
import preprocessing_dataset as pipeline
import preprocessing_ravdess as prep
from conftest import write_config
from utility_functions import XvalError, check_dataset, check_target, dataset_paths, load_config, load_dataset

REPO = Path(__file__).resolve().parents[1]
SMALL = {"features": {"n_fft": "512", "win_length": "512", "hop_length": "256", "n_mels": "32", "n_mfcc": "13"},
         "preprocessing": {"clip_seconds": "1.0"}}
EMOTION_NAMES = ["neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """3 actors x (neutral + happy, angry at 2 intensities) x 1 statement x 2 repetitions = 30 clips (2 chunks),
    0.8 to 1.3 s long so that both padding and cutting happen."""
    folder = tmp_path_factory.mktemp("corpus")
    demo_corpus.make_demo_corpus(folder, n_actors=3, emotions=("neutral", "happy", "angry"), statements=(1,),
                                 repetitions=(1, 2), clip_seconds_range=(0.8, 1.3), jobs=1)
    return folder


@pytest.fixture
def small_config(config_factory):
    return config_factory(SMALL)


def codes(name):
    """Codes of a RAVDESS name, parsed here by hand: {field: int}."""
    fields = ("modality", "vocal_channel", "emotion", "intensity", "statement", "repetition", "actor")
    return dict(zip(fields, (int(part) for part in Path(name).stem.split("-"))))


def librosa_features(path, config):
    """The expected predictors of one file, computed the plain way with librosa."""
    pre, feat = config["preprocessing"], config["features"]
    signal, _ = librosa.load(path, sr=pre["sample_rate"])
    n = int(round(pre["clip_seconds"] * pre["sample_rate"]))
    if len(signal) >= n:
        start = 0 if pre["cut_mode"] == "start" else (len(signal) - n) // 2
        signal = signal[start:start + n]
    else:
        signal = np.concatenate([signal, np.zeros(n - len(signal), np.float32)])
    power = librosa.feature.melspectrogram(y=signal, sr=pre["sample_rate"], n_fft=feat["n_fft"],
                                           hop_length=feat["hop_length"], win_length=feat["win_length"],
                                           window=feat["window"], n_mels=feat["n_mels"], fmin=feat["fmin"],
                                           fmax=feat["fmax"] or pre["sample_rate"] / 2)
    return librosa.power_to_db(power, top_db=80.0).T


def read_arrays(features_folder, dataset):
    paths = dataset_paths(features_folder, dataset)
    predictors, target = load_dataset(features_folder, dataset)
    metadata = json.loads(paths["metadata"].read_text(encoding="utf-8"))
    return predictors, target, metadata


# ----------------------------------------------------------------------------------------------------------------
# The dataset

def test_actor_folders_give_per_actor_arrays_equal_to_librosa(corpus, small_config):
    config = load_config(small_config)
    summary = prep.preprocess(corpus, "small", small_config, jobs=1, quiet=True)
    predictors, target, metadata = read_arrays(config["paths"]["features_folder"], "small")
    assert sorted(predictors) == sorted(target) == ["01", "02", "03"] == summary["items"] == metadata["items"]
    frames = 1 + 16000 // 256
    for actor in predictors:
        files = sorted((corpus / f"Actor_{actor}").glob("*.wav"), key=lambda path: path.name)
        assert predictors[actor].dtype == np.float32 and predictors[actor].shape == (len(files), frames, 32)
        assert target[actor].dtype == np.float32 and target[actor].shape == (len(files), 8)
        for row, path in enumerate(files):  # clips sorted by file name, one-hot column = emotion code - 1
            expected_target = np.zeros(8, np.float32)
            expected_target[codes(path.name)["emotion"] - 1] = 1
            np.testing.assert_array_equal(target[actor][row], expected_target)
            np.testing.assert_allclose(predictors[actor][row], librosa_features(path, config), rtol=1e-5, atol=1e-4)
    assert metadata["class_names"] == EMOTION_NAMES and metadata["target"] == "emotion"
    assert (metadata["frames"], metadata["bins"], metadata["sample_rate"]) == (frames, 32, 16000)
    assert metadata["feature_settings"]["type"] == "mel" and metadata["preprocessing_settings"]["cut_mode"] == "center"
    first = metadata["clips"][0]
    assert first["file"] == "Actor_01/03-01-01-01-01-01-01.wav"
    assert (first["actor"], first["emotion"], first["intensity"], first["statement"], first["repetition"],
            first["vocal_channel"]) == ("01", "neutral", "normal", 1, 1, "speech")
    assert metadata["skipped"] == [] and len(metadata["fingerprint"]) == 64
    x, y = load_dataset(config["paths"]["features_folder"], "small")  # the engine's loader accepts it
    assert check_dataset(x, y, "small") == ["01", "02", "03"]
    check_target(y, "small", "classification")


def test_flat_folder_gives_the_same_dataset(corpus, small_config, tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    for path in corpus.rglob("*.wav"):
        shutil.copy(path, flat / path.name)
    config = load_config(small_config)
    prep.preprocess(corpus, "nested", small_config, jobs=1, quiet=True)
    prep.preprocess(flat, "flat", small_config, jobs=1, quiet=True)
    nested = read_arrays(config["paths"]["features_folder"], "nested")
    flat_arrays = read_arrays(config["paths"]["features_folder"], "flat")
    for index in (0, 1):
        assert sorted(nested[index]) == sorted(flat_arrays[index])
        for actor in nested[index]:
            np.testing.assert_array_equal(nested[index][actor], flat_arrays[index][actor])


def test_one_and_two_jobs_give_identical_arrays(corpus, small_config):
    assert sum(1 for _ in corpus.rglob("*.wav")) > pipeline.CHUNK_FILES  # several chunks
    config = load_config(small_config)
    for dataset, jobs in (("serial", 1), ("parallel", 2)):
        prep.preprocess(corpus, dataset, small_config, feature_type="mfcc", jobs=jobs, quiet=True)
    serial = read_arrays(config["paths"]["features_folder"], "serial")
    parallel = read_arrays(config["paths"]["features_folder"], "parallel")
    for index in (0, 1):
        assert sorted(serial[index]) == sorted(parallel[index])
        for actor in serial[index]:
            np.testing.assert_array_equal(serial[index][actor], parallel[index][actor])
    assert serial[2]["clips"] == parallel[2]["clips"] and serial[2]["bins"] == 13


def test_intensity_target_and_default_names_coexist(corpus, small_config, capsys):
    prep.main(["--input", str(corpus), "--config", str(small_config)])
    prep.main(["--input", str(corpus), "--config", str(small_config), "--target", "intensity"])
    features_folder = load_config(small_config)["paths"]["features_folder"]
    emotion = read_arrays(features_folder, "ravdess")
    intensity = read_arrays(features_folder, "ravdess_intensity")
    assert emotion[2]["target"] == "emotion" and intensity[2]["target"] == "intensity"
    assert intensity[2]["class_names"] is None
    for actor, values in intensity[1].items():
        files = sorted(path.name for path in (corpus / f"Actor_{actor}").glob("*.wav"))
        assert values.dtype == np.float32 and values.shape == (len(files),)
        np.testing.assert_array_equal(values, [codes(name)["intensity"] - 1 for name in files])
        np.testing.assert_array_equal(intensity[0][actor], emotion[0][actor])
    x, y = load_dataset(features_folder, "ravdess_intensity")
    assert check_dataset(x, y, "ravdess_intensity") == ["01", "02", "03"]
    check_target(y, "ravdess_intensity", "regression")
    assert prep.default_dataset_name(True, "intensity") == "ravdess_demo_intensity"
    assert prep.default_dataset_name(True, "emotion") == "ravdess_demo"


def test_rerun_reuses_unless_inputs_settings_or_force_change(corpus, small_config, tmp_path, capsys):
    inputs = tmp_path / "inputs"
    shutil.copytree(corpus, inputs)
    first = prep.preprocess(inputs, "again", small_config, jobs=1)
    predictors_path = first["paths"]["predictors"]
    stamp = predictors_path.stat().st_mtime_ns
    capsys.readouterr()
    second = prep.preprocess(inputs, "again", small_config, jobs=1)
    assert second["reused"] and "unchanged" in capsys.readouterr().out
    assert predictors_path.stat().st_mtime_ns == stamp and second["fingerprint"] == first["fingerprint"]
    assert not prep.preprocess(inputs, "again", small_config, jobs=1, force=True, quiet=True)["reused"]
    stamp = predictors_path.stat().st_mtime_ns
    # settings mel features of fixed clips never read change nothing: reused as made, saying which
    idle = write_config(tmp_path / "idle", {"features": {**SMALL["features"], "cqt_bins": "48",
                                                         "power_law_compression": "0.3"},
                                            "preprocessing": {**SMALL["preprocessing"], "window_seconds": "0.5"},
                                            "paths": {"features_folder": str(predictors_path.parent)}})
    capsys.readouterr()
    reused = prep.preprocess(inputs, "again", idle, jobs=1)
    said = capsys.readouterr().out
    assert reused["reused"] and reused["fingerprint"] == first["fingerprint"]
    assert "[preprocessing] window_seconds, [features] cqt_bins, [features] power_law_compression changed" in said
    assert predictors_path.stat().st_mtime_ns == stamp
    # other settings under the same name would replace the features experiments were built on: only with --force
    with pytest.raises(XvalError, match=r"made from other inputs or settings \(\[features\] type 'mel' -> 'stft'.*"
                                        "pass --force to replace it"):
        prep.preprocess(inputs, "again", small_config, feature_type="stft", jobs=1, quiet=True)
    assert predictors_path.stat().st_mtime_ns == stamp
    replaced = prep.preprocess(inputs, "again", small_config, feature_type="stft", jobs=1, force=True, quiet=True)
    assert not replaced["reused"] and replaced["bins"] == 257
    touched = next(inputs.rglob("*.wav"))
    os.utime(touched, ns=(touched.stat().st_atime_ns, touched.stat().st_mtime_ns + 10**9))
    name = touched.relative_to(inputs).as_posix()
    with pytest.raises(XvalError, match=rf"input file {re.escape(name)} has a new modification time \(the same size"):
        prep.preprocess(inputs, "again", small_config, feature_type="stft", jobs=1, quiet=True)
    touched.unlink()
    with pytest.raises(XvalError, match=rf"input file {re.escape(name)} is no longer among the inputs"):
        prep.preprocess(inputs, "again", small_config, feature_type="stft", jobs=1, quiet=True)
    changed = prep.preprocess(inputs, "again", small_config, feature_type="stft", jobs=1, force=True, quiet=True)
    assert not changed["reused"] and changed["bins"] == 257


# ----------------------------------------------------------------------------------------------------------------
# Odd files

def write_wav(path, signal, rate):
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, signal, rate, subtype="PCM_16")


def test_odd_files_are_read_or_skipped_and_reported(corpus, small_config, tmp_path, capsys):
    inputs = tmp_path / "odd"
    shutil.copytree(corpus, inputs)
    rng = np.random.default_rng(0)
    tone = 0.3 * np.sin(2 * np.pi * 330 * np.arange(int(1.2 * 44100)) / 44100)
    stereo = np.stack([tone, 0.5 * rng.standard_normal(len(tone)) * 0.1], axis=1)
    write_wav(inputs / "Actor_04" / "03-01-03-02-02-01-04.wav", stereo, 48000)  # stereo
    write_wav(inputs / "Actor_04" / "03-01-04-01-02-02-04.wav", tone, 44100)  # 44.1 kHz
    (inputs / "Actor_04" / "03-01-05-01-01-01-04.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEjunk" * 20)  # corrupt
    (inputs / "Actor_04" / "03-01-05-02-01-01-04.wav").write_bytes(b"")  # zero bytes
    write_wav(inputs / "Actor_04" / "03-02-03-01-01-01-04.wav", tone, 48000)  # song
    (inputs / "notes.txt").write_text("RAVDESS readme", encoding="utf-8")  # not audio
    write_wav(inputs / "hello.wav", tone, 48000)  # not a RAVDESS name
    write_wav(inputs / "03-01-09-01-01-01-04.wav", tone, 48000)  # emotion 09 does not exist
    shutil.copy(next(corpus.rglob("03-01-01-01-01-01-01.wav")), inputs / "03-01-01-01-01-01-01.wav")  # twice
    summary = prep.preprocess(inputs, "odd", small_config, jobs=2)
    printed = capsys.readouterr().out

    expected_skips = {"Actor_04/03-01-05-01-01-01-04.wav": "unreadable", "Actor_04/03-01-05-02-01-01-04.wav":
                      "unreadable", "Actor_04/03-02-03-01-01-01-04.wav": "other_vocal_channel",
                      "notes.txt": "not_wav", "hello.wav": "not_ravdess_name",
                      "03-01-09-01-01-01-04.wav": "not_ravdess_name", "Actor_01/03-01-01-01-01-01-01.wav":
                      "duplicate"}
    skipped = {entry["file"]: entry["kind"] for entry in summary["skipped"]}
    assert skipped == expected_skips
    for name in expected_skips:
        assert name in printed
    config = load_config(small_config)
    predictors, target, metadata = read_arrays(config["paths"]["features_folder"], "odd")
    assert {entry["file"]: entry["kind"] for entry in metadata["skipped"]} == expected_skips
    assert predictors["04"].shape[0] == 2  # the stereo and the 44.1 kHz file
    for row, name in enumerate(["03-01-03-02-02-01-04.wav", "03-01-04-01-02-02-04.wav"]):
        expected = librosa_features(inputs / "Actor_04" / name, config)  # librosa mixes to mono and resamples
        np.testing.assert_allclose(predictors["04"][row], expected, rtol=1e-5, atol=1e-4)
    assert summary["clips"] == 32


def test_song_files_are_kept_with_vocal_channel_all(corpus, config_factory, tmp_path):
    inputs = tmp_path / "songs"
    shutil.copytree(corpus, inputs)
    tone = 0.3 * np.sin(2 * np.pi * 440 * np.arange(48000) / 48000)
    write_wav(inputs / "Actor_01" / "03-02-03-01-01-01-01.wav", tone, 48000)
    config_path = config_factory(dict(SMALL, preprocessing={"clip_seconds": "1.0", "vocal_channel": "all"}))
    summary = prep.preprocess(inputs, "all", config_path, jobs=1, quiet=True)
    assert summary["skipped"] == [] and summary["clips"] == 31


def test_cut_mode_start_and_center(tmp_path):
    signal = np.concatenate([np.full(8000, 0.1), np.full(16000, 0.2), np.full(8000, 0.3)]).astype(np.float32)
    path = tmp_path / "03-01-01-01-01-01-01.wav"
    sf.write(path, signal, 16000, subtype="FLOAT")
    np.testing.assert_array_equal(feat_analysis.load_clip(path, 16000, 16000, "start"), signal[:16000])
    np.testing.assert_array_equal(feat_analysis.load_clip(path, 16000, 16000, "center"), signal[8000:24000])
    padded = feat_analysis.load_clip(path, 16000, 40000, "center")
    np.testing.assert_array_equal(padded, np.concatenate([signal, np.zeros(8000, np.float32)]))


def test_load_clip_equals_librosa_load_for_many_formats(tmp_path):
    rng = np.random.default_rng(1)
    audio = (0.2 * rng.standard_normal((30000, 3))).astype(np.float32)
    cases = [("mono.wav", audio[:, 0], 48000, "PCM_16", "WAV"), ("stereo.wav", audio[:, :2], 44100, "PCM_16", "WAV"),
             ("three.wav", audio, 48000, "PCM_16", "WAVEX"), ("deep.wav", audio[:, :2], 48000, "PCM_24", "WAV"),
             ("float.wav", audio[:, 0], 22050, "FLOAT", "WAV"), ("byte.wav", audio[:, 0], 8000, "PCM_U8", "WAV")]
    for name, signal, rate, subtype, container in cases:
        sf.write(tmp_path / name, signal, rate, subtype=subtype, format=container)
        expected, _ = librosa.load(tmp_path / name, sr=16000)
        clip = feat_analysis.load_clip(tmp_path / name, 16000, len(expected), "start")
        assert clip.dtype == np.float32
        np.testing.assert_array_equal(clip, expected, err_msg=name)


# ----------------------------------------------------------------------------------------------------------------
# Mistakes: one line, exit code 2

def run_cli(*args, env=None):
    return subprocess.run([sys.executable, str(REPO / "preprocessing_ravdess.py"), *args], capture_output=True,
                          text=True, cwd=REPO, env=env, timeout=120)


def assert_one_line_error(result, *words):
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.stderr, result.stderr
    for word in words:
        assert word in lines[0]


def test_cli_errors_are_one_line_with_exit_code_2(small_config, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_one_line_error(run_cli("--input", str(empty), "--config", str(small_config)), "no files", str(empty))
    assert_one_line_error(run_cli("--input", str(tmp_path / "nowhere"), "--config", str(small_config)),
                          "does not exist")
    unnamed = tmp_path / "unnamed"
    unnamed.mkdir()
    sf.write(unnamed / "speech.wav", np.zeros(1600), 16000)
    (unnamed / "readme.txt").write_text("x", encoding="utf-8")
    assert_one_line_error(run_cli("--input", str(unnamed), "--config", str(small_config)), "none named like RAVDESS")
    corrupt = tmp_path / "corrupt" / "Actor_01"
    corrupt.mkdir(parents=True)
    (corrupt / "03-01-01-01-01-01-01.wav").write_bytes(b"not audio at all")
    (corrupt / "03-01-02-01-01-01-01.wav").write_bytes(b"")
    result = run_cli("--input", str(corrupt.parent), "--config", str(small_config), "--jobs", "2")
    assert_one_line_error(result, "none of the 2 RAVDESS files", "can be read")
    features_folder = load_config(small_config)["paths"]["features_folder"]
    assert not list(Path(features_folder).glob("*.npz"))


def test_one_actor_is_refused_with_what_the_ravdess_front_end_needs(corpus, small_config, tmp_path):
    actor = next(corpus.glob("Actor_*"))
    shutil.copytree(actor, tmp_path / "one" / actor.name)
    assert_one_line_error(run_cli("--input", str(tmp_path / "one"), "--config", str(small_config)),
                          "only one foldable item", "give an input holding two or more Actor_NN folders")


def test_settings_mistakes_are_one_line_errors(corpus, config_factory, tmp_path):
    bad_window = config_factory({"features": {"window": "hanning-ish"}}, folder=tmp_path / "a")
    assert_one_line_error(run_cli("--input", str(corpus), "--config", str(bad_window)), "window")
    too_long = config_factory({"features": {"win_length": "2048"}}, folder=tmp_path / "b")
    assert_one_line_error(run_cli("--input", str(corpus), "--config", str(too_long)), "win_length")
    # each of these used to be written without a word (a negative fmax read as "half the sample rate", a hop
    # skipping audio, mel bands with no FFT bin in them)
    for folder, settings, words in (("e", {"fmax": "-100"}, "fmax = -100.0 is negative"),
                                    ("f", {"win_length": "512", "hop_length": "1024"},
                                     "hop_length = 1024 is longer than win_length = 512"),
                                    ("g", {"n_fft": "256", "win_length": "256", "hop_length": "128", "n_mels": "128"},
                                     "n_mels = 128 is too many for n_fft = 256")):
        config = config_factory({"features": settings}, folder=tmp_path / folder)
        assert_one_line_error(run_cli("--input", str(corpus), "--config", str(config)), words)
        assert not list(Path(load_config(config)["paths"]["features_folder"]).glob("*.npy"))
    with pytest.raises(prep.XvalError, match="n_mfcc"):
        prep.preprocess(corpus, "x", config_factory({"features": {"n_mfcc": "80"}}, folder=tmp_path / "c"),
                        feature_type="mfcc")
    with pytest.raises(prep.XvalError, match="dataset name"):
        prep.preprocess(corpus, "../escape", config_factory(folder=tmp_path / "d"))


def test_xval_config_environment_variable_is_used(corpus, small_config):
    env = dict(os.environ, XVAL_CONFIG=str(small_config))
    result = run_cli("--input", str(corpus), "--dataset", "from_env", "--jobs", "1", env=env)
    assert result.returncode == 0, result.stderr
    assert "from_env: 30 clips of 3 actors" in result.stdout
    features_folder = load_config(small_config)["paths"]["features_folder"]
    assert dataset_paths(features_folder, "from_env")["predictors"].is_file()
    again = run_cli("--input", str(corpus), "--dataset", "from_env", env=env)
    assert again.returncode == 0 and "reusing" in again.stdout


# ----------------------------------------------------------------------------------------------------------------
# The fixture the engine's tests use

def test_tiny_features_fixture_holds_both_datasets(tiny_features):
    assert Path(tiny_features["config_path"]).is_file()
    assert Path(tiny_features["features_folder"]).is_relative_to(tiny_features["root"])
    x, y = load_dataset(tiny_features["features_folder"], tiny_features["emotion_dataset"])
    assert check_dataset(x, y, "tiny") == ["01", "02", "03", "04", "05", "06"]
    check_target(y, "tiny", "classification")
    assert all(array.shape == (14, 1 + 16000 // 256, 32) and array.dtype == np.float32 for array in x.values())
    used = sorted({int(column) for target in y.values() for column in target.argmax(axis=1)})
    assert used == [0, 2, 3, 4]  # neutral, happy, sad, angry
    x_intensity, y_intensity = load_dataset(tiny_features["features_folder"], tiny_features["intensity_dataset"])
    assert check_dataset(x_intensity, y_intensity, "tiny_intensity") == sorted(x)
    check_target(y_intensity, "tiny_intensity", "regression")
    assert all(np.array_equal(x[item], x_intensity[item]) for item in x)
    assert sorted(np.unique(np.concatenate(list(y_intensity.values())))) == [0.0, 1.0]


def test_features_folder_inside_the_input_is_not_scanned(corpus, config_factory, tmp_path):
    inputs = tmp_path / "data"
    shutil.copytree(corpus, inputs / "ravdess")
    write_wav(inputs / "features" / "03-01-01-01-01-01-09.wav", np.zeros(4800), 48000)  # a stray copy there
    config_path = config_factory(dict(SMALL, paths={"features_folder": inputs / "features"}))
    first = prep.preprocess(inputs, "inside", config_path, jobs=1, quiet=True)
    assert first["skipped"] == [] and first["items"] == ["01", "02", "03"]
    assert prep.preprocess(inputs, "inside", config_path, jobs=1, quiet=True)["reused"]


def test_a_one_hot_shaped_target_whose_rows_are_not_one_hot_is_called_damaged():
    y = np.eye(3, dtype=np.float32)[[0, 1, 2, 1]]
    y[2] = [0.5, 0.5, 0]
    with pytest.raises(XvalError, match=r"shape of a one-hot target \(4, 3\) but rows that are not one 1 and zeros"):
        check_target({"spk1": y}, "edited", "classification")
    with pytest.raises(XvalError, match=r"needs a one-hot target \(clips, classes\), this one has shape \(4,\)"):
        check_target({"spk1": np.zeros(4, np.float32)}, "intensity", "classification")


def test_a_file_whose_actor_folder_and_name_disagree_is_skipped_naming_both(tmp_path):
    """Actor_02/…-01.wav: the folder says actor 2, the name actor 1; which one is right decides the folds and
    cannot be told, so the clip is left out with the reason (never counted silently under the name's actor)."""
    from preprocessing_ravdess import scan_input
    for relative in ("Actor_01/03-01-05-02-02-01-01.wav", "Actor_02/03-01-05-02-01-01-01.wav",
                     "Actor_02/03-01-05-02-01-01-02.wav"):
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_bytes(b"")
    clips, skipped, _ = scan_input(tmp_path, "speech")
    assert [(clip["file"], clip["actor"]) for clip in clips] == [("Actor_01/03-01-05-02-02-01-01.wav", "01"),
                                                                  ("Actor_02/03-01-05-02-01-01-02.wav", "02")]
    assert skipped == [{"file": "Actor_02/03-01-05-02-01-01-01.wav", "kind": "actor_mismatch",
                        "reason": "its folder says actor 02, its name actor 01: rename one (the actor decides "
                                  "the folds)"}]
