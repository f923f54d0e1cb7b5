"""The peer a user would pick instead of xval: scikit-learn's cross_validate over a scikeras KerasClassifier.

    python3 benchmarks/sklearn_peer.py JOB.json OUT.json [--n-jobs N]

JOB.json: plain_keras.py's job ({"features_folder", "dataset", "folds": [{"train_items", "val_items",
"test_items"}], "instances": [resolved parameters]}, written by parallel.py from xval's own files). The whole
dataset is stacked once (items in sorted order); each fold becomes a pair of index arrays over it: the clips of
its train items (the clips xval fits on) and of its test items. Per instance, one cross_validate call over those
folds with n_jobs N (joblib's default loky backend: fresh worker processes, which never inherit a TensorFlow that
has run; they are reused from one call to the next). The estimator is a Pipeline: a per-bin standardiser (mean and
variance of the fold's training clips over clips and frames, what xval's Normalization layer holds) and a
KerasClassifier that builds define_models' architecture with the instance's parameters, compiled with its
optimizer, learning rate and the cross-entropy, fitted with its epochs, batch size and seed (set in the build
function, as xval does: scikeras's own random_state would also switch TensorFlow to deterministic ops). Test
clips are scored with balanced accuracy. Nothing is saved.
OUT.json: {"fit": cross_validate's fit_time summed over instances and folds, "score": its score_time summed,
"test_scores": [[balanced accuracy per fold] per instance]}.
"""
import argparse
import functools
import inspect
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the project's modules, however this is started
os.environ.setdefault("KERAS_BACKEND", "tensorflow")  # read once, when keras is first imported

import keras  # noqa: E402
import numpy as np  # noqa: E402
from scikeras.wrappers import KerasClassifier  # noqa: E402
from sklearn.base import BaseEstimator, TransformerMixin  # noqa: E402
from sklearn.model_selection import cross_validate  # noqa: E402
from sklearn.pipeline import Pipeline  # noqa: E402

import define_models  # noqa: E402


class PerBinStandardiser(TransformerMixin, BaseEstimator):
    """(clips, frames, bins) arrays standardised per bin with the training clips' mean and variance over clips and
    frames (the variance floored at 1e-8), as xval's Normalization layer in front of the model."""

    def fit(self, x, y=None):
        self.mean_ = x.mean(axis=(0, 1))
        self.scale_ = np.sqrt(np.maximum(x.var(axis=(0, 1)), 1e-8))
        return self

    def transform(self, x):
        return ((x - self.mean_) / self.scale_).astype(np.float32, copy=False)


def build(meta, parameters):
    """The instance's architecture for the fold's input shape and classes, its weights seeded as xval seeds them."""
    keras.backend.clear_session()
    keras.utils.set_random_seed(parameters["seed"])
    architecture = getattr(define_models, parameters["architecture"])
    names = list(inspect.signature(architecture).parameters)[3:]
    return architecture(tuple(meta["X_shape_"][1:]), meta["n_classes_"], parameters["task_type"],
                        **{name: parameters[name] for name in names})


def stacked(job):
    """x float32 (clips, frames, bins) of every item in sorted order, the class of every clip, {item: its rows}."""
    from utility_functions import load_dataset
    arrays = dict(zip(("predictors", "target"), load_dataset(job["features_folder"], job["dataset"])))
    items, rows, start = sorted(arrays["predictors"]), {}, 0
    for item in items:
        rows[item] = np.arange(start, start + len(arrays["predictors"][item]))
        start += len(rows[item])
    x = np.concatenate([arrays["predictors"][item] for item in items]).astype(np.float32, copy=False)
    y = np.concatenate([arrays["target"][item] for item in items]).argmax(axis=1)
    return x, y, rows


def estimator(parameters):
    """The Pipeline cross_validate clones for every fold."""
    if parameters["task_type"] != "classification":
        raise SystemExit("sklearn_peer.py covers classification instances only")
    classifier = KerasClassifier(model=functools.partial(build, parameters=parameters),
                                 loss="categorical_crossentropy", optimizer=parameters["optimizer"],
                                 optimizer__learning_rate=parameters["learning_rate"], metrics=["accuracy"],
                                 epochs=parameters["num_epochs"], batch_size=parameters["batch_size"], shuffle=True,
                                 verbose=0)
    return Pipeline([("standardise", PerBinStandardiser()), ("keras", classifier)])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("job", help="JOB.json: folds, instances, features (see above)")
    parser.add_argument("out", help="OUT.json: summed fit and score times, test scores")
    parser.add_argument("--n-jobs", type=int, default=1, help="cross_validate's n_jobs (default 1)")
    args = parser.parse_args()
    with open(args.job, encoding="utf-8") as handle:
        job = json.load(handle)
    x, y, rows = stacked(job)
    splits = [(np.concatenate([rows[item] for item in fold["train_items"]]),
               np.concatenate([rows[item] for item in fold["test_items"]])) for fold in job["folds"]]
    results = [cross_validate(estimator(parameters), x, y, cv=splits, n_jobs=args.n_jobs,
                              scoring="balanced_accuracy", error_score="raise") for parameters in job["instances"]]
    with open(args.out, "w", encoding="utf-8") as handle:
        json.dump({"fit": float(sum(r["fit_time"].sum() for r in results)),
                   "score": float(sum(r["score_time"].sum() for r in results)),
                   "test_scores": [r["test_score"].tolist() for r in results]}, handle)


if __name__ == "__main__":
    main()
