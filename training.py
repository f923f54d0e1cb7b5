"""Train, select, save and evaluate one fold of one instance, in a process of its own.

Every fold runs in a process of its own, so that the memory the backend takes (host and GPU) is given back when
the fold ends and a crash stays contained. Two ways in:
  python3 training.py JOB.json    one fold (a fold can be rerun by hand this way, with KERAS_BACKEND set to the
                                  instance's backend);
  python3 training.py --serve     what launchers.ForkServerLauncher starts, one server per backend: imports Keras
                                  once, then reads job paths on stdin (one JSON string a line) and forks one child
                                  per fold, so no fold pays the import again. The child touches the GPU first (the
                                  server never does), and after each fold the server prints
                                  `xval-exit: <exit code of the child>`.
JOB.json (written by the fold-job protocol, foldjob.py, kept in the experiment's logs/) holds the dataset, the
fold's items, the resolved parameters and the output paths. The fold:
  1. loads the dataset and splits it by foldable item (train / validation / test speakers);
  2. builds the model from define_models (or starts from a saved model), with the input normalised by statistics
     of the training items only;
  3. compiles it (loss by task_type and parameters), trains with the recipes the parameters ask for (class
     weights, augmentation, learning-rate plateau), keeps the weights of the best epoch on the configured metric,
     and stops with a clear error on a NaN loss;
  4. saves the best model (.hdf5, or .weights.h5 for a model wrapping a PyTorch module; atomically), then
     evaluates it on train, validation and test, per clip, with scikit-learn metrics and writes the fold result
     JSON (atomically, after the model).
Exit code 0 on success; otherwise the last line on stderr is `xval-error: <one line>` for the parent to report.
"""
import contextlib
import ctypes
import gc
import importlib
import importlib.util
import inspect
import json
import os
import signal
import sys
import time
import traceback
from pathlib import Path


def die_with_parent():
    """Ask Linux to kill this process when its parent dies (a killed routine leaves no orphan fold)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


if __name__ == "__main__":
    die_with_parent()  # before the imports below (~1 s): a routine killed meanwhile takes this process with it

import numpy as np  # noqa: E402

from launchers import (DEVICE_PREFIX, EPOCH_PREFIX, ERROR_PREFIX, EXIT_PREFIX, INTERRUPTED_EXIT,  # noqa: E402
                       READY_LINE, SERVE_FLAG)
from layout import WEIGHTS_SUFFIX, weights_path  # noqa: E402
from registries import (BACKENDS, METRICS, monitor_direction, monitorable, score_all, scored,  # noqa: E402
                        use_backend_environment)
from utility_functions import (CONFIG_SCHEMA, DATA_ARGUMENTS, EXIT_DONE, EXIT_REFUSED,  # noqa: E402
                               MODEL_ONLY_TRAINING_PARAMETERS, SPLITS, XvalError, atomic_write_json, commit_temp_file,
                               dataset_file_stats, feature_sums, file_sha256, load_clip_ids, load_dataset,
                               load_item_sums, read_json, temp_path_for, to_jsonable, writing)

CARD_DATASET = "xval_card"  # the HDF5 dataset, inside every model file xval saves, that holds the model's card
CARD_FORMAT = 1
# what run_fold reads itself: the [training] keys an architecture does not consume, and the labels
LOOP_PARAMETERS = tuple(name for name in CONFIG_SCHEMA["training"] if name not in MODEL_ONLY_TRAINING_PARAMETERS) + \
    ("architecture", "comment_1", "comment_2")

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ info lines; oneDNN stays on (it is faster)


# ----------------------------------------------------------------------------------------------------------------
# Metrics, from predictions, with scikit-learn (never from the Keras loss)

def classification_metrics(y_true, probabilities):
    """Metrics (registries.METRICS of classification) of class indices y_true (n,) against class probabilities
    (n, classes); plus the confusion matrix (classes, classes), rows true."""
    probabilities = np.clip(probabilities, 1e-7, 1)
    probabilities = probabilities / probabilities.sum(axis=1, keepdims=True)  # float32 softmax sums to 1 +- 1e-7
    y_pred = probabilities.argmax(axis=1)
    classes = probabilities.shape[1]
    scores = score_all("classification", scored(y_true, y_pred, probabilities, classes))
    from sklearn.metrics import confusion_matrix  # imported by import_fold_libraries in a fold process
    return scores, confusion_matrix(y_true, y_pred, labels=np.arange(classes))


def regression_metrics(y_true, y_pred):
    """Metrics (registries.METRICS of regression) of targets y_true (n,) against predictions y_pred (n,); None
    where a metric is undefined."""
    return score_all("regression", scored(y_true, y_pred))


# ----------------------------------------------------------------------------------------------------------------
# Data of one fold

class Rows:
    """The examples of some items, one after the other, read where they lie (memory-mapped views, or arrays) and
    never stacked: len(rows), rows.shape, and rows[slice or int array] -> float32 (n, frames, bins), a copy of
    those examples only, in the order asked."""

    def __init__(self, parts):
        self.parts = parts
        self.ends = np.cumsum([len(part) for part in parts])
        self.shape = (int(self.ends[-1]) if parts else 0, *(parts[0].shape[1:] if parts else ()))

    def __len__(self):
        return self.shape[0]

    def __getitem__(self, index):
        wanted = np.arange(*index.indices(len(self))) if isinstance(index, slice) else np.asarray(index)
        order = np.argsort(wanted, kind="stable")  # read each part in file order
        part = np.searchsorted(self.ends, wanted[order], side="right")
        out = np.empty((len(wanted), *self.shape[1:]), np.float32)
        for number in np.unique(part):
            at = order[part == number]
            out[at] = self.parts[number][wanted[at] - (self.ends[number] - len(self.parts[number]))]
        return out


def item_rows(dataset, items):
    """The examples of items: x (a Rows of (examples, frames, bins)), y float32 (examples, ...), the item of every
    example and its clip (numbered within its item; each example is a clip of its own but in a windows dataset)."""
    predictors, targets, clip_ids, _ = dataset
    y = np.concatenate([targets[item] for item in items]).astype(np.float32, copy=False)
    owner = np.concatenate([[item] * len(predictors[item]) for item in items])
    return Rows([predictors[item] for item in items]), y, owner, np.concatenate([clip_ids[item] for item in items])


def clip_means(output, owner, clip):
    """Mean output of each clip's examples (its windows; consecutive): (means (clips, outputs), index of each
    clip's first example (clips,))."""
    first = np.flatnonzero(np.r_[True, (owner[1:] != owner[:-1]) | (clip[1:] != clip[:-1])])
    sums = np.add.reduceat(np.asarray(output, dtype=np.float64), first, axis=0)
    counts = np.diff(np.r_[first, len(output)])
    return sums / counts[:, np.newaxis], first


def normalisation_statistics(sums, count):
    """Mean and variance of every bin over all training examples and frames, from their feature_sums added up
    (float64 (2, bins)) and the number of frames they sum (examples x frames): two (bins,) float32 arrays."""
    mean = sums[0] / count
    return mean.astype(np.float32), np.maximum(sums[1] / count - mean ** 2, 1e-8).astype(np.float32)


# ----------------------------------------------------------------------------------------------------------------
# Keras: model, optimiser, callbacks (keras is imported in main(), after the process is set up)

def calling_and_recording(function_name, filename, call):
    """(call()'s result, {argument: value} that the function defined as `def function_name` at the top of the file
    filename received at its first call during call(), or None if it was never called). What reached a function
    is recorded from its own frame, so a wrapper around it cannot hide what it passed on."""
    received = []

    def profile(frame, event, _):
        code = frame.f_code
        if event == "call" and not received and code.co_qualname == function_name and code.co_filename == filename:
            names = code.co_varnames[:code.co_argcount + code.co_kwonlyargcount]
            received.append({name: frame.f_locals[name] for name in names if name in frame.f_locals})
            sys.setprofile(previous)  # recorded: the model is built unprofiled (JAX build 0.43 -> 0.33 s, medians)

    previous = sys.getprofile()
    sys.setprofile(profile)
    try:
        result = call()
    finally:
        sys.setprofile(previous)
    return result, (received[0] if received else None)


def check_received(architecture, keywords, received):
    """XvalError unless the architecture's own code received every keyword argument with the value given (a
    decorator or wrapper that drops or changes one would train a model other than the one recorded)."""
    if received is None:
        raise XvalError(f"define_models.{architecture} as imported never runs the function of that name in "
                        "define_models.py: remove the decorator or wrapper that replaces it")
    for name, value in keywords.items():
        got = received.get(name, "<not passed>")
        if json.loads(json.dumps(to_jsonable(got))) != json.loads(json.dumps(value)):
            raise XvalError(f"define_models.{architecture} received {name} = {got!r}, but the instance's parameter "
                            f"is {value!r}: a decorator or wrapper around it changes its arguments; remove it, or "
                            "make it pass every argument on")


def build_model(keras, define_models, parameters, input_shape, output_size, mean, variance):
    """The instance's architecture with a fixed Normalization layer in front, so the saved model takes raw features.

    The architecture receives, by name, every parameter its signature takes. Every other parameter must be one the
    training loop reads or a comment: the routine refused any other before training, and this checks the function
    imported now (a decorator can change what the source said) and what its code received, so that no parameter
    is silently left out or changed.
    """
    architecture = parameters["architecture"]
    function = getattr(define_models, architecture)
    accepted = inspect.signature(function).parameters
    keywords = {name: value for name, value in parameters.items() if name in accepted and name not in DATA_ARGUMENTS}
    unreached = sorted(set(parameters) - set(keywords) - set(LOOP_PARAMETERS) - set(DATA_ARGUMENTS))
    try:
        inspect.signature(function).bind(tuple(input_shape), output_size, parameters["task_type"], **keywords)
        if unreached:
            raise TypeError(f"it takes no argument {', '.join(unreached)}")
    except TypeError as error:
        raise XvalError(f"define_models.{architecture} as imported does not take the parameters its source "
                        f"declares ({error}): remove the decorator or wrapper that changes its signature") from None
    try:
        core, received = calling_and_recording(architecture, define_models.__file__, lambda: function(
            tuple(input_shape), output_size, parameters["task_type"], **keywords))
    except Exception as error:
        raise XvalError(f"architecture '{architecture}' raised {type(error).__name__} while building the model: "
                        f"{str(error).splitlines()[0] if str(error) else ''} (fix define_models.{architecture} "
                        "or the parameters it was given)") from error
    check_received(architecture, keywords, received)
    if not isinstance(core, keras.Model):
        raise XvalError(f"architecture '{architecture}' returned {type(core).__name__}, not a keras.Model: "
                        f"make define_models.{architecture} return the model it builds")
    inputs = keras.Input(shape=tuple(input_shape), name="features")
    normalised = keras.layers.Normalization(axis=-1, mean=mean, variance=variance, name="normalisation")(inputs)
    return keras.Model(inputs, core(normalised), name=f"{architecture}_normalised")


def make_optimizer(keras, name, learning_rate):
    """A Keras optimiser by its config name (one of OPTIMIZERS), with the instance's learning rate."""
    return keras.optimizers.get({"class_name": name, "config": {"learning_rate": learning_rate}})


def monitor_mode(monitor, configured_mode):
    """min or max for a monitored metric: the configured one, or for auto the metric's direction (registries)."""
    return monitor_direction(monitor) if configured_mode == "auto" else configured_mode


def validation_logs(model, task_type, y, output):
    """What fit's own validation pass would log, from the model's outputs on the validation examples: val_loss (the
    compiled loss plus the weights' regularisation, over every example) and Keras's metrics per example (accuracy;
    mae and rmse). y (examples, classes) one-hot or (examples,) values; output (examples, outputs)."""
    logs = {"val_loss": float(model.compute_loss(y=y, y_pred=output))}
    if task_type == "classification":
        logs["val_accuracy"] = float(np.mean(output.argmax(axis=1) == y.argmax(axis=1)))
    else:
        error = output.reshape(-1).astype(np.float64) - y
        logs["val_mae"], logs["val_rmse"] = float(np.mean(np.abs(error))), float(np.sqrt(np.mean(error ** 2)))
    return logs


def make_callbacks(keras, monitor, mode, parameters, validation, tensorboard_dir=None):
    """Callbacks: validation scores (first, so the others see them), the backend's epoch_input_ready (registries),
    NaN stop, best weights in memory, one progress line per epoch with an orphan stop, early stopping, learning rate
    reduction on plateau, TensorBoard logs.

    validation: (x, y, owner, clip) of the validation items, or None (a final model). After each epoch one forward
    pass over them gives what fit's validation would log (validation_logs; fit gets no validation_data: its own
    pass cost about 10 % of a demo fold's fit, on top of this one) and, when monitor is one of them
    (registries.METRICS whose monitor is "sklearn") or tensorboard_dir is given, the scikit-learn scores per clip
    (val_balanced_accuracy, val_f1_macro). tensorboard_dir: a folder where Keras's TensorBoard callback writes every
    epoch's logs, these scores and the learning rate included.
    """

    scored_here = monitorable(parameters["task_type"], how=("sklearn",))  # val_balanced_accuracy, val_f1_macro
    scored_here = scored_here if monitor in scored_here or tensorboard_dir else ()

    class ValidationScores(keras.callbacks.Callback):
        """Add the validation scores to the epoch's logs (and history): Keras's per example, ours per clip. The
        epoch's outputs stay in self.output, for BestWeights."""

        output = None

        def on_epoch_end(self, epoch, logs=None):
            x, y, owner, clip = validation
            output = self.output = predict_in_batches(self.model, x, parameters["batch_size"])
            logs.update(validation_logs(self.model, parameters["task_type"], y, output))
            if scored_here:
                output, first = clip_means(output, owner, clip)
                truth = scored(y[first].argmax(axis=1), output.argmax(axis=1), classes=y.shape[1])
            for name in scored_here:
                logs[name] = float(METRICS[name.removeprefix("val_")].score[parameters["task_type"]](truth))

    class EpochInputReady(keras.callbacks.Callback):
        """The backend's epoch_input_ready() at the first batch of every epoch (the epoch's input pipeline made)."""

        def on_train_batch_begin(self, batch, logs=None):
            if batch == 0:
                BACKENDS[parameters["backend"]].epoch_input_ready()

    class BestWeights(keras.callbacks.Callback):
        """Keep the weights of the best epoch on monitor (Keras 3's ModelCheckpoint refuses .hdf5 paths), and the
        outputs on the validation examples those weights gave (None without validation): the fold scores its
        validation split from them instead of a forward pass that would give the same numbers again."""

        def __init__(self):
            super().__init__()
            self.best_value, self.best_epoch, self.best_weights, self.validation_output = None, None, None, None

        def on_epoch_end(self, epoch, logs=None):
            value = (logs or {}).get(monitor)
            if value is None or not np.isfinite(value):
                return
            if self.best_value is None or (value < self.best_value if mode == "min" else value > self.best_value):
                self.best_value, self.best_epoch, self.best_weights = value, epoch + 1, self.model.get_weights()
                self.validation_output = validation_scores.output

    class StopOnNaN(keras.callbacks.Callback):
        """Stop at the first non-finite loss with an error, instead of training on for nothing."""

        def on_epoch_end(self, epoch, logs=None):
            loss = (logs or {}).get("loss")
            if loss is not None and not np.isfinite(loss):
                raise XvalError(f"training loss became {loss} at epoch {epoch + 1}: lower learning_rate "
                                f"(now {parameters['learning_rate']}) or check the features")

    class ProgressAndOrphanCheck(keras.callbacks.Callback):
        """Print one parseable line per epoch; end the process if the process that started it is gone."""

        parent_pid = os.getppid()

        def on_epoch_end(self, epoch, logs=None):
            shown = " ".join(f"{key}={value:.4f}" for key, value in (logs or {}).items()
                             if isinstance(value, (int, float)) and key != "learning_rate")
            print(f"{EPOCH_PREFIX}{epoch + 1}/{parameters['num_epochs']} {shown}", flush=True)
            if os.getppid() != self.parent_pid:
                print(f"{ERROR_PREFIX}the routine that started this fold is gone; stopping", file=sys.stderr)
                os._exit(3)

    validation_scores, best = ValidationScores(), BestWeights()
    callbacks = [] if validation is None else [validation_scores]
    callbacks += [EpochInputReady(), StopOnNaN(), best, ProgressAndOrphanCheck()]
    if parameters["early_stopping"]:
        callbacks.append(keras.callbacks.EarlyStopping(monitor=monitor, mode=mode, patience=parameters["patience"]))
    if parameters["lr_patience"]:
        callbacks.append(keras.callbacks.ReduceLROnPlateau(monitor=monitor, mode=mode, factor=parameters["lr_factor"],
                                                           patience=parameters["lr_patience"],
                                                           min_lr=parameters["min_lr"]))
    if tensorboard_dir:  # last: it writes the logs the others filled in (tf.summary: any backend, TF installed)
        callbacks.append(keras.callbacks.TensorBoard(log_dir=tensorboard_dir, write_graph=False, profile_batch=0))
    return callbacks, best


# ----------------------------------------------------------------------------------------------------------------
# Training batches: class weights, SpecAugment, mixup (training data only, never validation or test)

def balanced_sample_weights(y_train):
    """scikit-learn's 'balanced' class weights (n_clips / (classes * clips of the class)) of one-hot training
    targets (n, classes), as one weight per example (n,) float32; classes absent from training get none."""
    labels = y_train.argmax(axis=1)
    present = np.unique(labels)
    from sklearn.utils.class_weight import compute_class_weight  # imported by import_fold_libraries
    weights = compute_class_weight("balanced", classes=present, y=labels)
    lookup = np.zeros(y_train.shape[1], dtype=np.float32)
    lookup[present] = weights
    return lookup[labels]


def spec_augment(x, rng, fill, time_masks, time_width, freq_masks, freq_width):
    """SpecAugment-style masking of a batch x (batch, frames, bins): for every example, time_masks runs of up to
    time_width frames and freq_masks runs of up to freq_width bins are set to fill (bins,), the training mean of
    every bin (which the model's normalisation maps to 0). Returns a masked copy."""
    x = x.copy()
    frames, bins = x.shape[1:]
    for example in x:
        for _ in range(time_masks):
            width = rng.integers(0, min(time_width, frames) + 1)
            start = rng.integers(0, frames - width + 1)
            example[start:start + width] = fill
        for _ in range(freq_masks):
            width = rng.integers(0, min(freq_width, bins) + 1)
            start = rng.integers(0, bins - width + 1)
            example[:, start:start + width] = fill[start:start + width]
    return x


def mixup(x, y, weights, rng, alpha):
    """mixup of a batch: each example mixed with a random other one of the batch, lam ~ Beta(alpha, alpha) per
    example; x (batch, frames, bins), y targets (one-hot or values) and weights (batch,) or None mixed alike."""
    lam = rng.beta(alpha, alpha, size=len(x)).astype(np.float32)
    partner = rng.permutation(len(x))

    def mixed(array):
        share = lam.reshape(-1, *[1] * (array.ndim - 1))
        return (share * array + (1 - share) * array[partner]).astype(np.float32)

    return mixed(x), mixed(y), None if weights is None else mixed(weights)


def training_batches(keras, x, y, weights, parameters, fill):
    """Training data for model.fit: a keras PyDataset that shuffles every epoch with a generator seeded by the
    instance's seed, reads each batch's examples from x (an array, or Rows: never a stacked copy of the training
    set), and with SpecAugment or mixup augments every batch."""
    class Batches(keras.utils.PyDataset):
        """Shuffled (augmented) training batches: (x, y) or (x, y, sample weights)."""

        def __init__(self):
            super().__init__()
            self.rng = np.random.default_rng(parameters["seed"])
            self.order = self.rng.permutation(len(x))

        def __len__(self):
            return -(-len(x) // parameters["batch_size"])

        def __getitem__(self, index):
            rows = self.order[index * parameters["batch_size"]:(index + 1) * parameters["batch_size"]]
            xb, yb, wb = x[rows], y[rows], None if weights is None else weights[rows]
            if parameters["time_masks"] or parameters["freq_masks"]:
                xb = spec_augment(xb, self.rng, fill, parameters["time_masks"], parameters["time_mask_width"],
                                  parameters["freq_masks"], parameters["freq_mask_width"])
            if parameters["mixup_alpha"] > 0:
                xb, yb, wb = mixup(xb, yb, wb, self.rng, parameters["mixup_alpha"])
            return (xb, yb) if wb is None else (xb, yb, wb)

        def on_epoch_end(self):
            self.order = self.rng.permutation(len(x))

    return {"x": Batches()}


# ----------------------------------------------------------------------------------------------------------------
# Fine-tuning: start from a saved model's weights

def leaf_layers(model):
    """Every layer of a model, nested models opened, in order."""
    layers = []
    for layer in model.layers:
        layers += leaf_layers(layer) if hasattr(layer, "layers") else [layer]
    return layers


def start_from(model, path, trainable):
    """Load the weights of the saved model at path into model (same architecture and shapes), then freeze every
    layer but the last one that has weights when trainable is 'last_layer'."""
    try:
        model.load_weights(path)
    except (ValueError, OSError, KeyError) as error:
        raise XvalError(f"initial_model {path} does not fit this instance's model ({str(error).splitlines()[0]}): "
                        "start from a model of the same architecture and parameters") from None
    if trainable == "last_layer":
        with_weights = [layer for layer in leaf_layers(model) if layer.weights]
        for layer in with_weights[:-1]:
            layer.trainable = False


# ----------------------------------------------------------------------------------------------------------------

def predict_in_batches(model, x, batch_size):
    """The model's outputs (clips, outputs) for x (clips, frames, bins), batch_size clips per call.

    predict_on_batch rather than model.predict: on a few hundred clips, predict's data pipeline costs more than
    the forward passes (about 0.3 s per fold for the three splits of the demo); the outputs are the same.
    """
    return np.concatenate([np.asarray(model.predict_on_batch(x[start:start + batch_size]))
                           for start in range(0, len(x), batch_size)])


def score_split(task_type, output, y, owner, clip):
    """The metrics of one split from the model's outputs on its examples (examples, outputs), per clip: (metrics,
    predictions, confusion matrix or None). A clip's output is the mean of its examples' outputs (class
    probabilities, or values), so in a windows dataset every metric, prediction and confusion matrix counts clips,
    never windows."""
    output, first = clip_means(output, owner, clip)
    if task_type == "classification":
        y_true = y[first].argmax(axis=1)
        scores, confusion = classification_metrics(y_true, output)
        y_pred = output.argmax(axis=1)
    else:
        y_true, y_pred, confusion = y[first].reshape(-1).astype(np.float64), output.reshape(-1), None
        scores = regression_metrics(y_true, y_pred)
    predictions = {"item": owner[first].tolist(), "clip": clip[first].tolist(), "y_true": y_true.tolist(),
                   "y_pred": y_pred.tolist()}
    return scores, predictions, confusion


def model_card(job, input_shape, output_size, mean, variance):
    """What a saved model carries to describe itself: what the job's card says (dataset and fingerprint, feature
    settings, class names, the instance), the resolved parameters, the input (frames, bins) and output size, the
    normalisation statistics of its training clips (also inside the model, as a layer's settings) and its items."""
    return {**job.get("card", {}), "card_format": CARD_FORMAT, "task_type": job["parameters"]["task_type"],
            "parameters": job["parameters"], "parameter_hash": job.get("parameter_hash"), "fold": job["fold"],
            "input_shape": [int(size) for size in input_shape], "output_size": int(output_size),
            "normalisation": {"mean": mean.tolist(), "variance": variance.tolist()},
            "items": {split: job[f"{split}_items"] for split in SPLITS}}


def write_card(path, card):
    """Store card (JSON) in the model file at path, as the uint8 dataset CARD_DATASET; Keras ignores it."""
    import h5py
    with h5py.File(path, "a") as handle:
        handle.create_dataset(CARD_DATASET, data=np.frombuffer(json.dumps(card).encode("utf-8"), dtype=np.uint8))


def read_card(path):
    """The card stored in a model file (write_card), or None for a model file without one (saved before xval stored
    them); XvalError for a file that is not a readable model file (damaged, truncated, something else)."""
    import h5py
    if not Path(path).is_file():
        raise XvalError(f"model {path} is missing (moved or deleted?): restore it (an experiment's fold models are "
                        "in its models/ folder), or train it again")
    try:
        with h5py.File(path, "r") as handle:
            return json.loads(bytes(handle[CARD_DATASET][()]).decode("utf-8")) if CARD_DATASET in handle else None
    except (OSError, ValueError, KeyError) as error:
        raise XvalError(f"model {path} cannot be read ({(str(error).splitlines() or [''])[0][:160]}): " +
                        not_a_model_hint(path)) from None


def not_a_model_hint(path):
    """How to fix a MODEL path that h5py cannot open, from what the file is: a JSON file, a Keras 3 .keras zip
    archive, or a damaged model."""
    with contextlib.suppress(OSError):
        with open(path, "rb") as handle:
            start = handle.read(4)
        if start[:1] in (b"{", b"["):
            return ("it is a JSON file (a model card or results), not a model: pass the model file itself (a fold's "
                    "models/*.hdf5, or final/*.hdf5)")
        if start == b"PK\x03\x04":
            return ("it is a zip archive (Keras 3's .keras format?): xval predicts with its own .hdf5 or .weights.h5 "
                    "models, which carry the features they take; pass one of those")
    return "use a complete copy of the model file"


def fresh_log_folder(folder):
    """folder (a fold's TensorBoard logs) made ready for this attempt, or None when not asked: the logs of an earlier
    attempt (failed, killed, or retrained with overwrite_results) are moved aside to folder.replaced-{time}, not
    mixed into this attempt's curves nor deleted."""
    if not folder:
        return None
    folder = Path(folder)
    if folder.exists():
        folder.rename(folder.with_name(f"{folder.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"))
    folder.parent.mkdir(parents=True, exist_ok=True)
    return str(folder)


def save_model(keras, model, model_path, model_file, card):
    """Save a fold's model with its card, atomically; returns (path, the name relative to the experiment) as saved.

    Stock layers: the whole model in Keras 3's legacy .hdf5 (it reloads on every backend with load_model). A
    model its backend saves as weights only (one that wraps a PyTorch module, whose whole-model file would need
    pickle): its weights, in .weights.h5, which load_model_file rebuilds from the card's architecture and parameters.
    """
    weights_only = BACKENDS[keras.backend.backend()].weights_only(keras, leaf_layers(model))
    if weights_only:
        model_path, model_file = weights_path(str(model_path)), weights_path(model_file)
    temp = temp_path_for(model_path)
    if weights_only:
        temp = temp.with_name(temp.name[:-len(".h5")] + WEIGHTS_SUFFIX)  # Keras wants the .weights.h5 ending
    with writing(model_path, temp):  # a full disk: one line naming the file, and no temporary model left
        try:
            if weights_only:
                model.save_weights(temp)
            else:
                model.save(temp)
        except RuntimeError as error:  # how h5py reports some failed writes
            raise OSError(str(error)) from error
        write_card(temp, card)
        commit_temp_file(temp, model_path)
    return model_path, model_file


def load_model_file(path, parameters=None, input_shape=None, output_size=None, normalisation=None):
    """A saved fold or final model, ready to predict: load_model for .hdf5; for .weights.h5, the architecture of
    parameters rebuilt for input_shape (frames, bins) and output_size with the fold's normalisation statistics
    ({"mean", "variance"}: they are the layer's settings, not weights), then its weights. What is not given is
    taken from the model's card. Keras must run on the backend the model was trained on (KERAS_BACKEND)."""
    import keras
    if not str(path).endswith(WEIGHTS_SUFFIX):
        return keras.models.load_model(path)
    import define_models
    card = read_card(path) or {}
    parameters, normalisation = parameters or card.get("parameters"), normalisation or card.get("normalisation")
    input_shape, output_size = input_shape or card.get("input_shape"), output_size or card.get("output_size")
    mean, variance = (np.asarray(normalisation[key], np.float32) for key in ("mean", "variance"))
    model = build_model(keras, define_models, parameters, input_shape, output_size, mean, variance)
    model.load_weights(path)
    return model


def load_all(features_folder, dataset):
    """(predictors, targets, clip ids, feature sums) of a dataset, each {item: array} (see utility_functions)."""
    predictors, targets = load_dataset(features_folder, dataset)
    return (predictors, targets, load_clip_ids(features_folder, dataset, predictors),
            load_item_sums(features_folder, dataset, predictors))


class Stopwatch:
    """Seconds between successive laps: lap(name) records the time since the previous lap (or since it was made)."""

    def __init__(self):
        self.laps, self._last = {}, time.monotonic()

    def lap(self, name):
        now = time.monotonic()
        self.laps[name] = round(now - self._last, 3)
        self._last = now


# What Keras 3 and scikit-learn import whenever installed, for what no fold uses: DataFrames as inputs (pandas),
# Keras's image gallery (matplotlib), its notebook display (IPython); hidden from them in a fold process: a JAX fold
# server ready 3.54 -> 2.33 s (benchmarks/tweaks.py, f_fold_imports: median of 7 interleaved runs)
UNUSED_BY_FOLDS = ("pandas", "matplotlib", "IPython")


def import_fold_libraries():
    """Import Keras (on the backend KERAS_BACKEND names) and scikit-learn's metrics as a fold process needs them;
    returns keras. While they import, the packages of UNUSED_BY_FOLDS not yet imported are hidden (None in
    sys.modules: their import raises ImportError, which both take for a package not installed, and
    importlib.util.find_spec answers None); afterwards they import as usual, for define_models and anything else.
    Only Keras's and scikit-learn's own optional references to them stay None."""
    hidden = [name for name in UNUSED_BY_FOLDS if name not in sys.modules]
    sys.modules.update(dict.fromkeys(hidden))
    try:
        import keras
        for module in ("sklearn.metrics", "sklearn.utils.class_weight"):  # what the fold's scores use
            importlib.import_module(module)
    finally:
        for name in hidden:
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]
    return keras


def run_fold(job, loaded=None):
    """Train, save and evaluate one fold described by job (see the module docstring); returns the fold result.

    loaded: the dataset as load_all returns it, when the fold server already holds it (else read here).
    A final job (job["final"], from use_model.py) trains on every item for a fixed number of epochs: no
    validation or test items, so no early stopping and no best-epoch choice (its learning-rate plateau watches the
    training loss); the last epoch's weights are saved and only the training items are scored.
    """
    started, started_at = time.monotonic(), time.time()
    parameters, task_type = job["parameters"], job["parameters"]["task_type"]
    use_backend_environment(parameters["backend"])  # a fold rerun by hand computes as a launched one
    keras = import_fold_libraries()  # here, not at the top: the process is set up first (environment, death signal)
    import define_models
    if keras.backend.backend() != parameters["backend"]:
        raise XvalError(f"this fold process runs Keras on {keras.backend.backend()!r}, the instance asks for "
                        f"{parameters['backend']!r}: run it through the routine, or set KERAS_BACKEND")
    backend = BACKENDS[parameters["backend"]]
    backend.prepare()
    if job.get("threads"):  # fold processes that share a machine's cores compute with an equal part each
        backend.limit_threads(job["threads"])
    keras.utils.set_random_seed(parameters["seed"])  # Python, NumPy and the backend's own generators
    print(f"{DEVICE_PREFIX}{parameters['backend']} {backend.devices()}", flush=True)
    clock = Stopwatch()  # where the fold's time goes, recorded in its result

    if dataset_file_stats(job["features_folder"], job["dataset"]) != job["dataset_files"]:
        raise XvalError(f"the files of dataset '{job['dataset']}' changed since the routine checked them "
                        "(preprocessed again while it ran?): rerun the routine")
    dataset = loaded or load_all(job["features_folder"], job["dataset"])
    final = job.get("final", False)
    splits = ("train",) if final else SPLITS

    def split_data(split):
        """x, y, owner, clip of one split: x read where it lies (Rows, a batch copied at a time), the validation
        items' too, which every epoch evaluates, so a fold holds no copy of any split's examples (stacked, the
        validation items cost 207 MB a fold at 40x and most of its data phase)."""
        x, y, owner, clip = item_rows(dataset, job[f"{split}_items"])
        if job.get("smoke_batches"):  # a smoke run: a few batches of every split
            size = job["smoke_batches"] * parameters["batch_size"]
            x, y, owner, clip = x[:size], y[:size], owner[:size], clip[:size]
        return x, (y.reshape(-1) if task_type == "regression" else y), owner, clip

    data = {split: split_data(split) for split in splits}
    x_train, y_train, _, _ = data["train"]
    output_size = y_train.shape[1] if task_type == "classification" else 1

    if job.get("smoke_batches"):
        mean, variance = normalisation_statistics(feature_sums(x_train[:]), len(x_train) * x_train.shape[1])
    else:
        mean, variance = normalisation_statistics(sum(dataset[3][item] for item in job["train_items"]),
                                                  len(x_train) * x_train.shape[1])
    clock.lap("data")
    model = build_model(keras, define_models, parameters, x_train.shape[1:], output_size, mean, variance)
    if job.get("initial_model_path"):
        start_from(model, job["initial_model_path"], parameters["trainable"])
    if task_type == "classification":
        loss, keras_metrics = "categorical_crossentropy", ["accuracy"]
        if parameters["loss"] == "focal":  # alpha 1: with gamma 0 it is the cross-entropy
            loss = keras.losses.CategoricalFocalCrossentropy(alpha=1.0, gamma=parameters["focal_gamma"])
    else:
        loss = "mean_squared_error"
        keras_metrics = [keras.metrics.MeanAbsoluteError(name="mae"), keras.metrics.RootMeanSquaredError(name="rmse")]
    model.compile(optimizer=make_optimizer(keras, parameters["optimizer"], parameters["learning_rate"]),
                  loss=loss, metrics=keras_metrics)
    clock.lap("build")

    monitor = "loss" if final else parameters["save_best_model_metric"]
    mode = "min" if final else monitor_mode(monitor, parameters["save_best_model_mode"])
    callbacks, best = make_callbacks(keras, monitor, mode, parameters, data.get("val"),
                                     fresh_log_folder(job.get("tensorboard_dir")))
    weights = balanced_sample_weights(y_train) if parameters["class_weight"] == "balanced" else None
    batches = training_batches(keras, x_train, y_train, weights, parameters, mean)
    history = model.fit(**batches, epochs=parameters["num_epochs"], verbose=0, callbacks=callbacks)
    if best.best_weights is None:
        raise XvalError(f"no epoch gave a finite {monitor}: lower learning_rate or check the features")
    if not final:
        model.set_weights(best.best_weights)
    clock.lap("fit")
    gc.freeze()  # the garbage collector never rescans what fit left: evaluate 0.53 -> 0.25 s (a 15-epoch demo fold)

    card = model_card(job, x_train.shape[1:], output_size, mean, variance)
    model_path, model_file = save_model(keras, model, job["model_path"], job["model_file"], card)
    clock.lap("save")

    result = {"fold": job["fold"], "parameter_hash": job["parameter_hash"],
              "dataset_fingerprint": job["dataset_fingerprint"],
              "train_items": job["train_items"], "val_items": job["val_items"], "test_items": job["test_items"],
              "metrics": {}, "history": {key: [float(v) for v in values] for key, values in history.history.items()},
              "best_epoch": len(history.history["loss"]) if final else best.best_epoch,
              "epochs_run": len(history.history["loss"]),
              "monitor": monitor, "monitor_mode": mode, "model_file": model_file,
              "model_sha256": file_sha256(model_path),  # a reuse checks the model is the one trained
              "normalisation": {"mean": mean.tolist(), "variance": variance.tolist()},
              "predictions": {}, "confusion_matrix": {}}
    del batches, x_train, y_train
    for split in splits:
        x, y, owner, clip = data[split]
        output = best.validation_output if split == "val" else None  # the best epoch's pass: the same weights
        if output is None:
            output = predict_in_batches(model, x, parameters["batch_size"])
        scores, predictions, confusion = score_split(task_type, output, y, owner, clip)
        result["metrics"][split] = scores
        if split == "test":
            result["predictions"]["test"] = predictions
            if confusion is not None:
                result["confusion_matrix"]["test"] = confusion.tolist()
    if task_type == "regression":
        del result["confusion_matrix"]
    clock.lap("evaluate")
    result["timings"] = clock.laps
    result["threads"] = job.get("threads")
    result["started_at"], result["finished_at"] = round(started_at, 3), round(time.time(), 3)  # Unix time, s
    result["seconds"] = round(time.monotonic() - started, 3)
    atomic_write_json(job["result_path"], result)
    return result


def fold_main(job_path, loaded=None):
    """Run the fold of job_path; returns the exit code: 0 done, 1 failed (after an `xval-error:` line),
    INTERRUPTED_EXIT stopped by Ctrl-C (SIGINT): not a failure of the fold."""
    job = {}
    try:
        job = read_json(job_path)
        result = run_fold(job, loaded)
    except KeyboardInterrupt:
        print(f"{ERROR_PREFIX}interrupted (Ctrl-C)", file=sys.stderr, flush=True)
        return INTERRUPTED_EXIT
    except XvalError as error:  # a refusal says all in its line: its traceback only with debug_mode or XVAL_DEBUG=1
        if (isinstance(job, dict) and job.get("debug")) or os.environ.get("XVAL_DEBUG"):
            traceback.print_exc()
        print(f"{ERROR_PREFIX}{error}", file=sys.stderr, flush=True)
        return 1
    except Exception as error:  # an unexpected failure: full traceback in the log, one line for the routine
        traceback.print_exc()
        print(f"{ERROR_PREFIX}{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}",
              file=sys.stderr, flush=True)
        return 1
    print(f"xval-done: fold {result['fold']} {json.dumps(result['metrics'])}", flush=True)
    return 0


def load_for_children(job_path, held):
    """The dataset of a job, read once by the server and shared with every forked fold (copy-on-write).

    held: {"version": ..., "data": ...} of the previous job, reused while the job names the same files as they
    were when the routine checked them. Anything else is left to the child, which reports the problem in its log.
    """
    try:
        job = read_json(job_path)
        version = [job["features_folder"], job["dataset"], job["dataset_files"]]
        if dataset_file_stats(job["features_folder"], job["dataset"]) != job["dataset_files"]:
            held.clear()
            return None
        if held.get("version") != version:
            held.clear()
            held.update(version=version, data=load_all(job["features_folder"], job["dataset"]))
        return held["data"]
    except (OSError, KeyError, TypeError, XvalError):
        held.clear()
        return None


def import_tensorboard_for(job_path):
    """TensorFlow imported by the server, once for every later fork, when a job writes TensorBoard logs: Keras's
    callback imports tensorflow.summary on any backend (2.4 s a fold on JAX or PyTorch otherwise). Importing it runs
    no operation, so forking stays safe; a job that cannot be read is left to the child, which reports it."""
    with contextlib.suppress(OSError, ValueError, AttributeError, XvalError):
        if read_json(job_path).get("tensorboard_dir") and "tensorflow" not in sys.modules:
            if importlib.util.find_spec("tensorflow") is not None:
                importlib.import_module("tensorflow")


def serve(job_paths, report):
    """Import Keras on its backend once, then fork one child per job path read from job_paths; report each exit code.

    The server itself runs no backend operation and never touches a device (so forking it is safe on every
    backend: it has no threads of TensorFlow, PyTorch or JAX yet), and every child initialises the GPU afresh.
    It holds the dataset in memory, so a fold reads no feature file.
    """
    import_fold_libraries()  # what every fold imports, paid once (KERAS_BACKEND chose the backend)
    importlib.import_module("define_models")
    print(READY_LINE, file=report, flush=True)
    held = {}
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the fold (the child), which reports it; the routine
    for line in job_paths:                       # then stops this server, or it lives on to report
        if not line.strip():
            continue
        job_path = json.loads(line)  # a JSON string: any path the OS allows, newlines included
        loaded = load_for_children(job_path, held)
        import_tensorboard_for(job_path)
        sys.stdout.flush()
        sys.stderr.flush()
        child = os.fork()
        if child == 0:
            code = 1
            try:
                die_with_parent()
                signal.signal(signal.SIGINT, signal.default_int_handler)
                code = fold_main(job_path, loaded)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        _, status = os.waitpid(child, 0)
        print(f"{EXIT_PREFIX}{os.waitstatus_to_exitcode(status)}", file=report, flush=True)
    return 0


def main(argv=None):
    """python3 training.py JOB.json (one fold) or --serve (folds by fork, job paths on stdin)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv == [SERVE_FLAG]:
        code = serve(sys.stdin, sys.stdout)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)  # no TensorFlow teardown for the routine to wait for: -1.2 s a run (tweaks.py: c_os_exit)
    usage = (f"usage: python3 training.py JOB.json | {SERVE_FLAG}: one fold job (a routine writes them into its "
             "experiment's logs/; rerun one by hand with KERAS_BACKEND set to its backend), or the fold server")
    if argv in (["-h"], ["--help"]):
        print(usage)
        return EXIT_DONE
    if len(argv) != 1:
        print(f"{ERROR_PREFIX}{usage}", file=sys.stderr)
        return EXIT_REFUSED
    if not Path(argv[0]).is_file():
        print(f"{ERROR_PREFIX}job file {argv[0]} does not exist: pass a fold's job file, "
              "{experiment}/logs/{dataset}_exp{N}_run{R}_fold{F}.job.json", file=sys.stderr)
        return EXIT_REFUSED
    return fold_main(argv[0])


if __name__ == "__main__":
    sys.exit(main())
