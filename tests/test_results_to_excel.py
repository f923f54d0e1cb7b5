"""Tests of results_to_excel.py: the spreadsheet is read back with openpyxl and checked against the result JSONs.

Expected values are computed here from the JSON files (scipy for the p-values), never taken from the code under test.
"""
import json
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import openpyxl
import pytest
import scipy.stats

PROJECT_DIR = Path(__file__).resolve().parent.parent
if str(PROJECT_DIR) not in sys.path:
    sys.path.insert(0, str(PROJECT_DIR))

import results_to_excel  # noqa: E402
from results_factory import INSTANCES, build_experiment, make_instance, write_instance  # noqa: E402
from registries import HIGHER_IS_BETTER, MAIN_METRIC  # noqa: E402
from utility_functions import SPLITS, TEMP_MARKER, XvalError  # noqa: E402

SCRIPT = PROJECT_DIR / "results_to_excel.py"
METRICS = {"classification": ("loss", "accuracy", "balanced_accuracy", "f1_macro", "precision_macro", "recall_macro"),
           "regression": ("loss", "rmse", "mae", "r2", "pearson_r", "ccc")}
SUMMARY_SHEETS = {"classification": "summary", "regression": "summary_regression"}  # instance 1 is classification
SPLIT_OF_LABEL = {"train": "train", "val": "val", "validation": "val", "test": "test"}


# ----------------------------------------------------------------------------------------------------------------
# Helpers

def run_cli(*arguments):
    """Run the script as a real process."""
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, arguments)], capture_output=True, text=True,
                          timeout=120, cwd=PROJECT_DIR)


def read_results(folder):
    """{instance: JSON} of the result files, read independently of the code under test."""
    return {data["instance"]: data for data in (json.loads(path.read_text(encoding="utf-8"))
                                                for path in (folder / "results").glob("results_*_exp*_run*.json"))}


def snapshot(folder):
    """{relative path: bytes} of every file under folder."""
    return {path.relative_to(folder): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def argb(hex_color):
    """'#C6EFCE' as openpyxl reports a fill colour."""
    return "FF" + hex_color.lstrip("#").upper()


def fill_of(cell):
    """The solid fill colour of a cell, or None."""
    return cell.fill.fgColor.rgb if cell.fill.fill_type == "solid" else None


def header_row_of(sheet, first_label):
    """The 1-based row whose column A holds first_label."""
    return next(row for row in range(1, 20) if sheet.cell(row, 1).value == first_label)


def summary_layout(sheet):
    """Columns and rows of a summary sheet: ({label: col}, {(metric, split, stat): col}, {instance: row})."""
    header = header_row_of(sheet, "ID")
    identity, metric_columns, group, split = {}, {}, None, None
    for col in range(1, sheet.max_column + 1):
        top, bottom = sheet.cell(header, col).value, sheet.cell(header + 1, col).value
        group = top if top is not None else group
        if bottom is None:
            identity[top] = col
            continue
        metric = group.replace(" ", "_")
        if bottom.endswith("mean"):
            split = SPLIT_OF_LABEL[bottom.split()[0]]
            metric_columns[(metric, split, "mean")] = col
        else:
            metric_columns[(metric, split, "std")] = col
    rows, row = {}, header + 2
    while isinstance(sheet.cell(row, 1).value, int):
        rows[sheet.cell(row, 1).value] = row
        row += 1
    return identity, metric_columns, rows


def column_with_label(identity, start):
    """The column whose header starts with start."""
    return next(col for label, col in identity.items() if label.startswith(start))


def summary_value(result, split, metric, stat):
    """A summary number from the JSON, or None."""
    return ((result.get("summary") or {}).get(split, {}).get(metric) or {}).get(stat)


def expected_extremes(results, split, metric, stat):
    """Instances whose mean is best (or std lowest) among complete ones; empty with fewer than two."""
    values = {number: summary_value(result, split, metric, stat) for number, result in results.items()
              if result["status"] == "complete" and summary_value(result, split, metric, stat) is not None}
    if len(values) < 2:
        return set()
    pick = max if stat == "mean" and HIGHER_IS_BETTER[metric] else min
    target = pick(values.values())
    return {number for number, value in values.items() if value == target}


def sheet_values(workbook):
    """Every cell value of every sheet, the 'Updated ...' time stamp left out."""
    values = {}
    for sheet in workbook.worksheets:
        for row in sheet.iter_rows():
            for cell in row:
                value = cell.value
                if isinstance(value, str):
                    value = re.sub(r"Updated \d{4}-\d\d-\d\d \d\d:\d\d", "Updated", value)
                values[(sheet.title, cell.coordinate)] = value
    return values


def by_task(results, task_type):
    return {number: result for number, result in results.items() if result["task_type"] == task_type}


# ----------------------------------------------------------------------------------------------------------------
# One experiment written by the command line, shared by most tests

@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    folder = build_experiment(tmp_path_factory.mktemp("cli"))
    before = snapshot(folder / "results")
    completed = run_cli(folder)
    results = read_results(folder)
    first = results[min(results)]
    output = folder / f"{first['dataset']}_exp{first['experiment']}_results_spreadsheet.xlsx"
    workbook = openpyxl.load_workbook(output) if output.is_file() else None
    return SimpleNamespace(folder=folder, before=before, completed=completed, results=results, output=output,
                           workbook=workbook)


def test_cli_writes_the_default_spreadsheet_atomically(experiment):
    assert experiment.completed.returncode == 0, experiment.completed.stderr
    assert experiment.output.is_file()
    assert str(experiment.output) in experiment.completed.stdout
    assert not list(experiment.folder.rglob(f"*{TEMP_MARKER}*")), "a temporary file was left behind"


def test_result_files_are_byte_identical_after_the_run(experiment):
    assert snapshot(experiment.folder / "results") == experiment.before


def test_sheets(experiment):
    assert experiment.workbook.sheetnames == ["summary", "summary_regression", "folds", "folds_regression",
                                              "confusion", "parameters", "plots"]


@pytest.mark.parametrize("task_type", ["classification", "regression"])
def test_summary_numbers_equal_the_json(experiment, task_type):
    sheet = experiment.workbook[SUMMARY_SHEETS[task_type]]
    identity, metric_columns, rows = summary_layout(sheet)
    results = by_task(experiment.results, task_type)
    assert list(rows) == sorted(results)
    assert len(metric_columns) == len(METRICS[task_type]) * len(SPLITS) * 2
    for number, result in results.items():
        row = rows[number]
        assert sheet.cell(row, identity["comment 1"]).value == (result["parameters"]["comment_1"] or None)
        assert sheet.cell(row, identity["comment 2"]).value == (result["parameters"]["comment_2"] or None)
        assert sheet.cell(row, identity["status"]).value.startswith(result["status"])
        for (metric, split, stat), col in metric_columns.items():
            expected = summary_value(result, split, metric, stat)
            cell = sheet.cell(row, col)
            assert cell.value == (None if expected is None else pytest.approx(expected, rel=1e-12, abs=1e-15)), \
                (number, metric, split, stat)
            assert cell.number_format == "0.000"


@pytest.mark.parametrize("task_type", ["classification", "regression"])
def test_best_means_and_lowest_stds_are_highlighted(experiment, task_type):
    sheet = experiment.workbook[SUMMARY_SHEETS[task_type]]
    _, metric_columns, rows = summary_layout(sheet)
    results = by_task(experiment.results, task_type)
    best_fill, std_fill = argb(results_to_excel.BEST_FILL), argb(results_to_excel.LOWEST_STD_FILL)
    assert best_fill != std_fill
    highlighted_anything = False
    for (metric, split, stat), col in metric_columns.items():
        wanted = best_fill if stat == "mean" else std_fill
        expected = expected_extremes(results, split, metric, stat)
        found = {number for number, row in rows.items() if fill_of(sheet.cell(row, col)) == wanted}
        assert found == expected, (metric, split, stat)
        other = std_fill if stat == "mean" else best_fill
        assert not any(fill_of(sheet.cell(row, col)) == other for row in rows.values())
        highlighted_anything |= bool(expected)
    assert highlighted_anything


def test_incomplete_instance_is_never_best_even_with_better_values(experiment):
    results = by_task(experiment.results, "classification")
    incomplete = next(number for number, result in results.items() if result["status"] == "incomplete")
    metric = MAIN_METRIC["classification"]
    complete_best = max(summary_value(result, "test", metric, "mean") for result in results.values()
                        if result["status"] == "complete")
    assert summary_value(results[incomplete], "test", metric, "mean") > complete_best  # the data make it tempting
    sheet = experiment.workbook["summary"]
    identity, metric_columns, rows = summary_layout(sheet)
    row = rows[incomplete]
    assert sheet.cell(row, identity["status"]).value.startswith("incomplete")
    assert all(fill_of(sheet.cell(row, col)) is None for col in metric_columns.values())


def test_failed_instance_keeps_its_row_with_its_error(experiment):
    failed = {number: result for number, result in experiment.results.items() if result["status"] == "failed"}
    assert failed
    sheet = experiment.workbook["summary"]
    identity, metric_columns, rows = summary_layout(sheet)
    for number, result in failed.items():
        assert sheet.cell(rows[number], identity["status"]).value == "failed"
        assert sheet.cell(rows[number], identity["error"]).value == result["error"]
        assert all(sheet.cell(rows[number], col).value is None for col in metric_columns.values())


def test_parameter_links_resolve_to_the_parameters_files(experiment):
    links = 0
    for sheet in experiment.workbook.worksheets:
        for row in sheet.iter_rows():
            for cell in row:
                if cell.hyperlink is None:
                    continue
                target = (experiment.output.parent / cell.hyperlink.target.replace("\\", "/")).resolve()
                assert target.is_file(), cell.hyperlink.target
                assert target.parent == (experiment.folder / "results" / "parameters").resolve()
                links += 1
    assert links == 2 * len(experiment.results)  # a summary sheet and the parameters sheet


@pytest.mark.parametrize("task_type", ["classification", "regression"])
def test_p_values_equal_a_paired_t_test_over_the_folds(experiment, task_type):
    sheet = experiment.workbook[SUMMARY_SHEETS[task_type]]
    identity, _, rows = summary_layout(sheet)
    p_column, label_column = column_with_label(identity, "p vs best"), column_with_label(identity, "differs")
    metric = MAIN_METRIC[task_type]
    results = by_task(experiment.results, task_type)
    complete = {number: result for number, result in results.items() if result["status"] == "complete"}
    pick = max if HIGHER_IS_BETTER[metric] else min
    best = pick(complete, key=lambda number: (summary_value(complete[number], "val", metric, "mean"), -number))
    on_test = pick(complete, key=lambda number: (summary_value(complete[number], "test", metric, "mean"), -number))
    assert best != on_test  # the data make choosing on test tempting; "best" is chosen on validation

    def per_fold(result):
        return {fold["fold"]: fold["metrics"]["test"][metric] for fold in result["folds"]}

    assert sheet.cell(rows[best], label_column).value == "best"
    for number, result in results.items():
        p_cell, label = sheet.cell(rows[number], p_column).value, sheet.cell(rows[number], label_column).value
        if number == best:
            continue
        if result["status"] != "complete":
            assert p_cell is None and label is None
            continue
        folds = sorted(set(per_fold(complete[best])) & set(per_fold(result)))
        expected = scipy.stats.ttest_rel([per_fold(complete[best])[f] for f in folds],
                                         [per_fold(result)[f] for f in folds]).pvalue
        assert p_cell == pytest.approx(expected, rel=1e-9)
        assert label == ("yes" if expected < 0.05 else "no")


def expected_routine_summary(results, task_type):
    """The honest numbers recomputed here from the fold results of the JSON files: (chosen on validation,
    [instance chosen in each fold], selection-aware mean, its std, instance with the highest test mean)."""
    metric = MAIN_METRIC[task_type]
    sign = 1 if HIGHER_IS_BETTER[metric] else -1
    complete = {n: r for n, r in by_task(results, task_type).items() if r["status"] == "complete"}
    per_fold = {n: {f["fold"]: f["metrics"] for f in r["folds"]} for n, r in complete.items()}
    chosen = max(complete, key=lambda n: (sign * np.mean([m["val"][metric] for m in per_fold[n].values()]), -n))
    highest = max(complete, key=lambda n: (sign * np.mean([m["test"][metric] for m in per_fold[n].values()]), -n))
    winners, tests = [], []
    for fold in sorted(per_fold[chosen]):
        winner = max(complete, key=lambda n: (sign * per_fold[n][fold]["val"][metric], -n))
        winners.append(winner)
        tests.append(per_fold[winner][fold]["test"][metric])
    return chosen, winners, float(np.mean(tests)), float(np.std(tests, ddof=1)), highest


@pytest.mark.parametrize("task_type", ["classification", "regression"])
def test_the_routine_summary_chooses_on_validation_and_reports_the_selection_aware_estimate(experiment, task_type):
    chosen, winners, mean, std, highest = expected_routine_summary(experiment.results, task_type)
    assert chosen != highest and len(set(winners)) >= 1
    summary_file = experiment.folder / "ravdess_demo_exp1_summary.json"
    summary = json.loads(summary_file.read_text(encoding="utf-8"))["task_types"][task_type]
    assert summary["main_metric"] == MAIN_METRIC[task_type]
    assert summary["chosen_on_validation"]["instance"] == chosen
    assert [entry["instance"] for entry in summary["selection_aware_test"]["per_fold"]] == winners
    assert summary["selection_aware_test"]["mean"] == pytest.approx(mean, rel=1e-12)
    assert summary["selection_aware_test"]["std"] == pytest.approx(std, rel=1e-12)
    assert summary["highest_test_mean"]["instance"] == highest
    complete = {n for n, r in by_task(experiment.results, task_type).items() if r["status"] == "complete"}
    assert {entry["instance"] for entry in summary["instances"]} == complete
    for entry in summary["instances"]:
        assert entry["test"]["mean"] == pytest.approx(
            summary_value(experiment.results[entry["instance"]], "test", MAIN_METRIC[task_type], "mean"), rel=1e-12)

    sheet = experiment.workbook[SUMMARY_SHEETS[task_type]]
    identity, _, rows = summary_layout(sheet)
    assert sheet.cell(rows[chosen], column_with_label(identity, "differs")).value == "best"
    above = " ".join(str(sheet.cell(row, 1).value or "") for row in range(3, header_row_of(sheet, "ID")))
    label = MAIN_METRIC[task_type].replace("_", " ")
    assert f"chosen on validation: instance {chosen} " in above
    assert f"selection-aware test {label} {mean:.3f} ± {std:.3f} over {len(winners)} folds" in above
    assert f"chosen per fold: {', '.join(map(str, winners))}" in above
    assert f"Highest test mean of any instance: instance {highest}, " in above and "optimistic" in above


def test_the_summary_json_is_rebuilt_with_the_spreadsheet_and_leaves_incomplete_instances_out(tmp_path):
    folder = build_experiment(tmp_path, instance_ids=(1, 5))
    results_to_excel.write_spreadsheet(folder)
    summary = json.loads((folder / "ravdess_demo_exp1_summary.json").read_text())["task_types"]["classification"]
    assert summary["complete_instances"] == [1] and summary["chosen_on_validation"]["instance"] == 1
    assert summary["highest_test_mean"]["instance"] == 1 and len(summary["selection_aware_test"]["per_fold"]) == 5
    write_instance(folder, make_instance(2))
    results_to_excel.write_spreadsheet(folder)
    summary = json.loads((folder / "ravdess_demo_exp1_summary.json").read_text())["task_types"]["classification"]
    assert summary["complete_instances"] == [1, 2]


def test_both_significance_answers_occur(experiment):
    sheet = experiment.workbook["summary"]
    identity, _, rows = summary_layout(sheet)
    labels = {sheet.cell(row, column_with_label(identity, "differs")).value for row in rows.values()}
    assert {"best", "yes", "no"} <= labels
    notes = [sheet.cell(row, 2).value or "" for row in range(max(rows.values()) + 1, sheet.max_row + 1)]
    assert any("ttest_rel" in note and "paired" in note for note in notes)


def test_differing_parameters_are_columns_and_shared_ones_are_listed_once(experiment):
    sheet = experiment.workbook["summary"]
    identity, _, rows = summary_layout(sheet)
    results = by_task(experiment.results, "classification")
    names = {name for result in results.values() for name in result["parameters"]} - {
        "comment_1", "comment_2", "task_type"}
    differing = {name for name in names if len({json.dumps(r["parameters"].get(name)) for r in results.values()}) > 1}
    assert differing == {"learning_rate", "dropout", "conv_filters"}
    for name in differing:
        for number, result in results.items():
            value = result["parameters"][name]
            shown = sheet.cell(rows[number], identity[name]).value
            assert shown == (value if isinstance(value, (int, float)) else repr(value))
    below = [sheet.cell(row, 2).value for row in range(max(rows.values()) + 1, sheet.max_row + 1)]
    shared_lines = [line for line in below if line and " = " in line]
    for name in names - differing:
        value = results[1]["parameters"][name]
        shown = value if isinstance(value, str) else repr(value)
        assert shared_lines.count(f"{name} = {shown}") == 1, name
    assert not any(line.split(" = ")[0] in differing for line in shared_lines)


@pytest.mark.parametrize("task_type", ["classification", "regression"])
def test_folds_sheet_has_every_metric_of_every_fold_and_the_test_items(experiment, task_type):
    sheet = experiment.workbook["folds" if task_type == "classification" else "folds_regression"]
    header = header_row_of(sheet, "ID")
    columns, group = {}, None
    for col in range(1, sheet.max_column + 1):
        top, bottom = sheet.cell(header, col).value, sheet.cell(header + 1, col).value
        group = top if top is not None else group
        columns[(SPLIT_OF_LABEL.get(group, group), bottom.replace(" ", "_") if bottom else None)] = col
    rows = {(sheet.cell(row, 1).value, sheet.cell(row, columns[("fold", None)]).value): row
            for row in range(header + 2, sheet.max_row + 1) if isinstance(sheet.cell(row, 1).value, int)}
    results = by_task(experiment.results, task_type)
    expected_rows = {(number, fold["fold"]) for number, result in results.items() for fold in result["folds"]}
    assert expected_rows <= set(rows)
    for number, result in results.items():
        for fold in result["folds"]:
            row = rows[(number, fold["fold"])]
            for split in SPLITS:
                for metric in METRICS[task_type]:
                    expected = fold["metrics"][split][metric]
                    value = sheet.cell(row, columns[(split, metric)]).value
                    assert value == (None if expected is None else pytest.approx(expected, rel=1e-12))
            assert sheet.cell(row, columns[("test items", None)]).value == ", ".join(fold["test_items"])
        if not result["folds"]:  # a failed instance still has its row
            assert (number, None) in rows


def test_folds_sheet_shows_the_step_timings_after_seconds(tmp_path):
    steps = ["data", "build", "fit", "evaluate", "save"]
    folder = build_experiment(tmp_path / "timed", instance_ids=(1,))
    older = make_instance(2)
    del older["folds"][1]["timings"]  # a fold result written before the engine recorded timings
    write_instance(folder, older)
    sheet = openpyxl.load_workbook(results_to_excel.write_spreadsheet(folder))["folds"]
    header = header_row_of(sheet, "ID")
    labels = [sheet.cell(header, col).value for col in range(1, sheet.max_column + 1)]
    first = labels.index("seconds") + 2  # 1-based column of "data s"
    assert labels[first - 1:first + 4] == [f"{step} s" for step in steps]
    results, checked = read_results(folder), 0
    for row in range(header + 2, sheet.max_row + 1):
        number, fold_number = sheet.cell(row, 1).value, sheet.cell(row, labels.index("fold") + 1).value
        fold = next(fold for fold in results[number]["folds"] if fold["fold"] == fold_number)
        expected = [fold["timings"][step] for step in steps] if "timings" in fold else [None] * len(steps)
        cells = [sheet.cell(row, first + offset) for offset in range(len(steps))]
        assert [cell.value for cell in cells] == expected, (number, fold_number)
        assert all(cell.number_format == "0.0" for cell in cells)
        checked += 1
    assert checked == sum(len(result["folds"]) for result in results.values())

    untimed = make_instance(1)  # without any timings the sheet keeps its columns
    for fold in untimed["folds"]:
        del fold["timings"]
    write_instance(tmp_path / "untimed" / "experiment_1", untimed)
    sheet = openpyxl.load_workbook(results_to_excel.write_spreadsheet(tmp_path / "untimed" / "experiment_1"))["folds"]
    header = header_row_of(sheet, "ID")
    labels = [sheet.cell(header, col).value for col in range(1, sheet.max_column + 1)]
    assert labels[labels.index("seconds") + 1] == "train" and "data s" not in labels


def test_confusion_sheet_sums_the_folds_with_counts_and_row_percentages(experiment):
    sheet = experiment.workbook["confusion"]
    results = by_task(experiment.results, "classification")
    titles = {row: sheet.cell(row, 1).value for row in range(1, sheet.max_row + 1)
              if str(sheet.cell(row, 1).value or "").startswith("Instance ")}
    checked = 0
    for number, result in results.items():
        title_row = next(row for row, title in titles.items() if title.startswith(f"Instance {number} ("))
        if not result["folds"]:
            continue
        expected = np.sum([fold["confusion_matrix"]["test"] for fold in result["folds"]], axis=0)
        names = result["class_names"]
        label_row = title_row + 2
        assert [sheet.cell(label_row, 2 + i).value for i in range(len(names))] == names
        assert [sheet.cell(label_row + 1 + i, 1).value for i in range(len(names))] == names
        percent_col = next(col for col in range(len(names) + 3, sheet.max_column + 1)
                           if sheet.cell(label_row, col).value == names[0])
        for i in range(len(names)):
            counts = [sheet.cell(label_row + 1 + i, 2 + j).value for j in range(len(names))]
            shares = [sheet.cell(label_row + 1 + i, percent_col + j).value for j in range(len(names))]
            assert counts == expected[i].tolist()
            assert shares == pytest.approx((expected[i] / expected[i].sum()).tolist(), rel=1e-12)
        checked += 1
    assert checked == sum(1 for result in results.values() if result["folds"])


def test_parameters_sheet_shows_every_resolved_parameter(experiment):
    sheet = experiment.workbook["parameters"]
    header = header_row_of(sheet, "parameter")
    columns = {sheet.cell(header, col).value: col for col in range(2, sheet.max_column + 1)}
    rows = {sheet.cell(row, 1).value: row for row in range(header + 1, sheet.max_row + 1)}
    for number, result in experiment.results.items():
        col = columns[f"ID {number}"]
        for name, value in result["parameters"].items():
            shown = sheet.cell(rows[name], col).value
            if value == "":
                assert shown is None  # xlsx has no empty strings: a blank cell
            elif isinstance(value, (str, int, float)) and not isinstance(value, bool):
                assert shown == value, (number, name)
            else:
                assert shown == repr(value), (number, name)  # written the way Python would


def test_plots_are_written_and_embedded(experiment):
    plots = experiment.folder / "plots"
    expected = []
    for number, result in experiment.results.items():
        stem = f"{result['dataset']}_exp{result['experiment']}_run{number}"
        if result["folds"]:
            expected.append(plots / f"{stem}_learning_curves.png")
            if result["task_type"] == "classification":
                expected.append(plots / f"{stem}_confusion.png")
    assert sorted(plots.glob("*.png")) == sorted(expected)
    assert all(path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for path in expected)
    with zipfile.ZipFile(experiment.output) as archive:
        media = [name for name in archive.namelist() if re.fullmatch(r"xl/media/image\d+\.png", name)]
    assert len(media) == len(expected)
    assert len(experiment.workbook["plots"]._images) == len(expected)


# ----------------------------------------------------------------------------------------------------------------
# The function, stray files, order, errors, atomicity

def test_stray_files_change_nothing(experiment, tmp_path, capsys):
    copy = tmp_path / "experiment_1"
    shutil.copytree(experiment.folder, copy)
    (copy / experiment.output.name).unlink()
    results = copy / "results"
    (results / "notes.txt").write_text("remember to try a bigger batch\n")
    (results / "results_broken.json").write_text("{not json")
    (results / "results_ravdess_demo_exp1_run99.json").write_text('{"experiment": 1, "instance": 99,')
    (results / "results_ravdess_demo_exp1_runlast.json").write_text("{}")
    (results / "folds" / "results_ravdess_demo_exp1_run8.json").write_text(json.dumps(make_instance(1, number=8)))
    before = snapshot(results)

    written = results_to_excel.write_spreadsheet(copy)

    assert written == (copy / experiment.output.name).resolve()
    workbook = openpyxl.load_workbook(written)
    assert {key: value for key, value in sheet_values(workbook).items() if key[0] != "warnings"} == \
        sheet_values(experiment.workbook)
    assert snapshot(results) == before
    warnings = capsys.readouterr().err
    assert "results_ravdess_demo_exp1_run99.json" in warnings and "not valid JSON" in warnings
    listed = [row[0] for row in workbook["warnings"].iter_rows(min_row=3, values_only=True)]  # the reader sees it
    assert any("results_ravdess_demo_exp1_run99.json" in line and "not valid JSON" in line for line in listed)
    assert "run8" not in warnings and "notes.txt" not in warnings


@pytest.mark.parametrize("damage, where", [
    (lambda result: result["folds"][1].update(seconds="abc"), "folds[1].seconds is 'abc'"),
    (lambda result: result["folds"][0]["metrics"]["test"].update(accuracy=float("nan")),
     "folds[0].metrics.test.accuracy is nan"),
    (lambda result: result["folds"][0]["metrics"]["test"].update(accuracy=2.5),  # a percentage typed by hand?
     "folds[0].metrics.test.accuracy is 2.5, outside 0 to 1"),
    (lambda result: result.update(status="done"), "status is 'done'"),
    (lambda result: result["folds"][2]["confusion_matrix"]["test"].pop(), "folds[2].confusion_matrix.test is not")])
def test_a_damaged_result_file_is_one_warning_naming_what_is_wrong_and_the_rest_is_written(tmp_path, damage, where):
    folder = tmp_path / "experiment_1"
    for number in (1, 2):
        write_instance(folder, make_instance(1, seed=number, number=number))
    broken = make_instance(1, seed=3, number=3)
    damage(broken)
    path = folder / "results" / "results_ravdess_demo_exp1_run3.json"
    path.write_text(json.dumps(broken, allow_nan=True))
    before = path.read_bytes()

    completed = run_cli(folder)

    assert completed.returncode == 0, completed.stderr
    warning, = [line for line in completed.stderr.splitlines() if "run3" in line]
    assert f"{path} is damaged ({where}" in warning and "restore it or delete it" in warning
    assert "Traceback" not in completed.stderr and path.read_bytes() == before
    workbook = openpyxl.load_workbook(folder / "ravdess_demo_exp1_results_spreadsheet.xlsx")
    assert list(summary_layout(workbook["summary"])[2]) == [1, 2]


def test_only_damaged_result_files_is_one_line_and_exit_2(tmp_path):
    folder = tmp_path / "experiment_1"
    broken = make_instance(1)
    broken["folds"] = {"not": "a list"}
    write_instance(folder, broken)

    completed = run_cli(folder)

    assert completed.returncode == 2 and "Traceback" not in completed.stderr
    assert "folds is {'not': 'a list'}" in completed.stderr and "no results in" in completed.stderr
    assert not list(folder.glob("*.xlsx"))


def test_function_writes_elsewhere_with_links_relative_to_the_new_place(experiment, tmp_path):
    output = tmp_path / "reports" / "all.xlsx"
    output.parent.mkdir()
    assert results_to_excel.write_spreadsheet(experiment.folder, output) == output.resolve()
    sheet = openpyxl.load_workbook(output)["summary"]
    targets = [cell.hyperlink.target for row in sheet.iter_rows() for cell in row if cell.hyperlink]
    assert targets and all((output.parent / target.replace("\\", "/")).resolve().is_file() for target in targets)


def test_instances_are_ordered_by_their_number_not_by_name(tmp_path):
    folder = tmp_path / "experiment_1"
    for source, number in ((1, 10), (2, 2), (3, 9)):
        write_instance(folder, make_instance(source, number=number))
    written = results_to_excel.write_spreadsheet(folder)
    sheet = openpyxl.load_workbook(written)["summary"]
    assert list(summary_layout(sheet)[2]) == [2, 9, 10]


def test_the_write_goes_through_a_temporary_file_and_a_failure_keeps_the_old_spreadsheet(
        experiment, tmp_path, monkeypatch):
    folder = tmp_path / "experiment_1"
    shutil.copytree(experiment.folder, folder)
    output = folder / experiment.output.name
    commits = []
    real_commit = results_to_excel.commit_temp_file
    monkeypatch.setattr(results_to_excel, "commit_temp_file",
                        lambda temp, final, **kw: commits.append((Path(temp), Path(final))) or real_commit(temp, final))
    results_to_excel.write_spreadsheet(folder)
    (temp, final), = commits
    assert final == output.resolve() and temp != final and temp.parent == final.parent and TEMP_MARKER in temp.name
    good = output.read_bytes()

    def crash(path, *args):
        Path(path).write_bytes(b"PK half a file")
        raise OSError("disk full")

    monkeypatch.setattr(results_to_excel, "build_workbook", crash)
    with pytest.raises(XvalError, match="disk full"):
        results_to_excel.write_spreadsheet(folder)
    assert output.read_bytes() == good  # a reader still finds the last complete spreadsheet
    assert not list(folder.rglob(f"*{TEMP_MARKER}*"))


def test_an_experiment_whose_only_instance_failed_early_still_gets_its_row(tmp_path):
    folder = tmp_path / "experiment_1"
    (folder / "results").mkdir(parents=True)
    minimal = {"experiment": 1, "instance": 1, "dataset": "demo", "task_type": "classification",
               "status": "failed", "error": "could not load dataset 'demo'", "folds": []}
    (folder / "results" / "results_demo_exp1_run1.json").write_text(json.dumps(minimal))
    written = results_to_excel.write_spreadsheet(folder)
    assert written.name == "demo_exp1_results_spreadsheet.xlsx"
    sheet = openpyxl.load_workbook(written)["summary"]
    identity, _, rows = summary_layout(sheet)
    assert sheet.cell(rows[1], identity["status"]).value == "failed"
    assert sheet.cell(rows[1], identity["error"]).value == minimal["error"]


def test_identical_fold_values_are_not_a_significant_difference(tmp_path):
    folder = tmp_path / "experiment_1"
    for number in (1, 2):
        write_instance(folder, make_instance(1, number=number))  # the same results twice
    sheet = openpyxl.load_workbook(results_to_excel.write_spreadsheet(folder))["summary"]
    identity, _, rows = summary_layout(sheet)
    p_column, label_column = column_with_label(identity, "p vs best"), column_with_label(identity, "differs")
    assert sheet.cell(rows[1], label_column).value == "best"
    assert sheet.cell(rows[2], label_column).value == "no (identical)"
    assert sheet.cell(rows[2], p_column).value is None


@pytest.mark.parametrize("layout", ["empty results", "only strays", "no results folder", "missing folder"])
def test_no_results_is_one_line_and_exit_2(tmp_path, layout):
    folder = tmp_path / "experiment_3"
    if layout != "missing folder":
        folder.mkdir()
    if layout in ("empty results", "only strays"):
        (folder / "results" / "folds").mkdir(parents=True)
    if layout == "only strays":
        (folder / "results" / "notes.txt").write_text("x")
        (folder / "results" / "folds" / "results_a_exp3_run1.json").write_text(json.dumps(make_instance(1)))
    completed = run_cli(folder)
    assert completed.returncode == 2
    lines = completed.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and len([line for line in lines if line.startswith("error")]) == 1
    assert "Traceback" not in completed.stderr
    assert not list(tmp_path.rglob("*.xlsx"))


def test_factory_covers_what_the_brief_asks_for():
    statuses = [(task, status) for _, task, status, *_ in INSTANCES.values()]
    assert statuses.count(("classification", "complete")) >= 3
    assert ("classification", "failed") in statuses and ("classification", "incomplete") in statuses
    assert ("regression", "complete") in statuses


def test_a_fold_result_edited_after_its_instance_was_assembled_is_what_the_views_show(tiny_features, tmp_path):
    from routine_helpers import instance, run_routine, write_routine
    routine = write_routine(tmp_path, {1: instance("a", "num_epochs = 1"), 2: instance("b", "num_epochs = 1")})
    assert run_routine(routine, tiny_features["config_path"]).returncode == 0
    folder = tmp_path / "experiments" / "experiment_1"
    fold_file = folder / "results" / "folds" / "results_tiny_exp1_run2_fold1.json"
    edited = json.loads(fold_file.read_text())
    edited["metrics"]["val"]["balanced_accuracy"], edited["metrics"]["test"]["balanced_accuracy"] = 0.9, 0.95
    fold_file.write_text(json.dumps(edited))
    completed = run_cli(folder)
    assert completed.returncode == 0, completed.stderr
    assert "records other metrics for fold 1 than its fold results" in completed.stderr, completed.stderr
    summary = json.loads((folder / "tiny_exp1_summary.json").read_text())["task_types"]["classification"]
    other = json.loads((folder / "results" / "folds" / "results_tiny_exp1_run2_fold2.json").read_text())
    run2 = next(entry for entry in summary["instances"] if entry["instance"] == 2)
    assert run2["test"]["mean"] == pytest.approx((0.95 + other["metrics"]["test"]["balanced_accuracy"]) / 2)
    assert run2["val"]["mean"] == pytest.approx((0.9 + other["metrics"]["val"]["balanced_accuracy"]) / 2)
