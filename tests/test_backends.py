"""Every instance chooses its Keras 3 backend: TensorFlow, PyTorch and JAX folds side by side in one routine, on the
same folds, with models that reload on their backend and reproduce the saved predictions, resume after a kill on
the PyTorch backend, and a plain torch.nn.Module trained through xval with its parameters reaching it."""
import importlib.util
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from sklearn import metrics as skm

from parameters import architecture_signatures, check_backend_installed, resolve_instance
from utility_functions import PROJECT_DIR
from routine_helpers import (REPO, clip_files_of, instance, read_csv, routine_environment, run_routine,
                             start_routine, use_model, write_routine)
from utility_functions import XvalError, load_config

MISSING = [name for name in ("torch", "jax") if importlib.util.find_spec(name) is None]
pytestmark = pytest.mark.skipif(bool(MISSING) and os.environ.get("CI") != "true",
                                reason=f"{', '.join(MISSING)} not installed: python3 -m pip install -r "
                                       "requirements-backends.txt (CI installs them and never skips)")
TORCH_CNN = ['architecture = "TORCH_CNN_model"', "channels = [4]", "hidden_units = 6", "num_epochs = 2",
             "batch_size = 16", 'backend = "torch"']
RELOAD = """
import json, sys
import numpy as np
from training import load_model_file
from utility_functions import load_dataset
experiment, features = sys.argv[1], sys.argv[2]
document = json.load(open(sys.argv[3]))
predictors, _ = load_dataset(features, "tiny")
same = []
for fold in document["folds"]:
    x = np.concatenate([predictors[item] for item in fold["test_items"]])
    model = load_model_file(experiment + "/" + fold["model_file"], document["parameters"], x.shape[1:], 8,
                            fold["normalisation"])
    same.append(model.predict(x, verbose=0).argmax(axis=1).tolist() == fold["predictions"]["test"]["y_pred"])
print(json.dumps({"backend": __import__("keras").backend.backend(), "same": same}))
"""


@pytest.fixture(scope="module")
def backends(tiny_features, tmp_path_factory):
    folder = tmp_path_factory.mktemp("backends")
    experiment_dict = {1: instance("tf"), 2: instance("torch", 'backend = "torch"'),
                       3: instance("jax", 'backend = "jax"'), 4: instance("torch module", model=TORCH_CNN)}
    routine = write_routine(folder, experiment_dict, num_folds=2)
    completed = run_routine(routine, tiny_features["config_path"])
    return {"completed": completed, "dir": folder / "experiments" / "experiment_1", "features": tiny_features,
            "folder": folder}


def results(experiment_dir, run):
    return json.loads((experiment_dir / "results" / f"results_tiny_exp1_run{run}.json").read_text())


def test_a_routine_mixes_backends_on_the_same_folds(backends):
    assert backends["completed"].returncode == 0, backends["completed"].stdout + backends["completed"].stderr
    documents = {run: results(backends["dir"], run) for run in (1, 2, 3, 4)}
    folds = {run: [(f["train_items"], f["val_items"], f["test_items"]) for f in d["folds"]]
             for run, d in documents.items()}
    assert folds[1] == folds[2] == folds[3] == folds[4]
    assert [documents[run]["parameters"]["backend"] for run in (1, 2, 3, 4)] == ["tensorflow", "torch", "jax", "torch"]
    for document in documents.values():
        for fold in document["folds"]:
            predictions = fold["predictions"]["test"]
            assert fold["metrics"]["test"]["balanced_accuracy"] == pytest.approx(
                skm.balanced_accuracy_score(predictions["y_true"], predictions["y_pred"]))
    versions = json.loads(next((backends["dir"] / "code").glob("*/versions.json")).read_text())
    assert versions["torch"] and versions["jax"]


@pytest.mark.parametrize("run, backend", [(2, "torch"), (3, "jax"), (4, "torch")])
def test_models_reload_on_their_backend_and_reproduce_the_saved_predictions(backends, run, backend):
    document = results(backends["dir"], run)
    if run == 4:
        assert all(fold["model_file"].endswith(".weights.h5") for fold in document["folds"])
    completed = subprocess.run([sys.executable, "-c", RELOAD, str(backends["dir"]),
                                str(backends["features"]["features_folder"]),
                                str(backends["dir"] / "results" / f"results_tiny_exp1_run{run}.json")],
                               capture_output=True, text=True, timeout=300, cwd=REPO,
                               env=dict(routine_environment(backends["features"]["config_path"]),
                                        KERAS_BACKEND=backend))
    assert completed.returncode == 0, completed.stderr
    outcome = json.loads(completed.stdout.strip().splitlines()[-1])
    assert outcome == {"backend": backend, "same": [True, True]}


@pytest.mark.parametrize("run, backend", [(3, "jax"), (4, "torch")])
def test_use_model_predicts_new_audio_with_a_jax_or_torch_fold_model_as_the_fold_did(backends, tmp_path, run,
                                                                                    backend):
    """use_model.py predict on a fold model of another backend (JAX's .hdf5; a wrapped PyTorch module's weights):
    the audio files of the fold's test clips get the predictions the fold saved, Keras on the model's backend."""
    metadata = json.loads((backends["features"]["features_folder"] / "tiny_metadata.json").read_text())
    fold = results(backends["dir"], run)["folds"][0]
    files, out = clip_files_of(metadata, fold["test_items"]), tmp_path / "predicted.csv"
    completed = use_model("predict", backends["dir"] / fold["model_file"], *files, "--out", out,
                          config_path=backends["features"]["config_path"])
    assert completed.returncode == 0, completed.stderr
    names = results(backends["dir"], run)["class_names"]
    assert [row["prediction"] for row in read_csv(out)] == [names[i] for i in fold["predictions"]["test"]["y_pred"]]


def test_the_torch_module_receives_its_parameters(backends):
    import h5py
    fold = results(backends["dir"], 4)["folds"][0]
    with h5py.File(backends["dir"] / fold["model_file"], "r") as weights:
        shapes = []
        weights.visititems(lambda name, item: shapes.append(item.shape) if hasattr(item, "shape") else None)
    assert (4, 1, 3, 3) in shapes  # channels = [4]: one conv block of 4 filters over 3x3
    assert any(shape in ((6, 4 * 16), (4 * 16, 6)) for shape in shapes)  # hidden_units = 6 after 32 // 2 bins


def test_resume_after_a_kill_on_the_torch_backend(tiny_features, tmp_path):
    routine = write_routine(tmp_path, {1: instance("torch", 'backend = "torch"', "num_epochs = 2")}, num_folds=3)
    experiment_dir = tmp_path / "experiments" / "experiment_1"
    process = start_routine(routine, tiny_features["config_path"])
    folds_dir = experiment_dir / "results" / "folds"
    while not (folds_dir.is_dir() and list(folds_dir.glob("results_*.json"))):
        try:
            process.wait(timeout=0.05)
            break
        except subprocess.TimeoutExpired:
            pass
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    survivors = {path.name: path.read_bytes() for path in folds_dir.glob("results_*.json")}
    assert survivors
    finished = run_routine(routine, tiny_features["config_path"])
    assert finished.returncode == 0, finished.stderr
    document = json.loads((experiment_dir / "results" / "results_tiny_exp1_run1.json").read_text())
    assert document["status"] == "complete" and len(document["folds"]) == 3
    for name, data in survivors.items():
        assert (folds_dir / name).read_bytes() == data


def test_backend_refusals_name_the_fix(tmp_path):
    training = load_config(PROJECT_DIR / "config.ini")["training"]
    base = ['task_type = "classification"', 'comment_1 = ""', 'comment_2 = ""']
    with pytest.raises(XvalError, match='runs on backend \'torch\' only.*add \'backend = "torch"\''):
        resolve_instance([*base, 'architecture = "TORCH_CNN_model"'], training, architecture_signatures(),
                            "i")
    with pytest.raises(XvalError, match="backend 'jax' is not installed.*requirements-backends.txt"):
        check_backend_installed("jax", find_spec=lambda name: None)
    with pytest.raises(XvalError, match="is not one of tensorflow, torch, jax"):
        resolve_instance([*base, 'architecture = "EXAMPLE_model"', 'backend = "mxnet"'], training,
                            architecture_signatures(), "i")


def test_jax_folds_share_a_persistent_compilation_cache_unless_the_user_set_one(tmp_path):
    """Each fold process compiles again; JAX's persistent cache (one folder per user) lets a fold reuse what the
    folds before it compiled. Run in a fresh process: the cache folder is read from the environment at import."""
    probe = ("import json, launchers; e = launchers.fold_environment('jax'); print(json.dumps({k: e.get(k) for k in "
             "('JAX_COMPILATION_CACHE_DIR', 'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', "
             "'XLA_PYTHON_CLIENT_PREALLOCATE')}))")
    base = dict(os.environ, PYTHONPATH=str(REPO), XDG_CACHE_HOME=str(tmp_path / "cache"))
    base.pop("JAX_COMPILATION_CACHE_DIR", None)
    default = json.loads(subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=base,
                                        check=True).stdout)
    assert default == {"JAX_COMPILATION_CACHE_DIR": str(tmp_path / "cache" / "xval" / "jax"),
                       "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
    own = json.loads(subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                                    env=dict(base, JAX_COMPILATION_CACHE_DIR="/scratch/mine",
                                             XLA_PYTHON_CLIENT_PREALLOCATE="true")).stdout)
    assert own["JAX_COMPILATION_CACHE_DIR"] == "/scratch/mine" and own["XLA_PYTHON_CLIENT_PREALLOCATE"] == "true"


RERUN_FOLD = """
import json, sys
if sys.argv[2] == "tensorflow first":
    import tensorflow
import training
training.run_fold(json.load(open(sys.argv[1])))
print(json.dumps({"tensorflow imported": "tensorflow" in sys.modules,
                  "unused imported": sorted(set(training.UNUSED_BY_FOLDS) & set(sys.modules))}))
"""


@pytest.mark.parametrize("run, backend", [(2, "torch"), (3, "jax")])
def test_torch_and_jax_folds_leave_tensorflow_unimported_and_compute_the_same_with_it(backends, tmp_path, run,
                                                                                      backend):
    """Keras imports TensorFlow on any backend where it is installed, only to seed it and to read a .hdf5 model's
    config: a PyTorch or JAX fold is spared that import (2.4 s of each fold server's start), and trains, scores and
    saves exactly what it does with TensorFlow imported (and what the routine's fold did). Neither does it import
    what Keras and scikit-learn import for what no fold uses (training.UNUSED_BY_FOLDS: pandas, matplotlib,
    IPython)."""
    job = json.loads((backends["dir"] / "logs" / f"tiny_exp1_run{run}_fold1.job.json").read_text())
    routine_fold = json.loads(Path(job["result_path"]).read_text())
    outcomes = {}
    for first in ("tensorflow first", "fold alone"):
        rerun = dict(job, result_path=str(tmp_path / f"{first}.json"), model_path=str(tmp_path / f"{first}.hdf5"))
        (tmp_path / f"{first}.job.json").write_text(json.dumps(rerun))
        completed = subprocess.run([sys.executable, "-c", RERUN_FOLD, str(tmp_path / f"{first}.job.json"), first],
                                   capture_output=True, text=True, timeout=300, cwd=REPO,
                                   env=dict(routine_environment(backends["features"]["config_path"]),
                                            KERAS_BACKEND=backend))
        assert completed.returncode == 0, completed.stderr
        imported = json.loads(completed.stdout.strip().splitlines()[-1])
        assert imported["tensorflow imported"] == (first == "tensorflow first")
        assert imported["unused imported"] == [] or first == "tensorflow first"  # pandas, matplotlib, IPython
        outcomes[first] = json.loads((tmp_path / f"{first}.json").read_text())
    for key in ("history", "metrics", "predictions", "best_epoch"):
        assert outcomes["fold alone"][key] == outcomes["tensorflow first"][key] == routine_fold[key], key
    assert outcomes["fold alone"]["model_sha256"] == outcomes["tensorflow first"]["model_sha256"]
