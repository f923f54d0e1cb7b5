"""The experiment engine: a routine script's settings in, one complete results folder out.

A routine script (xval_routine_example.py, copied per experiment) ends with run_routine(...). It:
  1. reads the command line (which instances, which GPU);
  2. makes the plan (validate): resolves every selected instance's parameter strings over the defaults (config.ini
     [training] plus the architecture's keyword defaults), checks and fingerprints the dataset, makes (or reuses)
     the experiment's k-fold split over the foldable items, and finds which folds are done and may be reused;
     anything doubtful is refused before anything is written;
  3. runs each missing fold job (one instance x one fold) in its own process (training.py);
  4. assembles each instance's results JSON from its fold results and rebuilds the spreadsheet after each instance
     it trains; logs/launch_*.json records where the launch's time went.
This module imports neither TensorFlow nor define_models: the architectures' signatures are read from the source,
so validation is instant and the parent process stays small however many instances it runs.
"""
import ast
import builtins
import difflib
import hashlib
import importlib.util
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

import numpy as np

from utility_functions import (BACKENDS, CONFIG_SCHEMA, DATA_ARGUMENTS, EPOCH_PREFIX, ERROR_PREFIX, EXIT_PREFIX,
                               HOST, MAIN_METRIC, MODEL_ONLY_TRAINING_PARAMETERS, MONITORABLE, OPTIMIZERS,
                               PROJECT_DIR, SERVE_FLAG, SPLITS, TASK_TYPES, XvalError, atomic_write_json, atomic_write_text, check_dataset,
                               check_target, claim, config_path_in_use, dataset_file_stats, dataset_fingerprint,
                               dataset_paths, exit_on_user_error, file_mutex, load_clip_ids, load_config,
                               load_dataset, read_json, release, remove_stale_temp_files)

MODELS_FILE = PROJECT_DIR / "define_models.py"
TRAINING_SCRIPT = PROJECT_DIR / "training.py"
MANDATORY_PARAMETERS = ("comment_1", "comment_2", "task_type", "architecture")
BACKENDS_NAME = "ARCHITECTURE_BACKENDS"  # define_models.py's {architecture: the only backend it runs on}
NOT_HASHED = ("comment_1", "comment_2")  # editing a comment does not invalidate finished folds
# parameters that act only with some value of others: (name, whether it acts, what idles it, what would make it act)
CONDITIONAL_PARAMETERS = (
    ("patience", lambda p: p["early_stopping"], "early_stopping = False", "early_stopping = True"),
    ("focal_gamma", lambda p: p["loss"] == "focal", "loss = 'auto'", 'loss = "focal"'),
    ("time_mask_width", lambda p: p["time_masks"] > 0, "time_masks = 0", "time_masks = 1 or more"),
    ("freq_mask_width", lambda p: p["freq_masks"] > 0, "freq_masks = 0", "freq_masks = 1 or more"),
    ("lr_factor", lambda p: p["lr_patience"] > 0, "lr_patience = 0", "lr_patience = 1 or more"),
    ("min_lr", lambda p: p["lr_patience"] > 0, "lr_patience = 0", "lr_patience = 1 or more"),
    ("trainable", lambda p: bool(p["initial_model"]), "no initial_model", "initial_model"),
)
SAFE_BUILTINS = {name: getattr(builtins, name) for name in ("abs", "min", "max", "round", "int", "float", "str",
                                                          "bool", "list", "tuple", "dict", "range", "len", "sum")}
SMOKE_FLAG = "--smoke"
SMOKE_BATCHES = 2  # batches per split of a smoke run's fold
PACKAGES_RECORDED = ("numpy", "scipy", "tensorflow", "keras", "torch", "jax", "jaxlib", "librosa", "scikit-learn",
                     "pandas", "soundfile", "xlsxwriter", "matplotlib", "h5py")


# ----------------------------------------------------------------------------------------------------------------
# Command line

def parse_command_line(argv, instance_ids, default_gpu, script_name):
    """[FIRST [LAST [GPU]]] -> (selected instance ids, gpu). One id alone selects that instance only."""
    usage = (f"usage: python3 {script_name} [{SMOKE_FLAG}] [FIRST_INSTANCE [LAST_INSTANCE [GPU_ID]]]  "
             f"(instances defined: {', '.join(map(str, instance_ids))})")
    if len(argv) > 3:
        raise XvalError(f"too many arguments ({len(argv)}, at most 3) — {usage}")
    try:
        numbers = [int(text) for text in argv]
    except ValueError:
        raise XvalError(f"arguments must be whole numbers, got {' '.join(argv)!r} — {usage}") from None
    first = numbers[0] if numbers else min(instance_ids)
    last = numbers[1] if len(numbers) > 1 else (first if numbers else max(instance_ids))
    if first > last:
        raise XvalError(f"first instance {first} is after last instance {last} — {usage}")
    selected = [instance for instance in instance_ids if first <= instance <= last]
    if not selected:
        raise XvalError(f"no instance between {first} and {last} — {usage}")
    gpu = numbers[2] if len(numbers) > 2 else default_gpu
    return selected, gpu


# ----------------------------------------------------------------------------------------------------------------
# Parameters: strings over defaults

def architecture_signatures(models_file=MODELS_FILE):
    """Read define_models.py without importing it: {architecture: signature}.

    An architecture is a public top-level function whose first arguments are input_shape, output_size, task_type.
    Its signature: {"arguments": the names after those three, positional then keyword-only, "required": those
    without a default, "defaults": {name: literal default}, "unsupported": why xval cannot pass every parameter
    to it (a *args, **kwargs or positional-only argument), or None, "backend": the Keras backend it needs (from
    the module's ARCHITECTURE_BACKENDS literal), or None}. A default that is not a literal is refused.
    """
    try:
        tree = ast.parse(Path(models_file).read_text(encoding="utf-8"), filename=str(models_file))
    except SyntaxError as error:
        raise XvalError(f"{models_file} line {error.lineno}: {error.msg}: fix the syntax") from None
    signatures, backends = {}, {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == [BACKENDS_NAME]:
            backends = ast.literal_eval(node.value)
        if not isinstance(node, ast.FunctionDef) or node.name.startswith("_"):
            continue
        positional = node.args.posonlyargs + node.args.args
        if tuple(argument.arg for argument in positional[:3]) != DATA_ARGUMENTS:
            continue
        pairs = list(zip(positional[len(positional) - len(node.args.defaults):], node.args.defaults))
        pairs += [(argument, default) for argument, default in zip(node.args.kwonlyargs, node.args.kw_defaults)
                  if default is not None]
        defaults = {}
        for argument, default in pairs:
            try:
                defaults[argument.arg] = ast.literal_eval(default)
            except ValueError:
                raise XvalError(f"{models_file} line {default.lineno}: the default of {node.name}'s argument "
                                f"'{argument.arg}' is not a literal: write a number, string, tuple or list") from None
        unsupported = None
        if node.args.vararg or node.args.kwarg:
            star = f"*{node.args.vararg.arg}" if node.args.vararg else f"**{node.args.kwarg.arg}"
            unsupported = (f"takes {star}, so xval cannot tell which parameters reach the model: name each "
                           "argument, with a default")
        elif len(node.args.posonlyargs) > 3:
            unsupported = ("has positional-only arguments after task_type: make them ordinary arguments "
                           "(xval passes parameters by name)")
        arguments = [argument.arg for argument in positional[3:] + node.args.kwonlyargs]
        signatures[node.name] = {"arguments": arguments, "defaults": defaults, "unsupported": unsupported,
                                 "required": [name for name in arguments if name not in defaults]}
    for name, signature in signatures.items():
        signature["backend"] = backends.get(name)
    return signatures


def check_plain_value(value, where):
    """XvalError unless value is plain data: None, bool, int, finite float, str, or lists, tuples and dicts of them.

    What the fold receives is this value's JSON: a NaN would arrive as null, a set or a complex number not at all.
    """
    if isinstance(value, float) and not math.isfinite(value):
        raise XvalError(f"{where}: {value!r} is not a finite number: give a finite value")
    if isinstance(value, (list, tuple)):
        for element in value:
            check_plain_value(element, where)
    elif isinstance(value, dict):
        for key, element in value.items():
            if not isinstance(key, str):
                raise XvalError(f"{where}: dictionary key {key!r} is not a string: quote it")
            check_plain_value(element, where)
    elif value is not None and not isinstance(value, (bool, int, float, str)):
        raise XvalError(f"{where}: {value!r} is a {type(value).__name__}: use numbers, strings, booleans, None, "
                        "lists, tuples or dictionaries")


def parse_parameter_string(text, where):
    """'name = value' -> (name, value): one Python assignment to one name, its value an expression of plain data."""
    if not isinstance(text, str):
        raise XvalError(f"{where}: {text!r} is not a string: write parameters as 'name = value' strings")
    try:
        statements = ast.parse(text.strip(), mode="exec").body
    except SyntaxError as error:
        raise XvalError(f"{where}: {text!r} is not a Python assignment ({error.msg}): write it as "
                        "'name = value', with strings quoted") from None
    if len(statements) != 1 or not isinstance(statements[0], ast.Assign) or len(statements[0].targets) != 1 \
            or not isinstance(statements[0].targets[0], ast.Name):
        raise XvalError(f"{where}: {text!r} is not one assignment to one name: write it as 'name = value'")
    expression = ast.Expression(statements[0].value)
    namespace = {"__builtins__": SAFE_BUILTINS}  # an explicit dict: never locals()
    try:
        value = eval(compile(expression, where, "eval"), namespace)
    except Exception as error:
        raise XvalError(f"{where}: the value of {text!r} cannot be evaluated ({type(error).__name__}: {error}): "
                        "quote strings, e.g. optimizer = \"adam\"") from None
    name = statements[0].targets[0].id
    check_plain_value(value, f"{where}, {name}")
    return name, value


def coerce_to_default_type(value, default, where):
    """value converted to the type of default where that is unambiguous ('"0.001"' -> 0.001); XvalError otherwise.

    A list or tuple default whose elements share one type gives its type to every element of the value.
    """
    def refuse():
        raise XvalError(f"{where}: {value!r} ({type(value).__name__}) does not fit the default {default!r} "
                        f"({type(default).__name__}): give a {type(default).__name__}")

    def as_finite_float(number):
        try:
            number = float(number)
        except (ValueError, OverflowError):
            refuse()
        if not math.isfinite(number):
            refuse()
        return number

    if default is None:
        return value
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        refuse()
    if isinstance(value, bool):  # True is an int to Python, never a number here
        refuse()
    if isinstance(default, int):
        if isinstance(value, int):
            return value
        if isinstance(value, (str, float)):
            number = as_finite_float(value)
            if number.is_integer():
                return int(number)
        refuse()
    if isinstance(default, float):
        if isinstance(value, (int, float, str)):
            return as_finite_float(value)
        refuse()
    if isinstance(default, str):
        if isinstance(value, str):
            return value
        refuse()
    if isinstance(default, (list, tuple)):
        if not isinstance(value, (list, tuple)):
            refuse()
        element_types = {type(element) for element in default}
        if len(element_types) == 1 and element_types <= {bool, int, float, str}:
            return [coerce_to_default_type(element, default[0], f"{where}[{index}]")
                    for index, element in enumerate(value)]
        return list(value)
    if type(value) is not type(default):
        refuse()
    return value


def closest(name, known):
    """A hint naming the closest known names to a misspelt one."""
    matches = difflib.get_close_matches(name, sorted(known), n=3, cutoff=0.6)
    return f"did you mean {' or '.join(matches)}?" if matches else f"known names: {', '.join(sorted(known))}"


def check_training_values(parameters, overridden, where):
    """Value checks beyond the type: choices, ranges, what a task type allows, and that every parameter the
    instance sets (overridden: their names) acts with the others' values."""
    def fail(message):
        raise XvalError(f"{where}: {message}")
    if parameters["optimizer"] not in OPTIMIZERS:
        fail(f"optimizer {parameters['optimizer']!r} is unknown: use one of {', '.join(OPTIMIZERS)}")
    allowed = MONITORABLE[parameters["task_type"]]
    if parameters["save_best_model_metric"] not in allowed:
        fail(f"save_best_model_metric {parameters['save_best_model_metric']!r} is not available for "
             f"{parameters['task_type']}: use one of {', '.join(allowed)}")
    if parameters["save_best_model_mode"] not in ("min", "max", "auto"):
        fail(f"save_best_model_mode {parameters['save_best_model_mode']!r} must be min, max or auto")
    for name, kind in CONFIG_SCHEMA["training"].items():
        if isinstance(kind, tuple) and parameters[name] not in kind:
            fail(f"{name} {parameters[name]!r} is not one of {', '.join(kind)}")
    for name in ("batch_size", "num_epochs", "learning_rate", "time_mask_width", "freq_mask_width"):
        if parameters[name] <= 0:
            fail(f"{name} = {parameters[name]} must be greater than 0")
    for name in ("patience", "regularization_lambda", "focal_gamma", "time_masks", "freq_masks", "mixup_alpha",
                 "lr_patience", "min_lr"):
        if name in parameters and parameters[name] < 0:
            fail(f"{name} = {parameters[name]} must not be negative")
    if not 0 < parameters["lr_factor"] < 1:
        fail(f"lr_factor = {parameters['lr_factor']} must be between 0 and 1 (the learning rate is multiplied by it)")
    if not 0 <= parameters["seed"] < 2 ** 32:
        fail(f"seed = {parameters['seed']} must be between 0 and 2**32 - 1")
    if parameters["task_type"] == "regression":
        for name, default in (("class_weight", "none"), ("loss", "auto")):
            if parameters[name] != default:
                fail(f"{name} = {parameters[name]!r} is for classification only: remove it from regression "
                     "instances")
    for name, acts, idle, fix in CONDITIONAL_PARAMETERS:
        if name in overridden and not acts(parameters):
            fail(f"{name} = {parameters[name]!r} has no effect with {idle}: remove it, or set {fix}")


def resolve_instance(parameter_strings, training_defaults, signatures, where):
    """One instance's resolved parameters: defaults, then its strings in order. Refuses any doubt with XvalError.

    Every resolved parameter reaches its use: the training loop reads the [training] keys (but those of
    MODEL_ONLY_TRAINING_PARAMETERS, which exist only where the architecture takes them), the architecture receives
    every one of its arguments by name, comments only label. Anything else is refused here, before training.
    """
    if not isinstance(parameter_strings, (list, tuple)):
        raise XvalError(f"{where}: the value must be a list of 'name = value' strings, not "
                        f"{type(parameter_strings).__name__}")
    overrides = {}
    for position, text in enumerate(parameter_strings, 1):
        name, value = parse_parameter_string(text, f"{where}, parameter {position}")
        if name in overrides:
            raise XvalError(f"{where}: {name} is assigned twice: keep one of the two strings")
        overrides[name] = value
    missing = [name for name in MANDATORY_PARAMETERS if name not in overrides]
    if missing:
        raise XvalError(f"{where}: mandatory parameter{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
                        f"missing: add e.g. 'task_type = \"classification\"', 'architecture = \"EXAMPLE_model\"'")
    task_type, architecture = overrides["task_type"], overrides["architecture"]
    if task_type not in TASK_TYPES:
        raise XvalError(f"{where}: task_type {task_type!r} is unknown: use \"classification\" or \"regression\"")
    if architecture not in signatures:
        raise XvalError(f"{where}: architecture {architecture!r} is not a model function of define_models.py: "
                        f"{closest(str(architecture), signatures)}")
    signature = signatures[architecture]
    if signature["unsupported"]:
        raise XvalError(f"define_models.{architecture} {signature['unsupported']}")
    for name in signature["required"]:
        if name not in training_defaults:
            raise XvalError(f"define_models.{architecture}: argument '{name}' has no default and is not a "
                            "config.ini [training] parameter: give it a default value")
    for name in signature["defaults"]:
        if name in training_defaults:
            raise XvalError(f"define_models.{architecture}: argument '{name}' has a default but config.ini "
                            f"[training] defines it too: remove the default so there is one place for it")
    used_training = {name: value for name, value in training_defaults.items()
                     if name not in MODEL_ONLY_TRAINING_PARAMETERS or name in signature["arguments"]}
    defaults = {**used_training, **signature["defaults"]}
    parameters = {"comment_1": "", "comment_2": "", "task_type": task_type, "architecture": architecture,
                  **defaults}
    for name, value in overrides.items():
        if name in training_defaults and name not in parameters:
            raise XvalError(f"{where}: {name} would never reach the model: architecture {architecture} has no "
                            f"argument '{name}' (add it to define_models.{architecture}, or remove the string)")
        if name not in parameters:
            raise XvalError(f"{where}: unknown parameter '{name}' for architecture {architecture}: "
                            f"{closest(name, parameters)}")
        if name in ("comment_1", "comment_2"):
            parameters[name] = value if isinstance(value, str) else str(value)
        elif name not in ("task_type", "architecture"):
            parameters[name] = coerce_to_default_type(value, defaults[name], f"{where}, {name}")
    parameters = json.loads(json.dumps(parameters))  # tuples become lists: what is hashed is what is saved
    check_training_values(parameters, set(overrides), where)
    if signature["backend"] not in (None, parameters["backend"]):
        raise XvalError(f"{where}: architecture {architecture} runs on backend {signature['backend']!r} only, this "
                        f"instance has backend = {parameters['backend']!r}: add 'backend = \"{signature['backend']}\"'")
    return parameters


def check_backend_installed(backend, find_spec=importlib.util.find_spec):
    """XvalError with the command that installs it unless backend's package can be imported (it is not imported)."""
    package, install = BACKENDS[backend]
    if find_spec(package) is None:
        raise XvalError(f"backend {backend!r} is not installed ({package} cannot be imported): {install}")


def parameter_hash(parameters, dataset, num_folds):
    """A stable SHA-256 of what determines an instance's results (its resolved parameters, dataset, folds)."""
    hashed = {name: value for name, value in parameters.items() if name not in NOT_HASHED}
    text = json.dumps({"parameters": hashed, "dataset": dataset, "num_folds": num_folds}, sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# ----------------------------------------------------------------------------------------------------------------
# Fine-tuning: the saved models an instance starts from

def initial_model_paths(parameters, experiment_dir, folds):
    """{fold number: absolute path} of an instance's initial_model ('{fold}' replaced by each fold's number; a
    relative path is taken from the experiment folder), or {} when it starts from scratch."""
    if not parameters["initial_model"]:
        return {}
    return {fold["fold"]: (experiment_dir / Path(parameters["initial_model"].replace("{fold}", str(fold["fold"])))
                           .expanduser()).resolve() for fold in folds}


def output_units(model_config):
    """Units of the layer that gives a Keras model config's output, nested models opened; None if not a Dense."""
    config = model_config["config"]
    outputs = config.get("output_layers") or []
    name = outputs[0] if outputs and isinstance(outputs[0], str) else (outputs[0][0] if outputs else None)
    layer = next((layer for layer in config.get("layers", []) if layer.get("name", layer["config"].get("name"))
                  == name), None)
    if layer is None:
        return None
    if layer["class_name"] in ("Functional", "Model", "Sequential"):
        return output_units(layer)
    return layer["config"].get("units")


def saved_model_shapes(path):
    """(input shape without the batch, output size) of a Keras .hdf5 model file, read with h5py (no TensorFlow);
    None for what cannot be read there."""
    import h5py  # here: only fine-tuning needs it
    try:
        with h5py.File(path, "r") as handle:
            config = json.loads(handle.attrs["model_config"])
    except (OSError, KeyError, ValueError):
        return None, None
    inputs = [layer["config"].get("batch_shape") for layer in config["config"].get("layers", [])
              if layer["class_name"] == "InputLayer"]
    return (tuple(inputs[0][1:]) if inputs and inputs[0] else None), output_units(config)


def check_initial_models(parameters, experiment_dir, data_shape, output_size, dataset, folds, where):
    """An instance's initial models: ({fold number: path}, warning lines). Refuses models that are missing or do
    not fit the data (input shape, output size); warns of starting models of this dataset from an experiment
    with other folds, or of one model for every fold (their weights saw test items of the fold they start)."""
    paths, warnings = initial_model_paths(parameters, experiment_dir, folds), []
    per_fold = "{fold}" in parameters["initial_model"]
    for fold in folds if paths else []:
        path = paths[fold["fold"]]
        if not path.is_file():
            raise XvalError(f"{where}: initial_model for fold {fold['fold']} is {path}, which does not exist: fix the "
                            "path ({fold} stands for the fold number; relative paths start in the experiment folder)")
        input_shape, units = saved_model_shapes(path) if path.suffix.lower() in (".hdf5", ".h5") else (None, None)
        if input_shape is not None and tuple(input_shape) != tuple(data_shape):
            raise XvalError(f"{where}: initial_model {path} takes input {tuple(input_shape)}, the dataset has "
                            f"{tuple(data_shape)} (frames, bins): start from a model made with the same features")
        if units is not None and units != output_size:
            raise XvalError(f"{where}: initial_model {path} has {units} outputs, the dataset needs {output_size}: "
                            "start from a model of the same classes")
        origin = path.parent.parent / "folds.json"
        if origin.is_file():
            saved = read_json(origin)
            same = next((f for f in saved.get("folds", []) if f["fold"] == fold["fold"]), None)
            if saved.get("dataset") == dataset and (not per_fold or same is None
                                                    or same["test_items"] != fold["test_items"]):
                warnings.append(f"{where}: initial_model {path} was trained on dataset '{dataset}' with other folds: "
                                f"its weights saw some of fold {fold['fold']}'s test items, so that fold's test "
                                "score is optimistic")
    return paths, warnings


# ----------------------------------------------------------------------------------------------------------------
# Folds: a k-fold partition of the foldable items, made once per experiment

def check_num_folds(num_folds, item_count):
    """XvalError unless num_folds can split item_count foldable items with 2 or more training items per fold."""
    if not isinstance(num_folds, int) or num_folds < 2:
        raise XvalError(f"num_folds = {num_folds!r} must be a whole number of at least 2")
    if num_folds > item_count:
        raise XvalError(f"num_folds = {num_folds} is more than the {item_count} items (actors) with data: "
                        f"use at most {item_count}")
    if item_count - item_count // num_folds - (1 if item_count % num_folds else 0) < 2:
        raise XvalError(f"num_folds = {num_folds} leaves fewer than 2 training items per fold for "
                        "training and validation: use fewer folds")


def make_folds(items, num_folds, seed, validation_share):
    """K folds over items: each item is tested exactly once; validation items come from each fold's training items.

    Returns [{"fold": 1.., "train_items", "val_items", "test_items"}], every list sorted.
    """
    from sklearn.model_selection import KFold, train_test_split  # here: the routine starts faster without it
    items = sorted(items)
    check_num_folds(num_folds, len(items))
    folds = []
    splitter = KFold(n_splits=num_folds, shuffle=True, random_state=seed)
    for fold, (train_index, test_index) in enumerate(splitter.split(items), 1):
        pool = [items[i] for i in train_index]
        n_val = min(max(1, round(validation_share * len(pool))), len(pool) - 1)
        train, val = train_test_split(pool, test_size=n_val, random_state=seed + fold)
        folds.append({"fold": fold, "train_items": sorted(train), "val_items": sorted(val),
                      "test_items": sorted(items[i] for i in test_index)})
    return folds


def fold_settings(dataset, items, num_folds, folds_config):
    """What determines an experiment's split; saved in folds.json and compared on every later run."""
    return {"dataset": dataset, "num_folds": num_folds, "items": sorted(items),
            "folds_seed": folds_config["folds_seed"], "validation_share": folds_config["validation_share"]}


def check_folds_partition(folds, items, path):
    """XvalError unless folds split items as make_folds does: each item tested exactly once, and every fold's
    train, validation and test items disjoint and together all items."""
    tested = sorted(item for fold in folds for item in fold["test_items"])
    problem = None
    if tested != sorted(items):
        problem = "its test items are not a partition of the dataset's items"
    for fold in folds:
        parts = [fold["train_items"], fold["val_items"], fold["test_items"]]
        if sorted(sum(parts, [])) != sorted(items):
            problem = f"fold {fold['fold']}'s train, validation and test items overlap or miss some items"
    if problem:
        raise XvalError(f"{path} is damaged ({problem}): restore it from a backup, or delete it only if no fold "
                        "of this experiment was trained yet")


def check_saved_folds(path, wanted):
    """Refuse a run whose split settings differ from the experiment's folds.json; returns the saved folds."""
    try:
        saved = read_json(path)
        folds = saved["folds"]
        for key, value in wanted.items():
            if saved.get(key) != value:
                raise XvalError(f"{path} was made with {key} = {saved.get(key)!r}, this run has {value!r}: "
                                "all instances of an experiment share one split, so use another num_experiment "
                                "(or restore the setting)")
        check_folds_partition(folds, wanted["items"], path)
    except (KeyError, TypeError) as error:
        raise XvalError(f"{path} is damaged (no {error}): restore it from a backup, or delete it only if no "
                        "fold of this experiment was trained yet") from None
    return folds


def planned_folds(experiment_dir, wanted):
    """The experiment's folds: those of its folds.json, or a new split when it has none yet (written later)."""
    path = experiment_dir / "folds.json"
    if path.exists():
        check_num_folds(wanted["num_folds"], len(wanted["items"]))
        return check_saved_folds(path, wanted)
    return make_folds(wanted["items"], wanted["num_folds"], wanted["folds_seed"], wanted["validation_share"])


def write_folds(experiment_dir, wanted, folds):
    """Write folds.json once, under a lock; a folds.json written meanwhile must hold the same folds."""
    path = experiment_dir / "folds.json"
    with file_mutex(experiment_dir / "locks" / "folds.mutex"):
        if not path.exists():
            atomic_write_json(path, {**wanted, "folds": folds})
        elif check_saved_folds(path, wanted) != folds:
            raise XvalError(f"{path} was written by another run with other folds while this one started: "
                            "rerun to use it")


# ----------------------------------------------------------------------------------------------------------------
# The experiment folder

def instance_files(experiment_dir, dataset, experiment, instance, num_folds):
    """Every path of one instance, by name."""
    stem = f"{dataset}_exp{experiment}_run{instance}"
    results = experiment_dir / "results"
    return {
        "result": results / f"results_{stem}.json",
        "parameters": results / "parameters" / f"parameters_{stem}.txt",
        "lock": experiment_dir / "locks" / f"run{instance}.lock",
        "fold_results": [results / "folds" / f"results_{stem}_fold{f}.json" for f in range(1, num_folds + 1)],
        "models": [experiment_dir / "models" / f"model_{stem}_fold{f}.hdf5" for f in range(1, num_folds + 1)],
        "logs": [experiment_dir / "logs" / f"{stem}_fold{f}.log" for f in range(1, num_folds + 1)],
        "jobs": [experiment_dir / "logs" / f"{stem}_fold{f}.job.json" for f in range(1, num_folds + 1)],
    }


def check_writable(folder):
    """Create folder if needed and prove it writable, or explain."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise XvalError(f"experiment folder {folder} is not writable ({error.strerror}): choose another "
                        "experiment_folder or fix its permissions") from None


def snapshot_code(experiment_dir, routine_file, config_file):
    """Copy the scripts, config.ini and the routine into code/<time>_<pid>/, with git state and package versions."""
    target = experiment_dir / "code" / f"{time.strftime('%Y%m%d-%H%M%S')}_{HOST}_{os.getpid()}"
    staging = target.with_name(f".{target.name}.xvaltmp-{HOST}-{os.getpid()}")
    staging.mkdir(parents=True)
    for script in sorted(PROJECT_DIR.glob("*.py")):
        shutil.copy2(script, staging / script.name)
    shutil.copy2(config_file, staging / "config.ini")
    if routine_file and Path(routine_file).is_file():
        shutil.copy2(routine_file, staging / f"routine_{Path(routine_file).name}")
    git = shutil.which("git")
    if git and (PROJECT_DIR / ".git").exists():
        for name, arguments in (("git_commit.txt", ["rev-parse", "HEAD"]), ("git_diff.patch", ["diff", "HEAD"]),
                                ("git_status.txt", ["status", "--short"])):
            completed = subprocess.run([git, "-C", str(PROJECT_DIR), *arguments], capture_output=True, text=True)
            (staging / name).write_text(completed.stdout or completed.stderr, encoding="utf-8")
    versions = {"python": sys.version, "platform": platform.platform(), "command": sys.argv}
    for package in PACKAGES_RECORDED:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    (staging / "versions.json").write_text(json.dumps(versions, indent=1), encoding="utf-8")
    os.rename(staging, target)
    return target


def summarise_folds(folds):
    """{split: {metric: {"mean", "std"}}} over folds; std with ddof=1 (None for one fold); None values skipped."""
    summary = {}
    for split in SPLITS:
        summary[split] = {}
        names = {name for fold in folds for name in fold["metrics"][split]}
        for name in sorted(names):
            values = [fold["metrics"][split][name] for fold in folds if fold["metrics"][split].get(name) is not None]
            summary[split][name] = {
                "mean": float(np.mean(values)) if values else None,
                "std": float(np.std(values, ddof=1)) if len(values) > 1 else None}
    return summary


def parameters_text(instance, parameters, parameter_strings, parameter_hash_value):
    """The readable parameters file: the strings as given, then every resolved value."""
    width = max(len(name) for name in parameters)
    lines = [f"instance {instance}", f"parameter_hash {parameter_hash_value}", "", "# as given"]
    lines += [f"  {text}" for text in parameter_strings]
    lines += ["", "# resolved (defaults from config.ini [training] and the architecture's keyword defaults)"]
    lines += [f"  {name.ljust(width)} = {value!r}" for name, value in parameters.items()]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------------------------
# Running

def format_seconds(seconds):
    """12 s, 3 min 04 s, 1 h 02 min."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class FoldRunner:
    """Runs folds in child processes of one `training.py --serve` server of one Keras backend, started on first use.

    The server imports Keras on its backend (KERAS_BACKEND, read once at import) without running any operation,
    and forks a fresh process per fold, so each fold still has its own memory and crash boundary, with
    CUDA_VISIBLE_DEVICES set to the routine's GPU and GPU memory taken as needed (TensorFlow's memory growth, no
    JAX preallocation), so that two routines can share a GPU.
    """

    def __init__(self, gpu, backend="tensorflow"):
        self.environment = dict(os.environ, CUDA_VISIBLE_DEVICES="" if gpu is None or gpu < 0 else str(gpu),
                                TF_FORCE_GPU_ALLOW_GROWTH="true", XLA_PYTHON_CLIENT_PREALLOCATE="false",
                                KERAS_BACKEND=backend, PYTHONUNBUFFERED="1")
        self.server = None
        self.used = False  # whether a fold has been sent to the server

    def start(self):
        """Start the fold server (its import lines go to the first fold's log)."""
        self.server = subprocess.Popen([sys.executable, str(TRAINING_SCRIPT), SERVE_FLAG], stdin=subprocess.PIPE,
                                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                       encoding="utf-8", errors="replace", env=self.environment,
                                       cwd=str(PROJECT_DIR), bufsize=1)

    def run(self, job_path, log_path, label, show_progress):
        """Run one fold; tee its output to log_path. Returns (exit code of the fold process, its error line)."""
        if self.server is None or self.server.poll() is not None:
            self.start()
        self.used = True
        code, error_line = None, None
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "a", encoding="utf-8") as log:
            log.write(f"\n===== {time.strftime('%Y-%m-%d %H:%M:%S')} {HOST} pid {os.getpid()}: {label}\n")
            log.flush()
            try:
                self.server.stdin.write(f"{job_path}\n")
                self.server.stdin.flush()
            except OSError:
                pass  # the server died: its output and exit code below say why
            for line in self.server.stdout:
                if line.startswith(EXIT_PREFIX):
                    code = int(line[len(EXIT_PREFIX):])
                    break
                log.write(line)
                if line.startswith(ERROR_PREFIX):
                    error_line = line[len(ERROR_PREFIX):].strip()
                elif line.startswith(EPOCH_PREFIX) and show_progress:
                    print(f"\r  {label}  epoch {line[len(EPOCH_PREFIX):].strip()}"[:150].ljust(150), end="",
                          flush=True)
            if code is None:  # the server itself ended
                code = self.server.wait()
                log.write(f"the fold server ended with exit code {code}\n")
                error_line = error_line or f"the fold server ended with exit code {code}"
                self.server = None
        if show_progress:
            print("\r" + " " * 150 + "\r", end="", flush=True)
        return code, error_line

    def abort(self):
        """Stop the server at once, wherever it is (it may still be importing TensorFlow)."""
        if self.server is not None and self.server.poll() is None:
            self.server.kill()
            self.server.wait()
        self.server = None

    def close(self):
        """Stop the server: end of input, then wait; one that has run no fold is stopped at once."""
        if not self.used:
            self.abort()
        if self.server is not None and self.server.poll() is None:
            self.server.stdin.close()
            try:
                self.server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.server.kill()
                self.server.wait()
        self.server = None


class FoldRunners:
    """A FoldRunner per Keras backend, each started on first use: a routine that mixes backends runs every fold on
    its own backend's server."""

    def __init__(self, gpu):
        self.gpu, self.runners = gpu, {}

    def get(self, backend):
        """The running FoldRunner of backend (started now if it is not yet)."""
        if backend not in self.runners:
            self.runners[backend] = FoldRunner(self.gpu, backend)
            self.runners[backend].start()
        return self.runners[backend]

    def abort(self):
        """Stop every server at once."""
        for runner in self.runners.values():
            runner.abort()

    def close(self):
        """Stop every server (see FoldRunner.close)."""
        for runner in self.runners.values():
            runner.close()


class Routine:
    """One launch of a routine script: its settings, its plan, and what it has timed so far."""

    def __init__(self, settings, selected, gpu, config, experiment_dir, fold_runner, folds, dataset_identity,
                 missing):
        self.settings, self.selected, self.gpu, self.config = settings, selected, gpu, config
        self.experiment_dir, self.folds = experiment_dir, folds
        self.dataset_identity = dataset_identity  # what the plan checked and read: fingerprint, files, metadata
        self.missing = missing  # {instance: folds it had to train when the plan was made}
        self.dataset, self.experiment = settings["dataset"], settings["num_experiment"]
        self.num_folds = settings["num_folds"]
        self.show_progress = sys.stdout.isatty()
        self.fold_runner = fold_runner
        self.phases = {}  # {phase: seconds} of this launch, see launch()
        self.fold_runs = []  # [{"instance", "fold", "seconds", "exit_code"}]: each fold process of this launch
        self.warnings = []  # lines the plan wants the user to read before training

    def record_fold(self, instance, fold, seconds, exit_code):
        """Remember one fold process's wall time (seen from this process) and exit code."""
        self.fold_runs.append({"instance": instance, "fold": fold, "seconds": round(seconds, 3),
                               "exit_code": exit_code})

    def eta(self, position, left_in_instance):
        """Seconds left: the mean time of this launch's completed folds times the folds still to train, which are
        left_in_instance of the instance at position (1-based in selected) and every later instance's missing."""
        seconds = [run["seconds"] for run in self.fold_runs if run["exit_code"] == 0]
        if not seconds:
            return None
        return float(np.mean(seconds)) * (left_in_instance + sum(self.missing[i] for i in self.selected[position:]))


def fold_fingerprint(parameter_hash_value, dataset_fingerprint_value, fold):
    """What a fold result must have been made from to be reused: parameters, dataset content and the fold's items."""
    return {"parameter_hash": parameter_hash_value, "dataset_fingerprint": dataset_fingerprint_value,
            **{f"{split}_items": fold[f"{split}_items"] for split in SPLITS}}


def reusable_folds(files, experiment_dir, fingerprints):
    """The instance's completed folds that can be reused: ({fold index: result}, None), or (_, why not: one line).

    A fold result is reused only if it was made from the same parameters, the same dataset content and the same
    items as planned now, and its model file is there; the instance JSON must carry the same parameter hash.
    """
    done = {}
    for index, path in enumerate(files["fold_results"]):
        if not path.exists():
            continue
        result, expected = read_json(path), fingerprints[index]
        if result.get("parameter_hash") != expected["parameter_hash"]:
            return done, f"{path} was computed with other parameters"
        if result.get("dataset_fingerprint") != expected["dataset_fingerprint"]:
            return done, (f"{path} was trained on other features than the dataset files hold now (preprocessed "
                          "again since?)")
        if any(result.get(key) != expected[key] for key in expected if key.endswith("_items")):
            return done, f"{path} was trained on another split than folds.json's"
        if not (experiment_dir / str(result.get("model_file"))).is_file():
            return done, f"{path} names the model {result.get('model_file')}, which is missing"
        done[index] = result
    if files["result"].exists() and read_json(files["result"]).get("parameter_hash") != \
            fingerprints[0]["parameter_hash"]:
        return done, f"{files['result']} was computed with other parameters"
    return done, None


def write_instance_json(files, base, folds, status, error):
    """The instance's results JSON, assembled from its completed folds (atomic)."""
    folds = sorted(folds, key=lambda fold: fold["fold"])
    document = {**base, "status": status, "error": error, "folds": folds,
                "summary": summarise_folds(folds) if folds else None}
    atomic_write_json(files["result"], document)
    return document


def write_launch_record(routine, argv, outcomes):
    """logs/launch_{time}_{host}_{pid}.json: what this launch ran and where its time went (phases in seconds, and
    each fold process's wall time seen from here; each fold result holds the fold's own breakdown)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    atomic_write_json(routine.experiment_dir / "logs" / f"launch_{stamp}_{HOST}_{os.getpid()}.json", {
        "host": HOST, "pid": os.getpid(), "arguments": list(argv), "instances": routine.selected,
        "outcomes": {str(instance): outcome for instance, outcome in outcomes.items()},
        "phases": {phase: round(seconds, 3) for phase, seconds in routine.phases.items()},
        "fold_runs": routine.fold_runs})


def rebuild_spreadsheet(routine):
    """Rebuild the experiment's spreadsheet under a lock; a failure is reported but loses no result."""
    import results_to_excel  # here, not at the top: loaded by prepare() while the fold server starts
    started = time.monotonic()
    try:
        with file_mutex(routine.experiment_dir / "locks" / "spreadsheet.mutex"):
            return results_to_excel.write_spreadsheet(routine.experiment_dir)
    except Exception as error:
        if routine.settings["debug_mode"]:
            raise
        print(f"warning: the spreadsheet was not rebuilt ({type(error).__name__}: {error}); the results are "
              f"safe in results/; rebuild with python3 results_to_excel.py {routine.experiment_dir}",
              file=sys.stderr)
        return None
    finally:
        routine.phases["spreadsheet"] = routine.phases.get("spreadsheet", 0.0) + time.monotonic() - started


def print_choice(experiment_dir):
    """Print which instance is chosen on validation and the test number to report, from the summary JSON that
    the last spreadsheet rebuild wrote (nothing if there is none)."""
    import results_to_excel
    for summary in results_to_excel.read_routine_summary(experiment_dir).values():
        for line in results_to_excel.honest_lines(summary)[:2]:
            print(f"xval: {line}")


def run_instance(routine, position, instance, planned):
    """Claim one instance, train its missing folds and write its results. Returns complete|failed|skipped|busy.

    planned: the instance's {"instance", "parameters", "hash", "fingerprints", "missing"} from validate().
    """
    files = instance_files(routine.experiment_dir, routine.dataset, routine.experiment, instance, routine.num_folds)
    label = f"instance {instance} ({position} of {len(routine.selected)})"
    owner = claim(files["lock"])
    if owner:
        print(f"{label}: skipped, being run by {owner.get('host')} pid {owner.get('pid')} since "
              f"{owner.get('since')}")
        return "busy"
    try:
        return train_missing_folds(routine, position, instance, planned, files, label)
    finally:
        release(files["lock"])


def train_missing_folds(routine, position, instance, planned, files, label):
    """run_instance() once the instance is ours: what is reusable now, then each missing fold in turn."""
    experiment_dir, parameters = routine.experiment_dir, planned["parameters"]
    if routine.settings["overwrite_results"]:
        weights = [path.with_name(path.name.replace(".hdf5", ".weights.h5")) for path in files["models"]]
        for path in [files["result"], files["parameters"], *files["fold_results"], *files["models"], *weights]:
            path.unlink(missing_ok=True)
    reused, conflict = reusable_folds(files, experiment_dir, planned["fingerprints"])  # again: now it is ours
    if conflict:
        raise XvalError(f"instance {instance}: {conflict}: set overwrite_results = True to retrain it, "
                        "or restore what changed")
    if len(reused) == routine.num_folds and files["result"].exists() and \
            read_json(files["result"]).get("status") == "complete":
        print(f"{label}: complete already, skipped (overwrite_results = False)")
        return "skipped"
    strings = routine.settings["experiment_dict"][instance]
    atomic_write_text(files["parameters"], parameters_text(instance, parameters, strings, planned["hash"]))
    identity = routine.dataset_identity
    base = {"experiment": routine.experiment, "instance": instance, "dataset": routine.dataset,
            "task_type": parameters["task_type"], "parameter_hash": planned["hash"],
            "dataset_fingerprint": identity["dataset_fingerprint"], "class_names": identity["class_names"],
            "foldable_item": identity["foldable_item"], "speaker_independent": identity["speaker_independent"],
            "features": identity["features"],
            "parameter_strings": list(strings), "parameters": parameters,
            "parameters_file": files["parameters"].relative_to(experiment_dir).as_posix(),
            "log_files": [path.relative_to(experiment_dir).as_posix() for path in files["logs"]]}
    done = list(reused.values())
    write_instance_json(files, base, done, "incomplete", None)
    missing = [fold for fold in routine.folds if fold["fold"] - 1 not in reused]
    main_metric = MAIN_METRIC[parameters["task_type"]]
    for count, fold in enumerate(missing, 1):
        fold_label = f"{label} fold {fold['fold']}/{routine.num_folds}"
        result, error, seconds = run_fold_job(routine, files, fold, planned, fold_label)
        if error:
            log = files["logs"][fold["fold"] - 1]
            write_instance_json(files, base, done, "failed", f"{error} (log: {log.relative_to(experiment_dir)})")
            print(f"{fold_label}: FAILED after {format_seconds(seconds)}: {error}\n  log: {log}")
            if routine.settings["debug_mode"]:
                print(log.read_text(encoding="utf-8", errors="replace")[-6000:], file=sys.stderr)
            return "failed"
        done.append(result)
        write_instance_json(files, base, done, "incomplete", None)
        value = result["metrics"]["test"].get(main_metric)
        eta = routine.eta(position, len(missing) - count)
        print(f"{fold_label}: test {main_metric} {value if value is None else f'{value:.3f}'}, "
              f"best epoch {result['best_epoch']}/{result['epochs_run']}, {format_seconds(seconds)}"
              f"{'' if eta is None else f', ETA {format_seconds(eta)}'}", flush=True)
    test_summary = write_instance_json(files, base, done, "complete", None)["summary"]["test"][main_metric]
    print(f"{label} complete: test {main_metric} {test_summary['mean']:.3f} ± {test_summary['std'] or 0:.3f} over "
          f"{routine.num_folds} folds", flush=True)
    return "complete"


def run_fold_job(routine, files, fold, planned, fold_label, extra_job=None):
    """Write one fold's job file (with extra_job's keys) and run it in a fold process. Returns (result, None,
    seconds) when it completed, (None, its error line, seconds) when it failed (its log: files["logs"])."""
    index, experiment_dir = fold["fold"] - 1, routine.experiment_dir
    job = {"features_folder": str(routine.config["paths"]["features_folder"]), "dataset": routine.dataset,
           "parameters": planned["parameters"], "fold": fold["fold"], **planned["fingerprints"][index],
           "dataset_files": routine.dataset_identity["dataset_files"], "model_path": str(files["models"][index]),
           "initial_model_path": planned["initial_models"].get(fold["fold"]),
           "model_file": files["models"][index].relative_to(experiment_dir).as_posix(),
           "result_path": str(files["fold_results"][index]), **(extra_job or {})}
    atomic_write_json(files["jobs"][index], job)
    started = time.monotonic()
    runner = routine.fold_runner.get(planned["parameters"]["backend"])
    code, error_line = runner.run(files["jobs"][index], files["logs"][index], fold_label, routine.show_progress)
    seconds = time.monotonic() - started
    routine.record_fold(planned["instance"], fold["fold"], seconds, code)
    if code == 0 and files["fold_results"][index].exists():
        return read_json(files["fold_results"][index]), None, seconds
    return None, f"fold {fold['fold']}: {error_line or f'the fold process ended with exit code {code}'}", seconds


# ----------------------------------------------------------------------------------------------------------------
# The routine

def check_settings(settings):
    """The routine-level settings: types and ranges, one clear line for the first problem."""
    expected = {"description": str, "dataset": str, "num_experiment": int, "num_folds": int,
                "overwrite_results": bool, "debug_mode": bool, "experiment_dict": dict}
    for name, kind in expected.items():
        value = settings[name]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise XvalError(f"routine setting {name} = {value!r} must be a {kind.__name__}")
    if settings["gpu_ID"] is not None and (not isinstance(settings["gpu_ID"], int) or
                                           isinstance(settings["gpu_ID"], bool)):
        raise XvalError(f"routine setting gpu_ID = {settings['gpu_ID']!r} must be a whole number (-1: CPU only)")
    if not settings["dataset"] or "/" in settings["dataset"] or "\\" in settings["dataset"]:
        raise XvalError(f"routine setting dataset = {settings['dataset']!r} must be a features name such as "
                        "'ravdess_demo', not a path")
    if settings["num_experiment"] < 0:
        raise XvalError(f"routine setting num_experiment = {settings['num_experiment']} must not be negative")
    if not settings["experiment_dict"]:
        raise XvalError("experiment_dict is empty: add at least one instance")
    bad_keys = [key for key in settings["experiment_dict"] if not isinstance(key, int) or isinstance(key, bool)]
    if bad_keys:
        raise XvalError(f"experiment_dict keys must be whole numbers (instance ids), not {bad_keys[0]!r}")


def prepare(settings, argv, routine_file, smoke=False):
    """Everything that can be refused, refused before anything is written. Returns the ready Routine and inputs.

    The fold server is started first: TensorFlow's import (~3 s) runs while this process validates the routine
    and imports the spreadsheet code; a refusal stops the server at once.
    """
    check_settings(settings)
    instance_ids = sorted(settings["experiment_dict"])
    selected, gpu = parse_command_line(argv, instance_ids, settings["gpu_ID"], Path(routine_file).name)
    config = load_config()
    fold_runner = FoldRunners(gpu)
    try:
        # the default backend's server first, importing while this process validates: -0.88 s a run (median of 7,
        # benchmarks/tweaks.py: e_early_server)
        fold_runner.get(config["training"]["backend"])
        import results_to_excel  # noqa: F401  (needed after the first instance; imported now, beside TensorFlow)
        return validate(settings, config, selected, gpu, routine_file, fold_runner, smoke)
    except BaseException:
        fold_runner.abort()
        raise


def validate(settings, config, selected, gpu, routine_file, fold_runner, smoke=False):
    """prepare() after the command line: the plan. Every check of the routine's input runs here, once.

    Parameters, the dataset (its arrays, each task type's target, a fingerprint of its content), the folds
    (folds.json's, or a new split), the models instances start from, and, per instance, the completed folds that
    can be reused: a fold made from other parameters, other features or another split is refused unless
    overwrite_results asks to retrain it (not for a smoke run, which reuses nothing).
    Returns (Routine, {instance: {"instance", "parameters", "hash", "fingerprints", "missing", "initial_models"}},
    the split settings).
    """
    signatures = architecture_signatures()
    resolved = {instance: resolve_instance(settings["experiment_dict"][instance], config["training"], signatures,
                                           f"experiment_dict[{instance}]") for instance in selected}
    for backend in sorted({parameters["backend"] for parameters in resolved.values()}):
        check_backend_installed(backend)
    dataset, num_folds = settings["dataset"], settings["num_folds"]
    features_folder = config["paths"]["features_folder"]
    dataset_files = dataset_file_stats(features_folder, dataset)  # before reading: a later rewrite shows
    predictors, targets = load_dataset(features_folder, dataset)
    clip_ids = load_clip_ids(features_folder, dataset, predictors)
    items = check_dataset(predictors, targets, dataset, clip_ids)
    for task_type in sorted({parameters["task_type"] for parameters in resolved.values()}):
        check_target(targets, dataset, task_type)
    data_shape = next(x.shape[1:] for x in predictors.values() if len(x))
    first_target = next(iter(targets.values()))
    output_sizes = {"classification": first_target.shape[-1] if first_target.ndim == 2 else 1, "regression": 1}
    metadata_path = dataset_paths(features_folder, dataset)["metadata"]
    metadata = read_json(metadata_path) if metadata_path.exists() else {}
    identity = {"dataset_fingerprint": dataset_fingerprint(predictors, targets, clip_ids),
                "dataset_files": dataset_files, "class_names": metadata.get("class_names"),
                "foldable_item": metadata.get("foldable_item"),
                "speaker_independent": metadata.get("speaker_independent", True),
                "features": {key: metadata.get(key) for key in ("feature_settings", "length", "sample_rate")}}
    del predictors, targets, clip_ids
    root = settings["experiment_folder"] or config["paths"]["experiment_folder"]
    root = Path(routine_file).resolve().parent / Path(root).expanduser() if not Path(root).expanduser().is_absolute() \
        else Path(root).expanduser()
    experiment_dir = root / f"experiment_{settings['num_experiment']}"
    split = fold_settings(dataset, items, num_folds, config["folds"])
    folds = planned_folds(experiment_dir, split)
    plan, warnings = {}, []
    for instance in selected:
        parameters = resolved[instance]
        current_hash = parameter_hash(parameters, dataset, num_folds)
        initial_models, cautions = check_initial_models(parameters, experiment_dir, data_shape,
                                                        output_sizes[parameters["task_type"]], dataset, folds,
                                                        f"experiment_dict[{instance}]")
        warnings += cautions
        plan[instance] = {"instance": instance, "parameters": parameters, "hash": current_hash,
                          "fingerprints": [fold_fingerprint(current_hash, identity["dataset_fingerprint"], fold)
                                           for fold in folds], "missing": num_folds,
                          "initial_models": {fold: str(path) for fold, path in initial_models.items()}}
        if not settings["overwrite_results"] and not smoke and experiment_dir.exists():
            files = instance_files(experiment_dir, dataset, settings["num_experiment"], instance, num_folds)
            reused, conflict = reusable_folds(files, experiment_dir, plan[instance]["fingerprints"])
            if conflict:
                raise XvalError(f"instance {instance}: {conflict}: set overwrite_results = True to retrain it, "
                                "or restore what changed")
            plan[instance]["missing"] = num_folds - len(reused)
    routine = Routine(settings, selected, gpu, config, experiment_dir, fold_runner, folds, identity,
                      {instance: planned["missing"] for instance, planned in plan.items()})
    routine.warnings = warnings
    return routine, plan, split


def smoke_run(routine, plan):
    """Each selected instance on the first fold for one epoch of SMOKE_BATCHES batches, in a scratch folder that is
    deleted afterwards: one line per instance (ok or its error) with its seconds. Returns the exit code (0 all
    ok, 1 one failed). Nothing is written into the experiment folder."""
    experiment_dir, failed = routine.experiment_dir, []
    routine.experiment_dir = Path(tempfile.mkdtemp(prefix="xval-smoke-"))
    print(f"xval: smoke run of instances {', '.join(map(str, routine.selected))}: fold 1, 1 epoch, "
          f"{SMOKE_BATCHES} batches each, in {routine.experiment_dir}", flush=True)
    try:
        for instance in routine.selected:
            planned = dict(plan[instance], parameters=dict(plan[instance]["parameters"], num_epochs=1))
            files = instance_files(routine.experiment_dir, routine.dataset, routine.experiment, instance,
                                   routine.num_folds)
            label = f"instance {instance}"
            _, error, seconds = run_fold_job(routine, files, routine.folds[0], planned, label,
                                             {"smoke_batches": SMOKE_BATCHES})
            print(f"{label}: {'ok' if error is None else 'FAILED: ' + error} ({seconds:.1f} s)", flush=True)
            if error:
                failed.append(instance)
    finally:
        routine.fold_runner.close()
        shutil.rmtree(routine.experiment_dir, ignore_errors=True)
    print(f"xval: smoke run: {len(routine.selected) - len(failed)} ok, {len(failed)} failed; nothing was written "
          f"to {experiment_dir}")
    return 1 if failed else 0


def launch(settings, argv, routine_file):
    """Run the routine; returns the exit code: 0 every selected instance is complete, 1 one failed, 3 none failed
    but some were left to another process running them (not complete yet: rerun later to check).
    With --smoke among the arguments: smoke_run()."""
    started = time.monotonic()
    smoke = SMOKE_FLAG in argv
    routine, plan, split = prepare(settings, [text for text in argv if text != SMOKE_FLAG], routine_file, smoke)
    if smoke:
        return smoke_run(routine, plan)
    routine.phases["validate"] = time.monotonic() - started
    experiment_dir = routine.experiment_dir
    outcomes = {}
    try:
        setup_started = time.monotonic()
        check_writable(experiment_dir)
        remove_stale_temp_files(experiment_dir)  # left by killed xval processes; never read as results
        write_folds(experiment_dir, split, routine.folds)
        atomic_write_text(experiment_dir / f"experiment_{routine.experiment}_description.txt",
                          settings["description"].strip() + "\n")
        snapshot_code(experiment_dir, routine_file, config_path_in_use())
        routine.phases["setup"] = time.monotonic() - setup_started
        print(f"xval: experiment {routine.experiment} on '{routine.dataset}', instances "
              f"{', '.join(map(str, routine.selected))}, {routine.num_folds} folds, "
              f"{'CPU' if routine.gpu is None or routine.gpu < 0 else f'GPU {routine.gpu}'} -> {experiment_dir}",
              flush=True)
        for warning in routine.warnings:
            print(f"xval: WARNING: {warning}", flush=True)
        if not routine.dataset_identity["speaker_independent"]:
            print(f"xval: WARNING: dataset '{routine.dataset}' folds by {routine.dataset_identity['foldable_item']}: "
                  "one speaker's clips can be in training and test, so the results are speaker-dependent",
                  flush=True)
        for position, instance in enumerate(routine.selected, 1):
            outcomes[instance] = run_instance(routine, position, instance, plan[instance])
            if outcomes[instance] in ("complete", "failed"):  # its results changed
                rebuild_spreadsheet(routine)
            if outcomes[instance] == "failed" and settings["debug_mode"]:
                print(f"debug_mode: stopped at the first failure (instance {instance})", file=sys.stderr)
                break
    finally:
        close_started = time.monotonic()
        routine.fold_runner.close()
        routine.phases["close_server"] = time.monotonic() - close_started
    if not {"complete", "failed"} & set(outcomes.values()):
        rebuild_spreadsheet(routine)  # nothing changed: one rebuild makes sure the spreadsheet is there
    routine.phases["total"] = time.monotonic() - started
    write_launch_record(routine, argv, outcomes)
    counts = {status: [i for i, s in outcomes.items() if s == status]
              for status in ("complete", "skipped", "failed", "busy")}
    print(f"xval: done in {format_seconds(time.monotonic() - started)}: " +
          ", ".join(f"{len(ids)} {status} ({', '.join(map(str, ids))})" for status, ids in counts.items() if ids) +
          f". Results: {experiment_dir}")
    print_choice(experiment_dir)
    if counts["failed"]:
        print(f"xval: {len(counts['failed'])} instance(s) failed; see their logs. Fix and rerun: completed folds "
              "are kept", file=sys.stderr)
    if counts["failed"] or len(outcomes) < len(routine.selected):
        return 1
    if counts["busy"]:
        print(f"xval: instance(s) {', '.join(map(str, counts['busy']))} are being run by another process and are "
              "not complete yet (exit code 3): rerun this routine when it is done to check", file=sys.stderr)
        return 3
    return 0


def run_routine(description, gpu_ID, dataset, num_experiment, num_folds, experiment_folder, overwrite_results,
                debug_mode, experiment_dict, argv=None):
    """Run a routine script's instances; exits the process (0 all complete, 1 some failed, 2 refused input,
    3 some left to another process).

    The keyword arguments are the routine script's settings of the same names; argv defaults to sys.argv[1:]
    ([FIRST [LAST [GPU]]]). Parameter strings come only from experiment_dict, i.e. from the user's own routine file.
    """
    settings = {"description": description, "gpu_ID": gpu_ID, "dataset": dataset, "num_experiment": num_experiment,
                "num_folds": num_folds, "experiment_folder": experiment_folder,
                "overwrite_results": overwrite_results, "debug_mode": debug_mode, "experiment_dict": experiment_dict}
    argv = sys.argv[1:] if argv is None else list(argv)
    routine_file = getattr(sys.modules.get("__main__"), "__file__", None) or "routine.py"
    code = exit_on_user_error(lambda: launch(settings, argv, routine_file), debug=debug_mode is True)
    raise SystemExit(code)
