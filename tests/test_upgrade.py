"""What main at 167406f wrote keeps working: its experiments resume without training, its --slurm experiments give a
final model, its split is the one the default splitter makes, its parameters hash the same, and a fold job file it
wrote (a SLURM array queued across an upgrade) still runs.

tests/fixtures/v167406f/ was made by that version (tests/fixtures/make_v167406f.py, which says how): a tiny dataset,
experiment_1 (two instances x two folds, run locally) and experiment_2 (one instance, run with --slurm).
"""
import configparser
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from parameters import HASH_NEUTRAL, architecture_signatures, parameter_hash, resolve_instance
from plan import make_folds
from routine_helpers import REPO, experiment_files, routine_environment, run_routine
from utility_functions import CONFIG_SCHEMA, dataset_file_stats, load_config

FIXTURE = REPO / "tests" / "fixtures" / "v167406f"
WRITTEN_AT = "/tmp/xval-fixture-work"  # where make_v167406f.py made it: the absolute paths its job files hold


@pytest.fixture
def old(tmp_path):
    """A copy of the fixture: experiments/experiment_{1,2}, features/, the routines, and the config.ini of 167406f
    (without the keys added since) with its paths pointing there."""
    shutil.copytree(FIXTURE / "features", tmp_path / "features")
    for experiment in ("experiment_1", "experiment_2"):
        shutil.copytree(FIXTURE / experiment, tmp_path / "experiments" / experiment)
    for routine in FIXTURE.glob("xval_routine_fixture*.py"):
        shutil.copy2(routine, tmp_path / routine.name)
    parser = configparser.ConfigParser(inline_comment_prefixes=(";", "#"), interpolation=None)
    parser.read(FIXTURE / "config.ini", encoding="utf-8")
    for key, value in {"features_folder": "features", "experiment_folder": "experiments"}.items():
        parser.set("paths", key, str(tmp_path / value))
    with open(tmp_path / "config.ini", "w", encoding="utf-8") as handle:
        parser.write(handle)
    return {"root": tmp_path, "config": tmp_path / "config.ini", "experiments": tmp_path / "experiments"}


def results_of(experiment_dir):
    return {path.name: json.loads(path.read_text()) for path in (experiment_dir / "results").glob("results_*.json")}


def test_an_experiment_of_167406f_resumes_and_trains_nothing(old):
    experiment_dir = old["experiments"] / "experiment_1"
    before = experiment_files(experiment_dir)
    completed = run_routine(old["root"] / "xval_routine_fixture1.py", old["config"])
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert completed.stdout.count("complete already, skipped (overwrite_results = False)\n") == 2, completed.stdout
    assert "fold 1/2 on" not in completed.stdout and "edited comments" not in completed.stdout
    after = experiment_files(experiment_dir)
    summary = "fixture_exp1_summary.json"  # a view: it gains the baseline the run computed, and nothing else
    gained, was = json.loads(after.pop(summary)), json.loads(before.pop(summary))
    assert "baseline" in gained["task_types"]["classification"]
    del gained["task_types"]["classification"]["baseline"]
    assert gained == {**was, "about": gained["about"]} and gained["about"].startswith(was["about"])
    assert {name: data for name, data in after.items() if name in before} == before, "a result file was rewritten"
    assert sorted(set(after) - set(before)) == sorted(
        ["fixture_exp1_results_spreadsheet.xlsx", "results/baseline_fixture_exp1_classification.json"] +
        [name for name in after if name.startswith("plots/")])
    for log in (experiment_dir / "logs").glob("fixture_exp1_run*_fold*.log"):
        assert log.read_text().count("\n===== ") == 1, f"{log.name}: the fold was trained again"


# defaults of config.ini [training] changed since 167406f (README: Defaults that changed): their values then
CHANGED_DEFAULTS = {"num_epochs": 20, "patience": 5}


def test_its_config_ini_still_loads_with_the_keys_added_since():
    config, current = load_config(FIXTURE / "config.ini"), load_config(REPO / "config.ini")
    assert config["folds"]["splitter"] == "GroupKFold" and config["claims"] == current["claims"]
    assert config["training"] == {**current["training"], **CHANGED_DEFAULTS} and config["folds"] == current["folds"]


def test_its_parameters_hash_as_they_did_and_new_training_keys_are_neutral():
    """With the changed defaults at their old values (what the refusal's hint adds to an instance), every result of
    167406f hashes as it did: every key added since is neutral."""
    training = {**load_config(REPO / "config.ini")["training"], **CHANGED_DEFAULTS}
    document = json.loads((FIXTURE / "experiment_1" / "results" / "results_fixture_exp1_run1.json").read_text())
    for path in (FIXTURE / "experiment_1" / "results").glob("results_*.json"):
        recorded = json.loads(path.read_text())
        resolved = resolve_instance(recorded["parameter_strings"], training, architecture_signatures(), path.name)
        assert parameter_hash(resolved, "fixture", 2) == recorded["parameter_hash"], path.name
    added = set(CONFIG_SCHEMA["training"]) - set(document["parameters"])
    assert added <= set(HASH_NEUTRAL), f"[training] keys {sorted(added - set(HASH_NEUTRAL))} added since 167406f " \
        "have no neutral value in parameters.HASH_NEUTRAL: every finished experiment would refuse to resume"


def test_a_training_key_added_with_its_neutral_value_changes_no_hash(monkeypatch):
    training = load_config(REPO / "config.ini")["training"]
    strings = ['task_type = "classification"', 'comment_1 = ""', 'comment_2 = ""', 'architecture = "EXAMPLE_model"']
    before = parameter_hash(resolve_instance(strings, training, architecture_signatures(), "i"), "d", 4)
    monkeypatch.setitem(CONFIG_SCHEMA["training"], "label_smoothing", float)
    monkeypatch.setitem(HASH_NEUTRAL, "label_smoothing", 0.0)
    upgraded = dict(training, label_smoothing=0.0)
    assert parameter_hash(resolve_instance(strings, upgraded, architecture_signatures(), "i"), "d", 4) == before
    moved = resolve_instance([*strings, "label_smoothing = 0.1"], upgraded, architecture_signatures(), "i")
    assert parameter_hash(moved, "d", 4) != before


def test_an_architecture_argument_added_at_its_neutral_value_changes_no_hash():
    """POOLED_STATS_model's standardize (2026-12-04): a pooled instance of before, whose resolved parameters have no
    standardize, hashes as the same instance now (standardize = False); standardize = True is another instance."""
    training = load_config(REPO / "config.ini")["training"]
    strings = ['task_type = "classification"', 'comment_1 = ""', 'comment_2 = ""',
               'architecture = "POOLED_STATS_model"']
    now = resolve_instance(strings, training, architecture_signatures(), "i")
    before = {name: value for name, value in now.items() if name != "standardize"}
    assert now["standardize"] is False and parameter_hash(now, "d", 4) == parameter_hash(before, "d", 4)
    standardized = resolve_instance([*strings, "standardize = True"], training, architecture_signatures(), "i")
    assert parameter_hash(standardized, "d", 4) != parameter_hash(before, "d", 4)


def test_the_default_splitter_makes_the_split_of_167406f():
    for experiment in ("experiment_1", "experiment_2"):
        saved = json.loads((FIXTURE / experiment / "folds.json").read_text())
        assert make_folds(saved["items"], saved["num_folds"], saved["folds_seed"], saved["validation_share"]) == \
            saved["folds"]


def test_a_slurm_experiment_of_167406f_gives_a_final_model_that_predicts(old, tmp_path):
    import demo_corpus
    experiment_dir = old["experiments"] / "experiment_2"
    environment = routine_environment(old["config"])
    final = subprocess.run([sys.executable, str(REPO / "use_model.py"), "final", str(experiment_dir)],
                           capture_output=True, text=True, env=environment, timeout=600)
    assert final.returncode == 0, final.stdout + final.stderr
    model = experiment_dir / "final" / "model_fixture_exp2_run1_final.hdf5"
    assert model.is_file()
    audio = demo_corpus.make_demo_corpus(tmp_path / "audio", n_actors=4, emotions=("neutral", "happy"),
                                         repetitions=(1,), clip_seconds_range=(0.5, 0.6), jobs=1)["folder"]
    document = json.loads((experiment_dir / "results" / "results_fixture_exp2_run1.json").read_text())
    fold = document["folds"][0]
    metadata = json.loads((old["root"] / "features" / "fixture_metadata.json").read_text())
    files = [Path(audio) / clip["file"] for item in fold["test_items"] for clip in metadata["clips"]
             if clip["actor"] == item]
    for predicted_by in (model, experiment_dir / fold["model_file"]):  # the new final model, an old fold model
        out = tmp_path / f"{predicted_by.stem}.csv"
        predicted = subprocess.run([sys.executable, str(REPO / "use_model.py"), "predict", str(predicted_by),
                                    *map(str, files), "--out", str(out)], capture_output=True, text=True,
                                   env=environment, timeout=600)
        assert predicted.returncode == 0, predicted.stdout + predicted.stderr
        assert len(out.read_text().splitlines()) == len(files) + 1
    rows = out.read_text().splitlines()[1:]
    names = document["class_names"]
    assert [row.split(",")[1] for row in rows] == [names[i] for i in fold["predictions"]["test"]["y_pred"]]


def test_a_fold_job_written_by_167406f_still_runs(old):
    # a SLURM array queued before the upgrade runs its task with the new code: the fold job file has format 1
    experiment_dir = old["experiments"] / "experiment_2"
    submission = next((experiment_dir / "slurm").iterdir())
    stats = dataset_file_stats(old["root"] / "features", "fixture")
    for path in [submission / "fold_jobs.txt", *submission.glob("jobs/*.json")]:
        text = path.read_text().replace(WRITTEN_AT + "/experiments", str(old["experiments"]))
        text = text.replace(WRITTEN_AT + "/features", str(old["root"] / "features"))
        if path.suffix == ".json":
            job = json.loads(text)
            text = json.dumps(dict(job, dataset_files=stats))  # the copied features are the same files
        path.write_text(text)
    (experiment_dir / "results" / "folds" / "results_fixture_exp2_run1_fold2.json").unlink()
    task = subprocess.run([sys.executable, str(REPO / "xval_instance.py"), "--fold-task",
                           str(submission / "fold_jobs.txt"), "1"], capture_output=True, text=True,
                          env=routine_environment(old["config"]), cwd=str(REPO), timeout=600)
    assert task.returncode == 0, task.stdout + task.stderr
    assert "instance 1 complete" in task.stdout
    document = json.loads((experiment_dir / "results" / "results_fixture_exp2_run1.json").read_text())
    assert document["status"] == "complete" and [fold["fold"] for fold in document["folds"]] == [1, 2]
    assert (experiment_dir / "logs" / "fixture_exp2_run1_fold2.job.json").is_file()
    done = subprocess.run([sys.executable, str(REPO / "xval_instance.py"), "--fold-task",
                           str(submission / "fold_jobs.txt"), "0"], capture_output=True, text=True,
                          env=routine_environment(old["config"]), cwd=str(REPO), timeout=600)
    assert done.returncode == 0 and "finished meanwhile by another process, kept" in done.stdout, done.stdout


def test_a_changed_default_is_named_with_the_string_that_reuses_the_results(old):
    """A default that changes after an experiment was made (here config.ini's learning_rate): the refusal names
    the string that gives the old value back, and with it the experiment resumes, training nothing."""
    parser = configparser.ConfigParser(inline_comment_prefixes=(";", "#"), interpolation=None)
    parser.read(old["config"], encoding="utf-8")
    parser.set("training", "learning_rate", "0.003")
    with open(old["config"], "w", encoding="utf-8") as handle:
        parser.write(handle)
    routine = old["root"] / "xval_routine_fixture1.py"
    refused = run_routine(routine, old["config"], "1")
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "(learning_rate changed); learning_rate is not set by the instance: a default changed" in refused.stderr
    assert "add 'learning_rate = 0.001'" in refused.stderr, refused.stderr
    routine.write_text(routine.read_text().replace("'batch_size = 4']", "'batch_size = 4', 'learning_rate = 0.001']"))
    resumed = run_routine(routine, old["config"], "1")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "fold 1/2 on" not in resumed.stdout and "complete already" in resumed.stdout, resumed.stdout
