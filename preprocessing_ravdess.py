"""Turn a RAVDESS copy (or the synthetic demo corpus) into xval's feature dataset.

    python3 preprocessing_ravdess.py [--input DIR] [--dataset NAME] [--features stft|mfcc|mel]
                                     [--target emotion|intensity] [--jobs N] [--force] [--demo] [--config PATH]

Reads every file under the input folder (RAVDESS as distributed, Actor_01/ ... Actor_24/, or flat), keeps the
.wav files named MM-VV-EE-II-SS-RR-AA.wav of the configured vocal channel, and for each: mixes it to mono (mean
of the channels), resamples it to [preprocessing] sample_rate (soxr 'soxr_hq', as librosa.load), pads it with
zeros at the end or cuts it (cut_mode start | center) to clip_seconds, and computes the [features] feature.
Everything else (songs, other files, names that are not RAVDESS names, unreadable audio) is skipped, counted,
listed at the end and recorded in the metadata.

Writes into [paths] features_folder, one array per actor, keys '01' ... '24':
    {NAME}_predictors.npz  float32 (clips, frames, bins), clips sorted by file name
    {NAME}_target.npz      emotion: one-hot float32 (clips, 8), columns = emotion codes 01..08;
                           intensity: float32 (clips,), 0 normal, 1 strong
    {NAME}_metadata.json   settings, shapes, every clip's codes, the skipped files, the input fingerprint
A rerun with the same inputs (names, sizes, modification times) and settings reuses them, unless --force.
"""
import argparse
import ctypes
import hashlib
import json
import multiprocessing
import os
import re
import sys
import time
from pathlib import Path

import librosa
import numpy as np
import scipy.signal
import soundfile as sf
import threadpoolctl
from tqdm import tqdm

import feat_analysis
from utility_functions import (RAVDESS_EMOTIONS, TEMP_MARKER, XvalError, atomic_write_json, commit_temp_file,
                               config_path_in_use, dataset_paths, exit_on_user_error, load_config, read_json,
                               remove_stale_temp_files, temp_path_for)

FORMAT_VERSION = 1  # part of the fingerprint: bump when the output of the same inputs changes
DEFAULT_DATASET = "ravdess"
DEMO_DATASET = "ravdess_demo"
INTENSITY_SUFFIX = "_intensity"
TARGETS = ("emotion", "intensity")
EMOTION_NAMES = RAVDESS_EMOTIONS  # codes 01..08
INTENSITY_NAMES = ("normal", "strong")  # codes 01, 02
VOCAL_CHANNEL_NAMES = ("speech", "song")  # codes 01, 02
RESAMPLER = "soxr_hq"  # librosa.load's default resampler
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc mallopt() parameters
KEEP_FREED_BYTES = 64 * 2**20  # workers allocate blocks below this from (and free them to) their own heap
CHUNK_FILES = 16  # files per worker task; fixed, so the output does not depend on --jobs
LISTED_PER_KIND = 20  # skipped files printed per kind (all of them are in the metadata)
DATASET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
RAVDESS_NAME = re.compile(r"^(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)\.wav$", re.IGNORECASE)
# allowed codes per field of a RAVDESS name, in the order of the name
RAVDESS_FIELDS = (("modality", range(1, 4)), ("vocal_channel", range(1, 3)), ("emotion", range(1, 9)),
                  ("intensity", range(1, 3)), ("statement", range(1, 3)), ("repetition", range(1, 3)),
                  ("actor", range(1, 100)))
SKIP_KINDS = {  # kind of skipped file -> how the summary names it
    "not_wav": "not a .wav file", "not_ravdess_name": "not a RAVDESS name (MM-VV-EE-II-SS-RR-AA.wav)",
    "temporary": "unfinished temporary file", "other_vocal_channel": "other vocal channel",
    "duplicate": "same file name twice", "unreadable": "unreadable or empty audio",
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


def scan_input(folder, vocal_channel, exclude=()):
    """Every file under folder (but not under the folders in exclude, e.g. the features folder), sorted:
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
    excluded = {Path(path).resolve() for path in exclude}
    paths = []
    for root, folders, names in os.walk(folder):
        folders[:] = [name for name in folders if (Path(root) / name).resolve() not in excluded]
        paths += [Path(root) / name for name in names]
    paths.sort()
    for path in paths:
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
# Audio: the same numbers as librosa.load(path, sr=sample_rate) (mono, soxr_hq), then a fixed length

def read_mono(path):
    """Samples of an audio file mixed to mono: (float32 (samples,) in [-1, 1], sample rate in Hz).

    The same numbers as librosa.load(path, sr=None): soundfile reads float32, librosa.to_mono averages the
    channels. Raises ValueError for a file without samples or with non-finite ones, soundfile's errors for files
    it cannot read.
    """
    if Path(path).stat().st_size == 0:
        raise ValueError("empty file (0 bytes)")
    data, sample_rate = sf.read(path, dtype="float32", always_2d=True)
    if data.shape[0] == 0:
        raise ValueError("holds no audio samples")
    signal = librosa.to_mono(data.T) if data.shape[1] > 1 else data[:, 0]
    if not np.isfinite(signal).all():
        raise ValueError("holds NaN or infinite samples")
    return np.ascontiguousarray(signal), sample_rate


def resample(signal, orig_rate, target_rate):
    """float32 (samples,) at orig_rate Hz -> float32 (ceil(samples * target_rate / orig_rate),) at target_rate,
    with librosa.resample and soxr 'soxr_hq' (what librosa.load does)."""
    if orig_rate == target_rate:
        return signal
    return librosa.resample(signal, orig_sr=orig_rate, target_sr=target_rate, res_type=RESAMPLER).astype(
        np.float32, copy=False)


def fit_length(signal, n_samples, cut_mode, out=None):
    """signal (samples,) padded with zeros at the end, or cut at the start (cut_mode 'start') or around the
    centre ('center'), to exactly n_samples; written into out (n_samples,) when given."""
    if len(signal) == n_samples and out is None:
        return signal
    start = 0 if cut_mode == "start" or len(signal) <= n_samples else (len(signal) - n_samples) // 2
    kept = signal[start:start + n_samples]
    if out is None:
        out = np.empty(n_samples, dtype=signal.dtype)
    out[:len(kept)] = kept
    out[len(kept):] = 0
    return out


def load_clip(path, sample_rate, clip_samples, cut_mode, out=None):
    """One clip as the dataset holds it before features: float32 (clip_samples,) at sample_rate Hz (written
    into out when given)."""
    signal, native_rate = read_mono(path)
    return fit_length(resample(signal, native_rate, sample_rate), clip_samples, cut_mode, out)


# ----------------------------------------------------------------------------------------------------------------
# Features of many files, in worker processes

def features_of_chunk(task):
    """Features of a chunk of files: (float32 (readable files, frames, bins), [None or why a file was skipped]).

    task: {paths, sample_rate, clip_samples, cut_mode, feature_settings, plan} (plan: feat_analysis.analysis_plan).
    """
    settings = task["feature_settings"]
    signals = np.empty((len(task["paths"]), task["clip_samples"]), dtype=np.float32)
    reasons, readable = [], 0
    for path in task["paths"]:
        try:
            load_clip(path, task["sample_rate"], task["clip_samples"], task["cut_mode"], out=signals[readable])
            reasons.append(None)
            readable += 1
        except (RuntimeError, OSError, ValueError, EOFError) as error:
            reasons.append(f"cannot be read: {error_text(error)}")
    if not readable:
        frames = feat_analysis.n_frames(task["clip_samples"], settings["hop_length"])
        return np.zeros((0, frames, feat_analysis.n_bins(settings)), np.float32), reasons
    features = feat_analysis.extract_features_batch(signals[:readable], task["sample_rate"], settings, task["plan"])
    return features, reasons


def error_text(error):
    """The first line of an exception's message without soundfile's "Error opening '...': " prefix."""
    text = getattr(error, "error_string", None) or str(error) or type(error).__name__
    return text.splitlines()[0]


def _prepare_worker():
    """Pool initializer: one BLAS thread per worker (the workers are the parallelism; more threads only spin),
    and glibc's malloc told to keep freed memory (each file's temporary arrays would otherwise come fresh from
    the kernel, page faults costing a third of the time)."""
    threadpoolctl.threadpool_limits(limits=1)
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(M_MMAP_THRESHOLD, KEEP_FREED_BYTES)
        libc.mallopt(M_TRIM_THRESHOLD, 4 * KEEP_FREED_BYTES)
    except (OSError, AttributeError):  # not glibc: nothing to tune
        pass


def _pool_context():
    """fork where available (workers inherit the loaded modules and start at once), else the default."""
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else None)


def compute_features(clips, task_settings, jobs, label):
    """Features of all clips in order, over jobs processes with a progress bar.

    Returns (float32 (readable clips, frames, bins), [None or reason per clip])."""
    chunks = [clips[start:start + CHUNK_FILES] for start in range(0, len(clips), CHUNK_FILES)]
    tasks = [dict(task_settings, paths=[clip["path"] for clip in chunk]) for chunk in chunks]
    jobs = max(1, min(jobs, len(tasks)))
    # librosa's first STFT loads its lazy modules and numba functions (~1.5 s, far more on a fresh machine):
    # pay it once here, so that the forked workers inherit it instead of each paying it again
    silence = np.zeros((1, task_settings["clip_samples"]), dtype=np.float32)
    feat_analysis.extract_features_batch(silence, task_settings["sample_rate"], task_settings["feature_settings"],
                                         task_settings["plan"])
    results = []
    with tqdm(total=len(clips), unit="file", desc=label, disable=None, file=sys.stderr) as progress:
        if jobs == 1:
            with threadpoolctl.threadpool_limits(limits=1):
                for outcome in map(features_of_chunk, tasks):
                    results.append(outcome)
                    progress.update(len(outcome[1]))
        else:
            with _pool_context().Pool(jobs, initializer=_prepare_worker) as pool:
                for outcome in pool.imap(features_of_chunk, tasks):
                    results.append(outcome)
                    progress.update(len(outcome[1]))
    features = np.concatenate([features for features, _ in results])
    return features, [reason for _, reasons in results for reason in reasons]


# ----------------------------------------------------------------------------------------------------------------
# Settings, fingerprint, output

def check_settings(config, feature_type, target, jobs, where):
    """Raise XvalError (one line naming the config key) when the settings cannot give features."""
    pre, feat = config["preprocessing"], config["features"]
    if feature_type not in feat_analysis.FEATURE_TYPES:
        raise XvalError(f"feature type {feature_type!r} is not one of {', '.join(feat_analysis.FEATURE_TYPES)}: "
                        f"fix --features or [features] type in {where}")
    if target not in TARGETS:
        raise XvalError(f"target {target!r} is not one of {', '.join(TARGETS)}: fix --target")
    if jobs is not None and jobs < 1:
        raise XvalError(f"--jobs {jobs} must be at least 1")
    if feat["win_length"] > feat["n_fft"]:
        raise XvalError(f"{where} [features] win_length = {feat['win_length']} is longer than n_fft = "
                        f"{feat['n_fft']}: make win_length <= n_fft")
    try:
        scipy.signal.get_window(feat["window"], feat["win_length"])
    except (ValueError, TypeError):
        raise XvalError(f"{where} [features] window = {feat['window']!r} is not a window scipy.signal.get_window "
                        "knows: use hann, hamming, blackman, ...") from None
    if round(pre["clip_seconds"] * pre["sample_rate"]) < 1:
        raise XvalError(f"{where} [preprocessing] clip_seconds = {pre['clip_seconds']} is shorter than one "
                        "sample: make it longer")
    if feature_type in ("mel", "mfcc"):
        nyquist = pre["sample_rate"] / 2
        fmax = feat_analysis.mel_fmax(feat["fmax"], pre["sample_rate"])
        if fmax > nyquist:
            raise XvalError(f"{where} [features] fmax = {feat['fmax']} is above half the sample rate ({nyquist:g} "
                            "Hz): lower it, or 0 for half the sample rate")
        if not 0 <= feat["fmin"] < fmax:
            raise XvalError(f"{where} [features] fmin = {feat['fmin']} must be at least 0 and below fmax "
                            f"({fmax:g} Hz): fix it")
    if feature_type == "mfcc" and feat["n_mfcc"] > feat["n_mels"]:
        raise XvalError(f"{where} [features] n_mfcc = {feat['n_mfcc']} is more than n_mels = {feat['n_mels']}: "
                        "lower n_mfcc or raise n_mels")


def input_fingerprint(stats, preprocessing_settings, feature_settings, target):
    """sha256 (hex) of the settings and every input file's relative name, size and modification time."""
    content = {"format": FORMAT_VERSION, "target": target, "preprocessing": preprocessing_settings,
               "features": feature_settings, "files": stats}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode("utf-8")).hexdigest()


def target_array(clips, target):
    """emotion: one-hot float32 (clips, 8), column c = emotion code c + 1; intensity: float32 (clips,), 0/1."""
    if target == "emotion":
        return np.eye(len(EMOTION_NAMES), dtype=np.float32)[[clip["emotion"] - 1 for clip in clips]]
    return np.array([clip["intensity"] - 1 for clip in clips], dtype=np.float32).reshape(len(clips))


def save_npz(path, arrays):
    """np.savez (uncompressed, no pickle) of {key: array} to path, atomically."""
    temp = temp_path_for(path)
    try:
        np.savez(temp, **arrays)
        commit_temp_file(temp, path)
    finally:
        if temp.exists():
            temp.unlink()


def clip_record(clip):
    """What the metadata says of a clip: file, actor, emotion, intensity, vocal channel (names), statement,
    repetition, modality (codes)."""
    return {"file": clip["file"], "actor": clip["actor"], "emotion": EMOTION_NAMES[clip["emotion"] - 1],
            "intensity": INTENSITY_NAMES[clip["intensity"] - 1], "statement": clip["statement"],
            "repetition": clip["repetition"], "vocal_channel": VOCAL_CHANNEL_NAMES[clip["vocal_channel"] - 1],
            "modality": clip["modality"]}


def write_dataset(paths, clips, features, target, metadata):
    """Write predictors and target (one array per actor, clips in the given order), then the metadata."""
    actors = sorted({clip["actor"] for clip in clips})
    rows = {actor: [index for index, clip in enumerate(clips) if clip["actor"] == actor] for actor in actors}
    targets = target_array(clips, target)
    paths["metadata"].unlink(missing_ok=True)  # no metadata until both arrays are written: never a stale reuse
    save_npz(paths["predictors"], {actor: features[rows[actor]] for actor in actors})
    save_npz(paths["target"], {actor: targets[rows[actor]] for actor in actors})
    atomic_write_json(paths["metadata"], metadata)


def reusable(paths, fingerprint):
    """Whether the dataset files exist and were made from the same inputs and settings."""
    if not (paths["predictors"].is_file() and paths["target"].is_file() and paths["metadata"].is_file()):
        return False
    try:
        return read_json(paths["metadata"]).get("fingerprint") == fingerprint
    except (XvalError, OSError, AttributeError):
        return False


# ----------------------------------------------------------------------------------------------------------------
# The whole run

def default_dataset_name(demo, target):
    """ravdess | ravdess_demo, with _intensity appended for target intensity."""
    return (DEMO_DATASET if demo else DEFAULT_DATASET) + (INTENSITY_SUFFIX if target == "intensity" else "")


def preprocess(input_folder, dataset, config, feature_type=None, target="emotion", jobs=None, force=False,
               quiet=False):
    """Make (or reuse) the dataset `dataset` from the RAVDESS files under input_folder; returns a summary dict.

    config: a dict from utility_functions.load_config, or a config.ini path (None: the one in use).
    feature_type: stft | mfcc | mel, default [features] type. Raises XvalError for a user's mistake.
    Summary keys: dataset, reused, clips, items, frames, bins, skipped (list of {file, kind, reason}), paths,
    seconds, fingerprint.
    """
    started = time.perf_counter()
    where = "config.ini"
    if not isinstance(config, dict):
        where = str(config_path_in_use(config))
        config = load_config(config)
    if not DATASET_NAME.match(dataset or ""):
        raise XvalError(f"dataset name {dataset!r} may hold only letters, digits, '_', '.' and '-': fix --dataset")
    feature_type = feature_type or config["features"]["type"]
    check_settings(config, feature_type, target, jobs, where)
    pre = dict(config["preprocessing"])
    feature_settings = dict(config["features"], type=feature_type)
    folder = Path(input_folder).expanduser().resolve()
    features_folder = Path(config["paths"]["features_folder"])
    clips, skipped, stats = scan_input(folder, pre["vocal_channel"], exclude=[features_folder])
    check_input(folder, clips, skipped, stats, pre["vocal_channel"])

    features_folder.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(features_folder)
    paths = dataset_paths(features_folder, dataset)
    fingerprint = input_fingerprint(stats, pre, feature_settings, target)
    if not force and reusable(paths, fingerprint):
        metadata = read_json(paths["metadata"])
        summary = {"dataset": dataset, "reused": True, "clips": len(metadata["clips"]), "items": metadata["items"],
                   "frames": metadata["frames"], "bins": metadata["bins"], "skipped": metadata["skipped"],
                   "paths": paths, "seconds": time.perf_counter() - started, "fingerprint": fingerprint}
        if not quiet:
            print(f"{dataset}: inputs and settings unchanged, reusing {paths['predictors']} and "
                  f"{paths['target'].name} (--force recomputes)")
        return summary

    clip_samples = int(round(pre["clip_seconds"] * pre["sample_rate"]))
    task_settings = {"sample_rate": pre["sample_rate"], "clip_samples": clip_samples, "cut_mode": pre["cut_mode"],
                     "feature_settings": feature_settings,
                     "plan": feat_analysis.analysis_plan(pre["sample_rate"], feature_settings)}
    features, reasons = compute_features(clips, task_settings, jobs or os.cpu_count() or 1, dataset)
    unreadable = [{"file": clip["file"], "kind": "unreadable", "reason": reason}
                  for clip, reason in zip(clips, reasons) if reason is not None]
    clips = [clip for clip, reason in zip(clips, reasons) if reason is None]
    if not clips:
        example = unreadable[0]
        raise XvalError(f"none of the {len(unreadable)} RAVDESS files in {folder} can be read (e.g. "
                        f"{example['file']}: {example['reason']}): replace them with intact copies of RAVDESS")
    skipped = sorted(skipped + unreadable, key=lambda entry: entry["file"])
    frames, bins = features.shape[1:]
    items = sorted({clip["actor"] for clip in clips})
    metadata = {
        "dataset": dataset, "target": target, "class_names": list(EMOTION_NAMES) if target == "emotion" else None,
        "target_encoding": ("one-hot (clips, 8), columns = class_names = emotion codes 01..08"
                            if target == "emotion" else "(clips,) 0 = normal, 1 = strong intensity"),
        "items": items, "clips_per_item": {item: sum(clip["actor"] == item for clip in clips) for item in items},
        "feature_settings": feature_settings, "preprocessing_settings": pre, "sample_rate": pre["sample_rate"],
        "clip_samples": clip_samples, "frames": frames, "bins": bins, "input_folder": str(folder),
        "clips": [clip_record(clip) for clip in clips], "skipped": skipped, "fingerprint": fingerprint,
        "format_version": FORMAT_VERSION,
    }
    write_dataset(paths, clips, features, target, metadata)
    summary = {"dataset": dataset, "reused": False, "clips": len(clips), "items": items, "frames": frames,
               "bins": bins, "skipped": skipped, "paths": paths, "seconds": time.perf_counter() - started,
               "fingerprint": fingerprint}
    if not quiet:
        print(summary_text(summary, feature_type, folder))
    return summary


def summary_text(summary, feature_type, folder):
    """The lines printed at the end of a run: what was written, then the skipped files by kind."""
    lines = [f"{summary['dataset']}: {summary['clips']} clips of {len(summary['items'])} actors from {folder} -> "
             f"{summary['paths']['predictors'].parent}/{summary['dataset']}_{{predictors,target}}.npz "
             f"({feature_type}, {summary['frames']} frames x {summary['bins']} bins) in {summary['seconds']:.1f} s"]
    if summary["skipped"]:
        lines.append(f"skipped {len(summary['skipped'])} files (all listed in {summary['paths']['metadata'].name}):")
    for kind, label in SKIP_KINDS.items():
        entries = [entry for entry in summary["skipped"] if entry["kind"] == kind]
        if entries:
            lines.append(f"  {label}: {len(entries)}")
            lines += [f"    {entry['file']}: {entry['reason']}" for entry in entries[:LISTED_PER_KIND]]
            if len(entries) > LISTED_PER_KIND:
                lines.append(f"    ... and {len(entries) - LISTED_PER_KIND} more")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------
# Command line

def parse_args(argv):
    """The command line options (see the module docstring)."""
    parser = argparse.ArgumentParser(description="Preprocess RAVDESS (or the synthetic demo corpus) into "
                                                 "{dataset}_predictors.npz, _target.npz and _metadata.json.")
    parser.add_argument("--input", help="folder of RAVDESS .wav files, searched recursively (default: [paths] "
                                        "ravdess_folder, or demo_folder with --demo)")
    parser.add_argument("--dataset", help="dataset name (default: ravdess or ravdess_demo, + _intensity for "
                                          "--target intensity)")
    parser.add_argument("--features", choices=feat_analysis.FEATURE_TYPES, help="override [features] type")
    parser.add_argument("--target", choices=TARGETS, default="emotion", help="what to predict (default emotion)")
    parser.add_argument("--jobs", type=int, default=None, help="worker processes (default: number of CPUs)")
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
    os._exit(0)  # every output is written and synced: skip the interpreter's teardown of librosa's stack (~0.25 s)
