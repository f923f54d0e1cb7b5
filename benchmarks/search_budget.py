"""Search: xval's search with pruning against a hand grid of the same points, and against Optuna over cross_validate.

    python3 benchmarks/search_budget.py WORKDIR OUT.json [--smoke]

On the demo corpus, EXAMPLE_model x 4 actor folds x 5 epochs (early stopping off), one CPU worker (DEVICES -1: every
core for each fold), three whole processes timed from outside, one after the other, each into its own folder:
1. the hand grid: a routine whose instances are every point of learning_rate x regularization_lambda (GRID: 4 x 4
   = 16 instances, 64 fold trainings);
2. xval's search over the same points, written as choice(...) of the grid's values, TPE sampler and median pruner
   (search_startup_trials = STARTUP), in a fresh experiment folder (the same folds: folds.json is made from the
   same data and [folds] settings, which is checked). Choices rather than continuous ranges, so that "the search
   reaches the grid's best" is exact: a trial on a grid point trains the same folds with the same parameters,
   seed and thread count as the grid's instance and gets the same numbers to the last bit (checked too: every
   fold the search trained is compared with the grid's fold of the same point); a continuous search would be
   compared with a maximum over 16 noisy points by its own luck. search_trials is set from the budget: the
   target is the grid's best mean validation UAR in at most TARGET_SHARE of the grid's fold trainings; the
   STARTUP trials run every fold (the pruner waits for them), and a later trial is expected to cost (1 + K) / 2
   folds (the median pruner stops about half the trials after their first fold), so trials = STARTUP +
   floor((TARGET_SHARE x G x K - STARTUP x K) / ((1 + K) / 2)): 12 for 4 x 4 points and 4 folds (without any
   pruning those 12 would cost 48 fold trainings, 75 %);
3. the same search written by hand the way a user would (benchmarks/optuna_peer.py: Optuna's TPE over
   cross_validate of sklearn_peer's scikeras Pipeline on the same folds, model, parameters and epochs, the same
   number of trials; no pruning, cross_validate has no hook between folds).
Fold trainings are counted from xval's records (fold result files, checked against the launch record's fold_runs);
the best of each side is its best mean validation balanced accuracy (UAR) over the folds, among complete instances
or trials, and that one's own test mean (optimistic: chosen on validation items that are other folds' test items;
xval's summary also gives the selection-aware test UAR, reported beside it). One repetition: the walls are single
measurements. About 23 minutes on the 2-core machine it was written on, whose 5-epoch demo fold takes 8.6 s
(about 12 minutes where a fold takes the README's 4.8 s); --smoke about a minute.
"""
import itertools
import json
import math
import sys
from importlib import metadata

import common

# 'metric' of the rows and figures: balanced accuracy, UAR
METRIC = "balanced_accuracy"
MODEL = ['task_type = "classification"', 'architecture = "EXAMPLE_model"', 'early_stopping = False']
FULL = {"grid": {"learning_rate": (0.0003, 0.001, 0.003, 0.01), "regularization_lambda": (0.0, 0.0001, 0.001, 0.01)},
        "folds": 4, "epochs": 5, "startup": 4, "seed": 0}
SMOKE = {"grid": {"learning_rate": (0.001, 0.01), "regularization_lambda": (0.0, 0.01)}, "folds": 2, "epochs": 1,
         "startup": 1, "seed": 0}
TARGET_SHARE = 0.6
SEARCH_KEY = 1  # trial t is instance SEARCH_KEY + t
ROUTINE = """import xval_instance
xval_instance.run_routine(description="benchmark", gpu_ID=-1, dataset={dataset!r}, num_experiment={number},
                          num_folds={folds}, experiment_folder={folder!r}, overwrite_results=False, debug_mode=False,
                          experiment_dict={instances!r})
"""


def points(size):
    """Every point of the grid, {name: value}, in the order of the grid's instances (1, 2, ...)."""
    names = list(size["grid"])
    return [dict(zip(names, values)) for values in itertools.product(*size["grid"].values())]


def trials_for(size):
    """search_trials from the budget (see the module's docstring)."""
    grid_folds, folds, startup = len(points(size)) * size["folds"], size["folds"], size["startup"]
    return startup + max(1, math.floor((TARGET_SHARE * grid_folds - startup * folds) / ((1 + folds) / 2)))


def grid_dict(size):
    """The hand grid's experiment_dict: instance i is the i-th point."""
    return {i: MODEL + [f'comment_1 = "{", ".join(f"{k} {v}" for k, v in point.items())}"', 'comment_2 = "grid"',
                        f"num_epochs = {size['epochs']}"] + [f"{k} = {v!r}" for k, v in point.items()]
            for i, point in enumerate(points(size), 1)}


def search_dict(size, trials):
    """The search's experiment_dict: one entry, choice(...) of the grid's values, TPE and the median pruner."""
    return {SEARCH_KEY: MODEL + ['comment_1 = "search"', 'comment_2 = "tpe, median pruner"',
                                 f"num_epochs = {size['epochs']}"]
            + [f"{name} = choice({', '.join(map(repr, values))})" for name, values in size["grid"].items()]
            + [f"search_trials = {trials}", 'search_sampler = "tpe"', f"search_seed = {size['seed']}",
               'search_pruner = "median"', f"search_startup_trials = {size['startup']}"]}


def run_routine(ws, folder, number, folds, instances):
    """A routine of `instances` run as a whole process (one CPU worker) into folder/experiment_{number}: its wall
    time, launch record, instance results {id: document} and fold results {(id, fold): document}."""
    script = folder / f"routine_{number}.py"
    script.write_text(ROUTINE.format(dataset=common.DATASET, number=number, folds=folds, folder=str(folder),
                                     instances=instances), encoding="utf-8")
    measured = common.run([sys.executable, str(script)], common.environment(ws), script.with_suffix(".log"))
    return read_experiment(folder / f"experiment_{number}", number, measured["seconds"])


def read_experiment(experiment, number, wall):
    """What a routine left in experiment (experiment_{number}): its wall time, launch record, instance results
    {id: document}, fold results {(id, fold): document} and summary JSON."""
    launch = json.loads(sorted((experiment / "logs").glob("launch_*.json"))[-1].read_text(encoding="utf-8"))
    results = {}
    for path in (experiment / "results").glob(f"results_{common.DATASET}_exp{number}_run*.json"):
        document = json.loads(path.read_text(encoding="utf-8"))
        results[document["instance"]] = document
    fold_results = {}
    for path in (experiment / "results" / "folds").glob("*.json"):
        instance = int(path.stem.split("_run")[1].split("_fold")[0])
        document = json.loads(path.read_text(encoding="utf-8"))
        fold_results[(instance, document["fold"])] = document
    summary = sorted(experiment.glob("*_exp*_summary.json"))
    return {"wall": wall, "launch": launch, "results": results, "folds": fold_results,
            "folder": experiment, "summary": json.loads(summary[-1].read_text(encoding="utf-8")) if summary else {}}


def mean_of(document, split):
    """An instance's mean UAR over its folds on split (its results' summary)."""
    return document["summary"][split][METRIC]["mean"]


def best_of(documents):
    """(instance id, mean validation UAR, its test mean) of the complete instance with the best mean validation
    UAR (the lowest id among equals), or (None, nan, nan)."""
    complete = sorted((i, d) for i, d in documents.items() if d["status"] == "complete")
    if not complete:
        return None, math.nan, math.nan
    instance, document = max(complete, key=lambda pair: (mean_of(pair[1], "val"), -pair[0]))
    return instance, mean_of(document, "val"), mean_of(document, "test")


def selection_aware(summary, search_key=None):
    """xval's selection-aware test UAR (mean over folds) from a routine's summary JSON, or nan."""
    part = summary.get("searches", {}).get(str(search_key), {}).get("summary") if search_key is not None else \
        summary.get("task_types", {}).get("classification")
    return (part or {}).get("selection_aware_test", {}).get("mean", math.nan)


def finite(value):
    """value with every nan (a side without a complete instance, a summary without the figure) made None."""
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [finite(item) for item in value]
    return None if isinstance(value, float) and math.isnan(value) else value


def key_of(point):
    return json.dumps(point, sort_keys=True)


def search_figures(search, grid, size, grid_best_val):
    """What the search did: its trials by status, the distinct points it visited, the fold trainings it had spent
    when a complete trial first reached grid_best_val, and how many of its folds equal the grid's fold of the same
    point (validation and test UAR, to the bit)."""
    trials = {d["search"]["trial"]: d for d in search["results"].values() if d.get("search")}
    statuses = {status: sum(d["status"] == status for d in trials.values()) for status in
                ("complete", "pruned", "failed", "repeat")}
    spent, reached_at, seen, repeated, repeated_folds = 0, None, set(), 0, 0
    for number in sorted(trials):
        trained = sum(1 for (instance, _) in search["folds"] if instance == SEARCH_KEY + number)
        spent += trained
        document = trials[number]
        point = key_of(document["search"]["params"])
        if point in seen:  # the sampler proposed a point an earlier trial had: the same folds trained again
            repeated, repeated_folds = repeated + 1, repeated_folds + trained
        seen.add(point)
        if reached_at is None and document["status"] == "complete" and mean_of(document, "val") >= grid_best_val:
            reached_at = spent
    grid_instance = {key_of(point): i for i, point in enumerate(points(size), 1)}
    same = compared = 0
    for (instance, fold), result in search["folds"].items():
        params = trials[instance - SEARCH_KEY]["search"]["params"]
        other = grid["folds"].get((grid_instance.get(key_of(params)), fold))
        if other is not None:
            compared += 1
            same += all(result["metrics"][split][METRIC] == other["metrics"][split][METRIC]
                        for split in ("val", "test"))
    pruned_after = [d.get("pruned_after_fold") for d in trials.values() if d["status"] == "pruned"]
    return {"trials": len(trials), "statuses": statuses,
            "distinct_points": len({key_of(d["search"]["params"]) for d in trials.values()}),
            "pruned_after_fold": {str(fold): pruned_after.count(fold) for fold in sorted(set(pruned_after), key=str)},
            "folds_when_reached": reached_at, "folds_equal_to_grid": same, "folds_compared_with_grid": compared,
            "repeated_trials": repeated, "repeated_folds": repeated_folds}


def peer_equal_to_grid(peer, grid, size):
    """How many of the peer's trials got the grid's instance's mean validation and test UAR at the same point
    (to 1e-9: the same fits; they differ where xval's best epoch by val_loss is not the last one)."""
    grid_instance = {key_of(point): i for i, point in enumerate(points(size), 1)}
    equal = 0
    for trial in peer["trials"]:
        document = grid["results"][grid_instance[key_of(trial["params"])]]
        equal += all(abs(sum(scores) / len(scores) - mean_of(document, split)) < 1e-9
                     for scores, split in ((trial["val_scores"], "val"), (trial["test_scores"], "test")))
    return equal


def run_peer(ws, folder, grid, size, trials):
    """optuna_peer.py as a whole process, its job written from the grid's folds.json and instance 1's parameters."""
    job, out = folder / "peer_job.json", folder / "peer_out.json"
    common.write_json(job, {"features_folder": str(ws["features"]), "dataset": common.DATASET,
                            "folds": json.loads((grid["folder"] / "folds.json").read_text(encoding="utf-8"))["folds"],
                            "base": grid["results"][1]["parameters"], "space": {k: list(v) for k, v in
                                                                                size["grid"].items()},
                            "trials": trials, "seed": size["seed"], "startup_trials": size["startup"]})
    measured = common.run([sys.executable, str(common.BENCHMARKS / "optuna_peer.py"), str(job), str(out)],
                          dict(common.environment(ws), KERAS_BACKEND="tensorflow"), folder / "peer.log")
    return {"wall": measured["seconds"], **json.loads(out.read_text(encoding="utf-8"))}


def check(grid, search, size, trials):
    """RuntimeError unless the runs did what they were asked: every grid instance complete, the search's trials all
    recorded, both experiments on the same folds, fold result files matching the launch records' fold_runs."""
    problems = []
    if len(grid["results"]) != len(points(size)) or any(d["status"] != "complete" for d in grid["results"].values()):
        problems.append(f"grid: {len(grid['results'])} instances, statuses "
                        f"{sorted({d['status'] for d in grid['results'].values()})}")
    if len(search["results"]) != trials:
        problems.append(f"search: {len(search['results'])} trial results of {trials}")
    for name, run in (("grid", grid), ("search", search)):
        if len(run["launch"]["fold_runs"]) != len(run["folds"]):
            problems.append(f"{name}: {len(run['launch']['fold_runs'])} fold_runs, {len(run['folds'])} fold results")
    folds = [json.loads((run["folder"] / "folds.json").read_text(encoding="utf-8"))["folds"] for run in (grid, search)]
    if folds[0] != folds[1]:
        problems.append("the grid's and the search's folds.json differ")
    if problems:
        raise RuntimeError("; ".join(problems) + f" (see {grid['folder'].parent})")


def main():
    """Grid, search, peer; then the table rows and figures."""
    args, ws, folder = common.start("search_budget", __doc__.splitlines()[0])
    size = SMOKE if args.smoke else FULL
    trials, folds = trials_for(size), size["folds"]
    grid = run_routine(ws, folder, 1, folds, grid_dict(size))
    search = run_routine(ws, folder, 2, folds, search_dict(size, trials))
    check(grid, search, size, trials)
    peer = run_peer(ws, folder, grid, size, trials)
    common.write_json(args.out, report(grid, search, peer, size))


def report(grid, search, peer, size):
    """{'rows', 'peer_versions', 'figures'} of the three runs."""
    trials, folds, points_n = trials_for(size), size["folds"], len(points(size))
    grid_folds, search_folds, peer_folds = len(grid["folds"]), len(search["folds"]), peer["folds_trained"]
    grid_best, grid_val, grid_test = best_of(grid["results"])
    search_best, search_val, search_test = best_of(search["results"])
    budget = TARGET_SHARE * grid_folds
    share = search_folds / grid_folds
    reached = search_val >= grid_val
    done = search_figures(search, grid, size, grid_val)
    peer_equal = peer_equal_to_grid(peer, grid, size)
    best_params = {"grid": points(size)[grid_best - 1],
                   "search": search["results"][search_best]["search"]["params"] if search_best else None,
                   "peer": peer["best"]["params"]}
    walls = {"grid": grid["wall"], "search": search["wall"], "peer": peer["wall"]}
    fold_counts = {"grid": grid_folds, "search": search_folds, "peer": peer_folds}
    best_val = {"grid": grid_val, "search": search_val, "peer": peer["best"]["val_mean"]}
    best_test = {"grid": grid_test, "search": search_test, "peer": peer["best"]["test_mean"]}
    aware = {"grid": selection_aware(grid["summary"]), "search": selection_aware(search["summary"], SEARCH_KEY)}
    space = " x ".join(f"{name} {{{', '.join(map(str, values))}}}" for name, values in size["grid"].items())

    def shown(params):
        return ", ".join(f"{name} {value:g}" for name, value in params.items()) if params else "none"

    statuses = ", ".join(f"{n} {status}" for status, n in done["statuses"].items() if n)
    pruned = ", ".join(f"{n} after fold {fold}" for fold, n in done["pruned_after_fold"].items()) or "none"
    rows = [common.row(f"EXAMPLE_model, {space}; {folds} actor folds x {size['epochs']} epochs, demo corpus, 1 CPU "
                       f"worker; one run of each, whole processes", ""),
            common.row(f"hand grid: {points_n} instances x {folds} folds: wall; fold trainings",
                       f"{grid['wall']:.1f} s; {grid_folds}"),
            common.row("  its best mean validation UAR (instance, point); that instance's test mean",
                       f"{grid_val:.4f} ({grid_best}: {shown(best_params['grid'])}); {grid_test:.4f}"),
            common.row(f"xval search, TPE + median pruner ({size['startup']} startup trials), "
                       f"search_trials = {trials}: wall; fold trainings", f"{search['wall']:.1f} s; {search_folds}"),
            common.row("  its trials; pruned; distinct points visited",
                       f"{statuses}; {pruned}; {done['distinct_points']} of {points_n}"),
            common.row("  its best complete trial's mean validation UAR (point); its test mean",
                       f"{search_val:.4f} ({shown(best_params['search'])}); {search_test:.4f}"),
            common.row("  fold trainings when a complete trial first reached the grid's best validation UAR",
                       "never" if done["folds_when_reached"] is None else
                       f"{done['folds_when_reached']} ({done['folds_when_reached'] / grid_folds:.1%} of the grid's)"),
            common.row("  trials on a point an earlier trial had visited; their fold trainings",
                       f"{done['repeated_trials']}; {done['repeated_folds']}"),
            common.row("  its folds on grid points equal to the grid's (validation and test UAR, to the bit)",
                       f"{done['folds_equal_to_grid']} of {done['folds_compared_with_grid']}"),
            common.row("search fold trainings / grid's", f"{share:.1%} ({search_folds} / {grid_folds})",
                       f"<= {TARGET_SHARE:.0%}", share <= TARGET_SHARE),
            common.row("search's best validation UAR - grid's best", f"{search_val - grid_val:+.4f}", ">= 0", reached),
            common.row(f"search reaches the grid's best validation UAR in <= {TARGET_SHARE:.0%} of its fold trainings",
                       f"best {'reached' if reached else 'NOT reached'}; {search_folds} fold trainings in all",
                       f"best >= grid's in <= {budget:.1f}",
                       reached and share <= TARGET_SHARE),
            common.row(f"peer: Optuna TPE over cross_validate + scikeras, {trials} trials, no pruning: wall; fold "
                       "trainings", f"{peer['wall']:.1f} s; {peer_folds}"),
            common.row("  its best trial's mean validation UAR (point); its test mean",
                       f"{peer['best']['val_mean']:.4f} ({shown(best_params['peer'])}); "
                       f"{peer['best']['test_mean']:.4f}"),
            common.row("  its trials with the grid instance's validation and test UAR at their point (to 1e-9)",
                       f"{peer_equal} of {len(peer['trials'])}"),
            common.row("wall: grid / xval search / peer (s)",
                       f"{grid['wall']:.1f} / {search['wall']:.1f} / {peer['wall']:.1f}"),
            common.row("wall per fold training: grid / xval search / peer (s)",
                       " / ".join(f"{walls[k] / fold_counts[k]:.2f}" for k in walls)),
            common.row("ratio of walls: xval search / grid; xval search / peer",
                       f"{search['wall'] / grid['wall']:.3f}; {search['wall'] / peer['wall']:.3f}"),
            common.row("  xval's spreadsheet and plots rebuilt after each instance or trial (s): grid / search",
                       f"{grid['launch']['phases'].get('spreadsheet', 0.0):.1f} / "
                       f"{search['launch']['phases'].get('spreadsheet', 0.0):.1f}"),
            common.row("xval's selection-aware test UAR: grid / search",
                       f"{aware['grid']:.4f} / {aware['search']:.4f}")]
    versions = {name: metadata.version(name) for name in ("optuna", "scikeras", "scikit-learn")}
    return {"rows": rows, "peer_versions": versions, "figures": finite({
        "wall": walls, "fold_trainings": fold_counts, "best_val": best_val, "best_test": best_test,
        "best_params": best_params, "selection_aware_test": aware, "share": share, "target_share": TARGET_SHARE,
        "reached": reached, "met": reached and share <= TARGET_SHARE, "search_trials": trials, "grid_points": points_n,
        "folds": folds, "epochs": size["epochs"], "startup_trials": size["startup"], "search": done,
        "grid_instances": {str(i): {"params": points(size)[i - 1], "val": mean_of(d, "val"),
                                    "test": mean_of(d, "test")} for i, d in sorted(grid["results"].items())},
        "search_trials_detail": {str(d["search"]["trial"]): {
            "params": d["search"]["params"], "status": d["status"],
            "folds": sum(1 for (i, _) in search["folds"] if i == inst),
            "val": [f["metrics"]["val"][METRIC] for f in d["folds"]]} for inst, d in sorted(search["results"].items())},
        "phases": {"grid": grid["launch"]["phases"], "search": search["launch"]["phases"]},
        "peer_trials": peer["trials"], "peer_fit": peer["fit"], "peer_equal_to_grid": peer_equal})}


if __name__ == "__main__":
    main()
