"""A routine submitted to a real SLURM cluster: every fold job lands once, at most the capped number at a time, the
spreadsheet job runs last; a task requeued mid-fold (preemption, node failure) trains its fold again, and a task
cancelled mid-fold is submitted again by the next --slurm and resumes.

CI starts a one-node cluster (.ci/start_slurm: 4 CPUs, 2 fake GPUs). With CI=true these tests fail when it is not
up; elsewhere they skip, saying why. Waits are for observed progress: a job's end (sbatch --wait on a job that
the queue no longer listing it), an epoch line in a fold's log, polled.
"""
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import openpyxl
import pytest

from conftest import require, write_config
from routine_helpers import REPO, instance, routine_environment, write_routine

SLURM_SETTINGS = {"cpus_per_task": 1, "mem": "400M", "time": "0:10:00", "gres": "gpu:1", "max_parallel": 0}


def cluster_problem():
    """Why no SLURM cluster can take jobs here (one line), or None."""
    if not shutil.which("sbatch") or not shutil.which("sinfo"):
        return "sbatch/sinfo not found (no SLURM client installed)"
    completed = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=60)
    states = completed.stdout.split()
    if completed.returncode != 0 or not any(state.rstrip("*") in ("idle", "mixed", "allocated") for state in states):
        return f"no SLURM node is up (sinfo: {(completed.stdout + completed.stderr).strip()[:200]!r})"
    return None


@pytest.fixture(scope="module")
def slurm():
    """The cluster, or a failure (CI=true: .ci/start_slurm should have started it) or a skip elsewhere."""
    require(cluster_problem(), ".ci/start_slurm starts a one-node cluster (as root)")


def slurm_config(tiny_features, folder):
    """A copy of the tiny dataset's config with the test cluster's [slurm] settings."""
    import configparser
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(tiny_features["config_path"], encoding="utf-8")
    overrides = {section: dict(parser[section]) for section in parser.sections()}
    overrides["slurm"] = SLURM_SETTINGS
    return write_config(folder, overrides)


def xval(routine, config, *arguments):
    """Run the routine script with arguments; returns the CompletedProcess."""
    return subprocess.run([sys.executable, str(routine), *arguments], capture_output=True, text=True, timeout=600,
                          env=routine_environment(config), cwd=str(Path(routine).parent))


def submission(experiment_dir):
    """The latest submission's record (submitted.json) and its folder."""
    folder = sorted((experiment_dir / "slurm").iterdir())[-1]
    return json.loads((folder / "submitted.json").read_text()), folder


def job_ended(job_id):
    """Whether SLURM's queue no longer holds job_id (every task of an array) as pending, running or completing."""
    listed = subprocess.run(["squeue", "-h", "-j", str(job_id), "-o", "%T"], capture_output=True, text=True,
                            timeout=60)
    return listed.returncode != 0 or not listed.stdout.split()


def wait_until(condition, job_id, timeout=600):
    """Poll (every 0.2 s) until condition() holds: True; False if job_id ended first. Fails after timeout s."""
    deadline = time.monotonic() + timeout
    while not condition():
        if job_ended(job_id):
            return condition()
        assert time.monotonic() < deadline, f"waited {timeout} s for SLURM job {job_id}"
        time.sleep(0.2)  # a polling interval, not a wait for an assumed duration
    return True


def epochs_logged(log, count=1):
    """A condition: the fold log holds `count` epoch lines."""
    return lambda: log.exists() and log.read_text(errors="replace").count("xval-epoch: ") >= count


def fold_results(experiment_dir):
    """{name: result} of the fold results present."""
    return {path.name: json.loads(path.read_text()) for path in (experiment_dir / "results" / "folds").glob("*.json")}


def most_at_once(results):
    """The largest number of folds whose training intervals (started_at, finished_at) overlap."""
    events = sorted([(r["started_at"], 1) for r in results] + [(r["finished_at"], -1) for r in results])
    running = most = 0
    for _, change in events:
        running += change
        most = max(most, running)
    return most


def test_a_routine_submitted_to_slurm_lands_every_fold_once_then_the_spreadsheet(slurm, tiny_features, tmp_path):
    tmp_path = tmp_path / "a folder"  # a space in every path of the sbatch scripts
    config = slurm_config(tiny_features, tmp_path)
    routine = write_routine(tmp_path, {n: instance(f"i{n}", "num_epochs = 2") for n in (1, 2)}, num_folds=2)
    submitted = xval(routine, config, "--slurm", "--max-parallel", "2", "--time=0:05:00")
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    assert "submitted 4 fold job(s) as SLURM array" in submitted.stdout
    experiment_dir = tmp_path / "experiments" / "experiment_1"
    record, folder = submission(experiment_dir)
    script = (folder / "folds.sbatch").read_text()
    for line in ("#SBATCH --array=0-3%2", "#SBATCH --gres=gpu:1", "#SBATCH --requeue", "#SBATCH --time=0:05:00",
                 f'#SBATCH --output="{experiment_dir / "logs"}/slurm_%A_%a.out"', "#SBATCH --cpus-per-task=1"):
        assert line in script
    wait_until(lambda: False, record["spreadsheet_job"])

    results = fold_results(experiment_dir)
    assert sorted(results) == sorted(f"results_tiny_exp1_run{n}_fold{f}.json" for n in (1, 2) for f in (1, 2))
    assert 1 <= most_at_once(results.values()) <= 2, "more fold jobs ran at once than --max-parallel 2"
    assert all(result["threads"] == 1 for result in results.values())
    for n in (1, 2):
        assert json.loads((experiment_dir / "results" / f"results_tiny_exp1_run{n}.json").read_text())[
            "status"] == "complete"
        for f in (1, 2):
            log = (experiment_dir / "logs" / f"tiny_exp1_run{n}_fold{f}.log").read_text()
            assert log.count("\n===== ") == 1 and "SLURM job" in log
    workbook = next(experiment_dir.glob("*_results_spreadsheet.xlsx"))
    sheet_log = experiment_dir / "logs" / f"slurm_spreadsheet_{record['spreadsheet_job']}.out"
    assert sheet_log.exists(), "the spreadsheet job did not run"
    assert workbook.stat().st_mtime >= max(path.stat().st_mtime
                                           for path in (experiment_dir / "results" / "folds").glob("*.json"))
    assert openpyxl.load_workbook(workbook)["summary"]["A1"].value

    status = xval(routine, config, "--status")
    assert status.returncode == 0 and status.stdout.count("2 done") == 2, status.stdout
    again = xval(routine, config, "--slurm")
    assert again.returncode == 0 and "nothing to submit" in again.stdout

    # after the experiment, from an experiment that only ever ran on SLURM: the final model, and predictions
    def use_model(*arguments):
        return subprocess.run([sys.executable, str(REPO / "use_model.py"), *map(str, arguments)],
                              capture_output=True, text=True, timeout=600, env=routine_environment(config))
    final = use_model("final", experiment_dir)
    assert final.returncode == 0, final.stdout + final.stderr
    chosen = json.loads(next(experiment_dir.glob("*_summary.json")).read_text())["task_types"]["classification"]
    document = json.loads((experiment_dir / "results" / f"results_tiny_exp1_run"
                           f"{chosen['chosen_on_validation']['instance']}.json").read_text())
    metadata = json.loads((tiny_features["features_folder"] / "tiny_metadata.json").read_text())
    fold = document["folds"][0]
    files = [Path(metadata["input_folder"]) / clip["file"] for item in fold["test_items"]
             for clip in metadata["clips"] if clip["actor"] == item]
    final_model = next((experiment_dir / "final").glob("*_final.hdf5"))
    for model, out in ((final_model, tmp_path / "final.csv"),
                       (experiment_dir / fold["model_file"], tmp_path / "fold.csv")):
        predicted = use_model("predict", model, *files, "--out", out)
        assert predicted.returncode == 0, predicted.stdout + predicted.stderr
    rows = [line.split(",") for line in (tmp_path / "fold.csv").read_text().splitlines()[1:]]
    assert [row[1] for row in rows] == [document["class_names"][i] for i in fold["predictions"]["test"]["y_pred"]]
    assert len((tmp_path / "final.csv").read_text().splitlines()) == len(files) + 1


def test_requeued_and_cancelled_tasks_train_their_fold_again(slurm, tiny_features, tmp_path):
    config = slurm_config(tiny_features, tmp_path)
    slow = ["num_epochs = 60", "early_stopping = False", "batch_size = 4"]
    routine = write_routine(tmp_path, {1: instance("slow", *slow)}, num_folds=2)
    submitted = xval(routine, config, "--slurm")
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    experiment_dir = tmp_path / "experiments" / "experiment_1"
    record, folder = submission(experiment_dir)
    logs = [experiment_dir / "logs" / f"tiny_exp1_run1_fold{fold}.log" for fold in (1, 2)]
    for log in logs:
        assert wait_until(epochs_logged(log), record["array_job"]), "the folds ended before the kills"
    # fold 1 as if preempted (SLURM requeues it); fold 2 cancelled by its user
    subprocess.run(["scontrol", "requeue", f"{record['array_job']}_0"], check=True, timeout=60)
    subprocess.run(["scancel", f"{record['array_job']}_1"], check=True, timeout=60)
    wait_until(lambda: False, record["array_job"])

    results = fold_results(experiment_dir)
    assert list(results) == ["results_tiny_exp1_run1_fold1.json"]
    assert logs[0].read_text().count("\n===== ") == 2, "the requeued task did not train its fold again"
    # the requeue's stop no longer stands once its fold landed: no later submission warns of it
    assert not (experiment_dir / "logs" / "tiny_exp1_run1_fold1.stopped.json").exists()
    status = xval(routine, config, "--status")
    assert "fold 1: done" in status.stdout, status.stdout
    assert "fold 2: pending (SLURM job " in status.stdout or "fold 2: stale claim" in status.stdout, status.stdout
    # the cancelled task said so (its SIGTERM handler): --status and the next submission show it
    assert "was stopped by its scheduler at " in status.stdout or "fold 2: stale claim" in status.stdout

    resubmitted = xval(routine, config, "--slurm")
    assert resubmitted.returncode == 0 and "submitted 1 fold job(s)" in resubmitted.stdout, resubmitted.stdout
    assert "warning: 1 of the fold jobs to run were stopped by SLURM in an earlier submission" in resubmitted.stderr, \
        resubmitted.stderr
    record, _ = submission(experiment_dir)
    wait_until(lambda: False, record["spreadsheet_job"])
    assert logs[1].read_text().count("\n===== ") == 2
    document = json.loads((experiment_dir / "results" / "results_tiny_exp1_run1.json").read_text())
    assert document["status"] == "complete" and [fold["fold"] for fold in document["folds"]] == [1, 2]
    assert document["folds"][0] == results["results_tiny_exp1_run1_fold1.json"], "the finished fold was retrained"


def test_slurm_without_sbatch_is_refused_before_anything_is_written(tiny_features, tmp_path):
    routine = write_routine(tmp_path, {1: instance("a")})
    environment = dict(routine_environment(tiny_features["config_path"]), PATH=str(tmp_path / "no-slurm-here"))
    completed = subprocess.run([sys.executable, str(routine), "--slurm"], capture_output=True, text=True,
                               env=environment, cwd=str(tmp_path), timeout=120)
    assert completed.returncode == 2 and "Traceback" not in completed.stderr
    assert completed.stderr.strip().splitlines() == [
        "error: sbatch is not on PATH: --slurm submits to a SLURM cluster; run it on the cluster's login node (or "
        "run the routine locally, without --slurm)"]
    assert not (tmp_path / "experiments").exists()


def test_what_sbatch_would_refuse_is_refused_before_anything_is_written(slurm, tiny_features, tmp_path):
    config = slurm_config(tiny_features, tmp_path)
    routine = write_routine(tmp_path, {1: instance("a", "num_epochs = 1")}, num_folds=2)
    for arguments, words in ((["--partition", "nosuch"], "invalid partition"), (["--time", "banana"], "--time")):
        refused = xval(routine, config, "--slurm", *arguments)
        assert refused.returncode == 2, refused.stdout + refused.stderr
        lines = refused.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: sbatch refused the submission") and words in lines[0]
        assert not (tmp_path / "experiments").exists(), "a refused submission wrote into the experiment folder"
    newline = write_routine(tmp_path, {1: instance("a", "num_epochs = 1")}, experiment_folder="two\nlines",
                            name="newline.py")
    refused = xval(newline, config, "--slurm")
    assert refused.returncode == 2 and "holds a double quote or a line break" in refused.stderr, refused.stderr
    assert not (tmp_path / "two\nlines").exists()


def test_more_fold_jobs_than_an_array_may_hold_are_refused_and_a_task_past_its_jobs_is_one_line(
        slurm, tiny_features, tmp_path):
    config = slurm_config(tiny_features, tmp_path)
    routine = write_routine(tmp_path, {1: instance("a", "num_epochs = 1"), 2: instance("b", "num_epochs = 1")},
                            num_folds=2)
    scontrol = tmp_path / "bin" / "scontrol"  # a cluster whose arrays hold at most 3 tasks
    scontrol.parent.mkdir()
    scontrol.write_text("#!/bin/sh\necho 'MaxArraySize            = 3'\n")
    scontrol.chmod(0o755)
    environment = dict(routine_environment(config), PATH=f"{scontrol.parent}:{os.environ['PATH']}")
    refused = subprocess.run([sys.executable, str(routine), "--slurm"], capture_output=True, text=True, timeout=600,
                             env=environment, cwd=str(tmp_path))
    assert refused.returncode == 2 and refused.stderr.strip().splitlines() == [
        "error: 4 fold jobs to submit, more than one SLURM array may hold on this cluster (MaxArraySize 3): submit "
        "fewer instances at a time (FIRST_INSTANCE LAST_INSTANCE), one submission after the other"], refused.stderr
    assert not (tmp_path / "experiments").exists()
    jobs = tmp_path / "fold_jobs.json"
    jobs.write_text("[]")
    past = subprocess.run([sys.executable, str(REPO / "xval_instance.py"), "--fold-task", str(jobs), "0"],
                          capture_output=True, text=True, timeout=120, env=routine_environment(config))
    assert past.returncode == 2 and past.stderr.strip().splitlines() == [
        f"error: task index 0 is out of range: {jobs} holds 0 fold jobs"], past.stderr
    for flag, name in (("--fold-task", "fold_jobs.json"), ("--search-task", "search.json")):
        missing = subprocess.run([sys.executable, str(REPO / "xval_instance.py"), flag, str(tmp_path / "gone" / name),
                                  "0"], capture_output=True, text=True, timeout=120, env=routine_environment(config))
        assert missing.returncode == 2 and missing.stderr.strip().splitlines() == [
            f"error: {flag} {tmp_path / 'gone' / name} does not exist: give the {name} of a submission folder "
            "(EXPERIMENT/slurm/{time}_{pid}/)"], missing.stderr

def test_fold_jobs_queued_by_an_earlier_submission_are_not_submitted_again(slurm, tiny_features, tmp_path):
    config = slurm_config(tiny_features, tmp_path)
    slow = ["num_epochs = 300", "early_stopping = False", "batch_size = 4"]
    routine = write_routine(tmp_path, {1: instance("slow", *slow)}, num_folds=2)
    first = xval(routine, config, "--slurm", "--max-parallel", "1")  # task 1 waits while task 0 runs
    assert first.returncode == 0, first.stdout + first.stderr
    experiment_dir = tmp_path / "experiments" / "experiment_1"
    record, _ = submission(experiment_dir)
    try:
        again = xval(routine, config, "--slurm")
        assert again.returncode == 0, again.stdout + again.stderr
        assert f"2 fold job(s) are queued already in SLURM array(s) {record['array_job']}" in again.stdout
        assert "nothing to submit: every selected fold job is done or queued" in again.stdout
        assert len(list((experiment_dir / "slurm").iterdir())) == 1
        status = xval(routine, config, "--status")
        assert "squeue: " in status.stdout and record["array_job"] in status.stdout, status.stdout
        (tmp_path / "elsewhere" / "experiments" / "experiment_1" / "locks").mkdir(parents=True)
        other = write_routine(tmp_path / "elsewhere", {1: instance("slow", *slow)}, num_folds=2)
        elsewhere = xval(other, config, "--status")  # an experiment 1 on 'tiny' in another folder: not its jobs
        assert "squeue: 0 job(s) of this experiment" in elsewhere.stdout, elsewhere.stdout
        changed = write_routine(tmp_path, {1: instance("slow", *slow, "learning_rate = 0.01")}, num_folds=2)
        refused = xval(changed, config, "--slurm")  # task 0 trains, waits to train or (the calls above slowed by
        # a loaded machine) has trained the old parameters: each is refused before anything is submitted
        assert refused.returncode == 2 and any(reason in refused.stderr for reason in (
            "fold 1 is being trained now by ", "is queued in SLURM array", "was computed with other parameters (")), \
            refused.stderr
        assert len(list((experiment_dir / "slurm").iterdir())) == 1
    finally:
        subprocess.run(["scancel", record["array_job"], record["spreadsheet_job"]], timeout=60)


def test_fold_jobs_queued_with_other_parameters_are_refused_with_a_scancel_hint(slurm, tiny_features, tmp_path):
    config = slurm_config(tiny_features, tmp_path)
    routine = write_routine(tmp_path, {1: instance("held", "num_epochs = 1")}, num_folds=2)
    first = xval(routine, config, "--slurm", "--sbatch-line=--begin=now+1hour")  # queued, none runs
    assert first.returncode == 0, first.stdout + first.stderr
    record, _ = submission(tmp_path / "experiments" / "experiment_1")
    try:
        changed = write_routine(tmp_path, {1: instance("held", "num_epochs = 1", "learning_rate = 0.01")},
                                num_folds=2)
        status = xval(changed, config, "--status")
        assert f"would now refuse: fold job run1_fold1 is queued in SLURM array {record['array_job']} with other " \
            "parameters" in status.stdout, status.stdout
        refused = xval(changed, config, "--slurm")  # the queued tasks would train the old parameters
        assert refused.returncode == 2 and refused.stderr.strip().splitlines() == [
            f"error: fold job run1_fold1 is queued in SLURM array {record['array_job']} with other parameters "
            f"(learning_rate differ): scancel {record['array_job']} first, then submit again"], refused.stderr
    finally:
        subprocess.run(["scancel", record["array_job"], record["spreadsheet_job"]], timeout=60)


def test_a_search_submitted_to_slurm_runs_each_trial_once_across_its_array_tasks(slurm, tiny_features, tmp_path):
    try:
        import optuna
    except ImportError:  # requirements-search.txt: CI installs it and never skips
        if os.environ.get("CI") == "true":
            raise
        pytest.skip("Optuna is not installed (pip install -r requirements-search.txt)")
    config = slurm_config(tiny_features, tmp_path)
    strings = instance("searched", 'learning_rate = choice(0.003, 0.001)', "num_epochs = 1", "search_trials = 3",
                       'search_sampler = "random"', 'search_pruner = "none"')
    routine = write_routine(tmp_path, {10: strings}, num_folds=2)
    submitted = xval(routine, config, "--slurm", "--max-parallel", "2")
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    assert "submitted the searches (10) as SLURM array" in submitted.stdout and "3 task(s)" in submitted.stdout
    experiment_dir = tmp_path / "experiments" / "experiment_1"
    record, folder = submission(experiment_dir)
    assert "#SBATCH --array=0-2%2" in (folder / "search.sbatch").read_text()
    wait_until(lambda: False, record["spreadsheet_job"])

    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(
        str(experiment_dir / "search" / "run10.journal")))
    trials = optuna.load_study(study_name="run10", storage=storage).get_trials()
    assert [trial.state.name for trial in trials] == ["COMPLETE"] * 3
    # 3 trials over 2 points: a trial on a point an earlier one ran reuses its result and trains nothing
    trained = [10 + trial.number for trial in trials if "xval_repeat_of" not in trial.user_attrs]
    assert {trials[n - 10].params["learning_rate"] for n in trained} == {t.params["learning_rate"] for t in trials}
    assert sorted(fold_results(experiment_dir)) == sorted(f"results_tiny_exp1_run{n}_fold{f}.json"
                                                          for n in trained for f in (1, 2))
    for n in trained:
        for f in (1, 2):
            log = (experiment_dir / "logs" / f"tiny_exp1_run{n}_fold{f}.log").read_text()
            assert log.count("\n===== ") == 1 and "SLURM job" in log, f"trial {n - 10} fold {f} ran more than once"
    assert openpyxl.load_workbook(next(experiment_dir.glob("*_results_spreadsheet.xlsx")))["search 10"]["A1"].value
    again = xval(routine, config, "--slurm")
    assert again.returncode == 0 and "nothing to submit" in again.stdout, again.stdout + again.stderr
