"""From results to a model: train the chosen instance on all data, and predict new audio files with it.

    python3 use_model.py final EXPERIMENT_DIR [--instance N | --instance best] [--overwrite] [--gpu N]
    python3 use_model.py predict MODEL_OR_EXPERIMENT AUDIO... [--instance N | --instance best] [--out FILE.csv]

final: trains the instance (default: best, the one chosen on validation) on every foldable item, in a process of
its own like a fold (training.py), with the same parameters, seed and normalisation rule, for the median of its
folds' best epochs (the epoch count cross-validation found on validation items; with no validation items left,
the final model cannot choose an epoch itself). It writes final/model_{dataset}_exp{N}_run{R}_final.hdf5, then its
card final/..._final_card.json: parameters, feature settings and sample rate, class names, the dataset's name and
fingerprint, the cross-validation results it is backed by (the instance's and the routine's selection-aware
estimate), the epochs and their rule, the code version. An incomplete instance is refused; an existing final
model is replaced only with --overwrite.

predict: reads audio files or folders (any format and rate the preprocessing reads), makes features with exactly
the settings stored with the model, through the preprocessing's own front end (feat_analysis), scores each file as
the fold does (the mean over its windows, or its one fixed-length clip), and writes one CSV row per file: file,
prediction, the probability of every class (classification) or the value (regression), and the model.
MODEL_OR_EXPERIMENT is a model file (a final or fold model: its card inside says what it takes) or an experiment
folder with --instance (the mean of its fold models' outputs). Unreadable files are listed and skipped.
"""
import argparse
import csv
import io
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from foldjob import read_job
from launchers import ProcessLauncher, fold_environment, no_gpu_warning
from layout import FOLD_MODEL_PATTERN, Layout
from plan import initial_model_paths
from registries import BACKENDS, use_backend_environment
from utility_functions import (PROJECT_DIR, XvalError, atomic_write_json, atomic_write_text, dataset_file_stats,
                               dataset_fingerprint, dataset_paths, exit_on_user_error, files_under, load_clip_ids,
                               load_config, load_dataset, read_json, stored_format, unwritable, whole_number)

FEATURE_KEYS = ("feature_settings", "length", "sample_rate")  # what predicting needs to make the same features


# ----------------------------------------------------------------------------------------------------------------
# An experiment's instances

def instance_result(experiment_dir, instance):
    """(path, JSON) of an instance's results file in experiment_dir, read as the views read it (collect: a damaged
    file, another experiment's or another dataset's is skipped, with a warning); XvalError when there is none."""
    import collect  # here, not at the top: pandas and scipy, which predicting with a model file never needs
    skipped = {}
    found = [item for item in collect.load_instances(experiment_dir, quiet=True, skipped=skipped)
             if item.id == instance]
    if not found:
        about = [why for path, why in skipped.items() if path.name.endswith(f"_run{instance}.json")]
        if about:  # its file is damaged, another experiment's or another dataset's: say why, in one line
            raise XvalError(about[0])
        raise XvalError(f"{experiment_dir} has no usable results of instance {instance}: pass an instance it holds "
                        "(results/results_*_run{N}.json)")
    return found[0].source, read_json(found[0].source)


def chosen_instance(experiment_dir):
    """The instance chosen on validation (the spreadsheet's 'best'), from the experiment's fold results."""
    import collect  # here, not at the top: pandas and scipy, which predicting with a model file never needs
    instances = collect.load_instances(experiment_dir)
    chosen = [summary["chosen_on_validation"]["instance"] for summary in
              collect.routine_summaries(instances).values() if summary and summary.get("chosen_on_validation")]
    if len(chosen) != 1:
        other_split = [instance.id for instance in instances if instance.status == collect.OTHER_SPLIT]
        if not chosen and other_split:
            raise XvalError(f"{experiment_dir}: its complete instances ({', '.join(map(str, other_split))}) were "
                            "trained on another split than its folds.json (edited or replaced since?), so none is "
                            "chosen: restore folds.json, or pass --instance N")
        if not chosen:
            raise XvalError(f"{experiment_dir} has no complete instance (see its spreadsheet or --status): fix what "
                            "made them fail and rerun the routine, then use a complete instance")
        raise XvalError(f"{experiment_dir} has instances of several task types: pass --instance N")
    return chosen[0]


def which_instance(experiment_dir, text):
    """The instance number asked for: a number, or 'best' (chosen on validation)."""
    if text in (None, "best"):
        return chosen_instance(experiment_dir)
    try:
        number = whole_number(text)
    except ValueError:
        number = -1
    if number < 0:
        raise XvalError(f"--instance {text!r} must be an instance number or best")
    return number


# ----------------------------------------------------------------------------------------------------------------
# final

def epochs_for_final(folds):
    """The epochs a final model trains for: the median of the folds' best epochs, rounded half up."""
    return int(np.floor(np.median([fold["best_epoch"] for fold in folds]) + 0.5))


def git_commit():
    """The project's git commit (with '+changes' when the tree differs from it), or None outside git."""
    try:
        head = subprocess.run(["git", "-C", str(PROJECT_DIR), "rev-parse", "HEAD"], capture_output=True, text=True)
        dirty = subprocess.run(["git", "-C", str(PROJECT_DIR), "status", "--porcelain"], capture_output=True,
                               text=True)
    except OSError:
        return None
    return (head.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")) if head.returncode == 0 else None


def recorded_features_folder(layout, instance):
    """The features folder the instance's folds were trained from, as their job files record it (the fold's
    canonical job file, or a --slurm submission's of main at 167406f), or None."""
    candidates = [layout.fold(instance, 1).job, *sorted(layout.slurm.glob(f"*/jobs/run{instance}_fold1.job.json"))]
    for path in candidates:
        if path.is_file():
            return read_job(path)["features_folder"]
    return None


def features_folder_of(layout, document):
    """Where the dataset the instance was cross-validated on lies: the folder its jobs recorded, or config.ini's
    features_folder (an experiment folder moved to another machine); XvalError unless it holds the same features
    (the dataset fingerprint)."""
    folders = [recorded_features_folder(layout, document["instance"]), load_config()["paths"]["features_folder"]]
    for folder in dict.fromkeys(str(folder) for folder in folders if folder):
        if stored_format(dataset_paths(folder, document["dataset"])) is None:
            continue
        predictors, targets = load_dataset(folder, document["dataset"])
        clip_ids = load_clip_ids(folder, document["dataset"], predictors)
        if dataset_fingerprint(predictors, targets, clip_ids) == document.get("dataset_fingerprint"):
            return folder
    raise XvalError(f"no features folder ({', '.join(dict.fromkeys(str(folder) for folder in folders if folder))}) "
                    "holds the features of "
                    f"dataset '{document['dataset']}' that instance {document['instance']} was cross-validated on: "
                    "restore them (preprocess with the same settings) before training its final model")


def final_job(layout, document, epochs, paths):
    """The job of a final model: the instance's parameters, every item for training, none for validation or test,
    a fixed number of epochs (no early stopping), the card of its model file."""
    parameters = document["parameters"]
    if "{fold}" in parameters.get("initial_model", ""):
        raise XvalError(f"instance {document['instance']} starts each fold from that fold's model "
                        f"({parameters['initial_model']}): a final model has no such fold; give initial_model "
                        "without {fold} in another instance")
    features_folder = features_folder_of(layout, document)
    items = sorted({item for fold in document["folds"] for item in fold["test_items"]})
    initial = initial_model_paths(parameters, layout.root, [{"fold": 0}]).get(0)
    return {"features_folder": str(features_folder), "dataset": document["dataset"],
            "dataset_files": dataset_file_stats(features_folder, document["dataset"]),
            "parameters": dict(parameters, num_epochs=epochs, early_stopping=False), "fold": 0, "final": True,
            "parameter_hash": document["parameter_hash"], "dataset_fingerprint": document["dataset_fingerprint"],
            "train_items": items, "val_items": [], "test_items": [], "threads": len(os.sched_getaffinity(0)),
            "initial_model_path": None if initial is None else str(initial),
            "model_path": str(paths.model), "model_file": layout.relative(paths.model),
            "result_path": str(paths.result),
            "tensorboard_dir": str(paths.tensorboard) if parameters.get("tensorboard") else None,
            "card": {key: document.get(key) for key in ("dataset", "dataset_fingerprint", "experiment", "instance",
                                                          "class_names", "features", "foldable_item",
                                                          "parameter_strings")}}


def final(experiment_dir, instance_text, overwrite, gpu):
    """use_model.py final: train and save the final model of one instance; returns the card's path."""
    experiment_dir = Path(experiment_dir).expanduser().resolve()
    if gpu is not None and gpu < -1:
        raise XvalError(f"--gpu {gpu} is not a device: give a CUDA device number (0, 1, ...) or -1 for the CPU")
    instance = which_instance(experiment_dir, instance_text)
    path, document = instance_result(experiment_dir, instance)
    import collect  # here, not at the top: pandas and scipy, which predicting with a model file never needs
    problem = collect.damage(document) if isinstance(document, dict) else "not a results object"
    if problem:
        raise XvalError(f"{path} is damaged ({problem}): restore it, or rerun the routine to recompute it")
    if document["status"] != "complete":
        raise XvalError(f"instance {instance} is {document['status']}: finish its cross-validation (rerun the "
                        "routine) before training its final model")
    layout = Layout(experiment_dir, document["dataset"], document["experiment"])
    paths = layout.final(instance)
    reason = unwritable(experiment_dir)
    if reason:
        raise XvalError(f"{experiment_dir} cannot be written ({reason}): the final model goes into its final/ "
                        "folder; copy the experiment somewhere writable and run final there")
    if paths.model.exists() and not overwrite:
        raise XvalError(f"{paths.model} exists: pass --overwrite to replace it")
    epochs = epochs_for_final(document["folds"])
    job = final_job(layout, document, epochs, paths)
    atomic_write_json(paths.job, job)
    print(f"final model of instance {instance}: {len(job['train_items'])} foldable items, {epochs} epochs "
          f"(median best epoch of its folds) -> {paths.model}", flush=True)
    started = time.monotonic()
    launcher = ProcessLauncher(fold_environment(document["parameters"]["backend"], job["threads"], gpu),
                               f"use_model.py final (pid {os.getpid()})")
    code, error = launcher.run(paths.job, paths.log, f"instance {instance} final")
    if gpu is not None and gpu >= 0 and launcher.seen == "cpu":
        print(no_gpu_warning(f"--gpu {gpu}", document["parameters"]["backend"], "pass --gpu -1"), file=sys.stderr)
    if code != 0 or not paths.model.exists():
        raise XvalError(f"the final model failed: {error or f'exit code {code}'} (log: {paths.log})")
    import collect
    routine = collect.routine_summaries(collect.load_instances(experiment_dir)).get(document["task_type"])
    card = {
        "model_file": paths.model.name, "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        "experiment": document["experiment"], "instance": instance, "task_type": document["task_type"],
        "class_names": document["class_names"], "dataset": document["dataset"],
        "dataset_fingerprint": document["dataset_fingerprint"], "features": document["features"],
        "normalisation": read_json(paths.result)["normalisation"],
        "parameters": document["parameters"], "parameter_strings": document["parameter_strings"],
        "trained_on": {"items": job["train_items"], "epochs": epochs,
                       "rule": "median of the folds' best epochs (on their validation items), rounded half up",
                       "fold_best_epochs": [fold["best_epoch"] for fold in document["folds"]]},
        "cross_validation": {"summary": document["summary"], "routine": routine},
        "code": {"git_commit": git_commit(), "python": sys.version.split()[0]},
    }
    atomic_write_json(paths.card, card)
    print(f"wrote {paths.model} and {paths.card.name} in {time.monotonic() - started:.1f} s")
    return paths.card


# ----------------------------------------------------------------------------------------------------------------
# predict

def model_set(target, instance_text):
    """([(model path, its normalisation statistics)], card: {task_type, class_names, features, parameters, name})
    of what predict was given."""
    target = Path(target).expanduser().resolve()
    if target.is_dir():
        instance = which_instance(target, instance_text)
        _, document = instance_result(target, instance)
        if document["status"] != "complete":
            raise XvalError(f"instance {instance} is {document['status']}: predict with a complete instance")
        models = [(target / fold["model_file"], fold.get("normalisation")) for fold in document["folds"]]
        gone = [path for path, _ in models if not path.is_file()]
        if gone:  # checked before anything is read or computed
            raise XvalError(f"model {gone[0]} is missing (moved or deleted?): restore it (an experiment's fold models "
                            "are in its models/ folder), or train the instance again")
        return models, dict(document, name=f"{target.name} instance {instance} (mean of {len(models)} folds)")
    if not target.is_file():
        raise XvalError(f"model {target} does not exist: pass a final model, a fold model or an experiment folder")
    if instance_text is not None:
        raise XvalError(f"--instance only acts with an experiment folder, and {target.name} is one model file: "
                        "remove --instance, or pass the experiment folder")
    from training import read_card
    card = read_card(target)
    if card:  # the model describes itself: nothing else is needed
        return [(target, card["normalisation"])], dict(card, name=target.name)
    card_path = target.with_name(f"{target.stem}_card.json")  # a final model of an earlier version: its card
    if card_path.is_file():
        card = read_json(card_path)
        return [(target, card.get("normalisation"))], dict(card, name=target.name)
    match = FOLD_MODEL_PATTERN.match(target.name)  # a fold model of an earlier version: its experiment's results
    if match and target.parent.name == "models":
        _, document = instance_result(target.parent.parent, int(match["instance"]))
        fold = next(fold for fold in document["folds"] if fold["fold"] == int(match["fold"]))
        return [(target, fold.get("normalisation"))], dict(document, name=target.name)
    raise XvalError(f"model {target} carries no card (saved before xval stored one in its model files), has none "
                    f"beside it ({card_path.name}) and is not a fold model of an experiment: xval cannot know the "
                    "features it takes")


def audio_files(paths):
    """The audio files named or found (recursively) under the folders named, in order, each once (a file named
    twice, under two spellings or through two folders, is one file: one row); XvalError if none."""
    from feat_analysis import AUDIO_SUFFIXES
    files = []
    for path in map(Path, paths):
        if path.is_dir():
            files += [p for p in files_under(path) if p.suffix.lower() in AUDIO_SUFFIXES]
        elif path.exists():
            files.append(path)
        else:
            raise XvalError(f"{path} does not exist: pass audio files or folders")
    if not files:
        raise XvalError(f"no audio files in {', '.join(map(str, paths))} ({', '.join(AUDIO_SUFFIXES)})")
    once = {}
    for path in files:
        once.setdefault(path.resolve(), path)
    return list(once.values())


def file_features(path, features):
    """Features of one audio file with the stored settings: (float32 (pieces, frames, bins), one piece per window
    or the one fixed-length clip; the file's duration in s); the preprocessing's own code, so the same numbers as at
    training time."""
    import feat_analysis
    signals, _, duration = feat_analysis.clip_signals(path, features["length"])
    return feat_analysis.extract_features_batch(signals, features["sample_rate"], features["feature_settings"]), \
        duration


def checked_out_path(out, inputs):
    """The resolved CSV path predict writes (default predictions.csv); XvalError when it is not a .csv file or is
    one of the inputs (audio files or models), which writing would overwrite."""
    path = Path(out or "predictions.csv").expanduser().resolve()
    folder = next((parent for parent in reversed(path.parents) if parent.exists() and not parent.is_dir()), None)
    if folder is not None:
        raise XvalError(f"--out {out}: {folder} is a file, not a folder: pass a path in a folder")
    if path.is_dir():
        raise XvalError(f"--out {out} is a folder: pass a CSV file path, e.g. --out {Path(out) / 'predictions.csv'}")
    if path.suffix.lower() != ".csv":
        raise XvalError(f"--out {out} is not a .csv file: predictions are written as CSV; pass e.g. --out "
                        f"{path.with_suffix('.csv').name}")
    if any(path == Path(item).expanduser().resolve() for item in inputs):
        raise XvalError(f"--out {out} is one of the files predict reads: writing it would overwrite it; pass "
                        "another path")
    return path


def predict(target, audio, instance_text, out):
    """use_model.py predict: write one CSV row per readable audio file; returns (CSV path, unreadable files)."""
    models, card = model_set(target, instance_text)
    features = card.get("features") or {}
    if any(not features.get(key) for key in FEATURE_KEYS):
        raise XvalError(f"{card['name']} does not store the feature settings it was trained with (made before xval "
                        "recorded them): its features cannot be reproduced; preprocess and train it again")
    files = audio_files(audio)
    out = checked_out_path(out, files + [model for model, _ in models])
    import feat_analysis  # here, as in file_features: librosa, which final and the views never need
    pieces, unreadable, longer, length = {}, [], 0, features["length"]
    for path in files:
        try:
            pieces[path], duration = file_features(path, features)
            longer += feat_analysis.cut_to_clip(duration, length)
        except (RuntimeError, OSError, ValueError, EOFError) as error:
            unreadable.append((path, str(error).splitlines()[0] if str(error) else type(error).__name__))
    if not pieces:
        raise XvalError(f"none of the {len(files)} files can be read as audio (e.g. {unreadable[0][0]}: "
                        f"{unreadable[0][1]})")
    os.environ["KERAS_BACKEND"] = card["parameters"]["backend"]  # read once, when Keras is first imported
    use_backend_environment(card["parameters"]["backend"])  # it predicts as the fold computed (oneDNN on TensorFlow)
    from training import import_fold_libraries, load_model_file
    import_fold_libraries()  # as a fold imports Keras: without what no prediction uses either (UNUSED_BY_FOLDS)
    BACKENDS[card["parameters"]["backend"]].prepare()  # as a fold: no TensorFlow import on JAX or PyTorch
    classes = card["class_names"] if card["task_type"] == "classification" else None
    shape = next(iter(pieces.values())).shape[1:]
    outputs = {path: 0.0 for path in pieces}
    for model_path, normalisation in models:
        try:
            model = load_model_file(model_path, card["parameters"], shape, len(classes) if classes else 1,
                                    normalisation)
        except Exception as error:  # a damaged or foreign file: Keras and h5py say why in many ways
            raise XvalError(f"model {model_path} cannot be read ({type(error).__name__}: "
                            f"{(str(error).splitlines() or [''])[0][:200]}): use a complete copy of it") from None
        for path, x in pieces.items():
            outputs[path] = outputs[path] + np.asarray(model.predict_on_batch(x), dtype=np.float64).mean(axis=0)
    header = ["file", "prediction"] + ([f"p_{name}" for name in classes] if classes else []) + ["model"]
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(header)
    for path, total in outputs.items():
        mean = total / len(models)
        prediction = classes[int(mean.argmax())] if classes else float(mean[0])
        # absolute: a name as typed ('=x.wav') could start like a spreadsheet formula; a path never does
        writer.writerow([os.path.abspath(path), prediction] + ([f"{p:.6f}" for p in mean] if classes else [])
                        + [card["name"]])
    atomic_write_text(out, text.getvalue())
    print(f"predicted {len(pieces)} files with {card['name']} -> {out}")
    if longer:
        clip_seconds = length["clip_samples"] / length["sample_rate"]
        print(f"note: {longer} of the files are longer than the model's clips ({clip_seconds:g} s): each was scored "
              f"on one {clip_seconds:g} s piece cut as in training (cut_mode {length.get('cut_mode')!r}); a model of a "
              "windows dataset scores whole recordings")
    if unreadable:
        print(f"skipped {len(unreadable)} files that cannot be read:")
        for path, reason in unreadable:
            print(f"  {path}: {reason}")
    return out, unreadable


# ----------------------------------------------------------------------------------------------------------------
# Command line

def parse_args(argv):
    """The two commands and their options (see the module docstring)."""
    parser = argparse.ArgumentParser(description="Train the final model of an instance, or predict audio files.")
    commands = parser.add_subparsers(dest="command", required=True)
    final_parser = commands.add_parser("final", help="train an instance on every foldable item")
    final_parser.add_argument("experiment", help="an experiment_{N} folder")
    final_parser.add_argument("--instance", help="instance number, or best (default: chosen on validation)")
    final_parser.add_argument("--overwrite", action="store_true", help="replace an existing final model")
    final_parser.add_argument("--gpu", type=whole_number,
                              help="GPU for training (-1: CPU; default: as the environment)")
    predict_parser = commands.add_parser("predict", help="predict audio files")
    predict_parser.add_argument("model", help="a final model, a fold model, or an experiment folder")
    predict_parser.add_argument("audio", nargs="+", help="audio files or folders")
    predict_parser.add_argument("--instance", help="with an experiment folder: instance number or best")
    predict_parser.add_argument("--out", help="CSV to write (default predictions.csv)")
    return parser.parse_args(argv)


def main(argv=None):
    """Command line entry point; a user's mistake ends with one line on stderr and exit code 2."""
    args = parse_args(argv)
    if args.command == "final":
        exit_on_user_error(lambda: final(args.experiment, args.instance, args.overwrite, args.gpu))
    else:
        exit_on_user_error(lambda: predict(args.model, args.audio, args.instance, args.out))


if __name__ == "__main__":
    main()
