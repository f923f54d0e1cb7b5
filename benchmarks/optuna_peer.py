"""The search a user would write by hand instead of xval's: Optuna over scikit-learn's cross_validate and scikeras.

    python3 benchmarks/optuna_peer.py JOB.json OUT.json

JOB.json (written by search_budget.py from xval's own files): {"features_folder", "dataset", "folds": [{"train_items",
"val_items", "test_items"}] (the experiment's folds.json), "base": the resolved parameters of one instance of the
hand grid, "space": {name: [values]} (the grid's values of each searched parameter), "trials", "seed",
"startup_trials"}. The whole dataset is stacked once (sklearn_peer.stacked); each fold becomes a pair of index
arrays: the clips of its train items (what xval fits on) and of its validation items. The objective of each trial
takes its parameters with trial.suggest_categorical over the grid's values, builds sklearn_peer's Pipeline (per-bin
standardiser + KerasClassifier of the same define_models architecture, optimizer, epochs, batch size and seed)
with them and runs one cross_validate over those folds (n_jobs 1, balanced accuracy, return_estimator); the trial's
value is the mean validation balanced accuracy (UAR) over the folds, what xval's search maximises. Each fold's
fitted estimator then scores the fold's test clips, kept as a user attribute of the trial. cross_validate has no
hook between folds, so no trial is pruned: every trial trains every fold. The study: Optuna's TPESampler(seed,
n_startup_trials), in memory, n_trials = trials.
OUT.json: {"trials": [{"number", "params", "val_scores", "test_scores", "fit_time"}], "best": {"number", "params",
"val_mean", "test_mean"}, "fit": fit_time summed over every trial and fold, "folds_trained": trials x folds}.
"""
import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the project's modules, however this is started
os.environ.setdefault("KERAS_BACKEND", "tensorflow")  # read once, when keras is first imported

import numpy as np  # noqa: E402
import optuna  # noqa: E402
from sklearn.metrics import balanced_accuracy_score  # noqa: E402
from sklearn.model_selection import cross_validate  # noqa: E402

import sklearn_peer  # noqa: E402  (benchmarks/, this script's folder, is on sys.path)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("job", help="JOB.json: folds, base parameters, space, trials (see above)")
    parser.add_argument("out", help="OUT.json: every trial's scores and the best trial")
    args = parser.parse_args()
    with open(args.job, encoding="utf-8") as handle:
        job = json.load(handle)
    x, y, rows = sklearn_peer.stacked(job)
    splits = [(np.concatenate([rows[item] for item in fold["train_items"]]),
               np.concatenate([rows[item] for item in fold["val_items"]])) for fold in job["folds"]]
    tests = [np.concatenate([rows[item] for item in fold["test_items"]]) for fold in job["folds"]]

    def objective(trial):
        parameters = dict(job["base"], **{name: trial.suggest_categorical(name, values)
                                          for name, values in job["space"].items()})
        result = cross_validate(sklearn_peer.estimator(parameters), x, y, cv=splits, scoring="balanced_accuracy",
                                return_estimator=True, error_score="raise")
        trial.set_user_attr("val_scores", result["test_score"].tolist())  # cross_validate's "test" = our validation
        trial.set_user_attr("test_scores", [float(balanced_accuracy_score(y[test], fitted.predict(x[test])))
                                            for fitted, test in zip(result["estimator"], tests)])
        trial.set_user_attr("fit_time", float(result["fit_time"].sum()))
        return float(result["test_score"].mean())

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(
        seed=job["seed"], n_startup_trials=job["startup_trials"]))
    study.optimize(objective, n_trials=job["trials"])
    trials = [{"number": t.number, "params": t.params, **{key: t.user_attrs[key] for key in
                                                          ("val_scores", "test_scores", "fit_time")}}
              for t in study.trials]
    best = study.best_trial
    with open(args.out, "w", encoding="utf-8") as handle:
        json.dump({"trials": trials, "best": {"number": best.number, "params": best.params, "val_mean": best.value,
                                              "test_mean": float(np.mean(best.user_attrs["test_scores"]))},
                   "fit": sum(t["fit_time"] for t in trials), "folds_trained": len(trials) * len(splits)}, handle)


if __name__ == "__main__":
    main()
