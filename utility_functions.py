"""Shared plumbing of xval: configuration, user errors, crash-safe files, locks and the feature dataset.

Everything here is a small function without hidden state, used by the scripts on top:
preprocessing_ravdess.py, xval_instance.py, training.py and results_to_excel.py.
"""
import configparser
import contextlib
import ctypes
import difflib
import errno
import fcntl
import hashlib
import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import zipfile
from pathlib import Path

import numpy as np

from registries import BACKENDS, SPLITTERS

PROJECT_DIR = Path(__file__).resolve().parent
DEFAULT_CONFIG_PATH = PROJECT_DIR / "config.ini"
CONFIG_ENV_VAR = "XVAL_CONFIG"  # path of another config.ini (tests and multi-dataset setups use it)
TEMP_MARKER = ".xvaltmp-"  # every temporary file xval writes has this in its name

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc mallopt() parameters (malloc.h)


def set_malloc_thresholds(mmap_bytes, trim_bytes):
    """Tell glibc's malloc, for this whole process, to serve blocks under mmap_bytes from its heap (not a mapping of
    their own, unmapped when freed) and to keep up to trim_bytes free at a heap's top (both in bytes); nothing on
    another C library."""
    try:
        libc = ctypes.CDLL(None)  # the C library this process already runs on
        libc.mallopt(M_MMAP_THRESHOLD, mmap_bytes)
        libc.mallopt(M_TRIM_THRESHOLD, trim_bytes)
    except (OSError, AttributeError):  # not glibc: nothing to tune
        pass


# ----------------------------------------------------------------------------------------------------------------
# Constants shared by training, the engine and the spreadsheet

OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop", "nadam", "adagrad", "adamax")
# [training] keys that only an architecture consumes (training.py uses every other key itself): an instance may set
# one only if its architecture takes it as an argument, or the value would never reach anything
MODEL_ONLY_TRAINING_PARAMETERS = ("regularization_lambda",)
DATA_ARGUMENTS = ("input_shape", "output_size", "task_type")  # every architecture's first three arguments
SPLITS = ("train", "val", "test")
# RAVDESS emotion codes 01..08, read by preprocessing_ravdess.py and written by demo_corpus.py
RAVDESS_EMOTIONS = ("neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised")
# the line protocol between the fold server (training.py --serve) and the routine (xval_instance.FoldRunner);
# here, so that the routine reads it without importing training.py and what that imports
ERROR_PREFIX = "xval-error: "
EPOCH_PREFIX = "xval-epoch: "
EXIT_PREFIX = "xval-exit: "
DEVICE_PREFIX = "xval-device: "  # then the backend and the GPUs it sees, or "cpu"
SERVE_FLAG = "--serve"
SLURM_LIVE_STATES = ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD", "RESIZING",
                     "SUSPENDED")


# Exit codes of every xval command (README: "Exit codes")
EXIT_DONE, EXIT_FAILED, EXIT_REFUSED, EXIT_ELSEWHERE, EXIT_ERROR, EXIT_INTERRUPTED = 0, 1, 2, 3, 4, 130


class XvalError(Exception):
    """A problem the user can fix (input, configuration, data, the machine's disk) explained in one line: what,
    where, how to fix it."""


def exit_on_user_error(main, debug=False):
    """Run main(); turn an XvalError into one line on stderr and EXIT_REFUSED, unless debug (or $XVAL_DEBUG).

    Any other exception is a bug of xval or a failure of the machine: one line too, EXIT_ERROR, and the hint to
    see its traceback. Ctrl-C, or the output's pipe closed by its reader, exits with EXIT_INTERRUPTED. With debug
    the traceback is printed instead of the line, and the exit code stays the same (2 or 4, never Python's 1).
    """
    debug = debug or bool(os.environ.get("XVAL_DEBUG"))
    try:
        return main()
    except XvalError as error:
        if debug:
            traceback.print_exc()
        else:
            print(f"error: {error}", file=sys.stderr)
        raise SystemExit(EXIT_REFUSED)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        raise SystemExit(EXIT_INTERRUPTED)
    except BrokenPipeError:  # the reader of its output went away (| head): stopped from outside, not a bug
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's own flush at exit would fail again
        try:
            print("stopped: its output was closed (a pipe's reader ended, e.g. | head)", file=sys.stderr, flush=True)
        except OSError:  # stderr went into the same pipe (2>&1 | head): nobody is left to read the line
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stderr.fileno())
        raise SystemExit(EXIT_INTERRUPTED)
    except Exception as error:
        if debug:
            traceback.print_exc()
            raise SystemExit(EXIT_ERROR)
        print(f"error: unexpected {type(error).__name__}: {error} (a bug of xval or a failure of the machine; set "
              "debug_mode = True or XVAL_DEBUG=1 to see the traceback)", file=sys.stderr)
        raise SystemExit(EXIT_ERROR)


# ----------------------------------------------------------------------------------------------------------------
# Configuration: config.ini, checked against one schema

PATH = "path"  # a path, relative to the folder of config.ini
CONFIG_SCHEMA = {
    "paths": {"ravdess_folder": PATH, "demo_folder": PATH, "features_folder": PATH, "experiment_folder": PATH},
    "preprocessing": {"sample_rate": int, "clip_mode": ("fixed", "windows"), "clip_seconds": float,
                      "cut_mode": ("start", "center"), "window_seconds": float, "window_hop_seconds": float,
                      "vocal_channel": ("speech", "song", "all")},
    "features": {"type": ("stft", "mfcc", "mel", "cqt"), "n_fft": int, "win_length": int, "hop_length": int,
                 "window": str, "n_mels": int, "n_mfcc": int, "fmin": float, "fmax": float,
                 "power_law_compression": float, "cqt_fmin": float, "cqt_bins": int, "cqt_bins_per_octave": int},
    "folds": {"splitter": tuple(SPLITTERS), "folds_seed": int, "validation_share": float},
    "training": {"batch_size": int, "num_epochs": int, "learning_rate": float, "optimizer": OPTIMIZERS,
                 "early_stopping": bool, "patience": int, "save_best_model_metric": str,
                 "save_best_model_mode": ("min", "max", "auto"), "regularization_lambda": float, "seed": int,
                 "class_weight": ("none", "balanced"), "loss": ("auto", "focal"), "focal_gamma": float,
                 "time_masks": int, "time_mask_width": int, "freq_masks": int, "freq_mask_width": int,
                 "mixup_alpha": float, "lr_patience": int, "lr_factor": float, "min_lr": float,
                 "initial_model": str, "trainable": ("all", "last_layer"), "backend": tuple(BACKENDS),
                 "tensorboard": bool},
    "claims": {"grace_seconds": float},
    "baseline": {"enabled": bool},
}
# keys added since config.ini files were first copied (main at 167406f): {(section, key): the value that does what
# xval did before the key existed}, taken where an older config.ini lacks the key
ADDED_KEYS = {("folds", "splitter"): "GroupKFold", ("claims", "grace_seconds"): "300",
              ("training", "tensorboard"): "false", ("baseline", "enabled"): "true"}
_POSITIVE = {("preprocessing", "sample_rate"), ("preprocessing", "clip_seconds"), ("preprocessing", "window_seconds"),
             ("preprocessing", "window_hop_seconds"), ("features", "cqt_fmin"), ("features", "cqt_bins"),
             ("features", "cqt_bins_per_octave"), ("features", "n_fft"),
             ("features", "win_length"), ("features", "hop_length"), ("features", "n_mels"),
             ("features", "n_mfcc"), ("training", "batch_size"), ("training", "num_epochs"),
             ("training", "learning_rate"), ("features", "power_law_compression"), ("claims", "grace_seconds")}


def config_path_in_use(path=None):
    """The config.ini to read: the argument, else $XVAL_CONFIG, else the one next to this file (~ and $VARIABLES
    expanded, as in every path xval reads)."""
    given = path or os.environ.get(CONFIG_ENV_VAR)
    return (expand_path(given, "config file" if path else CONFIG_ENV_VAR) if given else DEFAULT_CONFIG_PATH).resolve()


def expand_path(raw, where):
    """A path as the user wrote it, with ~ and environment variables ($SCRATCH, ${HOME}) expanded, as a shell
    would; XvalError naming the variable when one is not set (it would become a folder named '$SCRATCH')."""
    expanded = os.path.expandvars(os.path.expanduser(str(raw)))
    unset = re.search(r"\$(\w+|\{\w+\})", expanded)
    if unset:
        raise XvalError(f"{where} = {str(raw)!r}: the environment variable {unset.group(1).strip('{}')} is not set: "
                        "set it, or write the path out")
    return Path(expanded)


WHOLE_NUMBER = re.compile(r"[+-]?[0-9]+")


def whole_number(text):
    """int of a whole number written in ASCII digits ('12', '-1'); ValueError for anything else, which int() would
    take ('1_0' as 10, ' 3', other scripts' digits). Also an argparse type."""
    if not isinstance(text, str) or not WHOLE_NUMBER.fullmatch(text):
        raise ValueError(f"{text!r} is not a whole number")
    return int(text)


def parse_config_value(raw, kind, config_dir, where):
    """One config value from its text; kind is int, float, bool, str, PATH or a tuple of allowed strings."""
    raw = raw.strip()
    try:
        if kind is bool:
            lowered = raw.lower()
            if lowered not in ("true", "false", "yes", "no", "1", "0", "on", "off"):
                raise ValueError
            return lowered in ("true", "yes", "1", "on")
        if kind is int:
            return whole_number(raw)
        if kind is float:
            value = float(raw)
            if not math.isfinite(value):
                raise ValueError
            return value
    except ValueError:
        name = {bool: "true or false", int: "a whole number", float: "a finite number"}[kind]
        raise XvalError(f"{where} = {raw!r} is not {name}: fix that line") from None
    if kind == PATH:
        return (config_dir / expand_path(raw, where)).resolve()
    if isinstance(kind, tuple) and raw not in kind:
        raise XvalError(f"{where} = {raw!r} is not one of {', '.join(kind)}: fix that line")
    return raw


def load_config(path=None, sections=None):
    """Read config.ini into {section: {key: typed value}}; every key of CONFIG_SCHEMA must be there (but the
    ADDED_KEYS an older file may lack) and typed right. sections: further {section: {key: (kind, default text)}}
    to read, whose keys the file may lack (an executor's settings: executors.executor_sections()).

    Paths come back absolute (relative ones are taken from the folder of config.ini, never the current directory).
    Raises XvalError naming the file, section and key of the first problem.
    """
    path = config_path_in_use(path)
    if path.is_dir():
        raise XvalError(f"config file {path} is a folder: give the path of its config.ini")
    if not path.is_file():
        raise XvalError(f"config file {path} does not exist: restore config.ini from git or set {CONFIG_ENV_VAR}")
    parser = configparser.ConfigParser(inline_comment_prefixes=(";", "#"), interpolation=None)
    try:
        parser.read(path, encoding="utf-8-sig")  # -sig: a file saved by Windows Notepad starts with a BOM
    except (configparser.Error, UnicodeDecodeError) as error:
        first_line = str(error).splitlines()[0]
        raise XvalError(f"config file {path} cannot be parsed ({first_line}): fix its syntax") from None
    config = {}
    for section, keys in CONFIG_SCHEMA.items():
        if not parser.has_section(section) and not all((section, key) in ADDED_KEYS for key in keys):
            raise XvalError(f"{path}: section [{section}] is missing: add it (see config.ini in the repository)")
        config[section] = {}
        for key, kind in keys.items():
            where = f"{path} [{section}] {key}"
            if parser.has_option(section, key):
                text = parser.get(section, key)
            elif (section, key) in ADDED_KEYS:
                text = ADDED_KEYS[section, key]
            else:
                raise XvalError(f"{where} is missing: add it (see config.ini in the repository)")
            value = parse_config_value(text, kind, path.parent, where)
            if (section, key) in _POSITIVE and value <= 0:
                raise XvalError(f"{where} = {value} must be greater than 0: fix that line")
            config[section][key] = value
    for section, keys in (sections or {}).items():
        config[section] = {key: parse_config_value(parser.get(section, key) if parser.has_option(section, key)
                                                   else default, kind, path.parent, f"{path} [{section}] {key}")
                           for key, (kind, default) in keys.items()}
    for section in config:  # a key xval does not read would be ignored: a typo, most likely
        unknown = [key for key in parser.options(section) if key not in config[section]] \
            if parser.has_section(section) else []
        if unknown:
            hint = difflib.get_close_matches(unknown[0], config[section], n=1)
            raise XvalError(f"{path} [{section}] {unknown[0]} is not a setting xval reads"
                            f"{f': did you mean {hint[0]}?' if hint else ''} (remove it or fix its name)")
    share = config["folds"]["validation_share"]
    if not 0 < share < 1:
        raise XvalError(f"{path} [folds] validation_share = {share} must be between 0 and 1: fix that line")
    if not 0 <= config["folds"]["folds_seed"] < 2 ** 32:  # numpy's seeds; the splitters' shuffle refuses others
        raise XvalError(f"{path} [folds] folds_seed = {config['folds']['folds_seed']} must be between 0 and "
                        "2**32 - 1: fix that line")
    return config


# ----------------------------------------------------------------------------------------------------------------
# Crash-safe files: write a temporary file, fsync it, rename it over the final name

HOST = socket.gethostname()


def temp_path_for(final_path):
    """A temporary path next to final_path, same suffix (Keras picks the format by it), marked as ours."""
    final_path = Path(final_path)
    return final_path.with_name(f".{final_path.stem}{TEMP_MARKER}{HOST}-{os.getpid()}{final_path.suffix}")


def _fsync_dir(folder):
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def storage_error(path, error):
    """The XvalError of a failed write of path: the disk is full (ENOSPC, EDQUOT, or under 1 MiB left where the
    library did not say why, as HDF5 does), named with the free space; or the OS's reason."""
    free = shutil.disk_usage(Path(path).parent).free if Path(path).parent.exists() else None
    if getattr(error, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or (free is not None and free < 2 ** 20):
        return XvalError(f"no space left to write {path} ({free if free is not None else 'unknown'} bytes free on "
                         "its disk): free some space (or point the folder elsewhere), then rerun: what was written "
                         "before is kept")
    reason = getattr(error, "strerror", None) or (str(error).splitlines() or [type(error).__name__])[0]
    return XvalError(f"cannot write {path} ({reason}): check the folder and its permissions")


@contextlib.contextmanager
def writing(path, temp=None):
    """Around the writing of path (through the temporary file temp, if any): an OSError becomes storage_error's
    one line, and temp is removed, so a failed write leaves nothing behind."""
    try:
        yield
    except OSError as error:
        raise storage_error(path, error) from None
    finally:
        if temp is not None:
            with contextlib.suppress(OSError):
                os.unlink(temp)


def commit_temp_file(temp, final_path, replace=True):
    """fsync temp and rename it to final_path; with replace=False an existing final_path wins and temp is dropped.

    Returns True when final_path now holds temp's content.
    """
    with open(temp, "rb+") as handle:
        os.fsync(handle.fileno())
    final_path = Path(final_path)
    if replace:
        os.replace(temp, final_path)
        committed = True
    else:
        try:
            os.link(temp, final_path)  # fails if final_path exists: never overwrite
            committed = True
        except FileExistsError:
            committed = False
        os.unlink(temp)
    _fsync_dir(final_path.parent)
    return committed


def atomic_write_bytes(path, data, replace=True):
    """Write data (bytes, or an iterable of bytes written one after the other) to path so that a reader sees the
    old file or the new one, never half of one."""
    path = Path(path)
    temp = temp_path_for(path)
    with writing(path, temp):
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(temp, "wb") as handle:
            handle.writelines([data] if isinstance(data, bytes) else data)
        return commit_temp_file(temp, path, replace=replace)


def atomic_write_text(path, text, replace=True):
    """atomic_write_bytes for UTF-8 text."""
    return atomic_write_bytes(path, text.encode("utf-8"), replace=replace)


def unwritable(folder):
    """Why a file cannot be written into folder (the OS's reason: read-only file system, permission denied...), or
    None when it can; tried with a real file, since permission bits do not tell (root, NFS, read-only mounts)."""
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=f".write-probe{TEMP_MARKER}{HOST}-{os.getpid()}."):
            return None
    except OSError as error:
        return error.strerror or str(error)


def to_jsonable(value):
    """Numpy scalars and arrays to plain Python; NaN and infinity to None (JSON has neither)."""
    if isinstance(value, dict):
        return {str(key): to_jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(item) for item in value]
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def atomic_write_json(path, data, replace=True, rows=None):
    """Write data as indented, strict JSON (NaN becomes null) atomically. rows: {key: an iterable of values} written
    after data's keys as lists of one compact line a value, a value at a time (a corpus's clips: 288,000 records
    as one indented string were ten million small strings, most of preprocessing's peak memory at 200x)."""
    return atomic_write_bytes(path, (text.encode("utf-8") for text in json_texts(data, rows or {})), replace=replace)


def json_texts(data, rows):
    """The text of atomic_write_json's file, in pieces: data (a dict) indented, then each rows key with its list."""
    text = json.dumps(to_jsonable(data), indent=1, allow_nan=False, ensure_ascii=False)
    if not rows:
        yield text + "\n"
        return
    yield text[:-2] + ",\n" if data else "{\n"  # without the closing "\n}"
    for number, (key, values) in enumerate(rows.items()):
        yield f" {json.dumps(str(key), ensure_ascii=False)}: ["
        separator = "\n  "
        for value in values:
            yield separator + json.dumps(to_jsonable(value), allow_nan=False, ensure_ascii=False)
            separator = ",\n  "
        yield ("]" if separator == "\n  " else "\n ]") + (",\n" if number < len(rows) - 1 else "\n}\n")


def mean_and_std(values):
    """{"mean", "std", "folds"} of the defined values (None and NaN are skipped): std with ddof=1 (None for fewer
    than two), mean None without any; "folds" counts the defined values."""
    values = [value for value in values if value is not None and not math.isnan(value)]
    return {"mean": float(np.mean(values)) if values else None,
            "std": float(np.std(values, ddof=1)) if len(values) > 1 else None, "folds": len(values)}


def read_json(path, object_hook=None):
    """Parse a JSON file (object_hook: json.load's, what each object read becomes); a broken one is an XvalError
    naming it."""
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle, object_hook=object_hook)
    except json.JSONDecodeError as error:
        raise XvalError(f"{path} is not valid JSON ({error.msg} at line {error.lineno}): "
                        "restore it or delete it to recompute") from None
    except UnicodeDecodeError:
        raise XvalError(f"{path} is not JSON (not even text): restore it or delete it to recompute") from None


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def files_under(folder, exclude=()):
    """Every file under folder, sorted, each as a path inside folder, symbolic links followed: a linked folder or
    file counts as if it were there (a folder reached twice, e.g. through a link that loops, is read once).
    Folders in exclude (and what is under them) are left out. A link to nothing is listed: the reader says so."""
    excluded, seen, found = {Path(path).resolve() for path in exclude}, set(), []
    for root, folders, names in os.walk(folder, followlinks=True):
        seen.add(Path(root).resolve())
        folders[:] = [name for name in folders if (Path(root) / name).resolve() not in excluded | seen]
        found += [Path(root) / name for name in names]
    return sorted(found)


def remove_stale_temp_files(folder):
    """Delete temporary files and staging folders under folder left by xval processes of this host that are gone.

    Returns the removed paths. Those of live processes and of other hosts are left alone.
    """
    removed = []
    prefix = f"{TEMP_MARKER}{HOST}-"
    for temp in sorted(Path(folder).rglob(f"*{TEMP_MARKER}*")):
        pid_text = temp.name.split(prefix, 1)[-1].split(".", 1)[0] if prefix in temp.name else ""
        if not pid_text.isdigit() or _pid_alive(int(pid_text)) or any(temp.is_relative_to(r) for r in removed):
            continue
        with contextlib.suppress(FileNotFoundError):
            if temp.is_dir() and not temp.is_symlink():
                shutil.rmtree(temp)  # a code snapshot's staging folder, killed while being written
            else:
                temp.unlink()
            removed.append(temp)
    return removed


# ----------------------------------------------------------------------------------------------------------------
# Locks: a flock'ed mutex for short critical sections, and claim files (host, PID, SLURM job) for fold jobs

@contextlib.contextmanager
def file_mutex(path):
    """Hold an exclusive flock on path (created if needed) for the with block; released even if killed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _process_start_time(pid):
    """Start time of pid in clock ticks since boot (Linux), or None; tells a reused PID from the original."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            return int(handle.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def slurm_job_id(environ=os.environ):
    """This process's SLURM job as squeue names it ("123_4" for task 4 of array 123, "125"), or None outside SLURM.

    A requeued task keeps it, which is how it recognises the claim its killed attempt left."""
    if environ.get("SLURM_ARRAY_JOB_ID") and environ.get("SLURM_ARRAY_TASK_ID"):
        return f"{environ['SLURM_ARRAY_JOB_ID']}_{environ['SLURM_ARRAY_TASK_ID']}"
    return environ.get("SLURM_JOB_ID")


def slurm_job_running(job_id):
    """Whether squeue lists job_id as pending, running or being requeued; None when squeue cannot tell."""
    squeue = shutil.which("squeue")
    if squeue is None:
        return None
    try:
        completed = subprocess.run([squeue, "-h", "-j", str(job_id), "-o", "%T"], capture_output=True, text=True,
                                   timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if completed.returncode != 0:  # squeue refuses a job id it no longer knows: long gone
        return False if "Invalid job id" in completed.stderr else None
    return any(state in SLURM_LIVE_STATES for state in completed.stdout.split())


def slurm_restart_count(environ=os.environ):
    """How often SLURM has requeued this task so far (0 for its first attempt, and outside SLURM)."""
    return int(environ.get("SLURM_RESTART_COUNT") or 0)


def heartbeat_age(lock_path):
    """Seconds since the claim at lock_path was last touched (its modification time), measured against a file
    touched now in the same folder, so that both times come from the same file system's clock (a shared folder's
    server sets them, NFS included; the clocks of the hosts need not agree). None if the claim is gone."""
    clock = Path(lock_path).parent / ".clock"
    try:
        touched = Path(lock_path).stat().st_mtime
    except FileNotFoundError:
        return None
    try:
        with open(clock, "a"):
            os.utime(clock, None)
        now = clock.stat().st_mtime
    except OSError:  # a folder this process may not write to (--status of a colleague's experiment): its own clock
        now = time.time()
    return now - touched


def heartbeat_interval(grace):
    """How often (s) a claim's owner touches it: often enough that a live owner is never older than the grace."""
    return max(0.2, min(60.0, grace / 4))


def lock_owner_alive(owner, age, grace):
    """Whether the owner of a claim (its file's content) still runs; age: seconds since its last heartbeat.

    Fast paths first: on this host its PID and start time decide; a SLURM task's claim is dead to a later attempt
    of the same task (requeued: a higher restart count) and follows squeue when squeue knows the job. Otherwise
    (another host, with or without SLURM) the heartbeat decides: the claim is alive while its owner touched it
    less than `grace` seconds ago.
    """
    if owner.get("host") == HOST:
        pid = owner.get("pid")
        if not isinstance(pid, int) or not _pid_alive(pid):
            return False
        started = owner.get("start_time")
        return started is None or _process_start_time(pid) in (None, started)
    if owner.get("slurm_job"):
        if owner["slurm_job"] == slurm_job_id() and owner.get("slurm_restart", 0) < slurm_restart_count():
            return False  # a killed attempt of this very task, which SLURM requeued
        running = slurm_job_running(owner["slurm_job"])
        if running is not None:
            return running
    return age is not None and age <= grace


def read_claim(lock_path):
    """The owner a claim file records ({host, pid, since, ...}), or {} when it is missing, unreadable or not an
    object. Called under the claims' mutex."""
    try:
        owner = json.loads(Path(lock_path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return owner if isinstance(owner, dict) else {}


def claim(lock_path, grace, tag=None, siblings=()):
    """Claim lock_path for this process. Returns None on success, else the live owner's {host, pid, since}.

    A claim whose owner is gone (lock_owner_alive with this grace period, in seconds) is stale and taken over.
    The owner keeps its claim alive with heartbeat() while it holds it. tag (a string) is stored in the claim; a
    live claim among siblings (other lock paths) holding another tag refuses this one: its owner is returned with
    "conflict": True (a fold job of the same instance run with other parameters, checked under the same mutex).
    """
    lock_path = Path(lock_path)
    with file_mutex(lock_path.parent / ".claims.mutex"):
        for sibling in map(Path, siblings):
            other = read_claim(sibling)
            if other.get("tag") not in (None, tag) and lock_owner_alive(other, heartbeat_age(sibling), grace):
                return dict(other, conflict=True, lock=sibling.name)
        if lock_path.exists():
            owner = read_claim(lock_path)
            if owner.get("host") == HOST and owner.get("pid") == os.getpid():
                return None
            if owner and lock_owner_alive(owner, heartbeat_age(lock_path), grace):
                return owner
            if owner:
                print(f"{lock_path.name}: taking over the stale claim of {owner.get('host')} (pid {owner.get('pid')}, "
                      f"since {owner.get('since')}; its process is gone or its heartbeat stopped)", flush=True)
        me = {"host": HOST, "pid": os.getpid(), "start_time": _process_start_time(os.getpid()),
              "since": time.strftime("%Y-%m-%d %H:%M:%S"), "slurm_job": slurm_job_id(),
              "slurm_restart": slurm_restart_count(), "tag": tag}
        atomic_write_json(lock_path, me)
    return None


def release_stale_claim(lock_path, grace):
    """Remove the claim at lock_path when its owner is gone (lock_owner_alive with grace, in seconds): a process
    killed after its fold job's result landed leaves one behind. A live claim is left alone."""
    lock_path = Path(lock_path)
    if not lock_path.exists():
        return
    with file_mutex(lock_path.parent / ".claims.mutex"):
        owner = read_claim(lock_path)
        if owner and not lock_owner_alive(owner, heartbeat_age(lock_path), grace):
            lock_path.unlink(missing_ok=True)


@contextlib.contextmanager
def heartbeat(lock_path, interval):
    """Touch the claim at lock_path every `interval` seconds while the with block runs (a thread of this process):
    its modification time is the heartbeat other hosts judge it by."""
    stop = threading.Event()

    def beat():
        while not stop.wait(interval):
            with contextlib.suppress(OSError):
                os.utime(lock_path, None)

    thread = threading.Thread(target=beat, name=f"heartbeat {Path(lock_path).name}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def release(lock_path):
    """Remove a claim of this process (someone else's claim is left alone)."""
    lock_path = Path(lock_path)
    with file_mutex(lock_path.parent / ".claims.mutex"):
        owner = read_claim(lock_path)
        if owner.get("host") == HOST and owner.get("pid") == os.getpid():
            with contextlib.suppress(OSError):
                lock_path.unlink()


# ----------------------------------------------------------------------------------------------------------------
# The feature dataset, stored so that every process can memory-map it (format 2):
#   {name}_predictors.npy  float32 (examples, frames, bins), the items one after the other in sorted order
#   {name}_target.npy      (examples, classes) one-hot float32, or (examples,) float32
#   {name}_clips.npy       int32 (examples,): the clip (numbered within its item) of every window; windows only
#   {name}_sums.npy        float64 (items, 2, bins): each item's sum and sum of squares of every bin over its
#                          examples and frames (feature_sums), in index order: a fold's normalisation without
#                          reading its training examples
#   {name}_index.json      {"format": 2, "examples": N, "items": [[item, first example, end], ...]}, written last
# Datasets written before (format 1: {name}_predictors.npz and _target.npz, one array per item) are still read,
# into memory; preprocessing them again (--force) stores them in format 2 with the same dataset fingerprint.

STORAGE_FORMAT = 2
SCAN_BYTES = 1 << 26  # rows read at a time by one pass over a dataset (row_chunks): bounded memory on any corpus


def dataset_paths(features_folder, dataset):
    """Paths of a dataset's files: predictors, target, clips, sums, index (format 2), metadata, and the format 1
    archives predictors_npz, target_npz, clips_npz (read, never written)."""
    folder = Path(features_folder)
    paths = {kind: folder / f"{dataset}_{kind}.npy" for kind in ("predictors", "target", "clips", "sums")}
    paths.update({f"{kind}_npz": folder / f"{dataset}_{kind}.npz" for kind in ("predictors", "target", "clips")})
    return dict(paths, index=folder / f"{dataset}_index.json", metadata=folder / f"{dataset}_metadata.json")


def stored_format(paths):
    """2 (memory-mappable .npy with an index), 1 (.npz archives) or None (no dataset) for dataset_paths' paths."""
    if paths["index"].is_file():
        return 2
    if paths["predictors_npz"].is_file() and not paths["predictors"].is_file():
        return 1
    return None


def load_dataset(features_folder, dataset, scan=False):
    """Load a dataset without pickle: (predictors, targets), each {item: array}, same items in sorted order.

    predictors[item] is float32 (clips, frames, bins); targets[item] is (clips, classes) one-hot or (clips,) float.
    In format 2 every array is a read-only view of a memory map: processes share the page cache, none holds a
    private copy; format 1 archives are read into memory. scan: the format 2 predictors as FileRows instead, for
    one pass over them (checks, fingerprint, pooling) that leaves none of them in this process's memory.
    """
    paths = dataset_paths(features_folder, dataset)
    dataset_file_stats(features_folder, dataset)  # a missing file is one clear line
    if stored_format(paths) == 2:
        spans = read_index(paths, dataset)
        predictors = (read_rows if scan else map_array)(paths["predictors"], dataset, spans)
        targets = map_array(paths["target"], dataset, spans)
    else:
        predictors, targets = (read_npz(paths[f"{kind}_npz"], dataset) for kind in ("predictors", "target"))
    if set(predictors) != set(targets):
        raise XvalError(f"dataset '{dataset}': predictors and target files hold different items "
                        f"({sorted(set(predictors) ^ set(targets))}): rerun preprocessing with --force")
    items = sorted(predictors)
    return {item: predictors[item] for item in items}, {item: targets[item] for item in items}


def dataset_file_stats(features_folder, dataset):
    """[[size in bytes, modification time in ns]] of the dataset's files (None for an absent clips file): tells a
    rewritten file cheaply. Format 2: predictors, target, clips, sums, index; format 1: the three archives."""
    paths = dataset_paths(features_folder, dataset)
    stored = stored_format(paths)
    if stored is None:
        what = (f"in {paths['index'].parent} is incomplete (no {paths['index'].name}: its preprocessing was stopped, "
                "or is running)" if paths["predictors"].is_file() else
                f"has no {paths['predictors'].name} in {paths['predictors'].parent}")
        raise XvalError(f"dataset '{dataset}' {what}: run python3 preprocessing_dataset.py (or "
                        f"preprocessing_ravdess.py) --dataset {dataset}" +
                        (" --force" if "incomplete" in what else ", or fix the dataset name"))
    kinds = ("predictors", "target", "clips", "sums", "index") if stored == 2 else \
        ("predictors_npz", "target_npz", "clips_npz")
    needed = list(kinds[:2])
    if stored == 2:  # its metadata (the feature settings models are used with) and, for windows, each window's clip
        needed += ["metadata"] + (["clips"] if read_index_file(paths, dataset).get("windows") else [])
    for kind in needed:
        if not paths[kind].is_file():
            raise XvalError(f"dataset '{dataset}' has no {paths[kind].name} in {paths[kind].parent}: preprocess it "
                            "again with --force")
    return [[paths[kind].stat().st_size, paths[kind].stat().st_mtime_ns] if paths[kind].is_file() else None
            for kind in kinds]


def load_clip_ids(features_folder, dataset, predictors):
    """Which clip each example belongs to, numbered within its item: {item: int32 (examples,)}, without pickle.

    A windows dataset stores it in {dataset}_clips.npy (.npz in format 1; a clip's windows are consecutive); in any
    other dataset every example is a clip of its own.
    """
    paths = dataset_paths(features_folder, dataset)
    if stored_format(paths) == 2:
        if paths["clips"].is_file():
            return map_array(paths["clips"], dataset, read_index(paths, dataset))
    elif paths["clips_npz"].is_file():
        return read_npz(paths["clips_npz"], dataset)
    return {item: np.arange(len(x), dtype=np.int32) for item, x in predictors.items()}


def feature_sums(x):
    """float64 (2, bins): the sum and the sum of squares of every bin of x (examples, frames, bins) over its
    examples and frames; what a fold's normalisation statistics add up (normalisation_statistics in training)."""
    x = np.asarray(x, dtype=np.float64)
    return np.stack([x.sum(axis=(0, 1)), np.square(x).sum(axis=(0, 1))])


def load_item_sums(features_folder, dataset, predictors):
    """{item: float64 (2, bins)} feature_sums of every item: read from {dataset}_sums.npy in format 2, computed from
    the arrays otherwise (format 1)."""
    paths = dataset_paths(features_folder, dataset)
    if stored_format(paths) == 2 and paths["sums"].is_file():
        try:
            sums = np.load(paths["sums"], allow_pickle=False)
            bins = next(iter(predictors.values())).shape[2]
            if sums.shape != (len(predictors), 2, bins) or not np.all(np.isfinite(sums)):
                raise ValueError(f"shape {sums.shape} or values that are not finite, for {len(predictors)} items")
            counts = np.array([x.shape[0] * x.shape[1] for x in predictors.values()], float)[:, np.newaxis]
            mean_square, mean = sums[:, 1] / np.maximum(counts, 1), sums[:, 0] / np.maximum(counts, 1)
            if np.any(mean_square - mean ** 2 < -1e-6 * np.maximum(mean_square, 1)):
                raise ValueError("sums of squares smaller than the squared sums allow (a negative variance)")
        except (OSError, ValueError, EOFError) as error:
            raise damaged(paths["sums"], dataset, error) from None
        return dict(zip(read_index(paths, dataset), sums))
    return {item: feature_sums(x) for item, x in predictors.items()}


def check_item_sums(features_folder, dataset, predictors):
    """XvalError unless a format 2 dataset's stored per-item sums are those of its predictors: every fold's
    normalisation adds them up, so an edited or stale _sums.npy would shift every fold's inputs without a word. One
    pass over the data, row_chunks at a time (float64 copies of a chunk, not of an item)."""
    paths = dataset_paths(features_folder, dataset)
    if stored_format(paths) != 2:
        return
    stored = load_item_sums(features_folder, dataset, predictors)
    for item, x in predictors.items():
        computed = sum((feature_sums(block) for block in row_chunks(x)), np.zeros_like(stored[item]))
        if not np.allclose(stored[item], computed, rtol=1e-6, atol=1e-6 * max(1.0, float(np.abs(computed).max()))):
            raise XvalError(f"{paths['sums']} disagrees with the predictors of item {item} (edited, or left from "
                            f"other features?): preprocess dataset '{dataset}' again with --force")


def file_sha256(path, piece=1 << 24):
    """SHA-256 (hex) of a file's bytes, read 16 MB at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(piece):
            digest.update(chunk)
    return digest.hexdigest()


def damaged(path, dataset, error):
    """The XvalError of a dataset file that cannot be read."""
    reason = str(error).splitlines()[0] if str(error) else type(error).__name__
    return XvalError(f"{path} is damaged and cannot be read ({type(error).__name__}: {reason}): preprocess dataset "
                     f"'{dataset}' again with --force")


def read_index_file(paths, dataset):
    """The JSON object of a format 2 dataset's index file (XvalError naming it when it is not one)."""
    try:
        index = json.loads(paths["index"].read_text(encoding="utf-8"))
        if not isinstance(index, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as error:
        raise damaged(paths["index"], dataset, error) from None
    return index


def recorded_fingerprint(features_folder, dataset):
    """The content fingerprint (dataset_fingerprint) a dataset's index file records, written with its arrays, or
    None (format 1: no index): files rewritten with the same content keep it."""
    paths = dataset_paths(features_folder, dataset)
    return read_index_file(paths, dataset).get("dataset_fingerprint") if paths["index"].is_file() else None


def read_index(paths, dataset):
    """{item: (first example, end)} of a format 2 dataset, checked: the items' spans follow one another from 0."""
    index = read_index_file(paths, dataset)
    try:
        spans = {str(item): (int(first), int(end)) for item, first, end in index["items"]}
        ends = [0] + [end for _, end in spans.values()]
        if index["format"] != STORAGE_FORMAT:
            raise ValueError(f"storage format {index['format']!r}, where this version reads {STORAGE_FORMAT}")
        if [first for first, _ in spans.values()] != ends[:-1] or \
                ends[-1] != index["examples"] or len(spans) != len(index["items"]):
            raise ValueError("the items' spans do not follow one another")
    except (OSError, ValueError, TypeError, KeyError) as error:
        raise damaged(paths["index"], dataset, error) from None
    return spans


def mapped_file(path, dataset, spans):
    """The read-only memory map of one format 2 .npy file, without pickle; damaged unless it holds the index's rows."""
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
        rows = max((end for _, end in spans.values()), default=0)
        if not spans or len(array) != rows:
            raise ValueError(f"{len(array)} rows, the index counts {rows}")
    except (OSError, ValueError, EOFError) as error:
        raise damaged(path, dataset, error) from None
    return array


def map_array(path, dataset, spans):
    """{item: read-only memory-mapped view of its rows} of one format 2 .npy file, without pickle."""
    array = mapped_file(path, dataset, spans)
    return {item: array[first:end] for item, (first, end) in spans.items()}


class FileRows:
    """The rows of one item in a format 2 .npy file, read from the file when sliced (x[start:stop]), never mapped:
    a memory map keeps every page a pass touched in this process's resident memory while it is open (preprocessing
    at 40x held 1.44 GiB, PSS, for 1.29 GiB of features after its fingerprint pass), a read keeps only the chunk.
    offset: bytes to the item's first row; shape (rows, frames, bins) of the item."""

    def __init__(self, path, offset, dtype, shape):
        self.path, self.offset, self.dtype, self.shape, self.ndim = path, offset, dtype, shape, len(shape)

    def __len__(self):
        return self.shape[0]

    def __getitem__(self, key):
        if not isinstance(key, slice) or key.step not in (None, 1):
            raise TypeError("FileRows reads a range of rows: x[start:stop]")
        start, stop, _ = key.indices(self.shape[0])
        rows, row_items = max(0, stop - start), math.prod(self.shape[1:])
        if not rows:
            return np.empty((0, *self.shape[1:]), self.dtype)
        data = np.fromfile(self.path, self.dtype, rows * row_items, offset=self.offset + start * row_items *
                           self.dtype.itemsize)
        if data.size != rows * row_items:
            raise XvalError(f"{self.path} ended before row {stop} of an item (shortened while it was read?): "
                            "preprocess the dataset again with --force")
        return data.reshape(rows, *self.shape[1:])


def read_rows(path, dataset, spans):
    """{item: FileRows of its rows} of one format 2 .npy file: map_array's checks, then nothing kept mapped."""
    array = mapped_file(path, dataset, spans)
    row_bytes = math.prod(array.shape[1:]) * array.dtype.itemsize
    return {item: FileRows(path, array.offset + first * row_bytes, array.dtype, (end - first, *array.shape[1:]))
            for item, (first, end) in spans.items()}


def row_chunks(x):
    """The rows of x (an array, a memory map or FileRows; rows first), SCAN_BYTES of them at a time, as arrays."""
    step = max(1, SCAN_BYTES // max(1, math.prod(x.shape[1:]) * x.dtype.itemsize))
    for start in range(0, len(x), step):
        yield np.asarray(x[start:start + step])


def read_npz(path, dataset):
    """{key: array} of a format 1 dataset's .npz file, read without pickle, keys sorted; a damaged file (truncated,
    empty, not an archive, holding objects) is an XvalError naming it."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {key: archive[key] for key in sorted(archive.files)}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zipfile.LargeZipFile) as error:
        raise damaged(path, dataset, error) from None


def dataset_fingerprint(predictors, targets, clip_ids):
    """SHA-256 (hex) of a loaded dataset's content: every item's name, dtype, shape and bytes, predictors, targets
    and clip ids.

    The arrays are hashed rather than the files (a .npz archive's entries carry the time they were written, and
    format 1 and 2 store one content differently): the same features preprocessed twice, in either format, give
    the same fingerprint, other features (settings, audio, items) another one.
    """
    digest = hashlib.sha256()
    for arrays in (predictors, targets, clip_ids):
        for item in sorted(arrays):
            array = arrays[item]
            digest.update(f"{item}|{np.dtype(array.dtype).str}|{tuple(array.shape)}|".encode("utf-8"))
            for block in row_chunks(array):  # the same bytes as the whole item's, a chunk of memory at a time
                digest.update(np.ascontiguousarray(block).data)
    return digest.hexdigest()


def check_dataset(predictors, targets, dataset, clip_ids=None):
    """Check a loaded dataset's arrays once, where it enters; returns the non-empty items. XvalError on a problem.

    Every item: as many targets (and clip ids) as examples, predictors (examples, frames, bins) of one shape for
    all items, no NaN or infinity anywhere, each clip's windows consecutive and with one target. Whether the
    target fits a task type is check_target's.
    """
    for item in predictors:
        x, y = predictors[item], targets[item]
        if len(x) != len(y):
            raise XvalError(f"dataset '{dataset}', item {item}: {len(x)} predictor clips but {len(y)} targets: "
                            "rerun preprocessing with --force")
        if clip_ids is not None:
            check_clip_ids(clip_ids.get(item), y, f"dataset '{dataset}', item {item}")
        if x.ndim != 3:
            raise XvalError(f"dataset '{dataset}', item {item}: predictors have shape {x.shape}, expected "
                            "(clips, frames, bins): rerun preprocessing with --force")
        if not all(np.isfinite(block).all() for block in row_chunks(x)):
            raise XvalError(f"dataset '{dataset}', item {item}: predictors contain NaN or infinite values: "
                            "check the audio and feature settings, then rerun preprocessing with --force")
        if not np.all(np.isfinite(y)):
            raise XvalError(f"dataset '{dataset}', item {item}: target contains NaN or infinite values")
    shapes = {x.shape[1:] for x in predictors.values() if len(x)}
    if len(shapes) > 1:
        raise XvalError(f"dataset '{dataset}': items have different (frames, bins) {sorted(shapes)}: "
                        "rerun preprocessing with --force")
    return [item for item in predictors if len(predictors[item])]


def check_clip_ids(ids, y, where):
    """XvalError unless ids (examples,) numbers the clips 0, 1, ... with each clip's windows consecutive and of
    one target."""
    if ids is None or ids.shape != (len(y),) or not np.issubdtype(ids.dtype, np.integer):
        raise XvalError(f"{where}: the clips file does not number every window: rerun preprocessing with --force")
    steps = np.diff(ids)
    if len(ids) and (ids[0] != 0 or np.any((steps != 0) & (steps != 1))):
        raise XvalError(f"{where}: the clips file does not number the clips 0, 1, ... in order: rerun "
                        "preprocessing with --force")
    same_clip = steps == 0
    if np.any(same_clip) and not np.all(y[1:][same_clip] == y[:-1][same_clip]):
        raise XvalError(f"{where}: windows of one clip have different targets: rerun preprocessing with --force")


def check_target(targets, dataset, task_type):
    """XvalError unless every item's target fits task_type: one-hot (clips, classes), or one number per clip."""
    for item, y in targets.items():
        if task_type == "classification" and y.ndim == 2 and y.shape[1] >= 2 and \
                (not np.all(np.isin(y, (0, 1))) or np.any(y.sum(axis=1) != 1)):
            raise XvalError(f"dataset '{dataset}', item {item}: its target has the shape of a one-hot target {y.shape} "
                            "but rows that are not one 1 and zeros (edited or damaged?): preprocess it again with "
                            "--force")
        if task_type == "classification" and (y.ndim != 2 or y.shape[1] < 2):
            raise XvalError(f"dataset '{dataset}', item {item}: task_type 'classification' needs a one-hot target "
                            f"(clips, classes), this one has shape {y.shape}: use a dataset preprocessed with "
                            "--target emotion, or task_type = 'regression'")
        if task_type == "regression" and not (y.ndim == 1 or (y.ndim == 2 and y.shape[1] == 1)):
            raise XvalError(f"dataset '{dataset}', item {item}: task_type 'regression' needs one number per clip, "
                            f"this target has shape {y.shape}: use a dataset preprocessed with --target intensity, "
                            "or task_type = 'classification'")
