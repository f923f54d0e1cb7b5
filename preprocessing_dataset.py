"""Any dataset, no code: a CSV or folders of classes in, xval's feature dataset out, with folds by speaker.

    python3 preprocessing_dataset.py --csv FILE --dataset NAME [--file-column file] [--label-column label]
                                     [--fold-by speaker] [--audio-root DIR] [common options]
    python3 preprocessing_dataset.py --folders DIR --dataset NAME (--group-pattern REGEX | --fold-by file)
                                     [--label-pattern REGEX] [common options]
    common options: [--target classification|regression] [--classes A,B,C] [--features stft|mfcc|mel|cqt]
                    [--jobs N] [--force] [--config PATH]

Every front end (these two, and preprocessing_ravdess.py for RAVDESS names) only builds a table of clips: the
audio file, its label, its foldable item (the speaker: what folds never split) and its other columns. One
pipeline does the rest (build_dataset):
  1. labels to targets: classification classes are the sorted distinct labels (or --classes, in that order);
     regression reads numbers;
  2. audio: any format soundfile reads (WAV 8/16/24-bit and float, FLAC, OGG, MP3), any sample rate and channel
     count, mixed to mono and resampled to [preprocessing] sample_rate with soxr 'soxr_hq' (librosa.load's numbers);
  3. length ([preprocessing] clip_mode): 'fixed' pads or cuts every clip to clip_seconds; 'windows' cuts every clip
     into windows of window_seconds every window_hop_seconds (the last one zero-padded, a short clip padded to one
     window), so nothing is thrown away; training uses the windows, evaluation averages a clip's windows;
  4. features (feat_analysis.py), in worker processes;
  5. {NAME}_predictors.npy and {NAME}_target.npy (every example, the foldable items one after the other, no
     pickle; memory-mapped by every process), {NAME}_clips.npy in windows mode (each window's clip, numbered within
     its item), {NAME}_index.json (each item's examples) and {NAME}_metadata.json (one record per clip with every
     column, class names, settings, sample rates and durations found, what was skipped and why). The features are
     written to disk as they are computed, and the table of clips is kept on disk (clip_table.py), so memory does
     not grow with the corpus.
A row that cannot be used (missing or undecodable file, empty or unusable label, no foldable item, a foldable item
with a single clip) is skipped and named in the summary with its row number; the run succeeds for the rest unless
nothing usable is left. Folding by file (--fold-by file: speaker-dependent, clips of one speaker in training and
test) is possible only when asked by name, and is then said in the metadata, on the console and by the engine.
A rerun with the same table, input files (names, sizes, modification times) and settings reuses the dataset.
"""
import argparse
import collections
import contextlib
import csv
import hashlib
import itertools
import json
import multiprocessing
import os
import re
import sys
import time
import unicodedata
from collections import Counter
from pathlib import Path

import numpy as np
import threadpoolctl
from tqdm import tqdm

import feat_analysis
from clip_table import Clip, ClipTable, FileStats, as_blob, as_text
from utility_functions import (STORAGE_FORMAT, TEMP_MARKER, XvalError, atomic_write_json, commit_temp_file,
                               check_item_sums, config_path_in_use, dataset_fingerprint, dataset_paths,
                               exit_on_user_error, feature_sums, file_mutex, files_under, load_clip_ids, load_config,
                               load_dataset, map_array, read_json, read_rows, recorded_fingerprint,
                               remove_stale_temp_files, set_malloc_thresholds, stored_format, temp_path_for,
                               unwritable, whole_number, writing)

FORMAT_VERSION = 2  # part of the fingerprint: bump when the output of the same inputs changes
TARGET_KINDS = ("classification", "regression")
FOLD_BY_FILE = "file"  # the foldable item of a speaker-dependent split, only when asked by name
KEEP_FREED_BYTES = 64 * 2**20  # workers allocate blocks below this from (and free them to) their own heap
CHUNK_FILES = 16  # files per worker task; fixed, so the output does not depend on --jobs
IN_FLIGHT_PER_JOB = 4  # tasks submitted ahead per worker: none waits for the next while results are stored
HASHED_PER_UPDATE = 4096  # list elements joined into one update of input_fingerprint's hash
COPY_BYTES = 16 * 2 ** 20  # features copied per read when the dataset is written: memory flat in corpus size
GROWING_LISTS = ("clips", "input_files", "identical_audio")  # the metadata's lists as long as the corpus
LISTED_PER_KIND = 20  # skipped rows printed per kind (all of them are in the metadata)
DATASET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
DATASET_NAME_LENGTH = 100  # characters: its file names (name + '_predictors.npy' and more) stay under 255 bytes
SKIP_KINDS = {  # kind of skipped row -> how the summary names it
    "missing_file": "audio file not found", "unreadable": "unreadable or empty audio",
    "empty_label": "empty label", "no_label": "no label in the file name", "bad_label": "label not usable",
    "no_item": "no foldable item", "duplicate_row": "the same clip listed again",
    "single_clip_item": "the only clip of its foldable item",
    "no_class_folder": "not in a class folder",
}


# ----------------------------------------------------------------------------------------------------------------
# The table of clips: what every front end builds

def clip_entry(row, file, path, label, item, record):
    """The Clip of a table's row (see clip_table.Clip). Label and item are in Unicode NFC: 'Ä' typed as one
    character or as 'A' + a combining mark (as macOS writes names) is one name."""
    return Clip(row, file, str(path), unicodedata.normalize("NFC", label), unicodedata.normalize("NFC", item),
                record)


def skip_entry(clip_or_row, kind, reason, file=None):
    """One skipped row: {row, file, kind, reason}."""
    if isinstance(clip_or_row, Clip):
        return {"row": clip_or_row.row, "file": clip_or_row.file, "kind": kind, "reason": reason}
    return {"row": clip_or_row, "file": file, "kind": kind, "reason": reason}


def file_stats(paths, root):
    """clip_table.FileStats of the files at paths (root: what their names are relative to)."""
    stats = FileStats(root)
    for path in paths:
        stats.add(path)
    return stats


def csv_delimiter(header_line):
    """The column separator of a CSV, from its header row: ',' unless the row holds no comma but ';' or a tab (as
    spreadsheet programs in many locales save CSV)."""
    if "," in header_line:
        return ","
    return max(";\t", key=header_line.count) if any(mark in header_line for mark in ";\t") else ","


def unicode_form_on_disk(path):
    """path, or the same name in the other Unicode normal form when only that one exists (a CSV typed in NFC, files
    copied from macOS in NFD, or the reverse: 'Ä' as one code point or as 'A' and a combining diaeresis)."""
    if path.exists():
        return path
    return next((other for form in ("NFC", "NFD") if (other := Path(unicodedata.normalize(form, str(path)))).exists()),
                path)


def csv_table(csv_path, file_column, label_column, fold_by, audio_root=None):
    """Clips of a CSV with a header row: (ClipTable, skipped, FileStats). Paths are relative to the CSV's folder
    (or audio_root); rows are numbered as in the file (the header is row 1). Every column goes into the record.
    The rows are read one at a time into the table: memory does not grow with the CSV."""
    given = Path(csv_path).expanduser()
    if given.exists() and not given.is_file() and not given.is_dir():  # before resolving: a pipe's name changes
        raise XvalError(f"--csv {given} is not a regular file (a device or a pipe): save the table to a file and "
                        "pass its path")
    csv_path = given.resolve()
    if csv_path.is_dir():
        raise XvalError(f"--csv {csv_path} is a folder, not a CSV file: pass the table's path (or use --folders for "
                        "a folder of class subfolders)")
    if not csv_path.is_file():
        raise XvalError(f"CSV file {csv_path} does not exist: pass the path of your table with --csv")
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as handle:
            delimiter = csv_delimiter(handle.readline())
            handle.seek(0)
            reader = csv.DictReader(handle, delimiter=delimiter)
            if reader.fieldnames:  # 'file, label' as typed by hand: the names without their spaces
                reader.fieldnames = [name.strip() for name in reader.fieldnames]
            header = [name for name in reader.fieldnames or [] if name is not None]
            rows = numbered_rows(reader)
            first = next(rows, None)
            check_csv_header(csv_path, header, first is not None, delimiter, file_column, label_column, fold_by)
            root = Path(audio_root).expanduser().resolve() if audio_root else csv_path.parent
            clips, skipped, stats = ClipTable(), [], FileStats(root)
            for number, row in itertools.chain([first], rows):
                add_csv_row(clips, skipped, stats, csv_path, header, delimiter, number, row,
                            (root, file_column, label_column, fold_by))
    except (UnicodeDecodeError, csv.Error) as error:
        raise XvalError(f"{csv_path} cannot be read as a CSV ({error}): save it as UTF-8 CSV") from None
    return clips, skipped, stats.add(csv_path)


def numbered_rows(reader):
    """(number of the row's first line in the file, row) of a csv.DictReader's rows (blank lines and line breaks
    inside quotes counted)."""
    for row in reader:
        cells = [cell for key, cell in row.items() if key is not None and isinstance(cell, str)]
        yield reader.line_num - sum(cell.count("\n") for cell in cells + (row.get(None) or [])), row


def check_csv_header(csv_path, header, has_rows, delimiter, file_column, label_column, fold_by):
    """XvalError for a CSV whose header row cannot give a table: empty, no rows, a column named twice, a role's
    column missing, labels that are the foldable items."""
    if not header:
        raise XvalError(f"{csv_path} is empty: it needs a header row naming its columns (e.g. file,label,speaker) "
                        "and one row per clip")
    if not has_rows:
        raise XvalError(f"{csv_path} has a header row ({', '.join(header)}) but no rows: add one row per clip")
    twice = sorted({name for name in header if name.strip() and header.count(name) > 1})
    if twice:
        raise XvalError(f"{csv_path} names the column {twice[0]!r} twice in its header row: rename one of them")
    if delimiter != ",":
        print(f"{csv_path.name}: columns separated by {delimiter!r} (read from its header row)")
    roles = (("the audio files", file_column, "--file-column"), ("the labels", label_column, "--label-column"),
             ("the foldable items", fold_by, "--fold-by"))
    for role, column, option in roles:
        if column not in header and not (option == "--fold-by" and column == FOLD_BY_FILE):
            raise XvalError(f"{csv_path} has no column '{column}' for {role} (its columns: {', '.join(header)}): "
                            f"name the right one with {option}")
    if label_column == fold_by:
        raise XvalError(f"--label-column and --fold-by both name '{fold_by}': every class would be one foldable item, "
                        "so no test class is ever seen in training; fold by another column (a session), or "
                        "--fold-by file")


def add_csv_row(clips, skipped, stats, csv_path, header, delimiter, number, row, columns):
    """Add one CSV row to the ClipTable clips (and its file to stats), or to skipped when its file is missing or
    it has no foldable item; XvalError for a row with more cells than the header has columns. columns: (audio root,
    file column, label column, foldable item column)."""
    root, file_column, label_column, fold_by = columns
    extra = row.pop(None, None) or []
    if any(cell.strip() for cell in extra):  # empty trailing cells are harmless
        raise XvalError(f"{csv_path}, row {number}: {len(header) + len(extra)} cells for the {len(header)} columns "
                        f"of the header: a cell holding {delimiter!r} must be in double quotes")
    file = (row.get(file_column) or "").strip()
    path = unicode_form_on_disk((root / file).resolve())
    item = file if fold_by == FOLD_BY_FILE else (row.get(fold_by) or "").strip()
    clip = clip_entry(number, file, path, (row.get(label_column) or "").strip(), item, row)
    if not file or not path.is_file():
        reason = f"{path} {'is a folder' if path.is_dir() else 'does not exist'}" if file else "no file name"
        skipped.append(skip_entry(clip, "missing_file", reason))
    elif not item:
        skipped.append(skip_entry(clip, "no_item", f"empty '{fold_by}' cell"))
    else:
        clips.add(clip)
        stats.add(clip.path)


def name_pattern(text, group, option, example):
    """A compiled regular expression with a group named group (None for no text); XvalError explains a bad one."""
    if not text:
        return None
    try:
        pattern = re.compile(text)
    except re.error as error:
        raise XvalError(f"{option} {text!r} is not a regular expression ({error})") from None
    if group not in pattern.groupindex:
        raise XvalError(f"{option} {text!r} has no group named '{group}': write e.g. {example!r}")
    return pattern


def folders_table(folder, group_pattern, fold_by, label_pattern=None):
    """Clips of the audio files under folder: (ClipTable, skipped, FileStats). Rows are numbered in sorted file order.

    The label is the file's first subfolder (folder/CLASS/**/file.wav, gaia2's layout), or, with label_pattern (a
    regular expression with a group named 'label', searched in the file name), taken from the name, the files
    laid out in any way. The foldable item comes from the name by group_pattern (a group named 'group'), or is
    the file itself when fold_by is 'file'."""
    folder = Path(folder).expanduser().resolve()
    if folder.is_file():
        raise XvalError(f"--folders {folder} is a file, not a folder: pass the folder holding one subfolder per class "
                        "(or use --csv for a table)")
    if not folder.is_dir():
        raise XvalError(f"folder {folder} does not exist: pass the folder holding one subfolder per class")
    if fold_by != FOLD_BY_FILE and not group_pattern:
        raise XvalError("--folders needs --group-pattern (e.g. '^(?P<group>[^_]+)_' for speaker_rest.wav) to find "
                        "each file's speaker, or --fold-by file for a speaker-dependent split")
    groups = name_pattern(group_pattern, "group", "--group-pattern", "^(?P<group>[^_]+)_")
    labels = name_pattern(label_pattern, "label", "--label-pattern", "^(?P<label>\\d)_")
    suffixes = feat_analysis.AUDIO_SUFFIXES
    audio = [path for path in files_under(folder) if TEMP_MARKER not in path.name and path.suffix.lower() in suffixes]
    loose = [] if labels else [path for path in audio if path.parent == folder]  # in no class folder
    paths = [path for path in audio if path.parent != folder] if loose else audio
    if not paths:
        raise XvalError(f"folder {folder} holds no audio files{'' if labels else ' in class subfolders'} "
                        f"({', '.join(suffixes)}): lay it out as FOLDER/CLASS/file.wav, or name the label "
                        "in the file names with --label-pattern")
    clips = ClipTable()
    skipped = [skip_entry(None, "no_class_folder", "lies directly in the input folder: move it into its class's "
                          "folder (FOLDER/CLASS/file.wav)", path.name) for path in loose]
    if labels is None:
        classes = {path.relative_to(folder).parts[0] for path in paths}
        for empty in sorted(child.name for child in folder.iterdir() if child.is_dir() and child.name not in classes):
            print(f"WARNING: class folder '{empty}' holds no audio file ({', '.join(suffixes)}): no clip of that class")
    for path in paths:  # no rows here: a skipped file is named by its path
        relative = path.relative_to(folder).as_posix()
        group_match = groups.search(path.name) if groups else None
        item = relative if fold_by == FOLD_BY_FILE else (group_match["group"] or "" if group_match else "")
        label_match = labels.search(path.name) if labels else None
        label = relative.split("/")[0] if labels is None else (label_match["label"] or "" if label_match else "")
        clip = clip_entry(None, relative, path, label, item, {"file": relative, "label": label, "group": item})
        if not item:
            skipped.append(skip_entry(clip, "no_item", f"--group-pattern {group_pattern!r} finds no group in the "
                                                       "name"))
        elif not label:
            skipped.append(skip_entry(clip, "no_label", f"--label-pattern {label_pattern!r} finds no label in the "
                                                        "name"))
        else:
            clips.add(clip)
    return clips, skipped, file_stats(paths, folder)


# ----------------------------------------------------------------------------------------------------------------
# Labels to targets

def parse_class_order(text):
    """--classes 'a,b,c' -> ['a', 'b', 'c'] (None for none given); an empty name or a class named twice is
    refused."""
    if not text:
        return None
    names = [unicodedata.normalize("NFC", name.strip()) for name in text.split(",")]
    if "" in names:
        raise XvalError(f"--classes {text!r} has an empty name (two commas in a row, or one at an end): list the "
                        "class names separated by single commas, e.g. --classes happy,neutral")
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise XvalError(f"--classes names {', '.join(twice)} more than once: list each class once (the order of "
                        "--classes is the order of the model's outputs)")
    return names


def repeated_clips(clips):
    """Skip ('duplicate_row') each clip of the ClipTable clips that lists the same audio file (links resolved) with
    the same label and foldable item as an earlier one; the same file with another label or foldable item is
    refused, since a clip has one label and belongs to one foldable item (else it could sit in training and test at
    once)."""
    found = clips.query("SELECT real, seq, row, file, label, item FROM clips WHERE status IS NULL AND real IN "
                        "(SELECT real FROM clips WHERE status IS NULL GROUP BY real HAVING COUNT(*) > 1) "
                        "ORDER BY real, seq")
    repeats = []
    for _, group in itertools.groupby(found, key=lambda entry: entry[0]):
        _, _, row, file, label, item = next(group)
        for _, seq, again_row, again_file, again_label, again_item in group:
            if (again_label, again_item) != (label, item):
                first, again = clip_name(row, as_text(file)), clip_name(again_row, as_text(again_file))
                raise XvalError(f"{first} and {again} list the same audio file with label {as_text(label)!r} / "
                                f"{as_text(again_label)!r} and foldable item {as_text(item)!r} / "
                                f"{as_text(again_item)!r}: a clip has one label and belongs to one foldable item; "
                                "fix the table")
            repeats.append((f"repeats {clip_name(row, as_text(file))}", seq))
    clips.update("UPDATE clips SET status = 'duplicate_row', reason = ? WHERE seq = ?", repeats)


def clip_name(row, file):
    """How a message names a clip: 'row 12 (a.wav)' where the table has rows, else its file."""
    return f"row {row} ({file})" if row is not None else file


def finite_number(label):
    """A label (as_blob's bytes) as a finite float, or None."""
    try:
        value = float(as_text(label))
    except (TypeError, ValueError):
        return None
    return value if np.isfinite(value) else None


def label_targets(clips, target_kind, class_names=None):
    """Set the target of each kept clip of the ClipTable clips, or skip it; returns the class names (None for
    regression). Classification: the class index of the label among class_names (default: the sorted distinct
    labels); regression: the label as a finite number."""
    clips.query("UPDATE clips SET status = 'empty_label', reason = 'the label cell is empty' "
                "WHERE status IS NULL AND label = x''")
    if target_kind == "regression":
        clips.database.create_function("finite_number", 1, finite_number, deterministic=True)
        clips.query("UPDATE clips SET target = finite_number(label) WHERE status IS NULL")
        clips.query("UPDATE clips SET status = 'bad_label', reason = quoted(label) || ' is not a finite number' "
                    "WHERE status IS NULL AND target IS NULL")
        return None
    if class_names is not None:
        names = set(map(as_blob, class_names))
        clips.database.create_function("is_class", 1, lambda blob: blob in names, deterministic=True)
        clips.query("UPDATE clips SET status = 'bad_label', reason = quoted(label) || ? "
                    "WHERE status IS NULL AND NOT is_class(label)",
                    (f" is not one of the classes {', '.join(class_names)}",))
    class_names = list(class_names) if class_names else kept_labels(clips)
    number = {as_blob(name): index for index, name in enumerate(class_names)}
    clips.database.create_function("class_number", 1, number.get, deterministic=True)
    clips.query("UPDATE clips SET target = class_number(label) WHERE status IS NULL")
    return class_names


def kept_labels(clips):
    """The distinct labels of the kept clips of the ClipTable clips, sorted."""
    return [as_text(label) for (label,) in clips.query("SELECT DISTINCT label FROM clips WHERE status IS NULL "
                                                       "ORDER BY label")]


def kept_items(clips):
    """{foldable item: (clips, pieces)} of the kept clips of the ClipTable clips, in sorted order."""
    return {as_text(item): (count, pieces) for item, count, pieces in clips.query(
        "SELECT item, COUNT(*), SUM(pieces) FROM clips WHERE status IS NULL GROUP BY item ORDER BY item")}


def target_rows(values, target_kind, class_count):
    """Targets of clips: one-hot float32 (n, classes) of class indices, or float32 (n,) of numbers."""
    if target_kind == "classification":
        return np.eye(class_count, dtype=np.float32)[np.asarray(values, dtype=int)].reshape(len(values), class_count)
    return np.asarray(values, dtype=np.float32).reshape(len(values))


# ----------------------------------------------------------------------------------------------------------------
# Features of many files, in worker processes

def features_of_chunk(task):
    """Features of a chunk of files. task: {paths, length, feature_settings, plan} (plan: feat_analysis's).

    Returns (float32 (pieces of the readable files, frames, bins), [per file: pieces (0 if unreadable), None or
    why it was skipped, native rate or None, duration in s or None, SHA-256 of its bytes (32 bytes) or None])."""
    settings, pieces, outcomes = task["feature_settings"], [], []
    for path in task["paths"]:
        try:
            signals, native_rate, duration = feat_analysis.clip_signals(path, task["length"])
            pieces.append(signals)
            digest = hashlib.sha256(Path(path).read_bytes()).digest()  # tells copies of one recording apart
            outcomes.append((len(signals), None, native_rate, duration, digest))
        except (RuntimeError, OSError, ValueError, EOFError) as error:
            outcomes.append((0, f"cannot be read: {error_text(error)}", None, None, None))
    samples = task["length"]["clip_samples" if task["length"]["mode"] == "fixed" else "window_samples"]
    if not pieces:
        frames = feat_analysis.n_frames(samples, settings["hop_length"])
        return np.zeros((0, frames, feat_analysis.n_bins(settings)), np.float32), outcomes
    features = feat_analysis.extract_features_batch(np.concatenate(pieces), task["length"]["sample_rate"], settings,
                                                    task["plan"])
    return features, outcomes


def error_text(error):
    """The first line of an exception's message without soundfile's "Error opening '...': " prefix."""
    text = getattr(error, "error_string", None) or str(error) or type(error).__name__
    return text.splitlines()[0]


def _prepare_worker():
    """Pool initializer: one BLAS thread per worker (the workers are the parallelism; more threads only spin),
    and glibc's malloc told to keep freed memory (each file's temporary arrays would otherwise come fresh from
    the kernel)."""
    threadpoolctl.threadpool_limits(limits=1)
    # -0.51 s of a 2.75 s demo preprocessing, median of 7 (benchmarks/tweaks.py: a_mallopt)
    set_malloc_thresholds(KEEP_FREED_BYTES, 4 * KEEP_FREED_BYTES)


def _pool_context():
    """fork where available (workers inherit the loaded modules and start at once), else the default."""
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else None)


def feature_tasks(clips, length, feature_settings, plan):
    """(seqs, features_of_chunk's task) of the kept clips of the ClipTable clips, CHUNK_FILES files a task, in
    table order (the chunks are the same whatever --jobs: PAGE_CLIPS is a multiple of CHUNK_FILES)."""
    for page in clips.pages("path"):
        for start in range(0, len(page), CHUNK_FILES):
            chunk = page[start:start + CHUNK_FILES]
            yield [seq for seq, _ in chunk], {"paths": [as_text(path) for _, path in chunk], "length": length,
                                              "feature_settings": feature_settings, "plan": plan}


def compute_features(clips, length, feature_settings, jobs, label, sink):
    """Features of the kept clips of the ClipTable clips in order, over jobs processes with a progress bar,
    appended to the binary file sink as they come (float32, C order), so that memory does not grow with the
    corpus. Each clip gets what was found (pieces, native_rate, duration, digest, first_piece: its first row in
    sink), or is skipped as unreadable. Returns (frames, bins) and how many clips were read or tried."""
    plan = feat_analysis.analysis_plan(length["sample_rate"], feature_settings)
    total = clips.kept()
    tasks = feature_tasks(clips, length, feature_settings, plan)
    jobs = max(1, min(jobs, -(-total // CHUNK_FILES)))
    shape, first_piece = None, 0
    with tqdm(total=total, unit="file", desc=label, disable=None, file=sys.stderr) as progress:
        with contextlib.ExitStack() as stack:
            if jobs == 1:
                stack.enter_context(threadpoolctl.threadpool_limits(limits=1))
                results = ((seqs, features_of_chunk(task)) for seqs, task in tasks)
            else:
                pool = stack.enter_context(_pool_context().Pool(jobs, initializer=_prepare_worker))
                results = in_order(pool, tasks, IN_FLIGHT_PER_JOB * jobs)
            for seqs, (features, outcomes) in results:
                np.ascontiguousarray(features, dtype=np.float32).tofile(sink)
                shape = features.shape[1:]
                found, unreadable = [], []
                for seq, (pieces, reason, native_rate, duration, digest) in zip(seqs, outcomes):
                    if reason is None:
                        found.append((pieces, native_rate, duration, digest, first_piece, seq))
                        first_piece += pieces
                    else:
                        unreadable.append((reason, seq))
                clips.update("UPDATE clips SET pieces = ?, native_rate = ?, duration = ?, digest = ?, first_piece = ? "
                             "WHERE seq = ?", found)
                clips.update("UPDATE clips SET status = 'unreadable', reason = ? WHERE seq = ?", unreadable)
                progress.update(len(outcomes))
    return shape, total


def in_order(pool, tasks, in_flight):
    """(seqs, features_of_chunk(task)) of tasks' (seqs, task) computed by pool, in order, at most in_flight
    submitted ahead: the tasks are read from the table as the results come (the table is not thread-safe, so not
    by the pool's feeder thread)."""
    pending = collections.deque()
    for seqs, task in tasks:
        pending.append((seqs, pool.apply_async(features_of_chunk, (task,))))
        if len(pending) >= in_flight:
            seqs, result = pending.popleft()
            yield seqs, result.get()
    while pending:
        seqs, result = pending.popleft()
        yield seqs, result.get()


# ----------------------------------------------------------------------------------------------------------------
# Settings, fingerprint, output

def check_settings(config, feature_type, jobs, where):
    """Raise XvalError (one line naming the config file and key) when the settings cannot give features."""
    if jobs is not None and jobs < 1:
        raise XvalError(f"--jobs {jobs} must be at least 1")
    problem = feat_analysis.settings_problem(config["preprocessing"], config["features"], feature_type)
    if problem:
        raise XvalError(f"{where} {problem}")


def input_fingerprint(stats, entries, preprocessing_settings, feature_settings, target):
    """sha256 (hex) of the settings, the table (entries: every clip's [file, label, foldable item], as
    ClipTable.entries gives them) and every input file's relative name, size and modification time (stats: an
    iterable of [name, size, mtime]): of json.dumps(content, sort_keys=True, default=str), hashed a list element at
    a time (the same bytes; a corpus's table as one string was tens of MB more at its peak)."""
    lists = {"files": stats, "table": entries}
    content = {"format": FORMAT_VERSION, "target": target, "preprocessing": preprocessing_settings,
               "features": feature_settings, **{key: f"\0{key}\0" for key in lists}}
    rest, digest = json.dumps(content, sort_keys=True, default=str), hashlib.sha256()
    for key in sorted(lists):  # the order sort_keys writes them in
        before, rest = rest.split(json.dumps(content[key]), 1)
        digest.update(before.encode("utf-8"))
        texts, separator = ["["], ""
        for element in lists[key]:
            texts.append(separator + json.dumps(element, default=str))
            separator = ", "
            if len(texts) == HASHED_PER_UPDATE:
                digest.update("".join(texts).encode("utf-8"))
                texts = []
        digest.update("".join(texts + ["]"]).encode("utf-8"))
    digest.update(rest.encode("utf-8"))
    return digest.hexdigest()


def save_npy(temp, array):
    """np.save (no pickle) of array to the file temp."""
    with open(temp, "wb") as handle:
        np.save(handle, array, allow_pickle=False)


def copy_rows(temp, raw, runs, shape, items):
    """Write the .npy file temp of float32 rows (frames, bins) = shape copied from the raw file raw (float32 rows
    of that shape, one after the other): runs [(first row, rows, item number)], in order. One piece at a time, at
    most COPY_BYTES, so memory stays flat whatever the corpus. Returns float64 (items, 2, bins): each item's
    feature_sums, added up on the way."""
    row_bytes = int(np.prod(shape)) * 4
    total = sum(count for _, count, _ in runs)
    sums = np.zeros((items, 2, shape[-1]))
    with open(raw, "rb") as source, open(temp, "wb") as target:
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)), "fortran_order": False,
                  "shape": (total, *shape)}
        np.lib.format.write_array_header_1_0(target, header)
        step = max(1, COPY_BYTES // row_bytes)  # rows per read
        for first, count, item in runs:
            for start in range(first, first + count, step):
                source.seek(start * row_bytes)
                piece = source.read(min(first + count - start, step) * row_bytes)
                target.write(piece)
                sums[item] += feature_sums(np.frombuffer(piece, np.float32).reshape(-1, *shape))
    return sums


def row_runs(first, pieces, numbers):
    """[(first row, rows, item number)] of clips' rows in the raw features: int arrays (clips,) of their first row,
    rows and item numbers, in dataset order; consecutive clips of one item whose rows follow each other are one
    run."""
    if not len(first):
        return []
    starts = np.flatnonzero(np.r_[True, (first[1:] != first[:-1] + pieces[:-1]) | (numbers[1:] != numbers[:-1])])
    ends = np.r_[starts[1:], len(first)]
    rows = np.r_[0, np.cumsum(pieces)]
    return [(int(first[start]), int(rows[end] - rows[start]), int(numbers[start])) for start, end in zip(starts, ends)]


def dataset_order(clips, items):
    """int64 arrays (clips,) first_piece, pieces, item number and float64 target of the kept clips of the ClipTable
    clips in dataset order: items in sorted order (numbered from 0 as in items), each item's clips in table order.
    Arrays, not a list of clips: 28 bytes a clip."""
    number = {as_blob(item): index for index, item in enumerate(items)}
    rows = clips.query("SELECT first_piece, pieces, item, target FROM clips WHERE status IS NULL ORDER BY item, seq")
    columns = [np.empty(clips.kept(), dtype) for dtype in (np.int64, np.int64, np.int32, np.float64)]
    for index, (first, count, item, target) in enumerate(rows):
        columns[0][index], columns[1][index], columns[2][index], columns[3][index] = first, count, number[item], target
    return columns


def write_dataset(paths, clips, raw, shape, target_kind, class_names, metadata, windows, rows):
    """Write a dataset in format 2 (utility_functions): predictors (copied from the raw features file raw, whose
    rows clip.first_piece ... hold a clip's (frames, bins) = shape pieces), sums, target, (in windows mode each
    window's clip), items in sorted order with their clips in table order (clips: the ClipTable, its kept clips);
    then the metadata (its rows: {key: an iterable of records}, lists written a record at a time), then the index
    (last: without it the dataset is incomplete and refused). Every array is written under a temporary name first:
    a dataset of the same name (format 1 or 2) stays whole until all of them are, and a failure (a full disk, a
    kill) while they are written leaves it as it was."""
    counts = kept_items(clips)
    items = list(counts)
    first_pieces, pieces, numbers, targets = dataset_order(clips, items)
    spans, first = [], 0
    for item in items:
        spans.append([item, first, first + counts[item][1]])
        first += counts[item][1]
    kinds = ("predictors", "sums", "target") + (("clips",) if windows else ())
    temps = {kind: temp_path_for(paths[kind]) for kind in kinds}
    try:
        with writing(paths["predictors"]):
            sums = copy_rows(temps["predictors"], raw, row_runs(first_pieces, pieces, numbers), shape, len(items))
        with writing(paths["sums"]):
            save_npy(temps["sums"], sums)
        targets = target_rows(targets, target_kind, len(class_names or ()))
        with writing(paths["target"]):
            save_npy(temps["target"], np.repeat(targets, pieces, axis=0))
        if windows:
            clip_numbers = np.concatenate([np.arange(counts[item][0]) for item in items])
            with writing(paths["clips"]):
                save_npy(temps["clips"], np.repeat(clip_numbers.astype(np.int32), pieces))
        # two preprocessings of one name (--force, or two terminals) commit one after the other, each whole: without
        # the mutex the files could end up half from one and half from the other
        with file_mutex(paths["index"].with_name(f".{paths['index'].name}.mutex")):
            for kind in ("index", "metadata"):  # from here to the new index (a few renames) the dataset is incomplete
                paths[kind].unlink(missing_ok=True)
            for kind, temp in temps.items():
                with writing(paths[kind]):
                    commit_temp_file(temp, paths[kind])
            for kind in ("predictors_npz", "target_npz", "clips_npz") + (() if windows else ("clips",)):
                paths[kind].unlink(missing_ok=True)
            atomic_write_json(paths["metadata"], metadata, rows=rows)
            index = {"format": STORAGE_FORMAT, "examples": first, "items": spans, "windows": windows}
            atomic_write_json(paths["index"], dict(index, dataset_fingerprint=written_fingerprint(paths, index)))
    finally:
        for temp in temps.values():
            with contextlib.suppress(OSError):
                temp.unlink()


def written_fingerprint(paths, index):
    """utility_functions.dataset_fingerprint of the arrays just put in place under paths (index: the index about
    to be written, whose spans name the items): recorded in the index, so that a rerun notices arrays edited since.
    One pass over the arrays, the predictors read (FileRows), not mapped."""
    spans = {item: (first, end) for item, first, end in index["items"]}
    dataset = paths["index"].name.removesuffix("_index.json")
    predictors, targets = read_rows(paths["predictors"], dataset, spans), map_array(paths["target"], dataset, spans)
    ids = map_array(paths["clips"], dataset, spans) if index["windows"] else \
        {item: np.arange(end - first, dtype=np.int32) for item, (first, end) in spans.items()}
    return dataset_fingerprint(predictors, targets, ids)


def readable_problem(features_folder, dataset):
    """Why an existing dataset cannot be read as a routine reads it (a damaged or missing file), or None: its
    arrays, index and clips opened (memory-mapped: their headers and sizes), and its sums checked against the
    predictors (one pass over them)."""
    try:
        predictors, targets = load_dataset(features_folder, dataset, scan=True)
        clip_ids = load_clip_ids(features_folder, dataset, predictors)
        check_item_sums(features_folder, dataset, predictors)
        recorded = recorded_fingerprint(features_folder, dataset)
    except XvalError as error:
        return str(error).split(": preprocess", 1)[0]
    if recorded and dataset_fingerprint(predictors, targets, clip_ids) != recorded:
        return "its arrays were edited since it was preprocessed (their content is not what it wrote)"
    return None


def existing_metadata(paths):
    """The metadata of the dataset at paths when all its files are there (a complete dataset, format 1 or 2), else
    None. Its lists that grow with the corpus (GROWING_LISTS) are read as their lengths (see
    metadata_without_lists): a rerun uses the clips' count, and the input files only to explain a refusal
    (recorded_input_files)."""
    if stored_format(paths) is None or not paths["metadata"].is_file():
        return None
    try:
        metadata = metadata_without_lists(paths["metadata"])
        if metadata is None:  # laid out otherwise (not written by atomic_write_json): read whole
            metadata = metadata_read_whole(paths["metadata"])
            if isinstance(metadata, dict):
                metadata.update({key: len(metadata[key]) for key in GROWING_LISTS
                                 if isinstance(metadata.get(key), list)})
    except (XvalError, OSError, ValueError):
        return None
    return metadata if isinstance(metadata, dict) else None


def metadata_without_lists(path):
    """The metadata at path with each top-level list of GROWING_LISTS read as its length, a line at a time (at 200x
    the file is 100 MB: reading it whole took 227 MB at the start of a rerun). Reads what atomic_write_json writes
    (indent 1: a top-level key begins a line after one space, an element of a top-level list after two, its other
    lines after three or more, or it is one line); None for a file laid out otherwise. ValueError for bad JSON."""
    decoder, kept, lengths, listed = json.JSONDecoder(), [], {}, None
    with open(path, encoding="utf-8") as handle:
        if handle.readline() != "{\n":
            return None
        for line in handle:
            if line.rstrip("\n") == "}":  # the end of the file's object
                kept.append(line)
            elif line.startswith(' "'):
                key, end = decoder.raw_decode(line, 1)
                listed = key if key in GROWING_LISTS and line[end:].startswith(": [") else None
                if listed is None:
                    kept.append(line)
                else:
                    lengths[key] = 0
            elif listed is None:
                kept.append(line)
            elif line.startswith("  ") and line[2] not in " ]}":
                lengths[listed] += 1
    text = "".join(kept).rstrip()
    if not text.endswith("}"):
        return None
    text = text[:-1].rstrip().rstrip(",")
    metadata = json.loads("{\n" + text + "\n}")
    return dict(metadata, **lengths) if isinstance(metadata, dict) else None


def metadata_read_whole(path):
    """The metadata at path read in one piece, its clip records as None (they are not used on a rerun)."""
    return read_json(path, lambda record: None if "sample_rate_found" in record else record)


def recorded_input_files(paths):
    """The input files' [name, size, mtime] recorded in the metadata at paths (None if it has none): read whole, so
    only to explain why a dataset is not reused."""
    metadata = metadata_read_whole(paths["metadata"])
    files = metadata.get("input_files") if isinstance(metadata, dict) else None
    return files if isinstance(files, list) else None


def changed_files(was, now):
    """What differs between two file_stats lists, as words: the first difference, and how many more; [] if none.
    was: the metadata's input_files (absent in datasets written before they were kept: [] then)."""
    was, now = ({name: (size, mtime) for name, size, mtime in stats} for stats in (was, now))
    found = []
    for name in sorted(set(was) | set(now)):
        if name not in now:
            found.append(f"input file {name} is no longer among the inputs")
        elif name not in was:
            found.append(f"new input file {name}")
        elif was[name][0] != now[name][0]:
            found.append(f"input file {name} changed size ({was[name][0]} -> {now[name][0]} bytes)")
        elif was[name][1] != now[name][1]:
            found.append(f"input file {name} has a new modification time (the same size: touched or copied again?)")
    return [found[0] + (f" (and {len(found) - 1} more)" if len(found) > 1 else "")] if found else []


def as_made_despite_idle_settings(metadata, table, pre, feature_settings, target_kind):
    """(the dataset's own fingerprint, ["[section] key", ...] that changed) when this run differs from the dataset
    (its metadata) only in settings that idle with these (feat_analysis.idle_settings: another feature type's keys,
    another clip mode's lengths), else (None, [])."""
    as_made, changes = {}, []
    sections = (("preprocessing", "preprocessing_settings", pre), ("features", "feature_settings", feature_settings))
    for (section, recorded, now), idle in zip(sections, feat_analysis.idle_settings(pre, feature_settings)):
        was = metadata.get(recorded)
        if not isinstance(was, dict):
            return None, []
        as_made[section] = {**now, **{key: was[key] for key in idle if key in was}}
        changes += [f"[{section}] {key}" for key in sorted(idle) if key in was and was[key] != now[key]]
    fingerprint = input_fingerprint(table["stats"], table["clips"].entries(), as_made["preprocessing"],
                                    as_made["features"], target_kind)
    return (fingerprint, changes) if fingerprint == metadata.get("fingerprint") else (None, [])


def made_otherwise(metadata, fingerprint, class_names, feature_settings, pre, target_kind, source, stats,
                   recorded_files=None):
    """What differs between an existing dataset (its metadata) and this run ([] when it can be reused): the
    fingerprint covers settings, table and input files; the class order asked for by --classes is compared too.
    recorded_files: a function giving the input files the dataset was made from (recorded_input_files), called
    to name a changed file; None: not named (--force replaces the dataset without saying why)."""
    if metadata.get("fingerprint") == fingerprint and class_names in (None, metadata.get("class_names")):
        return []
    differences = []
    for section, was, now in (("features", metadata.get("feature_settings"), feature_settings),
                              ("preprocessing", metadata.get("preprocessing_settings"), pre)):
        was = was if isinstance(was, dict) else {}
        differences += [f"[{section}] {key} {was.get(key)!r} -> {value!r}" for key, value in now.items()
                        if was.get(key) != value]
    if metadata.get("source") != source:
        differences.append(f"input {metadata.get('source')!r} -> {source!r}")
    if metadata.get("target_kind", target_kind) != target_kind:
        differences.append(f"target {metadata['target_kind']} -> {target_kind}")
    if class_names not in (None, metadata.get("class_names")):
        differences.append(f"classes {metadata.get('class_names')} -> {class_names}")
    was = recorded_files() if recorded_files and metadata.get("source") == source else None  # else other roots
    if was is not None:
        differences += changed_files(was, stats)
    return differences or ["the table (files, labels, foldable items) or the input files (names, sizes, "
                           "modification times)"]


def nothing_usable(table, tried, skipped):
    """The one line that says why a table gave no usable clip, with an example. tried: how many clips features
    were computed for (0 before)."""
    unreadable = [entry for entry in skipped if entry["kind"] == "unreadable"]
    if tried and len(unreadable) == tried:
        example = unreadable[0]
        return (f"none of the {len(unreadable)} {table.get('noun', 'audio files')} in {table['source']} can be read "
                f"(e.g. {example['file']}: {example['reason']}): replace them with intact copies")
    if not skipped:
        return f"{table['source']} lists no clip: add rows (file, label, foldable item)"
    example = skipped[0]
    return (f"no usable clip in {table['source']}: all {len(skipped)} rows were skipped (e.g. {row_label(example)}"
            f"{example['file']}: {example['reason']}): fix the table or the audio")


def single_clip_items(clips):
    """Skip ('single_clip_item') the kept clips of the ClipTable clips whose foldable item has no other."""
    clips.query("UPDATE clips SET status = 'single_clip_item', reason = 'foldable item ' || quoted(item) || "
                "' has no other clip (a typo in its cell?)' WHERE status IS NULL AND item IN "
                "(SELECT item FROM clips WHERE status IS NULL GROUP BY item HAVING COUNT(*) = 1)")


def skipped_clips(clips):
    """skip_entry of each clip of the ClipTable clips that the pipeline skipped, in table order."""
    return [skip_entry(row, kind, reason, as_text(file)) for row, file, kind, reason in
            clips.query("SELECT row, file, status, reason FROM clips WHERE status IS NOT NULL ORDER BY seq")]


def identical_audio(clips):
    """The metadata's names (identical_names) of each group of kept clips of the ClipTable clips whose files hold the
    same bytes (copies of one recording under two names), each group in table order, the groups in the order of
    their first clip: under two foldable items one recording can sit in training and test at once. A generator:
    a corpus copied 200 times is one group a file, 288,000 names."""
    found = clips.query(  # window functions: two sorts (a join of the groups scanned the table once a group)
        "SELECT first, row, file, item FROM (SELECT MIN(seq) OVER same AS first, COUNT(*) OVER same AS copies, seq, "
        "row, file, item FROM clips WHERE status IS NULL WINDOW same AS (PARTITION BY digest)) WHERE copies > 1 "
        "ORDER BY first, seq")
    for _, group in itertools.groupby(found, key=lambda entry: entry[0]):
        yield identical_names((row, as_text(file), as_text(item)) for _, row, file, item in group)


def noted(values, notes, note):
    """values, one at a time, appending note(value) of each to the list notes as it passes."""
    for value in values:
        notes.append(note(value))
        yield value


def identical_names(group):
    """['row 3 (a.wav), foldable item spk0', ...] of (row, file, foldable item) triples."""
    return [f"{clip_name(row, file)}, foldable item {item!r}" for row, file, item in group]


def audio_found(clips, durations):
    """{"sample_rates": {rate in Hz: clips}, "seconds": {"min", "median", "max"}} of the kept clips of the
    ClipTable clips; durations: theirs in s (kept_durations)."""
    rates = {str(rate): count for rate, count in clips.query(
        "SELECT native_rate, COUNT(*) FROM clips WHERE status IS NULL GROUP BY native_rate ORDER BY native_rate")}
    return {"sample_rates": rates,
            "seconds": {"min": float(np.min(durations)), "median": float(np.median(durations)),
                        "max": float(np.max(durations))}}


def kept_durations(clips):
    """float64 (kept clips,): each kept clip's duration in s, in table order."""
    return np.fromiter((duration for (duration,) in clips.query(
        "SELECT duration FROM clips WHERE status IS NULL ORDER BY seq")), np.float64)


def clip_records(clips, windows):
    """The metadata's record of each kept clip of the ClipTable clips, in table order: its row's columns, its
    windows (in windows mode), the sample rate found and its duration in s."""
    for record, pieces, native_rate, duration in clips.query(
            "SELECT record, pieces, native_rate, duration FROM clips WHERE status IS NULL ORDER BY seq"):
        yield dict(json.loads(record), **({"windows": pieces} if windows else {}), sample_rate_found=native_rate,
                   seconds=round(duration, 4))


# ----------------------------------------------------------------------------------------------------------------
# The pipeline

def build_dataset(table, dataset, config, target_kind, class_names=None, feature_type=None, jobs=None, force=False,
                  quiet=False, where="config.ini", metadata_extra=None, kinds=None):
    """Make (or reuse) the dataset `dataset` from a table of clips; returns a summary dict.

    table: {"clips": a ClipTable, "skipped": [skip_entry], "stats": an iterable of [name, size, mtime] (FileStats),
    "source": what was read, "regroup": how to give the front end more foldable items (the end of a refusal's
    line), "fold_by": the column of the foldable items ('file': speaker-dependent)}. config: load_config's dict.
    class_names: the classes in order (default: the sorted distinct labels). metadata_extra: more metadata keys
    from the front end; kinds: its own skip kinds' labels. Raises XvalError for a user's mistake. The table's
    clips get what was found for them (target, pieces, ..., or why they were skipped) in the table: a table goes
    through the pipeline once.
    Summary keys: dataset, reused, clips, items, frames, bins, skipped, paths, seconds, fingerprint, audio (and,
    when computed: identical_audio as [(the names of a group's first three clips, its clips)], see
    identical_audio; the metadata holds all their names).
    """
    started = time.perf_counter()
    if not DATASET_NAME.match(dataset or "") or len(dataset) > DATASET_NAME_LENGTH:
        raise XvalError(f"dataset name {dataset!r} must start with an ASCII letter or digit and hold only ASCII "
                        f"letters, digits, '_', '.' and '-', at most {DATASET_NAME_LENGTH} characters (it names "
                        "files): fix --dataset")
    if target_kind not in TARGET_KINDS:
        raise XvalError(f"target {target_kind!r} is not one of {', '.join(TARGET_KINDS)}: fix --target")
    feature_type = feature_type or config["features"]["type"]
    check_settings(config, feature_type, jobs, where)
    pre = dict(config["preprocessing"])
    feature_settings = dict(config["features"], type=feature_type)
    features_folder = Path(config["paths"]["features_folder"])
    if features_folder.exists() and not features_folder.is_dir():
        raise XvalError(f"{where} [paths] features_folder {features_folder} is a file, not a folder: point it to a "
                        "folder (it is made if missing)")
    with writing(features_folder):
        features_folder.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(features_folder)
    paths = dataset_paths(features_folder, dataset)
    fingerprint = input_fingerprint(table["stats"], table["clips"].entries(), pre, feature_settings, target_kind)
    kinds = {**SKIP_KINDS, **(kinds or {})}
    metadata = existing_metadata(paths)
    as_made, idle_changes = as_made_despite_idle_settings(metadata, table, pre, feature_settings, target_kind) \
        if metadata else (None, [])
    if as_made and as_made != fingerprint:
        if not quiet:
            print(f"{dataset}: {', '.join(idle_changes)} changed, which {feature_type} features of "
                  f"{pre['clip_mode']} clips do not read: the dataset as made is reused")
        fingerprint = as_made
    differences = made_otherwise(metadata, fingerprint, class_names, feature_settings, pre, target_kind,
                                 table["source"], table["stats"],
                                 None if force else lambda: recorded_input_files(paths)) if metadata else None
    if differences and not force:
        raise XvalError(f"dataset '{dataset}' in {features_folder} was made from other inputs or settings "
                        f"({'; '.join(differences)}): replacing it may change the features experiments built on it "
                        "were trained on (those no longer resume); preprocess under another --dataset name, or pass "
                        "--force to replace it")
    if metadata and not differences and not force and stored_format(paths) == 1 and not quiet:
        print(f"{dataset}: stored as .npz archives (format 1), which every fold process reads into a copy of its "
              "own: writing it again as memory-mapped .npy files (format 2; the same features, the same dataset "
              "fingerprint, so its experiments resume)")
    reusable = metadata and not differences and not force and stored_format(paths) == 2
    damage = readable_problem(features_folder, dataset) if reusable else None
    if damage and not quiet:
        print(f"{dataset}: inputs and settings unchanged, but {damage}: computing it again")
    if reusable and not damage:
        summary = {"dataset": dataset, "reused": True, "clips": metadata["clips"], "items": metadata["items"],
                   "frames": metadata["frames"], "bins": metadata["bins"], "skipped": metadata["skipped"],
                   "paths": paths, "seconds": time.perf_counter() - started, "fingerprint": fingerprint,
                   "audio": metadata.get("audio_found"), "fold_by": metadata.get("foldable_item")}
        if not quiet:
            print(f"{dataset}: inputs and settings unchanged, reusing {paths['predictors']} and "
                  f"{paths['target'].name} (--force recomputes)")
        return summary

    clips = table["clips"]
    repeated_clips(clips)
    class_names = label_targets(clips, target_kind, class_names)
    if not clips.kept():
        raise XvalError(nothing_usable(table, 0, table["skipped"] + skipped_clips(clips)))
    lone = one_item_classes(clips) if target_kind == "classification" and table["fold_by"] != FOLD_BY_FILE else {}
    if lone and len(lone) == len(kept_labels(clips)) and len(kept_items(clips)) > 1:
        shown = ", ".join(f"{label}: {item}" for label, item in list(lone.items())[:4]) + (", ..." if len(lone) > 4
                                                                                        else "")
        raise XvalError(f"every class lies in one foldable item ({shown}): no test class would ever be seen in "
                        f"training; are the labels the '{table['fold_by']}' column (or pattern) again? "
                        f"{table['regroup']}")
    length = feat_analysis.length_settings(pre)
    cannot = unwritable(features_folder)
    if cannot:
        raise XvalError(f"cannot write the features of dataset '{dataset}' into {features_folder} ({cannot}): "
                        "make it writable, or point [paths] features_folder elsewhere")
    raw = temp_path_for(features_folder / f"{dataset}_features.raw")  # every clip's features, until written
    try:
        with writing(raw), open(raw, "wb") as sink:
            shape, tried = compute_features(clips, length, feature_settings, jobs or os.cpu_count() or 1, dataset,
                                            sink)
        if table["fold_by"] != FOLD_BY_FILE:
            single_clip_items(clips)
        skipped = table["skipped"] + skipped_clips(clips)
        if not clips.kept():
            raise XvalError(nothing_usable(table, tried, skipped))
        present, counts = kept_labels(clips), kept_items(clips)
        if target_kind == "classification" and len(present) < 2:
            raise XvalError(f"only one class ({present[0]}) has usable clips in {table['source']}: classification "
                            "needs two or more; check the labels (and --classes), or use --target regression for "
                            "numbers")
        if len(counts) < 2:
            raise XvalError(f"only one foldable item ({next(iter(counts))}, by '{table['fold_by']}') has usable clips "
                            f"in {table['source']}: cross-validation by foldable item needs two or more; "
                            f"{table['regroup']}")
        skipped.sort(key=lambda entry: (entry["row"] if entry["row"] is not None else -1, entry["file"] or ""))
        frames, bins = shape
        items = list(counts)
        windows = length["mode"] == "windows"
        durations = kept_durations(clips)
        metadata = {
            "dataset": dataset, "target": target_kind, "target_kind": target_kind, "class_names": class_names,
            "source": table["source"],
            "foldable_item": table["fold_by"], "speaker_independent": table["fold_by"] != FOLD_BY_FILE,
            "items": items, "clips_per_item": {item: count for item, (count, _) in counts.items()},
            "feature_settings": feature_settings, "preprocessing_settings": pre, "sample_rate": pre["sample_rate"],
            "length": length, "frames": frames, "bins": bins, "skipped": skipped,
            "audio_found": audio_found(clips, durations), "fingerprint": fingerprint, "format_version": FORMAT_VERSION,
            **(metadata_extra or {}),
        }
        if "clip_samples" in length:
            metadata["clip_samples"] = length["clip_samples"]
        identical = []  # (a group's first three names, its clips), noted as the metadata gets the whole groups
        write_dataset(paths, clips, raw, shape, target_kind, class_names, metadata, windows,
                      {"clips": clip_records(clips, windows), "input_files": table["stats"],
                       "identical_audio": noted(identical_audio(clips), identical,
                                                lambda group: (group[:3], len(group)))})
        labels = Counter({as_text(label): count for label, count in clips.query(
            "SELECT label, COUNT(*) FROM clips WHERE status IS NULL GROUP BY label")})
        summary = {"dataset": dataset, "reused": False, "clips": clips.kept(), "items": items, "frames": frames,
                   "bins": bins, "skipped": skipped, "paths": paths, "seconds": time.perf_counter() - started,
                   "fingerprint": fingerprint, "audio": metadata["audio_found"], "fold_by": table["fold_by"],
                   "windows": sum(pieces for _, pieces in counts.values()) if windows else None,
                   "identical_audio": identical,
                   "classes_without_clips": [name for name in class_names or () if name not in present],
                   "class_counts": {name: labels[name] for name in class_names or ()},
                   "cut": cut_clips(durations, length),
                   "one_item_classes": one_item_classes(clips) if lone else {},
                   "case_variants": {"labels": case_variants(present) if target_kind == "classification" else [],
                                     "items": case_variants(items)}}
        if not quiet:
            print(summary_text(summary, feature_type, table["source"], kinds))
        return summary

    finally:
        with contextlib.suppress(OSError):  # never made (a read-only folder)
            raw.unlink()


def cut_clips(durations, length):
    """(how many clips are longer than a fixed-length dataset's clips, that length in s, where they are cut: the
    cut_mode), or None in windows mode or when none is longer. durations: the clips' durations in s; length:
    feat_analysis.length_settings'."""
    longer = sum(feat_analysis.cut_to_clip(duration, length) for duration in durations)
    return (longer, length["clip_samples"] / length["sample_rate"], length["cut_mode"]) if longer else None


def one_item_classes(clips):
    """{label: foldable item} of the labels whose kept clips (of the ClipTable clips) all lie in one foldable item
    (in its test fold, training has none of that class), in label order."""
    return {as_text(label): as_text(item) for label, items, item in clips.query(
        "SELECT label, COUNT(DISTINCT item), MIN(item) FROM clips WHERE status IS NULL GROUP BY label "
        "ORDER BY label") if items == 1}


def case_variants(names):
    """Groups of names equal but for case and spaces (['Happy', 'happy']), each sorted; names: distinct strings."""
    groups = {}
    for name in names:
        groups.setdefault("".join(name.casefold().split()), []).append(name)
    return [sorted(group) for group in groups.values() if len(group) > 1]


def row_label(entry):
    """'row 12: ' for a skipped entry with a row number, '' without."""
    return "" if entry["row"] is None else f"row {entry['row']}: "


def summary_text(summary, feature_type, source, kinds):
    """The lines printed at the end of a run: what was written, the audio found, then the skipped rows by kind."""
    shape = f"{feature_type}, {summary['frames']} frames x {summary['bins']} bins"
    if summary.get("windows"):
        shape += f", {summary['windows']} windows"
    lines = [f"{summary['dataset']}: {summary['clips']} clips of {len(summary['items'])} {summary['fold_by']}s "
             f"(the foldable items) from {source} -> {summary['paths']['predictors'].parent}/{summary['dataset']}_"
             f"{{predictors,target}}.npy ({shape}) in {summary['seconds']:.1f} s"]
    if summary.get("class_counts"):
        lines.append("  classes: " + ", ".join(f"{name} {count}" for name, count in summary["class_counts"].items()))
    audio = summary["audio"]
    rates = ", ".join(f"{rate} Hz: {count}" for rate, count in audio["sample_rates"].items())
    lines.append(f"  sample rates found: {rates}; durations min {audio['seconds']['min']:.2f} s, median "
                 f"{audio['seconds']['median']:.2f} s, max {audio['seconds']['max']:.2f} s")
    identical = summary.get("identical_audio") or []
    for names, size in identical[:LISTED_PER_KIND]:  # a group can be large (a corpus copied 200 times): three rows
        shown = "; ".join(names) + (f"; and {size - 3} more rows" if size > 3 else "")
        lines.append(f"  WARNING: identical audio in {shown}: if they are one recording under two "
                     "names, it can sit in training and test (check the table)")
    if len(identical) > LISTED_PER_KIND:
        lines.append(f"  WARNING: ... and {len(identical) - LISTED_PER_KIND} more groups of identical audio (all "
                     f"listed in {summary['paths']['metadata'].name})")
    if summary.get("cut"):
        longer, seconds, where = summary["cut"]
        lines.append(f"  note: {longer} of the clips are longer than clip_seconds ({seconds:g} s): each was cut to one "
                     f"{seconds:g} s piece (cut_mode = {where}); [preprocessing] clip_mode = windows keeps whole clips")
    for label, item in (summary.get("one_item_classes") or {}).items():
        lines.append(f"  WARNING: class {label} has clips of one foldable item only ({item}): in the fold that tests "
                     "it, training has none of it")
    variants = summary.get("case_variants") or {}
    for names in variants.get("labels") or []:
        lines.append(f"  WARNING: labels that differ only in case or spaces are separate classes: {' / '.join(names)}: "
                     "if they are one class, fix the table")
    for names in variants.get("items") or []:
        lines.append(f"  WARNING: foldable items that differ only in case or spaces: {' / '.join(names)}: if they are "
                     "one speaker, their clips can sit in training and test of one fold; fix the table")
    if summary.get("classes_without_clips"):
        lines.append(f"  WARNING: classes without any usable clip: {', '.join(summary['classes_without_clips'])}")
    if summary["fold_by"] == FOLD_BY_FILE:
        lines.append("  WARNING: folds by file: clips of one speaker can be in training and test (speaker-dependent "
                     "results, higher than on new speakers)")
    if summary["skipped"]:
        lines.append(f"skipped {len(summary['skipped'])} rows (all listed in {summary['paths']['metadata'].name}):")
    for kind, label in kinds.items():
        entries = [entry for entry in summary["skipped"] if entry["kind"] == kind]
        if entries:
            lines.append(f"  {label}: {len(entries)}")
            lines += [f"    {row_label(entry)}{entry['file']}: {entry['reason']}"
                      for entry in entries[:LISTED_PER_KIND]]
            if len(entries) > LISTED_PER_KIND:
                lines.append(f"    ... and {len(entries) - LISTED_PER_KIND} more")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------
# Command line

def parse_args(argv):
    """The command line options (see the module docstring)."""
    parser = argparse.ArgumentParser(description="Preprocess a dataset given as a CSV or as class folders into "
                                                 "{dataset}_predictors.npy, _target.npy, _index.json and "
                                                 "_metadata.json.")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--csv", help="a CSV with a header row: file, label and foldable item columns")
    source.add_argument("--folders", help="a folder with one subfolder of audio files per class")
    parser.add_argument("--dataset", required=True, help="dataset name (what a routine's dataset = names)")
    parser.add_argument("--file-column", help="CSV column of the audio paths (default file)")
    parser.add_argument("--label-column", help="CSV column of the labels (default label)")
    parser.add_argument("--fold-by", default=None, help="column whose values the folds never split (default "
                                                        "speaker; 'file' for a speaker-dependent split)")
    parser.add_argument("--audio-root", help="folder the CSV's paths are relative to (default: the CSV's folder)")
    parser.add_argument("--group-pattern", help="--folders: regular expression with a group named 'group' that "
                                                "finds the speaker in a file name, e.g. '^(?P<group>[^_]+)_'")
    parser.add_argument("--label-pattern", help="--folders: take the label from the file names by this regular "
                                                "expression with a group named 'label' (files in any layout), "
                                                "not from the class subfolders")
    parser.add_argument("--target", choices=TARGET_KINDS, default="classification", help="classification (default) "
                                                                                        "or regression")
    parser.add_argument("--classes", help="classification: the classes in order, comma-separated (default: the "
                                          "sorted distinct labels)")
    parser.add_argument("--features", choices=feat_analysis.FEATURE_TYPES, help="override [features] type")
    parser.add_argument("--jobs", type=whole_number, default=None, help="worker processes (default: number of CPUs)")
    parser.add_argument("--force", action="store_true", help="recompute even if inputs and settings are unchanged")
    parser.add_argument("--config", help="config.ini to use (default: $XVAL_CONFIG, else the repository's)")
    return parser.parse_args(argv)


def check_options(args):
    """XvalError for an option that would have no effect with the others given (never silently ignored)."""
    unused = {"--csv": [("--group-pattern", args.group_pattern), ("--label-pattern", args.label_pattern)],
              "--folders": [("--file-column", args.file_column), ("--label-column", args.label_column),
                            ("--audio-root", args.audio_root)]}["--csv" if args.csv else "--folders"]
    given = [option for option, value in unused if value is not None]
    if given:
        raise XvalError(f"{', '.join(given)} only act{'s' if len(given) == 1 else ''} with "
                        f"{'--folders' if args.csv else '--csv'}: remove {'it' if len(given) == 1 else 'them'}")
    if args.folders and args.fold_by == FOLD_BY_FILE and args.group_pattern:
        raise XvalError("--group-pattern has no effect with --fold-by file (each file is its own foldable item): "
                        "remove one of them")
    if args.classes and args.target == "regression":
        raise XvalError("--classes only acts with --target classification: remove it for a regression target")


def run(args):
    """Everything main() does after parsing the arguments; returns build_dataset()'s summary."""
    check_options(args)
    config_path = config_path_in_use(args.config)
    config = load_config(config_path)
    if args.csv:
        fold_by = args.fold_by or "speaker"
        clips, skipped, stats = csv_table(args.csv, args.file_column or "file", args.label_column or "label",
                                          fold_by, args.audio_root)
        source = str(Path(args.csv).expanduser().resolve())
    else:
        fold_by = args.fold_by or "group"
        if args.fold_by not in (None, FOLD_BY_FILE):
            raise XvalError(f"--folders takes --fold-by file or --group-pattern, not --fold-by {args.fold_by}")
        clips, skipped, stats = folders_table(args.folders, args.group_pattern, fold_by, args.label_pattern)
        source = str(Path(args.folders).expanduser().resolve())
    regroup = ("give --fold-by the column of the foldable items (speakers), or --fold-by file" if args.csv else
               "give --group-pattern a group that finds the foldable items (speakers) in the names, or --fold-by file")
    table = {"clips": clips, "skipped": skipped, "stats": stats, "source": source, "fold_by": fold_by,
             "regroup": regroup}
    return build_dataset(table, args.dataset, config, args.target, parse_class_order(args.classes),
                         feature_type=args.features, jobs=args.jobs, force=args.force, where=str(config_path))


def main(argv=None):
    """Command line entry point; a user's mistake ends with one line on stderr and exit code 2."""
    args = parse_args(argv)
    return exit_on_user_error(lambda: run(args))


if __name__ == "__main__":
    main()
