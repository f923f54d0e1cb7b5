"""End to end: routine scripts run as real processes on a tiny real dataset, with tiny real Keras models."""
import json

import numpy as np
import pytest
from sklearn import metrics as skm

from routine_helpers import (copy_project, experiment_files, instance, run_routine, write_routine)
from utility_functions import XvalError, load_dataset

LEARNING_RATE, L2 = 0.0123, 0.02


@pytest.fixture(scope="module")
def experiment(tiny_features, tmp_path_factory):
    """A finished classification routine: two instances (two architectures), three folds."""
    folder = tmp_path_factory.mktemp("engine")
    experiment_dict = {
        1: instance("cnn", f"learning_rate = {LEARNING_RATE}", f"regularization_lambda = {L2}"),
        2: instance("pooled", model=['architecture = "POOLED_STATS_model"', "hidden_units = [8]", "num_epochs = 2"]),
    }
    routine = write_routine(folder, experiment_dict, dataset=tiny_features["emotion_dataset"], num_folds=3)
    completed = run_routine(routine, tiny_features["config_path"])
    return {"routine": routine, "completed": completed, "dir": folder / "experiments" / "experiment_1",
            "dict": experiment_dict, "features": tiny_features}


def instance_json(experiment_dir, run, dataset="tiny"):
    return json.loads((experiment_dir / "results" / f"results_{dataset}_exp1_run{run}.json").read_text())


def test_the_routine_succeeds_and_fills_the_folder(experiment):
    completed, experiment_dir = experiment["completed"], experiment["dir"]
    assert completed.returncode == 0, completed.stderr
    assert "fold 3/3" in completed.stdout and "ETA" in completed.stdout
    assert (experiment_dir / "experiment_1_description.txt").read_text().strip() == "a test routine"
    assert (experiment_dir / "folds.json").is_file()
    for run in (1, 2):
        document = instance_json(experiment_dir, run)
        assert document["status"] == "complete" and document["error"] is None
        assert document["parameter_strings"] == experiment["dict"][run]
        assert [fold["fold"] for fold in document["folds"]] == [1, 2, 3]
        for fold in document["folds"]:
            assert (experiment_dir / fold["model_file"]).is_file()
            assert fold["model_file"] == f"models/model_tiny_exp1_run{run}_fold{fold['fold']}.hdf5"
            assert set(fold["metrics"]) == {"train", "val", "test"}
            assert 1 <= fold["best_epoch"] <= fold["epochs_run"] == len(fold["history"]["loss"])
            assert set(fold["history"]) >= {"loss", "val_loss", "accuracy", "val_accuracy"}
        for split in ("train", "val", "test"):
            values = [fold["metrics"][split]["accuracy"] for fold in document["folds"]]
            assert document["summary"][split]["accuracy"]["mean"] == pytest.approx(np.mean(values))
            assert document["summary"][split]["accuracy"]["std"] == pytest.approx(np.std(values, ddof=1))
        parameters_file = experiment_dir / document["parameters_file"]
        assert parameters_file.name == f"parameters_tiny_exp1_run{run}.txt"
        assert "learning_rate" in parameters_file.read_text()
        assert (experiment_dir / "logs" / f"tiny_exp1_run{run}_fold1.log").stat().st_size > 0
    assert instance_json(experiment_dir, 1)["parameters"]["learning_rate"] == LEARNING_RATE
    snapshot = next((experiment_dir / "code").iterdir())
    assert {"config.ini", "xval_instance.py", "training.py", "define_models.py", "versions.json",
            f"routine_{experiment['routine'].name}"} <= {path.name for path in snapshot.iterdir()}
    assert list((experiment_dir).glob("*_results_spreadsheet.xlsx"))


def test_folds_and_the_launch_record_where_their_time_went(experiment):
    experiment_dir = experiment["dir"]
    records = [json.loads(path.read_text()) for path in (experiment_dir / "logs").glob("launch_*.json")]
    assert len(records) == 1  # this module's first launch (later tests rerun it)
    record = records[0]
    assert set(record["phases"]) >= {"validate", "setup", "spreadsheet", "close_server", "total"}
    assert record["phases"]["spreadsheet_beside"] > 0  # each completed instance's rebuild ran beside the folds
    assert record["outcomes"] == {"1": "complete", "2": "complete"}
    assert sorted((run["instance"], run["fold"]) for run in record["fold_runs"]) == [
        (run, fold) for run in (1, 2) for fold in (1, 2, 3)]
    assert record["phases"]["total"] >= sum(run["seconds"] for run in record["fold_runs"])
    for run in record["fold_runs"]:
        fold = instance_json(experiment_dir, run["instance"])["folds"][run["fold"] - 1]
        assert set(fold["timings"]) == {"data", "build", "fit", "save", "evaluate"}
        assert all(seconds >= 0 for seconds in fold["timings"].values())
        assert sum(fold["timings"].values()) <= fold["seconds"] + 0.01 <= run["seconds"] + 0.01
        assert fold["timings"]["fit"] > 0


def test_folds_are_a_partition_shared_by_every_instance(experiment):
    experiment_dir = experiment["dir"]
    saved = json.loads((experiment_dir / "folds.json").read_text())
    items = saved["items"]
    predictors, _ = load_dataset(experiment["features"]["features_folder"], "tiny")
    assert items == sorted(predictors)
    assert sorted(item for fold in saved["folds"] for item in fold["test_items"]) == items
    for run in (1, 2):
        for fold, reference in zip(instance_json(experiment_dir, run)["folds"], saved["folds"]):
            for split in ("train_items", "val_items", "test_items"):
                assert fold[split] == reference[split]
            assert not set(fold["val_items"]) & set(fold["test_items"])
            assert not set(fold["val_items"]) & set(fold["train_items"])
            assert set(fold["predictions"]["test"]["item"]) == set(fold["test_items"])


def test_each_folds_normalisation_is_the_mean_and_variance_of_its_training_examples(experiment):
    predictors, _ = load_dataset(experiment["features"]["features_folder"], "tiny")
    for run in (1, 2):
        for fold in instance_json(experiment["dir"], run)["folds"]:
            x_train = np.concatenate([predictors[item] for item in fold["train_items"]]).astype(np.float64)
            np.testing.assert_allclose(fold["normalisation"]["mean"], x_train.mean(axis=(0, 1)), rtol=1e-5)
            np.testing.assert_allclose(fold["normalisation"]["variance"], x_train.var(axis=(0, 1)), rtol=1e-4)


def test_metrics_equal_scikit_learn_on_the_saved_predictions(experiment):
    for run in (1, 2):
        for fold in instance_json(experiment["dir"], run)["folds"]:
            predictions = fold["predictions"]["test"]
            y_true, y_pred = predictions["y_true"], predictions["y_pred"]
            labels = list(range(len(fold["confusion_matrix"]["test"])))
            test = fold["metrics"]["test"]
            assert test["accuracy"] == pytest.approx(skm.accuracy_score(y_true, y_pred))
            assert test["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y_true, y_pred))
            # macro means over the classes true or predicted (scikit-learn's default labels); recall over the
            # true ones, so it is UAR
            assert test["f1_macro"] == pytest.approx(skm.f1_score(y_true, y_pred, average="macro", zero_division=0))
            assert test["precision_macro"] == pytest.approx(
                skm.precision_score(y_true, y_pred, average="macro", zero_division=0))
            assert test["recall_macro"] == pytest.approx(test["balanced_accuracy"])
            assert fold["confusion_matrix"]["test"] == skm.confusion_matrix(y_true, y_pred, labels=labels).tolist()


def test_a_class_missing_from_a_fold_is_not_scored_as_zero():
    """A test fold of 4 classes whose speakers never show classes 2 and 3 (nor does the model predict them): each
    present class recalled perfectly is a perfect macro score, not half of one. A class predicted but never true
    counts for precision (0), not for recall."""
    from training import classification_metrics
    y_true = np.array([0, 0, 1, 1, 1])
    probabilities = np.eye(4)[y_true] * 0.9 + 0.025
    scores, confusion = classification_metrics(y_true, probabilities)
    assert scores["balanced_accuracy"] == scores["recall_macro"] == scores["precision_macro"] == 1.0
    assert scores["f1_macro"] == 1.0 and confusion.shape == (4, 4)
    wrong = np.eye(4)[[0, 1, 1, 1, 3]] * 0.9 + 0.025  # one clip of class 0 called 1, one of 1 called 3
    scores, _ = classification_metrics(y_true, wrong)
    assert scores["recall_macro"] == pytest.approx(scores["balanced_accuracy"]) == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert scores["precision_macro"] == pytest.approx((1 + 2 / 3 + 0) / 3)  # class 3 was predicted, never true


def test_models_reload_with_the_overrides_and_reproduce_the_predictions(experiment):
    import keras
    experiment_dir = experiment["dir"]
    predictors, _ = load_dataset(experiment["features"]["features_folder"], "tiny")
    fold = instance_json(experiment_dir, 1)["folds"][0]
    model = keras.models.load_model(experiment_dir / fold["model_file"])
    assert float(model.optimizer.learning_rate) == pytest.approx(LEARNING_RATE)
    kernels = [layer for layer in model.get_layer("EXAMPLE_model").layers if hasattr(layer, "kernel_regularizer")
               and layer.kernel_regularizer is not None]
    assert kernels and all(layer.kernel_regularizer.l2 == pytest.approx(L2) for layer in kernels)
    x_test = np.concatenate([predictors[item] for item in fold["test_items"]])  # raw features: normalisation inside
    assert model.predict(x_test, verbose=0).argmax(axis=1).tolist() == fold["predictions"]["test"]["y_pred"]


def test_validation_metrics_are_those_of_the_saved_model_and_of_its_best_epoch(experiment):
    """A fold scores its validation split with the outputs its best epoch's validation pass gave (no second pass over
    the same weights): the saved model, reloaded, scores the same, and its accuracy is the history's at that epoch."""
    import keras
    from training import classification_metrics
    predictors, targets = load_dataset(experiment["features"]["features_folder"], "tiny")
    for fold in instance_json(experiment["dir"], 1)["folds"]:
        model = keras.models.load_model(experiment["dir"] / fold["model_file"])
        x_val = np.concatenate([predictors[item] for item in fold["val_items"]])
        y_val = np.concatenate([targets[item] for item in fold["val_items"]]).argmax(axis=1)
        scores, _ = classification_metrics(y_val, model.predict(x_val, verbose=0))
        assert scores == pytest.approx(fold["metrics"]["val"], rel=1e-5)
        assert fold["metrics"]["val"]["accuracy"] == pytest.approx(fold["history"]["val_accuracy"][fold["best_epoch"]
                                                                                                  - 1])


def test_rerun_skips_finished_instances_and_overwrite_replaces_only_the_named_one(experiment):
    experiment_dir, config = experiment["dir"], experiment["features"]["config_path"]
    before = experiment_files(experiment_dir)
    rerun = run_routine(experiment["routine"], config)
    assert rerun.returncode == 0, rerun.stderr
    assert rerun.stdout.count("complete already, skipped") == 2
    after = experiment_files(experiment_dir)
    assert {name: data for name, data in after.items() if not name.endswith(".xlsx")} == \
        {name: data for name, data in before.items() if not name.endswith(".xlsx")}
    overwrite = write_routine(experiment["routine"].parent, experiment["dict"], name="overwrite.py",
                              dataset="tiny", num_folds=3, overwrite_results=True)
    workbook = next(experiment_dir.glob("*_results_spreadsheet.xlsx"))
    built = workbook.stat().st_mtime_ns
    replaced = run_routine(overwrite, config, 2)
    assert replaced.returncode == 0, replaced.stderr
    assert "instance 2 complete" in replaced.stdout
    assert built < workbook.stat().st_mtime_ns >= (experiment_dir / "results" / "results_tiny_exp1_run2.json").stat(
    ).st_mtime_ns, "the spreadsheet was not rebuilt from the replaced results"
    after_overwrite = experiment_files(experiment_dir)
    for name, data in before.items():
        if "_run1" in name:
            assert after_overwrite[name] == data, name
    assert after_overwrite["results/results_tiny_exp1_run2.json"] != before["results/results_tiny_exp1_run2.json"]
    assert instance_json(experiment_dir, 2)["status"] == "complete"


def test_regression_instance(tiny_features, tmp_path):
    dataset = tiny_features["intensity_dataset"]
    routine = write_routine(tmp_path, {1: instance("reg", task_type="regression")}, dataset=dataset, num_folds=2)
    completed = run_routine(routine, tiny_features["config_path"])
    assert completed.returncode == 0, completed.stderr
    document = instance_json(tmp_path / "experiments" / "experiment_1", 1, dataset)
    assert document["task_type"] == "regression" and "confusion_matrix" not in document["folds"][0]
    for fold in document["folds"]:
        predictions = fold["predictions"]["test"]
        y_true, y_pred = np.array(predictions["y_true"]), np.array(predictions["y_pred"])
        test = fold["metrics"]["test"]
        assert test["rmse"] == pytest.approx(np.sqrt(skm.mean_squared_error(y_true, y_pred)))
        assert test["mae"] == pytest.approx(skm.mean_absolute_error(y_true, y_pred))
        assert test["r2"] == pytest.approx(skm.r2_score(y_true, y_pred))
        assert test["pearson_r"] == pytest.approx(np.corrcoef(y_true, y_pred)[0, 1])
        ccc = 2 * np.cov(y_true, y_pred, bias=True)[0, 1] / (y_true.var() + y_pred.var() +
                                                             (y_true.mean() - y_pred.mean()) ** 2)
        assert test["ccc"] == pytest.approx(ccc)
        assert set(fold["history"]) >= {"loss", "val_loss", "mae", "rmse"}
    # the validation metrics are those of the saved (best epoch's) model, also where a later epoch ran after it
    import keras
    from training import regression_metrics
    predictors, targets = load_dataset(tiny_features["features_folder"], dataset)
    for fold in document["folds"]:
        model = keras.models.load_model(tmp_path / "experiments" / "experiment_1" / fold["model_file"])
        x_val = np.concatenate([predictors[item] for item in fold["val_items"]])
        y_val = np.concatenate([targets[item] for item in fold["val_items"]]).astype(np.float64)
        assert regression_metrics(y_val, model.predict(x_val, verbose=0).reshape(-1)) == pytest.approx(
            fold["metrics"]["val"], rel=1e-5)
        assert fold["metrics"]["val"]["rmse"] == pytest.approx(fold["history"]["val_rmse"][fold["best_epoch"] - 1],
                                                               rel=1e-5)


def test_bad_parameters_are_refused_before_anything_is_written(tiny_features, tmp_path):
    routine = write_routine(tmp_path, {1: instance("good"), 2: instance("typo", "learnig_rate = 0.1"),
                                       3: instance("type", 'patience = "many"')})
    completed = run_routine(routine, tiny_features["config_path"])
    assert completed.returncode == 2
    assert completed.stderr.strip().count("\n") == 0 and "Traceback" not in completed.stderr
    assert "experiment_dict[2]" in completed.stderr and "did you mean learning_rate" in completed.stderr
    assert not (tmp_path / "experiments").exists()
    completed = run_routine(routine, tiny_features["config_path"], 3, 3)
    assert completed.returncode == 2 and "patience" in completed.stderr and "does not fit" in completed.stderr
    assert not (tmp_path / "experiments").exists()


@pytest.mark.parametrize("arguments, expected", [(["x"], "whole numbers"), (["2", "1"], "is after last"),
                                                 (["5", "9"], "no instance between"), (["1", "1", "0", "4"],
                                                                                         "too many")])
def test_command_line_errors(tiny_features, tmp_path, arguments, expected):
    routine = write_routine(tmp_path, {1: instance("a"), 2: instance("b")})
    completed = run_routine(routine, tiny_features["config_path"], *arguments)
    assert completed.returncode == 2
    assert expected in completed.stderr and "usage: python3 xval_routine_test.py" in completed.stderr
    assert not (tmp_path / "experiments").exists()


def failing_dict():
    """Instance 1's architecture raises (a dropout rate above 1); instance 2 is fine."""
    return {1: instance("raises", "dropout = 2.0"), 2: instance("fine")}


def test_without_debug_mode_a_failing_instance_is_recorded_and_the_routine_goes_on(tiny_features, tmp_path):
    routine = write_routine(tmp_path, failing_dict(), debug_mode=False)
    completed = run_routine(routine, tiny_features["config_path"])
    assert completed.returncode == 1
    assert "Traceback" not in completed.stdout + completed.stderr
    experiment_dir = tmp_path / "experiments" / "experiment_1"
    failed = instance_json(experiment_dir, 1)
    assert failed["status"] == "failed" and "raised ValueError" in failed["error"]
    assert "logs/tiny_exp1_run1_fold1.log" in failed["error"]
    assert instance_json(experiment_dir, 2)["status"] == "complete"
    assert "1 failed (1)" in completed.stdout
    status = run_routine(routine, tiny_features["config_path"], "--status").stdout.splitlines()
    assert "instance 1: 1 failed, 1 pending" in status  # its second fold was not tried after the first failed
    assert any(line.startswith("  fold 1: failed: fold 1: ") and "raised ValueError" in line for line in status)
    assert "instance 2: 2 done" in status


def test_with_debug_mode_the_first_failure_stops_the_routine_with_its_traceback(tiny_features, tmp_path):
    routine = write_routine(tmp_path, failing_dict(), debug_mode=True)
    completed = run_routine(routine, tiny_features["config_path"])
    assert completed.returncode != 0
    assert "Traceback" in completed.stderr and "ValueError" in completed.stderr
    assert not (tmp_path / "experiments" / "experiment_1" / "results" / "results_tiny_exp1_run2.json").exists()


def test_an_architecture_that_returns_no_model_is_reported(tiny_features, tmp_path):
    project = copy_project(tmp_path / "project")
    with open(project / "define_models.py", "a", encoding="utf-8") as models:
        models.write("\n\ndef NOT_A_model(input_shape, output_size, task_type, width=3):\n    return [width]\n")
    routine = write_routine(project, {1: instance("not a model", model=['architecture = "NOT_A_model"',
                                                                        "num_epochs = 1"])})
    completed = run_routine(routine, tiny_features["config_path"], project=project)
    assert completed.returncode == 1
    document = instance_json(project / "experiments" / "experiment_1", 1)
    assert document["status"] == "failed" and "returned list, not a keras.Model" in document["error"]



EVERY_KIND_OF_ARGUMENT = '''
import matplotlib  # hidden from Keras's import in a fold process (training.UNUSED_BY_FOLDS), not from a model
import pandas


def EVERY_KIND_model(input_shape, output_size, task_type, regularization_lambda, hidden=4, *, units=32):
    """A positional argument with a default (hidden), a keyword-only one (units), a [training] one."""
    hidden = int(pandas.Series([hidden]).iloc[0])  # both work here, though hidden from Keras's import in a fold
    assert matplotlib.__version__
    l2 = regularizers.L2(regularization_lambda)
    inputs = keras.Input(shape=tuple(input_shape))
    x = layers.GlobalAveragePooling1D()(inputs)
    x = layers.Dense(hidden, activation="relu", kernel_regularizer=l2, name="hidden")(x)
    x = layers.Dense(units, activation="relu", kernel_regularizer=l2, name="units")(x)
    return keras.Model(inputs, output_layer(output_size, task_type)(x))


def _keep(function):
    def wrapper(*arguments, **keywords):
        return function(*arguments[:4])
    return wrapper


@_keep
def DECORATED_model(input_shape, output_size, task_type, regularization_lambda, hidden=4):
    return EVERY_KIND_model(input_shape, output_size, task_type, regularization_lambda, hidden=hidden)
'''


def test_keyword_only_positional_and_training_arguments_reach_the_saved_model(tiny_features, tmp_path):
    import keras
    project = copy_project(tmp_path / "project")
    with open(project / "define_models.py", "a", encoding="utf-8") as models:
        models.write(EVERY_KIND_OF_ARGUMENT)
    model = ['architecture = "EVERY_KIND_model"', "num_epochs = 1", "batch_size = 16"]
    routine = write_routine(project, {1: instance("every kind", "hidden = 5", "units = 7",
                                                  "regularization_lambda = 0.031", model=model)})
    completed = run_routine(routine, tiny_features["config_path"], project=project)
    assert completed.returncode == 0, completed.stderr
    experiment_dir = project / "experiments" / "experiment_1"
    for fold in instance_json(experiment_dir, 1)["folds"]:
        saved = keras.models.load_model(experiment_dir / fold["model_file"])
        core = saved.get_layer("functional") if "functional" in [layer.name for layer in saved.layers] else \
            next(layer for layer in saved.layers if isinstance(layer, keras.Model))
        assert core.get_layer("hidden").units == 5  # positional, overridden
        assert core.get_layer("units").units == 7  # keyword-only, overridden
        for name in ("hidden", "units"):  # [training] key, overridden
            assert core.get_layer(name).kernel_regularizer.l2 == pytest.approx(0.031)


def test_a_decorator_that_drops_arguments_fails_the_fold_instead_of_ignoring_them(tiny_features, tmp_path):
    project = copy_project(tmp_path / "project")
    with open(project / "define_models.py", "a", encoding="utf-8") as models:
        models.write(EVERY_KIND_OF_ARGUMENT)
    routine = write_routine(project, {1: instance("decorated", "hidden = 5", model=[
        'architecture = "DECORATED_model"', "num_epochs = 1"])})
    completed = run_routine(routine, tiny_features["config_path"], project=project)
    assert completed.returncode == 1
    document = instance_json(project / "experiments" / "experiment_1", 1)
    assert document["status"] == "failed" and "as imported does not take the parameters" in document["error"]


def test_a_dataset_of_two_foldable_items_is_refused_for_what_it_is_not_for_its_num_folds():
    from plan import check_num_folds
    with pytest.raises(XvalError, match=r"the dataset has 2 foldable items: cross-validation needs 3 or more"):
        check_num_folds(2, 2)
    with pytest.raises(XvalError, match=r"num_folds = 2 leaves fewer than 2 training and validation items .* use "
                                        r"num_folds = 3"):
        check_num_folds(2, 3)
    check_num_folds(3, 3)
    check_num_folds(2, 4)
