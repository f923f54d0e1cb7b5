"""The edges: no wrong number, no silent ignore, no block, nothing lost. One test (or more) per finding of the
adversarial pass in issue 23, and per further member of its class.

Read-only folders and full disks are real: a read-only bind mount and a small tmpfs (which needs root, as in CI;
elsewhere those tests skip, saying why; with CI=true they fail instead).
"""
import contextlib
import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import demo_corpus
from conftest import TINY_SETTINGS, read_only, write_config
from routine_helpers import (REPO, copy_project, experiment_files, instance, routine_environment, run_routine,
                             start_routine, write_routine)
from utility_functions import XvalError, load_config

GOOD = instance("good", "num_epochs = 1")


@contextlib.contextmanager
def small_disk(folder, size):
    """A tmpfs of size (e.g. '8m') mounted at folder (created) for the with block."""
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], check=True)
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)


def fill(folder, leave_bytes):
    """Fill the disk of folder up to leave_bytes free, with one file; returns it."""
    filler = folder / "filler.bin"
    free = shutil.disk_usage(folder).free
    with open(filler, "wb") as handle:
        handle.truncate(0)
        handle.write(b"\0" * max(0, free - leave_bytes))
    return filler


@pytest.fixture(scope="module")
def finished(tiny_features, tmp_path_factory):
    """A finished experiment: instances 1 and 2, two folds, one epoch."""
    folder = tmp_path_factory.mktemp("edges")
    routine = write_routine(folder, {1: GOOD, 2: instance("two", "num_epochs = 1", "dense_units = 4")})
    completed = run_routine(routine, tiny_features["config_path"])
    assert completed.returncode == 0, completed.stderr
    return {"folder": folder, "routine": routine, "dir": folder / "experiments" / "experiment_1",
            "config": tiny_features["config_path"]}


def copied(finished, tmp_path):
    """A copy of the finished experiment (folder with routine and experiments/) to change freely."""
    target = tmp_path / "copy"
    shutil.copytree(finished["folder"], target)
    return {"folder": target, "routine": target / finished["routine"].name, "dir": target / "experiments" /
            "experiment_1", "config": finished["config"]}


def one_line_refusal(completed, words):
    assert completed.returncode == 2, completed.stdout + completed.stderr
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], completed.stderr


def config_with(tiny_features, folder, section, values):
    import configparser
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(tiny_features["config_path"], encoding="utf-8")
    overrides = {name: dict(parser[name]) for name in parser.sections()}
    overrides.setdefault(section, {}).update(values)
    return write_config(folder, overrides)


# ----------------------------------------------------------------------------------------------------------------
# 1. Instances on different splits are never compared

def test_a_lost_folds_json_with_other_split_settings_is_refused(finished, tiny_features, tmp_path):
    experiment = copied(finished, tmp_path)
    (experiment["dir"] / "folds.json").unlink()
    before = experiment_files(experiment["dir"])
    other_seed = config_with(tiny_features, tmp_path / "config", "folds", {"folds_seed": "7"})
    routine = write_routine(experiment["folder"], {1: GOOD, 2: GOOD, 3: instance("new", "num_epochs = 1")},
                            name="new_instance.py")
    refused = run_routine(routine, other_seed, 3)
    one_line_refusal(refused, "folds.json is missing, and")
    assert "was trained on another split than this run would make" in refused.stderr
    assert experiment_files(experiment["dir"]) == before and not (experiment["dir"] / "folds.json").exists()
    same = run_routine(routine, experiment["config"], 1)  # the settings it was made with: folds.json comes back
    assert same.returncode == 0 and "complete already" in same.stdout, same.stderr
    assert (experiment["dir"] / "folds.json").is_file()


def test_an_instance_trained_on_another_split_is_left_out_of_every_comparison(finished, tmp_path, capsys):
    import collect
    experiment = copied(finished, tmp_path)
    path = experiment["dir"] / "results" / "results_tiny_exp1_run2.json"
    document = json.loads(path.read_text())
    first, second = document["folds"]
    first["test_items"], second["test_items"] = second["test_items"], first["test_items"]
    path.write_text(json.dumps(document))
    instances = collect.load_instances(experiment["dir"])
    assert "results_tiny_exp1_run2.json was trained on another split" in capsys.readouterr().err
    summary = collect.routine_summary(instances, "classification")
    assert summary["complete_instances"] == [1]
    assert {entry["instance"] for entry in summary["selection_aware_test"]["per_fold"]} == {1}
    assert collect.significance(instances, "classification", 1)[2] == (None, "")
    import openpyxl
    import results_to_excel
    sheet = openpyxl.load_workbook(results_to_excel.write_spreadsheet(experiment["dir"]))["summary"]
    statuses = [cell.value for row in sheet.iter_rows() for cell in row if cell.value == "complete, other split"]
    assert statuses == ["complete, other split"]



@pytest.mark.parametrize("damage", ["test-metrics-removed", "fold-removed"])
def test_a_complete_result_missing_a_fold_or_its_test_metrics_is_damaged_not_compared(finished, tmp_path, capsys,
                                                                                        damage):
    import collect
    import results_to_excel
    experiment = copied(finished, tmp_path)
    path = experiment["dir"] / "results" / "results_tiny_exp1_run2.json"
    document = json.loads(path.read_text())
    if damage == "test-metrics-removed":
        del document["folds"][1]["metrics"]["test"]
    else:
        del document["folds"][1]
    path.write_text(json.dumps(document))
    instances = collect.load_instances(experiment["dir"])
    error = capsys.readouterr().err
    assert [instance.id for instance in instances] == [1]
    assert f"{path} is damaged (" in error and "restore it or delete it to recompute" in error, error
    assert ("folds[1].metrics.test is missing" if damage == "test-metrics-removed" else
            "fold 2 of folds.json is missing from it") in error
    import openpyxl
    workbook = openpyxl.load_workbook(results_to_excel.write_spreadsheet(experiment["dir"]))
    text = " ".join(str(cell.value) for row in workbook["summary"].iter_rows() for cell in row)
    assert "another split" not in text
    assert any(f"{path} is damaged (" in str(row[0]) for row in workbook["warnings"].iter_rows(values_only=True))
    summary = json.loads(next(experiment["dir"].glob("*_summary.json")).read_text())
    assert any(f"{path} is damaged (" in line for line in summary["warnings"])


def test_a_result_of_another_experiment_in_the_folder_is_skipped_with_a_warning(finished, tmp_path, capsys):
    import collect
    experiment = copied(finished, tmp_path)
    stray = experiment["dir"] / "results" / "results_tiny_exp2_run1.json"
    shutil.copy(experiment["dir"] / "results" / "results_tiny_exp1_run1.json", stray)
    instances = collect.load_instances(experiment["dir"])
    assert [(instance.id, instance.experiment) for instance in instances] == [(1, 1), (2, 1)]
    assert f"{stray} belongs to experiment 2, not to this experiment_1 folder: skipped" in capsys.readouterr().err


def test_a_results_file_on_another_dataset_is_skipped_by_every_view_and_by_use_model(finished, tmp_path, capsys):
    import collect
    import use_model
    experiment = copied(finished, tmp_path)
    genuine = experiment["dir"] / "results" / "results_tiny_exp1_run1.json"
    document = json.loads(genuine.read_text())
    rival = experiment["dir"] / "results" / "results_other_exp1_run1.json"  # sorts before the genuine file
    rival.write_text(json.dumps(dict(document, dataset="other")))
    renamed = experiment["dir"] / "results" / "results_c104_exp1_run2.json"  # a copy renamed: name and content differ
    renamed.write_text(json.dumps(document))
    lone = experiment["dir"] / "results" / "results_other_exp1_run3.json"  # no rival, still another dataset
    lone.write_text(json.dumps(dict(document, dataset="other", instance=3)))
    assert [(instance.id, instance.dataset) for instance in collect.load_instances(experiment["dir"])] == [
        (1, "tiny"), (2, "tiny")]
    err = capsys.readouterr().err
    for path in (rival, lone):
        assert f"{path} holds results of instance {path.stem[-1]} on dataset 'other', but this experiment's folds " \
               "are on 'tiny': skipped" in err
    assert f"{renamed} is named for dataset 'c104' but holds results on 'tiny'" in err
    assert use_model.instance_result(experiment["dir"], 1)[0] == genuine
    with pytest.raises(XvalError, match=r"results_other_exp1_run3.json holds results of instance 3 on dataset "
                                        r"'other', but this experiment's folds are on 'tiny': move it to its own "
                                        r"experiment folder$"):
        use_model.instance_result(experiment["dir"], 3)


def test_results_to_excel_on_a_file_says_it_is_a_file(finished):
    path = finished["dir"] / "folds.json"
    completed = subprocess.run([sys.executable, str(REPO / "results_to_excel.py"), str(path)], capture_output=True,
                               text=True, timeout=300)
    one_line_refusal(completed, f"{path} is a file, not an experiment folder")


def test_a_misspelt_distribution_is_named(tiny_features, tmp_path):
    routine = write_routine(tmp_path, {1: ["search_trials = 2", "learning_rate = log_uniform(1e-4, 1e-2)"]})
    one_line_refusal(run_routine(routine, tiny_features["config_path"]),
                     "'learning_rate = log_uniform(1e-4, 1e-2)' calls log_uniform(), which is not a distribution: "
                     "did you mean loguniform")

# ----------------------------------------------------------------------------------------------------------------
# 2-5, 8, 13, 18b-c. Preprocessing: one clip one item, no repeats, classes once, links followed, nothing replaced

@pytest.fixture(scope="module")
def voices(tmp_path_factory):
    """4 speakers x 2 emotions x 2 takes of the demo voice, 0.6 s at 16 kHz: audio/<speaker>/<n>.wav."""
    root = tmp_path_factory.mktemp("voices")
    rows = []
    for speaker in range(4):
        for emotion, label in ((1, "neutral"), (3, "happy")):
            for take in (1, 2):
                signal = demo_corpus.synthesize_clip(speaker + 1, emotion, 1, take, 1, seed=3,
                                                     clip_seconds_range=(0.6, 0.6))
                file = f"audio/spk{speaker}/{label}_{take}.wav"
                (root / file).parent.mkdir(parents=True, exist_ok=True)
                import soundfile as sf
                sf.write(root / file, signal, 48000, subtype="PCM_16")
                rows.append({"file": file, "label": label, "speaker": f"spk{speaker}"})
    return {"root": root, "rows": rows, "config": write_config(root / "settings", TINY_SETTINGS)}


def table_csv(voices, name, rows):
    path = voices["root"] / f"{name}.csv"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def preprocess(voices, *arguments):
    return subprocess.run([sys.executable, str(REPO / "preprocessing_dataset.py"), *map(str, arguments),
                           "--config", str(voices["config"]), "--jobs", "1"], capture_output=True, text=True,
                          timeout=300)


def test_one_audio_file_under_two_foldable_items_or_labels_is_refused(voices):
    for changed, words in (({"speaker": "spk3"}, "foldable item 'spk0' / 'spk3'"),
                           ({"label": "happy"}, "label 'neutral' / 'happy'")):
        rows = voices["rows"] + [dict(voices["rows"][0], **changed)]
        completed = preprocess(voices, "--csv", table_csv(voices, "twice", rows), "--dataset", "twice")
        one_line_refusal(completed, "row 2 (audio/spk0/neutral_1.wav) and row 18 (audio/spk0/neutral_1.wav) list "
                                    "the same audio file")
        assert words in completed.stderr
    linked = voices["root"] / "audio" / "linked.wav"  # the same file under another name: a link, resolved
    if not linked.exists():
        linked.symlink_to(voices["root"] / "audio" / "spk0" / "neutral_1.wav")
    rows = voices["rows"] + [dict(voices["rows"][0], file="audio/linked.wav", speaker="spk2")]
    one_line_refusal(preprocess(voices, "--csv", table_csv(voices, "linked", rows), "--dataset", "linked"),
                     "list the same audio file")


def test_a_semicolon_csv_is_read_and_an_empty_or_header_only_csv_is_explained(voices):
    path = table_csv(voices, "semicolons", voices["rows"])
    path.write_text(path.read_text().replace(",", ";"))
    completed = preprocess(voices, "--csv", path, "--dataset", "semicolons")
    assert completed.returncode == 0, completed.stderr
    assert "semicolons.csv: columns separated by ';'" in completed.stdout
    assert f"{len(voices['rows'])} clips" in completed.stdout, completed.stdout
    header_only = voices["root"] / "header_only.csv"
    header_only.write_text("file,label,speaker\n")
    one_line_refusal(preprocess(voices, "--csv", header_only, "--dataset", "header_only"),
                     "has a header row (file, label, speaker) but no rows: add one row per clip")
    empty = voices["root"] / "empty.csv"
    empty.write_text("")
    one_line_refusal(preprocess(voices, "--csv", empty, "--dataset", "empty"),
                     "is empty: it needs a header row naming its columns")


def test_a_row_with_more_cells_than_the_header_or_a_column_named_twice_is_refused(voices):
    path = table_csv(voices, "shifted", voices["rows"])
    lines = path.read_text().splitlines()
    lines[2] = lines[2].replace(",neutral,", ",neutral, quiet,")  # an unquoted comma in a label: the cells shift
    path.write_text("\n".join(lines) + "\n")
    one_line_refusal(preprocess(voices, "--csv", path, "--dataset", "shifted"),
                     "shifted.csv, row 3: 4 cells for the 3 columns of the header: a cell holding ',' must be in "
                     "double quotes")
    twice = voices["root"] / "twice_header.csv"
    twice.write_text("file,label,speaker,label\n" + "".join(f"{row['file']},{row['label']},{row['speaker']},x\n"
                                                            for row in voices["rows"]))
    one_line_refusal(preprocess(voices, "--csv", twice, "--dataset", "twice_header"),
                     "names the column 'label' twice in its header row")


def test_labels_or_speakers_that_differ_only_in_case_are_warned_and_one_speaker_is_refused(voices):
    rows = [dict(row, label="Happy" if row["label"] == "happy" and row["speaker"] == "spk0" else row["label"],
                 speaker="SPK1" if row["speaker"] == "spk1" and row["file"].endswith("_2.wav") else row["speaker"])
            for row in voices["rows"]]
    completed = preprocess(voices, "--csv", table_csv(voices, "cases", rows), "--dataset", "cases")
    assert completed.returncode == 0, completed.stderr
    assert "WARNING: labels that differ only in case or spaces are separate classes: Happy / happy" in completed.stdout
    assert "WARNING: foldable items that differ only in case or spaces: SPK1 / spk1: if they are one speaker" in \
        completed.stdout
    one = [row for row in voices["rows"] if row["speaker"] == "spk0"]
    one_line_refusal(preprocess(voices, "--csv", table_csv(voices, "one_speaker", one), "--dataset", "one_speaker"),
                     "only one foldable item (spk0, by 'speaker') has usable clips in")
    one_line_refusal(preprocess(voices, "--csv", table_csv(voices, "one_speaker", one), "--dataset", "one_speaker"),
                     "needs two or more; give --fold-by the column of the foldable items (speakers)")


@pytest.mark.parametrize("name", [".hidden", "émotion", "a" * 101])
def test_a_dataset_name_that_cannot_name_files_is_refused_with_the_rule(voices, name):
    one_line_refusal(preprocess(voices, "--csv", table_csv(voices, "names", voices["rows"]), "--dataset", name),
                     "must start with an ASCII letter or digit and hold only ASCII letters, digits, '_', '.' and '-', "
                     "at most 100 characters")


def test_folders_name_an_audio_file_outside_the_class_folders_and_an_empty_class_folder(voices, tmp_path):
    folder = tmp_path / "classes"
    for row in voices["rows"]:
        target = folder / row["label"] / f"{row['speaker']}_{Path(row['file']).name}"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(voices["root"] / row["file"], target)
    shutil.copy(voices["root"] / voices["rows"][0]["file"], folder / "spk0_loose.wav")
    (folder / "fearful").mkdir()
    completed = preprocess(voices, "--folders", folder, "--dataset", "loose", "--group-pattern", "^(?P<group>[^_]+)_")
    assert completed.returncode == 0, completed.stderr
    assert "WARNING: class folder 'fearful' holds no audio file" in completed.stdout
    assert "not in a class folder: 1" in completed.stdout
    assert "spk0_loose.wav: lies directly in the input folder: move it into its class's folder" in completed.stdout


def test_unicode_forms_header_spaces_and_long_clips_are_read_as_meant(voices, tmp_path):
    import unicodedata
    def typed(text, index):  # every other row as macOS writes names (decomposed: 'A' + a combining mark)
        return unicodedata.normalize("NFD" if index % 2 else "NFC", text)
    rows = [dict(row, label=typed("Ärger", index) if row["label"] == "happy" else row["label"],
                 speaker=typed(f"Jürgen{row['speaker']}", index)) for index, row in enumerate(voices["rows"])]
    path = table_csv(voices, "unicode", rows)
    path.write_text(path.read_text(encoding="utf-8").replace("file,label,speaker", "file, label, speaker"),
                    encoding="utf-8")
    config = write_config(tmp_path / "short", {**TINY_SETTINGS, "preprocessing": {"clip_seconds": "0.5"}})
    completed = subprocess.run([sys.executable, str(REPO / "preprocessing_dataset.py"), "--csv", str(path),
                                "--dataset", "unicode", "--config", str(config), "--jobs", "1"], capture_output=True,
                               text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr
    assert "classes: neutral 8, Ärger 8" in unicodedata.normalize("NFC", completed.stdout), completed.stdout
    assert "16 clips of 4 speakers" in completed.stdout and "differ only in case" not in completed.stdout
    assert "note: 16 of the clips are longer than clip_seconds (0.5 s): each was cut to one 0.5 s piece (cut_mode " \
           f"= {load_config(voices['config'])['preprocessing']['cut_mode']})" in completed.stdout


def test_a_csv_of_the_wrong_kind_or_a_label_that_is_the_foldable_item_is_refused(voices):
    path = table_csv(voices, "kinds", voices["rows"])
    one_line_refusal(preprocess(voices, "--csv", voices["root"] / "audio", "--dataset", "kinds"),
                     "is a folder, not a CSV file")
    one_line_refusal(preprocess(voices, "--folders", path, "--dataset", "kinds", "--fold-by", "file"),
                     "is a file, not a folder")
    one_line_refusal(preprocess(voices, "--csv", path, "--dataset", "kinds", "--label-column", "speaker"),
                     "--label-column and --fold-by both name 'speaker'")

def test_repeated_rows_are_skipped_and_copies_named(voices):
    copy = voices["root"] / "audio" / "copy_of_spk1.wav"
    shutil.copy(voices["root"] / "audio" / "spk1" / "happy_2.wav", copy)
    rows = voices["rows"] + [dict(voices["rows"][4]), {"file": "audio/copy_of_spk1.wav", "label": "happy",
                                                       "speaker": "spk3"}]
    completed = preprocess(voices, "--csv", table_csv(voices, "repeats", rows), "--dataset", "repeats")
    assert completed.returncode == 0, completed.stderr
    assert "row 18: audio/spk1/neutral_1.wav: repeats row 6 (audio/spk1/neutral_1.wav)" in completed.stdout
    assert "WARNING: identical audio in row 9 (audio/spk1/happy_2.wav), foldable item 'spk1'; row 19 " \
           "(audio/copy_of_spk1.wav), foldable item 'spk3'" in completed.stdout
    metadata = json.loads((load_config(voices["config"])["paths"]["features_folder"] /
                           "repeats_metadata.json").read_text())
    assert len(metadata["clips"]) == 17 and len(metadata["identical_audio"]) == 1
    assert "classes: happy 9, neutral 8" in completed.stdout  # every class and its clips, so a stray one shows


def test_classes_are_named_once_and_a_new_order_is_not_a_reuse(voices):
    path = table_csv(voices, "classes", voices["rows"])
    one_line_refusal(preprocess(voices, "--csv", path, "--dataset", "x", "--classes", "happy,happy"),
                     "--classes names happy more than once")
    one_line_refusal(preprocess(voices, "--csv", path, "--dataset", "x", "--classes", "happy,,neutral"),
                     "--classes 'happy,,neutral' has an empty name")
    assert preprocess(voices, "--csv", path, "--dataset", "ordered", "--classes", "neutral,happy").returncode == 0
    again = preprocess(voices, "--csv", path, "--dataset", "ordered", "--classes", "neutral,happy")
    assert again.returncode == 0 and "unchanged, reusing" in again.stdout
    one_line_refusal(preprocess(voices, "--csv", path, "--dataset", "ordered", "--classes", "happy,neutral"),
                     "classes ['neutral', 'happy'] -> ['happy', 'neutral']")
    forced = preprocess(voices, "--csv", path, "--dataset", "ordered", "--classes", "happy,neutral", "--force")
    assert forced.returncode == 0, forced.stderr
    features = load_config(voices["config"])["paths"]["features_folder"]
    assert json.loads((features / "ordered_metadata.json").read_text())["class_names"] == ["happy", "neutral"]


def test_a_dataset_of_one_class_and_labels_missing_from_names_are_explained(voices):
    rows = [row for row in voices["rows"] if row["label"] == "happy"]
    one_line_refusal(preprocess(voices, "--csv", table_csv(voices, "one", rows), "--dataset", "one"),
                     "only one class (happy) has usable clips")
    completed = preprocess(voices, "--folders", voices["root"] / "audio", "--dataset", "named", "--fold-by", "file",
                           "--label-pattern", "^(?P<label>neutral|happy)_1")
    assert completed.returncode == 0, completed.stderr
    assert "spk0/happy_2.wav: --label-pattern '^(?P<label>neutral|happy)_1' finds no label in the name" in \
        completed.stdout and "row " not in completed.stdout


@pytest.mark.parametrize("arguments, words", [
    (["--label-pattern", "(?P<label>x)"], "--label-pattern only acts with --folders"),
    (["--group-pattern", "(?P<group>x)", "--label-pattern", "(?P<label>x)"],
     "--group-pattern, --label-pattern only act with --folders"),
    (["--target", "regression", "--classes", "a,b"], "--classes only acts with --target classification"),
])
def test_an_option_the_front_end_would_ignore_is_refused(voices, arguments, words):
    one_line_refusal(preprocess(voices, "--csv", table_csv(voices, "options", voices["rows"]), "--dataset", "o",
                                *arguments), words)
    folders = preprocess(voices, "--folders", voices["root"] / "audio", "--dataset", "o", "--fold-by", "file",
                         "--group-pattern", "x")
    one_line_refusal(folders, "--group-pattern has no effect with --fold-by file")
    one_line_refusal(preprocess(voices, "--folders", voices["root"] / "audio", "--dataset", "o", "--audio-root", "x",
                                "--fold-by", "file"), "--audio-root only acts with --csv")


def test_every_front_end_follows_symbolic_links(voices, tmp_path):
    import preprocessing_ravdess
    corpus = tmp_path / "real"
    demo_corpus.make_demo_corpus(corpus, n_actors=2, emotions=("neutral", "happy"), repetitions=(1,),
                                 clip_seconds_range=(0.5, 0.6), jobs=1)
    linked = tmp_path / "linked"
    linked.mkdir()
    for actor in sorted(corpus.iterdir()):  # every actor folder a link: an input of only links
        (linked / actor.name).symlink_to(actor)
    summary = preprocessing_ravdess.preprocess(linked, "linked_actors", voices["config"], jobs=1, quiet=True)
    assert summary["clips"] == 12 and summary["items"] == ["01", "02"]
    classes = tmp_path / "classes"
    (classes / "happy").mkdir(parents=True)
    (classes / "neutral").symlink_to(voices["root"] / "audio" / "spk0")  # a class folder that is a link
    for file in sorted((voices["root"] / "audio" / "spk1").glob("happy_*.wav")):
        (classes / "happy" / f"spk1_{file.name}").symlink_to(file)
    completed = preprocess(voices, "--folders", classes, "--dataset", "linked_classes", "--fold-by", "file")
    assert completed.returncode == 0 and "6 clips" in completed.stdout, completed.stdout + completed.stderr


def test_preprocessing_never_replaces_a_dataset_made_otherwise_without_force(voices, tmp_path):
    import preprocessing_ravdess
    corpus = tmp_path / "ravdess"
    demo_corpus.make_demo_corpus(corpus, n_actors=2, emotions=("neutral", "happy"), repetitions=(1,),
                                 clip_seconds_range=(0.5, 0.6), jobs=1)
    preprocessing_ravdess.preprocess(corpus, "kept", voices["config"], jobs=1, quiet=True)
    predictors = load_config(voices["config"])["paths"]["features_folder"] / "kept_predictors.npy"
    before = predictors.read_bytes()
    with pytest.raises(XvalError, match=r"\[features\] type 'mel' -> 'mfcc'.*pass --force to replace it"):
        preprocessing_ravdess.preprocess(corpus, "kept", voices["config"], feature_type="mfcc", jobs=1, quiet=True)
    with pytest.raises(XvalError, match="target classification -> regression"):  # other labels, same files
        preprocessing_ravdess.preprocess(corpus, "kept", voices["config"], target="intensity", jobs=1, quiet=True)
    assert predictors.read_bytes() == before


# ----------------------------------------------------------------------------------------------------------------
# 6. What reached the model is what the results record

def test_a_wrapper_that_drops_or_changes_arguments_fails_the_fold(tiny_features, tmp_path):
    project = copy_project(tmp_path / "project")
    models = project / "define_models.py"
    models.write_text(models.read_text() + '''

import functools


def keep_defaults(function):
    @functools.wraps(function)
    def wrapper(input_shape, output_size, task_type, regularization_lambda, **ignored):
        return function(input_shape, output_size, task_type, regularization_lambda)
    return wrapper


def doubling(function):
    @functools.wraps(function)
    def wrapper(*arguments, dense_units=8, **keywords):
        return function(*arguments, dense_units=2 * dense_units, **keywords)
    return wrapper


@keep_defaults
def DROPPING_model(input_shape, output_size, task_type, regularization_lambda, units=8):
    return EXAMPLE_model(input_shape, output_size, task_type, regularization_lambda, filters=[4], dense_units=units)


@doubling
def DOUBLING_model(input_shape, output_size, task_type, regularization_lambda, dense_units=8):
    return EXAMPLE_model(input_shape, output_size, task_type, regularization_lambda, filters=[4],
                         dense_units=dense_units)
''')
    routine = write_routine(tmp_path, {
        1: instance("dropped", "units = 11", model=['architecture = "DROPPING_model"', "num_epochs = 1"]),
        2: instance("doubled", "dense_units = 5", model=['architecture = "DOUBLING_model"', "num_epochs = 1"])})
    completed = run_routine(routine, tiny_features["config_path"], project=project)
    assert completed.returncode == 1, completed.stdout + completed.stderr
    experiment_dir = tmp_path / "experiments" / "experiment_1"
    errors = [json.loads((experiment_dir / "results" / f"results_tiny_exp1_run{run}.json").read_text())["error"]
              for run in (1, 2)]
    assert "define_models.DROPPING_model received units = 8, but the instance's parameter is 11" in errors[0]
    assert "define_models.DOUBLING_model received dense_units = 10, but the instance's parameter is 5" in errors[1]
    assert not list((experiment_dir / "models").glob("*.hdf5"))


# ----------------------------------------------------------------------------------------------------------------
# 7, 9, 10. Settings that would be ignored are refused

@pytest.mark.parametrize("arguments, words", [
    (["--slurm", "--time="], "[slurm] time is empty"), (["--slurm", "--mem="], "[slurm] mem is empty"),
    (["--slurm", "--sbatch-line="], "an empty --sbatch-line adds nothing"),
    (["--slurm", "--sbatch-line=--array=0-9"], "line '--array=0-9' sets --array, which xval's scripts set themselves"),
    (["--slurm", "--sbatch-line", "--qos=normal; -o /tmp/log"], "line '-o /tmp/log' sets --output"),
    (["--slurm", "--sbatch-line=--arr=0-3"], "line '--arr=0-3' sets --array"),
    (["--slurm", "--sbatch-line=--time 10"], "line '--time 10' sets --time, which xval's scripts set themselves"),
    (["--slurm", "--sbatch-line=-Jother"], "line '-Jother' sets --job-name"),
])
def test_empty_slurm_values_are_refused(tiny_features, tmp_path, arguments, words):
    routine = write_routine(tmp_path, {1: GOOD})
    one_line_refusal(run_routine(routine, tiny_features["config_path"], *arguments), words)
    assert not (tmp_path / "experiments").exists()


@pytest.mark.parametrize("settings, words", [
    ({"experiment_dict": {-1: GOOD}}, "keys must be whole numbers of 0 or more (instance ids), not -1"),
    ({"experiment_folder": ""}, "experiment_folder = '' must be a folder"),
    ({"experiment_folder": "   "}, "must be a folder"),
])
def test_routine_settings_that_would_mean_something_else_are_refused(tiny_features, tmp_path, settings, words):
    routine = write_routine(tmp_path, **{"experiment_dict": {1: GOOD}, **settings})
    one_line_refusal(run_routine(routine, tiny_features["config_path"]), words)


def test_use_model_refuses_a_device_that_is_none(finished):
    completed = subprocess.run([sys.executable, str(REPO / "use_model.py"), "final", str(finished["dir"]), "--gpu",
                                "-5"], capture_output=True, text=True, env=routine_environment(finished["config"]),
                               timeout=300)
    one_line_refusal(completed, "--gpu -5 is not a device")


# ----------------------------------------------------------------------------------------------------------------
# 11. Any path the OS allows

def test_a_newline_in_the_experiment_folder(tiny_features, tmp_path):
    routine = write_routine(tmp_path, {1: GOOD}, experiment_folder="two\nlines")
    completed = run_routine(routine, tiny_features["config_path"])
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert json.loads((tmp_path / "two\nlines" / "experiment_1" / "results" / "results_tiny_exp1_run1.json")
                      .read_text())["status"] == "complete"


def test_environment_variables_in_paths_are_expanded_and_an_unset_one_is_refused(tiny_features, tmp_path,
                                                                                  monkeypatch):
    monkeypatch.setenv("XVAL_TEST_SCRATCH", str(tmp_path / "scratch"))
    routine = write_routine(tmp_path, {1: GOOD}, experiment_folder="$XVAL_TEST_SCRATCH/runs")
    status = run_routine(routine, tiny_features["config_path"], "--status")
    assert status.returncode == 0 and f"in {tmp_path / 'scratch' / 'runs' / 'experiment_1'}\n" in status.stdout, \
        status.stdout + status.stderr
    config = config_with(tiny_features, tmp_path / "config", "paths",
                         {"features_folder": "${XVAL_TEST_SCRATCH}/features"})
    monkeypatch.delenv("XVAL_TEST_SCRATCH")
    for config_path, words in ((tiny_features["config_path"], "experiment_folder = '$XVAL_TEST_SCRATCH/runs': the "
                                "environment variable XVAL_TEST_SCRATCH is not set: set it, or write the path out"),
                               (config, "[paths] features_folder = '${XVAL_TEST_SCRATCH}/features': the environment "
                                "variable XVAL_TEST_SCRATCH is not set")):
        one_line_refusal(run_routine(routine, config_path), words)
    assert not (tmp_path / "$XVAL_TEST_SCRATCH").exists()


def test_a_typo_in_run_routine_a_config_path_with_a_variable_and_a_missing_job_file(tiny_features, tmp_path,
                                                                                     monkeypatch):
    routine = write_routine(tmp_path, {1: GOOD})
    typo = tmp_path / "typo.py"
    typo.write_text(routine.read_text().replace("overwrite_results=overwrite_results",
                                                "overwrite_result=overwrite_results"))
    one_line_refusal(run_routine(typo, tiny_features["config_path"], "--status"),
                     "run_routine(...) got overwrite_result = False, which is not a routine setting: did you mean "
                     "overwrite_results?")
    monkeypatch.setenv("XVAL_TEST_CONFIGS", str(Path(tiny_features["config_path"]).parent))
    environment = dict(routine_environment(tiny_features["config_path"]), XVAL_CONFIG="$XVAL_TEST_CONFIGS/config.ini")
    status = subprocess.run([sys.executable, str(routine), "--status"], capture_output=True, text=True,
                            env=environment, timeout=300)
    assert status.returncode == 0 and "holds no experiment yet" in status.stdout, status.stderr
    folder = subprocess.run([sys.executable, str(routine), "--status"], capture_output=True, text=True, timeout=300,
                            env=dict(environment, XVAL_CONFIG=str(tmp_path)))
    one_line_refusal(folder, f"config file {tmp_path} is a folder: give the path of its config.ini")
    job = subprocess.run([sys.executable, str(REPO / "training.py"), str(tmp_path / "missing.job.json")],
                         capture_output=True, text=True, timeout=300, env=environment)
    assert job.returncode == 2 and job.stderr.strip() == f"xval-error: job file {tmp_path / 'missing.job.json'} " \
        "does not exist: pass a fold's job file, {experiment}/logs/{dataset}_exp{N}_run{R}_fold{F}.job.json", job.stderr


def test_output_piped_into_a_reader_that_ends_stops_with_one_line_not_a_bug(finished):
    """`--status | head -1`: the reader's end is closed before the routine writes (as head does once it has its
    line), so the write fails however fast the machine is."""
    process = subprocess.Popen([sys.executable, str(finished["routine"]), "--status"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=routine_environment(finished["config"]),
                               cwd=str(finished["folder"]))
    process.stdout.close()
    stderr = process.stderr.read()
    assert process.wait(timeout=300) == 130 and stderr.strip() == \
        "stopped: its output was closed (a pipe's reader ended, e.g. | head)", stderr
    merged = subprocess.Popen([sys.executable, str(finished["routine"]), "--status"], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, env=routine_environment(finished["config"]),
                              cwd=str(finished["folder"]))  # `2>&1 | head`: the line about it has nowhere to go
    merged.stdout.close()
    assert merged.wait(timeout=300) == 130


# ----------------------------------------------------------------------------------------------------------------
# 12. A view needs nothing but to read

def test_a_read_only_experiment_is_viewed_and_used_without_writing(mounts, finished, tmp_path):
    experiment = copied(finished, tmp_path)
    before = {path: path.read_bytes() for path in experiment["dir"].rglob("*") if path.is_file()}
    environment = routine_environment(experiment["config"])
    with read_only(experiment["dir"]):
        view = subprocess.run([sys.executable, str(REPO / "results_to_excel.py"), str(experiment["dir"]),
                               str(tmp_path / "elsewhere.xlsx")], capture_output=True, text=True, env=environment)
        assert view.returncode == 0 and "cannot be written" in view.stderr, view.stderr
        here = subprocess.run([sys.executable, str(REPO / "results_to_excel.py"), str(experiment["dir"])],
                              capture_output=True, text=True, env=environment)
        one_line_refusal(here, "pass an OUTPUT.xlsx elsewhere")
        status = run_routine(experiment["routine"], experiment["config"], "--status")
        assert status.returncode == 0 and "2 done" in status.stdout, status.stderr
        final = subprocess.run([sys.executable, str(REPO / "use_model.py"), "final", str(experiment["dir"])],
                               capture_output=True, text=True, env=environment)
        one_line_refusal(final, "cannot be written")
    import openpyxl
    assert openpyxl.load_workbook(tmp_path / "elsewhere.xlsx")["plots"]._images, "the plots are in the workbook"
    assert {path: path.read_bytes() for path in experiment["dir"].rglob("*") if path.is_file()} == before


def test_a_workbook_asked_into_a_read_only_folder_is_one_line(mounts, finished, tmp_path):
    experiment = copied(finished, tmp_path)
    (tmp_path / "archive").mkdir()
    with read_only(tmp_path / "archive"):
        view = subprocess.run([sys.executable, str(REPO / "results_to_excel.py"), str(experiment["dir"]),
                               str(tmp_path / "archive" / "o.xlsx")], capture_output=True, text=True,
                              env=routine_environment(experiment["config"]))
    one_line_refusal(view, f"cannot write {tmp_path / 'archive' / 'o.xlsx'} (")
    assert not list((tmp_path / "archive").iterdir())


def test_a_workbook_on_a_full_disk_is_one_line_and_leaves_nothing(mounts, finished, tmp_path):
    experiment = copied(finished, tmp_path)
    with small_disk(tmp_path / "full", "256k"):
        fill(tmp_path / "full", 4 * 1024)
        view = subprocess.run([sys.executable, str(REPO / "results_to_excel.py"), str(experiment["dir"]),
                               str(tmp_path / "full" / "o.xlsx")], capture_output=True, text=True,
                              env=routine_environment(experiment["config"]))
        one_line_refusal(view, f"no space left to write {tmp_path / 'full' / 'o.xlsx'}")
        assert sorted(path.name for path in (tmp_path / "full").iterdir()) == ["filler.bin"]


def test_status_and_a_rerun_say_what_a_hand_edited_fold_result_changed(finished, tmp_path):
    experiment = copied(finished, tmp_path)
    fold = experiment["dir"] / "results" / "folds" / "results_tiny_exp1_run1_fold1.json"
    document = json.loads(fold.read_text())
    original = document["metrics"]["test"]["balanced_accuracy"]
    fold.write_text(json.dumps({**document, "metrics": {**document["metrics"], "test": {
        **document["metrics"]["test"], "balanced_accuracy": "0.5"}}}))
    status = run_routine(experiment["routine"], experiment["config"], "--status")
    assert status.returncode == 0, status.stderr
    assert "fold 1: done, but results_tiny_exp1_run1_fold1.json is damaged (test balanced_accuracy is '0.5')" \
        in status.stdout
    edited = 0.75 if original != 0.75 else 0.25  # a number within bounds, other than the one trained
    fold.write_text(json.dumps({**document, "metrics": {**document["metrics"], "test": {
        **document["metrics"]["test"], "balanced_accuracy": edited}}}))
    rerun = run_routine(experiment["routine"], experiment["config"])
    assert rerun.returncode == 0, rerun.stderr
    assert "its results JSON now takes the metrics of its fold results (results/folds/), which differ" in rerun.stdout
    assert "records its strings" not in rerun.stdout


# ----------------------------------------------------------------------------------------------------------------
# 14. A full disk: one line, nothing half-written, the fold not done

SAVE_ON_A_FULL_DISK = """
import sys
import keras
import training
from utility_functions import XvalError
inputs = keras.Input(shape=(16, 8))
model = keras.Model(inputs, keras.layers.Dense(4)(keras.layers.Flatten()(inputs)))
model.compile(optimizer="adam", loss="categorical_crossentropy")
try:
    training.save_model(keras, model, sys.argv[1], "models/model.hdf5", {"card": "of the model"})
except XvalError as error:
    print(error)
"""


def test_a_full_disk_while_a_fold_saves_its_model_is_one_line_and_leaves_nothing(mounts, tmp_path):
    # in a process of its own, as a fold is: HDF5 can be left unusable by a failed write
    disk = tmp_path / "disk"
    with small_disk(disk, "512k"):
        fill(disk, 4096)
        saved = subprocess.run([sys.executable, "-c", SAVE_ON_A_FULL_DISK, str(disk / "model.hdf5")],
                               capture_output=True, text=True, timeout=300, env=dict(os.environ, PYTHONPATH=str(REPO)))
        assert re.match(rf"no space left to write {re.escape(str(disk))}/model\.hdf5 \(\d+ bytes free on its disk\)",
                        saved.stdout), saved.stdout + saved.stderr[-2000:]
        assert sorted(path.name for path in disk.iterdir()) == ["filler.bin"], "a temporary model was left"


def test_a_full_disk_while_a_routine_sets_up_is_one_line_and_leaves_nothing(mounts, tiny_features, tmp_path):
    disk = tmp_path / "disk"
    with small_disk(disk, "2m"):
        fill(disk, 96 * 1024)  # room for folds.json and the description, not for the code snapshot
        routine = write_routine(tmp_path, {1: GOOD}, experiment_folder=str(disk / "experiments"))
        one_line_refusal(run_routine(routine, tiny_features["config_path"]), "no space left to write")
        assert not list(disk.rglob("*xvaltmp*")) and not list((disk / "experiments").rglob("*.hdf5"))
        (disk / "filler.bin").unlink()
        completed = run_routine(routine, tiny_features["config_path"])
        assert completed.returncode == 0, completed.stdout + completed.stderr


def features_on(voices, tmp_path, disk):
    """A copy of the voices' config.ini whose features folder is disk; returns its path."""
    import configparser
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(voices["config"], encoding="utf-8")
    parser.set("paths", "features_folder", str(disk))
    config = tmp_path / "config.ini"
    with open(config, "w", encoding="utf-8") as handle:
        parser.write(handle)
    return config


def test_a_full_disk_while_preprocessing_is_one_line(mounts, voices, tmp_path):
    disk = tmp_path / "features_disk"
    config = features_on(voices, tmp_path, disk)
    with small_disk(disk, "1m"):
        fill(disk, 8 * 1024)
        completed = subprocess.run([sys.executable, str(REPO / "preprocessing_dataset.py"), "--csv",
                                    str(table_csv(voices, "full", voices["rows"])), "--dataset", "full", "--config",
                                    str(config), "--jobs", "1"], capture_output=True, text=True, timeout=300)
        one_line_refusal(completed, "no space left to write")
        assert not list(disk.glob("*xvaltmp*")) and not list(disk.glob("full_*"))


def test_a_forced_rewrite_that_fills_the_disk_leaves_the_dataset_as_it_was(mounts, voices, tmp_path):
    from utility_functions import dataset_fingerprint, load_clip_ids, load_dataset
    disk = tmp_path / "features_disk"
    config = features_on(voices, tmp_path, disk)
    command = [sys.executable, str(REPO / "preprocessing_dataset.py"), "--csv", str(table_csv(voices, "kept",
               voices["rows"])), "--dataset", "kept", "--config", str(config), "--jobs", "1"]
    with small_disk(disk, "2m"):
        assert subprocess.run(command, capture_output=True, text=True, timeout=300).returncode == 0
        predictors, targets = load_dataset(disk, "kept")
        before = dataset_fingerprint(predictors, targets, load_clip_ids(disk, "kept", predictors))
        del predictors, targets
        fill(disk, 8 * 1024)  # the new arrays cannot all be written
        forced = subprocess.run(command + ["--force"], capture_output=True, text=True, timeout=300)
        one_line_refusal(forced, "no space left to write")
        predictors, targets = load_dataset(disk, "kept")  # the old dataset, whole: index, metadata, arrays
        assert dataset_fingerprint(predictors, targets, load_clip_ids(disk, "kept", predictors)) == before
        assert not list(disk.glob("*xvaltmp*"))


def test_a_format_2_dataset_missing_its_metadata_or_a_windows_dataset_its_clips_is_refused(tiny_features, tmp_path):
    from utility_functions import dataset_file_stats
    features = tmp_path / "features"
    shutil.copytree(tiny_features["features_folder"], features)
    (features / "tiny_metadata.json").unlink()  # the feature settings every model is used with
    with pytest.raises(XvalError, match=r"dataset 'tiny' has no tiny_metadata.json in .*--force"):
        dataset_file_stats(features, "tiny")
    shutil.copy2(tiny_features["features_folder"] / "tiny_metadata.json", features)
    index = json.loads((features / "tiny_index.json").read_text())
    (features / "tiny_index.json").write_text(json.dumps(dict(index, windows=True)))  # windows, but no clips file
    with pytest.raises(XvalError, match=r"dataset 'tiny' has no tiny_clips.npy in .*--force"):
        dataset_file_stats(features, "tiny")


# ----------------------------------------------------------------------------------------------------------------
# 15. --help

@pytest.mark.parametrize("script", ["xval_routine_example.py", "xval_routine_regression_example.py",
                                    "xval_routine_search_example.py",
                                    "xval_instance.py", "training.py", "use_model.py", "results_to_excel.py",
                                    "preprocessing_dataset.py", "preprocessing_ravdess.py", "benchmarks/run.py",
                                    "benchmarks/plain_keras.py", "benchmarks/naive_preprocessing.py",
                                    "benchmarks/small_corpora.py", "demo_corpus.py"])
@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_every_script_answers_help(script, flag):
    completed = subprocess.run([sys.executable, str(REPO / script), flag], capture_output=True, text=True,
                               timeout=120, cwd=str(REPO), env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert completed.returncode == 0, completed.stderr
    assert "usage" in completed.stdout.lower() and not completed.stderr.strip().startswith("error")


# ----------------------------------------------------------------------------------------------------------------
# 16. A damaged input names its file

@pytest.mark.parametrize("damage", ["truncated", "empty", "text", "index-text", "index-gap"])
def test_damaged_feature_files_are_one_line_naming_the_file(tiny_features, tmp_path, damage):
    features = tmp_path / "features"
    shutil.copytree(tiny_features["features_folder"], features)
    path = features / ("tiny_index.json" if damage.startswith("index") else "tiny_predictors.npy")
    data = path.read_bytes()
    if damage == "index-gap":  # an item's span no longer starts where the previous one ends
        index = json.loads(data)
        index["items"][1][1] += 1
        damaged = json.dumps(index).encode()
    else:
        damaged = {"truncated": data[:len(data) // 2], "empty": b""}.get(damage, b"not an array")
    path.write_bytes(damaged)
    config = config_with(tiny_features, tmp_path / "config", "paths", {"features_folder": str(features)})
    routine = write_routine(tmp_path, {1: GOOD})
    one_line_refusal(run_routine(routine, config), f"{path} is damaged and cannot be read")


@pytest.mark.parametrize("damage", ["folds-not-an-object", "fold-result-not-an-object", "instance-not-text"])
def test_damaged_experiment_files_are_one_line_naming_the_file(finished, tmp_path, damage):
    experiment = copied(finished, tmp_path)
    path = {"folds-not-an-object": experiment["dir"] / "folds.json",
            "fold-result-not-an-object": experiment["dir"] / "results" / "folds" / "results_tiny_exp1_run1_fold1.json",
            "instance-not-text": experiment["dir"] / "results" / "results_tiny_exp1_run1.json"}[damage]
    path.write_bytes(b"\xff\xfe\x00binary" if damage == "instance-not-text" else b"[1, 2]")
    one_line_refusal(run_routine(experiment["routine"], experiment["config"]), str(path))


@pytest.mark.parametrize("given", ["damaged", "results-json", "keras-zip"])
def test_a_model_file_that_is_not_one_is_one_line_saying_what_it_is(finished, tmp_path, given):
    model = tmp_path / {"damaged": "model.hdf5", "results-json": "results.json", "keras-zip": "mine.keras"}[given]
    source = finished["dir"] / "models" / "model_tiny_exp1_run1_fold1.hdf5"
    if given == "keras-zip":
        import zipfile
        with zipfile.ZipFile(model, "w") as archive:  # a .keras file is a zip archive of config and weights
            archive.writestr("config.json", "{}")
    else:
        model.write_bytes(source.read_bytes()[:5000] if given == "damaged" else
                          (finished["dir"] / "results" / "results_tiny_exp1_run1.json").read_bytes())
    completed = subprocess.run([sys.executable, str(REPO / "use_model.py"), "predict", str(model),
                                str(REPO / "README.md")], capture_output=True, text=True, timeout=300,
                               env=routine_environment(finished["config"]))
    one_line_refusal(completed, f"model {model} cannot be read (")
    assert {"damaged": "use a complete copy of the model file", "results-json": "it is a JSON file",
            "keras-zip": "it is a zip archive (Keras 3's .keras format?)"}[given] in completed.stderr



@pytest.mark.parametrize("damage", ["negative-seconds", "best-epoch-0", "best-epoch-past-the-run"])
def test_impossible_fold_values_are_damage_for_the_views_and_for_final(finished, tmp_path, capsys, damage):
    import collect
    experiment = copied(finished, tmp_path)
    path = experiment["dir"] / "results" / "results_tiny_exp1_run1.json"
    document = json.loads(path.read_text())
    fold = document["folds"][0]
    fold.update({"negative-seconds": {"seconds": -5}, "best-epoch-0": {"best_epoch": 0},
                 "best-epoch-past-the-run": {"best_epoch": fold["epochs_run"] + 5}}[damage])
    path.write_text(json.dumps(document))
    assert [instance.id for instance in collect.load_instances(experiment["dir"])] == [2]
    assert f"{path} is damaged (folds[0]" in capsys.readouterr().err
    completed = subprocess.run([sys.executable, str(REPO / "use_model.py"), "final", str(experiment["dir"]),
                                "--instance", "1"], capture_output=True, text=True, timeout=300,
                               env=routine_environment(experiment["config"]))
    one_line_refusal(completed, f"{path} is damaged (folds[0]")
    assert not (experiment["dir"] / "final").exists()


def test_a_copy_of_a_result_under_a_leading_zero_name_is_not_a_second_instance(finished, tmp_path, capsys):
    import collect
    experiment = copied(finished, tmp_path)
    copy = experiment["dir"] / "results" / "results_tiny_exp1_run01.json"
    shutil.copy(experiment["dir"] / "results" / "results_tiny_exp1_run1.json", copy)
    assert [instance.id for instance in collect.load_instances(experiment["dir"])] == [1, 2]
    assert f"{copy} is not named results_{{dataset}}_exp{{N}}_run{{R}}.json: skipped" in capsys.readouterr().err


def test_the_views_show_the_means_of_the_folds_not_a_stored_summary_that_disagrees(finished, tmp_path, capsys):
    import openpyxl
    import results_to_excel
    experiment = copied(finished, tmp_path)
    path = experiment["dir"] / "results" / "results_tiny_exp1_run2.json"
    document = json.loads(path.read_text())
    document["folds"][0]["metrics"]["test"]["balanced_accuracy"] = 1.0  # edited by hand, summary left as it was
    path.write_text(json.dumps(document))
    fold_path = experiment["dir"] / "results" / "folds" / \
        f"results_tiny_exp1_run2_fold{document['folds'][0]['fold']}.json"
    fold = json.loads(fold_path.read_text())  # and in its fold result, which the views take a fold from
    fold["metrics"]["test"]["balanced_accuracy"] = 1.0
    fold_path.write_text(json.dumps(fold))
    values = [fold["metrics"]["test"]["balanced_accuracy"] for fold in document["folds"]]
    from test_results_to_excel import summary_layout
    sheet = openpyxl.load_workbook(results_to_excel.write_spreadsheet(experiment["dir"]))["summary"]
    _, columns, rows = summary_layout(sheet)
    shown = sheet.cell(rows[2], columns[("balanced_accuracy", "test", "mean")]).value
    assert shown == pytest.approx(sum(values) / len(values)) and shown != document["summary"]["test"][
        "balanced_accuracy"]["mean"]
    assert f"{path}: its stored summary disagrees with its folds' metrics (edited by hand?)" in capsys.readouterr().err


def test_predict_names_a_file_in_the_out_path_and_says_when_it_cut_long_files(finished, tmp_path):
    model = finished["dir"] / "models" / "model_tiny_exp1_run1_fold1.hdf5"
    import soundfile as sf
    long_clip = tmp_path / "long.wav"
    sf.write(long_clip, demo_corpus.synthesize_clip(1, 1, 1, 1, 1, seed=3, clip_seconds_range=(6.0, 6.0)), 48000)
    blocker = tmp_path / "afile"
    blocker.write_text("")

    def predict(*arguments):
        return subprocess.run([sys.executable, str(REPO / "use_model.py"), "predict", str(model), str(long_clip),
                               *arguments], capture_output=True, text=True, timeout=300, cwd=str(tmp_path),
                              env=routine_environment(finished["config"]))
    one_line_refusal(predict("--out", str(blocker / "p.csv")), f"{blocker} is a file, not a folder")
    formula = tmp_path / '=HYPERLINK("x","y").wav'  # a name that a spreadsheet would read as a formula
    shutil.copy(long_clip, formula)
    completed = predict(formula.name, "--out", str(tmp_path / "p.csv"))
    assert completed.returncode == 0, completed.stderr
    assert "note: 2 of the files are longer than the model's clips" in completed.stdout
    with open(tmp_path / "p.csv", newline="", encoding="utf-8") as handle:
        assert [row["file"] for row in csv.DictReader(handle)] == [str(long_clip), str(formula)]


def test_a_fold_process_killed_by_a_signal_is_named_by_it():
    from foldjob import ended_text
    assert "SIGKILL: the out-of-memory killer" in ended_text(-signal.SIGKILL)
    assert ended_text(-signal.SIGSEGV) == "the fold process was killed by signal SIGSEGV"
    assert ended_text(3) == "the fold process ended with exit code 3"

# ----------------------------------------------------------------------------------------------------------------
# 17. Exit codes

def test_an_unexpected_error_exits_4_and_a_refusal_2():
    from utility_functions import exit_on_user_error

    def bug():
        raise RuntimeError("a bug")

    def refused():
        raise XvalError("a refusal")

    for main, code in ((bug, 4), (refused, 2)):
        with pytest.raises(SystemExit) as ended:
            exit_on_user_error(main)
        assert ended.value.code == code


# ----------------------------------------------------------------------------------------------------------------
# 18. Status, and what counts as busy

def test_status_of_a_folder_without_an_experiment_says_so(tiny_features, tmp_path):
    routine = write_routine(tmp_path, {1: GOOD, 2: GOOD, 3: GOOD})
    completed = run_routine(routine, tiny_features["config_path"], "--status")
    assert completed.returncode == 0 and "holds no experiment yet" in completed.stdout
    assert "pending" not in completed.stdout


def test_an_instance_completed_meanwhile_by_another_process_counts_as_complete(finished, monkeypatch):
    import executor_local
    from plan import make_plan
    monkeypatch.setenv("XVAL_CONFIG", str(finished["config"]))
    settings = {"description": "d", "dataset": "tiny", "num_experiment": 1, "num_folds": 2, "overwrite_results": False,
                "debug_mode": False, "experiment_dict": {1: GOOD}}
    plan = make_plan(settings, load_config(), [1], finished["dir"], reuse=False)  # as if fold 2 were still to do
    executor = executor_local.LocalExecutor(load_config(), [-1], [], "routine.py")
    busy = {"busy": [{"host": "elsewhere", "pid": 1}], "trained": [{}]}
    assert executor.instance_outcome(plan, plan.instances[0], busy) == "complete"
    (finished["dir"] / "results" / "folds" / "results_tiny_exp1_run1_fold2.json").rename(
        finished["dir"] / "fold2.json")
    try:
        assert executor.instance_outcome(plan, plan.instances[0], busy) == "busy"
    finally:
        (finished["dir"] / "fold2.json").rename(finished["dir"] / "results" / "folds" /
                                                "results_tiny_exp1_run1_fold2.json")
        executor_local.collect_instance(plan.layout, 1, executor_local.instance_record(plan, plan.instances[0]))


def test_a_result_landed_by_another_routine_with_other_parameters_stops_only_that_instance(finished, tmp_path,
                                                                                            monkeypatch, capsys):
    """Routine b planned instance 1 before routine a's results of it landed (a plan without reuse stands for it):
    b leaves instance 1 as a's (one line, its files untouched), trains the rest and exits 1, not 2: 2 means nothing
    was written."""
    import executor_local
    from plan import accept, make_plan
    moved = copied(finished, tmp_path)
    monkeypatch.setenv("XVAL_CONFIG", str(moved["config"]))
    settings = {"description": "d", "dataset": "tiny", "num_experiment": 1, "num_folds": 2, "overwrite_results": False,
                "debug_mode": False, "experiment_dict": {1: instance("good", "num_epochs = 1", "learning_rate = 0.01"),
                                                         3: instance("three", "num_epochs = 1")}}
    plan = make_plan(settings, load_config(), [1, 3], moved["dir"], reuse=False)
    before = {name: data for name, data in experiment_files(moved["dir"]).items() if "run1" in name}
    accept(plan, moved["routine"])  # its parameters file too is routine a's: b writes one only where it trains
    code = executor_local.LocalExecutor(load_config(), [-1], [], "routine.py").run(plan)
    printed = capsys.readouterr()
    assert code == 1, printed.out + printed.err
    assert "instance 1 fold 1/2: not trained: instance 1: " in printed.err and "by another routine since this one " \
        "started" in printed.err, printed.err
    assert "fold 2/2: not trained" not in printed.err  # the rest of instance 1 is left too, said once
    assert "xval: instance(s) 1 not trained: another routine on this experiment folder trains them with other " \
        "parameters" in printed.err
    assert {name: data for name, data in experiment_files(moved["dir"]).items() if "run1" in name} == before
    assert json.loads((moved["dir"] / "results" / "results_tiny_exp1_run3.json").read_text())["status"] == "complete"


def test_a_live_claim_with_other_parameters_on_a_sibling_fold_leaves_the_fold_untrained(finished, tmp_path,
                                                                                         monkeypatch):
    from foldjob import attempt, build_job
    from plan import make_plan
    from utility_functions import HOST, _process_start_time, atomic_write_json
    moved = copied(finished, tmp_path)
    monkeypatch.setenv("XVAL_CONFIG", str(moved["config"]))
    settings = {"description": "d", "dataset": "tiny", "num_experiment": 1, "num_folds": 2, "overwrite_results": False,
                "debug_mode": False, "experiment_dict": {5: instance("five", "num_epochs = 1")}}
    plan = make_plan(settings, load_config(), [5], moved["dir"])
    paths = plan.layout.fold(5, 1)
    atomic_write_json(plan.layout.fold(5, 2).lock, {"host": HOST, "pid": os.getpid(), "since": "now", "tag": "other",
                                                    "start_time": _process_start_time(os.getpid())})

    def launch(job_path, log_path):
        raise AssertionError("a fold in conflict must not be trained")
    result = attempt(build_job(plan, plan.instances[0], plan.folds[0], 1), launch)
    assert result.outcome == "conflict" and "instance 5: another fold of it (run5_fold2.lock) is being " \
        "trained now by " in result.detail, result
    assert not paths.job.exists() and not paths.lock.exists() and not paths.result.exists()


# ----------------------------------------------------------------------------------------------------------------
# 19. Ctrl-C: a fold stopped by SIGINT says so itself

def test_ctrl_c_while_a_routine_imports_the_engine_exits_130_without_a_traceback(tiny_features, tmp_path):
    """The SIGINT arrives while xval_instance imports plan.py (an audit hook sends it there: no timing)."""
    from utility_functions import EXIT_INTERRUPTED
    routine = write_routine(tmp_path, {1: GOOD})
    hook = tmp_path / "sitecustomize.py"
    hook.write_text("import os, signal, sys\n"
                    "def hook(event, args):\n"
                    "    if event == 'import' and args[0] == 'plan' and not hasattr(sys, 'xval_hit'):\n"
                    "        sys.xval_hit = True\n"
                    "        os.kill(os.getpid(), signal.SIGINT)\n"
                    "sys.addaudithook(hook)\n")
    environment = routine_environment(tiny_features["config_path"])
    environment["PYTHONPATH"] = f"{tmp_path}{os.pathsep}{environment['PYTHONPATH']}"
    completed = subprocess.run([sys.executable, str(routine)], capture_output=True, text=True, env=environment,
                               timeout=300, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    # (SIG_DFL: a pytest-xdist worker ignores SIGINT, and a child would inherit that; a user's shell does not)
    assert completed.returncode == EXIT_INTERRUPTED and completed.stderr.strip() == "interrupted", completed.stderr
    assert not (tmp_path / "experiments").exists()


def test_a_fold_stopped_by_ctrl_c_exits_130_through_the_fork_server(finished, tmp_path):
    from launchers import INTERRUPTED_EXIT, ForkServerLauncher, fold_environment
    job = json.loads((finished["dir"] / "logs" / "tiny_exp1_run1_fold1.job.json").read_text())
    job["parameters"] = dict(job["parameters"], num_epochs=500, early_stopping=False)
    job.update(result_path=str(tmp_path / "result.json"), model_path=str(tmp_path / "model.hdf5"))
    job_path = tmp_path / "long.job.json"
    job_path.write_text(json.dumps(job))
    log = tmp_path / "fold.log"
    launcher = ForkServerLauncher(fold_environment("tensorflow", 1, -1, dict(os.environ, PYTHONPATH=str(REPO))))
    outcome = {}

    def interrupt_the_fold():
        while not (log.exists() and "xval-epoch: " in log.read_text(errors="replace")):
            time.sleep(0.05)  # polling for the first epoch
        children = Path(f"/proc/{launcher.server.pid}/task/{launcher.server.pid}/children").read_text().split()
        outcome["child"] = int(children[0])
        os.kill(int(children[0]), signal.SIGINT)

    import threading
    thread = threading.Thread(target=interrupt_the_fold, daemon=True)
    try:
        thread.start()
        code, error = launcher.run(job_path, log, "long fold")
        thread.join()
        assert code == INTERRUPTED_EXIT and error == "interrupted (Ctrl-C)"
        assert launcher.server.poll() is None, "the fork server must survive the fold's Ctrl-C"
    finally:
        launcher.close()
    assert not (tmp_path / "result.json").exists()


def test_instances_with_the_same_parameters_are_named_before_training(tiny_features, tmp_path, monkeypatch):
    from plan import make_plan
    monkeypatch.setenv("XVAL_CONFIG", str(tiny_features["config_path"]))
    settings = {"description": "d", "dataset": "tiny", "num_experiment": 1, "num_folds": 2, "overwrite_results": False,
                "debug_mode": False, "experiment_dict": {1: GOOD, 2: instance("other comment", "num_epochs = 1"),
                                                         3: instance("x", "num_epochs = 2")}}
    plan = make_plan(settings, load_config(), [1, 2, 3], tmp_path / "experiment_1")
    assert plan.warnings == ("instances 1, 2 have the same parameters (comments aside): they will give the same "
                             "results; change one, or remove it",)


# ----------------------------------------------------------------------------------------------------------------
# Claims: two routines on one instance, and a claim left beside a finished fold

def test_a_routine_giving_an_instance_other_parameters_while_another_trains_it_is_refused(tiny_features, tmp_path):
    long = write_routine(tmp_path, {1: instance("a", "num_epochs = 400", "early_stopping = False")},
                         name="xval_routine_a.py")
    other = write_routine(tmp_path, {1: instance("a", "num_epochs = 400", "early_stopping = False",
                                                 "learning_rate = 0.01")}, name="xval_routine_b.py")
    running = start_routine(long, tiny_features["config_path"], 1, 1, -1)
    log = tmp_path / "experiments" / "experiment_1" / "logs" / "tiny_exp1_run1_fold1.log"
    try:
        while not (log.exists() and "xval-epoch: " in log.read_text(errors="replace")):
            assert running.poll() is None, "routine a ended before its first epoch"
            time.sleep(0.05)  # polling for routine a's first epoch
        refused = run_routine(other, tiny_features["config_path"], 1, 1, -1)
        status = run_routine(other, tiny_features["config_path"], "--status", 1, 1)
    finally:
        os.killpg(running.pid, signal.SIGINT)
        running.wait(timeout=300)
    one_line_refusal(refused, "instance 1: fold 1 is being trained now by ")
    assert "with other parameters (learning_rate differ)" in refused.stderr
    assert "xval: a run of these instances would now refuse: instance 1: fold 1 is being trained now by " in \
        status.stdout and "  fold 1: running on " in status.stdout, status.stdout
    assert not list((tmp_path / "experiments" / "experiment_1" / "results").rglob("*fold2.json"))


def test_a_claim_left_beside_a_finished_fold_is_shown_done_and_removed_by_the_next_run(finished, tmp_path):
    from utility_functions import HOST
    experiment = copied(finished, tmp_path)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock = experiment["dir"] / "locks" / "run1_fold1.lock"  # killed after its result landed, before the release
    lock.write_text(json.dumps({"host": HOST, "pid": int(gone.stdout), "since": "earlier"}))
    status = run_routine(experiment["routine"], experiment["config"], "--status")
    assert "instance 1: 2 done" in status.stdout and "stale" not in status.stdout, status.stdout
    rerun = run_routine(experiment["routine"], experiment["config"])
    assert rerun.returncode == 0 and "complete already" in rerun.stdout, rerun.stdout + rerun.stderr
    assert not lock.exists()


def test_predicting_with_an_experiment_whose_models_were_moved_says_they_are_missing(finished, tmp_path):
    experiment = copied(finished, tmp_path)
    (experiment["dir"] / "models").rename(experiment["dir"] / "models_moved")
    import soundfile as sf
    sf.write(tmp_path / "clip.wav", demo_corpus.synthesize_clip(1, 1, 1, 1, 1, seed=3, clip_seconds_range=(0.6, 0.6)),
             48000, subtype="PCM_16")
    completed = subprocess.run([sys.executable, str(REPO / "use_model.py"), "predict", str(experiment["dir"]),
                                str(tmp_path / "clip.wav"), "--instance", "1"], capture_output=True, text=True,
                               timeout=300, env=routine_environment(experiment["config"]))
    one_line_refusal(completed, "is missing (moved or deleted?): restore it (an experiment's fold models are in its "
                                "models/ folder)")


def test_status_says_when_folds_json_or_the_dataset_changed_since_a_fold_was_trained(finished, tmp_path):
    experiment = copied(finished, tmp_path)
    folds = experiment["dir"] / "folds.json"
    split = json.loads(folds.read_text())
    first = split["folds"][0]
    first["train_items"], first["val_items"] = first["val_items"], first["train_items"]
    folds.write_text(json.dumps(split))
    status = run_routine(experiment["routine"], experiment["config"], "--status")
    assert "fold 1: done, but folds.json now assigns other items to this fold (edited?): a run checks whether it " \
           "can still reuse it" in status.stdout, status.stdout
    refused = run_routine(experiment["routine"], experiment["config"])
    assert refused.returncode == 2 and "was trained on another split than folds.json's" in refused.stderr


def test_status_tells_a_dataset_rewritten_with_the_same_content_from_one_with_other_content(tiny_features,
                                                                                             tmp_path):
    """Where the plan refuses (so no fingerprint was checked), --status reads the content fingerprint the dataset's
    index records: a --force that wrote the same arrays again is no change."""
    import types
    import foldjob
    from utility_functions import dataset_file_stats, recorded_fingerprint
    copy = tmp_path / "features"
    shutil.copytree(tiny_features["features_folder"], copy)
    job = {"features_folder": str(copy), "dataset": "tiny", "dataset_files": dataset_file_stats(copy, "tiny")}
    predictors = copy / "tiny_predictors.npy"
    os.utime(predictors, ns=(predictors.stat().st_atime_ns, predictors.stat().st_mtime_ns + 10 ** 9))  # rewritten
    layout = types.SimpleNamespace(folds=tmp_path / "no_folds.json")
    same = {"dataset_fingerprint": recorded_fingerprint(copy, "tiny")}
    assert same["dataset_fingerprint"] and foldjob.changed_since_trained(layout, 1, same, job) is None
    assert foldjob.changed_since_trained(layout, 1, {"dataset_fingerprint": "other"}, job) == \
        "the files of dataset 'tiny' were rewritten since it was trained with other content (preprocessed again?)"


def test_a_fold_model_cut_short_is_not_reused(finished, tmp_path):
    experiment = copied(finished, tmp_path)
    model = experiment["dir"] / "models" / "model_tiny_exp1_run2_fold2.hdf5"
    model.write_bytes(model.read_bytes()[:2000])
    before = experiment_files(experiment["dir"])
    status = run_routine(experiment["routine"], experiment["config"], "--status")
    assert "would now refuse: instance 2: " in status.stdout and "which changed since it was trained" in \
        status.stdout, status.stdout
    refused = run_routine(experiment["routine"], experiment["config"])
    one_line_refusal(refused, "names the model models/model_tiny_exp1_run2_fold2.hdf5, which changed since it was "
                              "trained (cut short, or replaced by another file?)")
    assert experiment_files(experiment["dir"]) == before


def test_status_says_what_a_run_would_do_after_the_checks_a_run_makes(finished, tiny_features, tmp_path):
    """--status makes the plan a run would make (read-only): it never calls done what a run refuses or retrains,
    and a fold the run's checks accept is done without guesses."""
    experiment = copied(finished, tmp_path)
    before = experiment_files(experiment["dir"])
    job = experiment["dir"] / "logs" / "tiny_exp1_run1_fold1.job.json"
    recorded = job.read_text()
    files = json.loads(recorded)["dataset_files"]
    job.write_text(json.dumps(dict(json.loads(recorded), dataset_files=[[1, 1]] * len(files))))
    touched = run_routine(experiment["routine"], experiment["config"], "--status")  # as after files rewritten alike
    assert "a run of these instances would now refuse" not in touched.stdout
    assert re.search(r"fold 1: done, test balanced_accuracy \d", touched.stdout), touched.stdout
    assert "rewritten" not in touched.stdout
    job.write_text(recorded)

    results = experiment["dir"] / "results" / "results_tiny_exp1_run1.json"
    original = results.read_text()
    results.write_text(json.dumps(dict(json.loads(original), parameter_hash="0" * 16)))
    edited = run_routine(experiment["routine"], experiment["config"], "--status")
    assert "xval: a run of these instances would now refuse: instance 1: " in edited.stdout and \
        "was computed with other parameters" in edited.stdout, edited.stdout
    results.write_text(original)

    folds = experiment["dir"] / "folds.json"
    split = folds.read_text()
    folds.write_text(split[:len(split) // 2])
    truncated = run_routine(experiment["routine"], experiment["config"], "--status")
    assert "would now refuse: " in truncated.stdout and "folds.json is damaged" in truncated.stdout, truncated.stdout
    folds.write_text(split)

    three_folds = write_routine(experiment["folder"], {1: GOOD, 2: instance("two", "num_epochs = 1",
                                                                            "dense_units = 4")}, num_folds=3)
    more = run_routine(three_folds, experiment["config"], "--status")
    assert "would now refuse: " in more.stdout and "num_folds" in more.stdout, more.stdout

    again = write_routine(experiment["folder"], {1: GOOD, 2: instance("two", "num_epochs = 1", "dense_units = 4")},
                          overwrite_results=True)
    overwrite = run_routine(again, experiment["config"], "--status")
    assert overwrite.stdout.count("done; a run retrains it (overwrite_results = True)") == 4, overwrite.stdout
    assert experiment_files(experiment["dir"]) == before


def test_edited_sums_or_an_index_that_moves_a_clip_to_another_item_are_refused(tiny_features, tmp_path):
    import numpy as np
    from utility_functions import load_dataset, load_item_sums
    features = tmp_path / "features"
    shutil.copytree(tiny_features["features_folder"], features)
    sums = features / "tiny_sums.npy"
    original = np.load(sums)
    np.save(sums, original * np.array([1000.0, 1.0])[np.newaxis, :, np.newaxis])  # sums edited: variance < 0
    with pytest.raises(XvalError, match=r"tiny_sums.npy is damaged and cannot be read .*negative variance"):
        load_item_sums(features, "tiny", load_dataset(features, "tiny")[0])
    shifted = original.copy()
    shifted[0, 0, 0] += 1000.0  # a sum edited within what a variance allows: a fold would normalise wrongly
    np.save(sums, shifted)
    config = config_with(tiny_features, tmp_path / "config", "paths", {"features_folder": str(features)})
    routine = write_routine(tmp_path, {1: GOOD})
    one_line_refusal(run_routine(routine, config), "tiny_sums.npy disagrees with the predictors of item 01 (edited")
    np.save(sums, original)
    index = json.loads((features / "tiny_index.json").read_text())
    index["items"][0][2] += 1  # one clip of the second item moved into the first
    index["items"][1][1] += 1
    (features / "tiny_index.json").write_text(json.dumps(index))
    one_line_refusal(run_routine(routine, config), "dataset files disagree with ")
