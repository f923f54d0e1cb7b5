"""The experiment engine: a routine script's settings in, one complete results folder out.

A routine script (xval_routine_example.py, copied per experiment) ends with run_routine(...). It:
  1. reads the command line (which instances, which devices; --smoke, --status, --slurm);
  2. makes the plan (validate): resolves every selected instance's parameter strings over the defaults (config.ini
     [training] plus the architecture's keyword defaults), checks and fingerprints the dataset, makes (or reuses)
     the experiment's k-fold split over the foldable items, and finds which folds are done and may be reused;
     anything doubtful is refused before anything is written;
  3. runs each missing fold job (one instance x one fold) in its own process (training.py): on a pool of local
     workers, one per listed device, or as the tasks of a SLURM job array (--slurm);
  4. whoever lands a fold claims it first and assembles its instance's results JSON from the fold results on disk
     afterwards (complete when the last fold lands), and rebuilds the spreadsheet when an instance completes or
     fails; logs/launch_*.json records where a local launch's time went.
This module imports neither TensorFlow nor define_models: the architectures' signatures are read from the source,
so validation is instant and the parent process stays small however many instances it runs. It is also the
script a SLURM array task runs: python3 xval_instance.py --fold-task FOLD_JOBS.txt INDEX.
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
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from importlib import metadata
from pathlib import Path

import numpy as np

from utility_functions import (BACKENDS, CONFIG_ENV_VAR, CONFIG_SCHEMA, DATA_ARGUMENTS, DEVICE_PREFIX, EPOCH_PREFIX,
                               ERROR_PREFIX, EXIT_PREFIX, HOST, MAIN_METRIC, MODEL_ONLY_TRAINING_PARAMETERS,
                               MONITORABLE, OPTIMIZERS, PROJECT_DIR, SERVE_FLAG, SPLITS, TASK_TYPES, XvalError,
                               atomic_write_json, atomic_write_text, check_dataset, check_target, claim,
                               config_path_in_use, dataset_file_stats, dataset_fingerprint, dataset_paths,
                               exit_on_user_error, file_mutex, load_clip_ids, load_config, load_dataset,
                               lock_owner_alive, mean_and_std, parse_config_value, read_json, release,
                               remove_stale_temp_files, slurm_job_id, to_jsonable)

MODELS_FILE = PROJECT_DIR / "define_models.py"
WAIT_SLICE = 0.5  # seconds: how often the routine's main thread, waiting for its workers, looks for a Ctrl-C
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
MODE_FLAGS = ("--smoke", "--status", "--slurm")
# the [slurm] keys a --slurm command line may override: {option: key}; --sbatch-line may be given several times
SLURM_OPTIONS = {"--partition": "partition", "--time": "time", "--mem": "mem", "--cpus-per-task": "cpus_per_task",
                 "--gres": "gres", "--max-parallel": "max_parallel", "--sbatch-line": "extra_sbatch"}
TASK_FLAG = "--fold-task"  # python3 xval_instance.py --fold-task FOLD_JOBS.txt INDEX: one SLURM array task
SMOKE_BATCHES = 2  # batches per split of a smoke run's fold
PACKAGES_RECORDED = ("numpy", "scipy", "tensorflow", "keras", "torch", "jax", "jaxlib", "librosa", "scikit-learn",
                     "pandas", "soundfile", "xlsxwriter", "matplotlib", "h5py")


# ----------------------------------------------------------------------------------------------------------------
# Command line

def parse_devices(text, where):
    """Devices from the command line ('0,1,2,3', '-1,-1', '1') or gpu_ID (1, -1, [0, 1]) -> [int].

    Each entry is one worker: a fold process at a time on that CUDA device; -1 is a CPU worker. A device may be
    listed twice (two folds share it)."""
    values = text.split(",") if isinstance(text, str) else (text if isinstance(text, (list, tuple)) else [text])
    devices = []
    for value in values:
        if isinstance(value, str):
            try:
                value = int(value)
            except ValueError:
                pass  # refused below
        if not isinstance(value, int) or isinstance(value, bool) or value < -1:
            raise XvalError(f"{where}: devices must be CUDA device numbers or -1 (a CPU worker), e.g. 0 or 0,1,2,3 "
                            f"or -1,-1; got {text!r}")
        devices.append(value)
    if not devices:
        raise XvalError(f"{where}: no device given: name at least one (-1: a CPU worker)")
    return devices


def parse_command_line(argv, instance_ids, default_devices, script_name):
    """[--smoke | --status | --slurm [SLURM OPTIONS]] [FIRST [LAST [DEVICES]]] -> {"mode": run|smoke|status|slurm,
    "selected": instance ids, "devices": [int], "slurm": {[slurm] key: text}}. One id alone selects that instance;
    SLURM OPTIONS (--time 1:00:00 or --time=1:00:00, ...) override config.ini's [slurm] for this submission."""
    usage = (f"usage: python3 {script_name} [{' | '.join(MODE_FLAGS)} [SLURM OPTIONS]] [FIRST_INSTANCE "
             f"[LAST_INSTANCE [DEVICES]]]  (instances defined: {', '.join(map(str, instance_ids))}; DEVICES: 0 or "
             f"0,1,2,3 or -1,-1; SLURM OPTIONS: {' '.join(SLURM_OPTIONS)})")
    modes, slurm, positional, words = [], {}, [], list(argv)
    while words:
        word = words.pop(0)
        name, equals, value = word.partition("=")
        if word in MODE_FLAGS:
            modes.append(word[2:])
        elif name in SLURM_OPTIONS:
            if not equals:
                if not words or (words[0].startswith("--") and name != "--sbatch-line"):  # its value is an option
                    raise XvalError(f"{name} needs a value ({name} VALUE or {name}=VALUE) — {usage}")
                value = words.pop(0)
            key = SLURM_OPTIONS[name]
            slurm[key] = f"{slurm[key]};{value}" if key == "extra_sbatch" and key in slurm else value
        elif word.startswith("--"):
            raise XvalError(f"unknown option {word} — {usage}")
        else:
            positional.append(word)
    if len(modes) > 1:
        raise XvalError(f"{' and '.join('--' + mode for mode in modes)} cannot be combined — {usage}")
    mode = modes[0] if modes else "run"
    if slurm and mode != "slurm":
        raise XvalError(f"{', '.join(n for n, k in SLURM_OPTIONS.items() if k in slurm)} only acts with --slurm "
                        f"— {usage}")
    if len(positional) > 3:
        raise XvalError(f"too many arguments ({len(positional)}, at most 3) — {usage}")
    try:
        numbers = [int(text) for text in positional[:2]]
    except ValueError:
        raise XvalError(f"instance numbers must be whole numbers, got {' '.join(positional[:2])!r} — {usage}") \
            from None
    first = numbers[0] if numbers else min(instance_ids)
    last = numbers[1] if len(numbers) > 1 else (first if numbers else max(instance_ids))
    if first > last:
        raise XvalError(f"first instance {first} is after last instance {last} — {usage}")
    selected = [instance for instance in instance_ids if first <= instance <= last]
    if not selected:
        raise XvalError(f"no instance between {first} and {last} — {usage}")
    if len(positional) > 2 and mode in ("slurm", "status"):
        raise XvalError(f"--{mode} takes no DEVICES (SLURM allocates them: [slurm] gres, or --gres) — {usage}")
    try:
        devices = parse_devices(positional[2], "DEVICES") if len(positional) > 2 else default_devices
    except XvalError as error:
        raise XvalError(f"{error} — {usage}") from None
    return {"mode": mode, "selected": selected, "devices": devices, "slurm": slurm}


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
        "mutex": experiment_dir / "locks" / f"run{instance}.mutex",  # held while its results JSON is assembled
        "locks": [experiment_dir / "locks" / f"run{instance}_fold{f}.lock" for f in range(1, num_folds + 1)],
        "fold_results": [results / "folds" / f"results_{stem}_fold{f}.json" for f in range(1, num_folds + 1)],
        "failures": [experiment_dir / "logs" / f"{stem}_fold{f}.failed.json" for f in range(1, num_folds + 1)],
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


def parameters_text(instance, parameters, parameter_strings, parameter_hash_value):
    """The readable parameters file: the strings as given, then every resolved value."""
    width = max(len(name) for name in parameters)
    lines = [f"instance {instance}", f"parameter_hash {parameter_hash_value}", "", "# as given"]
    lines += [f"  {text}" for text in parameter_strings]
    lines += ["", "# resolved (defaults from config.ini [training] and the architecture's keyword defaults)"]
    lines += [f"  {name.ljust(width)} = {value!r}" for name, value in parameters.items()]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------------------------
# Running: fold jobs in fold processes, one at a time per worker (a device of this machine)

def format_seconds(seconds):
    """12 s, 3 min 04 s, 1 h 02 min."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def available_cores():
    """The CPU cores this process may run on (its affinity, which SLURM and taskset narrow)."""
    return len(os.sched_getaffinity(0))


def worker_threads(workers, cores):
    """Threads per fold process when `workers` fold processes share `cores` cores: an equal part, at least 1."""
    return max(1, cores // workers)


def fold_environment(backend, threads, device=None):
    """The environment of a fold process: its Keras backend and thread count, and its device when device is not
    None ('' hides every GPU; under SLURM the allocation sets CUDA_VISIBLE_DEVICES). GPU memory is taken as needed
    (TensorFlow's memory growth, no JAX preallocation), so that two fold processes can share a GPU."""
    environment = dict(os.environ, TF_FORCE_GPU_ALLOW_GROWTH="true", XLA_PYTHON_CLIENT_PREALLOCATE="false",
                       KERAS_BACKEND=backend, PYTHONUNBUFFERED="1", OMP_NUM_THREADS=str(threads),
                       OPENBLAS_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    if threads == 1:  # XLA's CPU backend has no thread count, only single- or multi-threaded
        environment["XLA_FLAGS"] = (environment.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false "
                                    "intra_op_parallelism_threads=1").strip()
    if device is not None:
        environment["CUDA_VISIBLE_DEVICES"] = "" if device < 0 else str(device)
    return environment


def log_attempt_header(where, label):
    """The line that opens one attempt at a fold in its log (tests count attempts by it)."""
    return f"\n===== {time.strftime('%Y-%m-%d %H:%M:%S')} {where}: {label}\n"


def claim_owner_text(owner):
    """Who holds a claim, for the console: 'SLURM job 12_3' or 'pid 4567'."""
    return f"SLURM job {owner['slurm_job']}" if owner.get("slurm_job") else f"pid {owner.get('pid')}"


def error_line_of(lines):
    """The last `xval-error:` line's message among a fold process's output lines, or None."""
    errors = [line[len(ERROR_PREFIX):].strip() for line in lines if line.startswith(ERROR_PREFIX)]
    return errors[-1] if errors else None


class FoldRunner:
    """Runs folds in child processes of one `training.py --serve` server of one Keras backend, started on first use.

    The server imports Keras on its backend (KERAS_BACKEND, read once at import) without running any operation,
    and forks a fresh process per fold, so each fold still has its own memory and crash boundary, and sees only
    its worker's device.
    """

    def __init__(self, device, backend, threads):
        self.environment = fold_environment(backend, threads, device)
        self.server = None
        self.used = False  # whether a fold has been sent to the server
        self.seen = None  # what the last fold's backend saw: its GPUs, or "cpu" (training.py's DEVICE_PREFIX line)

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
        code, lines = None, []
        with open(log_path, "a", encoding="utf-8") as log:
            log.write(log_attempt_header(f"{HOST} pid {os.getpid()}", label))
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
                    lines.append(line)
                elif line.startswith(DEVICE_PREFIX):
                    self.seen = line[len(DEVICE_PREFIX):].strip().partition(" ")[2]
                elif line.startswith(EPOCH_PREFIX) and show_progress:
                    print(f"\r  {label}  epoch {line[len(EPOCH_PREFIX):].strip()}"[:150].ljust(150), end="",
                          flush=True)
            if code is None:  # the server itself ended
                code = self.server.wait()
                log.write(f"the fold server ended with exit code {code}\n")
                lines.append(f"{ERROR_PREFIX}the fold server ended with exit code {code}")
                self.server = None
        if show_progress:
            print("\r" + " " * 150 + "\r", end="", flush=True)
        return code, error_line_of(lines)

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


class Worker:
    """One device of this machine (a CUDA device, or -1: a share of the CPU cores) running one fold at a time,
    with a FoldRunner per Keras backend, each started on first use."""

    def __init__(self, device, threads, label):
        self.device, self.threads, self.label, self.runners = device, threads, label, {}
        self.warned = set()  # the backends already said to see no GPU on this worker's device

    def runner(self, backend):
        """The running FoldRunner of backend (started now if it is not yet)."""
        if backend not in self.runners:
            self.runners[backend] = FoldRunner(self.device, backend, self.threads)
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


def make_workers(devices, cores):
    """A Worker per listed device; the cores are shared equally between them (threads per fold process)."""
    threads = worker_threads(len(devices), cores)
    cpu_numbers = iter(range(1, len(devices) + 1))
    return [Worker(device, threads, f"GPU {device}" if device >= 0 else
                   f"CPU worker {next(cpu_numbers)}" if devices.count(-1) > 1 else "CPU") for device in devices]


class Routine:
    """One launch of a routine script: its settings, its plan, its workers, and what it has timed so far."""

    def __init__(self, settings, selected, config, experiment_dir, workers, folds, dataset_identity):
        self.settings, self.selected, self.config = settings, selected, config
        self.experiment_dir, self.folds, self.workers = experiment_dir, folds, workers
        self.dataset_identity = dataset_identity  # what the plan checked and read: fingerprint, files, metadata
        self.dataset, self.experiment = settings["dataset"], settings["num_experiment"]
        self.num_folds = settings["num_folds"]
        self.show_progress = sys.stdout.isatty() and len(workers) == 1  # one \r epoch line: one fold at a time
        self.phases = {}  # {phase: seconds} of this launch, see launch()
        self.fold_runs = []  # [{"instance", "fold", "device", "seconds", "exit_code"}]: this launch's fold processes
        self.warnings = []  # lines the plan wants the user to read before training
        self.lock = threading.Lock()  # the workers' threads share fold_runs, phases and the console
        self.interrupted = False  # set on Ctrl-C: a fold ending now was stopped, not failed

    def record_fold(self, instance, fold, device, seconds, exit_code):
        """Remember one fold process's wall time (seen from this process) and exit code."""
        with self.lock:
            self.fold_runs.append({"instance": instance, "fold": fold, "device": device,
                                   "seconds": round(seconds, 3), "exit_code": exit_code})

    def eta(self, left):
        """Seconds until `left` more fold jobs are done: the mean time of this launch's completed folds times the
        rounds the workers need for them (left / workers, rounded up); None before a fold has completed."""
        seconds = [run["seconds"] for run in self.fold_runs if run["exit_code"] == 0]
        if not seconds:
            return None
        return float(np.mean(seconds)) * math.ceil(left / len(self.workers))

    def say(self, line, stream=None):
        """Print one line for the user, whole (the workers' threads print too)."""
        with self.lock:
            print(line, file=stream or sys.stdout, flush=True)


# ----------------------------------------------------------------------------------------------------------------
# A fold job: its fingerprint, its job file, one attempt at it, and the instance results JSON it completes

def fold_fingerprint(parameter_hash_value, dataset_fingerprint_value, fold):
    """What a fold result must have been made from to be reused: parameters, dataset content and the fold's items."""
    return {"parameter_hash": parameter_hash_value, "dataset_fingerprint": dataset_fingerprint_value,
            **{f"{split}_items": fold[f"{split}_items"] for split in SPLITS}}


def fold_result_problem(path, result, expected, experiment_dir):
    """Why the fold result at path cannot stand for the fold job fingerprinted `expected` (one line), or None."""
    if result.get("parameter_hash") != expected["parameter_hash"]:
        return f"{path} was computed with other parameters"
    if result.get("dataset_fingerprint") != expected["dataset_fingerprint"]:
        return f"{path} was trained on other features than the dataset files hold now (preprocessed again since?)"
    if any(result.get(key) != expected[key] for key in expected if key.endswith("_items")):
        return f"{path} was trained on another split than folds.json's"
    if not (Path(experiment_dir) / str(result.get("model_file"))).is_file():
        return f"{path} names the model {result.get('model_file')}, which is missing"
    return None


def reusable_folds(files, experiment_dir, fingerprints):
    """The instance's completed folds that can be reused: ({fold index: result}, None), or (_, why not: one line).

    A fold result is reused only if it was made from the same parameters, the same dataset content and the same
    items as planned now, and its model file is there; the instance JSON must carry the same parameter hash.
    """
    done = {}
    for index, path in enumerate(files["fold_results"]):
        if not path.exists():
            continue
        result = read_json(path)
        problem = fold_result_problem(path, result, fingerprints[index], experiment_dir)
        if problem:
            return done, problem
        done[index] = result
    if files["result"].exists() and read_json(files["result"]).get("parameter_hash") != \
            fingerprints[0]["parameter_hash"]:
        return done, f"{files['result']} was computed with other parameters"
    return done, None


def instance_base(routine, planned, files):
    """What an instance's results JSON holds besides its folds: the instance, its parameters and the dataset."""
    identity, parameters = routine.dataset_identity, planned["parameters"]
    return {"experiment": routine.experiment, "instance": planned["instance"], "dataset": routine.dataset,
            "task_type": parameters["task_type"], "parameter_hash": planned["hash"],
            "dataset_fingerprint": identity["dataset_fingerprint"], "class_names": identity["class_names"],
            "foldable_item": identity["foldable_item"], "speaker_independent": identity["speaker_independent"],
            "features": identity["features"],
            "parameter_strings": list(routine.settings["experiment_dict"][planned["instance"]]),
            "parameters": parameters,
            "parameters_file": files["parameters"].relative_to(routine.experiment_dir).as_posix(),
            "log_files": [path.relative_to(routine.experiment_dir).as_posix() for path in files["logs"]]}


def instance_collect(routine, planned):
    """What whoever lands one of the instance's folds needs to assemble its results JSON (collect_instance)."""
    files = instance_files(routine.experiment_dir, routine.dataset, routine.experiment, planned["instance"],
                           routine.num_folds)
    return {"experiment_dir": str(routine.experiment_dir), "instance": planned["instance"],
            "result": str(files["result"]), "mutex": str(files["mutex"]),
            "fold_results": [str(path) for path in files["fold_results"]],
            "failures": [str(path) for path in files["failures"]], "fingerprints": planned["fingerprints"],
            "base": instance_base(routine, planned, files)}


def fold_job(routine, planned, fold, threads, extra=None):
    """The job file's content of one fold job: what training.py needs to train it, and what whoever finishes it
    needs to record it ("collect": instance_collect's, and the fold's claim, log and failure record)."""
    instance, index, experiment_dir = planned["instance"], fold["fold"] - 1, routine.experiment_dir
    files = instance_files(experiment_dir, routine.dataset, routine.experiment, instance, routine.num_folds)
    return {"features_folder": str(routine.config["paths"]["features_folder"]), "dataset": routine.dataset,
            "parameters": planned["parameters"], "fold": fold["fold"], **planned["fingerprints"][index],
            "dataset_files": routine.dataset_identity["dataset_files"], "model_path": str(files["models"][index]),
            "initial_model_path": planned["initial_models"].get(fold["fold"]),
            "model_file": files["models"][index].relative_to(experiment_dir).as_posix(),
            "result_path": str(files["fold_results"][index]), "threads": threads,
            "overwrite": routine.settings["overwrite_results"],
            "label": f"instance {instance} fold {fold['fold']}/{routine.num_folds}",
            "collect": {**instance_collect(routine, planned), "lock": str(files["locks"][index]),
                        "log": str(files["logs"][index]), "failure": str(files["failures"][index])},
            **(extra or {})}


def summarise_folds(folds):
    """{split: {metric: {"mean", "std"}}} over folds: mean_and_std of each metric's values (None skipped)."""
    summary = {split: {} for split in SPLITS}
    for split in SPLITS:
        for name in sorted({name for fold in folds for name in fold["metrics"][split]}):
            stats = mean_and_std(fold["metrics"][split].get(name) for fold in folds)
            summary[split][name] = {"mean": stats["mean"], "std": stats["std"]}
    return summary


def collect_instance(collect):
    """Assemble an instance's results JSON from what is on disk now, under the instance's mutex, so that whoever
    lands its last fold writes it complete. Returns (status before, status now, the document, whether the file
    changed).

    Complete: every fold has a result made as planned (fingerprint and model); failed: a fold without one has a
    failure record; incomplete otherwise (folds pending, running elsewhere, or never run)."""
    experiment_dir, result_path = Path(collect["experiment_dir"]), Path(collect["result"])
    with file_mutex(collect["mutex"]):
        folds, errors = [], []
        for index, path in enumerate(map(Path, collect["fold_results"])):
            result = read_json(path) if path.exists() else None
            if result and not fold_result_problem(path, result, collect["fingerprints"][index], experiment_dir):
                folds.append(result)
            elif Path(collect["failures"][index]).exists():
                errors.append(read_json(collect["failures"][index])["error"])
        status = "complete" if len(folds) == len(collect["fold_results"]) else "failed" if errors else "incomplete"
        previous = read_json(result_path) if result_path.exists() else {}
        document = {**collect["base"], "status": status, "error": errors[0] if errors else None, "folds": folds,
                    "summary": summarise_folds(folds) if folds else None}
        changed = previous != json.loads(json.dumps(to_jsonable(document)))
        if changed:  # unchanged: left as it is
            atomic_write_json(result_path, document)
    return previous.get("status"), status, document, changed


def attempt_fold(job, job_path, run_process, write_job=False):
    """Claim the fold job `job` (its file: job_path), train it unless it is done already, and assemble its
    instance's results.

    run_process(job_path, log_path) runs training.py on it and returns (exit code, error line); write_job: write
    the job file once the fold is ours (a local run; a SLURM task reads the one written at submission).
    Returns (outcome, detail, collected): "busy" and the live owner's claim; "done" (someone finished it
    meanwhile) or "trained", and the fold result; "failed" and its error line; collected is collect_instance's
    return (None when busy). With job["overwrite"], a fold result older than the
    job file is replaced (the job file is written before the fold runs, so a result newer than it is this job's).
    """
    collect, index = job["collect"], job["fold"] - 1
    owner = claim(collect["lock"])
    if owner:
        return "busy", owner, None
    try:
        result_path, experiment_dir = Path(job["result_path"]), Path(collect["experiment_dir"])
        model = Path(job["model_path"])
        if write_job:
            atomic_write_json(job_path, job)
        if job["overwrite"] and result_path.exists() and result_path.stat().st_mtime < job_path.stat().st_mtime:
            for path in (result_path, model, model.with_name(model.name.replace(".hdf5", ".weights.h5"))):
                path.unlink(missing_ok=True)
        if result_path.exists():
            result = read_json(result_path)
            problem = fold_result_problem(result_path, result, collect["fingerprints"][index], experiment_dir)
            if problem:
                raise XvalError(f"instance {collect['instance']}: {problem}: set overwrite_results = True to "
                                "retrain it, or restore what changed")
            return "done", result, collect_instance(collect)
        Path(collect["failure"]).unlink(missing_ok=True)
        code, error_line = run_process(job_path, Path(collect["log"]))
        if code == 0 and result_path.exists():
            return "trained", read_json(result_path), collect_instance(collect)
        log = Path(collect["log"]).relative_to(experiment_dir)
        error = f"fold {job['fold']}: {error_line or f'the fold process ended with exit code {code}'}"
        atomic_write_json(collect["failure"], {"error": f"{error} (log: {log})", "host": HOST, "pid": os.getpid(),
                                               "slurm_job": slurm_job_id(), "when": time.strftime("%Y-%m-%d %H:%M:%S")})
        return "failed", error, collect_instance(collect)
    finally:
        release(collect["lock"])


def instance_done_line(document, main_metric, num_folds, label):
    """The line printed when an instance's last fold lands."""
    test = document["summary"]["test"][main_metric]
    return f"{label} complete: test {main_metric} {test['mean']:.3f} ± {test['std'] or 0:.3f} over {num_folds} folds"


def report_attempt(say, job, outcome, detail, collected, seconds, where, eta=None):
    """Print what one attempt at a fold job gave (one line; two for a failure, and the instance's line when this
    fold completed it). Returns whether the instance's results JSON was rewritten complete or failed just now."""
    label = job["label"]
    if outcome == "busy":
        say(f"{label}: skipped, being run by {detail.get('host')} {claim_owner_text(detail)} since "
            f"{detail.get('since')}")
        return False
    main_metric = MAIN_METRIC[job["parameters"]["task_type"]]
    if outcome == "done":
        say(f"{label}: finished meanwhile by another process, kept")
    elif outcome == "trained":
        value = detail["metrics"]["test"].get(main_metric)
        say(f"{label} on {where}: test {main_metric} {value if value is None else f'{value:.3f}'}, best epoch "
            f"{detail['best_epoch']}/{detail['epochs_run']}, {format_seconds(seconds)}"
            f"{'' if eta is None else f', ETA {format_seconds(eta)}'}")
    else:
        say(f"{label} on {where}: FAILED after {format_seconds(seconds)}: {detail}\n  log: {job['collect']['log']}")
    before, status, document, changed = collected
    if status == "complete" and changed:
        say(instance_done_line(document, main_metric, len(job["collect"]["fold_results"]),
                               f"instance {job['collect']['instance']}"))
    return status in ("complete", "failed") and changed


def rebuild_spreadsheet(experiment_dir, debug=False):
    """Rebuild the experiment's spreadsheet under a lock; a failure is reported but loses no result."""
    import results_to_excel  # here, not at the top: loaded by prepare() while the fold server starts
    try:
        with file_mutex(experiment_dir / "locks" / "spreadsheet.mutex"):
            return results_to_excel.write_spreadsheet(experiment_dir)
    except Exception as error:
        if debug:
            raise
        print(f"warning: the spreadsheet was not rebuilt ({type(error).__name__}: {error}); the results are "
              f"safe in results/; rebuild with python3 results_to_excel.py {experiment_dir}", file=sys.stderr)
        return None


def timed_rebuild(routine):
    """rebuild_spreadsheet for a local run, its time added to the launch's "spreadsheet" phase."""
    started = time.monotonic()
    rebuild_spreadsheet(routine.experiment_dir, routine.settings["debug_mode"])
    with routine.lock:
        routine.phases["spreadsheet"] = routine.phases.get("spreadsheet", 0.0) + time.monotonic() - started


def run_on_worker(routine, worker, planned, fold, left):
    """One fold job on one worker: write its job file once the fold is ours, run it, report it. Returns
    (outcome, detail). left() counts the fold jobs not finished yet, for the ETA."""
    instance, index = planned["instance"], fold["fold"] - 1
    files = instance_files(routine.experiment_dir, routine.dataset, routine.experiment, instance, routine.num_folds)
    job = fold_job(routine, planned, fold, worker.threads)
    runner = worker.runner(planned["parameters"]["backend"])

    def run_process(job_path, log_path):
        if routine.interrupted:  # Ctrl-C came while this fold was being claimed: train nothing
            raise KeyboardInterrupt
        started = time.monotonic()
        code, error_line = runner.run(job_path, log_path, job["label"], routine.show_progress)
        if routine.interrupted:  # the fold was stopped by Ctrl-C, not failed: no failure record, claim released
            raise KeyboardInterrupt
        routine.record_fold(instance, fold["fold"], worker.label, time.monotonic() - started, code)
        backend = planned["parameters"]["backend"]
        if worker.device >= 0 and runner.seen == "cpu" and backend not in worker.warned:
            worker.warned.add(backend)
            routine.say(f"warning: {worker.label} was asked for, but {backend} sees no GPU there, so its folds run on "
                        "the CPU: list -1 for a CPU worker, or check the GPU (nvidia-smi) and the CUDA build of "
                        f"{backend}", sys.stderr)
        return code, error_line

    started = time.monotonic()
    outcome, detail, collected = attempt_fold(job, files["jobs"][index], run_process, write_job=True)
    changed = report_attempt(routine.say, job, outcome, detail, collected, time.monotonic() - started,
                             worker.label, routine.eta(left()) if outcome == "trained" else None)
    if outcome == "failed" and routine.settings["debug_mode"]:
        log = files["logs"][index].read_text(encoding="utf-8", errors="replace")[-6000:]
        routine.say(log, sys.stderr)
    if changed:
        timed_rebuild(routine)
    return outcome, detail


def run_fold_jobs(routine, jobs):
    """Run the fold jobs [(planned, fold)] on the routine's workers, a thread each taking the next job in order;
    the rest of an instance is dropped once one of its folds failed (and everything stops at the first failure
    in debug_mode). Returns {instance: {outcome: [details]}} for trained, done, busy and failed."""
    pending, outcomes = deque(jobs), {}
    state = {"active": 0, "stop": False, "error": None, "begun": 0, "running": 0}
    finished = threading.Condition(routine.lock)  # notified as each worker's thread ends

    def take():
        with routine.lock:
            while pending and not state["stop"]:
                planned, fold = pending.popleft()
                if not outcomes.get(planned["instance"], {}).get("failed"):
                    state["active"] += 1
                    return planned, fold
            return None

    def left():
        return len(pending) + state["active"] - 1

    def work(worker):
        with routine.lock:
            state["begun"], state["running"] = state["begun"] + 1, state["running"] + 1
        try:
            while (job := take()) is not None:
                outcome, detail = run_on_worker(routine, worker, *job, left)
                with routine.lock:
                    state["active"] -= 1
                    outcomes.setdefault(job[0]["instance"], {}).setdefault(outcome, []).append(detail)
                    state["stop"] = state["stop"] or (outcome == "failed" and routine.settings["debug_mode"])
        except BaseException as error:  # a refusal or a bug: stop every worker, raise it in the main thread
            state["stop"], state["error"] = True, state["error"] or error
        finally:
            with finished:
                state["running"] -= 1
                finished.notify_all()

    def wait_for_workers(every_one):
        """Until no worker runs a fold job (and, with every_one, each has begun and ended). Not Thread.join(): on
        Python 3.11 a join that Ctrl-C interrupts can mark a running thread as ended (CPython issue 90882), and the
        routine would exit while a worker still holds its fold's claim. The wait wakes every WAIT_SLICE seconds:
        a Ctrl-C that reaches a worker's thread (or lands just as this thread goes to sleep) is acted on then,
        not only when a fold ends."""
        with finished:
            while not finished.wait_for(lambda: state["running"] == 0 and
                                        (state["begun"] == len(routine.workers) or not every_one), WAIT_SLICE):
                pass

    try:
        for worker in routine.workers:
            threading.Thread(target=work, args=(worker,), daemon=True).start()
        wait_for_workers(every_one=True)
    except KeyboardInterrupt:  # stop the folds, let each worker release its claim, then stop
        with routine.lock:  # a worker that begins after this takes no fold job
            routine.interrupted, state["stop"] = True, True
        for worker in routine.workers:
            worker.abort()
        wait_for_workers(every_one=False)
        raise
    if state["error"] is not None:
        raise state["error"]
    return outcomes


def write_launch_record(routine, argv, outcomes):
    """logs/launch_{time}_{host}_{pid}.json: what this launch ran and where its time went (phases in seconds, and
    each fold process's wall time seen from here; each fold result holds the fold's own breakdown)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    atomic_write_json(routine.experiment_dir / "logs" / f"launch_{stamp}_{HOST}_{os.getpid()}.json", {
        "host": HOST, "pid": os.getpid(), "arguments": list(argv), "instances": routine.selected,
        "devices": [worker.device for worker in routine.workers],
        "threads_per_fold": routine.workers[0].threads,
        "outcomes": {str(instance): outcome for instance, outcome in outcomes.items()},
        "phases": {phase: round(seconds, 3) for phase, seconds in routine.phases.items()},
        "fold_runs": routine.fold_runs})


def print_choice(experiment_dir):
    """Print which instance is chosen on validation and the test number to report, from the summary JSON that
    the last spreadsheet rebuild wrote (nothing if there is none)."""
    import collect  # here, not at the top: pandas and scipy, which planning never needs
    for summary in collect.read_routine_summary(experiment_dir).values():
        for line in collect.honest_lines(summary)[:2]:
            print(f"xval: {line}")


def missing_jobs(routine, plan):
    """The fold jobs still to train, [(planned, fold)], instance by instance in the order selected."""
    return [(plan[instance], fold) for instance in routine.selected for fold in routine.folds
            if fold["fold"] - 1 in plan[instance]["missing"]]


def write_parameters_files(routine, plan):
    """Each selected instance's readable parameters file (the same content for the same plan: atomic, rewritten)."""
    for instance in routine.selected:
        planned = plan[instance]
        files = instance_files(routine.experiment_dir, routine.dataset, routine.experiment, instance,
                               routine.num_folds)
        strings = routine.settings["experiment_dict"][instance]
        atomic_write_text(files["parameters"], parameters_text(instance, planned["parameters"], strings,
                                                               planned["hash"]))


def instance_outcome(routine, planned, outcomes):
    """After the workers: complete | skipped (complete before this launch) | failed | busy (a fold left to another
    process) | stopped (not run: debug_mode stopped first). The results JSON of an instance whose folds are all
    done is assembled once more (its last fold may have landed in another process that was killed meanwhile)."""
    instance = planned["instance"]
    if outcomes.get("failed"):
        return "failed"
    if outcomes.get("busy"):
        return "busy"
    if planned["missing"] and not outcomes:
        return "stopped"
    before, status, document, changed = collect_instance(instance_collect(routine, planned))
    if status != "complete":
        return "stopped"
    if not planned["missing"]:
        if before == "complete":
            routine.say(f"instance {instance}: complete already, skipped (overwrite_results = False)"
                        + ("; its edited comments written to its results" if changed else ""))
            if changed:
                timed_rebuild(routine)
            return "skipped"
        main_metric = MAIN_METRIC[planned["parameters"]["task_type"]]
        routine.say(instance_done_line(document, main_metric, routine.num_folds, f"instance {instance}"))
        timed_rebuild(routine)
    return "complete"


# ----------------------------------------------------------------------------------------------------------------
# SLURM: one array task per missing fold job, then a job that rebuilds the spreadsheet

def slurm_job_name(dataset, experiment):
    """The name of an experiment's SLURM jobs (what --status asks squeue for)."""
    return f"xval_{dataset}_exp{experiment}"


def sbatch_value(text):
    """A value for an #SBATCH line: in double quotes when it holds a space (sbatch reads those as one word)."""
    if '"' in text:
        raise XvalError(f"{text!r} holds a double quote, which an #SBATCH line cannot carry: rename the folder or "
                        "dataset for --slurm")
    return f'"{text}"' if any(character.isspace() for character in text) else text


def sbatch_lines(slurm):
    """#SBATCH lines of [slurm]'s resource settings (empty ones left to the cluster's defaults)."""
    lines = [f"#SBATCH --{option}={sbatch_value(slurm[key])}" for option, key in
             (("partition", "partition"), ("time", "time"), ("mem", "mem"), ("gres", "gres")) if slurm[key]]
    lines += [f"#SBATCH {line.strip()}" for line in slurm["extra_sbatch"].split(";") if line.strip()]
    return lines


def fold_array_script(routine, list_path, count, command_line):
    """The sbatch script of the fold jobs listed in list_path: array task i runs line i (0-based)."""
    slurm, logs = routine.config["slurm"], routine.experiment_dir / "logs"
    cap = f"%{slurm['max_parallel']}" if slurm["max_parallel"] else ""
    return "\n".join([
        "#!/bin/bash",
        f"# xval: experiment {routine.experiment} on '{routine.dataset}', {count} fold job(s) of instances "
        f"{', '.join(map(str, routine.selected))},",
        f"# written by: {command_line}",
        f"# Array task i trains the fold job on line i (0-based) of {list_path.name}, unless it is done already or",
        "# being run by a live process; preempted or on a failed node, SLURM requeues the task and the fold starts",
        "# again. Submitting this script again runs whatever is not done.",
        f"#SBATCH --job-name={sbatch_value(slurm_job_name(routine.dataset, routine.experiment))}",
        f"#SBATCH --array=0-{count - 1}{cap}",
        f"#SBATCH --cpus-per-task={slurm['cpus_per_task']}",
        *sbatch_lines(slurm),
        "#SBATCH --requeue",
        "#SBATCH --open-mode=append",
        f"#SBATCH --output={sbatch_value(f'{logs}/slurm_%A_%a.out')}",
        "",
        f"export {CONFIG_ENV_VAR}={shlex.quote(str(config_path_in_use()))}",
        f"cd {shlex.quote(str(PROJECT_DIR))}",
        f"exec {shlex.quote(sys.executable)} xval_instance.py {TASK_FLAG} {shlex.quote(str(list_path))} "
        '"$SLURM_ARRAY_TASK_ID"', ""])


def spreadsheet_script(routine):
    """The sbatch script that rebuilds the spreadsheet (submitted to run after the fold array, however it ends)."""
    slurm = dict(routine.config["slurm"], gres="")
    return "\n".join([
        "#!/bin/bash",
        "# xval: rebuild the spreadsheet from the fold results, once the fold jobs' array has ended",
        f"#SBATCH --job-name={sbatch_value(slurm_job_name(routine.dataset, routine.experiment) + '_spreadsheet')}",
        "#SBATCH --cpus-per-task=1",
        *sbatch_lines(slurm),
        f"#SBATCH --output={sbatch_value(f'{routine.experiment_dir}/logs/slurm_spreadsheet_%j.out')}",
        "",
        f"cd {shlex.quote(str(PROJECT_DIR))}",
        f"exec {shlex.quote(sys.executable)} results_to_excel.py {shlex.quote(str(routine.experiment_dir))}", ""])


def sbatch_command():
    """The path of sbatch, or an XvalError saying where --slurm must run."""
    command = shutil.which("sbatch")
    if command is None:
        raise XvalError("sbatch is not on PATH: --slurm submits to a SLURM cluster; run it on the cluster's login "
                        "node (or run the routine locally, without --slurm)")
    return command


def sbatch(arguments):
    """Submit with sbatch --parsable; returns the job id, or raises XvalError with sbatch's own message."""
    completed = subprocess.run([sbatch_command(), "--parsable", *map(str, arguments)], capture_output=True,
                               text=True)
    if completed.returncode != 0:
        message = " ".join(completed.stderr.split()) or f"exit code {completed.returncode}"
        raise XvalError(f"sbatch refused the submission ({message}): check the [slurm] section of config.ini or "
                        "the --slurm options")
    return completed.stdout.strip().split(";")[0]


def submit_to_slurm(routine, plan, argv):
    """Write the missing fold jobs, the sbatch scripts into slurm/{time}/ of the experiment folder, and submit
    them: the fold array, then the spreadsheet job after it. Returns 0."""
    jobs = missing_jobs(routine, plan)
    if not jobs:
        routine.say("xval: nothing to submit: every selected fold job is done")
        rebuild_spreadsheet(routine.experiment_dir, routine.settings["debug_mode"])
        return 0
    folder = routine.experiment_dir / "slurm" / f"{time.strftime('%Y%m%d-%H%M%S')}_{os.getpid()}"
    paths = []
    for planned, fold in jobs:
        path = folder / "jobs" / f"run{planned['instance']}_fold{fold['fold']}.job.json"
        atomic_write_json(path, fold_job(routine, planned, fold, routine.config["slurm"]["cpus_per_task"]))
        paths.append(str(path))
    list_path = folder / "fold_jobs.txt"
    atomic_write_text(list_path, "\n".join(paths) + "\n")
    command_line = " ".join(["python3", Path(sys.argv[0]).name, *argv])
    atomic_write_text(folder / "folds.sbatch", fold_array_script(routine, list_path, len(paths), command_line))
    atomic_write_text(folder / "spreadsheet.sbatch", spreadsheet_script(routine))
    array = sbatch([folder / "folds.sbatch"])
    record = {"array_job": array, "spreadsheet_job": None, "fold_jobs": paths, "host": HOST,
              "when": time.strftime("%Y-%m-%d %H:%M:%S")}
    atomic_write_json(folder / "submitted.json", record)
    try:
        sheet = sbatch([f"--dependency=afterany:{array}", folder / "spreadsheet.sbatch"])
    except XvalError as error:
        raise XvalError(f"the fold jobs were submitted as SLURM array {array}, but the spreadsheet job was not: "
                        f"{error}; rebuild it after the array with python3 results_to_excel.py "
                        f"{routine.experiment_dir}") from None
    atomic_write_json(folder / "submitted.json", dict(record, spreadsheet_job=sheet))
    routine.say(f"xval: submitted {len(paths)} fold job(s) as SLURM array {array} "
                f"({folder / 'folds.sbatch'}), and the spreadsheet as job {sheet} after it. Follow them with: "
                f"python3 {Path(sys.argv[0]).name} --status")
    return 0


def stop_on_sigterm(*_):
    """SLURM stops a task with SIGTERM (cancelled, preempted, requeued, out of time): the fold is not failed, its
    claim is released on the way out (exit code 143), and the next attempt trains it from the start."""
    raise SystemExit(128 + signal.SIGTERM)


def run_slurm_task(list_path, index):
    """An array task: the fold job on line `index` of list_path, in a fresh training.py process on the devices
    and cores SLURM allocated. Exit code 0 when the fold is done (now or before) or being run elsewhere, 1 when
    it failed."""
    job_path = Path(Path(list_path).read_text(encoding="utf-8").splitlines()[int(index)])
    job = read_json(job_path)
    signal.signal(signal.SIGTERM, stop_on_sigterm)
    environment = fold_environment(job["parameters"]["backend"], job["threads"])
    where = f"{HOST} (SLURM job {slurm_job_id()}, GPU {os.environ.get('CUDA_VISIBLE_DEVICES') or 'none'})"

    def run_process(path, log_path):
        with open(log_path, "a", encoding="utf-8") as log:
            log.write(log_attempt_header(where, job["label"]))
            log.flush()
            completed = subprocess.run([sys.executable, str(TRAINING_SCRIPT), str(path)], stdout=log,
                                       stderr=subprocess.STDOUT, env=environment, cwd=str(PROJECT_DIR))
        if completed.returncode == -signal.SIGTERM:
            stop_on_sigterm()
        tail = log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-200:]
        return completed.returncode, error_line_of(tail)

    started = time.monotonic()
    outcome, detail, collected = attempt_fold(job, job_path, run_process)
    changed = report_attempt(lambda line, stream=None: print(line, file=stream or sys.stdout, flush=True), job,
                             outcome, detail, collected, time.monotonic() - started, where)
    if changed:
        rebuild_spreadsheet(Path(job["collect"]["experiment_dir"]))
    return 1 if outcome == "failed" else 0


# ----------------------------------------------------------------------------------------------------------------
# Status: what the experiment folder (and squeue) say about each fold job

def read_if_readable(path):
    """A JSON file's content, or None when it is missing, damaged or removed while being read (--status only)."""
    try:
        return read_json(path)
    except (OSError, XvalError):
        return None


def fold_state(files, index):
    """One fold job's state as a line: running (or a stale claim), done with its test main metric, failed, pending."""
    lock, result_path, failure = files["locks"][index], files["fold_results"][index], files["failures"][index]
    owner = read_if_readable(lock)
    if owner:
        runner = claim_owner_text(owner)
        if lock_owner_alive(owner):
            return f"running on {owner.get('host')} ({runner}) since {owner.get('since')}"
        return (f"stale claim of {owner.get('host')} ({runner}, since {owner.get('since')}; the process is gone): "
                "the next run takes it over")
    result = read_if_readable(result_path)
    if result:
        metrics = result.get("metrics", {}).get("test", {})
        metric = next((name for name in MAIN_METRIC.values() if metrics.get(name) is not None), None)
        return f"done, test {metric} {metrics[metric]:.3f}" if metric else "done"
    failed = read_if_readable(failure)
    if failed:
        return f"failed: {failed.get('error')}"
    if any(path.exists() for path in (lock, result_path, failure)):
        return f"pending ({', '.join(p.name for p in (lock, result_path, failure) if p.exists())} unreadable)"
    return "pending"


def print_status(settings, config, selected, routine_file):
    """--status: each selected instance's fold jobs, from the experiment folder alone, then squeue's lines for
    the experiment's SLURM jobs where squeue is available. Returns 0."""
    experiment_dir = experiment_path(settings, config, routine_file)
    print(f"xval: experiment {settings['num_experiment']} on '{settings['dataset']}' in {experiment_dir}")
    for instance in selected:
        files = instance_files(experiment_dir, settings["dataset"], settings["num_experiment"], instance,
                               settings["num_folds"])
        states = [fold_state(files, index) for index in range(settings["num_folds"])]
        counts = {word: sum(state.startswith(word) for state in states)
                  for word in ("done", "running", "failed", "stale", "pending")}
        print(f"instance {instance}: " + ", ".join(f"{n} {word}" for word, n in counts.items() if n))
        for fold, state in enumerate(states, 1):
            print(f"  fold {fold}: {state}")
    squeue = shutil.which("squeue")
    if squeue:
        name = slurm_job_name(settings["dataset"], settings["num_experiment"])
        listed = subprocess.run([squeue, "--me", "-h", "-o", "%i %j %T %M %R"], capture_output=True, text=True)
        lines = [line for line in listed.stdout.splitlines()
                 if line.split()[1:2] in ([name], [f"{name}_spreadsheet"])]
        print(f"squeue: {len(lines)} job(s) of this experiment" + "".join(f"\n  {line}" for line in lines))
    return 0


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
    parse_devices(-1 if settings["gpu_ID"] is None else settings["gpu_ID"],
                  f"routine setting gpu_ID = {settings['gpu_ID']!r}")
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


def read_command(settings, argv, routine_file):
    """The checked settings and command line: (parse_command_line's dict, config with --slurm's overrides)."""
    check_settings(settings)
    default_devices = parse_devices(-1 if settings["gpu_ID"] is None else settings["gpu_ID"], "gpu_ID")
    command = parse_command_line(argv, sorted(settings["experiment_dict"]), default_devices, Path(routine_file).name)
    config = load_config()
    for key, text in command["slurm"].items():
        option = next(name for name, value in SLURM_OPTIONS.items() if value == key)
        config["slurm"][key] = parse_config_value(text, CONFIG_SCHEMA["slurm"][key], Path.cwd(), option)
    if config["slurm"]["cpus_per_task"] <= 0 or config["slurm"]["max_parallel"] < 0:
        raise XvalError("--cpus-per-task must be 1 or more and --max-parallel 0 (no cap) or more")
    return command, config


def experiment_path(settings, config, routine_file):
    """{experiment_folder}/experiment_{N}: a relative experiment_folder is taken from the routine file's folder."""
    root = Path(settings["experiment_folder"] or config["paths"]["experiment_folder"]).expanduser()
    if not root.is_absolute():
        root = Path(routine_file).resolve().parent / root
    return root / f"experiment_{settings['num_experiment']}"


def prepare(settings, command, config, routine_file):
    """Everything that can be refused, refused before anything is written. Returns validate()'s plan.

    For a local run the workers' fold servers start first: TensorFlow's import (~3 s) runs while this process
    validates the routine and imports the spreadsheet code; a refusal stops the servers at once.
    """
    workers = make_workers(command["devices"], available_cores())
    try:
        # a local run starts the default backend's servers first, importing while this process validates: -0.88 s
        # a run (median of 7, benchmarks/tweaks.py: e_early_server)
        early = workers if command["mode"] == "run" else []
        for worker in early:
            worker.runner(config["training"]["backend"])
        import results_to_excel  # noqa: F401  (needed after the first instance; imported now, beside TensorFlow)
        return validate(settings, config, command["selected"], workers, routine_file, command["mode"] == "smoke")
    except BaseException:
        for worker in workers:
            worker.abort()
        raise


def validate(settings, config, selected, workers, routine_file, smoke=False):
    """prepare() after the command line: the plan. Every check of the routine's input runs here, once.

    Parameters, the dataset (its arrays, each task type's target, a fingerprint of its content), the folds
    (folds.json's, or a new split), the models instances start from, and, per instance, the completed folds that
    can be reused: a fold made from other parameters, other features or another split is refused unless
    overwrite_results asks to retrain it (not for a smoke run, which reuses nothing).
    Returns (Routine, {instance: {"instance", "parameters", "hash", "fingerprints", "missing": fold indices,
    "initial_models"}}, the split settings).
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
    experiment_dir = experiment_path(settings, config, routine_file)
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
                                           for fold in folds], "missing": list(range(num_folds)),
                          "initial_models": {fold: str(path) for fold, path in initial_models.items()}}
        if not settings["overwrite_results"] and not smoke and experiment_dir.exists():
            files = instance_files(experiment_dir, dataset, settings["num_experiment"], instance, num_folds)
            reused, conflict = reusable_folds(files, experiment_dir, plan[instance]["fingerprints"])
            if conflict:
                raise XvalError(f"instance {instance}: {conflict}: set overwrite_results = True to retrain it, "
                                "or restore what changed")
            plan[instance]["missing"] = [index for index in range(num_folds) if index not in reused]
    routine = Routine(settings, selected, config, experiment_dir, workers, folds, identity)
    routine.warnings = warnings
    return routine, plan, split


def smoke_run(routine, plan):
    """Each selected instance on the first fold for one epoch of SMOKE_BATCHES batches, in a scratch folder that is
    deleted afterwards: one line per instance (ok or its error) with its seconds. Returns the exit code (0 all
    ok, 1 one failed). Nothing is written into the experiment folder."""
    experiment_dir, failed, worker = routine.experiment_dir, [], routine.workers[0]
    routine.experiment_dir = Path(tempfile.mkdtemp(prefix="xval-smoke-"))
    print(f"xval: smoke run of instances {', '.join(map(str, routine.selected))}: fold 1, 1 epoch, "
          f"{SMOKE_BATCHES} batches each, in {routine.experiment_dir}", flush=True)
    try:
        for instance in routine.selected:
            planned = dict(plan[instance], parameters=dict(plan[instance]["parameters"], num_epochs=1))
            files = instance_files(routine.experiment_dir, routine.dataset, routine.experiment, instance,
                                   routine.num_folds)
            job = fold_job(routine, planned, routine.folds[0], worker.threads, {"smoke_batches": SMOKE_BATCHES})
            atomic_write_json(files["jobs"][0], job)
            started = time.monotonic()
            code, error_line = worker.runner(planned["parameters"]["backend"]).run(
                files["jobs"][0], files["logs"][0], f"instance {instance}", routine.show_progress)
            error = None if code == 0 else error_line or f"the fold process ended with exit code {code}"
            print(f"instance {instance}: {'ok' if error is None else 'FAILED: ' + error} "
                  f"({time.monotonic() - started:.1f} s)", flush=True)
            if error:
                failed.append(instance)
    finally:
        worker.close()
        shutil.rmtree(routine.experiment_dir, ignore_errors=True)
    print(f"xval: smoke run: {len(routine.selected) - len(failed)} ok, {len(failed)} failed; nothing was written "
          f"to {experiment_dir}")
    return 1 if failed else 0


def set_up_experiment_folder(routine, split, routine_file):
    """What every run writes before training: folds.json, the description, a snapshot of the code."""
    check_writable(routine.experiment_dir)
    (routine.experiment_dir / "logs").mkdir(exist_ok=True)  # fold logs, and SLURM's output files, go there
    remove_stale_temp_files(routine.experiment_dir)  # left by killed xval processes; never read as results
    write_folds(routine.experiment_dir, split, routine.folds)
    atomic_write_text(routine.experiment_dir / f"experiment_{routine.experiment}_description.txt",
                      routine.settings["description"].strip() + "\n")
    snapshot_code(routine.experiment_dir, routine_file, config_path_in_use())


def launch(settings, argv, routine_file):
    """Run the routine; returns the exit code: 0 every selected instance is complete, 1 one failed, 3 none failed
    but some were left to another process running them (not complete yet: rerun later to check).
    --smoke: smoke_run(); --status: print_status(); --slurm: submit_to_slurm()."""
    started = time.monotonic()
    command, config = read_command(settings, argv, routine_file)
    if command["mode"] == "status":
        return print_status(settings, config, command["selected"], routine_file)
    if command["mode"] == "slurm":
        sbatch_command()  # refused before anything is written
    routine, plan, split = prepare(settings, command, config, routine_file)
    if command["mode"] == "smoke":
        return smoke_run(routine, plan)
    routine.phases["validate"] = time.monotonic() - started
    experiment_dir = routine.experiment_dir
    outcomes = {}
    try:
        setup_started = time.monotonic()
        set_up_experiment_folder(routine, split, routine_file)
        write_parameters_files(routine, plan)
        routine.phases["setup"] = time.monotonic() - setup_started
        cpu_workers, cores = command["devices"].count(-1), available_cores()
        if command["mode"] == "run" and cpu_workers > cores:
            routine.warnings.append(f"{cpu_workers} CPU workers share {cores} cores: each fold gets 1 thread and "
                                    f"they take turns; list at most {cores} (-1,-1,...)")
        for warning in routine.warnings:
            routine.say(f"xval: WARNING: {warning}")
        if not routine.dataset_identity["speaker_independent"]:
            routine.say(f"xval: WARNING: dataset '{routine.dataset}' folds by "
                        f"{routine.dataset_identity['foldable_item']}: one speaker's clips can be in training and "
                        "test, so the results are speaker-dependent")
        if command["mode"] == "slurm":
            return submit_to_slurm(routine, plan, argv)
        routine.say(f"xval: experiment {routine.experiment} on '{routine.dataset}', instances "
                    f"{', '.join(map(str, routine.selected))}, {routine.num_folds} folds, on "
                    f"{', '.join(worker.label for worker in routine.workers)} ({routine.workers[0].threads} "
                    f"thread(s) per fold) -> {experiment_dir}")
        by_instance = run_fold_jobs(routine, missing_jobs(routine, plan))
        for instance in routine.selected:
            outcomes[instance] = instance_outcome(routine, plan[instance], by_instance.get(instance, {}))
    finally:
        close_started = time.monotonic()
        for worker in routine.workers:
            worker.close()
        routine.phases["close_server"] = time.monotonic() - close_started
    if not {"complete", "failed"} & set(outcomes.values()):
        timed_rebuild(routine)  # nothing changed: one rebuild makes sure the spreadsheet is there
    routine.phases["total"] = time.monotonic() - started
    write_launch_record(routine, argv, outcomes)
    counts = {status: [i for i, s in outcomes.items() if s == status]
              for status in ("complete", "skipped", "failed", "busy", "stopped")}
    print(f"xval: done in {format_seconds(time.monotonic() - started)}: " +
          ", ".join(f"{len(ids)} {status} ({', '.join(map(str, ids))})" for status, ids in counts.items() if ids) +
          f". Results: {experiment_dir}")
    print_choice(experiment_dir)
    if counts["failed"]:
        print(f"xval: {len(counts['failed'])} instance(s) failed; see their logs. Fix and rerun: completed folds "
              "are kept", file=sys.stderr)
        if settings["debug_mode"]:
            print(f"debug_mode: stopped at the first failure (instance {counts['failed'][0]})", file=sys.stderr)
    if counts["failed"] or counts["stopped"]:
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

    The keyword arguments are the routine script's settings of the same names (gpu_ID: a device number, -1 for
    the CPU, or a list of them: one worker each); argv defaults to sys.argv[1:] (see parse_command_line).
    Parameter strings come only from experiment_dict, i.e. from the user's own routine file.
    """
    settings = {"description": description, "gpu_ID": gpu_ID, "dataset": dataset, "num_experiment": num_experiment,
                "num_folds": num_folds, "experiment_folder": experiment_folder,
                "overwrite_results": overwrite_results, "debug_mode": debug_mode, "experiment_dict": experiment_dict}
    argv = sys.argv[1:] if argv is None else list(argv)
    routine_file = getattr(sys.modules.get("__main__"), "__file__", None) or "routine.py"
    code = exit_on_user_error(lambda: launch(settings, argv, routine_file), debug=debug_mode is True)
    raise SystemExit(code)


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] != TASK_FLAG:
        print(f"usage: python3 xval_instance.py {TASK_FLAG} FOLD_JOBS.txt INDEX (what the sbatch scripts of "
              "--slurm run; a routine script is what you run)", file=sys.stderr)
        raise SystemExit(2)
    raise SystemExit(exit_on_user_error(lambda: run_slurm_task(sys.argv[2], sys.argv[3])))
