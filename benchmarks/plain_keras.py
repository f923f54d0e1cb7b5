"""The reference of the overhead benchmark: the fits xval makes, written by hand with plain Keras, in one process.

    python3 benchmarks/plain_keras.py JOB.json OUT.json [--evaluate]

JOB.json (written by overhead.py) holds the features folder and dataset name, the folds of the xval experiment
(its folds.json) and the resolved parameters of each instance (from xval's results JSON). For every instance and
fold this script does what a careful user would write without xval: stack the fold's clips, put a Normalization
layer with the training items' mean and variance in front of the same define_models architecture, compile with
the same optimizer, learning rate and loss, and fit with the same epochs, batch size, seed and validation data.
Nothing is saved or evaluated: xval's saving, prediction and metrics are part of what the benchmark calls its
overhead. With --evaluate, each fold's model also predicts its train, validation and test clips and
scikit-learn scores them (balanced accuracy), as a user who wants results would write. OUT.json: the wall time of
every phase, measured here.
"""
import json
import sys
import time

STARTED = time.monotonic()  # before the imports below: they are part of this script's cost

import os  # noqa: E402

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

IMPORTED_NUMPY = time.monotonic()
import keras  # noqa: E402

import define_models  # noqa: E402
from sklearn.metrics import balanced_accuracy_score  # noqa: E402

IMPORTED = time.monotonic()
EVALUATE_FLAG = "--evaluate"
SPLITS = ("train", "val", "test")

OPTIMIZERS = {"adam": "Adam", "adamw": "AdamW", "sgd": "SGD", "rmsprop": "RMSprop", "nadam": "Nadam",
              "adagrad": "Adagrad", "adamax": "Adamax"}


def load_features(features_folder, dataset):
    """{item: predictors}, {item: targets} of the dataset's .npz files (no pickle)."""
    arrays = []
    for kind in ("predictors", "target"):
        with np.load(os.path.join(features_folder, f"{dataset}_{kind}.npz"), allow_pickle=False) as archive:
            arrays.append({item: archive[item] for item in archive.files})
    return arrays[0], arrays[1]


def stack(predictors, targets, items):
    """The clips of items, concatenated: x float32 (clips, frames, bins), y float32 (clips, classes)."""
    x = np.concatenate([predictors[item] for item in items]).astype(np.float32, copy=False)
    y = np.concatenate([targets[item] for item in items]).astype(np.float32, copy=False)
    return x, y


def build(parameters, input_shape, output_size, x_train):
    """Normalization (training items' statistics) in front of the define_models architecture, uncompiled."""
    function = getattr(define_models, parameters["architecture"])
    names = function.__code__.co_varnames[3:function.__code__.co_argcount]
    keywords = {name: parameters[name] for name in names if name in parameters}
    core = function(input_shape, output_size, parameters["task_type"], **keywords)
    inputs = keras.Input(shape=input_shape)
    mean, variance = x_train.mean(axis=(0, 1)), np.maximum(x_train.var(axis=(0, 1)), 1e-8)
    normalised = keras.layers.Normalization(axis=-1, mean=mean, variance=variance)(inputs)
    return keras.Model(inputs, core(normalised))


def evaluate(model, data, batch_size):
    """Predict every split and score it: {split: balanced accuracy}."""
    return {split: float(balanced_accuracy_score(y.argmax(axis=1), model.predict(
        x, batch_size=batch_size, verbose=0).argmax(axis=1))) for split, (x, y) in data.items()}


def train_fold(parameters, fold, predictors, targets, with_evaluation):
    """One fold of one instance: build, compile and fit (and evaluate); returns the seconds of each phase."""
    started = time.monotonic()
    keras.backend.clear_session()
    keras.utils.set_random_seed(parameters["seed"])
    data = {split: stack(predictors, targets, fold[f"{split}_items"]) for split in SPLITS}
    (x_train, y_train), (x_val, y_val) = data["train"], data["val"]
    stacked = time.monotonic()
    model = build(parameters, x_train.shape[1:], y_train.shape[1], x_train)
    built = time.monotonic()
    optimizer = getattr(keras.optimizers, OPTIMIZERS[parameters["optimizer"]])(
        learning_rate=parameters["learning_rate"])
    model.compile(optimizer=optimizer, loss="categorical_crossentropy", metrics=["accuracy"])
    compiled = time.monotonic()
    history = model.fit(x_train, y_train, validation_data=(x_val, y_val), epochs=parameters["num_epochs"],
                        batch_size=parameters["batch_size"], shuffle=True, verbose=0)
    fitted = time.monotonic()
    scores = evaluate(model, data, parameters["batch_size"]) if with_evaluation else None
    evaluated = time.monotonic()
    return {"fold": fold["fold"], "data": stacked - started, "build": built - stacked, "compile": compiled - built,
            "fit": fitted - compiled, "evaluate": evaluated - fitted, "epochs": len(history.history["loss"]),
            "balanced_accuracy": scores}


def main(job_path, out_path, with_evaluation=False):
    """Run every fold of every instance of the job; write the phase times to out_path."""
    with open(job_path, encoding="utf-8") as handle:
        job = json.load(handle)
    loading = time.monotonic()
    predictors, targets = load_features(job["features_folder"], job["dataset"])
    loaded = time.monotonic()
    folds = [train_fold(parameters, fold, predictors, targets, with_evaluation)
             for parameters in job["instances"] for fold in job["folds"]]
    ended = time.monotonic()
    result = {"import_numpy": IMPORTED_NUMPY - STARTED, "import_keras": IMPORTED - IMPORTED_NUMPY,
              "load": loaded - loading, "folds": folds, "in_process": ended - STARTED,
              "fit_total": sum(fold["fit"] for fold in folds)}
    with open(out_path, "w", encoding="utf-8") as handle:
        json.dump(result, handle, indent=1)
    return 0


if __name__ == "__main__":
    if len(sys.argv) not in (3, 4) or sys.argv[3:] not in ([], [EVALUATE_FLAG]):
        print(f"usage: python3 benchmarks/plain_keras.py JOB.json OUT.json [{EVALUATE_FLAG}]", file=sys.stderr)
        sys.exit(2)
    sys.exit(main(sys.argv[1], sys.argv[2], with_evaluation=sys.argv[3:] == [EVALUATE_FLAG]))
