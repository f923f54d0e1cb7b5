"""Realistic result files of an experiment for the spreadsheet tests: random but valid values, fixed seeds.

build_experiment(root) writes experiment_1/ with
  1-3  complete classification instances (different learning rates and dropout; 2 is the best on test, 3 looks
       best on validation)
  4    a failed classification instance (no folds, an error)
  5    an incomplete classification instance (3 of 5 folds)
  6-7  complete regression instances on another dataset
plus results/parameters/*.txt and a results/folds/folds.json, as the engine leaves them.
"""
import hashlib
import json
from pathlib import Path

import numpy as np

CLASS_NAMES = ["neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised"]
ACTORS = [f"{number:02d}" for number in range(1, 25)]
FOLDS = 5
EXPERIMENT = 1
HIGHER_IS_BETTER = {"accuracy", "balanced_accuracy", "f1_macro", "precision_macro", "recall_macro", "r2",
                    "pearson_r", "ccc"}
CLASSIFICATION = ("loss", "accuracy", "balanced_accuracy", "f1_macro", "precision_macro", "recall_macro")
REGRESSION = ("loss", "rmse", "mae", "r2", "pearson_r", "ccc")

BASE_PARAMETERS = {"batch_size": 32, "num_epochs": 8, "optimizer": "adam", "early_stopping": True, "patience": 3,
                   "regularization_lambda": 0.0, "seed": 1, "conv_filters": [16, 32], "pooling": None}
# instance: (dataset, task type, status, quality offset, parameter overrides, comments)
INSTANCES = {
    1: ("ravdess_demo", "classification", "complete", 0.00, {"learning_rate": 0.001, "dropout": 0.2},
        ("baseline", "small CNN")),
    2: ("ravdess_demo", "classification", "complete", 0.14, {"learning_rate": 0.0005, "dropout": 0.3},
        ("lower learning rate", "more dropout")),
    3: ("ravdess_demo", "classification", "complete", 0.13, {"learning_rate": 0.002, "dropout": 0.3},
        ("higher learning rate", "")),
    4: ("ravdess_demo", "classification", "failed", 0.0, {"learning_rate": 0.01, "dropout": 0.2,
                                                          "conv_filters": [64, 128, 256]},
        ("big model", "")),
    5: ("ravdess_demo", "classification", "incomplete", 0.30, {"learning_rate": 0.001, "dropout": 0.5},
        ("heavy dropout", "interrupted")),
    6: ("ravdess_intensity", "regression", "complete", 0.00, {"learning_rate": 0.001, "dropout": 0.2},
        ("intensity baseline", "")),
    7: ("ravdess_intensity", "regression", "complete", 0.08, {"learning_rate": 0.0005, "dropout": 0.2},
        ("intensity, lower lr", "")),
}
# validation-only advantage: instance 3 looks best on validation while 2 is best on test, the case where choosing
# on test and choosing on validation disagree (regression: 6 has the lower validation error, 7 the lower test error)
VALIDATION_BONUS = {3: 0.05, 6: 0.12}
TIMING_SHARES = {"data": 0.04, "build": 0.02, "fit": 0.85, "save": 0.03, "evaluate": 0.05}  # of a fold's seconds
FAILED_ERROR = "ResourceExhaustedError: OOM when allocating tensor with shape [32,256,128,64]"


def fold_items(fold_number):
    """Train, validation and test actors of a fold (every fifth actor is tested in one fold)."""
    test = ACTORS[fold_number - 1::FOLDS]
    rest = [actor for actor in ACTORS if actor not in test]
    return rest[3:], rest[:3], test


def metric_values(rng, task_type, fold_effect, quality):
    """{metric: value} of one split of one fold; better quality, better values."""
    if task_type == "classification":
        score = float(np.clip(0.45 + fold_effect + quality + rng.normal(0, 0.015), 0.05, 0.99))
        values = {metric: float(np.clip(score + rng.normal(0, 0.02), 0, 1)) for metric in CLASSIFICATION[1:]}
        values["loss"] = float(2.2 - 2 * score + rng.normal(0, 0.05))
        return values
    error = float(0.55 - fold_effect - quality + rng.normal(0, 0.01))
    return {"loss": error ** 2, "rmse": error, "mae": 0.8 * error + rng.normal(0, 0.01),
            "r2": 1 - error, "pearson_r": 0.9 - error / 2, "ccc": 0.85 - error / 2}


def history(rng, task_type, epochs):
    """Per-epoch curves as Keras records them."""
    decay = np.exp(-np.arange(epochs) / 3)
    noise = lambda: rng.normal(0, 0.03, epochs)  # noqa: E731
    if task_type == "classification":
        return {"loss": list(1.0 + decay + noise()), "val_loss": list(1.2 + decay + noise()),
                "accuracy": list(0.8 - 0.5 * decay + noise()), "val_accuracy": list(0.7 - 0.5 * decay + noise())}
    return {"loss": list(0.2 + decay + noise()), "val_loss": list(0.3 + decay + noise()),
            "mae": list(0.3 + decay / 2 + noise()), "val_mae": list(0.4 + decay / 2 + noise()),
            "rmse": list(0.4 + decay / 2 + noise()), "val_rmse": list(0.5 + decay / 2 + noise())}


def make_fold(rng, fold_number, task_type, quality, fold_effects, validation_bonus=0.0):
    """One completed fold with metrics, history, timings, predictions and (classification) a confusion matrix."""
    train_items, val_items, test_items = fold_items(fold_number)
    epochs = int(rng.integers(4, 9))
    fold = {"fold": fold_number, "train_items": train_items, "val_items": val_items, "test_items": test_items,
            "metrics": {split: metric_values(rng, task_type, fold_effects[fold_number - 1] + shift, quality)
                        for split, shift in (("train", 0.15), ("val", 0.03 + validation_bonus), ("test", 0.0))},
            "history": history(rng, task_type, epochs), "best_epoch": int(rng.integers(1, epochs + 1)),
            "epochs_run": epochs, "seconds": float(rng.uniform(5, 40)),
            "model_file": f"models/model_exp{EXPERIMENT}_fold{fold_number}.hdf5"}
    # where the fold's time went, as training.py records it: shares of the total, so no random number is drawn
    fold["timings"] = {step: round(share * fold["seconds"], 3) for step, share in TIMING_SHARES.items()}
    clips = 48 * len(test_items)
    if task_type == "classification":
        truth = rng.integers(0, len(CLASS_NAMES), clips)
        predicted = np.where(rng.random(clips) < 0.5 + quality, truth, rng.integers(0, len(CLASS_NAMES), clips))
        matrix = np.zeros((len(CLASS_NAMES),) * 2, dtype=int)
        np.add.at(matrix, (truth, predicted), 1)
        fold["confusion_matrix"] = {"test": matrix.tolist()}
        fold["predictions"] = {"test": {"item": [test_items[i % len(test_items)] for i in range(clips)],
                                        "y_true": truth.tolist(), "y_pred": predicted.tolist()}}
    else:
        truth = rng.integers(0, 2, clips).astype(float)
        fold["predictions"] = {"test": {"item": [test_items[i % len(test_items)] for i in range(clips)],
                                        "y_true": truth.tolist(), "y_pred": (truth + rng.normal(0, 0.4, clips))
                                        .tolist()}}
    return fold


def summarise(folds, task_type):
    """{split: {metric: {mean, std}}} over folds, std with ddof=1, null where undefined."""
    metrics = CLASSIFICATION if task_type == "classification" else REGRESSION
    summary = {}
    for split in ("train", "val", "test"):
        summary[split] = {}
        for metric in metrics:
            values = [fold["metrics"][split][metric] for fold in folds if fold["metrics"][split][metric] is not None]
            summary[split][metric] = {"mean": float(np.mean(values)) if values else None,
                                      "std": float(np.std(values, ddof=1)) if len(values) > 1 else None}
    return summary


def make_instance(instance_id, seed=0, number=None):
    """The result JSON of one instance of INSTANCES, numbered `number` (default: its key in INSTANCES)."""
    dataset, task_type, status, quality, overrides, (comment_1, comment_2) = INSTANCES[instance_id]
    rng = np.random.default_rng(seed * 100 + instance_id)
    fold_effects = np.random.default_rng(seed).normal(0, 0.06, FOLDS)  # the same folds are hard for everyone
    done = {"complete": FOLDS, "incomplete": 3, "failed": 0}[status]
    folds = [make_fold(rng, number, task_type, quality, fold_effects, VALIDATION_BONUS.get(instance_id, 0.0))
             for number in range(1, done + 1)]
    if task_type == "regression" and folds:
        folds[0]["metrics"]["val"]["pearson_r"] = None  # undefined (constant predictions) happens
    parameters = {"comment_1": comment_1, "comment_2": comment_2, "task_type": task_type,
                  "architecture": "EXAMPLE_model", **BASE_PARAMETERS, **overrides}
    number = instance_id if number is None else number
    result = {"experiment": EXPERIMENT, "instance": number, "dataset": dataset, "task_type": task_type,
              "status": status, "error": FAILED_ERROR if status == "failed" else None,
              "log_files": [f"logs/{dataset}_exp{EXPERIMENT}_run{number}.log"],
              "parameter_hash": hashlib.sha256(json.dumps(parameters, sort_keys=True).encode()).hexdigest(),
              "class_names": CLASS_NAMES if task_type == "classification" else None,
              "parameter_strings": [f"{name} = {value!r}" for name, value in overrides.items()],
              "parameters": parameters,
              "parameters_file": f"results/parameters/parameters_{dataset}_exp{EXPERIMENT}_run{number}.txt",
              "folds": folds}
    if folds:
        result["summary"] = summarise(folds, task_type)
    return result


def write_instance(experiment_folder, result):
    """Write a result JSON and its parameters txt where the engine puts them; returns the JSON path."""
    name = f"{result['dataset']}_exp{result['experiment']}_run{result['instance']}"
    results = Path(experiment_folder) / "results"
    (results / "parameters").mkdir(parents=True, exist_ok=True)
    (Path(experiment_folder) / result["parameters_file"]).write_text(
        "\n".join(f"{key} = {value!r}" for key, value in result["parameters"].items()) + "\n", encoding="utf-8")
    path = results / f"results_{name}.json"
    path.write_text(json.dumps(result, indent=1), encoding="utf-8")
    return path


def build_experiment(root, instance_ids=tuple(INSTANCES), seed=0):
    """experiment_1/ under root with the given instances, a folds.json and a logs/ folder; returns its path."""
    folder = Path(root) / f"experiment_{EXPERIMENT}"
    (folder / "results" / "folds").mkdir(parents=True, exist_ok=True)
    (folder / "logs").mkdir(exist_ok=True)
    (folder / "results" / "folds" / "folds.json").write_text(
        json.dumps({str(number): fold_items(number)[2] for number in range(1, FOLDS + 1)}), encoding="utf-8")
    for instance_id in instance_ids:
        write_instance(folder, make_instance(instance_id, seed))
    return folder
