"""Never lose a result: SIGKILL at observed moments then resume, two routines on one experiment, and a finished
fold reused only when it was made from the same parameters, dataset content and split.

No test here depends on the machine's speed: every kill waits for observed progress (an epoch line in a fold's
log, a fold result appearing), then a short random delay, so it lands mid-fold or just after a fold on any machine.
"""
import json
import os
import random
import shutil
import signal
import subprocess
import threading

import numpy as np
import pytest

from routine_helpers import experiment_files, instance, run_routine, start_routine, write_routine
from utility_functions import HOST

KILL_SEED = 20261122
# (what to wait for, the longest random delay after it in seconds): mid-fold twice, just after a fold twice
KILL_PLAN = (("epoch", 0.3), ("fold result", 0.2), ("epoch", 0.3), ("fold result", 0.2))


def fold_files(experiment_dir):
    """{relative path: bytes} of every completed fold's result and model."""
    return {name: data for name, data in experiment_files(experiment_dir).items()
            if (name.startswith("results/folds/") or name.startswith("models/")) and "xvaltmp" not in name}


def completed_folds(experiment_dir):
    """The fold results present, with the models they name: {relative path: bytes} of both."""
    files = fold_files(experiment_dir)
    completed = {}
    for name, data in files.items():
        if name.startswith("results/folds/"):
            model = json.loads(data)["model_file"]
            completed[name], completed[model] = data, files[model]
    return completed


def progress(experiment_dir, event):
    """How often event has happened so far: epoch lines in the fold logs, or fold results written."""
    if event == "fold result":  # committed results only, not a temporary file a kill may leave
        return len([path for path in (experiment_dir / "results" / "folds").glob("*.json")
                    if "xvaltmp" not in path.name])
    return sum(log.read_text(errors="replace").count("xval-epoch: ")
               for log in (experiment_dir / "logs").glob("*.log"))


def wait_for_progress(process, experiment_dir, event):
    """Wait until event happens once more than now; False if the routine ends first (nothing left to kill)."""
    before = progress(experiment_dir, event) if experiment_dir.exists() else 0
    while not experiment_dir.exists() or progress(experiment_dir, event) <= before:
        try:
            process.wait(timeout=0.05)  # polls the process: returns only if it ended
            return False
        except subprocess.TimeoutExpired:
            pass
    return True


def test_sigkill_at_observed_moments_then_resume_loses_and_repeats_nothing(tiny_features, tmp_path):
    experiment_dict = {1: instance("a"), 2: instance("b", "seed = 2")}
    routine = write_routine(tmp_path, experiment_dict, num_folds=3)
    experiment_dir = tmp_path / "experiments" / "experiment_1"
    delays = random.Random(KILL_SEED)
    survivors, kills = {}, 0
    for event, longest_delay in KILL_PLAN:
        process = start_routine(routine, tiny_features["config_path"])
        if wait_for_progress(process, experiment_dir, event):
            try:
                process.wait(timeout=delays.uniform(0, longest_delay))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)  # the routine and its fold processes, at once
                kills += 1
        process.wait()
        for name, data in completed_folds(experiment_dir).items():
            assert survivors.setdefault(name, data) == data, f"{name} was rewritten after it completed"
    finished = run_routine(routine, tiny_features["config_path"])
    assert finished.returncode == 0, finished.stderr
    assert kills >= 2 and survivors, "the kills did not land between observed progress and the end"

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
    codes = (first.wait(timeout=600), second.wait(timeout=600))
    outputs = "".join(path.read_text() for path in tmp_path.glob("*.out"))
    # 0: every selected instance complete; 3: one was left to the other routine while it still ran it
    assert set(codes) <= {0, 3}, outputs
    assert outputs.count("being run by another process") == codes.count(3)
    experiment_dir = tmp_path / "experiments" / "experiment_1"
    for number in (1, 2, 3, 4):
        document = json.loads((experiment_dir / "results" / f"results_tiny_exp1_run{number}.json").read_text())
        assert document["status"] == "complete"
        for fold in (1, 2):
            log = (experiment_dir / "logs" / f"tiny_exp1_run{number}_fold{fold}.log").read_text()
            assert log.count("\n===== ") == 1, f"instance {number} fold {fold} was trained more than once"
    assert outputs.count("being run by") >= 1 or outputs.count("complete already") >= 1
    assert not list(experiment_dir.rglob("*xvaltmp*"))
    again = run_routine(routine, tiny_features["config_path"])
    assert again.returncode == 0 and again.stdout.count("complete already") == 4
    import openpyxl
    openpyxl.load_workbook(next(experiment_dir.glob("*_results_spreadsheet.xlsx")))


def test_a_fold_left_to_a_live_process_exits_3_and_the_other_folds_run(tiny_features, tmp_path):
    routine = write_routine(tmp_path, {1: instance("a", "num_epochs = 1"), 2: instance("b", "num_epochs = 1")})
    locks = tmp_path / "experiments" / "experiment_1" / "locks"
    locks.mkdir(parents=True)
    (locks / "run1_fold1.lock").write_text(json.dumps({"host": "another-host", "pid": 1, "since": "earlier"}))
    completed = run_routine(routine, tiny_features["config_path"])
    assert completed.returncode == 3, completed.stdout + completed.stderr
    assert "instance 1 fold 1/2: skipped, being run by another-host pid 1 since earlier" in completed.stdout
    assert "instance(s) 1 are being run by another process and are not complete yet" in completed.stderr
    results = tmp_path / "experiments" / "experiment_1" / "results"
    assert json.loads((results / "results_tiny_exp1_run2.json").read_text())["status"] == "complete"
    waiting = json.loads((results / "results_tiny_exp1_run1.json").read_text())
    assert waiting["status"] == "incomplete" and [fold["fold"] for fold in waiting["folds"]] == [2]
    (locks / "run1_fold1.lock").unlink()  # the other process ended without training it: the next run does
    again = run_routine(routine, tiny_features["config_path"])
    assert again.returncode == 0 and "instance 1 fold 1/2 on CPU" in again.stdout and "fold 2/2" not in again.stdout
    assert json.loads((results / "results_tiny_exp1_run1.json").read_text())["status"] == "complete"


def own_features(tiny_features, folder):
    """A config whose features folder is folder/features, holding a copy of the tiny dataset; returns its path."""
    features = folder / "features"
    features.mkdir(parents=True)
    for path in tiny_features["features_folder"].glob("tiny_*"):
        shutil.copy2(path, features / path.name)
    text = tiny_features["config_path"].read_text()
    config = folder / "config.ini"
    config.write_text(text.replace(str(tiny_features["features_folder"]), str(features)))
    return config


def test_a_fold_trained_on_other_features_is_not_reused(tiny_features, tmp_path):
    config = own_features(tiny_features, tmp_path)
    routine = write_routine(tmp_path, {1: instance("a", "num_epochs = 1")}, num_folds=3)
    assert run_routine(routine, config).returncode == 0
    experiment_dir = tmp_path / "experiments" / "experiment_1"
    for name in ("results/folds/results_tiny_exp1_run1_fold3.json", "models/model_tiny_exp1_run1_fold3.hdf5",
                 "results/results_tiny_exp1_run1.json"):
        (experiment_dir / name).unlink()  # as if killed before fold 3
    path, sums = tmp_path / "features" / "tiny_predictors.npy", tmp_path / "features" / "tiny_sums.npy"
    np.save(path, np.load(path)[:, :, :20])  # preprocessed again: 20 bands (and their sums, as preprocessing writes)
    np.save(sums, np.load(sums)[:, :, :20])
    before = experiment_files(experiment_dir)
    refused = run_routine(routine, config)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "was trained on other features than the dataset files hold now" in refused.stderr
    assert refused.stderr.strip().count("\n") == 0 and "overwrite_results = True" in refused.stderr
    assert experiment_files(experiment_dir) == before


def test_the_same_features_written_again_are_still_the_same_dataset(tiny_features, tmp_path):
    config = own_features(tiny_features, tmp_path)
    routine = write_routine(tmp_path, {1: instance("a", "num_epochs = 1")})
    assert run_routine(routine, config).returncode == 0
    path = tmp_path / "features" / "tiny_predictors.npy"
    np.save(path, np.load(path))  # a new file, the same content
    assert "complete already" in run_routine(routine, config).stdout


def test_after_folds_json_is_lost_a_changed_split_is_refused(tiny_features, tmp_path, config_factory):
    routine = write_routine(tmp_path, {1: instance("a", "num_epochs = 1")}, num_folds=3)
    assert run_routine(routine, tiny_features["config_path"]).returncode == 0
    experiment_dir = tmp_path / "experiments" / "experiment_1"
    (experiment_dir / "folds.json").unlink()
    (experiment_dir / "results" / "results_tiny_exp1_run1.json").unlink()
    other_seed = tmp_path / "other" / "config.ini"
    other_seed.parent.mkdir()
    other_seed.write_text(tiny_features["config_path"].read_text().replace("folds_seed = 1", "folds_seed = 7"))
    before = experiment_files(experiment_dir)
    refused = run_routine(routine, other_seed)
    assert refused.returncode == 2 and "was trained on another split than this run would make" in refused.stderr
    assert experiment_files(experiment_dir) == before and not (experiment_dir / "folds.json").exists()
    same_seed = run_routine(routine, tiny_features["config_path"])  # the same settings make the same split
    assert same_seed.returncode == 0, same_seed.stderr
    assert "fold 1/3" not in same_seed.stdout and (experiment_dir / "folds.json").is_file()


def test_a_kill_while_the_code_snapshot_is_written_does_not_block_later_runs(tiny_features, tmp_path):
    routine = write_routine(tmp_path, {1: instance("a", "num_epochs = 1")})
    dead = subprocess.Popen(["true"])
    dead.wait()
    staging = tmp_path / "experiments" / "experiment_1" / "code" / f".20261130-000000_{HOST}_{dead.pid}" \
        f".xvaltmp-{HOST}-{dead.pid}"
    staging.mkdir(parents=True)
    (staging / "training.py").write_text("half a copy")
    completed = run_routine(routine, tiny_features["config_path"])
    assert completed.returncode == 0, completed.stderr
    assert not staging.exists()
    assert [path.name for path in staging.parent.iterdir() if not path.name.startswith(".")]


def test_changed_parameters_of_a_started_instance_are_refused(tiny_features, tmp_path):
    routine = write_routine(tmp_path, {1: instance("a", "num_epochs = 1")}, num_folds=2)
    assert run_routine(routine, tiny_features["config_path"]).returncode == 0
    experiment_dir = tmp_path / "experiments" / "experiment_1"
    before = experiment_files(experiment_dir)
    changed = write_routine(tmp_path, {1: instance("a", "num_epochs = 1", "learning_rate = 0.01")}, num_folds=2)
    status = run_routine(changed, tiny_features["config_path"], "--status")
    assert "instance 1: 2 done; its results were made with other parameters than the routine gives now " \
           "(learning_rate changed): a run refuses to reuse them" in status.stdout, status.stdout
    refused = run_routine(changed, tiny_features["config_path"])
    assert refused.returncode == 2 and "computed with other parameters" in refused.stderr
    assert "overwrite_results = True" in refused.stderr and refused.stderr.strip().count("\n") == 0
    assert experiment_files(experiment_dir) == before
    # as a SLURM array is while its last fold has not landed: fold results, no results JSON yet. What changed is
    # still named, from the job file each fold was trained from
    results_json = experiment_dir / "results" / "results_tiny_exp1_run1.json"
    kept = results_json.read_bytes()
    results_json.unlink()
    try:
        status = run_routine(changed, tiny_features["config_path"], "--status")
        assert "(learning_rate changed): a run refuses to reuse them" in status.stdout, status.stdout
        refused = run_routine(changed, tiny_features["config_path"])
        assert refused.returncode == 2, refused.stdout
        assert "run1_fold1.json was computed with other parameters (learning_rate changed)" in refused.stderr, \
            refused.stderr
    finally:
        results_json.write_bytes(kept)
    assert experiment_files(experiment_dir) == before
    edited_comment = write_routine(tmp_path, {1: instance("renamed", "num_epochs = 1")}, num_folds=2)
    edited = run_routine(edited_comment, tiny_features["config_path"]).stdout
    assert "complete already" in edited and "its results JSON now records its strings as the routine writes them" \
        in edited, edited
    document = json.loads((experiment_dir / "results" / "results_tiny_exp1_run1.json").read_text())
    assert document["parameters"]["comment_1"] == "renamed" and document["status"] == "complete"
    assert {name: data for name, data in experiment_files(experiment_dir).items() if name.startswith(
        ("results/folds/", "models/"))} == {name: data for name, data in before.items()
                                            if name.startswith(("results/folds/", "models/"))}


def test_stale_claim_of_a_dead_process_is_taken_over(tmp_path):
    from utility_functions import HOST, claim, release
    lock = tmp_path / "run1.lock"
    lock.write_text(json.dumps({"host": HOST, "pid": 2 ** 22 + 12345, "since": "earlier"}))
    assert claim(lock, 300) is None
    assert json.loads(lock.read_text())["pid"] == os.getpid()
    lock.write_text(json.dumps({"host": "another-host", "pid": 1, "since": "earlier"}))
    assert claim(lock, 300)["host"] == "another-host"  # a claim from another host, touched just now, is respected
    release(lock)
    assert lock.exists()


def test_a_claim_is_refused_while_another_fold_of_its_instance_runs_with_other_parameters(tmp_path):
    from utility_functions import HOST, _process_start_time, claim
    sibling = tmp_path / "run1_fold1.lock"  # held by a live process (this one) for parameters 'a'
    sibling.write_text(json.dumps({"host": HOST, "pid": os.getpid(), "start_time": _process_start_time(os.getpid()),
                                   "since": "now", "tag": "a"}))
    conflict = claim(tmp_path / "run1_fold2.lock", 300, "b", [sibling])
    assert conflict["conflict"] and conflict["lock"] == "run1_fold1.lock"
    assert not (tmp_path / "run1_fold2.lock").exists()
    assert claim(tmp_path / "run1_fold2.lock", 300, "a", [sibling]) is None  # the same parameters: claimed


def config_with(tiny_features, folder, section, values):
    """A copy of the tiny dataset's config with other values in one section."""
    import configparser
    from conftest import write_config
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(tiny_features["config_path"], encoding="utf-8")
    overrides = {name: dict(parser[name]) for name in parser.sections()}
    overrides[section].update(values)
    return write_config(folder, overrides)


def test_a_claim_of_another_host_whose_heartbeat_stopped_is_taken_over(tiny_features, tmp_path):
    # two hosts share the experiment folder without SLURM: one crashed mid-fold (its claim untouched since), the
    # other runs its fold and touches its claim (a thread here stands for it); grace period 2 s
    config = config_with(tiny_features, tmp_path / "config", "claims", {"grace_seconds": "2"})
    routine = write_routine(tmp_path, {1: instance("a", "num_epochs = 1")}, num_folds=2)
    locks = tmp_path / "experiments" / "experiment_1" / "locks"
    locks.mkdir(parents=True)
    crashed, live = locks / "run1_fold1.lock", locks / "run1_fold2.lock"
    for lock, host in ((crashed, "crashed-host"), (live, "live-host")):
        lock.write_text(json.dumps({"host": host, "pid": 4242, "since": "2026-12-01 09:00:00", "slurm_job": None}))
    an_hour_ago = crashed.stat().st_mtime - 3600
    os.utime(crashed, (an_hour_ago, an_hour_ago))
    beating = threading.Event()

    def heartbeat():
        while not beating.wait(0.2):
            os.utime(live)

    thread = threading.Thread(target=heartbeat, daemon=True)
    thread.start()  # the live host beats from now on, however long --status takes to make its plan
    try:
        status = run_routine(routine, config, "--status")
        assert "fold 1: stale claim of crashed-host" in status.stdout and "fold 2: running on live-host" in \
            status.stdout, status.stdout
        first = run_routine(routine, config)
    finally:
        beating.set()
        thread.join()
    assert first.returncode == 3, first.stdout + first.stderr
    assert "instance 1 fold 1/2 on CPU" in first.stdout and "skipped, being run by live-host pid 4242" in first.stdout
    assert "run1_fold1.lock: taking over the stale claim of crashed-host (pid 4242" in first.stdout
    os.utime(live, (an_hour_ago, an_hour_ago))  # the live host dies too
    second = run_routine(routine, config)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "instance 1 fold 2/2 on CPU" in second.stdout and "instance 1 complete" in second.stdout
    assert "run1_fold2.lock: taking over the stale claim of live-host" in second.stdout
    assert not list(locks.glob("*.lock"))


@pytest.mark.parametrize("name", ["with space", "ünïcödé"])
def test_paths_with_spaces_and_non_ascii_characters(tiny_features, tmp_path, name):
    folder = tmp_path / name
    routine = write_routine(folder, {1: instance("a", "num_epochs = 1")}, num_folds=2,
                            experiment_folder=f"{name} results")
    completed = run_routine(routine, tiny_features["config_path"])
    assert completed.returncode == 0, completed.stderr
    assert (folder / f"{name} results" / "experiment_1" / "results" / "results_tiny_exp1_run1.json").is_file()


def test_ctrl_c_waits_for_every_worker_to_release_its_claim_before_the_routine_ends(tmp_path, monkeypatch):
    # Ctrl-C comes while one worker is busy and the other has finished. On Python 3.11, the routine's interrupted
    # Thread.join() marked the busy thread as ended (CPython issue 90882), so the routine exited while that worker
    # still held its fold's claim. Here the busy worker ends only once the routine has returned, or after 2 s.
    from types import SimpleNamespace

    import executor_local
    executor = executor_local.LocalExecutor({}, [-1, -1], [], "routine.py")
    busy, quick_done, may_end, routine_returned = (threading.Event() for _ in range(4))
    ended = []

    def fold_job(executor, plan, worker, planned, fold, left):
        if fold["fold"] == 2:
            quick_done.set()
            return "trained", {}
        busy.set()
        while not executor.interrupted and not may_end.is_set():
            may_end.wait(0.05)
        may_end.wait()  # the worker's clean-up, still running after the interrupt
        ended.append(fold["fold"])
        raise KeyboardInterrupt

    def interrupt():
        busy.wait()
        quick_done.wait()
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
        routine_returned.wait(2)  # it must not come: the routine waits for the busy worker
        may_end.set()

    monkeypatch.setattr(executor_local.LocalExecutor, "run_on_worker", fold_job)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal, whatever pytest inherited
    threading.Thread(target=interrupt, daemon=True).start()
    try:
        with pytest.raises(KeyboardInterrupt):
            try:
                planned = SimpleNamespace(instance=1)
                executor.run_fold_jobs(SimpleNamespace(debug=False), [(planned, {"fold": 1}), (planned, {"fold": 2})])
            finally:
                ended_when_returned = list(ended)
                routine_returned.set()
    finally:
        signal.signal(signal.SIGINT, previous)
    assert ended_when_returned == [1], "the routine returned while a worker was still running its fold"


def test_ctrl_c_stops_the_workers_records_no_failure_and_leaves_no_claim(tiny_features, tmp_path):
    routine = write_routine(tmp_path, {1: instance("a", "num_epochs = 30", "early_stopping = False")}, num_folds=2)
    experiment_dir = tmp_path / "experiments" / "experiment_1"
    process = start_routine(routine, tiny_features["config_path"], 1, 1, "-1,-1")
    assert wait_for_progress(process, experiment_dir, "epoch"), "the routine ended before the interrupt"
    os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in a terminal sends: the routine and its fold processes
    assert process.wait(timeout=600) == 130
    assert not list(experiment_dir.rglob("*.failed.json")) and not list((experiment_dir / "locks").glob("*.lock"))
    result = experiment_dir / "results" / "results_tiny_exp1_run1.json"
    assert not result.exists() or json.loads(result.read_text())["status"] != "failed"
    finished = run_routine(routine, tiny_features["config_path"])
    assert finished.returncode == 0, finished.stdout + finished.stderr
    assert json.loads(result.read_text())["status"] == "complete"
