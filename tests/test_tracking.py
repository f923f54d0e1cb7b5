"""The tools researchers already watch: TensorBoard logs written by every fold (tensorboard = True), read back with
TensorBoard's own event reader and compared with the fold's history; results_to_mlflow.py's export read back with
the MLflow client."""
import importlib.util
import json
import os

import pytest

from routine_helpers import instance, run_routine, write_routine

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
    completed = run_routine(routine, tiny_features["config_path"])
    assert completed.returncode == 0, completed.stdout + completed.stderr
    return {"folder": folder, "routine": routine, "dir": folder / "experiments" / "experiment_1",
            "config": tiny_features["config_path"]}


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
