"""Parameters: an instance's parameter strings resolved over the defaults, checked, and hashed. Pure functions.

An instance is a list of strings ('learning_rate = 0.001'), each one Python assignment of plain data. They are
applied over the defaults: config.ini [training] plus the keyword defaults of the chosen architecture, which are
read from define_models.py's source without importing it (so every instance is checked at once, without
TensorFlow). Every resolved parameter acts (the training loop reads the [training] keys, the architecture
receives its arguments by name) or the instance is refused with one line, before anything is trained.

parameter_hash() is what a finished fold records and what the plan compares before reusing it: the resolved
parameters without the comments, with the dataset and the number of folds; a [training] key added after results
were first written hashes only where an instance moves it from its neutral value (HASH_NEUTRAL), so that results of
earlier versions keep resuming.
"""
import ast
import builtins
import difflib
import hashlib
import importlib.util
import json
import math
from pathlib import Path

from registries import BACKENDS, TASK_TYPES, monitor_direction, monitorable
from utility_functions import (CONFIG_SCHEMA, DATA_ARGUMENTS, MODEL_ONLY_TRAINING_PARAMETERS, OPTIMIZERS, PROJECT_DIR,
                               XvalError)

MODELS_FILE = PROJECT_DIR / "define_models.py"
MANDATORY_PARAMETERS = ("comment_1", "comment_2", "task_type", "architecture")
BACKENDS_NAME = "ARCHITECTURE_BACKENDS"  # define_models.py's {architecture: the only backend it runs on}
NOT_HASHED = ("comment_1", "comment_2")  # editing a comment does not invalidate finished folds
# [training] keys and architecture arguments added since results were first written (main at 167406f): {key: its
# neutral value, the one that does what xval did before the key existed}. An instance at the neutral value hashes
# as if the key did not exist, so finished experiments keep resuming after an upgrade. Every key added to
# [training] gets an entry here (tests/test_upgrade.py refuses a new key without one).
HASH_NEUTRAL = {"tensorboard": False, "standardize": False}  # standardize: POOLED_STATS_model's, since 2026-12-04
# parameters that act only with some value of others: (name, whether it acts, what idles it (a format string of the
# parameters), what would make it act); only a parameter the instance sets is refused, never a default
CONDITIONAL_PARAMETERS = (
    ("patience", lambda p: p["early_stopping"], "early_stopping = False", "early_stopping = True"),
    ("focal_gamma", lambda p: p["loss"] == "focal", "loss = 'auto'", 'loss = "focal"'),
    ("time_mask_width", lambda p: p["time_masks"] > 0, "time_masks = 0", "time_masks = 1 or more"),
    ("freq_mask_width", lambda p: p["freq_masks"] > 0, "freq_masks = 0", "freq_masks = 1 or more"),
    ("lr_factor", lambda p: p["lr_patience"] > 0, "lr_patience = 0", "lr_patience = 1 or more"),
    ("min_lr", lambda p: p["lr_patience"] > 0, "lr_patience = 0", "lr_patience = 1 or more"),
    ("trainable", lambda p: bool(p["initial_model"]), "no initial_model", "initial_model"),
    ("patience", lambda p: p["patience"] < p["num_epochs"], "num_epochs = {num_epochs} (early stopping waits "
     "{patience} epochs without improvement)", "patience below num_epochs"),
    ("lr_patience", lambda p: p["lr_patience"] < p["num_epochs"], "num_epochs = {num_epochs}",
     "lr_patience below num_epochs"),
    ("lr_patience", lambda p: p["lr_patience"] == 0 or p["min_lr"] < p["learning_rate"], "min_lr = {min_lr} at or "
     "above learning_rate = {learning_rate} (the rate is only lowered down to min_lr)", "min_lr below learning_rate"),
    ("min_lr", lambda p: p["min_lr"] < p["learning_rate"], "learning_rate = {learning_rate} (the rate is only "
     "lowered down to min_lr)", "min_lr below learning_rate"),
)
SAFE_BUILTINS = {name: getattr(builtins, name) for name in ("abs", "min", "max", "round", "int", "float", "str",
                                                          "bool", "list", "tuple", "dict", "range", "len", "sum")}


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
    def fail(message, name=None):
        """Refuse; a value the instance does not set comes from config.ini [training], which the line says."""
        origin = "" if name is None or name in overridden else \
            f" (config.ini [training] gives it: fix {name} there, or set it in the instance)"
        raise XvalError(f"{where}: {message}{origin}")
    if parameters["optimizer"] not in OPTIMIZERS:
        fail(f"optimizer {parameters['optimizer']!r} is unknown: use one of {', '.join(OPTIMIZERS)}", "optimizer")
    allowed = ("loss",) + monitorable(parameters["task_type"])  # loss: the training loss, to convergence
    if parameters["save_best_model_metric"] not in allowed:
        fail(f"save_best_model_metric {parameters['save_best_model_metric']!r} is not available for "
             f"{parameters['task_type']}: use one of {', '.join(allowed)}", "save_best_model_metric")
    if parameters["save_best_model_mode"] not in ("min", "max", "auto"):
        fail(f"save_best_model_mode {parameters['save_best_model_mode']!r} must be min, max or auto",
             "save_best_model_mode")
    direction = monitor_direction(parameters["save_best_model_metric"])
    if parameters["save_best_model_mode"] not in ("auto", direction):
        fail(f"save_best_model_mode = {parameters['save_best_model_mode']!r} would keep the worst epoch of "
             f"{parameters['save_best_model_metric']} (best is {direction}): use \"auto\" (or \"{direction}\")",
             "save_best_model_mode")
    for name, kind in CONFIG_SCHEMA["training"].items():
        if isinstance(kind, tuple) and parameters[name] not in kind:
            fail(f"{name} {parameters[name]!r} is not one of {', '.join(kind)}", name)
    for name in ("batch_size", "num_epochs", "learning_rate", "time_mask_width", "freq_mask_width"):
        if parameters[name] <= 0:
            fail(f"{name} = {parameters[name]} must be greater than 0", name)
    for name in ("patience", "regularization_lambda", "focal_gamma", "time_masks", "freq_masks", "mixup_alpha",
                 "lr_patience", "min_lr"):
        if name in parameters and parameters[name] < 0:
            fail(f"{name} = {parameters[name]} must not be negative", name)
    if not 0 < parameters["lr_factor"] < 1:
        fail(f"lr_factor = {parameters['lr_factor']} must be between 0 and 1 (the learning rate is multiplied by it)",
             "lr_factor")
    if not 0 <= parameters["seed"] < 2 ** 32:
        fail(f"seed = {parameters['seed']} must be between 0 and 2**32 - 1", "seed")
    if parameters["task_type"] == "regression":
        for name, default in (("class_weight", "none"), ("loss", "auto")):
            if parameters[name] != default:
                fail(f"{name} = {parameters[name]!r} is for classification only: remove it from regression "
                     "instances", name)
    for name, acts, idle, fix in CONDITIONAL_PARAMETERS:
        if name in overridden and not acts(parameters):
            fail(f"{name} = {parameters[name]!r} has no effect with {idle.format(**parameters)}: remove it, or set "
                 f"{fix}")


def uses(signature, training_key):
    """Whether an architecture (its signature) uses a config.ini [training] key: every key but those of
    MODEL_ONLY_TRAINING_PARAMETERS, which exist only where the architecture takes them as an argument."""
    return training_key not in MODEL_ONLY_TRAINING_PARAMETERS or training_key in signature["arguments"]


def architecture_parameters(architecture, training_defaults, signatures):
    """The names of the parameters an instance of `architecture` may set (what resolve_instance accepts for it):
    the mandatory ones, the [training] keys it uses and its own arguments with defaults; empty if it is unknown."""
    signature = signatures.get(architecture)
    if signature is None:
        return set()
    return {*MANDATORY_PARAMETERS, *signature["defaults"], *(name for name in training_defaults
                                                             if uses(signature, name))}


def declared_backends(experiment_dict, selected, default):
    """The Keras backends the selected instances name (`backend = "jax"`), else default, in order, those installed:
    a guess made before the plan, so that a routine starts the fold servers it will use (and no other) while the plan
    is made. Checks nothing: a string that does not parse counts as naming none; the plan refuses what is wrong
    and starts any server this missed."""
    found = []
    for instance in selected:
        strings = experiment_dict.get(instance) if isinstance(experiment_dict, dict) else None
        backend = default
        for text in strings if isinstance(strings, (list, tuple)) else ():
            try:
                name, value = parse_parameter_string(text, "")
            except XvalError:
                continue
            if name == "backend" and isinstance(value, str):
                backend = value
        found.append(backend)
    return [backend for backend in dict.fromkeys(found or [default])
            if backend in BACKENDS and importlib.util.find_spec(BACKENDS[backend].package) is not None]


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
    used_training = {name: value for name, value in training_defaults.items() if uses(signature, name)}
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
    if parameters.get("tensorboard") and importlib.util.find_spec("tensorflow") is None:
        raise XvalError(f"{where}: tensorboard = True writes its logs with TensorFlow's tf.summary (on any backend), "
                        "and tensorflow is not installed: pip install tensorflow, or set tensorboard = False")
    return parameters


def check_backend_installed(backend, find_spec=importlib.util.find_spec):
    """XvalError with the command that installs it unless backend's package can be imported (it is not imported)."""
    entry = BACKENDS[backend]
    if find_spec(entry.package) is None:
        raise XvalError(f"backend {backend!r} is not installed ({entry.package} cannot be imported): {entry.install}")


def as_recorded(recorded, parameters):
    """parameters without the keys added since `recorded` (an earlier results JSON's parameters) was written that
    are at their neutral value (HASH_NEUTRAL): what that record would hold of them, so that resuming does not
    rewrite a results file only to add a key that changes nothing."""
    if not isinstance(recorded, dict) or not isinstance(parameters, dict):
        return parameters
    return {name: value for name, value in parameters.items() if name in recorded or name not in HASH_NEUTRAL or
            type(value) is not type(HASH_NEUTRAL[name]) or value != HASH_NEUTRAL[name]}


def hashed_parameters(parameters):
    """What of the resolved parameters determines the results: all but the comments and the keys at their neutral
    value (HASH_NEUTRAL)."""
    def neutral(name, value):
        return name in HASH_NEUTRAL and type(value) is type(HASH_NEUTRAL[name]) and value == HASH_NEUTRAL[name]
    return {name: value for name, value in parameters.items() if name not in NOT_HASHED and not neutral(name, value)}


def parameter_hash(parameters, dataset, num_folds):
    """A stable SHA-256 of what determines an instance's results (its hashed parameters, dataset, folds)."""
    text = json.dumps({"parameters": hashed_parameters(parameters), "dataset": dataset, "num_folds": num_folds},
                      sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def changed_parameters(recorded, planned):
    """The names whose values differ between two resolved parameter sets as hashed, for a refusal's line."""
    recorded, planned = hashed_parameters(recorded), hashed_parameters(planned)
    return sorted(name for name in set(recorded) | set(planned) if recorded.get(name, ...) != planned.get(name, ...))


def parameters_text(instance, parameters, parameter_strings, parameter_hash_value):
    """The readable parameters file: the strings as given, then every resolved value."""
    width = max(len(name) for name in parameters)
    lines = [f"instance {instance}", f"parameter_hash {parameter_hash_value}", "", "# as given"]
    lines += [f"  {text}" for text in parameter_strings]
    lines += ["", "# resolved (defaults from config.ini [training] and the architecture's keyword defaults)"]
    lines += [f"  {name.ljust(width)} = {value!r}" for name, value in parameters.items()]
    return "\n".join(lines) + "\n"
