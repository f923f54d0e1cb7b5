"""Registries: what a name that a setting can hold means. Keras backends, metrics and fold splitters.

Code asks a registry (BACKENDS[name].limit_threads(4), METRICS[name].higher_is_better, SPLITTERS[name].make(5, 1))
and never switches on a name itself, so a new backend, metric or splitter is one entry here.

Nothing here imports a framework, scikit-learn or scipy at import time (the routine reads these tables without
them); an entry's functions import what they need when they are called, in the fold process.
"""
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import numpy as np

TASK_TYPES = ("classification", "regression")


# ----------------------------------------------------------------------------------------------------------------
# Keras 3 backends: what a fold process on each one needs

def _tensorflow_threads(threads):
    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)


def _torch_threads(threads):
    import torch
    torch.set_num_threads(threads)
    torch.set_num_interop_threads(threads)


def _tensorflow_devices():
    import tensorflow as tf
    return ", ".join(device.name for device in tf.config.list_logical_devices("GPU")) or "cpu"


def _torch_devices():
    import torch
    return ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())) or "cpu"


def _jax_devices():
    import jax
    return ", ".join(str(device) for device in jax.devices() if device.platform == "gpu") or "cpu"


def _tensorflow_memory_growth():
    """GPU memory taken as needed, so that two fold processes can share a GPU (TF_FORCE_GPU_ALLOW_GROWTH too)."""
    import tensorflow as tf
    for gpu in tf.config.list_physical_devices("GPU"):
        tf.config.experimental.set_memory_growth(gpu, True)


def _jax_thread_environment(threads):
    """XLA's CPU backend has no thread count, only single- or multi-threaded: XLA_FLAGS, read at its start."""
    if threads != 1:
        return {}
    return {"XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"}


# what glibc's dynamic thresholds rise to on their own: the mmap threshold up to DEFAULT_MMAP_THRESHOLD_MAX (32 MiB
# on 64-bit), the trim threshold to twice it
MMAP_THRESHOLD_BYTES = 32 * 2 ** 20
TRIM_THRESHOLD_BYTES = 2 * MMAP_THRESHOLD_BYTES


def _tensorflow_malloc_thresholds():
    """Undo TensorFlow's setting of glibc's mmap threshold to 128 KiB, which its Dataset.from_generator (the way
    Keras feeds a PyDataset to TensorFlow) makes once per process, the first time one is iterated (a mitigation of a
    Python 3.11 leak, tensorflow/tensorflow#65675). With it, every tensor over 128 KiB (a conv layer's activations of
    a batch: 0.8-26 MB) is mapped and unmapped at every step and its pages faulted in again: a demo fold's training
    step took 130 ms against 78 ms fed from arrays (one thread; 3.67 million page faults against 0.19 million).
    Sets the thresholds glibc's own would reach."""
    from utility_functions import set_malloc_thresholds
    set_malloc_thresholds(MMAP_THRESHOLD_BYTES, TRIM_THRESHOLD_BYTES)


def _wraps_a_torch_module(keras, layers):
    """Whether a model of these leaf layers wraps a PyTorch module (its whole-model file would need pickle)."""
    return any(isinstance(layer, keras.layers.TorchModuleWrapper) for layer in layers)


def _keras_without_tensorflow():
    """Keras on JAX or PyTorch imports TensorFlow where it is installed only to seed it too
    (keras.utils.set_random_seed) and to recognise its types in a .hdf5 model's config, neither of which a fold on
    these backends uses (a JAX fold's history, metrics and model file are byte for byte the same without it). Unless
    something imported TensorFlow already, Keras is told it is absent (its lazy module's cached answer, in Keras 3),
    so the fold server no longer imports it: 2.4 s before a JAX routine's first fold. A TensorBoard callback still
    imports tensorflow.summary itself."""
    from keras.src.utils import module_utils
    lazy = getattr(module_utils, "tensorflow", None)
    # its __dict__, not getattr(): a lazy module answers an attribute it lacks by importing TensorFlow
    if "tensorflow" not in sys.modules and getattr(lazy, "__dict__", {}).get("_available", False) is None:
        lazy._available = False


@dataclass(frozen=True)
class Backend:
    """One Keras 3 backend. package: the module that must be importable; install: the command that installs it;
    environment: variables of every fold process on it; thread_environment(threads): variables that limit its
    threads, read at process start; limit_threads(threads): the same, called before the fold's first operation;
    devices(): the GPUs it sees, as text, or "cpu"; prepare(): once per fold process before its first operation;
    weights_only(keras, leaf layers): whether a model must be saved as weights (a model file of it would need
    pickle); epoch_input_ready(): at the first batch of every training epoch, once fit has made that epoch's input
    pipeline."""
    name: str
    package: str
    install: str
    environment: dict
    thread_environment: Callable = lambda threads: {}
    limit_threads: Callable = lambda threads: None
    devices: Callable = lambda: "cpu"
    prepare: Callable = lambda: None
    weights_only: Callable = lambda keras, layers: False
    epoch_input_ready: Callable = lambda: None


BACKENDS = {backend.name: backend for backend in (
    # TF_ENABLE_ONEDNN_OPTS: TensorFlow's oneDNN kernels, on by default only on Intel CPUs with AVX-512 VNNI or
    # newer; elsewhere (this AMD EPYC) a demo fold's fit 15.9 -> 7.5 s on 1 thread, 10.4 -> 6.7 s on 2
    Backend("tensorflow", "tensorflow", "python3 -m pip install -r requirements.txt",
            {"TF_FORCE_GPU_ALLOW_GROWTH": "true", "TF_ENABLE_ONEDNN_OPTS": "1"}, limit_threads=_tensorflow_threads,
            devices=_tensorflow_devices,
            prepare=_tensorflow_memory_growth, epoch_input_ready=_tensorflow_malloc_thresholds),
    Backend("torch", "torch", "python3 -m pip install -r requirements-backends.txt", {},
            limit_threads=_torch_threads, devices=_torch_devices, prepare=_keras_without_tensorflow,
            weights_only=_wraps_a_torch_module),
    # JAX compiles every function again in each fold process; its persistent cache (one folder per user, shared by
    # folds, instances and runs of the same shapes) cut a demo fold's build from 2.7-5.4 s to 0.6-2.0 s
    Backend("jax", "jax", "python3 -m pip install -r requirements-backends.txt",
            {"XLA_PYTHON_CLIENT_PREALLOCATE": "false", "JAX_COMPILATION_CACHE_DIR": str(
                Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "xval" / "jax"),
             "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"},
            thread_environment=_jax_thread_environment, devices=_jax_devices, prepare=_keras_without_tensorflow),
)}


def use_backend_environment(name):
    """Set in os.environ each variable of backend `name` that the user's environment leaves unset, as
    launchers.fold_environment does for a launched fold process: for a process that imports the framework itself
    (a fold rerun by hand, use_model.py predict), before that import, which reads them once."""
    for variable, value in BACKENDS[name].environment.items():
        os.environ.setdefault(variable, value)


# ----------------------------------------------------------------------------------------------------------------
# Metrics: computed per clip from predictions with scikit-learn, never from the Keras loss

def scored(y_true, y_pred, probabilities=None, classes=None):
    """What a metric's score function reads: targets and predictions of n clips, (n,) each (class indices or
    values), and for classification the class probabilities (n, classes) and the class indices 0..classes-1."""
    labels = None if classes is None else np.arange(classes)
    return SimpleNamespace(y_true=y_true, y_pred=y_pred, probabilities=probabilities, labels=labels)


def _skm():
    from sklearn import metrics
    return metrics


def _constant(s):
    return np.ptp(s.y_true) == 0 or np.ptp(s.y_pred) == 0


def _pearson(s):
    from scipy import stats
    return None if _constant(s) else stats.pearsonr(s.y_true, s.y_pred)[0]


def _concordance(s):
    """Lin's concordance correlation coefficient; None where undefined (constant inputs)."""
    y_true, y_pred = np.asarray(s.y_true, float), np.asarray(s.y_pred, float)
    covariance = np.mean((y_true - y_true.mean()) * (y_pred - y_pred.mean()))
    denominator = y_true.var() + y_pred.var() + (y_true.mean() - y_pred.mean()) ** 2
    return 2 * covariance / denominator if denominator > 0 else None


@dataclass(frozen=True)
class Metric:
    """One metric. score: {task type: function(scored(...)) -> number, or None where undefined}; monitor: how a
    fold can watch val_{name} for early stopping and best-epoch choice ("keras": a loss or compiled metric of the
    model; "sklearn": training.py scores the validation clips after each epoch; None: not monitorable)."""
    name: str
    higher_is_better: bool
    score: dict
    monitor: str = None
    bounds: tuple = (-math.inf, math.inf)  # (lowest, highest) value it can take: a value outside is damage

    @property
    def tasks(self):
        return tuple(self.score)


METRICS = {metric.name: metric for metric in (
    Metric("loss", False, {"classification": lambda s: _skm().log_loss(s.y_true, s.probabilities, labels=s.labels),
                           "regression": lambda s: _skm().mean_squared_error(s.y_true, s.y_pred)}, "keras",
           bounds=(0, math.inf)),
    Metric("accuracy", True, {"classification": lambda s: _skm().accuracy_score(s.y_true, s.y_pred)}, "keras",
           bounds=(0, 1)),
    Metric("balanced_accuracy", True,
           {"classification": lambda s: _skm().balanced_accuracy_score(s.y_true, s.y_pred)}, "sklearn", bounds=(0, 1)),
    # macro means over the classes of the fold's test clips or predictions (scikit-learn's default labels), never
    # over a class absent from both; recall over the classes of the test clips alone, so it is UAR
    Metric("f1_macro", True, {"classification": lambda s: _skm().f1_score(
        s.y_true, s.y_pred, average="macro", zero_division=0)}, "sklearn", bounds=(0, 1)),
    Metric("precision_macro", True, {"classification": lambda s: _skm().precision_score(
        s.y_true, s.y_pred, average="macro", zero_division=0)}, bounds=(0, 1)),
    Metric("recall_macro", True, {"classification": lambda s: _skm().recall_score(
        s.y_true, s.y_pred, labels=np.unique(s.y_true), average="macro", zero_division=0)}, bounds=(0, 1)),
    Metric("rmse", False, {"regression": lambda s: np.sqrt(_skm().mean_squared_error(s.y_true, s.y_pred))}, "keras",
           bounds=(0, math.inf)),
    Metric("mae", False, {"regression": lambda s: _skm().mean_absolute_error(s.y_true, s.y_pred)}, "keras",
           bounds=(0, math.inf)),
    Metric("r2", True, {"regression": lambda s: _skm().r2_score(s.y_true, s.y_pred) if np.ptp(s.y_true) > 0
                        else None}, bounds=(-math.inf, 1)),
    Metric("pearson_r", True, {"regression": _pearson}, bounds=(-1, 1)),
    Metric("ccc", True, {"regression": _concordance}, bounds=(-1, 1)),
)}
# the metric that ranks instances and chooses on validation, per task type (first in every table)
MAIN_METRIC = {"classification": "balanced_accuracy", "regression": "rmse"}
HIGHER_IS_BETTER = {name: metric.higher_is_better for name, metric in METRICS.items()}


def metric_names(task_type):
    """The metrics of a task type, in the registry's order (loss first)."""
    return tuple(name for name, metric in METRICS.items() if task_type in metric.tasks)


def monitorable(task_type, how=("keras", "sklearn")):
    """The val_{metric} names a fold of task_type can monitor (those computed `how`)."""
    return tuple(f"val_{name}" for name in metric_names(task_type) if METRICS[name].monitor in how)


def monitor_direction(monitor):
    """"max" or "min" for a monitored name (val_balanced_accuracy, loss...): the metric's direction."""
    return "max" if METRICS[monitor.removeprefix("val_")].higher_is_better else "min"


def score_all(task_type, truth):
    """{metric: float or None} of every metric of task_type on scored(...) truth."""
    values = {name: METRICS[name].score[task_type](truth) for name in metric_names(task_type)}
    return {name: None if value is None else float(value) for name, value in values.items()}


# ----------------------------------------------------------------------------------------------------------------
# Fold splitters: scikit-learn's group splitters that partition the foldable items, as [folds] splitter

@dataclass(frozen=True)
class Splitter:
    """A [folds] splitter: make(num_folds, seed) -> a scikit-learn splitter whose split(X, y, groups) runs over
    the examples grouped by foldable item. needs_labels: it stratifies by class (classification targets only);
    one_fold_per_item: num_folds must be the number of items; about: one line for the README and errors."""
    name: str
    make: Callable
    about: str
    needs_labels: bool = False
    one_fold_per_item: bool = False


def _model_selection():
    from sklearn import model_selection
    return model_selection


SPLITTERS = {splitter.name: splitter for splitter in (
    Splitter("GroupKFold", lambda k, seed: _model_selection().GroupKFold(k, shuffle=True, random_state=seed),
             "k folds of (almost) equally many foldable items, shuffled by folds_seed (the default)"),
    Splitter("StratifiedGroupKFold",
             lambda k, seed: _model_selection().StratifiedGroupKFold(k, shuffle=True, random_state=seed),
             "k folds whose class proportions stay close to the whole dataset's (classification targets)",
             needs_labels=True),
    Splitter("LeaveOneGroupOut", lambda k, seed: _model_selection().LeaveOneGroupOut(),
             "one fold per foldable item (num_folds = the number of items)", one_fold_per_item=True),
)}
