"""The baseline beside every experiment (baseline.py): it equals scikit-learn's on the same folds, recomputed here
from the feature files; it is in the results file, the summary JSON, the summary sheet and the console; it is never
chosen nor marked best; its paired test against the chosen instance is scipy's; it is kept while its dataset and
split are the same; damaged, it is said and computed again; config.ini switches it off.
"""
import json
import os

import numpy as np
import openpyxl
import pytest
import scipy.stats
from sklearn import metrics as skm
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import baseline
import results_to_excel
from routine_helpers import instance, run_routine, write_routine
from conftest import TINY_SETTINGS, baseline_config, write_config

GRIDS = {"classification": (0.001, 0.01, 0.1, 1.0, 10.0, 100.0), "regression": (0.1, 1.0, 10.0, 100.0, 1000.0, 1e4)}


def clips_of(features_folder, dataset):
    """{item: (X (clips, 2 * bins) per-clip mean then std over all frames, target per clip)}, read from the
    format-2 files with numpy alone (a windows dataset: its windows' frames pooled per clip)."""
    index = json.loads((features_folder / f"{dataset}_index.json").read_text())
    x = np.load(features_folder / f"{dataset}_predictors.npy").astype(np.float64)
    y = np.load(features_folder / f"{dataset}_target.npy")
    clips_path = features_folder / f"{dataset}_clips.npy"
    clips = np.load(clips_path) if clips_path.exists() else np.arange(len(x))
    table = {}
    for item, first, end in index["items"]:
        rows = []
        for clip in dict.fromkeys(clips[first:end].tolist()):
            at = first + np.flatnonzero(clips[first:end] == clip)
            frames = x[at].reshape(-1, x.shape[2])  # every frame of every window of the clip
            rows.append((np.r_[frames.mean(axis=0), frames.std(axis=0)], y[at[0]]))
        table[item] = (np.array([row[0] for row in rows]), np.array([row[1] for row in rows]))
    return table


def recompute(features_folder, dataset, folds, task_type):
    """[(chosen hyperparameter, test main metric, test predictions)] per fold: StandardScaler + LogisticRegression
    (Ridge), every grid value fitted on the training clips, the best on validation (first among ties) scored on
    test."""
    table = clips_of(features_folder, dataset)

    def arrays(items):
        x = np.concatenate([table[item][0] for item in items])
        y = np.concatenate([table[item][1] for item in items])
        return x, (y.argmax(axis=1) if task_type == "classification" else y.reshape(-1))

    score = (lambda y, p: skm.balanced_accuracy_score(y, p)) if task_type == "classification" else \
        (lambda y, p: -np.sqrt(skm.mean_squared_error(y, p)))
    found = []
    for fold in folds:
        (x_train, y_train), (x_val, y_val), (x_test, y_test) = (arrays(fold[f"{split}_items"])
                                                                 for split in ("train", "val", "test"))
        best = None
        for value in GRIDS[task_type]:
            model = make_pipeline(StandardScaler(), LogisticRegression(C=value, max_iter=2000, solver="newton-cg")
                                  if task_type == "classification" else Ridge(alpha=value)).fit(x_train, y_train)
            got = score(y_val, model.predict(x_val))
            if best is None or got > best[1]:
                best = (value, got, model)
        predictions = best[2].predict(x_test)
        found.append((best[0], abs(score(y_test, predictions)), predictions))
    return found


def read(path):
    return json.loads(path.read_text(encoding="utf-8"))


def summary_rows(workbook_path):
    """(sheet, {ID cell or 'baseline': row number}, {header text: column}) of the first summary sheet."""
    sheet = openpyxl.load_workbook(workbook_path).worksheets[0]
    header = next(row for row in range(1, 30) if sheet.cell(row, 1).value == "ID")
    columns, group = {}, None
    for col in range(1, sheet.max_column + 1):
        group = sheet.cell(header, col).value or group
        columns[(group, sheet.cell(header + 1, col).value)] = col
    rows = {}
    for row in range(header + 2, sheet.max_row + 1):
        if sheet.cell(row, columns[("status", None)]).value == "baseline":
            rows["baseline"] = row
        elif isinstance(sheet.cell(row, 1).value, int):
            rows[sheet.cell(row, 1).value] = row
    return sheet, rows, columns


@pytest.fixture(scope="module")
def classification(tiny_features, tmp_path_factory):
    """A routine of two instances x three folds on the tiny emotion dataset, run once, then again."""
    folder = tmp_path_factory.mktemp("baseline")
    config = baseline_config(tiny_features, folder)
    routine = write_routine(folder, {1: instance("a", "num_epochs = 1"),
                                     2: instance("b", "num_epochs = 1", "learning_rate = 0.01")}, num_folds=3)
    first = run_routine(routine, config)
    assert first.returncode == 0, first.stdout + first.stderr
    experiment = folder / "experiments" / "experiment_1"
    path = experiment / "results" / "baseline_tiny_exp1_classification.json"
    kept = (path.read_bytes(), path.stat().st_mtime_ns)
    second = run_routine(routine, config)
    return {"routine": routine, "experiment": experiment, "path": path, "first": first, "second": second,
            "kept": kept, "features": tiny_features["features_folder"], "config": config}


def test_the_baseline_equals_scikit_learns_on_the_experiments_folds(classification):
    document = read(classification["path"])
    folds = read(classification["experiment"] / "folds.json")["folds"]
    assert [fold["fold"] for fold in document["per_fold"]] == [fold["fold"] for fold in folds]
    assert [{key: fold[key] for key in ("fold", "train_items", "val_items", "test_items")} for fold in folds] == \
        document["folds"]
    for entry, (chosen, test_uar, predictions) in zip(document["per_fold"],
                                                       recompute(classification["features"], "tiny", folds,
                                                                 "classification")):
        assert entry["chosen"] == {"C": chosen}
        assert entry["metrics"]["test"]["balanced_accuracy"] == pytest.approx(test_uar, abs=1e-12)
        assert entry["predictions"]["test"]["y_pred"] == predictions.tolist()
        y_true, y_pred = entry["predictions"]["test"]["y_true"], entry["predictions"]["test"]["y_pred"]
        assert entry["metrics"]["test"]["accuracy"] == pytest.approx(skm.accuracy_score(y_true, y_pred))
        assert entry["metrics"]["test"]["f1_macro"] == pytest.approx(skm.f1_score(y_true, y_pred, average="macro"))


def test_the_baseline_is_in_the_summary_json_with_scipys_paired_test_and_never_chosen(classification):
    experiment = classification["experiment"]
    summary = read(experiment / "tiny_exp1_summary.json")["task_types"]["classification"]
    document = read(classification["path"])
    baseline_test = [fold["metrics"]["test"]["balanced_accuracy"] for fold in document["per_fold"]]
    entry = summary["baseline"]
    assert entry["summary"]["test"]["balanced_accuracy"]["mean"] == pytest.approx(np.mean(baseline_test))
    assert entry["summary"]["test"]["balanced_accuracy"]["std"] == pytest.approx(np.std(baseline_test, ddof=1))
    chosen = summary["chosen_on_validation"]["instance"]
    assert chosen in (1, 2)  # an instance, whatever the baseline's validation score
    assert {fold["instance"] for fold in summary["selection_aware_test"]["per_fold"]} <= {1, 2}
    assert [entry["instance"] for entry in summary["instances"]] == [1, 2]
    ours = [read(experiment / "results" / "folds" / f"results_tiny_exp1_run{chosen}_fold{fold}.json")
            ["metrics"]["test"]["balanced_accuracy"] for fold in (1, 2, 3)]
    versus = entry["chosen_vs_baseline"]
    assert versus["instance"] == chosen and versus["folds"] == 3
    assert versus["difference"] == pytest.approx(np.mean(ours) - np.mean(baseline_test))
    if ours != baseline_test:
        assert versus["p_value"] == pytest.approx(scipy.stats.ttest_rel(ours, baseline_test).pvalue)
    assert versus["better"] == (np.mean(ours) > np.mean(baseline_test))


def test_the_console_says_the_baseline_and_a_second_run_keeps_it(classification):
    entry = read(classification["experiment"] / "tiny_exp1_summary.json")["task_types"]["classification"]["baseline"]
    mean = entry["summary"]["test"]["balanced_accuracy"]["mean"]
    for completed in (classification["first"], classification["second"]):
        assert f"test balanced accuracy {mean:.3f} ± " in completed.stdout, completed.stdout
        assert "(chosen) is " in completed.stdout and "the baseline by" in completed.stdout
    assert "baseline (logistic regression" in classification["first"].stdout
    assert "baseline (logistic regression" not in classification["second"].stdout  # kept, not computed again
    path = classification["path"]
    assert (path.read_bytes(), path.stat().st_mtime_ns) == classification["kept"]


def test_the_sheet_has_a_baseline_row_never_marked_best(classification):
    experiment = classification["experiment"]
    summary = read(experiment / "tiny_exp1_summary.json")["task_types"]["classification"]
    sheet, rows, columns = summary_rows(experiment / "tiny_exp1_results_spreadsheet.xlsx")
    assert set(rows) == {1, 2, "baseline"} and rows["baseline"] > max(rows[1], rows[2])
    test_mean = columns[("balanced accuracy", "test mean")]
    entry = summary["baseline"]
    assert sheet.cell(rows["baseline"], test_mean).value == pytest.approx(
        entry["summary"]["test"]["balanced_accuracy"]["mean"])
    p_column = next(col for (group, _), col in columns.items() if group and group.startswith("p vs best"))
    if entry["chosen_vs_baseline"]["p_value"] is not None:
        assert sheet.cell(rows["baseline"], p_column).value == pytest.approx(entry["chosen_vs_baseline"]["p_value"])
    best = "FF" + results_to_excel.BEST_FILL.lstrip("#").upper()
    for (group, label), col in columns.items():
        cell = sheet.cell(rows["baseline"], col)
        assert not (cell.fill.fill_type == "solid" and cell.fill.fgColor.rgb == best), (group, label)
    label = columns[(next(group for group, _ in columns if group and group.startswith("differs from best")), None)]
    assert sheet.cell(rows[summary["chosen_on_validation"]["instance"]], label).value == "best"
    link = sheet.cell(rows["baseline"], columns[("parameters", None)]).hyperlink.target
    assert (experiment / link.replace("\\", "/")).resolve() == classification["path"].resolve()


def test_a_damaged_baseline_is_said_left_out_of_the_views_and_computed_again(classification, tmp_path):
    path = classification["path"]
    intact = path.read_bytes()
    try:
        path.write_bytes(intact[:len(intact) // 2])
        out = tmp_path / "view.xlsx"
        viewed = results_to_excel_cli(classification["experiment"], out)
        assert viewed.returncode == 0, viewed.stderr
        assert f"{path} cannot be read" in viewed.stderr and "the baseline is not shown" in viewed.stderr
        _, rows, _ = summary_rows(out)
        assert "baseline" not in rows
        rerun = run_routine(classification["routine"], classification["config"])
        assert rerun.returncode == 0, rerun.stderr
        assert "baseline (logistic regression" in rerun.stdout  # computed again, the same
        assert read(path)["per_fold"] == json.loads(intact)["per_fold"]
    finally:
        path.write_bytes(intact)


def results_to_excel_cli(experiment, out):
    import subprocess
    import sys
    return subprocess.run([sys.executable, results_to_excel.__file__, str(experiment), str(out)],
                          capture_output=True, text=True, timeout=300)


def test_pooled_statistics_pool_every_frame_of_a_clips_windows():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 3, 2)).astype(np.float32)  # five windows of three frames, two bins
    features, first = baseline.pooled_statistics(x, np.array([0, 0, 1, 1, 1]))
    assert first.tolist() == [0, 2]
    for row, windows in zip(features, (x[:2], x[2:])):
        frames = windows.reshape(-1, 2).astype(np.float64)
        np.testing.assert_allclose(row, np.r_[frames.mean(axis=0), frames.std(axis=0)], rtol=1e-10)


def test_a_regression_baseline_is_ridge_and_switched_off_none_is_written(tiny_features, tmp_path):
    dataset = tiny_features["intensity_dataset"]
    routine = write_routine(tmp_path, {1: instance("reg", "num_epochs = 1", task_type="regression")},
                            dataset=dataset, num_folds=2)
    completed = run_routine(routine, baseline_config(tiny_features, tmp_path))
    assert completed.returncode == 0, completed.stderr
    experiment = tmp_path / "experiments" / "experiment_1"
    document = read(experiment / "results" / f"baseline_{dataset}_exp1_regression.json")
    folds = read(experiment / "folds.json")["folds"]
    for entry, (chosen, rmse, predictions) in zip(document["per_fold"], recompute(
            tiny_features["features_folder"], dataset, folds, "regression")):
        assert entry["chosen"] == {"alpha": chosen}
        assert entry["metrics"]["test"]["rmse"] == pytest.approx(rmse, rel=1e-9)
        np.testing.assert_allclose(entry["predictions"]["test"]["y_pred"], predictions, rtol=1e-9)
    assert "test rmse" in completed.stdout.split("Baseline (ridge regression")[1]

    off = write_config(tmp_path / "off", {**TINY_SETTINGS, "baseline": {"enabled": "false"},
                                          "paths": {"features_folder": tiny_features["features_folder"]}})
    completed = run_routine(write_routine(tmp_path / "off", {1: instance("reg", "num_epochs = 1",
                                                                         task_type="regression")},
                                          dataset=dataset, num_folds=2), off)
    assert completed.returncode == 0, completed.stderr
    experiment = tmp_path / "off" / "experiments" / "experiment_1"
    assert not list((experiment / "results").glob("baseline_*")) and "aseline (" not in completed.stdout
    assert "baseline" not in read(experiment / f"{dataset}_exp1_summary.json")["task_types"]["regression"]
    assert os.path.exists(experiment / f"{dataset}_exp1_results_spreadsheet.xlsx")


def test_a_fold_whose_training_clips_hold_one_class_gets_no_baseline_in_one_line():
    table = {item: (np.random.default_rng(index).normal(size=(4, 6)), np.eye(3)[[label] * 4], np.arange(4))
             for index, (item, label) in enumerate((("a", 0), ("b", 0), ("c", 1), ("d", 2)))}
    fold = {"fold": 2, "train_items": ["a", "b"], "val_items": ["c"], "test_items": ["d"]}
    with pytest.raises(ValueError, match=r"^fold 2: its training clips hold one class only$"):
        baseline.baseline_fold(table, fold, "classification", 3)


def test_a_fold_with_more_training_clips_than_the_cap_fits_a_random_draw_of_them(monkeypatch):
    """Past MAX_TRAINING_CLIPS training clips the baseline fits on a seeded random draw of that many: the same
    choice and test predictions as scikit-learn's on the same draw, and not those of every clip."""
    rng = np.random.default_rng(5)
    table = {}
    for index, item in enumerate("abcdef"):
        labels = rng.integers(0, 3, 40)
        table[item] = (rng.normal(size=(40, 6)) + labels[:, np.newaxis] * 0.4, np.eye(3)[labels], np.arange(40))
    fold = {"fold": 1, "train_items": ["a", "b", "c", "d"], "val_items": ["e"], "test_items": ["f"]}
    monkeypatch.setattr(baseline, "MAX_TRAINING_CLIPS", 50)
    entry = baseline.baseline_fold(table, fold, "classification", 3)
    x = np.concatenate([table[item][0] for item in fold["train_items"]])
    y = np.concatenate([table[item][1] for item in fold["train_items"]]).argmax(axis=1)
    keep = np.sort(np.random.default_rng(0).choice(len(x), 50, replace=False))
    x_val, y_val = table["e"][0], table["e"][1].argmax(axis=1)
    fitted = {value: make_pipeline(StandardScaler(), LogisticRegression(C=value, max_iter=2000)).fit(x[keep], y[keep])
              for value in GRIDS["classification"]}
    scores = {value: skm.balanced_accuracy_score(y_val, model.predict(x_val)) for value, model in fitted.items()}
    chosen = next(value for value in GRIDS["classification"] if scores[value] == max(scores.values()))
    assert entry["chosen"] == {"C": chosen}
    assert entry["validation"] == {repr(value): pytest.approx(score) for value, score in scores.items()}
    assert entry["predictions"]["test"]["y_pred"] == fitted[chosen].predict(table["f"][0]).tolist()
    every = make_pipeline(StandardScaler(), LogisticRegression(C=100.0, max_iter=2000)).fit(x, y)
    assert not np.allclose(every[-1].coef_, fitted[100.0][-1].coef_)  # the draw, not every clip, was fitted


def test_a_constant_difference_over_folds_is_no_test_rather_than_p_0():
    from collect import paired_test
    first, second = [0.5, 0.75, 0.625], [0.25, 0.5, 0.375]  # exact in binary: every difference is 0.25
    with np.errstate(all="ignore"), pytest.warns(RuntimeWarning):
        assert scipy.stats.ttest_rel(first, second).pvalue == 0.0  # what scipy says of it: certainty
    assert paired_test(first, second) == (None, "n/a (constant difference)")
    assert paired_test([0.5, 0.8, 0.6], [0.4, 0.5, 0.55])[0] == pytest.approx(
        scipy.stats.ttest_rel([0.5, 0.8, 0.6], [0.4, 0.5, 0.55]).pvalue)
