"""Turn the result files of one experiment into a spreadsheet that shows which instance is best and whether it matters.

    python3 results_to_excel.py EXPERIMENT_FOLDER [OUTPUT.xlsx]

EXPERIMENT_FOLDER is one experiment_{N}/ folder. Only results/results_{dataset}_exp{N}_run{R}.json files are read
(anything else in results/, broken JSON included, is skipped with a warning), in the order of the instance number R.
The default output is EXPERIMENT_FOLDER/{dataset}_exp{N}_results_spreadsheet.xlsx, named after the dataset and
experiment of the lowest-numbered instance (so the name stays the same while an experiment grows).

Sheets:
  summary      one row per instance: parameters that differ, status, mean and std over folds of every metric,
               best mean and lowest std highlighted, the instance chosen on validation marked best, paired
               t-test p-values against it, and the selection-aware test estimate to report
               (also written to EXPERIMENT_FOLDER/{dataset}_exp{N}_summary.json)
  summary_*    the same for the other task type when an experiment mixes classification and regression
               ("summary" holds the task type of the lowest-numbered instance)
  folds(_*)    one row per instance and fold: every metric, epochs, seconds and test items
  confusion    test confusion matrix of each classification instance summed over folds, counts and row %
  parameters   every resolved parameter of every instance, instances as columns
  plots        learning curves and confusion matrix of each instance (PNG files in EXPERIMENT_FOLDER/plots/)

The spreadsheet and the plots are written atomically; the result files are only read.
"""
import argparse
import contextlib
import io
import json
import math
import os
import re
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.stats
import xlsxwriter
import xlsxwriter.exceptions
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from utility_functions import (CLASSIFICATION_METRICS, HIGHER_IS_BETTER, MAIN_METRIC, REGRESSION_METRICS, SPLITS,
                               TASK_TYPES, XvalError, atomic_write_bytes, atomic_write_json, commit_temp_file,
                               exit_on_user_error,
                               read_json, temp_path_for)

# ----------------------------------------------------------------------------------------------------------------
# Constants

RESULTS_SUBFOLDER = "results"
PLOTS_SUBFOLDER = "plots"
RESULT_FILE_GLOB = "results_*_exp*_run*.json"
RESULT_FILE_PATTERN = re.compile(r"^results_(?P<dataset>.+)_exp(?P<experiment>\d+)_run(?P<instance>\d+)\.json$")
OUTPUT_NAME = "{dataset}_exp{experiment}_results_spreadsheet.xlsx"
SUMMARY_NAME = "{dataset}_exp{experiment}_summary.json"
SUMMARY_ABOUT = ("Per task type, from the complete instances' fold results: chosen_on_validation is the instance with "
                 "the best mean validation main_metric (marked best on the spreadsheet); selection_aware_test is "
                 "the mean and std over folds of the test value of the instance best on each fold's validation "
                 "items (report this for the routine); highest_test_mean is optimistic, being chosen on test.")
STATUSES = ("complete", "incomplete", "failed")
METRICS_BY_TASK = {"classification": CLASSIFICATION_METRICS, "regression": REGRESSION_METRICS}
SPLIT_LABELS = {"train": "train", "val": "validation", "test": "test"}
SHORT_SPLIT_LABELS = {"train": "train", "val": "val", "test": "test"}
STATS = ("mean", "std")
# history curves drawn per task type (the first is always the loss); missing ones are left out
CURVE_METRICS = {"classification": ("loss", "accuracy"), "regression": ("loss", "rmse", "mae")}
EXCLUDED_FROM_COMPARISON = ("comment_1", "comment_2", "task_type")  # shown in their own columns or per sheet

SIGNIFICANCE_LEVEL = 0.05
TEST_NAME = "paired t-test (scipy.stats.ttest_rel)"

# look of the workbook
METRIC_FORMAT = "0.000"
P_VALUE_FORMAT = "[<0.001]0.0E+00;0.000"
PERCENT_FORMAT = "0.0%"
SECONDS_FORMAT = "0.0"
HEADER_FILL, HEADER_FONT = "#1F4E79", "#FFFFFF"
SUBHEADER_FILL = "#D9E1F2"
BEST_FILL, BEST_FONT = "#C6EFCE", "#006100"  # best mean of a column
LOWEST_STD_FILL, LOWEST_STD_FONT = "#BDD7EE", "#1F3864"  # lowest std of a column
FAILED_FILL, FAILED_FONT = "#FFC7CE", "#9C0006"
INCOMPLETE_FILL, INCOMPLETE_FONT = "#FFEB9C", "#9C5700"
DIFFERS_FILL = "#FFF2CC"  # parameters sheet: a parameter whose value differs between instances
EXCLUDED_FONT = "#808080"  # metrics of incomplete and failed instances: shown, never best
GRID_COLOR = "#BFBFBF"
BAND_FILL = "#F2F2F2"  # folds sheet: every other instance
STATUS_STYLES = {"failed": {"bg_color": FAILED_FILL, "font_color": FAILED_FONT, "bold": True},
                 "incomplete": {"bg_color": INCOMPLETE_FILL, "font_color": INCOMPLETE_FONT, "bold": True}}
FOLDS_IDENTITY_STYLES = {0: {"align": "center", "bold": True}, 3: {"align": "center"}, 4: {"align": "center"},
                         5: {"align": "center"}, 6: {"num_format": SECONDS_FORMAT}}  # by column
CONFUSION_SCALE = ("#FFFFFF", "#63BE7B")
COMMENT_WIDTH_LIMITS = (10, 40)
PARAMETER_WIDTH_LIMITS = (8, 24)
METRIC_COLUMN_WIDTH = 8
FROZEN_SUMMARY_COLUMNS = 3  # ID, parameters link and comment 1 stay in view when scrolling right

# plots
PLOT_DPI = 150
PLOT_HEIGHT_INCHES = 3.6  # every figure is this high, so that all show at the same scale
PLOT_HEIGHT_PIXELS = 330  # displayed height of every plot on the plots sheet
PLOT_GAP_PIXELS = 16
DEFAULT_ROW_PIXELS = 20
DEFAULT_COLUMN_PIXELS = 64
PLOTS_SHEET_COLUMNS = 40  # columns under the images, given explicit widths
FOLD_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
               "#bcbd22", "#17becf")


# ----------------------------------------------------------------------------------------------------------------
# Reading the results

@dataclass(frozen=True)
class Instance:
    """One instance's result file, checked and with defaults for what a failed instance may lack."""
    id: int
    source: Path
    dataset: str
    experiment: int
    task_type: str
    status: str
    error: str
    parameters: dict
    parameters_file: Path | None  # absolute; may not exist
    parameter_hash: str
    class_names: tuple | None
    folds: tuple  # fold dicts sorted by fold number
    summary: dict

    @property
    def comment_1(self):
        return text_or_empty(self.parameters.get("comment_1"))

    @property
    def comment_2(self):
        return text_or_empty(self.parameters.get("comment_2"))

    @property
    def is_complete(self):
        return self.status == "complete"


def warn(message):
    """One warning line on stderr."""
    print(f"warning: {message}", file=sys.stderr)


def text_or_empty(value):
    """value as text, None as an empty string."""
    return "" if value is None else str(value)


def as_number(value):
    """A finite int or float as float, anything else (null, text, bool, NaN) as None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def find_result_files(experiment_folder):
    """[(instance number, dataset, path)] of the result files in results/, sorted by instance number."""
    found = []
    for path in Path(experiment_folder, RESULTS_SUBFOLDER).glob(RESULT_FILE_GLOB):
        match = RESULT_FILE_PATTERN.match(path.name)
        if not path.is_file():
            continue
        if not match:
            warn(f"{path} is not named results_{{dataset}}_exp{{N}}_run{{R}}.json: skipped")
            continue
        found.append((int(match["instance"]), match["dataset"], path))
    return sorted(found, key=lambda entry: (entry[0], entry[1], entry[2].name))


def parse_instance(raw, instance_id, dataset_from_name, path, experiment_folder):
    """An Instance from the parsed JSON of a result file; XvalError (one line) if it is not one."""
    if not isinstance(raw, dict):
        raise XvalError(f"{path} does not hold a JSON object")
    task_type, status = raw.get("task_type"), raw.get("status")
    if task_type not in TASK_TYPES:
        raise XvalError(f"{path}: task_type {task_type!r} is not one of {', '.join(TASK_TYPES)}")
    if status not in STATUSES:
        raise XvalError(f"{path}: status {status!r} is not one of {', '.join(STATUSES)}")
    if raw.get("instance") not in (None, instance_id):
        warn(f"{path} says instance {raw.get('instance')!r}; using {instance_id} from its name")
    dataset = raw.get("dataset")
    if not isinstance(dataset, str) or not dataset or "/" in dataset or "\\" in dataset:
        dataset = dataset_from_name
    experiment = raw.get("experiment")
    parameters = raw.get("parameters") if isinstance(raw.get("parameters"), dict) else {}
    parameters_file = raw.get("parameters_file")
    folds = [fold for fold in raw.get("folds") or [] if isinstance(fold, dict) and
             isinstance(fold.get("fold"), int) and not isinstance(fold.get("fold"), bool)]
    class_names = raw.get("class_names")
    return Instance(
        id=instance_id, source=path, dataset=dataset,
        experiment=experiment if isinstance(experiment, int) else experiment_number_from_name(path),
        task_type=task_type, status=status, error=text_or_empty(raw.get("error")).strip(),
        parameters=parameters,
        parameters_file=(Path(experiment_folder) / parameters_file).resolve()
        if isinstance(parameters_file, str) and parameters_file else None,
        parameter_hash=text_or_empty(raw.get("parameter_hash")),
        class_names=tuple(str(name) for name in class_names) if isinstance(class_names, list) else None,
        folds=tuple(sorted(folds, key=lambda fold: fold["fold"])),
        summary=raw.get("summary") if isinstance(raw.get("summary"), dict) else {})


def experiment_number_from_name(path):
    """N of results_{dataset}_exp{N}_run{R}.json."""
    return int(RESULT_FILE_PATTERN.match(path.name)["experiment"])


def load_instances(experiment_folder):
    """Every readable instance of an experiment folder, in instance order; unreadable files are warned about."""
    instances = []
    for instance_id, dataset, path in find_result_files(experiment_folder):
        try:
            raw = read_json(path)
            instances.append(parse_instance(raw, instance_id, dataset, path, experiment_folder))
        except XvalError as error:
            warn(f"{error}: skipped")
        except (OSError, UnicodeDecodeError) as error:
            warn(f"{path} cannot be read ({error}): skipped")
    return instances


def check_experiment_folder(experiment_folder):
    """XvalError unless experiment_folder is a folder with a results/ subfolder."""
    folder = Path(experiment_folder)
    if not folder.is_dir():
        raise XvalError(f"experiment folder {folder} does not exist: pass an experiment_{{N}} folder")
    if not (folder / RESULTS_SUBFOLDER).is_dir():
        children = sorted(child.name for child in folder.glob("experiment_*") if child.is_dir())
        hint = f"pass one of its experiment folders ({', '.join(children[:5])})" if children else \
            "run an experiment first, or pass the experiment_{N} folder that holds results/"
        raise XvalError(f"{folder} has no {RESULTS_SUBFOLDER}/ folder: {hint}")


# ----------------------------------------------------------------------------------------------------------------
# What the numbers say: metric values, best instances, paired tests, parameters that differ

def summary_value(instance, split, metric, stat):
    """mean or std over folds of one metric as stored in the result file, or None."""
    split_summary = instance.summary.get(split)
    entry = split_summary.get(metric) if isinstance(split_summary, dict) else None
    return as_number(entry.get(stat)) if isinstance(entry, dict) else None


def fold_value(fold, split, metric):
    """One fold's value of a metric, or None."""
    metrics = fold.get("metrics") if isinstance(fold.get("metrics"), dict) else {}
    split_metrics = metrics.get(split) if isinstance(metrics.get(split), dict) else {}
    return as_number(split_metrics.get(metric))


def fold_values(instance, split, metric):
    """{fold number: value} of the folds where the metric is defined."""
    values = {fold["fold"]: fold_value(fold, split, metric) for fold in instance.folds}
    return {number: value for number, value in values.items() if value is not None}


def extreme_positions(values, higher_is_better):
    """Positions of the best values in {position: value or None}; none unless at least two values compete."""
    defined = {position: value for position, value in values.items() if value is not None}
    if len(defined) < 2:
        return set()
    target = max(defined.values()) if higher_is_better else min(defined.values())
    return {position for position, value in defined.items() if value == target}


def best_positions(instances, split, metric):
    """Positions (in instances) of the complete instances with the best mean of metric on split."""
    values = {position: summary_value(instance, split, metric, "mean")
              for position, instance in enumerate(instances) if instance.is_complete}
    return extreme_positions(values, HIGHER_IS_BETTER[metric])


def lowest_std_positions(instances, split, metric):
    """Positions of the complete instances with the lowest std over folds of metric on split."""
    values = {position: summary_value(instance, split, metric, "std")
              for position, instance in enumerate(instances) if instance.is_complete}
    return extreme_positions(values, higher_is_better=False)


def paired_fold_values(best, other, metric, split="test"):
    """(best's values, other's values) of metric on the folds both have a value for, in fold order."""
    best_values, other_values = fold_values(best, split, metric), fold_values(other, split, metric)
    common = sorted(set(best_values) & set(other_values))
    return [best_values[fold] for fold in common], [other_values[fold] for fold in common]


def paired_p_value(best_values, other_values):
    """Two-sided p-value of a paired t-test (scipy.stats.ttest_rel), or None when it is undefined."""
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        p_value = float(scipy.stats.ttest_rel(best_values, other_values).pvalue)
    return p_value if math.isfinite(p_value) else None


def mean_and_std(values):
    """{"mean", "std", "folds"} of a list of numbers; std with ddof=1 (None for fewer than two), mean None if empty."""
    values = list(values)
    return {"mean": float(np.mean(values)) if values else None,
            "std": float(np.std(values, ddof=1)) if len(values) > 1 else None, "folds": len(values)}


def ranked_first(candidates, higher_is_better):
    """The key of the best value in {key: value}: highest or lowest, the lowest key among ties; None if empty."""
    if not candidates:
        return None
    return min(candidates, key=lambda key: (-candidates[key] if higher_is_better else candidates[key], key))


def routine_summary(instances, task_type):
    """The honest numbers of a routine (one task type), derived from the complete instances' fold results alone.

    main_metric is MAIN_METRIC[task_type]. Returns None without a complete instance, else:
      chosen_on_validation: the instance with the best mean main metric over folds on validation (the one marked
        best): selection never looks at a test fold;
      selection_aware_test: in each fold, the instance with the best validation value in that fold; the mean and
        std over folds of their test values (a nested cross-validation estimate of "run this routine, keep its
        winner"), with the per-fold choices;
      chosen_test: the chosen instance's own test mean and std (selected on validation, but on every fold at once);
      highest_test_mean: the instance with the best test mean: optimistic, since it is chosen by its test score;
      instances: each complete instance's validation and test mean and std.
    """
    metric, higher = MAIN_METRIC[task_type], HIGHER_IS_BETTER[MAIN_METRIC[task_type]]
    complete = {instance.id: instance for instance in instances if instance.is_complete}
    if not complete:
        return None
    values = {number: {split: fold_values(instance, split, metric) for split in ("val", "test")}
              for number, instance in complete.items()}
    per_instance = {number: {split: mean_and_std(values[number][split].values()) for split in ("val", "test")}
                    for number in complete}
    chosen = ranked_first({number: entry["val"]["mean"] for number, entry in per_instance.items()
                           if entry["val"]["mean"] is not None}, higher)
    highest = ranked_first({number: entry["test"]["mean"] for number, entry in per_instance.items()
                            if entry["test"]["mean"] is not None}, higher)
    per_fold = []
    for fold in sorted({fold for entry in values.values() for fold in entry["val"]}):
        candidates = {number: entry["val"][fold] for number, entry in values.items()
                      if fold in entry["val"] and fold in entry["test"]}
        winner = ranked_first(candidates, higher)
        if winner is not None:
            per_fold.append({"fold": fold, "instance": winner, "val": values[winner]["val"][fold],
                             "test": values[winner]["test"][fold]})
    return {"task_type": task_type, "main_metric": metric, "higher_is_better": higher,
            "complete_instances": sorted(complete),
            "chosen_on_validation": None if chosen is None else {"instance": chosen,
                                                                 "val": per_instance[chosen]["val"]},
            "selection_aware_test": {**mean_and_std(entry["test"] for entry in per_fold), "per_fold": per_fold},
            "chosen_test": None if chosen is None else per_instance[chosen]["test"],
            "highest_test_mean": None if highest is None else {"instance": highest,
                                                               "test": per_instance[highest]["test"]},
            "instances": [{"instance": number, **per_instance[number]} for number in sorted(complete)]}


def significance_column(instances, task_type, chosen):
    """{position: (p-value or None, label)} for the summary sheet; chosen: the instance id chosen on validation.

    Labels: 'best' for the chosen instance; 'yes' or 'no' (its per-fold test values differ from the chosen
    instance's at SIGNIFICANCE_LEVEL); 'no (identical)' when every fold has the same value (the t-test is undefined
    then); 'n/a' with fewer than two paired folds; '' for incomplete and failed instances.
    """
    metric = MAIN_METRIC[task_type]
    column = {position: (None, "") for position in range(len(instances))}
    best_instance = next((instance for instance in instances if instance.id == chosen), None)
    if best_instance is None:
        return column
    for position, instance in enumerate(instances):
        if not instance.is_complete:
            continue
        if instance is best_instance:
            column[position] = (None, "best")
            continue
        best_values, other_values = paired_fold_values(best_instance, instance, metric)
        if len(best_values) < 2:
            column[position] = (None, "n/a")
        elif best_values == other_values:
            column[position] = (None, "no (identical)")
        else:
            p_value = paired_p_value(best_values, other_values)
            label = "n/a" if p_value is None else ("yes" if p_value < SIGNIFICANCE_LEVEL else "no")
            column[position] = (p_value, label)
    return column


def canonical(value):
    """A key that tells parameter values apart exactly (True from 1, 1 from 1.0, lists by content)."""
    return json.dumps(value, sort_keys=True, default=str)


def parameter_names(instances):
    """Every parameter name of the instances, in the order they first appear."""
    names = {}
    for instance in instances:
        names.update(dict.fromkeys(instance.parameters))
    return list(names)


def split_parameters(instances):
    """(names of the parameters whose value differs between instances, {name: value} of those all share).

    Instances without parameters (some failed ones) are left out of the comparison. The dataset counts as a
    parameter; comments and the task type are shown elsewhere.
    """
    with_parameters = [instance for instance in instances if instance.parameters]
    rows = [{"dataset": instance.dataset, **instance.parameters} for instance in with_parameters]
    names = ["dataset"] + [name for name in parameter_names(with_parameters) if name != "dataset"]
    varying, shared = [], {}
    for name in names:
        if name in EXCLUDED_FROM_COMPARISON:
            continue
        keys = {canonical(row[name]) if name in row else "<missing>" for row in rows}
        if len(keys) > 1:
            varying.append(name)
        elif rows:
            shared[name] = rows[0][name]
    return varying, shared


def parameter_display(value):
    """A parameter value for a cell: numbers stay numbers, the rest is written the way Python would."""
    if isinstance(value, bool) or value is None:
        return repr(value)
    if isinstance(value, (int, float)):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, str):
        return value
    return repr(value)


def fold_count(instances):
    """k: the highest fold number any instance reached (0 without folds)."""
    return max((fold["fold"] for instance in instances for fold in instance.folds), default=0)


def status_text(instance, k):
    """'complete', 'incomplete, 3/5 folds' or 'failed'."""
    if instance.status == "incomplete":
        done = len(instance.folds)
        return f"incomplete, {done}/{k} folds" if k > done else f"incomplete, {done} folds"
    return instance.status


def fold_confusion(fold):
    """A fold's test confusion matrix as a square float array, or None (absent or not a square matrix)."""
    matrices = fold.get("confusion_matrix")
    matrix = matrices.get("test") if isinstance(matrices, dict) else None
    if matrix is None:
        return None
    try:
        matrix = np.asarray(matrix, dtype=float)
    except (TypeError, ValueError):
        return None
    return matrix if matrix.ndim == 2 and matrix.shape[0] == matrix.shape[1] > 0 else None


def summed_confusion(instance):
    """(test confusion matrix summed over folds or None, number of folds summed); rows true, columns predicted.

    Every fold must match the class names (or, without them, the first fold's size); others are left out.
    """
    total, summed = None, 0
    for fold in instance.folds:
        matrix = fold_confusion(fold)
        if matrix is None:
            continue
        size = len(instance.class_names) if instance.class_names else (len(total) if total is not None
                                                                       else len(matrix))
        if len(matrix) != size:
            warn(f"{instance.source}: fold {fold['fold']} has a {len(matrix)}x{len(matrix)} confusion matrix "
                 f"for {size} classes: left out of the sum")
            continue
        total = matrix if total is None else total + matrix
        summed += 1
    return total, summed


def class_labels(instance, size):
    """The class names of an instance, or class 0 ... class size-1 without them."""
    if instance.class_names and len(instance.class_names) == size:
        return list(instance.class_names)
    return [f"class {index}" for index in range(size)]


def row_percentages(matrix):
    """Each row of a confusion matrix as shares of its total (NaN for an empty row)."""
    totals = matrix.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, matrix / np.where(totals > 0, totals, 1), np.nan)


def group_by_task(instances):
    """{task type: instances}, the task type of the lowest-numbered instance first."""
    groups = {}
    for instance in instances:
        groups.setdefault(instance.task_type, []).append(instance)
    return groups


def sheet_name(base, task_type, first_task_type):
    """'summary' for the task type of the first instance, 'summary_regression' (say) for the other one."""
    return base if task_type == first_task_type else f"{base}_{task_type}"


def default_output_path(experiment_folder, instances):
    """EXPERIMENT_FOLDER/{dataset}_exp{N}_results_spreadsheet.xlsx after the lowest-numbered instance."""
    first = instances[0]
    return Path(experiment_folder) / OUTPUT_NAME.format(dataset=first.dataset, experiment=first.experiment)


def summary_path(experiment_folder, instances):
    """EXPERIMENT_FOLDER/{dataset}_exp{N}_summary.json after the lowest-numbered instance, beside the spreadsheet."""
    first = instances[0]
    return Path(experiment_folder) / SUMMARY_NAME.format(dataset=first.dataset, experiment=first.experiment)


def metric_label(metric):
    """'balanced accuracy' for balanced_accuracy."""
    return metric.replace("_", " ")


def ordered_metrics(task_type):
    """The task's metrics, the main one first."""
    main = MAIN_METRIC[task_type]
    return [main] + [metric for metric in METRICS_BY_TASK[task_type] if metric != main]


# ----------------------------------------------------------------------------------------------------------------
# Plots: PNG files in EXPERIMENT_FOLDER/plots/, redrawn only when the result file is newer

def plot_paths(experiment_folder, instance):
    """{'curves': path, 'confusion': path} of an instance's plots."""
    stem = f"{instance.dataset}_exp{instance.experiment}_run{instance.id}"
    folder = Path(experiment_folder) / PLOTS_SUBFOLDER
    return {"curves": folder / f"{stem}_learning_curves.png", "confusion": folder / f"{stem}_confusion.png"}


def is_up_to_date(plot_path, instance):
    """Whether plot_path exists and is newer than the instance's result file and than this program."""
    try:
        plot_time = plot_path.stat().st_mtime_ns
        return plot_time > max(instance.source.stat().st_mtime_ns, Path(__file__).stat().st_mtime_ns)
    except OSError:
        return False


def figure_png(figure):
    """The PNG bytes of a matplotlib figure drawn with the Agg backend."""
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=PLOT_DPI)
    return buffer.getvalue()


def history_curve(fold, key):
    """A fold's history list for key as floats (NaN where undefined), or None."""
    history = fold.get("history")
    values = history.get(key) if isinstance(history, dict) else None
    if not isinstance(values, list) or not values:
        return None
    return [np.nan if as_number(value) is None else as_number(value) for value in values]


def curve_metrics(instance):
    """The history metrics to draw for an instance: loss and the main Keras metric(s) its folds recorded."""
    return [metric for metric in CURVE_METRICS[instance.task_type]
            if any(history_curve(fold, metric) for fold in instance.folds)]


def learning_curves_png(instance):
    """Learning curves (train solid, validation dashed, one colour per fold, dot at the best epoch) as PNG."""
    metrics = curve_metrics(instance)
    if not metrics:
        return None
    figure = Figure(figsize=(4.6 * len(metrics) + 1.4, PLOT_HEIGHT_INCHES), layout="constrained")
    axes_row = figure.subplots(1, len(metrics), squeeze=False)[0]
    for axes, metric in zip(axes_row, metrics):
        for index, fold in enumerate(instance.folds):
            color = FOLD_COLORS[index % len(FOLD_COLORS)]
            train, validation = history_curve(fold, metric), history_curve(fold, f"val_{metric}")
            if train:
                axes.plot(range(1, len(train) + 1), train, color=color, linewidth=1.4)
            if validation:
                axes.plot(range(1, len(validation) + 1), validation, color=color, linewidth=1.4, linestyle="--")
                best_epoch = fold.get("best_epoch")
                if isinstance(best_epoch, int) and 1 <= best_epoch <= len(validation):
                    axes.plot([best_epoch], [validation[best_epoch - 1]], "o", color=color, markersize=5)
        axes.set_title(metric_label(metric))
        axes.set_xlabel("epoch")
        axes.grid(alpha=0.3)
        axes.xaxis.get_major_locator().set_params(integer=True)
    handles = [Line2D([], [], color=FOLD_COLORS[index % len(FOLD_COLORS)]) for index in range(len(instance.folds))]
    handles += [Line2D([], [], color="black", linestyle=style, marker=marker)
                for style, marker in (("-", ""), ("--", ""), ("", "o"))]
    labels = [f"fold {fold['fold']}" for fold in instance.folds] + ["train", "validation", "best epoch"]
    figure.legend(handles, labels, loc="outside right center", fontsize=8, frameon=False)
    figure.suptitle(f"Instance {instance.id}: learning curves ({instance.status})", fontsize=11)
    return figure_png(figure)


def confusion_png(instance):
    """The summed test confusion matrix as a heat map of row percentages with counts, as PNG (None if none)."""
    matrix, summed = summed_confusion(instance)
    if matrix is None:
        return None
    shares = row_percentages(matrix)
    labels = class_labels(instance, len(matrix))
    font_size = max(3.5, min(8.0, 44 / len(labels)))  # cell text shrinks with the number of classes
    figure = Figure(figsize=(PLOT_HEIGHT_INCHES * 1.3, PLOT_HEIGHT_INCHES), layout="constrained")
    axes = figure.subplots()
    image = axes.imshow(np.nan_to_num(shares) * 100, cmap="Greens", vmin=0, vmax=100)
    for (row, col), count in np.ndenumerate(matrix):
        share = shares[row, col]
        text = f"{count:.0f}" if np.isnan(share) else f"{count:.0f}\n{share:.0%}"
        axes.text(col, row, text, ha="center", va="center", fontsize=font_size,
                  color="white" if not np.isnan(share) and share > 0.6 else "black")
    axes.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=7)
    axes.set_yticks(range(len(labels)), labels, fontsize=7)
    axes.set_xlabel("predicted", fontsize=8)
    axes.set_ylabel("true", fontsize=8)
    colorbar = figure.colorbar(image, ax=axes, shrink=0.8)
    colorbar.set_label("% of true class", fontsize=7)
    colorbar.ax.tick_params(labelsize=7)
    axes.set_title(f"Instance {instance.id}: test, {summed} folds summed", fontsize=9)
    return figure_png(figure)


def make_plots(experiment_folder, instance):
    """{'curves': path or None, 'confusion': path or None}: the instance's plots, drawn if out of date.

    A plot left from an earlier run of the instance that now has nothing to draw is removed.
    """
    painters = {"curves": learning_curves_png, "confusion": confusion_png}
    plots = {}
    for kind, path in plot_paths(experiment_folder, instance).items():
        plots[kind] = path
        if is_up_to_date(path, instance):
            continue
        png = painters[kind](instance) if kind == "curves" or instance.task_type == "classification" else None
        if png is None:
            plots[kind] = None
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        else:
            atomic_write_bytes(path, png)
    return plots


def png_size(path):
    """(width, height) in pixels from a PNG header."""
    with open(path, "rb") as handle:
        header = handle.read(24)
    return int.from_bytes(header[16:20], "big"), int.from_bytes(header[20:24], "big")


# ----------------------------------------------------------------------------------------------------------------
# Writing cells

class FormatCache:
    """xlsxwriter formats made on demand: one per distinct set of properties (Excel wants few, reused formats)."""

    def __init__(self, workbook):
        self._workbook = workbook
        self._formats = {}

    def __call__(self, **properties):
        key = tuple(sorted(properties.items()))
        if key not in self._formats:
            self._formats[key] = self._workbook.add_format(properties)
        return self._formats[key]


def write_cell(worksheet, row, col, value, cell_format=None):
    """Write a number, a text or (for None) a formatted blank."""
    if value is None or value == "":
        worksheet.write_blank(row, col, None, cell_format)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        worksheet.write_number(row, col, value, cell_format)
    else:
        worksheet.write_string(row, col, str(value), cell_format)


def write_header(worksheet, formats, row, first_col, last_col, text, rows=1, sub=False):
    """A header cell, merged over columns (and rows) when it spans more than one."""
    header = formats(bold=True, align="center", valign="vcenter", text_wrap=True, border=1,
                     border_color=GRID_COLOR, bg_color=SUBHEADER_FILL if sub else HEADER_FILL,
                     font_color="#000000" if sub else HEADER_FONT)
    if first_col == last_col and rows == 1:
        worksheet.write_string(row, first_col, text, header)
    else:
        worksheet.merge_range(row, first_col, row + rows - 1, last_col, text, header)


def text_width(values, limits):
    """A column width that fits the longest value, within (minimum, maximum)."""
    longest = max((len(str(value)) for value in values), default=0)
    return max(limits[0], min(limits[1], longest + 2))


def relative_link(target, output_path):
    """target relative to the folder of the spreadsheet, as Excel resolves relative links."""
    return os.path.relpath(target, Path(output_path).resolve().parent)


def write_title(worksheet, formats, title, subtitle):
    """A bold title in row 0 and a grey subtitle in row 1."""
    worksheet.write_string(0, 0, title, formats(bold=True, font_size=14))
    worksheet.write_string(1, 0, subtitle, formats(italic=True, font_color="#595959"))


def set_print_layout(worksheet, header_rows):
    """Landscape A4, one page wide, header rows repeated on every page."""
    worksheet.set_landscape()
    worksheet.set_paper(9)
    worksheet.fit_to_pages(1, 0)
    worksheet.repeat_rows(0, header_rows - 1)


# ----------------------------------------------------------------------------------------------------------------
# Sheet "summary": one row per instance

@dataclass(frozen=True)
class Column:
    """One column of the summary table: what it shows (kind and key), its header group and label, its width."""
    kind: str  # id, link, comment_1, comment_2, parameter, status, error, p_value, significant, metric
    label: str
    width: float
    key: tuple = ()  # parameter: (name,); metric: (metric, split, stat)


def summary_columns(instances, task_type, varying):
    """The columns of a summary sheet, left to right."""
    main = metric_label(MAIN_METRIC[task_type])
    comments_1 = [instance.comment_1 for instance in instances]
    comments_2 = [instance.comment_2 for instance in instances]
    columns = [Column("id", "ID", 5), Column("link", "parameters", 11),
               Column("comment_1", "comment 1", text_width(comments_1 + ["comment 1"], COMMENT_WIDTH_LIMITS)),
               Column("comment_2", "comment 2", text_width(comments_2 + ["comment 2"], COMMENT_WIDTH_LIMITS))]
    for name in varying:
        values = [instance.dataset if name == "dataset" else parameter_display(instance.parameters.get(name, ""))
                  for instance in instances]
        columns.append(Column("parameter", name, text_width(values + [name], PARAMETER_WIDTH_LIMITS), (name,)))
    k = fold_count(instances)
    statuses = [status_text(instance, k) for instance in instances]
    columns += [Column("status", "status", text_width(statuses, (10, 24))),
                Column("error", "error", 12),
                Column("p_value", f"p vs best (test {main})", 11),
                Column("significant", f"differs from best (p < {SIGNIFICANCE_LEVEL})", 11)]
    for metric in ordered_metrics(task_type):
        for split in SPLITS:
            for stat in STATS:
                label = f"{SHORT_SPLIT_LABELS[split]} {stat}" if stat == "mean" else "std"
                columns.append(Column("metric", label, METRIC_COLUMN_WIDTH, (metric, split, stat)))
    return columns


def summary_cell(column, instance, position, context):
    """(value, format properties) of one summary cell; context holds what compares instances."""
    grid = {"bottom": 1, "bottom_color": GRID_COLOR, "valign": "vcenter"}
    excluded = {} if instance.is_complete else {"font_color": EXCLUDED_FONT, "italic": True}
    if column.kind == "id":
        return instance.id, {**grid, "bold": True, "align": "center"}
    if column.kind == "comment_1":
        return instance.comment_1, grid
    if column.kind == "comment_2":
        return instance.comment_2, grid
    if column.kind == "parameter":
        name = column.key[0]
        if name == "dataset":
            return instance.dataset, grid
        value = parameter_display(instance.parameters[name]) if name in instance.parameters else None
        return value, {**grid, "align": "left"}
    if column.kind == "status":
        return status_text(instance, context["k"]), {**grid, **STATUS_STYLES.get(instance.status, {})}
    if column.kind == "error":
        return instance.error, {**grid, "font_color": FAILED_FONT}
    if column.kind == "p_value":
        return context["significance"][position][0], {**grid, "num_format": P_VALUE_FORMAT}
    if column.kind == "significant":
        label = context["significance"][position][1]
        return label, {**grid, "align": "center", "bold": label in ("best", "yes")}
    metric, split, stat = column.key
    style = {**grid, "num_format": METRIC_FORMAT, **excluded}
    if stat == "mean":
        style["left"] = 1
        style["left_color"] = GRID_COLOR
        if position in context["best"][(metric, split)]:
            style.update(bg_color=BEST_FILL, font_color=BEST_FONT, bold=True)
    elif position in context["lowest_std"][(metric, split)]:
        style.update(bg_color=LOWEST_STD_FILL, font_color=LOWEST_STD_FONT)
    if split == "test" and stat == "std":
        style.update(right=2, right_color=HEADER_FILL)
    return summary_value(instance, split, metric, stat), style


def honest_lines(summary):
    """The sentences that say which number to report, from a routine_summary (None: no complete instance)."""
    if summary is None or summary["chosen_on_validation"] is None:
        return ["No complete instance yet: nothing is chosen and no estimate is reported."]
    main = metric_label(summary["main_metric"])
    chosen, estimate = summary["chosen_on_validation"], summary["selection_aware_test"]
    chosen_test, highest = summary["chosen_test"], summary["highest_test_mean"]
    worse = "lower" if summary["higher_is_better"] else "higher"

    def plus_minus(entry):
        return f"{entry['mean']:.3f}" + ("" if entry["std"] is None else f" ± {entry['std']:.3f}")

    choices = ", ".join(str(entry["instance"]) for entry in estimate["per_fold"])
    lines = [f"Best = chosen on validation: instance {chosen['instance']} (mean validation {main} "
             f"{chosen['val']['mean']:.3f} over {chosen['val']['folds']} folds); 'p vs best' tests the others "
             "against it on the test folds.",
             f"Report for this routine: selection-aware test {main} {plus_minus(estimate)} over "
             f"{estimate['folds']} folds (in each fold, the instance best on that fold's validation items, scored on "
             f"its test items; chosen per fold: {choices}).",
             f"Instance {chosen['instance']}'s own test {main}: {plus_minus(chosen_test)}."]
    if highest is not None and len(summary["complete_instances"]) > 1:
        lines.append(f"Highest test mean of any instance: instance {highest['instance']}, "
                     f"{highest['test']['mean']:.3f}: optimistic, since it is picked by looking at the test folds; "
                     f"the numbers above never use a test fold to choose, which is why they are usually {worse}.")
    return lines


def write_summary_sheet(workbook, formats, name, instances, task_type, output_path, summary):
    """One row per instance with the parameters that differ, status, significance and every metric, under the
    sentences that say which instance is chosen (on validation) and which test number to report."""
    worksheet = workbook.add_worksheet(name)
    varying, shared = split_parameters(instances)
    columns = summary_columns(instances, task_type, varying)
    metrics = ordered_metrics(task_type)
    chosen = summary["chosen_on_validation"]["instance"] if summary and summary["chosen_on_validation"] else None
    context = {"k": fold_count(instances), "significance": significance_column(instances, task_type, chosen),
               "best": {(m, s): best_positions(instances, s, m) for m in metrics for s in SPLITS},
               "lowest_std": {(m, s): lowest_std_positions(instances, s, m) for m in metrics for s in SPLITS}}

    counts = {status: sum(i.status == status for i in instances) for status in STATUSES}
    datasets = ", ".join(dict.fromkeys(i.dataset for i in instances))
    write_title(worksheet, formats, f"Experiment {instances[0].experiment}: {datasets}, {task_type}",
                f"{len(instances)} instances ({counts['complete']} complete, {counts['incomplete']} incomplete, "
                f"{counts['failed']} failed), {context['k']} folds; mean and std over folds. "
                f"Updated {time.strftime('%Y-%m-%d %H:%M')}")

    lines = honest_lines(summary)
    for offset, line in enumerate(lines):
        worksheet.write_string(2 + offset, 0, line, formats(bold=offset < 2, font_color="#1F3864"))
    header_row = 3 + len(lines)
    first_data_row = header_row + 2
    metric_start = next(index for index, column in enumerate(columns) if column.kind == "metric")
    for index, column in enumerate(columns[:metric_start]):
        write_header(worksheet, formats, header_row, index, index, column.label, rows=2)
        worksheet.set_column(index, index, column.width)
    for block, metric in enumerate(metrics):
        first = metric_start + block * len(SPLITS) * len(STATS)
        write_header(worksheet, formats, header_row, first, first + len(SPLITS) * len(STATS) - 1,
                     metric_label(metric))
        for offset in range(len(SPLITS) * len(STATS)):
            column = columns[first + offset]
            write_header(worksheet, formats, header_row + 1, first + offset, first + offset, column.label, sub=True)
            worksheet.set_column(first + offset, first + offset, column.width)
    worksheet.set_row(header_row, 30)
    worksheet.set_row(header_row + 1, 30)

    for position, instance in enumerate(instances):
        row = first_data_row + position
        for index, column in enumerate(columns):
            if column.kind == "link":
                write_parameters_link(worksheet, formats, row, index, instance, output_path)
                continue
            value, style = summary_cell(column, instance, position, context)
            write_cell(worksheet, row, index, value, formats(**style))

    notes_row = first_data_row + len(instances) + 1
    notes_row = write_summary_notes(worksheet, formats, notes_row, task_type)
    write_shared_parameters(worksheet, formats, notes_row + 1, shared, len(instances))
    worksheet.freeze_panes(first_data_row, FROZEN_SUMMARY_COLUMNS)
    worksheet.hide_gridlines(2)
    set_print_layout(worksheet, first_data_row)


def write_parameters_link(worksheet, formats, row, col, instance, output_path):
    """A relative link to the instance's parameters file, or a grey note when the file is missing."""
    grid = {"bottom": 1, "bottom_color": GRID_COLOR, "valign": "vcenter"}
    if instance.parameters_file is not None and instance.parameters_file.is_file():
        target = relative_link(instance.parameters_file, output_path)
        worksheet.write_url(row, col, f"external:{target}", formats(**grid, font_color="#0563C1", underline=1),
                            string=f"run {instance.id}", tip=target)
    else:
        worksheet.write_string(row, col, "missing", formats(**grid, font_color=EXCLUDED_FONT, italic=True))


def write_summary_notes(worksheet, formats, row, task_type):
    """The legend and how to read the significance column, under the table; returns the next free row."""
    main = metric_label(MAIN_METRIC[task_type])
    higher = ", ".join(metric_label(m) for m in METRICS_BY_TASK[task_type] if HIGHER_IS_BETTER[m])
    lower = ", ".join(metric_label(m) for m in METRICS_BY_TASK[task_type] if not HIGHER_IS_BETTER[m])
    swatches = [(formats(bg_color=BEST_FILL, font_color=BEST_FONT, bold=True, border=1, border_color=GRID_COLOR),
                 "best", f"best mean of its column among complete instances (highest {higher}; lowest {lower}); "
                         "on test columns only a description: the instance marked 'best' is chosen on validation"),
                (formats(bg_color=LOWEST_STD_FILL, font_color=LOWEST_STD_FONT, border=1, border_color=GRID_COLOR),
                 "std", "lowest std over folds among complete instances (the steadiest)"),
                (formats(font_color=EXCLUDED_FONT, italic=True), "grey",
                 "incomplete or failed instance: shown, but never best and not tested")]
    note = formats(font_color="#404040")
    for fill, sample, text in swatches:
        worksheet.write_string(row, 0, sample, fill)
        worksheet.write_string(row, 1, text, note)
        row += 1
    explanation = (f"p vs best: {TEST_NAME} of each complete instance against the best one (chosen on "
                   f"validation) on the per-fold test "
                   f"{main}, paired by fold number; 'yes' = the difference is significant at "
                   f"{SIGNIFICANCE_LEVEL} (not corrected for multiple comparisons); 'n/a' = fewer than 2 folds "
                   "to pair.")
    reason = ("A t-test because with 4 or 5 folds a Wilcoxon signed-rank test can never reach 0.05 "
              "(its smallest two-sided p-value with n folds is 2/2^n), and it is weak up to 10 folds.")
    worksheet.write_string(row, 0, "test", formats(bold=True, border=1, border_color=GRID_COLOR, align="center"))
    worksheet.write_string(row, 1, explanation, note)
    worksheet.write_string(row + 1, 1, reason, note)
    return row + 2


def write_shared_parameters(worksheet, formats, row, shared, instance_count):
    """The parameters all instances share, one 'name = value' line each."""
    worksheet.write_string(row, 0, f"Parameters shared by all {instance_count} instances "
                                   "(those that differ are columns of the table; all are on the parameters sheet)",
                           formats(bold=True))
    for offset, (name, value) in enumerate(shared.items(), start=1):
        worksheet.write_string(row + offset, 1, f"{name} = {parameter_display(value)}", formats())


# ----------------------------------------------------------------------------------------------------------------
# Sheet "folds": one row per instance and fold

def write_folds_sheet(workbook, formats, name, instances, task_type):
    """Every metric of every fold, with best epoch, epochs run, seconds and the fold's test items."""
    worksheet = workbook.add_worksheet(name)
    metrics = METRICS_BY_TASK[task_type]
    write_title(worksheet, formats, f"Experiment {instances[0].experiment}: every fold ({task_type})",
                "one row per instance and fold; failed instances without folds have one empty row")
    identity = [("ID", 5), ("comment 1", text_width([i.comment_1 for i in instances], COMMENT_WIDTH_LIMITS)),
                ("status", 11), ("fold", 5), ("best epoch", 7), ("epochs run", 7), ("seconds", 8)]
    header_row, first_data_row = 2, 4
    for col, (label, width) in enumerate(identity):
        write_header(worksheet, formats, header_row, col, col, label, rows=2)
        worksheet.set_column(col, col, width)
    col = len(identity)
    for split in SPLITS:
        write_header(worksheet, formats, header_row, col, col + len(metrics) - 1, SPLIT_LABELS[split])
        for offset, metric in enumerate(metrics):
            write_header(worksheet, formats, header_row + 1, col + offset, col + offset, metric_label(metric),
                         sub=True)
        worksheet.set_column(col, col + len(metrics) - 1, 9)
        col += len(metrics)
    items_col = col
    write_header(worksheet, formats, header_row, items_col, items_col, "test items", rows=2)
    worksheet.set_column(items_col, items_col, 30)
    worksheet.set_row(header_row + 1, 30)

    row = first_data_row
    for band, instance in enumerate(instances):
        fill = {"bg_color": BAND_FILL} if band % 2 else {}
        grey = {} if instance.is_complete else {"font_color": EXCLUDED_FONT, "italic": True}
        for fold in instance.folds or [None]:
            fold = fold or {}
            cells = [instance.id, instance.comment_1, instance.status, fold.get("fold"),
                     as_number(fold.get("best_epoch")), as_number(fold.get("epochs_run")),
                     as_number(fold.get("seconds"))]
            for col, value in enumerate(cells):
                style = {**fill, **FOLDS_IDENTITY_STYLES.get(col, {})}
                if col == 2:
                    style.update(STATUS_STYLES.get(instance.status, {}))
                write_cell(worksheet, row, col, value, formats(**style))
            col = len(identity)
            for split in SPLITS:
                for offset, metric in enumerate(metrics):
                    value = fold_value(fold, split, metric) if fold else None
                    style = {**fill, **grey, "num_format": METRIC_FORMAT}
                    if offset == 0:
                        style.update(left=1, left_color=GRID_COLOR)
                    write_cell(worksheet, row, col + offset, value, formats(**style))
                col += len(metrics)
            items = fold.get("test_items") if isinstance(fold.get("test_items"), list) else []
            write_cell(worksheet, row, items_col, ", ".join(map(str, items)),
                       formats(**fill, left=1, left_color=GRID_COLOR, indent=1))
            row += 1
    worksheet.freeze_panes(first_data_row, 4)
    set_print_layout(worksheet, first_data_row)


# ----------------------------------------------------------------------------------------------------------------
# Sheet "confusion": summed test confusion matrices, counts and row percentages

def write_confusion_sheet(workbook, formats, instances):
    """For each classification instance its summed test confusion matrix: counts, then row percentages."""
    worksheet = workbook.add_worksheet("confusion")
    write_title(worksheet, formats, "Test confusion matrices, summed over folds",
                "rows: true class, columns: predicted class; row % = share of the true class")
    matrices = [(instance, *summed_confusion(instance)) for instance in instances]
    size = max((len(matrix) for _, matrix, _ in matrices if matrix is not None), default=2)
    all_labels = [label for instance, matrix, _ in matrices if matrix is not None
                  for label in class_labels(instance, len(matrix))]
    worksheet.set_column(0, 0, text_width(all_labels + ["true \\ predicted"], (12, 30)))
    worksheet.set_column(1, 2 * size + 2, max(8, min(14, text_width(all_labels, (8, 14)))))
    worksheet.set_column(size + 2, size + 2, 3)
    row = 3
    for instance, matrix, summed in matrices:
        title = f"Instance {instance.id} ({instance.status})" + (f": {instance.comment_1}" if instance.comment_1
                                                                  else "")
        worksheet.write_string(row, 0, title, formats(bold=True, font_size=12))
        if matrix is None:
            worksheet.write_string(row + 1, 0, "no test confusion matrix (no completed fold)",
                                   formats(italic=True, font_color=EXCLUDED_FONT))
            row += 3
            continue
        row = write_confusion_block(worksheet, formats, row + 1, instance, matrix, summed) + 1
    worksheet.hide_gridlines(2)
    set_print_layout(worksheet, 1)


def write_confusion_block(worksheet, formats, row, instance, matrix, summed):
    """Counts at columns 1..n (+ total), row percentages from column n + 3; returns the next free row."""
    labels = class_labels(instance, len(matrix))
    size = len(labels)
    percent_col = size + 3
    write_header(worksheet, formats, row, 1, size + 1, f"counts ({summed} folds summed)")
    write_header(worksheet, formats, row, percent_col, percent_col + size - 1, "row %")
    write_header(worksheet, formats, row + 1, 0, 0, "true \\ predicted", sub=True)
    for index, label in enumerate(labels):
        write_header(worksheet, formats, row + 1, 1 + index, 1 + index, label, sub=True)
        write_header(worksheet, formats, row + 1, percent_col + index, percent_col + index, label, sub=True)
    write_header(worksheet, formats, row + 1, size + 1, size + 1, "total", sub=True)
    shares = row_percentages(matrix)
    cell = {"border": 1, "border_color": GRID_COLOR, "align": "center"}
    for true_index, label in enumerate(labels):
        r = row + 2 + true_index
        write_header(worksheet, formats, r, 0, 0, label, sub=True)
        for predicted in range(size):
            diagonal = {"bold": True} if predicted == true_index else {}
            worksheet.write_number(r, 1 + predicted, matrix[true_index, predicted],
                                   formats(**cell, **diagonal, num_format="0"))
            share = shares[true_index, predicted]
            write_cell(worksheet, r, percent_col + predicted, None if np.isnan(share) else float(share),
                       formats(**cell, **diagonal, num_format=PERCENT_FORMAT))
        worksheet.write_number(r, size + 1, matrix[true_index].sum(), formats(**cell, num_format="0", italic=True))
    worksheet.conditional_format(row + 2, percent_col, row + 1 + size, percent_col + size - 1,
                                 {"type": "2_color_scale", "min_type": "num", "min_value": 0,
                                  "max_type": "num", "max_value": 1,
                                  "min_color": CONFUSION_SCALE[0], "max_color": CONFUSION_SCALE[1]})
    return row + 2 + size


# ----------------------------------------------------------------------------------------------------------------
# Sheet "parameters": every resolved parameter, instances as columns

def write_parameters_sheet(workbook, formats, instances, output_path):
    """Rows: status, task, dataset, hash, parameters file, then every parameter; differing ones highlighted."""
    worksheet = workbook.add_worksheet("parameters")
    write_title(worksheet, formats, "Every resolved parameter of every instance",
                "highlighted: parameters whose value differs between instances")
    names = parameter_names(instances)
    header_row = 2
    write_header(worksheet, formats, header_row, 0, 0, "parameter")
    widths = [text_width(names + ["parameters file"], (14, 40))]
    for col, instance in enumerate(instances, start=1):
        write_header(worksheet, formats, header_row, col, col, f"ID {instance.id}")
        values = [parameter_display(value) for value in instance.parameters.values()]
        widths.append(text_width(values + [instance.status], (10, 30)))
    for col, width in enumerate(widths):
        worksheet.set_column(col, col, width)

    identity = [("status", lambda i: i.status), ("task type", lambda i: i.task_type),
                ("dataset", lambda i: i.dataset), ("parameter hash", lambda i: i.parameter_hash[:12])]
    grid = {"border": 1, "border_color": GRID_COLOR, "align": "left"}
    row = header_row + 1
    for label, value_of in identity:
        worksheet.write_string(row, 0, label, formats(**grid, italic=True))
        for col, instance in enumerate(instances, start=1):
            write_cell(worksheet, row, col, value_of(instance), formats(**grid, italic=True))
        row += 1
    worksheet.write_string(row, 0, "parameters file", formats(**grid, italic=True))
    for col, instance in enumerate(instances, start=1):
        write_parameters_link(worksheet, formats, row, col, instance, output_path)
    row += 1
    for name in names:
        keys = {canonical(i.parameters[name]) if name in i.parameters else "<missing>"
                for i in instances if i.parameters}
        differs = {"bg_color": DIFFERS_FILL} if len(keys) > 1 else {}
        worksheet.write_string(row, 0, name, formats(**grid, **differs, bold=bool(differs)))
        for col, instance in enumerate(instances, start=1):
            value = parameter_display(instance.parameters[name]) if name in instance.parameters else None
            write_cell(worksheet, row, col, value, formats(**grid, **differs))
        row += 1
    worksheet.freeze_panes(header_row + 1, 1)
    set_print_layout(worksheet, header_row + 1)


# ----------------------------------------------------------------------------------------------------------------
# Sheet "plots": the PNG files side by side, one instance under the other

def image_options(path):
    """insert_image options that show a PNG PLOT_HEIGHT_PIXELS high whatever its size and DPI."""
    width, height = png_size(path)
    natural_height = height * 96 / PLOT_DPI  # xlsxwriter shows a PNG at its stored DPI
    scale = PLOT_HEIGHT_PIXELS / natural_height
    return {"x_scale": scale, "y_scale": scale, "object_position": 3}, width * 96 / PLOT_DPI * scale


def write_plots_sheet(workbook, formats, instances, experiment_folder):
    """For each instance a title row, then its learning curves and confusion matrix next to each other."""
    worksheet = workbook.add_worksheet("plots")
    write_title(worksheet, formats, "Learning curves and test confusion matrices",
                f"PNG files in {PLOTS_SUBFOLDER}/; solid = train, dashed = validation, dot = best epoch")
    worksheet.hide_gridlines(2)
    # explicit widths: images are anchored to cells, and LibreOffice's default column width differs from Excel's
    worksheet.set_column_pixels(0, PLOTS_SHEET_COLUMNS - 1, DEFAULT_COLUMN_PIXELS)
    rows_per_plot = math.ceil(PLOT_HEIGHT_PIXELS / DEFAULT_ROW_PIXELS) + 2
    row = 3
    for instance in instances:
        title = f"Instance {instance.id} ({status_text(instance, fold_count(instances))})" + (
            f": {instance.comment_1}" if instance.comment_1 else "")
        worksheet.write_string(row, 0, title, formats(bold=True, font_size=12))
        plots = make_plots(experiment_folder, instance)
        x_offset = 0
        for kind in ("curves", "confusion"):
            if plots[kind] is None:
                continue
            options, width = image_options(plots[kind])
            worksheet.insert_image(row + 1, 0, str(plots[kind]), {**options, "x_offset": x_offset})
            x_offset += int(width) + PLOT_GAP_PIXELS
        if x_offset == 0:
            worksheet.write_string(row + 1, 0, "nothing to plot (no completed fold)",
                                   formats(italic=True, font_color=EXCLUDED_FONT))
            row += 3
        else:
            row += rows_per_plot + 1
    set_print_layout(worksheet, 1)


# ----------------------------------------------------------------------------------------------------------------
# The workbook

def check_output_path(output_path):
    """XvalError unless output_path ends in .xlsx and its folder exists."""
    output_path = Path(output_path)
    if output_path.suffix.lower() != ".xlsx":
        raise XvalError(f"output {output_path} must end in .xlsx: name it e.g. {output_path.stem}.xlsx")
    if not output_path.parent.is_dir():
        raise XvalError(f"output folder {output_path.parent} does not exist: create it or pick another path")
    return output_path


def build_workbook(path, instances, summaries, experiment_folder, output_path):
    """Write every sheet into a new xlsx file at path; links are made relative to output_path.

    summaries: {task type: routine_summary of that task type's instances}.
    """
    workbook = xlsxwriter.Workbook(str(path), {"strings_to_numbers": False, "strings_to_formulas": False,
                                               "strings_to_urls": False})
    formats = FormatCache(workbook)
    groups = group_by_task(instances)
    first_task_type = next(iter(groups))
    for task_type, group in groups.items():
        write_summary_sheet(workbook, formats, sheet_name("summary", task_type, first_task_type), group,
                            task_type, output_path, summaries[task_type])
    for task_type, group in groups.items():
        write_folds_sheet(workbook, formats, sheet_name("folds", task_type, first_task_type), group, task_type)
    if "classification" in groups:
        write_confusion_sheet(workbook, formats, groups["classification"])
    write_parameters_sheet(workbook, formats, instances, output_path)
    write_plots_sheet(workbook, formats, instances, experiment_folder)
    workbook.close()


def write_spreadsheet(experiment_folder, output_path=None):
    """Write the results spreadsheet of an experiment folder atomically and return its path.

    output_path defaults to EXPERIMENT_FOLDER/{dataset}_exp{N}_results_spreadsheet.xlsx. Raises XvalError when
    the folder holds no readable result file or the output cannot be written.
    """
    experiment_folder = Path(experiment_folder).resolve()
    check_experiment_folder(experiment_folder)
    instances = load_instances(experiment_folder)
    if not instances:
        raise XvalError(f"no results in {experiment_folder / RESULTS_SUBFOLDER} (expected "
                        "results_{dataset}_exp{N}_run{R}.json): run at least one instance first")
    output_path = check_output_path(output_path or default_output_path(experiment_folder, instances)).resolve()
    summaries = {task_type: routine_summary(group, task_type) for task_type, group in group_by_task(instances).items()}
    temp = temp_path_for(output_path)
    try:
        atomic_write_json(summary_path(experiment_folder, instances),
                          {"experiment": instances[0].experiment, "datasets": list(dict.fromkeys(
                              instance.dataset for instance in instances)), "about": SUMMARY_ABOUT,
                           "task_types": summaries})
        build_workbook(temp, instances, summaries, experiment_folder, output_path)
        commit_temp_file(temp, output_path)
    except (OSError, xlsxwriter.exceptions.XlsxWriterException) as error:
        raise XvalError(f"cannot write {output_path} ({error}): check the folder is writable and the file "
                        "is not open in another program") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
    return output_path


def main(argv=None):
    """Command line: python3 results_to_excel.py EXPERIMENT_FOLDER [OUTPUT.xlsx]."""
    parser = argparse.ArgumentParser(description="Write the results spreadsheet of one experiment folder.")
    parser.add_argument("experiment_folder", help="an experiment_{N} folder (the one holding results/)")
    parser.add_argument("output", nargs="?", help="spreadsheet to write (default: in the experiment folder)")
    parser.add_argument("--debug", action="store_true", help="show a traceback instead of one error line")
    arguments = parser.parse_args(argv)
    path = exit_on_user_error(lambda: write_spreadsheet(arguments.experiment_folder, arguments.output),
                              debug=arguments.debug)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
