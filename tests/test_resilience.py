"""Never lose a result: SIGKILL at random moments then resume, two routines on one experiment, changed parameters."""
import json
import os
import random
import signal
import time

import pytest

from routine_helpers import experiment_files, instance, run_routine, start_routine, write_routine

KILLS = 4
KILL_SEED = 20261122


def fold_files(experiment_dir):
    """{relative path: bytes} of every completed fold's result and model."""
    return {name: data for name, data in experiment_files(experiment_dir).items()
            if name.startswith("results/folds/") or name.startswith("models/")}


def completed_folds(experiment_dir):
    """The fold results present, with the models they name: {relative path: bytes} of both."""
    files = fold_files(experiment_dir)
    completed = {}
    for name, data in files.items():
        if name.startswith("results/folds/"):
            model = json.loads(data)["model_file"]
            completed[name], completed[model] = data, files[model]
    return completed


def test_sigkill_at_random_moments_then_resume_loses_and_repeats_nothing(tiny_features, tmp_path):
    experiment_dict = {1: instance("a"), 2: instance("b", "seed = 2")}
    routine = write_routine(tmp_path, experiment_dict, num_folds=3)
    experiment_dir = tmp_path / "experiments" / "experiment_1"
    moments = random.Random(KILL_SEED)
    survivors = {}
    for _ in range(KILLS):
        process = start_routine(routine, tiny_features["config_path"])
        time.sleep(moments.uniform(2.0, 9.0))
        os.killpg(process.pid, signal.SIGKILL)  # the routine and its fold process, at once
        process.wait()
        time.sleep(0.2)
        for name, data in completed_folds(experiment_dir).items():
            assert survivors.setdefault(name, data) == data, f"{name} was rewritten after it completed"
    finished = run_routine(routine, tiny_features["config_path"])
    assert finished.returncode == 0, finished.stderr
    assert survivors, "no fold completed before the kills: the kill moments are too early to test anything"

    import keras
    after = fold_files(experiment_dir)
    for name, data in survivors.items():
        assert after[name] == data, f"{name} changed after resuming"
    for run in (1, 2):
        document = json.loads((experiment_dir / "results" / f"results_tiny_exp1_run{run}.json").read_text())
        assert document["status"] == "complete"
        assert [fold["fold"] for fold in document["folds"]] == [1, 2, 3]
        for fold in document["folds"]:
            keras.models.load_model(experiment_dir / fold["model_file"])
    for path in experiment_dir.rglob("*.json"):
        json.loads(path.read_text())
    assert not list(experiment_dir.rglob("*xvaltmp*")), "temporary files remain"
    assert sorted(name for name in after if name.startswith("results/folds/")) == sorted(
        f"results/folds/results_tiny_exp1_run{run}_fold{fold}.json" for run in (1, 2) for fold in (1, 2, 3))


def test_two_routines_on_overlapping_ranges_train_each_instance_once(tiny_features, tmp_path):
    experiment_dict = {number: instance(f"i{number}", "num_epochs = 1") for number in (1, 2, 3, 4)}
    routine = write_routine(tmp_path, experiment_dict, num_folds=2)
    first = start_routine(routine, tiny_features["config_path"], 1, 3, 0)
    second = start_routine(routine, tiny_features["config_path"], 2, 4, 1)
    assert first.wait(timeout=600) == 0 and second.wait(timeout=600) == 0
    experiment_dir = tmp_path / "experiments" / "experiment_1"
    for number in (1, 2, 3, 4):
        document = json.loads((experiment_dir / "results" / f"results_tiny_exp1_run{number}.json").read_text())
        assert document["status"] == "complete"
        for fold in (1, 2):
            log = (experiment_dir / "logs" / f"tiny_exp1_run{number}_fold{fold}.log").read_text()
            assert log.count("\n===== ") == 1, f"instance {number} fold {fold} was trained more than once"
    outputs = "".join(path.read_text() for path in tmp_path.glob("*.out"))
    assert outputs.count("being run by") >= 1 or outputs.count("complete already") >= 1
    assert not list(experiment_dir.rglob("*xvaltmp*"))
    import openpyxl
    openpyxl.load_workbook(next(experiment_dir.glob("*_results_spreadsheet.xlsx")))


def test_changed_parameters_of_a_started_instance_are_refused(tiny_features, tmp_path):
    routine = write_routine(tmp_path, {1: instance("a", "num_epochs = 1")}, num_folds=2)
    assert run_routine(routine, tiny_features["config_path"]).returncode == 0
    experiment_dir = tmp_path / "experiments" / "experiment_1"
    before = experiment_files(experiment_dir)
    changed = write_routine(tmp_path, {1: instance("a", "num_epochs = 1", "learning_rate = 0.01")}, num_folds=2)
    refused = run_routine(changed, tiny_features["config_path"])
    assert refused.returncode == 2 and "computed with other parameters" in refused.stderr
    assert "overwrite_results = True" in refused.stderr and refused.stderr.strip().count("\n") == 0
    assert experiment_files(experiment_dir) == before
    edited_comment = write_routine(tmp_path, {1: instance("renamed", "num_epochs = 1")}, num_folds=2)
    assert "complete already" in run_routine(edited_comment, tiny_features["config_path"]).stdout


def test_stale_claim_of_a_dead_process_is_taken_over(tmp_path):
    from utility_functions import HOST, claim, release
    lock = tmp_path / "run1.lock"
    lock.write_text(json.dumps({"host": HOST, "pid": 2 ** 22 + 12345, "since": "earlier"}))
    assert claim(lock) is None
    assert json.loads(lock.read_text())["pid"] == os.getpid()
    lock.write_text(json.dumps({"host": "another-host", "pid": 1, "since": "earlier"}))
    assert claim(lock)["host"] == "another-host"  # a claim from another host is respected
    release(lock)
    assert lock.exists()


@pytest.mark.parametrize("name", ["with space", "ünïcödé"])
def test_paths_with_spaces_and_non_ascii_characters(tiny_features, tmp_path, name):
    folder = tmp_path / name
    routine = write_routine(folder, {1: instance("a", "num_epochs = 1")}, num_folds=2,
                            experiment_folder=f"{name} results")
    completed = run_routine(routine, tiny_features["config_path"])
    assert completed.returncode == 0, completed.stderr
    assert (folder / f"{name} results" / "experiment_1" / "results" / "results_tiny_exp1_run1.json").is_file()
