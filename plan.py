"""The plan: a routine's instances, dataset and folds checked into one frozen value before anything is written.

make_plan() reads everything a routine launch depends on, once, and refuses any doubt with one line: every
selected instance's parameter strings resolved over the defaults (parameters.py), the dataset (its arrays, each
task type's target, a fingerprint of its content), the experiment's k-fold split over the foldable items (its
folds.json, or a new one from the [folds] splitter), the models instances start from, and per instance the finished
fold results that can be reused. The plan knows no executor, worker or process: every executor runs the same plan's
missing fold jobs (Plan.missing_jobs) through the fold-job protocol (foldjob.py). accept() then writes what every
run writes before training: folds.json, the description, a snapshot of the code, the parameters files.
"""
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from importlib import metadata
from pathlib import Path

import numpy as np

from foldjob import claim_owner_text, fold_fingerprint, read_if_readable, recorded_parameters, reusable_folds
from layout import FOLD_MODEL_PATTERN, Layout
from parameters import (architecture_parameters, architecture_signatures, as_recorded, changed_parameters,
                        check_backend_installed, parameter_hash, parameters_text, resolve_instance)
from registries import SPLITTERS
from search import check_optuna, check_search, is_search, lost_trials, parse_search, with_conditions
from utility_functions import (HOST, PROJECT_DIR, SPLITS, XvalError, atomic_write_json, atomic_write_text,
                               check_dataset, check_item_sums, check_target, config_path_in_use, dataset_file_stats,
                               dataset_fingerprint, dataset_paths, file_mutex, heartbeat_age, load_clip_ids,
                               load_dataset, lock_owner_alive, read_json, release_stale_claim, remove_stale_temp_files,
                               storage_error, unwritable)

PACKAGES_RECORDED = ("numpy", "scipy", "tensorflow", "keras", "torch", "jax", "jaxlib", "librosa", "scikit-learn",
                     "pandas", "soundfile", "xlsxwriter", "matplotlib", "h5py")
# folds.json settings that older experiments do not record: {key: the value they were made with}
FOLD_SETTING_DEFAULTS = {"splitter": "GroupKFold"}


@dataclass(frozen=True)
class PlannedInstance:
    """One selected instance: its strings, resolved parameters and their hash, the fingerprint every fold result
    must match (per fold index), the fold indices still to train, and {fold number: initial model path}."""
    instance: int
    parameter_strings: tuple
    parameters: dict
    hash: str
    fingerprints: tuple
    missing: tuple
    initial_models: dict
    trial: dict = None  # a search's trial: {"search": its key, "trial": its number, "params": {name: value}}


@dataclass(frozen=True)
class PlannedSearch:
    """A selected search (search.Search), its task type, and what planning one of its trials needs: the shape of
    an example (frames, bins), the output size, and config.ini's [training] defaults."""
    search: object
    task_type: str
    data_shape: tuple
    output_size: int
    training: dict
    strings: tuple = ()  # the routine's strings of the search (what a batch task parses again)


@dataclass(frozen=True)
class Plan:
    """What a launch of a routine will do, and nothing of how. identity: the dataset's fingerprint, file stats,
    class names, foldable item, whether it is speaker-independent and its feature settings; split: folds.json's
    settings; created: when the plan was made (Unix time): with overwrite, fold results older than it are
    replaced; claim_grace: seconds after which a claim whose owner stopped touching it is taken over."""
    layout: Layout
    description: str
    features_folder: str
    overwrite: bool
    debug: bool
    identity: dict
    split: dict
    folds: tuple
    instances: tuple
    warnings: tuple
    created: float
    claim_grace: float
    searches: tuple = ()

    @property
    def num_folds(self):
        return len(self.folds)

    @property
    def selected(self):
        """The selected instance ids, and the key of each selected search."""
        return sorted([planned.instance for planned in self.instances] +
                      [planned.search.key for planned in self.searches])

    def missing_jobs(self):
        """The fold jobs still to train, [(planned instance, fold)], instance by instance in the order selected."""
        return [(planned, fold) for planned in self.instances for fold in self.folds
                if fold["fold"] - 1 in planned.missing]

    def elsewhere(self, root):
        """The same plan writing into another experiment folder (the smoke run's scratch folder)."""
        return replace(self, layout=Layout(root, self.layout.dataset, self.layout.experiment))


# ----------------------------------------------------------------------------------------------------------------
# The dataset, checked once where it enters

def check_index_against_metadata(predictors, clip_ids, metadata, metadata_path):
    """XvalError unless every item holds the clips its metadata lists (clips_per_item; in windows mode, a clip id
    per window), so an edited index cannot move a clip to another foldable item unseen."""
    expected = metadata.get("clips_per_item") if isinstance(metadata, dict) else None
    if not isinstance(expected, dict):
        return  # a dataset of an earlier version without the counts
    windows = (metadata.get("length") or {}).get("mode") == "windows"
    for item, x in predictors.items():
        clips = len(np.unique(clip_ids[item])) if windows else len(x)
        if expected.get(item) != clips:
            raise XvalError(f"dataset files disagree with {metadata_path}: item {item} holds {clips} clips, the "
                            f"metadata lists {expected.get(item)} (an edited index or clips file?): preprocess it "
                            "again with --force")


def read_dataset(features_folder, dataset, task_types):
    """Load and check a dataset for the task types of the selected instances. Returns (identity (see Plan), items
    with data, {item: class index per example, or None for a regression target}, the (frames, bins) of an example,
    {task type: output size})."""
    dataset_files = dataset_file_stats(features_folder, dataset)  # before reading: a later rewrite shows
    predictors, targets = load_dataset(features_folder, dataset, scan=True)  # passes over it keep none of it
    clip_ids = load_clip_ids(features_folder, dataset, predictors)
    items = check_dataset(predictors, targets, dataset, clip_ids)
    for task_type in sorted(task_types):
        check_target(targets, dataset, task_type)
    first_target = targets[items[0]]
    one_hot = first_target.ndim == 2 and first_target.shape[1] > 1
    labels = {item: targets[item].argmax(axis=1) if one_hot else None for item in items}
    metadata_path = dataset_paths(features_folder, dataset)["metadata"]
    metadata = read_json(metadata_path) if metadata_path.exists() else {}
    check_index_against_metadata(predictors, clip_ids, metadata, metadata_path)
    check_item_sums(features_folder, dataset, predictors)  # after the index: a moved clip is named as such
    identity = {"dataset_fingerprint": dataset_fingerprint(predictors, targets, clip_ids),
                "dataset_files": dataset_files, "class_names": metadata.get("class_names"),
                "foldable_item": metadata.get("foldable_item"),
                "speaker_independent": metadata.get("speaker_independent", True),
                "features": {key: metadata.get(key) for key in ("feature_settings", "length", "sample_rate")}}
    output_sizes = {"classification": first_target.shape[-1] if first_target.ndim == 2 else 1, "regression": 1}
    return identity, items, labels, predictors[items[0]].shape[1:], output_sizes


# ----------------------------------------------------------------------------------------------------------------
# Folds: a partition of the foldable items, made once per experiment by the [folds] splitter

def check_num_folds(num_folds, item_count):
    """XvalError unless num_folds can split item_count foldable items with 2 or more training items per fold."""
    if not isinstance(num_folds, int) or isinstance(num_folds, bool) or num_folds < 2:
        raise XvalError(f"num_folds = {num_folds!r} must be a whole number of at least 2")
    if num_folds > item_count:
        raise XvalError(f"num_folds = {num_folds} is more than the {item_count} items (actors) with data: "
                        f"use at most {item_count}")
    if item_count < 3:
        raise XvalError(f"the dataset has {item_count} foldable items: cross-validation needs 3 or more (test, "
                        "validation and training items in every fold); preprocess a corpus with more")
    if item_count - item_count // num_folds - (1 if item_count % num_folds else 0) < 2:
        raise XvalError(f"num_folds = {num_folds} leaves fewer than 2 training and validation items in a fold of "
                        f"these {item_count} foldable items: use num_folds = {item_count} (more folds leave more "
                        "items for training)")


def make_folds(items, num_folds, seed, validation_share, splitter="GroupKFold", labels=None):
    """K folds over the foldable items: each item is tested exactly once; each fold's validation items
    (validation_share of its training items, at least one) come from its training items.

    splitter: a name of registries.SPLITTERS, run over the examples grouped by item; labels: {item: class index
    of each example}, which a stratifying splitter needs (else one example per item stands for it).
    Returns [{"fold": 1.., "train_items", "val_items", "test_items"}], every list sorted.
    """
    from sklearn.model_selection import train_test_split  # here: the routine starts faster without it
    items, entry = sorted(items), SPLITTERS[splitter]
    check_num_folds(num_folds, len(items))
    if entry.one_fold_per_item and num_folds != len(items):
        raise XvalError(f"[folds] splitter = {splitter} makes one fold per foldable item: set num_folds = "
                        f"{len(items)} (the items with data), or use another splitter")
    if entry.needs_labels and (labels is None or any(labels.get(item) is None for item in items)):
        raise XvalError(f"[folds] splitter = {splitter} stratifies by class, and this dataset has no class "
                        "labels (a regression target): use splitter = GroupKFold")
    per_item = [labels[item] if entry.needs_labels else np.zeros(1, dtype=int) for item in items]
    groups = np.repeat(np.arange(len(items)), [len(values) for values in per_item])
    y = np.concatenate(per_item)
    folds = []
    for fold, (_, test_index) in enumerate(entry.make(num_folds, seed).split(np.zeros(len(y)), y, groups), 1):
        tested = set(groups[test_index])
        pool, test = [item for i, item in enumerate(items) if i not in tested], [items[i] for i in sorted(tested)]
        if len(pool) < 2:
            raise XvalError(f"[folds] splitter = {splitter} leaves fold {fold} fewer than 2 training items for "
                            "training and validation: use fewer folds")
        n_val = min(max(1, round(validation_share * len(pool))), len(pool) - 1)
        train, val = train_test_split(pool, test_size=n_val, random_state=seed + fold)
        folds.append({"fold": fold, "train_items": sorted(train), "val_items": sorted(val),
                      "test_items": sorted(test)})
    return folds


def fold_settings(dataset, items, num_folds, folds_config):
    """What determines an experiment's split; saved in folds.json and compared on every later run."""
    return {"dataset": dataset, "num_folds": num_folds, "items": sorted(items),
            "splitter": folds_config["splitter"], "folds_seed": folds_config["folds_seed"],
            "validation_share": folds_config["validation_share"]}


FOLDS_FIX = "restore it from a backup, or delete it only if no fold of this experiment was trained yet"


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
        raise XvalError(f"{path} is damaged ({problem}): {FOLDS_FIX}")


def check_saved_folds(path, wanted):
    """Refuse a run whose split settings differ from the experiment's folds.json; returns the saved folds."""
    try:
        saved = json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:  # read_json's advice (delete it) would lose the split
        raise XvalError(f"{path} is damaged (not JSON: {getattr(error, 'msg', 'not text')}, cut short?): "
                        f"{FOLDS_FIX}") from None
    try:
        if not isinstance(saved, dict):
            raise TypeError("'folds'")
        folds = saved["folds"]
        for key, value in wanted.items():
            if saved.get(key, FOLD_SETTING_DEFAULTS.get(key)) != value:
                raise XvalError(f"{path} was made with {key} = {saved.get(key, FOLD_SETTING_DEFAULTS.get(key))!r}, "
                                f"this run has {value!r}: all instances of an experiment share one split, so use "
                                "another num_experiment (or restore the setting)")
        check_folds_partition(folds, wanted["items"], path)
    except (KeyError, TypeError) as error:
        raise XvalError(f"{path} is damaged (no {error}): {FOLDS_FIX}") from None
    return folds


def check_results_split(layout, folds, replaced=()):
    """XvalError unless every fold result in the experiment folder, of any instance (selected or not), was trained
    on these folds: instances are compared fold by fold, so they must share one split. Called where folds.json is
    missing (a new split is made); replaced: instances whose results overwrite_results replaces."""
    by_number = {fold["fold"]: fold for fold in folds}
    skip = tuple(f"results_{layout.stem(instance)}_fold" for instance in replaced)
    for path in sorted((layout.results / "folds").glob("results_*_fold*.json")):
        result = read_json(path) if not path.name.startswith(skip) else None
        fold = by_number.get(result.get("fold")) if isinstance(result, dict) else None
        if result is not None and (fold is None or any(result.get(f"{split}_items") != fold[f"{split}_items"]
                                                       for split in SPLITS)):
            raise XvalError(f"{layout.folds} is missing, and {path} was trained on another split than this run would "
                            "make: instances on different splits cannot be compared fold by fold; restore folds.json "
                            "(from a backup, or by running with the settings it was made with: num_folds, [folds] "
                            "splitter, folds_seed, validation_share), or use another num_experiment")


def planned_folds(layout, wanted, labels):
    """The experiment's folds: those of its folds.json, or a new split when it has none yet (written by accept)."""
    if layout.folds.exists():
        check_num_folds(wanted["num_folds"], len(wanted["items"]))
        return check_saved_folds(layout.folds, wanted)
    return make_folds(wanted["items"], wanted["num_folds"], wanted["folds_seed"], wanted["validation_share"],
                      wanted["splitter"], labels)


def write_folds(layout, wanted, folds):
    """Write folds.json once, under a lock; a folds.json written meanwhile must hold the same folds."""
    with file_mutex(layout.folds_mutex):
        if not layout.folds.exists():
            atomic_write_json(layout.folds, {**wanted, "folds": folds})
        elif check_saved_folds(layout.folds, wanted) != folds:
            raise XvalError(f"{layout.folds} was written by another run with other folds while this one started: "
                            "rerun to use it")


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
        seen = items_seen(path, dataset)
        leaked = sorted(set(fold["test_items"]) & seen) if seen else []
        if leaked:
            shown = ", ".join(leaked[:3]) + (", ..." if len(leaked) > 3 else "")
            warnings.append(f"{where}: initial_model {path} was trained on dataset '{dataset}': its weights saw "
                            f"{len(leaked)} of fold {fold['fold']}'s test items ({shown}), so that fold's test score "
                            "is optimistic")
    return paths, warnings


def items_seen(model_path, dataset):
    """The foldable items of `dataset` a model of an xval experiment was trained or validated on: a fold model's
    fold's training and validation items, a final model's every item (from its experiment's folds.json); an empty
    set for a model of another dataset or from elsewhere (no folds.json two folders up: nothing to compare)."""
    path = Path(model_path)
    origin = path.parent.parent / "folds.json"
    saved = read_json(origin) if origin.is_file() else {}
    if saved.get("dataset") != dataset:
        return set()
    if path.parent.name == "final":
        return set(saved.get("items", []))
    match = FOLD_MODEL_PATTERN.match(path.name)
    fold = next((f for f in saved.get("folds", []) if match and f["fold"] == int(match["fold"])), None)
    # a model file named otherwise in an experiment of this dataset: it may have seen any of its items
    return set(saved.get("items", [])) if fold is None else set(fold["train_items"]) | set(fold["val_items"])


# ----------------------------------------------------------------------------------------------------------------
# The plan

def reuse_problem(layout, instance, parameters, fingerprints, strings=()):
    """The fold indices still to train of an instance, and why its finished results cannot be reused (one line,
    naming the parameters that changed where its results record them (foldjob.recorded_parameters), and for one that
    no string of the instance sets, a default that changed since, the string that gives the value they were made
    with), or None."""
    done, problem = reusable_folds(layout, instance, fingerprints)
    if problem and "other parameters" in problem:
        _, recorded = recorded_parameters(layout, instance, len(fingerprints), fingerprints[0]["parameter_hash"])
        changed = changed_parameters(recorded, parameters) if recorded else []
        problem += f" ({', '.join(changed)} changed)" if changed else ""
        given = {text.split("=")[0].strip() for text in strings}
        defaults = [name for name in changed if name not in given and name in recorded and name in parameters]
        if defaults:
            problem += (f"; {', '.join(defaults)} {'is' if len(defaults) == 1 else 'are'} not set by the instance: "
                        "a default changed (config.ini or the architecture); to reuse the results, add "
                        + ", ".join(f"'{name} = {recorded[name]!r}'" for name in defaults))
    return tuple(index for index in range(len(fingerprints)) if index not in done), problem


def plan_instance(layout, identity, folds, instance, strings, parameters, data_shape, output_size, reuse, overwrite):
    """(PlannedInstance, warning lines) of one instance whose parameters are resolved: its hash and fold
    fingerprints, its initial models checked, and the folds still to train (all of them unless reuse)."""
    where = f"experiment_dict[{instance}]"
    current_hash = parameter_hash(parameters, layout.dataset, len(folds))
    initial_models, cautions = check_initial_models(parameters, layout.root, data_shape, output_size, layout.dataset,
                                                    folds, where)
    fingerprints = tuple(fold_fingerprint(current_hash, identity["dataset_fingerprint"], fold) for fold in folds)
    missing = tuple(range(len(folds)))
    if reuse and not overwrite and layout.root.exists():
        missing, conflict = reuse_problem(layout, instance, parameters, fingerprints, strings)
        if conflict:
            raise XvalError(f"instance {instance}: {conflict}: set overwrite_results = True to retrain it, "
                            "or restore what changed")
    return PlannedInstance(instance, tuple(strings), parameters, current_hash, fingerprints, missing,
                           {fold: str(path) for fold, path in initial_models.items()}), cautions


def parse_searches(experiment_dict, training, signatures):
    """{key: Search} of the routine's search entries (with_conditions applied where the architecture is searched),
    and a refusal of any instance id two entries would share (a search of N trials takes the ids key .. key +
    N - 1)."""
    searches = {key: with_conditions(parse_search(key, strings, f"experiment_dict[{key}]"),
                                     lambda architecture: architecture_parameters(architecture, training, signatures))
                for key, strings in experiment_dict.items() if is_search(strings)}
    for key, search in searches.items():
        inside = [other for other in experiment_dict if other != key and other in search.instances()]
        if inside:
            raise XvalError(f"experiment_dict[{inside[0]}] lies inside search {key}'s trials (instances {key} to "
                            f"{key + search.trials - 1}): give it a number of {key + search.trials} or more")
    return searches


def make_plan(settings, config, selected, experiment_dir, reuse=True, claims=True):
    """The plan of a launch (see the module docstring): settings are the routine's (checked by the facade),
    selected the instance ids (a search's key selects the search), experiment_dir its experiment_{N} folder.
    reuse=False (a smoke run) reuses nothing; claims=False (--status) does not refuse a fold that another process
    trains now with other parameters. Every check of the routine's input runs here, once; an XvalError names the
    first problem. Reads only: nothing is written (accept() writes)."""
    signatures, training = architecture_signatures(), config["training"]
    experiment_dict = settings["experiment_dict"]
    all_searches = parse_searches(experiment_dict, training, signatures)
    searches = {key: all_searches[key] for key in selected if key in all_searches}
    hand = [instance for instance in selected if instance not in searches]
    resolved = {instance: resolve_instance(experiment_dict[instance], training, signatures,
                                           f"experiment_dict[{instance}]") for instance in hand}
    search_tasks, backends = {}, {parameters["backend"] for parameters in resolved.values()}
    for key, search in searches.items():
        check_optuna()

        def resolve(strings, where):
            parameters = resolve_instance(strings, training, signatures, where)
            backends.add(parameters["backend"])
            return parameters
        search_tasks[key] = check_search(search, resolve, f"experiment_dict[{key}]")
    for backend in sorted(backends):
        check_backend_installed(backend)
    dataset, num_folds = settings["dataset"], settings["num_folds"]
    features_folder = config["paths"]["features_folder"]
    identity, items, labels, data_shape, output_sizes = read_dataset(
        features_folder, dataset, {parameters["task_type"] for parameters in resolved.values()} |
        set(search_tasks.values()))
    layout = Layout(experiment_dir, dataset, settings["num_experiment"])
    split = fold_settings(dataset, items, num_folds, config["folds"])
    folds = planned_folds(layout, split, labels)
    if not layout.folds.exists() and reuse:
        check_results_split(layout, folds, selected if settings["overwrite_results"] else ())
    instances, warnings = [], []
    for instance in hand:
        planned, cautions = plan_instance(layout, identity, folds, instance, experiment_dict[instance],
                                          resolved[instance], data_shape, output_sizes[resolved[instance]["task_type"]],
                                          reuse, settings["overwrite_results"])
        if reuse and claims:
            check_live_claims(layout, planned, config["claims"]["grace_seconds"])
        instances.append(planned)
        warnings += cautions
    planned_searches = []
    for key, search in searches.items():
        if reuse and layout.root.exists():
            check_search_ids(layout, search)
        if reuse and settings["overwrite_results"] and layout.search(key).journal.exists():
            raise XvalError(f"search {key} has trials in {layout.search(key).journal}, and overwrite_results = True "
                            "would not undo them: give the search another key or num_experiment, or set "
                            "overwrite_results = False to go on with it")
        planned_searches.append(PlannedSearch(search, search_tasks[key], tuple(data_shape),
                                              output_sizes[search_tasks[key]], training, tuple(experiment_dict[key])))
    same = {}
    for planned in instances:
        same.setdefault(planned.hash, []).append(planned.instance)
    warnings += [f"instances {', '.join(map(str, group))} have the same parameters (comments aside): they will give "
                 "the same results; change one, or remove it" for group in same.values() if len(group) > 1]
    return Plan(layout=layout, description=settings["description"], features_folder=str(features_folder),
                overwrite=settings["overwrite_results"], debug=settings["debug_mode"], identity=identity,
                split=split, folds=tuple(folds), instances=tuple(instances), warnings=tuple(warnings),
                created=time.time(), claim_grace=config["claims"]["grace_seconds"], searches=tuple(planned_searches))


def differing_parameters(job, planned):
    """The parameters a fold job file (or its entry in a submission) gives otherwise than the planned instance, as
    words ('learning_rate, dropout'), for a refusal."""
    return ", ".join(changed_parameters(job.get("parameters") or {}, planned.parameters)) or "the dataset or num_folds"


def check_live_claims(layout, planned, grace):
    """Refuse an instance whose fold is being trained now by another process (a live claim) with other parameters
    (another routine with the same instance number on this experiment folder): the two would mix their folds in
    one instance."""
    for index in planned.missing:
        paths = layout.fold(planned.instance, index + 1)
        owner = read_if_readable(paths.lock)
        if not owner or not lock_owner_alive(owner, heartbeat_age(paths.lock), grace):
            continue
        job = read_if_readable(paths.job)
        if isinstance(job, dict) and job.get("parameter_hash") not in (None, planned.hash):
            raise XvalError(f"instance {planned.instance}: fold {index + 1} is being trained now by "
                            f"{owner.get('host')} ({claim_owner_text(owner)}, since {owner.get('since')}) with "
                            f"other parameters ({differing_parameters(job, planned)} differ): another "
                            "routine on this experiment folder uses the same instance number; let it finish and "
                            "give this instance another number")


def check_search_ids(layout, search):
    """Refuse a search whose instance ids hold results that are not its trials (an instance of an earlier routine,
    another search's trial), or whose trials' results are there without its journal: its trials would clash
    with them."""
    journal = layout.search(search.key).journal
    for instance in search.instances():
        path = layout.instance(instance).result
        if not path.exists():
            continue
        recorded = read_json(path)
        trial = recorded.get("search") if isinstance(recorded, dict) else None
        if not isinstance(trial, dict) or trial.get("search") != search.key:
            raise XvalError(f"search {search.key}: instance {instance} (one of its trials' ids) has results of "
                            f"another instance in {layout.root}: give the search another key or num_experiment")
        if not journal.exists():
            raise XvalError(f"search {search.key}: its trials have results but its journal {journal} is missing: "
                            "restore it, or give the search another key or num_experiment")
    for instance in lost_trials(layout, search):
        raise XvalError(f"search {search.key}: trial {instance - search.key} finished, but its results "
                        f"{layout.instance(instance).result} are missing (deleted?): restore them, or give the search "
                        "another key or num_experiment (a trial is never run twice)")


def plan_trial(plan, planned_search, number, strings):
    """The PlannedInstance of trial `number` of a planned search (instance key + number), from its strings."""
    instance = planned_search.search.key + number
    parameters = resolve_instance(list(strings), planned_search.training, architecture_signatures(),
                                  f"experiment_dict[{planned_search.search.key}], trial {number}")
    planned, _ = plan_instance(plan.layout, plan.identity, plan.folds, instance, strings, parameters,
                               planned_search.data_shape, planned_search.output_size, True, plan.overwrite)
    params = {d.name: parameters[d.name] for d in planned_search.search.space if d.name in parameters}
    return replace(planned, trial={"search": planned_search.search.key, "trial": number, "params": params})


def search_plan_document(plan):
    """A plan's searches as JSON data: what a batch task needs to run their trials (search_plan_from_document)."""
    return {"experiment_dir": str(plan.layout.root), "dataset": plan.layout.dataset,
            "experiment": plan.layout.experiment, "description": plan.description,
            "features_folder": plan.features_folder, "overwrite": plan.overwrite, "debug": plan.debug,
            "identity": plan.identity, "split": plan.split, "folds": list(plan.folds), "created": plan.created,
            "claim_grace": plan.claim_grace,
            "searches": [{"key": s.search.key, "strings": list(s.strings), "task_type": s.task_type,
                          "data_shape": list(s.data_shape), "output_size": s.output_size, "training": s.training}
                         for s in plan.searches]}


def search_plan_from_document(document):
    """The Plan (no hand-written instance) of search_plan_document's data."""
    signatures = architecture_signatures()
    searches = tuple(PlannedSearch(parse_searches({entry["key"]: entry["strings"]}, entry["training"],
                                                  signatures)[entry["key"]], entry["task_type"],
                                   tuple(entry["data_shape"]), entry["output_size"],
                                   entry["training"], tuple(entry["strings"])) for entry in document["searches"])
    return Plan(layout=Layout(document["experiment_dir"], document["dataset"], document["experiment"]),
                description=document["description"], features_folder=document["features_folder"],
                overwrite=document["overwrite"], debug=document["debug"], identity=document["identity"],
                split=document["split"], folds=tuple(document["folds"]), instances=(), warnings=(),
                created=document["created"], claim_grace=document["claim_grace"], searches=searches)


def write_parameters_file(layout, planned):
    """results/parameters/parameters_{stem}.txt of a planned instance: its resolved parameters, readable (those of
    an instance with results as its results JSON records them: a key added since, at its neutral value, is left
    out, so resuming after an upgrade rewrites nothing)."""
    recorded = read_if_readable(layout.instance(planned.instance).result)
    parameters = as_recorded(recorded.get("parameters") if isinstance(recorded, dict) else None, planned.parameters)
    text = parameters_text(planned.instance, parameters, planned.parameter_strings, planned.hash)
    atomic_write_text(layout.instance(planned.instance).parameters, text)


# ----------------------------------------------------------------------------------------------------------------
# Accepting the plan: what every run writes before training

def check_writable(folder):
    """Create folder if needed and prove it writable, or explain."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        reason = unwritable(folder)
    except OSError as error:
        reason = error.strerror
    if reason:
        raise XvalError(f"experiment folder {folder} is not writable ({reason}): choose another experiment_folder "
                        "or fix its permissions")


def snapshot_code(layout, routine_file, config_file):
    """Copy the scripts, config.ini and the routine into code/<time>_<host>_<pid>/, with git state and package
    versions."""
    target = layout.code_snapshot(time.strftime('%Y%m%d-%H%M%S'), HOST, os.getpid())
    staging = target.with_name(f".{target.name}.xvaltmp-{HOST}-{os.getpid()}")
    try:
        write_snapshot(staging, routine_file, config_file)
        os.rename(staging, target)
    except OSError as error:
        shutil.rmtree(staging, ignore_errors=True)
        raise storage_error(target, error) from None
    return target


def write_snapshot(staging, routine_file, config_file):
    """The content of a code snapshot, written into the folder staging."""
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


def accept(plan, routine_file):
    """Write what every run writes before training: folds.json (once), the description, a snapshot of the code and
    the readable parameters file of each selected instance that is complete (one still to train gets it when one of
    its folds is launched, under that fold's claim: another routine may train it with other parameters)."""
    layout = plan.layout
    check_writable(layout.root)
    layout.logs.mkdir(exist_ok=True)  # fold logs, and SLURM's output files, go there
    remove_stale_temp_files(layout.root)  # left by killed xval processes; never read as results
    trials = [instance for planned_search in plan.searches for instance in planned_search.search.instances()]
    for instance in [planned.instance for planned in plan.instances] + trials:
        for fold in range(1, len(plan.folds) + 1):  # a claim left by a process killed after its result landed
            if layout.fold(instance, fold).result.exists():
                release_stale_claim(layout.fold(instance, fold).lock, plan.claim_grace)
    write_folds(layout, plan.split, list(plan.folds))
    atomic_write_text(layout.description, plan.description.strip() + "\n")
    snapshot_code(layout, routine_file, config_path_in_use())
    for planned in plan.instances:  # an instance still to train gets its file from the attempt that trains it
        if not planned.missing:
            write_parameters_file(layout, planned)
