"""Collect: an experiment's results read back, each file checked once, and what they say.

The engine writes results/results_{dataset}_exp{N}_run{R}.json as folds land (xval_instance.collect_instance, from
the fold results of training.py). load_instances() reads them back: damage() checks each file once against
RESULT_SCHEMA, and everything after trusts what it gets. routine_summary() derives the routine's honest numbers from
the fold results alone (the instance chosen on validation, the selection-aware test estimate), significance() the
paired tests against the chosen instance; write_routine_summary() stores them as {dataset}_exp{N}_summary.json for
the console, use_model.py and the spreadsheet (results_to_excel.py, the view of all this).
"""
import math
import re
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import scipy.stats

from foldjob import summarise_folds
from layout import RESULT_FILE_GLOB, RESULT_FILE_PATTERN, SUMMARY_GLOB, Layout
from registries import HIGHER_IS_BETTER, MAIN_METRIC, METRICS, TASK_TYPES
from utility_functions import XvalError, atomic_write_json, mean_and_std, read_json

SUMMARY_ABOUT = ("Per task type, from the complete instances' fold results: chosen_on_validation is the instance with "
                 "the best mean validation main_metric (marked best on the spreadsheet); selection_aware_test is "
                 "the mean and std over folds of the test value of the instance best on each fold's validation "
                 "items (report this for the routine); highest_test_mean is optimistic, being chosen on test.")
BASELINE_ABOUT = (" baseline: the experiment's baseline on the same folds (a yardstick, never chosen; its file is "
                  "results/baseline_*.json), with chosen_vs_baseline, a paired t-test of the chosen instance against "
                  "it on the same test folds.")
SEARCHES_ABOUT = (" searches: the same over each search's trials alone (summary), with how many trials ended in each "
                  "status (trials).")
# pruned: a search's trial its pruner stopped; repeat: a search's trial on the point of an earlier one (repeat_of)
STATUSES = ("complete", "incomplete", "failed", "pruned", "repeat")
OTHER_SPLIT = "complete, other split"  # the status shown of a complete instance trained on another split
SIGNIFICANCE_LEVEL, TEST_NAME = 0.05, "paired t-test (scipy.stats.ttest_rel)"


# ---- Reading the results: each file is checked once, by damage(); the rest trusts what it gets

def finite_number(value):
    """Whether value is a finite int or float (not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# What the engine writes. A schema is a type, a predicate, None (null), a tuple of alternatives, [item schema] for a
# list, {key: schema} for an object (a missing key counts as null) or {str: schema} for an object with any keys.
NUMBER = (finite_number, None)
FOLD_SCHEMA = {"fold": int, "metrics": ({str: {str: NUMBER}}, None), "best_epoch": (int, None),
               "epochs_run": (int, None), "seconds": NUMBER, "timings": ({str: NUMBER}, None),
               "train_items": (list, None), "val_items": (list, None), "test_items": (list, None),
               "history": ({str: [NUMBER]}, None),
               "confusion_matrix": ({"test": ([[finite_number]], None)}, None)}
RESULT_SCHEMA = {"task_type": TASK_TYPES.__contains__, "status": STATUSES.__contains__, "experiment": (int, None),
                 "dataset": (str, None), "error": (str, None), "parameters": (dict, None),
                 "parameters_file": (str, None), "parameter_hash": (str, None), "class_names": (list, None),
                 "folds": ([FOLD_SCHEMA], None), "summary": ({str: {str: {str: NUMBER}}}, None),
                 "search": ({"search": int, "trial": int, "params": dict}, None), "pruned_after_fold": (int, None),
                 "repeat_of": (int, None)}
RESULT_DEFAULTS = {"search": None, "pruned_after_fold": None, "repeat_of": None, "error": "", "parameters": {},
                   "parameters_file": "", "parameter_hash": "", "class_names": None,
                   "folds": [], "summary": {}, "speaker_independent": True, "foldable_item": None}
FOLD_DEFAULTS = {"metrics": {}, "history": {}, "confusion_matrix": {}, "timings": {}, "test_items": []}


def warn(message):
    """One warning line on stderr."""
    print(f"warning: {message}", file=sys.stderr)


def mismatch(value, schema, where=""):
    """(where, value) of the first part of value that does not fit schema (see RESULT_SCHEMA), or None."""
    if isinstance(schema, tuple):
        found = [mismatch(value, option, where) for option in schema]
        return None if None in found else max(found, key=lambda problem: len(problem[0]))  # the deepest
    if isinstance(schema, (list, dict)) and not isinstance(value, type(schema)):
        return where, value
    if isinstance(schema, list):
        parts = [(item, schema[0], f"{where}[{index}]") for index, item in enumerate(value)]
        return next(filter(None, (mismatch(*part) for part in parts)), None)
    if isinstance(schema, dict):
        parts = [(value.get(key), schema.get(key, schema.get(str)), f"{where}.{key}".lstrip("."))
                 for key in (value if str in schema else schema)]
        return next(filter(None, (mismatch(*part) for part in parts)), None)
    if isinstance(schema, type):
        return None if isinstance(value, schema) and not isinstance(value, bool) else (where, value)
    return None if (value is None if schema is None else schema(value)) else (where, value)


def within(value, bounds):
    """Whether value lies within bounds (low, high), give or take float round-off (1e-9)."""
    return bounds[0] - 1e-9 <= value <= bounds[1] + 1e-9


def damage(raw):
    """What is the first thing in a result file's JSON that is not what the engine writes ("folds[2].seconds is
    'abc'"), or None: it must fit RESULT_SCHEMA, name a plain dataset, hold metrics within their bounds, no negative
    time, best epochs within the epochs run, every fold once with its test metrics when complete, and square test
    confusion matrices with one row per class."""
    problem = mismatch(raw, RESULT_SCHEMA)
    if problem is None and re.search(r"[/\\]", raw.get("dataset") or ""):
        problem = "dataset", raw["dataset"]
    if problem is not None:
        shown = repr(problem[1]) if len(repr(problem[1])) <= 60 else repr(problem[1])[:57] + "..."
        return f"{problem[0] or 'its content'} is {shown}"
    for index, fold in enumerate(raw.get("folds") or []):
        if not isinstance(fold.get("model_file"), str):
            return f"folds[{index}].model_file is {fold.get('model_file')!r}, not the name of its model"
        best, run = fold.get("best_epoch"), fold.get("epochs_run")
        if fold.get("seconds", 0) < 0 or any(value < 0 for value in (fold.get("timings") or {}).values()):
            return f"folds[{index}] has a negative time ({fold.get('seconds')!r} s)"
        if best is not None and not 1 <= best <= (run if run is not None else best):
            return f"folds[{index}].best_epoch is {best}, outside 1 to its epochs_run ({run})"
    if raw.get("status") == "complete":
        folds = raw.get("folds") or []
        numbers = [fold.get("fold") for fold in folds]
        if not folds or len(set(numbers)) != len(numbers):
            return f"folds holds fold numbers {numbers}, not one entry per fold"
        empty = next((index for index, fold in enumerate(folds) if not (fold.get("metrics") or {}).get("test")), None)
        if empty is not None:
            return f"folds[{empty}].metrics.test is missing, although the instance is complete"
    outside = next(((f"folds[{index}].metrics.{split}.{name}", value, METRICS[name].bounds)
                    for index, fold in enumerate(raw.get("folds") or [])
                    for split, values in (fold.get("metrics") or {}).items() for name, value in values.items()
                    if name in METRICS and value is not None and not within(value, METRICS[name].bounds)), None)
    if outside:
        return f"{outside[0]} is {outside[1]!r}, outside {outside[2][0]} to {outside[2][1]}"
    matrices = [(f"folds[{index}].confusion_matrix.test", (fold.get("confusion_matrix") or {}).get("test"))
                for index, fold in enumerate(raw.get("folds") or [])]
    matrices = [(where, matrix) for where, matrix in matrices if matrix is not None]
    size = len(raw.get("class_names") or (matrices[0][1] if matrices else []))
    return next((f"{where} is not {size}x{size} (a row and a column per class)" for where, matrix in matrices
                 if not matrix or len(matrix) != size or any(len(row) != size for row in matrix)), None)


def present(fields):
    """fields without its null and empty-text values, which take their defaults."""
    return {key: value for key, value in fields.items() if value is not None and value != ""}


def disagrees(stored, computed):
    """Whether a stored summary's means differ from those computed from the folds (beyond float round-off)."""
    for split, metrics in computed.items():
        for name, stats in metrics.items():
            value = ((stored.get(split) or {}).get(name) or {}).get("mean")
            if value is not None and stats["mean"] is not None and not math.isclose(value, stats["mean"],
                                                                                    rel_tol=1e-9, abs_tol=1e-12):
                return True
    return False


def parse_instance(raw, path, experiment_folder, warn=warn):
    """The instance of a result file's JSON: a namespace of its fields, defaults filled in, folds sorted; XvalError
    naming the file and what is wrong when damage() finds something."""
    problem, name = damage(raw), RESULT_FILE_PATTERN.match(path.name)
    if problem:
        raise XvalError(f"{path} is damaged ({problem}): restore it or delete it to recompute")
    if raw.get("dataset") not in (None, name["dataset"]):
        raise XvalError(f"{path} is named for dataset '{name['dataset']}' but holds results on '{raw['dataset']}' "
                        "(renamed, or copied from another experiment?)")
    if raw.get("instance") not in (None, int(name["instance"])):
        warn(f"{path} says instance {raw['instance']!r}; using {int(name['instance'])} from its name")
    instance = SimpleNamespace(**{**RESULT_DEFAULTS, "dataset": name["dataset"], "experiment": int(name["experiment"]),
                                  **present(raw), "id": int(name["instance"]), "source": path})
    instance.folds = sorted(({**FOLD_DEFAULTS, **present(fold)} for fold in instance.folds), key=lambda f: f["fold"])
    if instance.folds:  # the means the views show come from the folds, as every comparison does: one source
        stored, instance.summary = instance.summary or {}, summarise_folds(instance.folds)
        if disagrees(stored, instance.summary):
            warn(f"{path}: its stored summary disagrees with its folds' metrics (edited by hand?): every view shows "
                 "the means of the folds")
    instance.error, instance.complete = instance.error.strip(), instance.status == "complete"
    if instance.parameters_file:
        instance.parameters_file = (Path(experiment_folder) / instance.parameters_file).resolve()
    instance.comment_1, instance.comment_2 = ("" if instance.parameters.get(key) is None else
                                              str(instance.parameters[key]) for key in ("comment_1", "comment_2"))
    return instance


def check_experiment_folder(experiment_folder):
    """XvalError unless experiment_folder is a folder with a results/ subfolder."""
    folder = Path(experiment_folder)
    if folder.exists() and not folder.is_dir():
        raise XvalError(f"{folder} is a file, not an experiment folder: pass the experiment_{{N}} folder that holds "
                        "results/")
    if not folder.is_dir():
        raise XvalError(f"experiment folder {folder} does not exist: pass an experiment_{{N}} folder")
    results = Layout(folder, None, None).results
    if not results.is_dir():
        children = sorted(child.name for child in folder.glob("experiment_*") if child.is_dir())
        hint = f"pass one of its experiment folders ({', '.join(children[:5])})" if children else \
            "run an experiment first, or pass the experiment_{N} folder that holds results/"
        raise XvalError(f"{folder} has no {results.name}/ folder: {hint}")


def experiment_number(experiment_folder):
    """N of an experiment_{N} folder (from its name, else from its single experiment_{N}_description.txt), or None
    when neither says."""
    if match := re.fullmatch(r"experiment_(\d+)", Path(experiment_folder).name):
        return int(match[1])
    numbers = {int(match[1]) for path in Path(experiment_folder).glob("experiment_*_description.txt")
               if (match := re.fullmatch(r"experiment_(\d+)_description\.txt", path.name))}
    return numbers.pop() if len(numbers) == 1 else None


def experiment_dataset(experiment_folder, instances):
    """The dataset an experiment's folds were made on: its folds.json's, else that of most of its instances (the
    lowest-numbered instance's among equals)."""
    try:
        return read_json(Layout(experiment_folder, None, None).folds)["dataset"]
    except (OSError, XvalError, KeyError, TypeError):
        names = [instance.dataset for instance in instances]
        return max(dict.fromkeys(names), key=names.count)


def load_instances(experiment_folder, said=None, quiet=False, skipped=None):
    """Every readable instance of an experiment folder, in instance order; other result files are warned about
    (each warning line also appended to the list `said` when given, for the workbook; quiet: only there) and, when
    the dict `skipped` is given, recorded there ({path: why it was skipped and the fix}). XvalError when the folder
    is not an experiment folder or holds no readable result file."""
    check_experiment_folder(experiment_folder)

    def note(message):
        if not quiet:
            warn(message)
        if said is not None:
            said.append(message)

    def skip(path, why, fix=None):
        note(f"{why}: skipped" + (f" ({fix})" if fix else ""))
        if skipped is not None:
            skipped[Path(path)] = why + (f": {fix}" if fix else "")
    results = Layout(experiment_folder, None, None).results
    paths = [path for path in results.glob(RESULT_FILE_GLOB) if path.is_file()]
    for path in paths:
        if not RESULT_FILE_PATTERN.match(path.name):
            skip(path, f"{path} is not named results_{{dataset}}_exp{{N}}_run{{R}}.json")
    experiment = experiment_number(experiment_folder)
    for path in paths:
        if (match := RESULT_FILE_PATTERN.match(path.name)) and experiment not in (None, int(match["experiment"])):
            skip(path, f"{path} belongs to experiment {int(match['experiment'])}, not to this "
                       f"experiment_{experiment} folder", "move it to its own experiment folder")
    instances = []
    for *_, path in sorted((int(match["instance"]), match["dataset"], path) for path in paths
                           if (match := RESULT_FILE_PATTERN.match(path.name))
                           and experiment in (None, int(match["experiment"]))):
        try:
            instances.append(parse_instance(read_json(path), path, experiment_folder, note))
        except XvalError as error:
            skip(path, str(error))
        except (OSError, UnicodeDecodeError) as error:
            skip(path, f"{path} cannot be read ({error})")
    if not instances:
        raise XvalError(f"no results in {results} (expected "
                        "results_{dataset}_exp{N}_run{R}.json): run at least one instance first")
    dataset = experiment_dataset(experiment_folder, instances)
    split_dataset = dataset if Layout(experiment_folder, None, None).folds.is_file() else None
    for instance in list(instances):  # one dataset per experiment: its folds.json's (without one, rivals decide)
        rivals = [other for other in instances if other.id == instance.id]
        if split_dataset is not None and instance.dataset != split_dataset:
            skip(instance.source, f"{instance.source} holds results of instance {instance.id} on dataset "
                                  f"'{instance.dataset}', but this experiment's folds are on '{dataset}'",
                 "move it to its own experiment folder")
            instances.remove(instance)
        elif len(rivals) > 1 and instance is not next((i for i in rivals if i.dataset == dataset), rivals[0]):
            skip(instance.source, f"{instance.source} holds results of instance {instance.id} on dataset "
                                  f"'{instance.dataset}', and {next(i for i in rivals if i is not instance).source} "
                                  "too", "one file per instance; move it to its own experiment folder")
            instances.remove(instance)
    for instance in instances:
        take_fold_results(instance, experiment_folder, note)
    mark_other_splits(instances, Path(experiment_folder), note)
    if not instances:
        raise XvalError(f"no readable results in {results}: restore the damaged files named above or rerun the "
                        "instances")
    return instances


def take_fold_results(instance, experiment_folder, warn=warn):
    """Every view shows what the fold results say (results/folds/: each written as its fold lands; the results JSON
    is assembled from them): a fold whose result file holds other metrics than the results JSON records (one of
    them edited by hand, or restored) is taken from the file, and said once. A missing or damaged fold file changes
    nothing here (the routine's next run names it)."""
    layout, taken = Layout(experiment_folder, instance.dataset, instance.experiment), []
    for index, fold in enumerate(instance.folds):
        path = layout.fold(instance.id, fold["fold"]).result
        try:
            stored = read_json(path) if path.is_file() else None
        except (OSError, XvalError):
            continue
        if isinstance(stored, dict) and not mismatch(stored, FOLD_SCHEMA) and stored.get("fold") == fold["fold"] \
                and stored.get("metrics") != fold.get("metrics"):
            instance.folds[index] = {**FOLD_DEFAULTS, **present(stored)}
            taken.append(str(fold["fold"]))
    if taken:
        instance.summary = summarise_folds(instance.folds)
        warn(f"{instance.source} records other metrics for fold {', '.join(taken)} than its fold results in "
             f"{layout.relative(layout.results / 'folds')}/ (one of them edited by hand, or restored?): every view "
             "shows the fold results'; the routine's next run rewrites the results JSON from them")


def split_of(folds):
    """The fold assignment of folds (a results file's, or folds.json's): ((fold, train, val, test items), ...)."""
    return tuple((fold["fold"], *(tuple(fold.get(f"{split}_items") or ()) for split in ("train", "val", "test")))
                 for fold in folds)


def mark_other_splits(instances, experiment_folder, warn=warn):
    """Instances are compared fold by fold (the choice on validation, the selection-aware estimate, the paired
    tests), so only on one split: that of folds.json (else of the lowest-numbered complete instance). A complete
    instance trained on another split is shown as OTHER_SPLIT, no longer counts as complete, and is named once; one
    that lacks some of folds.json's folds is damaged, named and removed from instances."""
    complete = [instance for instance in instances if instance.complete]
    try:
        reference = split_of(read_json(Layout(experiment_folder, None, None).folds)["folds"])
    except (OSError, XvalError, KeyError, TypeError):
        reference = split_of(complete[0].folds) if complete else None
    for instance in complete:
        if reference and set(split_of(instance.folds)) < set(reference):
            missing = sorted({fold[0] for fold in reference} - {fold["fold"] for fold in instance.folds})
            warn(f"{instance.source} is damaged (complete, but fold {', '.join(map(str, missing))} of folds.json is "
                 "missing from it): restore it or delete it to recompute; skipped")
            instances.remove(instance)
        elif split_of(instance.folds) != reference:
            instance.complete, instance.status = False, OTHER_SPLIT
            warn(f"{instance.source} was trained on another split than the experiment's folds.json: it is left out "
                 "of the comparison (the choice on validation, the selection-aware estimate, the p-values)")


# ---- What the numbers say: the routine's choice and estimate, paired tests against it

def by_task(instances):
    """{task type: its instances}, the task type of the lowest-numbered instance first."""
    tasks = dict.fromkeys(instance.task_type for instance in instances)
    return {task: [instance for instance in instances if instance.task_type == task] for task in tasks}


def metric_label(metric):
    """'balanced accuracy' for balanced_accuracy."""
    return metric.replace("_", " ")


def fold_frame(instances, split, metric):
    """Folds x complete instances: their value of metric on split in each fold (NaN where undefined)."""
    return pd.DataFrame({i.id: {fold["fold"]: fold["metrics"].get(split, {}).get(metric) for fold in i.folds}
                         for i in instances if i.complete}, dtype=float).sort_index()


def ranked_first(values, higher_is_better):
    """The key of the best defined value of {key: value}: highest or lowest, the lowest key among ties; or None."""
    defined = {key: value for key, value in values.items() if value is not None and not math.isnan(value)}
    return min(defined, key=lambda key: (-defined[key] if higher_is_better else defined[key], key), default=None)


def routine_summary(instances, task_type):
    """The honest numbers of a routine (one task type), from the complete instances' fold results alone (None
    without one): main_metric = MAIN_METRIC[task_type]; chosen_on_validation: the best validation mean (marked best;
    selection never looks at a test fold); selection_aware_test: mean and std over folds of the test value of the
    instance best on that fold's validation, with the choices per_fold (a nested cross-validation estimate of "run
    this routine, keep its winner"); chosen_test: the chosen one's own test mean and std; highest_test_mean: the
    best test mean, optimistic since chosen on test; instances: each one's validation and test mean and std."""
    metric = MAIN_METRIC[task_type]
    higher, complete = HIGHER_IS_BETTER[metric], sorted(instance.id for instance in instances if instance.complete)
    if not complete:
        return None
    val, test = fold_frame(instances, "val", metric), fold_frame(instances, "test", metric)
    means = {number: {"val": mean_and_std(val[number]), "test": mean_and_std(test[number])} for number in complete}
    chosen = ranked_first({number: entry["val"]["mean"] for number, entry in means.items()}, higher)
    highest = ranked_first({number: entry["test"]["mean"] for number, entry in means.items()}, higher)
    winners = {fold: ranked_first(row.to_dict(), higher) for fold, row in val.where(test.notna()).iterrows()}
    per_fold = [{"fold": fold, "instance": winner, "val": val.at[fold, winner], "test": test.at[fold, winner]}
                for fold, winner in winners.items() if winner is not None]
    return {"task_type": task_type, "main_metric": metric, "higher_is_better": higher, "complete_instances": complete,
            "chosen_on_validation": None if chosen is None else {"instance": chosen, "val": means[chosen]["val"]},
            "selection_aware_test": {**mean_and_std(entry["test"] for entry in per_fold), "per_fold": per_fold},
            "chosen_test": None if chosen is None else means[chosen]["test"],
            "highest_test_mean": None if highest is None else {"instance": highest, "test": means[highest]["test"]},
            "instances": [{"instance": number, **means[number]} for number in complete]}


def paired_test(first, second):
    """(p-value or None, label) of a paired t-test of two lists of per-fold values (same folds, same order):
    'yes' or 'no' (p < SIGNIFICANCE_LEVEL), 'no (identical)' (equal on every fold: no test), 'n/a' (fewer than two
    folds, or no p-value), 'n/a (constant difference)' (the same difference on every fold: a t-test has no variance
    to weigh it against, and scipy's p of 0 would claim certainty)."""
    if len(first) < 2:
        return None, "n/a"
    if list(first) == list(second):
        return None, "no (identical)"
    if np.ptp(np.subtract(first, second)) == 0:  # scipy's p would be 0: certainty from a constant difference
        return None, "n/a (constant difference)"
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        p_value = float(scipy.stats.ttest_rel(first, second).pvalue)
    return (None, "n/a") if math.isnan(p_value) else (p_value, "yes" if p_value < SIGNIFICANCE_LEVEL else "no")


def significance(instances, task_type, chosen):
    """{instance id: (p-value or None, label)}: a paired t-test of each complete instance's per-fold test main metric
    against the chosen one's (paired_test's labels, 'best' for the chosen one; '' if not complete)."""
    labels, test = {i.id: (None, "") for i in instances}, fold_frame(instances, "test", MAIN_METRIC[task_type])
    for other in (test if chosen in test else ()):
        best, values = test[[chosen, other]].dropna().T.values.tolist()
        labels[other] = (None, "best") if other == chosen else paired_test(best, values)
    return labels


# ---- The baseline (baseline.py): a yardstick beside the instances, never one of them

BASELINE_SCHEMA = {"task_type": TASK_TYPES.__contains__, "about": str, "dataset_fingerprint": (str, None),
                   "folds": [{"fold": int, "train_items": list, "val_items": list, "test_items": list}],
                   "per_fold": [{"fold": int, "chosen": dict, "metrics": {str: {str: NUMBER}}}]}


def load_baselines(experiment_folder, instances, said=None, quiet=False):
    """{task type: the baseline document baseline.py wrote beside the instances (Layout.baseline)}, for each task
    type whose complete instances share a split; a document that is damaged, or was computed on another split or
    dataset than those instances, is left out with one warning (printed unless quiet; appended to said)."""
    baselines = {}
    for task_type, group in by_task(instances).items():
        complete = [instance for instance in group if instance.complete]
        if not complete:
            continue
        path = Layout(experiment_folder, complete[0].dataset, complete[0].experiment).baseline(task_type)
        problem = None
        try:
            document = read_json(path) if path.is_file() else None
        except (OSError, XvalError) as error:
            document, problem = None, f"cannot be read ({error})"
        found = document is not None and mismatch(document, BASELINE_SCHEMA)
        fingerprints = {fold.get("dataset_fingerprint") for fold in complete[0].folds} - {None}
        if found:
            problem = f"is damaged ({found[0] or 'its content'} is {str(found[1])[:60]!r})"
        elif document is not None and split_of(document["folds"]) != split_of(complete[0].folds):
            problem = "was computed on another split than the instances'"
        elif document is not None and fingerprints and fingerprints != {document.get("dataset_fingerprint")}:
            problem = "was computed on other features than the instances' (the dataset was preprocessed again)"
        if problem:
            message = f"{path} {problem}: the baseline is not shown; the next run of the routine computes it again"
            if not quiet:
                warn(message)
            if said is not None:
                said.append(message)
        elif document is not None:
            baselines[task_type] = document
    return baselines


def baseline_summary(document, instances, summary):
    """What a routine summary says of its baseline document: about, mean and std over folds of every metric per
    split (summary), per fold its hyperparameter and main-metric validation and test values, and chosen_vs_baseline:
    the chosen instance against the baseline on the same test folds (paired_test; difference: the mean of the
    chosen one's values minus the baseline's, positive = higher; better: whether the chosen one is better)."""
    metric = summary["main_metric"]
    folds = sorted(document["per_fold"], key=lambda fold: fold["fold"])
    per_fold = [{"fold": fold["fold"], **fold["chosen"], "val": fold["metrics"].get("val", {}).get(metric),
                 "test": fold["metrics"].get("test", {}).get(metric)} for fold in folds]
    entry = {"model": document.get("model"), "about": document["about"], "summary": summarise_folds(folds),
             "per_fold": per_fold,
             "chosen_vs_baseline": None}
    chosen = (summary.get("chosen_on_validation") or {}).get("instance")
    if chosen is not None:
        test = fold_frame(instances, "test", metric)[chosen]
        pairs = [(test[fold["fold"]], fold["test"]) for fold in per_fold if fold["fold"] in test.index
                 and fold["test"] is not None and not math.isnan(test[fold["fold"]])]
        ours, theirs = [float(pair[0]) for pair in pairs], [float(pair[1]) for pair in pairs]
        p_value, label = paired_test(ours, theirs)
        difference = float(np.mean(ours) - np.mean(theirs)) if pairs else None
        entry["chosen_vs_baseline"] = {
            "instance": chosen, "folds": len(pairs), "p_value": p_value, "differs": label, "difference": difference,
            "better": None if not difference else (difference > 0) == summary["higher_is_better"]}
    return entry


def baseline_lines(summary):
    """The sentences on a routine summary's baseline (none without one)."""
    entry = (summary or {}).get("baseline")
    if not entry:
        return []
    main = metric_label(summary["main_metric"])
    test = entry["summary"]["test"].get(summary["main_metric"]) or {}
    if test.get("mean") is None:
        return []
    shown = f"{test['mean']:.3f}" + ("" if test.get("std") is None else f" ± {test['std']:.3f}")
    lines = [f"Baseline ({entry['model']} on each clip's mean and std of every feature bin; a yardstick, never "
             f"chosen): test {main} {shown} over {sum(f['test'] is not None for f in entry['per_fold'])} folds."]
    versus = entry["chosen_vs_baseline"]
    if versus and versus["difference"] is not None:
        word = "better than" if versus["better"] else "worse than" if versus["better"] is False else "level with"
        p_text = "no test" if versus["p_value"] is None else f"p = {versus['p_value']:.3g}"
        lines.append(f"Instance {versus['instance']} (chosen) is {word} the baseline by "
                     f"{abs(versus['difference']):.3f} {main} on the same {versus['folds']} test folds "
                     f"(paired t-test: {p_text}; significant: {versus['differs']}).")
    return lines


def honest_lines(summary):
    """The sentences that say which number to report, from a routine_summary (None: no complete instance)."""
    if summary is None or summary["chosen_on_validation"] is None:
        return ["No complete instance yet: nothing is chosen and no estimate is reported."]
    main, chosen, estimate = metric_label(summary["main_metric"]), summary["chosen_on_validation"], \
        summary["selection_aware_test"]
    plus_minus = [f"{entry['mean']:.3f}" + ("" if entry["std"] is None else f" ± {entry['std']:.3f}")
                  for entry in (estimate, summary["chosen_test"])]
    lines = [f"Best = chosen on validation: instance {chosen['instance']} (mean validation {main} "
             f"{chosen['val']['mean']:.3f} over {chosen['val']['folds']} folds); 'p vs best' tests the others "
             "against it on the test folds.",
             f"Report for this routine: selection-aware test {main} {plus_minus[0]} over {estimate['folds']} folds "
             "(in each fold, the instance best on that fold's validation items, scored on its test items; chosen per "
             f"fold: {', '.join(str(entry['instance']) for entry in estimate['per_fold'])}).",
             f"Instance {chosen['instance']}'s own test {main}: {plus_minus[1]}."]
    if summary["highest_test_mean"] is not None and len(summary["complete_instances"]) > 1:
        lines.append(f"Highest test mean of any instance: instance {summary['highest_test_mean']['instance']}, "
                     f"{summary['highest_test_mean']['test']['mean']:.3f}: optimistic, since it is picked by looking "
                     "at the test folds; the numbers above never use a test fold to choose, which is why they are "
                     f"usually {'lower' if summary['higher_is_better'] else 'higher'}.")
    return lines


def summed_confusion(instance):
    """(test confusion matrix of a classification instance summed over folds (rows true, columns predicted) or None,
    number of folds summed, class labels, row percentages (NaN for an empty row))."""
    matrices = [np.asarray(fold["confusion_matrix"]["test"], dtype=float) for fold in instance.folds
                if "test" in fold["confusion_matrix"] and instance.task_type == "classification"]
    if not matrices:
        return None, 0, [], None
    matrix = sum(matrices)
    totals = matrix.sum(axis=1, keepdims=True)
    shares = np.divide(matrix, totals, out=np.full(matrix.shape, np.nan), where=totals > 0)
    labels = [str(name) for name in instance.class_names or []] or [f"class {index}" for index in range(len(matrix))]
    return matrix, len(matrices), labels, shares


def search_summaries(instances):
    """{search key: its summary} of every search's trials among instances: "trials" (how many ended in each
    status), and routine_summary over its trials alone (the best trial is its chosen_on_validation, its own test
    mean chosen_test, and selection_aware_test the number to report for the search), or {} without a search."""
    groups = {}
    for instance in instances:
        if instance.search:
            groups.setdefault(instance.search["search"], []).append(instance)
    summaries = {}
    for key, trials in sorted(groups.items()):
        statuses = [trial.status for trial in trials]
        summary = routine_summary(trials, trials[0].task_type)
        summaries[str(key)] = {"search": key, "task_type": trials[0].task_type,
                               "trials": {status: statuses.count(status) for status in dict.fromkeys(statuses)},
                               "summary": summary}
    return summaries


def search_lines(entry):
    """The sentences on one search's numbers (search_summaries' entry): its trials, the best trial's own mean and
    the selection-aware estimate, and which one to report."""
    counts = ", ".join(f"{n} {status}" for status, n in entry["trials"].items())
    summary, key = entry["summary"], entry["search"]
    if summary is None or summary["chosen_on_validation"] is None:
        return [f"Search {key}: {counts}; no complete trial yet."]
    main, best, estimate = metric_label(summary["main_metric"]), summary["chosen_on_validation"], \
        summary["selection_aware_test"]
    shown = [f"{e['mean']:.3f}" + ("" if e["std"] is None else f" ± {e['std']:.3f}")
             for e in (estimate, summary["chosen_test"])]
    return [f"Search {key}: {counts}. Best trial: instance {best['instance']} (mean validation {main} "
            f"{best['val']['mean']:.3f}); its own test {main} {shown[1]} is optimistic: it was picked among "
            f"{len(summary['complete_instances'])} complete trials on every fold's validation items, which are other "
            "folds' test items.",
            f"Report for search {key}: selection-aware test {main} {shown[0]} over {estimate['folds']} folds (in each "
            f"fold the trial best on that fold's validation items, scored on its test items: "
            f"{', '.join(str(e['instance']) for e in estimate['per_fold'])})."]


# ---- The summary JSON: the routine's numbers, for the console, use_model.py and the spreadsheet

def read_routine_summary(experiment_folder, part="task_types"):
    """{task type: routine_summary} of the newest summary JSON the spreadsheet wrote in experiment_folder, or {}
    (part="searches": {search key: search_summaries' entry})."""
    found = sorted(Path(experiment_folder).glob(SUMMARY_GLOB),
                   key=lambda path: path.stat().st_mtime)
    return read_json(found[-1]).get(part, {}) if found else {}


def routine_summaries(instances, baselines=None):
    """{task type: routine_summary of its instances}, with a "baseline" entry (baseline_summary) where baselines
    ({task type: document}, load_baselines) holds one for it."""
    summaries = {task_type: routine_summary(group, task_type) for task_type, group in by_task(instances).items()}
    for task_type, document in (baselines or {}).items():
        if summaries.get(task_type) is not None:
            summaries[task_type]["baseline"] = baseline_summary(document, by_task(instances)[task_type],
                                                                summaries[task_type])
    return summaries


def write_routine_summary(experiment_folder, instances, said=(), baselines=None):
    """routine_summaries(instances, baselines), written atomically as the summary JSON of experiment_folder (named
    after the lowest-numbered instance), with `warnings` (said: what reading the results files warned about) when
    any."""
    summaries, searches = routine_summaries(instances, baselines), search_summaries(instances)
    document = {"experiment": instances[0].experiment, "datasets": list(dict.fromkeys(i.dataset for i in instances)),
                "about": SUMMARY_ABOUT, "task_types": summaries}
    if any(summary and "baseline" in summary for summary in summaries.values()):  # only then, as searches below
        document["about"] += BASELINE_ABOUT
    if searches:  # only then: a summary without searches reads as an earlier version wrote it, unchanged on resume
        document.update(about=document["about"] + SEARCHES_ABOUT, searches=searches)
    if said:  # only then, as searches
        document["warnings"] = list(said)
    atomic_write_json(Layout(experiment_folder, instances[0].dataset, instances[0].experiment).summary, document)
    return summaries
