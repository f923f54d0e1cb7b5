"""The spreadsheet of one experiment: which instance is best, the number to report, and whether the rest differ.

    python3 results_to_excel.py EXPERIMENT_FOLDER [OUTPUT.xlsx]

A read-only view of the results that collect.py reads back and sums up, with the plots of plots.py: writes
atomically, into EXPERIMENT_FOLDER, the spreadsheet (by default {dataset}_exp{N}_results_spreadsheet.xlsx, named after
the lowest-numbered instance), plots/*.png and {dataset}_exp{N}_summary.json. Sheets (see README.md):
summary(_{task type}), folds(_*), confusion, parameters, plots. Each sheet's content is a table: a Col (kind,
header, width) per column, a dict per row; write_table() formats a cell by its kind (KIND_STYLES) and the RULES.
"""
import argparse
import contextlib
import io
import json
import math
import os
import sys
import tempfile
import time
from itertools import groupby
from pathlib import Path
from typing import NamedTuple

import pandas as pd
import xlsxwriter
import xlsxwriter.exceptions

from collect import (FOLD_DEFAULTS, OTHER_SPLIT, SIGNIFICANCE_LEVEL, STATUSES, TEST_NAME, baseline_lines, by_task,
                     finite_number, honest_lines, load_baselines, load_instances, metric_label, routine_summaries,
                     search_lines, search_summaries, significance, summed_confusion, write_routine_summary)
from layout import Layout
from plots import PLOT_DPI, make_plots, search_plots
from registries import HIGHER_IS_BETTER, MAIN_METRIC, TASK_TYPES, metric_names
from utility_functions import (SPLITS, XvalError, commit_temp_file, exit_on_user_error, storage_error, temp_path_for,
                               unwritable)

STATS = ("mean", "std")
METRICS_BY_TASK = {task_type: metric_names(task_type) for task_type in TASK_TYPES}
SPLIT_LABELS = {"train": "train", "val": "validation", "test": "test"}
TIMING_STEPS = ("data", "build", "fit", "evaluate", "save")  # a fold's "timings" in seconds, when it has them
EXCLUDED_FROM_COMPARISON = ("comment_1", "comment_2", "task_type")  # shown in their own columns or per sheet

# The look of the workbook: what each kind of column (KIND_STYLES; None: left empty) and each highlight adds to a cell
BEST_FILL, LOWEST_STD_FILL, HEADER_FILL, GRID_COLOR = "#C6EFCE", "#BDD7EE", "#1F4E79", "#BFBFBF"
METRIC_FORMAT, FAILED_FONT, COMMENT_WIDTH = "0.000", "#9C0006", (10, 40)  # width: (min, max) to fit the texts
GRID = {"border": 1, "border_color": GRID_COLOR}
SUMMARY_CELL = {"bottom": 1, "bottom_color": GRID_COLOR, "valign": "vcenter"}
BLOCK_START, BLOCK_END = {"left": 1, "left_color": GRID_COLOR}, {"right": 2, "right_color": HEADER_FILL}
HEADER = {"bold": True, "align": "center", "valign": "vcenter", "text_wrap": True, **GRID, "bg_color": HEADER_FILL,
          "font_color": "#FFFFFF"}
SUBHEADER = {**HEADER, "bg_color": "#D9E1F2", "font_color": "#000000"}
LINK = {**SUMMARY_CELL, "font_color": "#0563C1", "underline": 1}  # a link looks the same on every sheet
KIND_STYLES = {"id": {"bold": True, "align": "center"}, "parameter": {"align": "left"},
               "error": {"font_color": FAILED_FONT}, "label": {"align": "center"},
               "p_value": {"num_format": "[<0.001]0.0E+00;0.000"}, "metric": {"num_format": METRIC_FORMAT},
               "metric_mean": {"num_format": METRIC_FORMAT, **BLOCK_START}, "metric_std": {"num_format": METRIC_FORMAT},
               "seconds": {"num_format": "0.0"}, "index": {"align": "center"}, "count": {"num_format": "0"},
               "total": {"num_format": "0", "italic": True}, "percent": {"num_format": "0.0%"},
               "items": {"indent": 1, **BLOCK_START}, "row_header": SUBHEADER, "gap": None}  # others: {}
HIGHLIGHTS = {"band": {"bg_color": "#F2F2F2"}, "excluded": {"font_color": "#808080", "italic": True},
              "failed": {"bg_color": "#FFC7CE", "font_color": FAILED_FONT, "bold": True},
              "incomplete": {"bg_color": "#FFEB9C", "font_color": "#9C5700", "bold": True},
              "best": {"bg_color": BEST_FILL, "font_color": "#006100", "bold": True},  # best mean of a column
              "lowest_std": {"bg_color": LOWEST_STD_FILL, "font_color": "#1F3864"},  # lowest std of a column
              "differs": {"bg_color": "#FFF2CC"}, "bold": {"bold": True}, "italic": {"italic": True}}
# (highlight, the kinds of column it applies to (None: all), its cells: f(d: the table data, v: the column's values,
# c: its Col) -> bool per row); they read the hidden row facts _status, _band, _class, _italic and _differs; a later
# rule wins
RULES = (("band", None, lambda d, v, c: d.get("_band", 0) % 2 == 1),
         ("excluded", ("metric", "metric_mean", "metric_std"),
          lambda d, v, c: d.get("_status", "complete") != "complete"),
         ("failed", ("status",), lambda d, v, c: d.get("_status") == "failed"),
         ("incomplete", ("status",), lambda d, v, c: d.get("_status") == "incomplete"),
         ("best", ("metric_mean",), lambda d, v, c: extreme_cells(v, d, HIGHER_IS_BETTER[c.key])),
         ("lowest_std", ("metric_std",), lambda d, v, c: extreme_cells(v, d, False)),
         ("bold", ("label",), lambda d, v, c: v.isin(("best", "yes"))),
         ("bold", ("count", "percent"), lambda d, v, c: d.get("_class", -1) == c.key),  # the diagonal
         ("italic", None, lambda d, v, c: d.get("_italic", False)),
         ("differs", None, lambda d, v, c: d.get("_differs", False)),
         ("bold", ("name",), lambda d, v, c: d.get("_differs", False)))
PLOT_HEIGHT_PIXELS, PLOT_GAP_PIXELS, DEFAULT_ROW_PIXELS, DEFAULT_COLUMN_PIXELS = 330, 16, 20, 64
PLOTS_SHEET_COLUMNS = 40  # columns under the images, given explicit widths


# ---- What the cells show: parameters that differ, statuses, summed confusion matrices

def differs(rows, name):
    """Whether the parameter name has more than one value in rows (missing counts as a value; True != 1 != 1.0)."""
    return len({json.dumps(row[name], sort_keys=True, default=str) if name in row else "<missing>"
                for row in rows}) > 1


def split_parameters(instances):
    """(names of the parameters whose value differs between instances, {name: value} of those all share); instances
    without parameters (some failed ones) are left out, the dataset counts as a parameter."""
    rows = [{"dataset": instance.dataset, **instance.parameters} for instance in instances if instance.parameters]
    names = [name for name in dict.fromkeys(key for row in rows for key in row)
             if name not in EXCLUDED_FROM_COMPARISON]
    varying = [name for name in names if differs(rows, name)]
    return varying, {name: rows[0][name] for name in names if name not in varying}


def parameter_display(value):
    """A parameter value for a cell: finite numbers and texts as they are, the rest written the way Python would."""
    return value if isinstance(value, str) or finite_number(value) else repr(value)


def status_text(instance, instances):
    """'complete', 'failed' or 'incomplete, 3/5 folds' (5: the highest fold number any of instances reached)."""
    done, k = len(instance.folds), fold_count(instances)
    if instance.status != "incomplete":
        return instance.status
    return f"incomplete, {done}/{k} folds" if k > done else f"incomplete, {done} folds"


def fold_count(instances):
    """k: the highest fold number any instance reached (0 without folds)."""
    return max((fold["fold"] for instance in instances for fold in instance.folds), default=0)


# ---- Tables: columns that have a kind, rows of values, and the one function that writes them to a worksheet

class Link(NamedTuple):
    """A cell that links to a file: its text and its target relative to the spreadsheet (None: the file is missing)."""
    text: str
    target: str | None


class Col(NamedTuple):
    """A table column: its kind (which picks its cells' format); its header group (merged over neighbours of the same
    group; without a label it spans both header rows) and label; its width (characters, or (min, max) to fit its
    texts); its key (a metric, a class index) for the RULES; the borders that set off a block of columns."""
    kind: str
    group: str
    label: str | None = None
    width: float | tuple | None = None
    key: object = None
    style: dict = {}


def is_blank(value):
    """Whether a value shows as an empty cell: None, '' or NaN."""
    return value is None or (isinstance(value, str) and not value) or (isinstance(value, float) and math.isnan(value))


def text_width(values, limits):
    """A column width that fits the longest value, within limits (minimum, maximum)."""
    return max(limits[0], min(limits[1], max((len(str(value)) for value in values), default=0) + 2))


def extreme_cells(column, data, higher_is_better):
    """The rows of the complete instances with the best value of column (none unless at least two compete)."""
    values = column.where(data["_status"] == "complete").astype(float)
    return values.count() > 1 and values == (values.max() if higher_is_better else values.min())


def highlights(data, name, col):
    """The highlight properties of each cell of a column, from the RULES that apply to its kind."""
    styles = [{} for _ in range(len(data))]
    for look, kinds, marks in RULES:
        if kinds is None or col.kind in kinds:
            for style, marked in zip(styles, pd.Series(marks(data, data[name], col), index=data.index)):
                style.update(HIGHLIGHTS[look] if marked else {})
    return styles


def write_header(worksheet, formats, row, columns):
    """The header of a table at row: a labelled group merged over its columns with the labels under it, an unlabelled
    column's group alone down all the header rows. Returns the number of header rows (1, or 2 with labels)."""
    header_rows, col = 2 if any(column.label for column in columns) else 1, 0
    for (group, labelled), run in groupby(columns, key=lambda column: (column.group, bool(column.label))):
        labels = [column.label for column in run]
        spans = [(col, col + len(labels) - 1, row)] if labelled else \
            [(at, at, row + header_rows - 1) for at in range(col, col + len(labels))]
        for first, last, bottom in spans if group else ():
            if (first, row) == (last, bottom):
                worksheet.write_string(row, first, group, formats(**HEADER))
            else:
                worksheet.merge_range(row, first, bottom, last, group, formats(**HEADER))
        for offset, label in enumerate(labels if labelled else ()):
            worksheet.write_string(row + 1, col + offset, label, formats(**SUBHEADER))
        col += len(labels)
    return header_rows


def write_table(worksheet, formats, columns, rows, row, base, frozen_columns=None):
    """Write a table at row: the header of columns ({name: Col}, left to right), then its rows (a dict each: a value
    per column and hidden row facts for the RULES, named _*), each cell formatted by base, its column's kind and
    style, and the RULES that mark it; with frozen_columns, freeze the header and those columns and print the rows
    down to the header on every page. Returns the row after the table."""
    data, top = pd.DataFrame(rows, dtype=object), row + write_header(worksheet, formats, row, columns.values())
    for col, (name, column) in enumerate(columns.items()):
        if column.width is not None:
            texts = [value.text if isinstance(value, Link) else "" if is_blank(value) else value
                     for value in data[name]]
            worksheet.set_column(col, col, text_width(texts + [column.group], column.width)
                                 if isinstance(column.width, tuple) else column.width)
        if KIND_STYLES.get(column.kind, {}) is None:
            continue
        for cell_row, value, marks in zip(range(top, top + len(data)), data[name], highlights(data, name, column)):
            if isinstance(value, Link) and value.target:
                worksheet.write_url(cell_row, col, f"external:{value.target}", formats(**LINK), string=value.text,
                                    tip=value.target)
            elif isinstance(value, Link):
                worksheet.write_string(cell_row, col, "missing", formats(**SUMMARY_CELL, **HIGHLIGHTS["excluded"]))
            else:
                worksheet.write(cell_row, col, None if is_blank(value) else value,
                                formats(**{**base, **KIND_STYLES.get(column.kind, {}), **column.style, **marks}))
    if frozen_columns is not None:
        worksheet.freeze_panes(top, frozen_columns)
        worksheet.repeat_rows(0, top - 1)
    return top + len(data)


def new_sheet(workbook, formats, name, title, subtitle):
    """A worksheet with a bold title and a grey subtitle, printed landscape on A4, one page wide."""
    worksheet = workbook.add_worksheet(name)
    worksheet.write_string(0, 0, title, formats(bold=True, font_size=14))
    worksheet.write_string(1, 0, subtitle, formats(italic=True, font_color="#595959"))
    worksheet.set_landscape()
    worksheet.set_paper(9)
    worksheet.fit_to_pages(1, 0)
    worksheet.repeat_rows(0)
    return worksheet


def parameters_link(instance, output_path):
    """A Link to the instance's parameters file, relative to the spreadsheet's folder (as Excel resolves links)."""
    return Link(f"run {instance.id}", os.path.relpath(instance.parameters_file, Path(output_path).parent)
                if instance.parameters_file and instance.parameters_file.is_file() else None)


def write_instance_title(worksheet, formats, row, instance, status):
    """'Instance 3 (complete): its comment 1' at row, above an instance's confusion matrix or plots."""
    worksheet.write_string(row, 0, f"Instance {instance.id} ({status})" + (f": {instance.comment_1}" if
                                                                           instance.comment_1 else ""),
                           formats(bold=True, font_size=12))


# ---- The sheets

def summary_table(instances, task_type, output_path, summary):
    """(columns, rows) of a summary sheet, a row per instance: ID, link, comments, the parameters that differ, status,
    error, p-value and label, then the mean and std over folds of every metric (the main one first) on every split."""
    main, (varying, _) = MAIN_METRIC[task_type], split_parameters(instances)
    metrics = [main] + [m for m in METRICS_BY_TASK[task_type] if m != main]
    tested = significance(instances, task_type, ((summary or {}).get("chosen_on_validation") or {}).get("instance"))
    columns = {"id": Col("id", "ID", width=5), "link": Col("link", "parameters", width=11),
               "comment_1": Col("text", "comment 1", width=COMMENT_WIDTH),
               "comment_2": Col("text", "comment 2", width=COMMENT_WIDTH),
               **{f"parameter {name}": Col("parameter", name, width=(8, 24)) for name in varying},
               "status": Col("status", "status", width=(10, 24)), "error": Col("error", "error", width=12),
               "p_value": Col("p_value", f"p vs best (test {metric_label(main)})", width=11),
               "label": Col("label", f"differs from best (p < {SIGNIFICANCE_LEVEL})", width=11),
               **{f"{split} {metric} {stat}": Col(f"metric_{stat}", metric_label(metric),
                                                  f"{split} mean" if stat == "mean" else "std", 8, metric,
                                                  BLOCK_END if (split, stat) == ("test", "std") else {})
                  for metric in metrics for split in SPLITS for stat in STATS}}
    rows = [{"id": i.id, "link": parameters_link(i, output_path), "comment_1": i.comment_1, "comment_2": i.comment_2,
             **{f"parameter {name}": i.dataset if name == "dataset" else parameter_display(i.parameters[name])
                if name in i.parameters else None for name in varying},
             "status": status_text(i, instances), "error": i.error, "p_value": tested[i.id][0],
             "label": tested[i.id][1], **{f"{split} {metric} {stat}": i.summary.get(split, {}).get(metric, {}).get(stat)
                                          for metric in metrics for split in SPLITS for stat in STATS},
             "_status": i.status} for i in instances]
    if summary and summary.get("baseline"):
        rows.append(baseline_row(instances, task_type, output_path, summary["baseline"], metrics))
    return columns, rows


def baseline_row(instances, task_type, output_path, entry, metrics):
    """The summary table's row of the baseline (collect.baseline_summary's entry): a link to its file, what it is,
    its p-value against the chosen instance and its metrics, in grey italics and never marked best (its _status is
    not complete)."""
    path = Layout(instances[0].source.parent.parent, instances[0].dataset, instances[0].experiment).baseline(task_type)
    versus = entry["chosen_vs_baseline"] or {}
    return {"id": None, "link": Link("baseline", os.path.relpath(path, Path(output_path).parent)),
            "comment_1": "baseline (a yardstick, never chosen)", "comment_2": entry["about"], "status": "baseline",
            "error": None, "p_value": versus.get("p_value"), "label": versus.get("differs"),
            **{f"{split} {metric} {stat}": entry["summary"].get(split, {}).get(metric, {}).get(stat)
               for metric in metrics for split in SPLITS for stat in STATS},
            "_status": "baseline", "_italic": True}


def write_summary_sheet(workbook, formats, name, instances, task_type, output_path, summary):
    """The sentences that say which instance is chosen and which number to report, the summary table (ID, link and
    comment 1 stay in view when scrolling right), the legend and the parameters all instances share."""
    counts = ", ".join(f"{sum(i.status == status for i in instances)} {status}" for status in STATUSES)
    counts += "".join(f", {n} on another split" for n in [sum(i.status == OTHER_SPLIT for i in instances)] if n)
    dependent = [i.foldable_item for i in instances if not i.speaker_independent]
    warning = f" (folds by {dependent[0]}: speaker-dependent results)" if dependent else ""
    worksheet = new_sheet(workbook, formats, name, f"Experiment {instances[0].experiment}: "
                          f"{', '.join(dict.fromkeys(i.dataset for i in instances))}, {task_type}{warning}",
                          f"{len(instances)} instances ({counts}), {fold_count(instances)} folds; mean and std over "
                          f"folds. Updated {time.strftime('%Y-%m-%d %H:%M')}")
    lines = honest_lines(summary) + baseline_lines(summary)
    for offset, line in enumerate(lines):
        worksheet.write_string(2 + offset, 0, line, formats(bold=offset < 2, font_color="#1F3864"))
    header_row = 3 + len(lines)
    end = write_table(worksheet, formats, *summary_table(instances, task_type, output_path, summary), header_row,
                      SUMMARY_CELL, frozen_columns=3)
    worksheet.set_row(header_row, 30)
    worksheet.set_row(header_row + 1, 30)
    write_summary_notes(worksheet, formats, end + 1, instances, task_type)
    worksheet.hide_gridlines(2)


def write_summary_notes(worksheet, formats, row, instances, task_type):
    """From row down, under the summary table: the legend, how to read the significance columns, and the parameters
    all instances share."""
    metrics = METRICS_BY_TASK[task_type]
    higher, lower = (", ".join(metric_label(m) for m in metrics if HIGHER_IS_BETTER[m] is wanted) for wanted in
                     (True, False))
    notes = [({**HIGHLIGHTS["best"], **GRID}, "best", f"best mean of its column among complete instances (highest "
              f"{higher}; lowest {lower}); on test columns only a description: the instance marked 'best' is chosen "
              "on validation"),
             ({**HIGHLIGHTS["lowest_std"], **GRID}, "std", "lowest std over folds among complete instances (the "
              "steadiest)"),
             (HIGHLIGHTS["excluded"], "grey", "incomplete or failed instance: shown, but never best and not tested"),
             ({"bold": True, **GRID, "align": "center"}, "test", f"p vs best: {TEST_NAME} of each complete instance "
              "against the best one (chosen on validation) on the per-fold test "
              f"{metric_label(MAIN_METRIC[task_type])}, paired by fold number; 'yes' = the difference is significant "
              f"at {SIGNIFICANCE_LEVEL} (not corrected for multiple comparisons); 'n/a' = fewer than 2 folds to pair."),
             (None, "", "A t-test because with 4 or 5 folds a Wilcoxon signed-rank test can never reach 0.05 (its "
              "smallest two-sided p-value with n folds is 2/2^n), and it is weak up to 10 folds.")]
    for offset, (look, sample, text) in enumerate(notes):
        if sample:
            worksheet.write_string(row + offset, 0, sample, formats(**look))
        worksheet.write_string(row + offset, 1, text, formats(font_color="#404040"))
    row += len(notes) + 1
    worksheet.write_string(row, 0, f"Parameters shared by all {len(instances)} instances (those that differ are "
                           "columns of the table; all are on the parameters sheet)", formats(bold=True))
    for offset, (parameter, value) in enumerate(split_parameters(instances)[1].items(), start=1):
        worksheet.write_string(row + offset, 1, f"{parameter} = {parameter_display(value)}", formats())


def write_folds_sheet(workbook, formats, name, instances, task_type):
    """One row per instance and fold (one empty row for an instance without folds): best epoch, epochs run, seconds,
    the seconds of each step (when a fold recorded timings), every metric on every split and the test items."""
    worksheet = new_sheet(workbook, formats, name, f"Experiment {instances[0].experiment}: every fold ({task_type})",
                          "one row per instance and fold; failed instances without folds have one empty row")
    metrics = METRICS_BY_TASK[task_type]
    steps = TIMING_STEPS if any(fold["timings"] for instance in instances for fold in instance.folds) else ()
    columns = {"id": Col("id", "ID", width=5), "comment_1": Col("text", "comment 1", width=COMMENT_WIDTH),
               "status": Col("status", "status", width=11), "fold": Col("index", "fold", width=5),
               "best_epoch": Col("index", "best epoch", width=7), "epochs_run": Col("index", "epochs run", width=7),
               "seconds": Col("seconds", "seconds", width=8),
               **{step: Col("seconds", f"{step} s", width=8) for step in steps},
               **{f"{split} {metric}": Col("metric", SPLIT_LABELS[split], metric_label(metric), 9, metric,
                                           BLOCK_START if metric == metrics[0] else {})
                  for split in SPLITS for metric in metrics}, "test_items": Col("items", "test items", width=30)}
    rows = [{"id": i.id, "comment_1": i.comment_1, "status": i.status,
             **{key: fold.get(key) for key in ("fold", "best_epoch", "epochs_run", "seconds")},
             **{step: fold["timings"].get(step) for step in steps},
             **{f"{split} {m}": fold["metrics"].get(split, {}).get(m) for split in SPLITS for m in metrics},
             "test_items": ", ".join(map(str, fold["test_items"])), "_status": i.status, "_band": band}
            for band, i in enumerate(instances) for fold in i.folds or [FOLD_DEFAULTS]]
    write_table(worksheet, formats, columns, rows, 2, {}, frozen_columns=4)
    worksheet.set_row(3, 30)


def write_confusion_sheet(workbook, formats, instances):
    """For each classification instance its summed test confusion matrix: a row per true class with its counts and
    total, then its row percentages."""
    worksheet = new_sheet(workbook, formats, "confusion", "Test confusion matrices, summed over folds",
                          "rows: true class, columns: predicted class; row % = share of the true class")
    confusions = [(instance, *summed_confusion(instance)) for instance in instances]
    names = [label for *_, labels, _ in confusions for label in labels]
    widest = max((len(labels) for *_, labels, _ in confusions), default=2) or 2
    worksheet.set_column(0, 0, text_width(names + ["true \\ predicted"], (12, 30)))
    worksheet.set_column(1, 2 * widest + 2, text_width(names, (8, 14)))
    worksheet.set_column(widest + 2, widest + 2, 3)
    row = 3
    for instance, matrix, summed, labels, shares in confusions:
        write_instance_title(worksheet, formats, row, instance, instance.status)
        if matrix is None:
            worksheet.write_string(row + 1, 0, "no test confusion matrix (no completed fold)",
                                   formats(**HIGHLIGHTS["excluded"]))
            row += 3
            continue
        counts, size = f"counts ({summed} folds summed)", len(labels)
        columns = {"true": Col("row_header", "", "true \\ predicted"),
                   **{f"count {j}": Col("count", counts, labels[j], key=j) for j in range(size)},
                   "total": Col("total", counts, "total"), "gap": Col("gap", ""),
                   **{f"share {j}": Col("percent", "row %", labels[j], key=j) for j in range(size)}}
        rows = [{"true": labels[i], **{f"count {j}": matrix[i, j] for j in range(size)}, "total": matrix[i].sum(),
                 "gap": None, **{f"share {j}": shares[i, j] for j in range(size)}, "_class": i} for i in range(size)]
        end = write_table(worksheet, formats, columns, rows, row + 1, {**GRID, "align": "center"})
        worksheet.conditional_format(row + 3, size + 3, end - 1, 2 * size + 2, {
            "type": "2_color_scale", "min_type": "num", "min_value": 0, "max_type": "num", "max_value": 1,
            "min_color": "#FFFFFF", "max_color": "#63BE7B"})
        row = end + 1
    worksheet.hide_gridlines(2)


def write_parameters_sheet(workbook, formats, instances, output_path):
    """Parameters as rows, instances as columns: status, task, dataset, hash and parameters file, then every resolved
    parameter, highlighted where its value differs between instances."""
    worksheet = new_sheet(workbook, formats, "parameters", "Every resolved parameter of every instance",
                          "highlighted: parameters whose value differs between instances")
    columns = {"name": Col("name", "parameter", width=(14, 40)),
               **{f"id {i.id}": Col("parameter", f"ID {i.id}", width=(10, 30)) for i in instances}}
    about = {"status": lambda i: i.status, "task type": lambda i: i.task_type, "dataset": lambda i: i.dataset,
             "parameter hash": lambda i: i.parameter_hash[:12],
             "parameters file": lambda i: parameters_link(i, output_path)}
    rows = [{"name": label, **{f"id {i.id}": value_of(i) for i in instances}, "_italic": True, "_differs": False}
            for label, value_of in about.items()]
    compared = [i.parameters for i in instances if i.parameters]
    rows += [{"name": name, **{f"id {i.id}": parameter_display(i.parameters[name]) if name in i.parameters else None
                               for i in instances}, "_italic": False, "_differs": differs(compared, name)}
             for name in dict.fromkeys(name for i in instances for name in i.parameters)]
    write_table(worksheet, formats, columns, rows, 2, {**GRID, "align": "left"}, frozen_columns=1)


def write_plots_sheet(workbook, formats, instances, plots_root):
    """For each instance a title row, then its learning curves and confusion matrix next to each other."""
    worksheet = new_sheet(workbook, formats, "plots", "Learning curves and test confusion matrices",
                          f"PNG files in {Layout(plots_root, None, None).plots.name}/; solid = train, dashed = "
                          "validation, dot = best epoch")
    worksheet.hide_gridlines(2)
    # explicit widths: images are anchored to cells, and LibreOffice's default column width differs from Excel's
    worksheet.set_column_pixels(0, PLOTS_SHEET_COLUMNS - 1, DEFAULT_COLUMN_PIXELS)
    row = 3
    for instance in instances:
        write_instance_title(worksheet, formats, row, instance, status_text(instance, instances))
        x_offset = 0
        for path in filter(None, make_plots(plots_root, instance)):
            header = path.read_bytes()[:24]  # a PNG's width and height in pixels are at bytes 16 and 20
            width, height = int.from_bytes(header[16:20], "big"), int.from_bytes(header[20:24], "big")
            scale = PLOT_HEIGHT_PIXELS / (height * 96 / PLOT_DPI)  # xlsxwriter shows a PNG at its stored DPI
            worksheet.insert_image(row + 1, 0, str(path), {"x_scale": scale, "y_scale": scale, "object_position": 3,
                                                           "x_offset": x_offset})
            x_offset += int(width * 96 / PLOT_DPI * scale) + PLOT_GAP_PIXELS
        if x_offset == 0:
            worksheet.write_string(row + 1, 0, "nothing to plot (no completed fold)", formats(**HIGHLIGHTS["excluded"]))
        row += 3 if x_offset == 0 else math.ceil(PLOT_HEIGHT_PIXELS / DEFAULT_ROW_PIXELS) + 3


def write_search_sheet(workbook, formats, entry, instances, plots_root):
    """A search's sheet: the sentences on its numbers (which one to report), a row per trial (its parameters, status,
    folds run, mean validation and test main metric; pruned trials marked), and Optuna's optimisation history and
    parameter importances."""
    key, task_type = entry["search"], entry["task_type"]
    trials = sorted((i for i in instances if i.search and i.search["search"] == key), key=lambda i: i.id)
    metric = MAIN_METRIC[task_type]
    worksheet = new_sheet(workbook, formats, f"search {key}", f"Search {key}: {len(trials)} trials, {task_type}",
                          "A trial is an instance (run {R}); pruned: stopped by the pruner after the fold shown, never "
                          "chosen; repeat: the sampler proposed an earlier trial's point again, whose result stands "
                          f"for it (no fold trained). Updated {time.strftime('%Y-%m-%d %H:%M')}")
    lines = search_lines(entry)
    for offset, line in enumerate(lines):
        worksheet.write_string(2 + offset, 0, line, formats(bold=offset == 1, font_color="#1F3864"))
    names = list(dict.fromkeys(name for trial in trials for name in trial.search["params"]))
    header = ["trial", "instance", "status", "folds run", *names, f"val {metric_label(metric)} mean",
              f"test {metric_label(metric)} mean"]
    row = 3 + len(lines)
    for col, text in enumerate(header):
        worksheet.write_string(row, col, text, formats(bold=True, bottom=1, text_wrap=True))
    worksheet.set_column(0, len(header) - 1, 14)
    best = (entry["summary"] or {}).get("chosen_on_validation") or {}
    for trial in trials:
        row += 1
        style = HIGHLIGHTS["best"] if trial.id == best.get("instance") else \
            HIGHLIGHTS["excluded"] if trial.status != "complete" else {}
        status = f"pruned after fold {trial.pruned_after_fold}" if trial.status == "pruned" else \
            f"repeat of trial {trial.repeat_of - key} (instance {trial.repeat_of})" if trial.status == "repeat" \
            else trial.status
        values = [trial.search["trial"], trial.id, status, len(trial.folds),
                  *[parameter_display(trial.search["params"].get(name)) for name in names],
                  *[(trial.summary or {}).get(split, {}).get(metric, {}).get("mean") for split in ("val", "test")]]
        for col, value in enumerate(values):
            worksheet.write(row, col, value, formats(**style, **({"num_format": "0.000"} if isinstance(value, float)
                                                                  else {})))
    row += 2
    x_offset = 0
    for path in filter(None, search_plots(plots_root, key)):
        header_bytes = path.read_bytes()[:24]  # a PNG's width and height in pixels are at bytes 16 and 20
        width, height = int.from_bytes(header_bytes[16:20], "big"), int.from_bytes(header_bytes[20:24], "big")
        scale = PLOT_HEIGHT_PIXELS / (height * 96 / PLOT_DPI)
        worksheet.insert_image(row, 0, str(path), {"x_scale": scale, "y_scale": scale, "object_position": 3,
                                                   "x_offset": x_offset})
        x_offset += int(width * 96 / PLOT_DPI * scale) + PLOT_GAP_PIXELS
    if x_offset == 0:
        worksheet.write_string(row, 0, "no plot: Optuna is not installed here, or no trial is complete yet",
                               formats(**HIGHLIGHTS["excluded"]))


# ---- The workbook

def build_workbook(path, instances, summaries, plots_root, output_path, said=()):
    """Write every sheet into a new xlsx file at path, links relative to output_path; summaries: {task type:
    routine_summary of its instances}; said: what reading the results files warned about (a last 'warnings'
    sheet)."""
    buffer = io.BytesIO()  # built in memory, then written as one file: a full disk fails in our write, not in a zip
    workbook = xlsxwriter.Workbook(buffer, {"strings_to_numbers": False, "strings_to_formulas": False,
                                            "strings_to_urls": False, "in_memory": True})
    made = {}  # one xlsxwriter format per distinct set of properties (Excel wants few, reused formats)

    def formats(**properties):
        key = tuple(sorted(properties.items()))
        return made[key] if key in made else made.setdefault(key, workbook.add_format(properties))

    groups = by_task(instances)
    suffix = {task_type: "" if task_type == instances[0].task_type else f"_{task_type}" for task_type in groups}
    for task_type, group in groups.items():
        write_summary_sheet(workbook, formats, f"summary{suffix[task_type]}", group, task_type, output_path,
                            summaries[task_type])
    for task_type, group in groups.items():
        write_folds_sheet(workbook, formats, f"folds{suffix[task_type]}", group, task_type)
    if "classification" in groups:
        write_confusion_sheet(workbook, formats, groups["classification"])
    for entry in search_summaries(instances).values():
        write_search_sheet(workbook, formats, entry, instances, plots_root)
    write_parameters_sheet(workbook, formats, instances, output_path)
    write_plots_sheet(workbook, formats, instances, plots_root)
    if said:
        write_warnings_sheet(workbook, formats, said)
    workbook.close()
    Path(path).write_bytes(buffer.getvalue())


def write_warnings_sheet(workbook, formats, said):
    """The 'warnings' sheet (last): what reading the results files warned about, one line each (a damaged or stray
    file left out), so that a reader of the workbook sees what its numbers do not include."""
    worksheet = new_sheet(workbook, formats, "warnings", f"{len(said)} warnings while reading the results files",
                          "These files, or parts of them, are not in the other sheets' numbers. Updated "
                          f"{time.strftime('%Y-%m-%d %H:%M')}")
    for row, line in enumerate(said, 2):
        worksheet.write_string(row, 0, line, formats(font_color="#C00000"))


def write_spreadsheet(experiment_folder, output_path=None):
    """Write the routine summary JSON and the results spreadsheet of an experiment folder atomically (by default as
    the Layout's workbook, named after the lowest-numbered instance) and return its path; XvalError when the folder
    holds no readable result file or the output cannot be written.

    A view needs nothing but to read: from a folder that cannot be written (an archive, a colleague's), the workbook
    goes to output_path elsewhere, its plots are drawn in a scratch folder, and the summary JSON is not written."""
    experiment_folder = Path(experiment_folder).resolve()
    said = []  # what reading the results files warned about: in the workbook and the summary JSON too
    instances = load_instances(experiment_folder, said)
    output_path = Path(output_path or Layout(experiment_folder, instances[0].dataset, instances[0].experiment).workbook)
    if output_path.suffix.lower() != ".xlsx":
        raise XvalError(f"output {output_path} must end in .xlsx: name it e.g. {output_path.stem}.xlsx")
    if not output_path.parent.is_dir():
        raise XvalError(f"output folder {output_path.parent} does not exist: create it or pick another path")
    output_path, temp = output_path.resolve(), temp_path_for(output_path.resolve())
    read_only = unwritable(experiment_folder)
    if read_only and output_path.is_relative_to(experiment_folder):
        raise XvalError(f"{experiment_folder} cannot be written ({read_only}): pass an OUTPUT.xlsx elsewhere, e.g. "
                        f"python3 results_to_excel.py {experiment_folder} ~/{output_path.name}")
    try:
        with contextlib.ExitStack() as scratch:
            plots_root = Path(scratch.enter_context(tempfile.TemporaryDirectory())) if read_only else experiment_folder
            baselines = load_baselines(experiment_folder, instances, said, quiet=False)
            summaries = routine_summaries(instances, baselines) if read_only else \
                write_routine_summary(experiment_folder, instances, said, baselines)
            build_workbook(temp, instances, summaries, plots_root, output_path, said)
        commit_temp_file(temp, output_path)
        if read_only:
            print(f"note: {experiment_folder} cannot be written ({read_only}): its summary JSON and plots/ were not "
                  "updated there; the workbook holds the same numbers and plots", file=sys.stderr)
    except OSError as error:
        raise storage_error(output_path, error) from None
    except xlsxwriter.exceptions.XlsxWriterException as error:
        raise XvalError(f"cannot write {output_path} ({error}): check the folder is writable and the file "
                        "is not open in another program") from None
    finally:
        with contextlib.suppress(OSError):  # never made (a read-only folder), or committed
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
