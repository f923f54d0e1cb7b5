"""Parameter strings over defaults, the command line and the folds: the engine's refusals, without training."""
import importlib.util

import pytest

from parameters import (MANDATORY_PARAMETERS, architecture_signatures, declared_backends, parameter_hash,
                        resolve_instance)
from plan import make_folds
from utility_functions import PROJECT_DIR
from xval_instance import parse_command_line
from utility_functions import XvalError, load_config

TRAINING = load_config(PROJECT_DIR / "config.ini")["training"]
SIGNATURES = architecture_signatures()
BASE = ['task_type = "classification"', 'architecture = "EXAMPLE_model"', 'comment_1 = "c1"', 'comment_2 = "c2"']


def resolve(*extra, base=BASE):
    return resolve_instance([*base, *extra], TRAINING, SIGNATURES, "experiment_dict[1]")


def test_defaults_come_from_config_and_the_architecture_keywords():
    parameters = resolve()
    for name, value in TRAINING.items():
        assert parameters[name] == value
    assert parameters["filters"] == list(SIGNATURES["EXAMPLE_model"]["defaults"]["filters"])
    assert parameters["comment_1"] == "c1" and parameters["architecture"] == "EXAMPLE_model"


def test_overrides_apply_and_unambiguous_types_are_coerced():
    parameters = resolve('learning_rate = "0.0005"', "num_epochs = 7.0", 'batch_size = "8"',
                         "regularization_lambda = 1", 'early_stopping = "false"', "filters = (8, 16)")
    assert parameters["learning_rate"] == 0.0005 and isinstance(parameters["learning_rate"], float)
    assert parameters["num_epochs"] == 7 and isinstance(parameters["num_epochs"], int)
    assert parameters["batch_size"] == 8
    assert parameters["regularization_lambda"] == 1.0 and isinstance(parameters["regularization_lambda"], float)
    assert parameters["early_stopping"] is False
    assert parameters["filters"] == [8, 16]


def test_values_with_slash_and_equals_sign_work():
    parameters = resolve(base=['task_type = "classification"', 'architecture = "EXAMPLE_model"',
                               'comment_1 = "lr = 1/1000, a=b"', "comment_2 = 'x/y'"])
    assert parameters["comment_1"] == "lr = 1/1000, a=b" and parameters["comment_2"] == "x/y"


@pytest.mark.parametrize("strings, expected", [
    (['learning_rat = 0.1'], "did you mean learning_rate"),
    (['learning_rate = "fast"'], "does not fit the default"),
    (['num_epochs = 2.5'], "does not fit the default"),
    (['early_stopping = 1'], "does not fit the default"),
    (['optimizer = 3'], "does not fit the default"),
    (['filters = 16'], "does not fit the default"),
    (['optimizer = "adamm"'], "optimizer 'adamm' is unknown"),
    (['learning_rate = 0'], "must be greater than 0"),
    (['save_best_model_metric = "val_rmse"'], "not available for classification"),
    (['learning_rate = 0.1', 'learning_rate = 0.2'], "assigned twice"),
    (['learning_rate = = 0.1'], "is not a Python assignment"),
    (['learning_rate'], "is not one assignment"),
    (['a, b = 1, 2'], "is not one assignment"),
    (['optimizer = adam'], "cannot be evaluated"),
    ([3], "is not a string"),
    (['hidden_units = [8]'], "unknown parameter 'hidden_units' for architecture EXAMPLE_model"),
    (['learning_rate = float("nan")'], "is not a finite number"),
    (['learning_rate = 1e308 * 10'], "is not a finite number"),
    (['dropout = -float("inf")'], "is not a finite number"),
    (['filters = [8, float("nan")]'], "is not a finite number"),
    (['learning_rate = 10 ** 400'], "does not fit the default"),
    (['num_epochs = "1e400"'], "does not fit the default"),
    (['filters = [8, 16.5]'], "filters[1]: 16.5 (float) does not fit the default 16 (int)"),
    (['filters = ["wide"]'], "does not fit the default"),
    (['filters = {8, 16}'], "is a set"),
    (['dropout = 1j'], "is a complex"),
    (['seed = -1'], "seed = -1 must be between 0 and 2**32 - 1"),
    (['seed = 2 ** 32'], "must be between 0 and 2**32 - 1"),
    (['patience = 3', 'early_stopping = False'], "patience = 3 has no effect with early_stopping = False"),
    (['save_best_model_metric = "val_balanced_accuracy"', 'save_best_model_mode = "min"'],
     "save_best_model_mode = 'min' would keep the worst epoch of val_balanced_accuracy (best is max)"),
    (['save_best_model_mode = "max"'], "would keep the worst epoch of val_loss (best is min)"),
])
def test_bad_parameter_strings_are_refused_with_one_clear_line(strings, expected):
    with pytest.raises(XvalError) as refusal:
        resolve(*strings)
    message = str(refusal.value)
    assert expected in message and "\n" not in message and message.startswith("experiment_dict[1]")


def test_a_bad_config_value_the_instance_does_not_set_is_blamed_on_config_ini():
    for key, value in (("patience", -1), ("optimizer", "adamm"), ("seed", -3)):
        with pytest.raises(XvalError) as refusal:
            resolve_instance(BASE, dict(TRAINING, **{key: value}), SIGNATURES, "experiment_dict[1]")
        assert f"(config.ini [training] gives it: fix {key} there, or set it in the instance)" in str(refusal.value)
    with pytest.raises(XvalError) as refusal:  # set by the instance: the instance's line, as before
        resolve("patience = -1")
    assert str(refusal.value) == "experiment_dict[1]: patience = -1 must not be negative"


@pytest.mark.parametrize("missing", MANDATORY_PARAMETERS)
def test_mandatory_parameters(missing):
    strings = [text for text in BASE if not text.startswith(missing)]
    with pytest.raises(XvalError, match=f"mandatory parameter {missing} missing"):
        resolve_instance(strings, TRAINING, SIGNATURES, "experiment_dict[1]")


def test_unknown_architecture_and_task_type():
    with pytest.raises(XvalError, match="did you mean EXAMPLE_model"):
        resolve(base=['task_type = "classification"', 'architecture = "EXAMPLE_modle"', 'comment_1 = ""',
                      'comment_2 = ""'])
    with pytest.raises(XvalError, match="task_type 'clasification' is unknown"):
        resolve(base=['task_type = "clasification"', 'architecture = "EXAMPLE_model"', 'comment_1 = ""',
                      'comment_2 = ""'])


def test_architecture_signatures_read_from_source_without_tensorflow(tmp_path):
    models = tmp_path / "models.py"
    models.write_text("def helper(x):\n    pass\n"
                      "def A(input_shape, output_size, task_type, regularization_lambda, width=(4, 8), name='a'):\n"
                      "    pass\n"
                      "def B(input_shape, output_size, task_type, size=len('ab')):\n    pass\n")
    with pytest.raises(XvalError, match="is not a literal"):
        architecture_signatures(models)
    models.write_text(models.read_text().replace("len('ab')", "2"))
    signatures = architecture_signatures(models)
    assert set(signatures) == {"A", "B"}
    assert signatures["A"] == {"arguments": ["regularization_lambda", "width", "name"], "unsupported": None,
                               "required": ["regularization_lambda"], "defaults": {"width": (4, 8), "name": "a"},
                               "backend": None}


MODELS_OF_EVERY_KIND = (
    "def KW(input_shape, output_size, task_type, regularization_lambda, width=4, *, units=32, depth):\n    pass\n"
    "def NO_REG(input_shape, output_size, task_type, width=4):\n    pass\n"
    "def STARS(input_shape, output_size, task_type, width=4, **options):\n    pass\n"
    "def ARGS(input_shape, output_size, task_type, *layers):\n    pass\n"
    "def POSONLY(input_shape, output_size, task_type, width, /, depth=2):\n    pass\n")


def test_keyword_only_arguments_are_parameters_like_any_other(tmp_path):
    models = tmp_path / "models.py"
    models.write_text(MODELS_OF_EVERY_KIND)
    signatures = architecture_signatures(models)
    assert signatures["KW"]["arguments"] == ["regularization_lambda", "width", "units", "depth"]
    assert signatures["KW"]["defaults"] == {"width": 4, "units": 32}
    strings = ['task_type = "classification"', 'comment_1 = ""', 'comment_2 = ""', 'architecture = "KW"']
    with pytest.raises(XvalError, match="argument 'depth' has no default"):
        resolve_instance([*strings, "units = 8"], TRAINING, signatures, "i")
    models.write_text(MODELS_OF_EVERY_KIND.replace("*, units=32, depth", "*, units=32, depth=len('ab')"))
    with pytest.raises(XvalError, match="the default of KW's argument 'depth' is not a literal"):
        architecture_signatures(models)
    models.write_text(MODELS_OF_EVERY_KIND.replace("*, units=32, depth", "*, units=32, depth=1"))
    parameters = resolve_instance([*strings, "units = 8"], TRAINING, architecture_signatures(models), "i")
    assert parameters["units"] == 8 and parameters["depth"] == 1


@pytest.mark.parametrize("architecture, strings, expected", [
    ("STARS", [], "define_models.STARS takes **options, so xval cannot tell which parameters reach the model"),
    ("ARGS", [], "define_models.ARGS takes *layers"),
    ("POSONLY", [], "positional-only arguments after task_type"),
    ("NO_REG", ["regularization_lambda = 0.1"], "regularization_lambda would never reach the model: architecture "
                                                "NO_REG has no argument 'regularization_lambda'"),
])
def test_an_argument_the_model_would_never_receive_is_refused(tmp_path, architecture, strings, expected):
    models = tmp_path / "models.py"
    models.write_text(MODELS_OF_EVERY_KIND.replace("*, units=32, depth", "*, units=32, depth=1"))
    base = ['task_type = "classification"', 'comment_1 = ""', 'comment_2 = ""', f'architecture = "{architecture}"']
    with pytest.raises(XvalError) as refusal:
        resolve_instance([*base, *strings], TRAINING, architecture_signatures(models), "i")
    assert expected in str(refusal.value) and "\n" not in str(refusal.value)


def test_a_model_only_training_key_is_left_out_where_the_architecture_does_not_take_it(tmp_path):
    models = tmp_path / "models.py"
    models.write_text(MODELS_OF_EVERY_KIND.replace("*, units=32, depth", "*, units=32, depth=1"))
    base = ['task_type = "classification"', 'comment_1 = ""', 'comment_2 = ""', 'architecture = "NO_REG"']
    parameters = resolve_instance(base, TRAINING, architecture_signatures(models), "i")
    assert "regularization_lambda" not in parameters and parameters["width"] == 4


def test_an_architecture_default_that_shadows_a_config_key_is_refused(tmp_path):
    models = tmp_path / "models.py"
    models.write_text("def A(input_shape, output_size, task_type, learning_rate=0.1):\n    pass\n"
                      "def B(input_shape, output_size, task_type, depth):\n    pass\n")
    signatures = architecture_signatures(models)
    strings = ['task_type = "classification"', 'comment_1 = ""', 'comment_2 = ""']
    with pytest.raises(XvalError, match="config.ini \\[training\\] defines it too"):
        resolve_instance([*strings, 'architecture = "A"'], TRAINING, signatures, "i")
    with pytest.raises(XvalError, match="argument 'depth' has no default"):
        resolve_instance([*strings, 'architecture = "B"'], TRAINING, signatures, "i")


def test_the_hash_is_stable_and_ignores_comments():
    first = resolve()
    second = resolve('comment_1 = "edited"', base=BASE[:2] + BASE[3:])
    assert parameter_hash(first, "d", 4) == parameter_hash(second, "d", 4)
    assert parameter_hash(first, "d", 4) != parameter_hash(resolve("seed = 2"), "d", 4)
    assert parameter_hash(first, "d", 4) != parameter_hash(first, "d", 5)
    assert len(parameter_hash(first, "d", 4)) == 64


def test_the_fold_servers_started_before_the_plan_are_those_the_selected_instances_name():
    """A routine starts its fold servers while it makes the plan: those of the backends the selected instances name,
    and config.ini's only where an instance names none (a JAX routine's TensorFlow server competed with its JAX
    server's import for the cores). A string that does not parse counts as naming none: the plan refuses it."""
    experiment_dict = {1: ['backend = "jax"', 'learning_rate = 0.1'], 2: ["num_epochs = 2"],
                       3: ['backend = "torch"'], 4: ['backend = "jax"', 'learning_rate = loguniform(1e-4, 1e-2)'],
                       5: ["backend = jax"], 6: ['backend = "theano"'], 7: None, 8: ['backend = ["jax"]'], 9: "x"}
    def installed(*names):  # a backend that is not installed gets no server (the plan refuses it with the fix)
        return [name for name in names if importlib.util.find_spec(name) is not None]

    assert declared_backends(experiment_dict, [1], "tensorflow") == installed("jax")
    assert declared_backends(experiment_dict, [1, 4], "tensorflow") == installed("jax")
    assert declared_backends(experiment_dict, [3, 1, 2], "tensorflow") == installed("torch", "jax", "tensorflow")
    assert declared_backends(experiment_dict, [5, 7, 8, 9], "tensorflow") == ["tensorflow"]
    assert declared_backends(experiment_dict, [6], "tensorflow") == []  # unknown: the plan refuses it
    assert declared_backends(experiment_dict, [2], "jax") == installed("jax")
    assert declared_backends(experiment_dict, [], "tensorflow") == ["tensorflow"]


@pytest.mark.parametrize("argv, expected", [
    ([], ([1, 2, 5, 7], [0])), (["2"], ([2], [0])), (["2", "5"], ([2, 5], [0])),
    (["1", "9", "3"], ([1, 2, 5, 7], [3])), (["1", "9", "0,1,2,3"], ([1, 2, 5, 7], [0, 1, 2, 3])),
    (["2", "2", "-1,-1"], ([2], [-1, -1])), (["--", "2", "5", "-1"], ([2, 5], [-1])),
])
def test_command_line_selects_instances_and_devices(argv, expected):
    command = parse_command_line(argv, [1, 2, 5, 7], [0], "exp.py")
    assert (command["selected"], command["devices"], command["mode"]) == (*expected, "run")


def test_command_line_modes_and_slurm_options():
    command = parse_command_line(["--slurm", "--time=0:10:00", "--max-parallel", "2", "--sbatch-line",
                                     "--qos=a", "--sbatch-line=--account=b", "5"], [1, 2, 5, 7], [0], "exp.py")
    assert command["mode"] == "slurm" and command["selected"] == [5]
    assert command["options"] == {"time": "0:10:00", "max_parallel": "2", "extra_sbatch": "--qos=a;--account=b"}
    assert parse_command_line(["--status"], [1, 2], [0], "exp.py")["mode"] == "status"
    empty = parse_command_line(["--slurm", "--gres=", "2", "5"], [1, 2, 5, 7], [0], "exp.py")
    assert empty["options"] == {"gres": ""} and empty["selected"] == [2, 5]  # --gres= empties it: a CPU cluster


@pytest.mark.parametrize("argv, expected", [
    (["a"], "must be whole numbers"), (["5", "3"], "is after last"), (["3", "4"], "no instance between 3 and 4"),
    (["1", "2", "3", "4"], "too many arguments"), (["1", "2", "0,x"], "devices must be CUDA device numbers"),
    (["1", "2", "-2"], "devices must be"), (["--time=1:00:00"], "--time only acts with --slurm"),
    (["--slurm", "--status"], "cannot be combined"), (["--slurm", "1", "2", "0"], "--slurm takes no DEVICES"),
    (["--fast"], "unknown option --fast"), (["--slurm", "--mem"], "--mem needs a value"),
    (["--slurm", "--time", "--max-parallel", "3"], "--time needs a value"), (["1", "2", "0,--1"], "devices must be"),
    (["1_0"], "must be whole numbers"), (["\u0661"], "must be whole numbers"), (["1", "2", "0_1"], "devices must be"),
])
def test_command_line_errors_show_the_usage(argv, expected):
    with pytest.raises(XvalError) as refusal:
        parse_command_line(argv, [1, 2, 5, 7], [0], "exp.py")
    assert expected in str(refusal.value) and "usage: python3 exp.py" in str(refusal.value)


@pytest.mark.parametrize("num_folds", [2, 3, 5, 12])
def test_folds_are_a_true_partition_with_disjoint_validation(num_folds):
    items = [f"{actor:02d}" for actor in range(1, 13)]
    folds = make_folds(items, num_folds, seed=3, validation_share=0.2)
    assert len(folds) == num_folds
    tested = [item for fold in folds for item in fold["test_items"]]
    assert sorted(tested) == items  # every item tested exactly once
    for fold in folds:
        train, val, test = map(set, (fold["train_items"], fold["val_items"], fold["test_items"]))
        assert train | val | test == set(items)
        assert not (train & val) and not (train & test) and not (val & test)
        assert val and train
    assert folds == make_folds(list(reversed(items)), num_folds, seed=3, validation_share=0.2)
    assert folds != make_folds(items, num_folds, seed=4, validation_share=0.2)


@pytest.mark.parametrize("items, num_folds, seed", [(12, 4, 1), (24, 5, 7), (7, 3, 123), (30, 10, 2 ** 31 - 1)])
def test_the_default_splitter_makes_the_k_fold_split_of_the_items(items, num_folds, seed):
    # GroupKFold, shuffled by folds_seed, tests the items scikit-learn's KFold over the items tests (what xval did
    # before splitters were a setting), in the same order
    from sklearn.model_selection import KFold
    names = sorted(f"spk{index * 37 % 101:03d}" for index in range(items))
    folds = make_folds(names, num_folds, seed, validation_share=0.2)
    expected = [sorted(names[i] for i in test) for _, test in KFold(num_folds, shuffle=True, random_state=seed)
                .split(names)]
    assert [fold["test_items"] for fold in folds] == expected


def test_stratified_and_leave_one_out_splitters():
    import numpy as np
    items = [f"{actor:02d}" for actor in range(1, 13)]
    # items 01-06 speak mostly class 0, 07-12 mostly class 1: a stratified split mixes both into every fold
    labels = {item: np.array([0] * 9 + [1] if index < 6 else [1] * 9 + [0]) for index, item in enumerate(items)}
    folds = make_folds(items, 3, 1, 0.2, "StratifiedGroupKFold", labels)
    assert sorted(item for fold in folds for item in fold["test_items"]) == items
    for fold in folds:
        shares = [np.mean(np.concatenate([labels[item] for item in fold["test_items"]]))]
        assert 0.3 <= shares[0] <= 0.7, fold["test_items"]
    alone = make_folds(items, 12, 1, 0.2, "LeaveOneGroupOut")
    assert [fold["test_items"] for fold in alone] == [[item] for item in items]
    with pytest.raises(XvalError, match="one fold per foldable item: set num_folds = 12"):
        make_folds(items, 4, 1, 0.2, "LeaveOneGroupOut")
    with pytest.raises(XvalError, match="stratifies by class"):
        make_folds(items, 3, 1, 0.2, "StratifiedGroupKFold", {item: None for item in items})


@pytest.mark.parametrize("num_folds, expected", [(1, "at least 2"), (13, "more than the 12 items"),
                                                 ("3", "whole number")])
def test_fold_counts_that_cannot_work_are_refused(num_folds, expected):
    with pytest.raises(XvalError, match=expected):
        make_folds([f"{actor:02d}" for actor in range(1, 13)], num_folds, seed=1, validation_share=0.2)
