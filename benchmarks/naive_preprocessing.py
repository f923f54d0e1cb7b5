"""The reference of the preprocessing benchmark: the naive loop, one file at a time, in one process.

    python3 benchmarks/naive_preprocessing.py CONFIG_INI AUDIO_FOLDER OUT.npz OUT.json

For every speech file of the corpus, sorted by actor and name as preprocessing_ravdess sorts them:
librosa.load(path, sr=sample_rate) (mono, soxr_hq), padded with zeros or cut (cut_mode) to clip_seconds, then
feat_analysis.extract_features (the function preprocessing_ravdess uses, with its analysis plan built once).
OUT.npz: one float32 (clips, frames, bins) array per actor, as {dataset}_predictors.npz. OUT.json: the seconds
of the imports, of the first file (librosa's lazy imports and numba's start-up happen there), of the rest, and of
the librosa.load calls of the files after the first (the decoding and resampling that any path giving the same
arrays does too).
"""
import json
import sys
import time

STARTED = time.monotonic()  # before the imports: they are part of the naive loop's cost

from pathlib import Path  # noqa: E402

import librosa  # noqa: E402
import numpy as np  # noqa: E402

import common  # noqa: E402  (puts the repository on sys.path)
import feat_analysis  # noqa: E402
from utility_functions import load_config  # noqa: E402

IMPORTED = time.monotonic()


def fit_length(signal, n_samples, cut_mode):
    """Pad with zeros at the end, or cut at the start ('start') or around the centre ('center'), to n_samples."""
    if len(signal) >= n_samples:
        start = 0 if cut_mode == "start" else (len(signal) - n_samples) // 2
        return signal[start:start + n_samples]
    return np.concatenate([signal, np.zeros(n_samples - len(signal), dtype=signal.dtype)])


def features_of_file(path, pre, settings, plan):
    """float32 (frames, bins) of one file, the naive way; and the seconds its librosa.load took."""
    started = time.monotonic()
    signal, _ = librosa.load(path, sr=pre["sample_rate"])
    load_seconds = time.monotonic() - started
    signal = fit_length(signal, int(round(pre["clip_seconds"] * pre["sample_rate"])), pre["cut_mode"])
    return feat_analysis.extract_features(signal, pre["sample_rate"], settings, plan), load_seconds


def main(config_path, audio_folder, out_npz, out_json):
    """Compute every file's features; write them (per actor) and the timings."""
    config = load_config(config_path)
    pre, settings = config["preprocessing"], config["features"]
    plan = feat_analysis.analysis_plan(pre["sample_rate"], settings)
    files = common.speech_files(audio_folder)
    per_actor = {}
    loop_started = time.monotonic()
    first_done, load_seconds = None, 0.0
    for actor, path in files:
        features, seconds = features_of_file(path, pre, settings, plan)
        per_actor.setdefault(actor, []).append(features)
        load_seconds += seconds if first_done else 0.0
        first_done = first_done or time.monotonic()
    loop_ended = time.monotonic()
    np.savez(out_npz, **{actor: np.stack(clips) for actor, clips in per_actor.items()})
    ended = time.monotonic()
    timings = {"files": len(files), "import_seconds": IMPORTED - STARTED,
               "first_file_seconds": first_done - loop_started, "rest_seconds": loop_ended - first_done,
               "rest_load_seconds": load_seconds,
               "write_seconds": ended - loop_ended, "in_process_seconds": ended - STARTED}
    Path(out_json).write_text(json.dumps(timings, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 5:
        print("usage: python3 benchmarks/naive_preprocessing.py CONFIG_INI AUDIO_FOLDER OUT.npz OUT.json",
              file=sys.stderr)
        sys.exit(2)
    sys.exit(main(*sys.argv[1:]))
