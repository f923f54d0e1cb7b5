"""Turn a RAVDESS copy (or the synthetic demo corpus) into xval's feature dataset: a front end of
preprocessing_dataset.py's pipeline.

    python3 preprocessing_ravdess.py [--input DIR] [--dataset NAME] [--features stft|mfcc|mel|cqt]
                                     [--target emotion|intensity] [--jobs N] [--force] [--demo] [--config PATH]

Reads every file under the input folder (RAVDESS as distributed, Actor_01/ ... Actor_24/, or flat), keeps the
.wav files named MM-VV-EE-II-SS-RR-AA.wav of the configured vocal channel, and turns their names into the table
of clips the pipeline takes: label (emotion name, or intensity 0/1), foldable item (the actor) and every code.
The pipeline reads, resamples, fits to length (or cuts into windows) and computes the features. Everything else
(songs, other files, names that are not RAVDESS names, unreadable audio) is skipped, counted, listed at the end
and recorded in the metadata.

Writes into [paths] features_folder, the actors ('01' ... '24') one after the other (preprocessing_dataset.py):
    {NAME}_predictors.npy  float32 (clips, frames, bins), each actor's clips sorted by file name
    {NAME}_target.npy      emotion: one-hot float32 (clips, 8), columns = emotion codes 01..08;
                           intensity: float32 (clips,), 0 normal, 1 strong
    {NAME}_index.json      each actor's clips (first, end)
    {NAME}_metadata.json   settings, shapes, every clip's codes, the skipped files, the input fingerprint
A rerun with the same inputs (names, sizes, modification times) and settings reuses them, unless --force.
"""
import argparse
import os
import re
import sys
import time
from pathlib import Path

import feat_analysis
import preprocessing_dataset as pipeline
from clip_table import ClipTable
from utility_functions import (RAVDESS_EMOTIONS, TEMP_MARKER, XvalError, config_path_in_use, exit_on_user_error,
                               files_under, load_config, whole_number)

DEFAULT_DATASET = "ravdess"
DEMO_DATASET = "ravdess_demo"
INTENSITY_SUFFIX = "_intensity"
TARGETS = ("emotion", "intensity")
EMOTION_NAMES = RAVDESS_EMOTIONS  # codes 01..08
INTENSITY_NAMES = ("normal", "strong")  # codes 01, 02
VOCAL_CHANNEL_NAMES = ("speech", "song")  # codes 01, 02
RAVDESS_NAME = re.compile(r"^(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)\.wav$", re.IGNORECASE)
# allowed codes per field of a RAVDESS name, in the order of the name
RAVDESS_FIELDS = (("modality", range(1, 4)), ("vocal_channel", range(1, 3)), ("emotion", range(1, 9)),
                  ("intensity", range(1, 3)), ("statement", range(1, 3)), ("repetition", range(1, 3)),
                  ("actor", range(1, 100)))
SKIP_KINDS = {  # kind of skipped file -> how the summary names it (the pipeline adds its own kinds)
    "not_wav": "not a .wav file", "not_ravdess_name": "not a RAVDESS name (MM-VV-EE-II-SS-RR-AA.wav)",
    "temporary": "unfinished temporary file", "other_vocal_channel": "other vocal channel",
    "duplicate": "same file name twice",
}


# ----------------------------------------------------------------------------------------------------------------
# File names and the input folder

def parse_ravdess_name(file_name):
    """Codes of a RAVDESS file name: ({modality, vocal_channel, emotion, intensity, statement, repetition, actor:
    int}, None), or (None, why not) when the name is not one."""
    match = RAVDESS_NAME.match(file_name)
    if not match:
        return None, "name is not MM-VV-EE-II-SS-RR-AA.wav"
    codes = {}
    for (field, allowed), text in zip(RAVDESS_FIELDS, match.groups()):
        if int(text) not in allowed:
            return None, f"{field} code {text} is not {allowed.start:02d}..{allowed.stop - 1:02d}"
        codes[field] = int(text)
    return codes, None


def folder_actor(relative):
    """The actor number of the innermost Actor_NN folder of a relative path ('Actor_02/x.wav' -> 2), or None."""
    found = [int(part[6:]) for part in Path(relative).parts[:-1] if re.fullmatch(r"Actor_\d+", part)]
    return found[-1] if found else None


def scan_input(folder, vocal_channel, exclude=()):
    """Every file under folder, links followed (but not under the folders in exclude, e.g. the features folder):
    (clips, skipped, stats), all empty when folder is not a folder.

    clips: [{file (relative, '/'-separated), path, actor ('01'), emotion, intensity, statement, repetition,
    vocal_channel, modality (codes, int)}] of the vocal channel kept (speech | song | all), sorted by (actor,
    file name); skipped: [{file, kind, reason}]; stats: [[file, size in bytes, mtime in ns]] of all files.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return [], [], []
    keep = {"speech": {1}, "song": {2}, "all": {1, 2}}[vocal_channel]
    clips, skipped, stats, first_seen = [], [], [], {}
    for path in files_under(folder, exclude):
        relative = path.relative_to(folder).as_posix()
        try:
            status = path.stat()
        except OSError as error:
            skipped.append({"file": relative, "kind": "unreadable", "reason": f"cannot be read ({error.strerror})"})
            continue
        stats.append([relative, status.st_size, status.st_mtime_ns])
        codes, why_not = parse_ravdess_name(path.name)
        if TEMP_MARKER in path.name:
            skipped.append({"file": relative, "kind": "temporary", "reason": "left by an interrupted run"})
        elif path.suffix.lower() != ".wav":
            skipped.append({"file": relative, "kind": "not_wav", "reason": "not a .wav file"})
        elif codes is None:
            skipped.append({"file": relative, "kind": "not_ravdess_name", "reason": why_not})
        elif codes["vocal_channel"] not in keep:
            skipped.append({"file": relative, "kind": "other_vocal_channel",
                            "reason": f"{VOCAL_CHANNEL_NAMES[codes['vocal_channel'] - 1]} "
                                      f"([preprocessing] vocal_channel = {vocal_channel})"})
        elif folder_actor(relative) not in (None, codes["actor"]):  # which one is right cannot be told
            skipped.append({"file": relative, "kind": "actor_mismatch",
                            "reason": f"its folder says actor {folder_actor(relative):02d}, its name actor "
                                      f"{codes['actor']:02d}: rename one (the actor decides the folds)"})
        elif path.name.lower() in first_seen:
            skipped.append({"file": relative, "kind": "duplicate",
                            "reason": f"same name as {first_seen[path.name.lower()]}"})
        else:
            first_seen[path.name.lower()] = relative
            clips.append(dict(codes, file=relative, path=str(path), actor=f"{codes['actor']:02d}"))
    clips.sort(key=lambda clip: (clip["actor"], Path(clip["file"]).name))
    return clips, skipped, stats


def check_input(folder, clips, skipped, stats, vocal_channel):
    """Raise XvalError when the input folder cannot give a dataset: missing, empty, no RAVDESS names, none kept."""
    hint = "copy RAVDESS there (Actor_01/ ... Actor_24/), pass --input DIR, or use --demo"
    if folder.exists() and not folder.is_dir():
        raise XvalError(f"input {folder} is a file, not a folder: pass the folder holding the RAVDESS files")
    if not folder.is_dir():
        raise XvalError(f"input folder {folder} does not exist: {hint}")
    if not stats:
        raise XvalError(f"input folder {folder} holds no files: {hint}")
    named = [entry for entry in skipped if entry["kind"] in ("other_vocal_channel", "duplicate")]
    if not clips and not named:
        raise XvalError(f"input folder {folder} holds {len(stats)} files but none named like RAVDESS "
                        f"(MM-VV-EE-II-SS-RR-AA.wav, e.g. 03-01-05-01-02-01-12.wav): point --input at the RAVDESS "
                        "copy")
    if not clips:
        raise XvalError(f"input folder {folder} holds no RAVDESS file of vocal channel '{vocal_channel}' "
                        f"({len(named)} others): set [preprocessing] vocal_channel or point --input elsewhere")


# ----------------------------------------------------------------------------------------------------------------
# The table the pipeline takes

def clip_record(clip):
    """What the metadata says of a clip: file, actor, emotion, intensity, vocal channel (names), statement,
    repetition, modality (codes)."""
    return {"file": clip["file"], "actor": clip["actor"], "emotion": EMOTION_NAMES[clip["emotion"] - 1],
            "intensity": INTENSITY_NAMES[clip["intensity"] - 1], "statement": clip["statement"],
            "repetition": clip["repetition"], "vocal_channel": VOCAL_CHANNEL_NAMES[clip["vocal_channel"] - 1],
            "modality": clip["modality"]}


def ravdess_table(folder, clips, skipped, stats, target):
    """The pipeline's table of the scanned RAVDESS clips: label = emotion name or intensity (0 normal, 1 strong),
    foldable item = actor, record = clip_record."""
    entries = ClipTable()
    for clip in clips:
        entries.add(pipeline.clip_entry(None, clip["file"], clip["path"],
                                        EMOTION_NAMES[clip["emotion"] - 1] if target == "emotion"
                                        else str(clip["intensity"] - 1), clip["actor"], clip_record(clip)))
    return {"clips": entries, "skipped": [dict(entry, row=None) for entry in skipped], "stats": stats,
            "source": str(folder), "fold_by": "actor", "noun": "RAVDESS files",
            "regroup": "the actors are the foldable items: give an input holding two or more Actor_NN folders"}


# ----------------------------------------------------------------------------------------------------------------
# The whole run

def default_dataset_name(demo, target):
    """ravdess | ravdess_demo, with _intensity appended for target intensity."""
    return (DEMO_DATASET if demo else DEFAULT_DATASET) + (INTENSITY_SUFFIX if target == "intensity" else "")


def preprocess(input_folder, dataset, config, feature_type=None, target="emotion", jobs=None, force=False,
               quiet=False):
    """Make (or reuse) the dataset `dataset` from the RAVDESS files under input_folder; returns a summary dict.

    config: a dict from utility_functions.load_config, or a config.ini path (None: the one in use).
    feature_type: stft | mfcc | mel | cqt, default [features] type. Raises XvalError for a user's mistake.
    Summary keys: see preprocessing_dataset.build_dataset.
    """
    where = "config.ini"
    if not isinstance(config, dict):
        where = str(config_path_in_use(config))
        config = load_config(config)
    if target not in TARGETS:
        raise XvalError(f"target {target!r} is not one of {', '.join(TARGETS)}: fix --target")
    folder = Path(input_folder).expanduser().resolve()
    vocal_channel = config["preprocessing"]["vocal_channel"]
    clips, skipped, stats = scan_input(folder, vocal_channel, exclude=[config["paths"]["features_folder"]])
    check_input(folder, clips, skipped, stats, vocal_channel)
    encoding = ("one-hot (clips, 8), columns = class_names = emotion codes 01..08" if target == "emotion"
                else "(clips,) 0 = normal, 1 = strong intensity")
    return pipeline.build_dataset(
        ravdess_table(folder, clips, skipped, stats, target), dataset, config,
        "classification" if target == "emotion" else "regression",
        class_names=list(EMOTION_NAMES) if target == "emotion" else None, feature_type=feature_type, jobs=jobs,
        force=force, quiet=quiet, where=where, kinds=SKIP_KINDS,
        metadata_extra={"target": target, "target_encoding": encoding, "input_folder": str(folder)})


# ----------------------------------------------------------------------------------------------------------------
# Command line

def parse_args(argv):
    """The command line options (see the module docstring)."""
    parser = argparse.ArgumentParser(description="Preprocess RAVDESS (or the synthetic demo corpus) into "
                                                 "{dataset}_predictors.npy, _target.npy, _index.json and "
                                                 "_metadata.json.")
    parser.add_argument("--input", help="folder of RAVDESS .wav files, searched recursively (default: [paths] "
                                        "ravdess_folder, or demo_folder with --demo)")
    parser.add_argument("--dataset", help="dataset name (default: ravdess or ravdess_demo, + _intensity for "
                                          "--target intensity)")
    parser.add_argument("--features", choices=feat_analysis.FEATURE_TYPES, help="override [features] type")
    parser.add_argument("--target", choices=TARGETS, default="emotion", help="what to predict (default emotion)")
    parser.add_argument("--jobs", type=whole_number, default=None, help="worker processes (default: number of CPUs)")
    parser.add_argument("--force", action="store_true", help="recompute even if inputs and settings are unchanged")
    parser.add_argument("--demo", action="store_true", help="use the synthetic demo corpus (synthesised first if "
                                                            "missing)")
    parser.add_argument("--config", help="config.ini to use (default: $XVAL_CONFIG, else the repository's)")
    return parser.parse_args(argv)


def run(args):
    """Everything main() does after parsing the arguments; returns preprocess()'s summary."""
    config_path = config_path_in_use(args.config)
    config = load_config(config_path)
    if args.jobs is not None and args.jobs < 1:
        raise XvalError(f"--jobs {args.jobs} must be at least 1")
    folder = Path(args.input) if args.input else config["paths"]["demo_folder" if args.demo else "ravdess_folder"]
    if args.demo:
        import demo_corpus  # only --demo needs the synthesiser
        missing = len(demo_corpus.missing_clips(folder))
        if missing:
            print(f"demo corpus: synthesising {missing} clips into {folder} ...", flush=True)
            started = time.perf_counter()
            demo_corpus.make_demo_corpus(folder, jobs=args.jobs)
            print(f"demo corpus: done in {time.perf_counter() - started:.1f} s")
    dataset = args.dataset or default_dataset_name(args.demo, args.target)
    return preprocess(folder, dataset, config_path, feature_type=args.features, target=args.target, jobs=args.jobs,
                      force=args.force)


def main(argv=None):
    """Command line entry point; a user's mistake ends with one line on stderr and exit code 2."""
    args = parse_args(argv)
    return exit_on_user_error(lambda: run(args))


if __name__ == "__main__":
    main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # outputs written and synced: no teardown of librosa's stack, -0.36 s of 2.75 s (tweaks.py: c_os_exit)
