"""The tools researchers already watch: TensorBoard logs written by every fold (tensorboard = True), read back with
TensorBoard's own event reader and compared with the fold's history; results_to_mlflow.py's export read back with
the MLflow client."""
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import baseline_config
from routine_helpers import REPO, instance, run_routine, write_routine
from conftest import read_only

MISSING = [name for name in ("tensorboard", "mlflow", "torch", "jax") if importlib.util.find_spec(name) is None]
pytestmark = pytest.mark.skipif(bool(MISSING) and os.environ.get("CI") != "true",
                                reason=f"{', '.join(MISSING)} not installed: python3 -m pip install -r "
                                       "requirements-tracking.txt -r requirements-backends.txt (CI installs them and "
                                       "never skips)")
EPOCHS = 3


@pytest.fixture(scope="module")
def tracked(tiny_features, tmp_path_factory):
    """A finished experiment: instance 1 (TensorFlow), 2 (PyTorch) and 4 (JAX) with tensorboard = True, 3 without;
    2 folds,
    a learning rate halved after every epoch without progress so that it moves."""
    folder = tmp_path_factory.mktemp("tracked")
    logged = (f"num_epochs = {EPOCHS}", "tensorboard = True", "early_stopping = False", "lr_patience = 1",
              "lr_factor = 0.5", "learning_rate = 0.01")
    routine = write_routine(folder, {1: instance("tf", *logged), 2: instance("torch", *logged, 'backend = "torch"'),
                                     3: instance("plain", "num_epochs = 2"),
                                     4: instance("jax", *logged, 'backend = "jax"')})
    config = baseline_config(tiny_features, folder)  # the routine run carries the baseline too
    completed = run_routine(routine, config)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    return {"folder": folder, "routine": routine, "dir": folder / "experiments" / "experiment_1", "config": config}


def event_scalars(folder):
    """{tag: {step: value}} of the scalars in a TensorBoard log folder, read with TensorBoard's event reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util import tensor_util
    events = EventAccumulator(str(folder), size_guidance={"tensors": 0})
    events.Reload()
    return {tag: {event.step: float(tensor_util.make_ndarray(event.tensor_proto)) for event in events.Tensors(tag)}
            for tag in events.Tags()["tensors"]}


@pytest.mark.parametrize("run", [1, 2, 4])
def test_every_fold_writes_one_scalar_per_epoch_equal_to_its_history(tracked, run):
    for fold in (1, 2):
        result = json.loads((tracked["dir"] / "results" / "folds" / f"results_tiny_exp1_run{run}_fold{fold}.json")
                            .read_text())
        history = result["history"]
        train = event_scalars(tracked["dir"] / "tensorboard" / f"run{run}_fold{fold}" / "train")
        validation = event_scalars(tracked["dir"] / "tensorboard" / f"run{run}_fold{fold}" / "validation")
        steps = list(range(EPOCHS))
        for name in ("loss", "accuracy", "learning_rate"):
            assert sorted(train[f"epoch_{name}"]) == steps, (name, train)
            assert [train[f"epoch_{name}"][step] for step in steps] == pytest.approx(history[name], rel=1e-6)
        for name in ("loss", "accuracy", "balanced_accuracy", "f1_macro"):  # the fold selects on UAR or macro F1
            assert [validation[f"epoch_{name}"][step] for step in steps] == pytest.approx(history[f"val_{name}"],
                                                                                          rel=1e-6)
    assert not (tracked["dir"] / "tensorboard" / "run3_fold1").exists()


def test_a_retrained_fold_moves_the_logs_of_its_earlier_attempt_aside(tmp_path):
    from training import fresh_log_folder
    assert fresh_log_folder(None) is None
    folder = tmp_path / "tensorboard" / "run1_fold1"
    assert fresh_log_folder(folder) == str(folder) and folder.parent.is_dir() and not folder.exists()
    (folder / "train").mkdir(parents=True)
    (folder / "train" / "events.out.tfevents.1").write_bytes(b"earlier attempt")
    assert fresh_log_folder(folder) == str(folder) and not folder.exists()
    [aside] = folder.parent.glob("run1_fold1.replaced-*")
    assert (aside / "train" / "events.out.tfevents.1").read_bytes() == b"earlier attempt"


def test_tensorboard_without_tensorflow_is_refused_before_training(monkeypatch):
    import importlib.util as util
    from parameters import architecture_signatures, resolve_instance
    from utility_functions import XvalError, load_config
    real = util.find_spec
    monkeypatch.setattr(util, "find_spec", lambda name, *rest: None if name == "tensorflow" else real(name, *rest))
    strings = instance("x", "tensorboard = True", 'backend = "torch"')
    with pytest.raises(XvalError, match=r"experiment_dict\[1\]: tensorboard = True writes its logs with TensorFlow's "
                                        r"tf.summary \(on any backend\), and tensorflow is not installed"):
        resolve_instance(strings, load_config()["training"], architecture_signatures(), "experiment_dict[1]")


# ----------------------------------------------------------------------------------------------------------------
# results_to_mlflow.py

def export(experiment_dir, *arguments):
    completed = subprocess.run([sys.executable, str(REPO / "results_to_mlflow.py"), str(experiment_dir), *arguments],
                               capture_output=True, text=True, timeout=600,
                               env={**{key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"},
                                    "PYTHONPATH": str(REPO)})
    assert completed.returncode == 0, completed.stdout + completed.stderr
    return completed.stdout


def stored_runs(uri, name):
    """{xval.key: the run} of an MLflow experiment, read back with the MLflow client."""
    import mlflow
    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        runs = mlflow.search_runs(experiment_names=[name], output_format="list")
    finally:
        mlflow.set_tracking_uri(before)
    return {run.data.tags["xval.key"]: run for run in runs}


def test_an_export_holds_the_results_files_and_a_second_changes_nothing(tracked, tmp_path):
    from mlflow.tracking import MlflowClient
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    (tmp_path / "store").mkdir()
    first = export(tracked["dir"], "--tracking-uri", uri, "--models")
    runs = stored_runs(uri, "tiny_exp1")
    parents = [run for run in runs.values() if "mlflow.parentRunId" not in run.data.tags]
    assert len(parents) == 1 and len(runs) == 1 + 4 + 4 * 2, sorted(runs)
    routine = parents[0]
    summary = json.loads((tracked["dir"] / "tiny_exp1_summary.json").read_text())["task_types"]["classification"]
    assert routine.data.tags["xval.chosen_instance"] == str(summary["chosen_on_validation"]["instance"])
    assert float(routine.data.tags["xval.selection_aware_test_mean"]) == summary["selection_aware_test"]["mean"]
    baseline = summary["baseline"]  # the routine computed one: the run says it and the chosen one's test against it
    assert float(routine.data.tags["xval.baseline_test_mean"]) == \
        baseline["summary"]["test"]["balanced_accuracy"]["mean"]
    assert routine.data.tags["xval.chosen_vs_baseline_p"] == repr(baseline["chosen_vs_baseline"]["p_value"])
    client = MlflowClient(uri)
    assert {entry.path for entry in client.list_artifacts(routine.info.run_id)} >= {
        "tiny_exp1_results_spreadsheet.xlsx", "tiny_exp1_summary.json"}
    for number in (1, 2, 3, 4):
        document = json.loads((tracked["dir"] / "results" / f"results_tiny_exp1_run{number}.json").read_text())
        [run] = [run for key, run in runs.items() if key.endswith(f"/run{number}")]
        assert run.data.tags["mlflow.parentRunId"] == routine.info.run_id and run.info.status == "FINISHED"
        assert run.data.params == {name: value if isinstance(value, str) else json.dumps(value)
                                   for name, value in document["parameters"].items()}
        for split in ("train", "val", "test"):
            values = [fold["metrics"][split]["balanced_accuracy"] for fold in document["folds"]]
            assert run.data.metrics[f"{split}_balanced_accuracy"] == pytest.approx(float(np.mean(values)))
        for fold in document["folds"]:
            [child] = [child for key, child in runs.items() if key.endswith(f"/run{number}/fold{fold['fold']}")]
            assert child.data.tags["mlflow.parentRunId"] == run.info.run_id
            assert child.data.tags["xval.test_items"] == ", ".join(fold["test_items"])
            assert {name: child.data.metrics[f"test_{name}"] for name in fold["metrics"]["test"]} == \
                fold["metrics"]["test"]
            for key, values in fold["history"].items():
                history = client.get_metric_history(child.info.run_id, f"epoch_{key}")
                assert [(entry.step, entry.value) for entry in history] == list(enumerate(values, 1)), key
            models = [entry.path for entry in client.list_artifacts(child.info.run_id, "models")]
            assert models == [f"models/{Path(fold['model_file']).name}"]
    assert (tmp_path / "store" / "mlartifacts").is_dir() and not (REPO / "mlruns").exists()
    second = export(tracked["dir"], "--tracking-uri", uri, "--models")
    assert "13 run(s) kept" in second and "created" not in second, (first, second)
    again = stored_runs(uri, "tiny_exp1")
    assert {key: (run.info.run_id, run.data.metrics, run.data.tags) for key, run in again.items()} == \
        {key: (run.info.run_id, run.data.metrics, run.data.tags) for key, run in runs.items()}


def test_an_export_of_a_read_only_experiment_goes_to_the_store_beside_it(mounts, tracked, tmp_path):
    experiment = tmp_path / "archive" / "experiment_1"
    shutil.copytree(tracked["dir"], experiment)
    before = {path: path.read_bytes() for path in experiment.rglob("*") if path.is_file()}
    with read_only(experiment):
        printed = export(experiment)
    assert f"sqlite:///{tmp_path / 'archive' / 'mlflow.db'}" in printed
    assert len(stored_runs(f"sqlite:///{tmp_path / 'archive' / 'mlflow.db'}", "tiny_exp1")) == 13
    assert {path: path.read_bytes() for path in experiment.rglob("*") if path.is_file()} == before


def test_a_changed_instance_is_replaced_with_its_folds_and_nothing_is_duplicated(tracked, tmp_path):
    experiment = tmp_path / "experiment_1"
    shutil.copytree(tracked["dir"], experiment)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    export(experiment, "--tracking-uri", uri, "--experiment-name", "shared")
    before = stored_runs(uri, "shared")
    results = experiment / "results" / "results_tiny_exp1_run3.json"
    document = json.loads(results.read_text())
    document["parameters"]["comment_1"] = "renamed"  # as a rerun with an edited comment rewrites it
    results.write_text(json.dumps(document))
    printed = export(experiment, "--tracking-uri", uri, "--experiment-name", "shared")
    assert "10 run(s) kept, 3 run(s) replaced" in printed, printed
    after = stored_runs(uri, "shared")
    assert sorted(after) == sorted(before)
    changed = {key for key in after if after[key].info.run_id != before[key].info.run_id}
    assert changed == {key for key in after if "/run3" in key} and len(changed) == 3
    assert [run.info.run_name for key, run in after.items() if key.endswith("/run3")] == ["run3 renamed"]


def test_a_missing_folder_or_an_unknown_store_is_one_line(tmp_path):
    for arguments, words in (([tmp_path / "nowhere"], "does not exist: pass an experiment_{N} folder"),
                             ([REPO / "tests" / "fixtures" / "v167406f" / "experiment_1",
                               "--tracking-uri", "bogus://x"], "MLflow store bogus://x: ")):
        completed = subprocess.run([sys.executable, str(REPO / "results_to_mlflow.py"), *map(str, arguments)],
                                   capture_output=True, text=True, timeout=300, cwd=tmp_path)
        lines = completed.stderr.strip().splitlines()
        assert completed.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ") and \
            words in lines[0], completed.stderr


def test_a_regression_fold_logs_its_own_metrics(tiny_features, tmp_path):
    routine = write_routine(tmp_path, {1: instance("r", "num_epochs = 2", "tensorboard = True",
                                                   task_type="regression")}, dataset="tiny_intensity")
    completed = run_routine(routine, tiny_features["config_path"])
    assert completed.returncode == 0, completed.stdout + completed.stderr
    experiment = tmp_path / "experiments" / "experiment_1"
    result = json.loads((experiment / "results" / "folds" / "results_tiny_intensity_exp1_run1_fold1.json").read_text())
    validation = event_scalars(experiment / "tensorboard" / "run1_fold1" / "validation")
    assert {"epoch_loss", "epoch_mae", "epoch_rmse"} <= set(validation), validation
    assert [validation["epoch_mae"][step] for step in (0, 1)] == pytest.approx(result["history"]["val_mae"], rel=1e-6)
