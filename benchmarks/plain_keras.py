"""The reference: xval's fits written by hand with plain Keras, every fold in one process.

    python3 benchmarks/plain_keras.py JOB.json OUT.json [--evaluate] [--one-batch]

JOB.json: {"features_folder", "dataset", "folds": [{"train_items", "val_items", "test_items"}], "instances":
[resolved parameters]} (written by overhead.py and memory.py from xval's own files). Per instance and fold: the
fold's clips stacked, a Normalization layer with the training clips' statistics in front of the same
define_models architecture, the same optimizer, loss, epochs, batch size, seed and validation data. Nothing is
saved. --evaluate: each model also predicts its train, validation and test clips and scikit-learn scores them.
--one-batch: one batch of clips per split (what TensorFlow needs to train this model, whatever the data).
OUT.json: {"fit": seconds of model.fit summed over the folds}.
"""
import inspect
import json
import sys
import time
from pathlib import Path

USAGE = "usage: python3 benchmarks/plain_keras.py JOB.json OUT.json [--evaluate] [--one-batch] (overhead.py and " \
        "memory.py write JOB.json)"
if __name__ == "__main__" and (len(sys.argv) < 3 or {"-h", "--help"} & set(sys.argv[1:])):
    print(f"{USAGE}\n\n{__doc__}")
    raise SystemExit(0 if {"-h", "--help"} & set(sys.argv[1:]) else 2)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the project's modules, however this is started

import keras
import numpy as np
from sklearn.metrics import balanced_accuracy_score

import define_models


def load(job, items, clips=None):
    """x float32 (clips, frames, bins) and y float32 of the items' clips, read from the dataset's files (first
    clips of the first item only, when clips is given)."""
    from utility_functions import load_dataset
    if clips:
        items = items[:1]
    return [np.concatenate([arrays[item][:clips] for item in items]).astype(np.float32)
            for arrays in load_dataset(job["features_folder"], job["dataset"])]


def fit_fold(parameters, fold, job, evaluate, one_batch):
    """Build, compile and fit one fold (and score it); returns the seconds of model.fit."""
    keras.backend.clear_session()
    keras.utils.set_random_seed(parameters["seed"])
    batch = parameters["batch_size"]
    data = {split: load(job, fold[f"{split}_items"], batch if one_batch else None)
            for split in ("train", "val", "test")}
    x, y = data["train"]
    architecture = getattr(define_models, parameters["architecture"])
    names = list(inspect.signature(architecture).parameters)[3:]
    core = architecture(x.shape[1:], y.shape[1], parameters["task_type"], **{n: parameters[n] for n in names})
    inputs = keras.Input(shape=x.shape[1:])
    normalise = keras.layers.Normalization(mean=x.mean(axis=(0, 1)), variance=np.maximum(x.var(axis=(0, 1)), 1e-8))
    model = keras.Model(inputs, core(normalise(inputs)))
    optimizer = keras.optimizers.get({"class_name": parameters["optimizer"],
                                      "config": {"learning_rate": parameters["learning_rate"]}})
    model.compile(optimizer=optimizer, loss="categorical_crossentropy", metrics=["accuracy"])
    started = time.monotonic()
    model.fit(x, y, validation_data=data["val"], epochs=parameters["num_epochs"], batch_size=batch, verbose=0)
    seconds = time.monotonic() - started
    if evaluate:
        for x_split, y_split in data.values():
            predicted = model.predict(x_split, batch_size=batch, verbose=0)
            balanced_accuracy_score(y_split.argmax(axis=1), predicted.argmax(axis=1))
    return seconds


if __name__ == "__main__":
    job = json.loads(open(sys.argv[1], encoding="utf-8").read())
    fits = [fit_fold(parameters, fold, job, "--evaluate" in sys.argv, "--one-batch" in sys.argv)
            for parameters in job["instances"] for fold in job["folds"]]
    with open(sys.argv[2], "w", encoding="utf-8") as handle:
        json.dump({"fit": sum(fits)}, handle)
