"""The training recipes, each tested by its effect: class weights and focal loss change the loss, SpecAugment masks
what the model is fed, mixup mixes targets, the learning rate drops on a plateau, the best epoch on validation UAR
is the one with the best validation UAR, fine-tuning starts from the given weights, a smoke run writes nothing."""
import json
import os
import platform
import subprocess
import sys

import numpy as np
import pytest
from sklearn import metrics as skm
from sklearn.utils.class_weight import compute_class_weight

import training
from parameters import architecture_signatures, resolve_instance
from utility_functions import PROJECT_DIR
from routine_helpers import REPO, copy_project, instance, run_routine, write_routine
from utility_functions import XvalError, feature_sums, load_config, load_dataset

TRAINING = load_config(PROJECT_DIR / "config.ini")["training"]
BASE = ['task_type = "classification"', 'architecture = "EXAMPLE_model"', 'comment_1 = ""', 'comment_2 = ""']


def resolve(*strings, task_type="classification"):
    base = [text for text in BASE if not text.startswith("task_type")] + [f'task_type = "{task_type}"']
    return resolve_instance([*base, *strings], TRAINING, architecture_signatures(), "experiment_dict[1]")


def results(experiment_dir, run, dataset="tiny"):
    return json.loads((experiment_dir / "results" / f"results_{dataset}_exp{experiment_dir.name[11:]}_run{run}.json")
                      .read_text())


# ----------------------------------------------------------------------------------------------------------------
# Parameters: defaults, refusals

@pytest.mark.parametrize("strings, task_type, expected", [
    (['class_weight = "balanced"'], "regression", "class_weight = 'balanced' is for classification only"),
    (['loss = "focal"'], "regression", "loss = 'focal' is for classification only"),
    (['class_weight = "balance"'], "classification", "class_weight 'balance' is not one of none, balanced"),
    (["focal_gamma = 3.0"], "classification", "focal_gamma = 3.0 has no effect with loss = 'auto'"),
    (["time_mask_width = 4"], "classification", "time_mask_width = 4 has no effect with time_masks = 0"),
    (["lr_factor = 0.2"], "classification", "lr_factor = 0.2 has no effect with lr_patience = 0"),
    (["lr_patience = 2", "lr_factor = 1.5"], "classification", "lr_factor = 1.5 must be between 0 and 1"),
    (["num_epochs = 3", "patience = 3"], "classification", "patience = 3 has no effect with num_epochs = 3"),
    (["num_epochs = 3", "lr_patience = 5"], "classification", "lr_patience = 5 has no effect with num_epochs = 3"),
    (["learning_rate = 0.001", "lr_patience = 2", "min_lr = 0.1"], "classification",
     "lr_patience = 2 has no effect with min_lr = 0.1 at or above learning_rate = 0.001"),
    (['trainable = "last_layer"'], "classification", "trainable = 'last_layer' has no effect with no initial_model"),
    (["mixup_alpha = -0.2"], "classification", "mixup_alpha = -0.2 must not be negative"),
    (['save_best_model_metric = "val_balanced_accuracy"'], "regression", "not available for regression"),
])
def test_recipes_that_would_not_act_are_refused(strings, task_type, expected):
    with pytest.raises(XvalError) as refusal:
        resolve(*strings, task_type=task_type)
    assert expected in str(refusal.value)


def test_every_recipe_is_off_by_default():
    parameters = resolve()
    assert (parameters["class_weight"], parameters["loss"], parameters["time_masks"], parameters["freq_masks"],
            parameters["mixup_alpha"], parameters["lr_patience"], parameters["initial_model"]) == \
        ("none", "auto", 0, 0, 0.0, 0, "")


# ----------------------------------------------------------------------------------------------------------------
# The batches the model is fed

def test_balanced_weights_are_scikit_learns_from_the_training_clips():
    labels = np.array([0, 0, 0, 0, 0, 0, 1, 1, 3])
    y = np.eye(4, dtype=np.float32)[labels]
    weights = training.balanced_sample_weights(y)
    expected = dict(zip([0, 1, 3], compute_class_weight("balanced", classes=np.array([0, 1, 3]), y=labels)))
    np.testing.assert_allclose(weights, [expected[label] for label in labels], rtol=1e-6)


def test_spec_augment_and_mixup_are_in_the_batches_the_model_is_fed():
    import keras
    rng = np.random.default_rng(0)
    x = rng.normal(5, 2, (40, 30, 12)).astype(np.float32)
    y = np.eye(3, dtype=np.float32)[rng.integers(0, 3, 40)]
    mean, variance = training.normalisation_statistics(feature_sums(x), x.shape[0] * x.shape[1])
    parameters = dict(TRAINING, batch_size=8, seed=3, time_masks=2, time_mask_width=5, freq_masks=1,
                      freq_mask_width=4, mixup_alpha=0.0)
    batches = training.training_batches(keras, x, y, None, parameters, mean)["x"]
    normalise = keras.layers.Normalization(axis=-1, mean=mean, variance=variance)
    masked_somewhere = 0
    for index in range(len(batches)):
        xb, yb = batches[index]
        fed = np.asarray(normalise(xb))  # what the model's first layer passes on
        zero_frames = np.all(fed == 0, axis=2)  # a time mask zeroes whole frames
        zero_bins = np.all(fed == 0, axis=1)  # a frequency mask zeroes whole bins
        assert zero_frames.sum(axis=1).max() <= 2 * 5 and zero_bins.sum(axis=1).max() <= 4
        masked_somewhere += int(zero_frames.any()) + int(zero_bins.any())
        assert np.all(np.isin(yb, (0, 1)))  # no mixup: targets stay one-hot
    assert masked_somewhere > len(batches)
    first, second = (training.training_batches(keras, x, y, None, parameters, mean)["x"][0][0] for _ in range(2))
    np.testing.assert_array_equal(first, second)  # seeded: the same batches every time

    mixing = dict(parameters, time_masks=0, freq_masks=0, mixup_alpha=0.4)
    xb, yb = training.training_batches(keras, x, y, None, mixing, mean)["x"][0]
    assert not np.all(np.isin(yb, (0, 1)))  # mixed targets are not one-hot
    np.testing.assert_allclose(yb.sum(axis=1), 1, rtol=1e-6)
    plain = training.training_batches(keras, x, y, None, dict(mixing, mixup_alpha=0.0), mean)["x"]
    fed = [plain[index] for index in range(len(plain))]  # nothing to augment: every example once, shuffled, as is
    order = np.concatenate([xb for xb, _ in fed]).reshape(40, -1)[:, 0]
    assert sorted(order.tolist()) == sorted(x[:, 0, 0].tolist()) and order.tolist() != x[:, 0, 0].tolist()
    np.testing.assert_array_equal(np.concatenate([yb for _, yb in fed]).sum(axis=0), y.sum(axis=0))


# ----------------------------------------------------------------------------------------------------------------
# Effects in real trainings

@pytest.fixture(scope="module")
def recipes(tiny_features, tmp_path_factory):
    """One routine of tiny instances, each with one recipe, on the same 2 folds (the tiny set is imbalanced:
    2 neutral clips per actor against 4 of every other emotion)."""
    folder = tmp_path_factory.mktemp("recipes")
    short = ["num_epochs = 3", "early_stopping = False"]
    experiment_dict = {
        1: instance("plain", *short),
        2: instance("balanced", *short, 'class_weight = "balanced"'),
        3: instance("focal", *short, 'loss = "focal"', "focal_gamma = 2.0"),
        4: instance("plateau", "num_epochs = 4", "early_stopping = False", "learning_rate = 0.000001",
                    "lr_patience = 1", "lr_factor = 0.5"),
        5: instance("uar", "num_epochs = 4", "early_stopping = False",
                    'save_best_model_metric = "val_balanced_accuracy"'),
        6: instance("augmented", *short, "time_masks = 2", "freq_masks = 2", "mixup_alpha = 0.3"),
        7: instance("converge", "num_epochs = 4", "early_stopping = False", 'save_best_model_metric = "loss"',
                    model=['architecture = "POOLED_STATS_model"', "hidden_units = (8,)", "standardize = True",
                           "batch_size = 16"]),
    }
    routine = write_routine(folder, experiment_dict, num_folds=2)
    completed = run_routine(routine, tiny_features["config_path"])
    return {"completed": completed, "dir": folder / "experiments" / "experiment_1", "folder": folder,
            "routine": routine, "features": tiny_features}


def test_the_recipe_routine_runs(recipes):
    assert recipes["completed"].returncode == 0, recipes["completed"].stderr


def test_class_weights_and_focal_loss_change_the_loss(recipes):
    plain, balanced, focal = (results(recipes["dir"], run) for run in (1, 2, 3))
    for fold in range(2):
        first = plain["folds"][fold]["history"]["loss"][0]
        # the same seed, batches and start: without the weights the first loss would be the same number
        assert balanced["folds"][fold]["history"]["loss"][0] != first
        assert focal["folds"][fold]["history"]["loss"][0] < first  # (1 - p) ** 2 shrinks every term


def test_the_learning_rate_drops_on_a_plateau_in_the_history_and_the_curves(recipes):
    for fold in results(recipes["dir"], 4)["folds"]:
        rates = fold["history"]["learning_rate"]
        assert len(rates) == 4 and rates[0] == pytest.approx(1e-6)
        assert all(later <= earlier for earlier, later in zip(rates, rates[1:])) and rates[-1] < rates[0]
    import collect
    import plots
    instances = {instance.id: instance for instance in collect.load_instances(recipes["dir"])}
    assert "learning_rate" in plots.curve_metrics(instances[4])
    assert "learning_rate" not in plots.curve_metrics(instances[1])  # constant: no panel
    assert "balanced_accuracy" in plots.curve_metrics(instances[5])
    assert (recipes["dir"] / "plots").is_dir()


def test_the_epoch_chosen_on_validation_uar_has_the_best_validation_uar(recipes):
    import keras
    predictors, targets = load_dataset(recipes["features"]["features_folder"], "tiny")
    for fold in results(recipes["dir"], 5)["folds"]:
        uar = fold["history"]["val_balanced_accuracy"]
        assert fold["best_epoch"] == int(np.argmax(uar)) + 1 and fold["monitor"] == "val_balanced_accuracy"
        model = keras.models.load_model(recipes["dir"] / fold["model_file"])
        x = np.concatenate([predictors[item] for item in fold["val_items"]])
        y = np.concatenate([targets[item] for item in fold["val_items"]]).argmax(axis=1)
        assert skm.balanced_accuracy_score(y, model.predict(x, verbose=0).argmax(axis=1)) == \
            pytest.approx(max(uar))


def test_the_epoch_chosen_on_the_training_loss_has_the_lowest_training_loss(recipes):
    """save_best_model_metric = "loss": validation chooses nothing inside the fold (the pooled model's recipe); the
    model kept is the epoch of lowest training loss, and standardize = True puts a batch normalisation first."""
    import keras
    for fold in results(recipes["dir"], 7)["folds"]:
        loss = fold["history"]["loss"]
        assert fold["monitor"] == "loss" and fold["best_epoch"] == int(np.argmin(loss)) + 1
        model = keras.models.load_model(recipes["dir"] / fold["model_file"])
        kinds = [type(layer).__name__ for layer in training.leaf_layers(model)]
        assert kinds.index("BatchNormalization") == kinds.index("Concatenate") + 1


def test_augmented_training_completes_and_is_recorded(recipes):
    document = results(recipes["dir"], 6)
    assert document["status"] == "complete" and document["parameters"]["mixup_alpha"] == 0.3


def test_fine_tuning_starts_from_the_given_weights_and_trains_only_the_last_layer(recipes, tiny_features):
    import keras
    folder = recipes["folder"]
    start = "../experiment_1/models/model_tiny_exp1_run1_fold{fold}.hdf5"
    routine = write_routine(folder, {1: instance("tuned", "num_epochs = 2", f'initial_model = "{start}"',
                                                 'trainable = "last_layer"')},
                            name="finetune.py", num_experiment=2, num_folds=2)
    completed = run_routine(routine, tiny_features["config_path"])
    assert completed.returncode == 0, completed.stderr
    assert "WARNING" not in completed.stdout  # same dataset, same folds: nothing to warn of
    tuned_dir = folder / "experiments" / "experiment_2"
    for fold in results(tuned_dir, 1)["folds"]:
        tuned = keras.models.load_model(tuned_dir / fold["model_file"])
        initial = keras.models.load_model(recipes["dir"] / f"models/model_tiny_exp1_run1_fold{fold['fold']}.hdf5")
        tuned_weights, initial_weights = tuned.get_weights(), initial.get_weights()
        for before, after in zip(initial_weights[:-2], tuned_weights[:-2]):  # all but the last kernel and bias
            np.testing.assert_array_equal(before, after)
        assert not np.array_equal(initial_weights[-2], tuned_weights[-2])

    one_model = write_routine(folder, {1: instance("one model", "num_epochs = 1",
                                                   'initial_model = "../experiment_1/models/'
                                                   'model_tiny_exp1_run1_fold1.hdf5"')},
                              name="one_model.py", num_experiment=3, num_folds=2)
    warned = run_routine(one_model, tiny_features["config_path"])
    # fold 1's model saw the items of fold 2's test, never those of fold 1's own test: one warning, naming them
    test_items = json.loads((recipes["dir"] / "folds.json").read_text())["folds"][1]["test_items"]
    assert warned.returncode == 0 and f"its weights saw {len(test_items)} of fold 2's test items" in warned.stdout
    assert "fold 1's test items" not in warned.stdout


def test_an_initial_model_that_does_not_fit_is_refused_before_training(recipes, tiny_features):
    folder = recipes["folder"]
    for initial, words in (("../experiment_1/models/nothing_fold{fold}.hdf5", "which does not exist"),
                           (str(recipes["dir"] / "models" / "model_tiny_exp1_run1_fold1.hdf5"), None)):
        routine = write_routine(folder, {1: instance("bad start", "num_epochs = 1", f'initial_model = "{initial}"',
                                                     task_type="regression")},
                                name="bad_start.py", num_experiment=4, num_folds=2, dataset="tiny_intensity")
        refused = run_routine(routine, tiny_features["config_path"])
        assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
        assert (words or "has 8 outputs, the dataset needs 1") in refused.stderr
        assert not (folder / "experiments" / "experiment_4").exists()


# ----------------------------------------------------------------------------------------------------------------
# The smoke run

def test_a_smoke_run_tries_every_instance_and_writes_nothing(tiny_features, tmp_path):
    project = copy_project(tmp_path / "project")
    with open(project / "define_models.py", "a", encoding="utf-8") as models:
        models.write("\n\ndef BROKEN_model(input_shape, output_size, task_type, width=3):\n"
                     "    raise ValueError('shapes do not match at layer 7')\n")
    experiment_dict = {1: instance("fine"), 2: instance("broken", model=['architecture = "BROKEN_model"']),
                       3: instance("also fine", "num_epochs = 50")}
    routine = write_routine(project, experiment_dict, num_folds=3)
    completed = run_routine(routine, tiny_features["config_path"], "--smoke", project=project)
    assert completed.returncode == 1, completed.stdout + completed.stderr
    lines = [line for line in completed.stdout.splitlines() if line.startswith("instance ")]
    assert [line.split(":")[0] for line in lines] == ["instance 1 on CPU", "instance 2 on CPU", "instance 3 on CPU"]
    assert lines[0].startswith("instance 1 on CPU: ok (") and lines[2].startswith("instance 3 on CPU: ok (")
    assert "FAILED" in lines[1] and "shapes do not match at layer 7" in lines[1]
    assert not (project / "experiments").exists()
    only_two = run_routine(routine, tiny_features["config_path"], "--smoke", 3, project=project)
    assert only_two.returncode == 0 and "instance 3 on CPU: ok" in only_two.stdout and "instance 1" not in \
        only_two.stdout
    # every listed device takes its turn (here two CPU workers; on a workstation each GPU)
    in_turn = run_routine(routine, tiny_features["config_path"], "--smoke", 1, 3, "-1,-1", project=project)
    assert [line.split(":")[0] for line in in_turn.stdout.splitlines() if line.startswith("instance ")] == [
        "instance 1 on CPU worker 1", "instance 2 on CPU worker 2", "instance 3 on CPU worker 1"], in_turn.stdout
    assert not (project / "experiments").exists()


def test_rows_read_the_examples_asked_for_in_the_order_asked_from_every_part():
    rng = np.random.default_rng(1)
    parts = [rng.normal(size=(n, 3, 2)).astype(np.float32) for n in (4, 1, 5)]
    stacked = np.concatenate(parts)
    rows = training.Rows(parts)
    assert len(rows) == 10 and rows.shape == (10, 3, 2)
    for wanted in ([9, 0, 4, 4, 3], rng.permutation(10), []):
        np.testing.assert_array_equal(rows[np.array(wanted, dtype=int)], stacked[np.array(wanted, dtype=int)])
    np.testing.assert_array_equal(rows[3:7], stacked[3:7])
    np.testing.assert_array_equal(rows[:], stacked)


# One epoch of fit on TensorFlow through xval's batches and callbacks, in a fresh process (glibc's malloc settings
# are the process's), then a 4 MB array: JSON {"mapped": whether malloc mapped it apart from its heap}
MALLOC_PROBE = """
import dataclasses, json, sys
import numpy as np
import keras, registries, training
parameters = json.loads(sys.argv[1])
if sys.argv[2] == "without the hook":
    registries.BACKENDS["tensorflow"] = dataclasses.replace(registries.BACKENDS["tensorflow"],
                                                            epoch_input_ready=lambda: None)
rng = np.random.default_rng(0)
x = rng.normal(size=(96, 40, 32)).astype(np.float32)
y = np.eye(3, dtype=np.float32)[rng.integers(0, 3, 96)]
model = keras.Sequential([keras.Input((40, 32)), keras.layers.Reshape((40, 32, 1)),
                          keras.layers.Conv2D(8, 3, padding="same", activation="relu"), keras.layers.Flatten(),
                          keras.layers.Dense(3, activation="softmax")])
model.compile(optimizer="adam", loss="categorical_crossentropy")
callbacks, _ = training.make_callbacks(keras, "loss", "min", parameters, None)
model.fit(**training.training_batches(keras, x, y, None, parameters, x.mean(axis=(0, 1))), epochs=1, verbose=0,
          callbacks=callbacks)

array = np.ones(2 ** 22 // 8)  # 4 MiB, allocated by malloc in the main thread
with open("/proc/self/maps") as maps:
    heap = [[int(end, 16) for end in line.split()[0].split("-")] for line in maps if line.rstrip().endswith("[heap]")]
print(json.dumps({"mapped": not any(start <= array.ctypes.data < end for start, end in heap)}))
"""


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                    reason="glibc's malloc settings only (another C library keeps its own)")
def test_tensorflow_training_keeps_its_tensors_in_mallocs_heap():
    """TensorFlow's from_generator (how Keras feeds it a PyDataset) sets glibc's mmap threshold to 128 KiB, so every
    larger tensor of every step was mapped, unmapped and faulted in again (a demo fold's fit 21 s against 15 s).
    After an epoch of xval's fit, a 4 MB allocation comes from malloc's heap, as it does without TensorFlow."""
    parameters = dict(TRAINING, task_type="classification", backend="tensorflow", num_epochs=1, batch_size=16)

    def probe(which):
        completed = subprocess.run([sys.executable, "-c", MALLOC_PROBE, json.dumps(parameters), which], cwd=REPO,
                                   env=dict(os.environ, KERAS_BACKEND="tensorflow", PYTHONPATH=str(REPO)),
                                   capture_output=True, text=True, timeout=300)
        assert completed.returncode == 0, completed.stderr[-2000:]
        return json.loads(completed.stdout.splitlines()[-1])["mapped"]

    assert probe("with the hook") is False
    if not probe("without the hook"):
        pytest.skip("this TensorFlow no longer lowers glibc's mmap threshold: nothing left to undo")


@pytest.mark.parametrize("task_type", ["classification", "regression"])
def test_the_validation_scores_are_what_keras_evaluate_reports(task_type):
    """fit gets no validation_data: the epoch's val_loss (with the L2 penalty) and Keras's metrics come from one
    forward pass of ours, and must be what Keras's own evaluation of the same examples reports."""
    import keras
    rng = np.random.default_rng(3)
    x = rng.normal(size=(70, 6, 4)).astype(np.float32)
    classification = task_type == "classification"
    labels, values = rng.integers(0, 3, 70), rng.normal(size=70).astype(np.float32)
    y = np.eye(3, dtype=np.float32)[labels] if classification else values
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((6, 4)), keras.layers.Flatten(),
                              keras.layers.Dense(5, activation="relu", kernel_regularizer=keras.regularizers.L2(0.1)),
                              keras.layers.Dense(3 if classification else 1,
                                                 activation="softmax" if classification else None)])
    metrics = ["accuracy"] if classification else [keras.metrics.MeanAbsoluteError(name="mae"),
                                                    keras.metrics.RootMeanSquaredError(name="rmse")]
    model.compile(optimizer="adam", loss="categorical_crossentropy" if classification else "mean_squared_error",
                  metrics=metrics)
    model.fit(x[:50], y[:50], epochs=2, batch_size=16, verbose=0)
    ours = training.validation_logs(model, task_type, y[50:], training.predict_in_batches(model, x[50:], 16))
    theirs = model.evaluate(x[50:], y[50:], batch_size=16, verbose=0, return_dict=True)
    assert set(ours) == {f"val_{name}" for name in theirs}
    assert sum(model.losses) > 0.01  # the penalty is in both
    for name, value in theirs.items():
        assert ours[f"val_{name}"] == pytest.approx(value, rel=1e-5)
