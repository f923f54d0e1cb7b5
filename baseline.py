"""The baseline of an experiment: a simple model on the experiment's own folds, from its features alone, that the
instances have to beat. A yardstick, never a candidate: it is never chosen, never ranked as best, and use_model.py
never trains it.

The model (BASELINE_MODELS): every clip becomes the mean and the standard deviation over time of every feature bin
(a windows dataset: over all the frames of all of a clip's windows), standardised with the fold's training clips
(scikit-learn's StandardScaler); classification: a logistic regression; regression: a ridge regression. Its one
hyperparameter (C, alpha) is chosen on each fold's validation clips by the main metric, then the model fitted on
the training clips is scored on the test clips with the instances' own metrics, per clip, as training.py scores a
fold. So it sees exactly the data an instance sees: trained on the training items, chosen on the validation items,
reported on the test items.

compute_baseline() makes the document that the routine writes as results/baseline_{dataset}_exp{N}_{task}.json
(Layout.baseline), with the dataset fingerprint and the split it was computed on: a later run keeps it while both
are the same and computes it again when one changed. Nothing is pickled and no model is kept (it takes seconds to
compute again): the file holds each fold's choice, its scores and its test predictions.
"""
import time
import warnings

import numpy as np

from registries import HIGHER_IS_BETTER, MAIN_METRIC, METRICS, scored
from foldjob import read_if_readable
from utility_functions import SPLITS, atomic_write_json, load_clip_ids, load_dataset, to_jsonable

BASELINE_FORMAT = 1
# the hyperparameter grids, searched on each fold's validation clips (ties: the first, i.e. the most regularised)
BASELINE_MODELS = {
    "classification": {"name": "logistic regression", "hyperparameter": "C",
                       "grid": (0.001, 0.01, 0.1, 1.0, 10.0, 100.0)},
    "regression": {"name": "ridge regression", "hyperparameter": "alpha",
                   "grid": (0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0)},
}
# a fold's baseline is fitted on at most this many of its training clips, drawn at random (seed 0): a linear model
# of 2 x bins inputs gains nothing from more, and on the 200x demo corpus (216,000 training clips a fold) its 24
# lbfgs fits took longer than the routine's 4 folds of 1 epoch; smaller corpora use every clip, as before
MAX_TRAINING_CLIPS = 20_000
DESCRIPTION = ("{name} on each clip's mean and standard deviation over time of every feature bin, standardised on the "
               f"fold's training clips (at most {MAX_TRAINING_CLIPS:,} of them, drawn at random); {{hyperparameter}} "
               "chosen on the fold's validation clips")
CHUNK = 2048  # examples summed at a time: bounded memory on any corpus


def describe(task_type):
    """One line that says what the baseline of task_type is."""
    return DESCRIPTION.format(**BASELINE_MODELS[task_type])


def pooled_statistics(x, clip):
    """Each clip's mean and standard deviation over time of every bin: x float32 (examples, frames, bins) of one
    foldable item, clip int (examples,) the clip of each example (a clip's windows are consecutive). Returns
    (features float64 (clips, 2 * bins): the means then the stds; the index of each clip's first example (clips,))."""
    clip = np.asarray(clip)
    first = np.flatnonzero(np.r_[True, clip[1:] != clip[:-1]])
    sums = np.empty((len(x), 2, x.shape[2]))
    for start in range(0, len(x), CHUNK):
        block = np.asarray(x[start:start + CHUNK], dtype=np.float64)
        sums[start:start + len(block), 0] = block.sum(axis=1)
        sums[start:start + len(block), 1] = np.square(block).sum(axis=1)
    per_clip = np.add.reduceat(sums, first, axis=0)
    frames = (np.diff(np.r_[first, len(x)]) * x.shape[1])[:, np.newaxis]
    mean = per_clip[:, 0] / frames
    std = np.sqrt(np.maximum(per_clip[:, 1] / frames - mean ** 2, 0.0))
    return np.hstack([mean, std]), first


def clip_table(features_folder, dataset, items):
    """The pooled statistics of every clip of items: {item: (features (clips, 2 * bins), target of each clip
    ((clips, classes) one-hot or (clips,)), clip number of each clip (clips,))}."""
    predictors, targets = load_dataset(features_folder, dataset, scan=True)  # one pass: none of it kept
    clip_ids = load_clip_ids(features_folder, dataset, predictors)
    table = {}
    for item in items:
        features, first = pooled_statistics(predictors[item], clip_ids[item])
        table[item] = (features, np.asarray(targets[item])[first], np.asarray(clip_ids[item])[first])
    return table


def split_arrays(table, items, task_type):
    """(X (clips, features), y (clips,): class index or value, item of each clip, clip of each clip) of items."""
    x = np.concatenate([table[item][0] for item in items])
    y = np.concatenate([table[item][1] for item in items])
    y = y.argmax(axis=1) if task_type == "classification" else y.reshape(-1).astype(np.float64)
    owner = np.concatenate([[item] * len(table[item][0]) for item in items])
    return x, y, owner, np.concatenate([table[item][2] for item in items])


def make_model(task_type, value):
    """The baseline's scikit-learn pipeline with its hyperparameter at value."""
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    # newton-cg, not lbfgs: the demo's 24 fits 3.7 -> 1.7 s, and nearer the optimum at the weakest regularisation
    # (lbfgs stopped at its tolerance there: its validation scores differed from the Newton solvers' by a clip or two)
    model = LogisticRegression(C=value, max_iter=2000, solver="newton-cg") if task_type == "classification" \
        else Ridge(alpha=value)
    return make_pipeline(StandardScaler(), model)


def predict_and_score(model, task_type, x, y, classes):
    """(metrics, predictions (clips,), confusion matrix or None) of a fitted pipeline on clips x, y, scored as
    training.py scores an instance's fold (the same functions)."""
    from training import classification_metrics, regression_metrics
    if task_type == "regression":
        predictions = model.predict(x)
        return regression_metrics(y, predictions), predictions, None
    probabilities = np.zeros((len(x), classes))
    probabilities[:, model.classes_] = model.predict_proba(x)  # a class absent from training gets 0
    scores, confusion = classification_metrics(y, probabilities)
    return scores, probabilities.argmax(axis=1), confusion


def main_metric(model, task_type, x, y, classes):
    """The main metric (registries.MAIN_METRIC) of a fitted pipeline on clips x, y, the value predict_and_score
    gives it: the grid's choice reads only this (every metric costs ~18 ms a call in scikit-learn's checks: a demo
    baseline -0.4 s)."""
    if task_type == "regression":
        truth = scored(y, model.predict(x))
    else:
        truth = scored(y, model.classes_[model.predict_proba(x).argmax(axis=1)], classes=classes)
    return METRICS[MAIN_METRIC[task_type]].score[task_type](truth)


def subsample(x, y):
    """x (clips, features) and y (clips, ...) of a fold's training clips, or MAX_TRAINING_CLIPS of them drawn at
    random (seed 0, in their order) where there are more."""
    if len(x) <= MAX_TRAINING_CLIPS:
        return x, y
    keep = np.sort(np.random.default_rng(0).choice(len(x), MAX_TRAINING_CLIPS, replace=False))
    return x[keep], y[keep]


def baseline_fold(table, fold, task_type, classes):
    """One fold of the baseline: fit on its training clips for every value of the grid, keep the value best on its
    validation clips (main metric), score that model on every split. Returns the fold's entry (see module)."""
    spec, metric = BASELINE_MODELS[task_type], MAIN_METRIC[task_type]
    data = {split: split_arrays(table, fold[f"{split}_items"], task_type) for split in SPLITS}
    x_train, y_train = subsample(*data["train"][:2])
    if task_type == "classification" and len(np.unique(y_train)) < 2:
        raise ValueError(f"fold {fold['fold']}: its training clips hold one class only")
    tried, best = {}, None
    for value in spec["grid"]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ConvergenceWarning at the weakest regularisation: still a valid fit
            model = make_model(task_type, value).fit(x_train, y_train)
        score = main_metric(model, task_type, *data["val"][:2], classes)
        tried[repr(value)] = score
        better = score is not None and (best is None or (score > best[1] if HIGHER_IS_BETTER[metric]
                                                         else score < best[1]))
        if better:
            best = (value, score, model)
    if best is None:
        raise ValueError(f"fold {fold['fold']}: no value of {spec['hyperparameter']} gave a validation {metric}")
    entry = {"fold": fold["fold"], "chosen": {spec["hyperparameter"]: best[0]}, "validation": tried, "metrics": {}}
    for split in SPLITS:
        x, y, owner, clip = data[split]
        scores, predictions, confusion = predict_and_score(best[2], task_type, x, y, classes)
        entry["metrics"][split] = scores
        if split == "test":
            entry["predictions"] = {"test": {"item": owner.tolist(), "clip": clip.tolist(), "y_true": y.tolist(),
                                             "y_pred": predictions.tolist()}}
            if confusion is not None:
                entry["confusion_matrix"] = {"test": confusion.tolist()}
    return entry


def baseline_key(dataset_fingerprint, folds, task_type):
    """What a baseline document must match to be kept: its format, model, grid, dataset fingerprint and split."""
    return {"format": BASELINE_FORMAT, "task_type": task_type, "model": BASELINE_MODELS[task_type]["name"],
            "grid": list(BASELINE_MODELS[task_type]["grid"]), "max_training_clips": MAX_TRAINING_CLIPS,
            "dataset_fingerprint": dataset_fingerprint,
            "folds": [{key: fold[key] for key in ("fold", "train_items", "val_items", "test_items")}
                      for fold in folds]}


def compute_baseline(features_folder, dataset, folds, task_type, dataset_fingerprint):
    """The baseline document of a dataset's folds (folds.json's list) for task_type: baseline_key(...), about,
    per_fold (each fold's choice, the validation score of every value of the grid, metrics per split, test
    predictions) and seconds."""
    from threadpoolctl import threadpool_limits  # scikit-learn's own dependency
    started = time.monotonic()
    items = sorted({item for fold in folds for split in SPLITS for item in fold[f"{split}_items"]})
    table = clip_table(features_folder, dataset, items)
    target = table[items[0]][1]
    classes = target.shape[1] if target.ndim == 2 else None
    with threadpool_limits(1):  # one BLAS thread: a demo fit 15.5 s -> 0.14 s on the loaded 2-core machine
        entries = [baseline_fold(table, fold, task_type, classes) for fold in folds]
    return {**baseline_key(dataset_fingerprint, folds, task_type), "about": describe(task_type),
            "per_fold": entries, "seconds": round(time.monotonic() - started, 3)}


def task_types_of(plan):
    """The task types of a plan's selected instances and searches, in order."""
    return list(dict.fromkeys([planned.parameters["task_type"] for planned in plan.instances] +
                              [planned.task_type for planned in plan.searches]))


def ensure_baselines(plan, say=print):
    """Write the baseline of every task type of the plan (Layout.baseline), unless the file there already holds the
    one of this dataset and split; says one line each. A baseline that cannot be computed (e.g. a fold whose
    training clips hold one class) is said in one warning line and stops nothing: it is a yardstick, no result."""
    for task_type in task_types_of(plan):
        path = plan.layout.baseline(task_type)
        key = baseline_key(plan.identity["dataset_fingerprint"], plan.folds, task_type)
        kept = read_if_readable(path)  # none yet, or damaged: computed (again) below
        if isinstance(kept, dict) and {name: kept.get(name) for name in key} == to_jsonable(key):
            continue
        try:
            document = compute_baseline(plan.features_folder, plan.layout.dataset, plan.folds, task_type,
                                        plan.identity["dataset_fingerprint"])
        except (ValueError, MemoryError) as error:
            say(f"xval: WARNING: no baseline for {task_type} ({error}); the instances are not compared with one")
            continue
        plan.layout.results.mkdir(exist_ok=True)
        atomic_write_json(path, document)
        say(f"xval: baseline ({BASELINE_MODELS[task_type]['name']} on each clip's pooled features, "
            f"{len(plan.folds)} folds) computed in {document['seconds']:.1f} s: {plan.layout.relative(path)}")
