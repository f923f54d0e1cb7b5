"""Fold jobs in parallel on this machine's devices: two CPU workers (-1,-1) train every fold once with its seed and
half the cores each, a fold rerun alone with the same thread count reproduces its saved result, --status
reads the experiment folder back, a GPU the backend cannot see is said once (its folds run on the CPU), and a
TensorFlow fold computes with oneDNN unless the user turned it off."""
import json
import os
import subprocess
import sys

from routine_helpers import REPO, instance, routine_environment, run_routine, write_routine
from utility_functions import HOST


def test_two_cpu_workers_train_every_fold_once_and_a_rerun_alone_reproduces_it(tiny_features, tmp_path):
    routine = write_routine(tmp_path, {1: instance("a"), 2: instance("b", "seed = 7")}, num_folds=2)
    completed = run_routine(routine, tiny_features["config_path"], 1, 2, "-1,-1")
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "on CPU worker 1, CPU worker 2 (1 thread(s) per fold)" in completed.stdout
    experiment_dir = tmp_path / "experiments" / "experiment_1"
    fold_lines = [line for line in completed.stdout.splitlines()
                  if line.startswith("instance ") and " on CPU worker " in line]
    assert len(fold_lines) == 4, completed.stdout
    for run in (1, 2):
        document = json.loads((experiment_dir / "results" / f"results_tiny_exp1_run{run}.json").read_text())
        assert document["status"] == "complete" and [fold["fold"] for fold in document["folds"]] == [1, 2]
        assert all(fold["threads"] == 1 for fold in document["folds"])
        for fold in (1, 2):
            log = (experiment_dir / "logs" / f"tiny_exp1_run{run}_fold{fold}.log").read_text()
            assert log.count("\n===== ") == 1, f"instance {run} fold {fold} was trained more than once"
    launch = json.loads(next((experiment_dir / "logs").glob("launch_*.json")).read_text())
    assert launch["devices"] == [-1, -1] and launch["threads_per_fold"] == 1

    # instance 2, fold 2 again, alone, into another folder, with the thread count it had
    job = json.loads((experiment_dir / "logs" / "tiny_exp1_run2_fold2.job.json").read_text())
    saved = json.loads((experiment_dir / "results" / "folds" / "results_tiny_exp1_run2_fold2.json").read_text())
    job.update(result_path=str(tmp_path / "rerun.json"), model_path=str(tmp_path / "rerun.hdf5"))
    (tmp_path / "rerun.job.json").write_text(json.dumps(job))
    # as a user reruns it by hand: KERAS_BACKEND set, none of the launcher's variables (the fold sets its backend's
    # own and its threads itself)
    from launchers import THREAD_VARIABLES
    from registries import BACKENDS
    launcher_only = {*THREAD_VARIABLES, *BACKENDS["tensorflow"].environment}
    environment = {name: value for name, value in os.environ.items() if name not in launcher_only}
    environment.update(KERAS_BACKEND="tensorflow", CUDA_VISIBLE_DEVICES="", PYTHONPATH=str(REPO))
    rerun = subprocess.run([sys.executable, str(REPO / "training.py"), str(tmp_path / "rerun.job.json")],
                           capture_output=True, text=True, env=environment, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    again = json.loads((tmp_path / "rerun.json").read_text())
    assert again["history"] == saved["history"] and again["metrics"] == saved["metrics"]
    assert again["predictions"] == saved["predictions"]

    # --status: from the folder alone; a claim of a process that is gone shows as stale
    (experiment_dir / "locks" / "run2_fold2.lock").write_text(json.dumps(
        {"host": HOST, "pid": 2 ** 22 + 17, "since": "earlier", "slurm_job": None}))
    (experiment_dir / "results" / "folds" / "results_tiny_exp1_run1_fold2.json").unlink()
    (experiment_dir / "results" / "folds" / "results_tiny_exp1_run2_fold2.json").unlink()  # killed before its result
    status = subprocess.run([sys.executable, str(routine), "--status"], capture_output=True, text=True,
                            env=routine_environment(tiny_features["config_path"]), cwd=str(tmp_path), timeout=120)
    assert status.returncode == 0, status.stderr
    lines = status.stdout.splitlines()
    assert "instance 1: 1 done, 1 pending" in lines and "instance 2: 1 done, 1 stale" in lines, status.stdout
    assert any(line.startswith("  fold 1: done, test balanced_accuracy ") for line in lines)
    assert any("fold 2: stale claim of " + HOST in line for line in lines)


def test_a_gpu_the_backend_cannot_see_is_one_warning_and_the_folds_still_run(tiny_features, tmp_path):
    # device 99: no machine has it, so the backend sees no GPU there and computes on the CPU
    routine = write_routine(tmp_path, {1: instance("a")}, num_folds=2)
    completed = run_routine(routine, tiny_features["config_path"], 1, 1, "99")
    assert completed.returncode == 0, completed.stdout + completed.stderr
    warnings = [line for line in completed.stderr.splitlines() if "sees no GPU" in line]
    assert warnings == ["warning: GPU 99 was asked for, but tensorflow sees no GPU there, so training runs on the "
                        "CPU: list -1 for a CPU worker, or check the GPU (nvidia-smi) and the CUDA build of "
                        "tensorflow"], completed.stderr
    assert "instance 1 fold 1/2 on GPU 99 (no GPU: CPU): test" in completed.stdout, completed.stdout
    document = json.loads((tmp_path / "experiments" / "experiment_1" / "results" / "results_tiny_exp1_run1.json")
                          .read_text())
    assert document["status"] == "complete" and len(document["folds"]) == 2
    log = (tmp_path / "experiments" / "experiment_1" / "logs" / "tiny_exp1_run1_fold1.log").read_text()
    assert "xval-device: tensorflow cpu" in log


ONEDNN_PROBE = "from tensorflow.python.util import _pywrap_util_port; print(_pywrap_util_port.IsMklEnabled())"


def test_tensorflow_folds_compute_with_onednn_unless_the_user_turned_it_off():
    """TensorFlow turns its oneDNN kernels on by itself only on recent Intel CPUs; a fold process has them on
    everywhere (a demo fold's fit twice as fast on an AMD EPYC), and a user's TF_ENABLE_ONEDNN_OPTS=0 wins."""
    from launchers import fold_environment
    user = {name: value for name, value in os.environ.items() if name != "TF_ENABLE_ONEDNN_OPTS"}

    def enabled(base):
        completed = subprocess.run([sys.executable, "-c", ONEDNN_PROBE], capture_output=True, text=True,
                                   env=fold_environment("tensorflow", 1, -1, base), timeout=300)
        assert completed.returncode == 0, completed.stderr[-2000:]
        return completed.stdout.split()[-1]

    assert enabled(user) == "True"
    assert enabled(dict(user, TF_ENABLE_ONEDNN_OPTS="0")) == "False"
