"""The preprocessing pipeline with its start-up taken out: preprocess() timed in a process that is already warm.

    python3 benchmarks/warm_pipeline.py CONFIG_INI AUDIO_FOLDER DATASET JOBS OUT.json

Imports preprocessing_ravdess, runs one clip through the pipeline's own load_clip and feature function (librosa's
lazy imports and numba's first-call work happen there, and the worker processes forked afterwards inherit them),
then times preprocessing_ravdess.preprocess(..., jobs=JOBS, force=True). OUT.json: the seconds of each phase.
"""
import json
import sys
import time

STARTED = time.monotonic()

from pathlib import Path  # noqa: E402

import common  # noqa: E402  (puts the repository on sys.path)
import feat_analysis  # noqa: E402
import preprocessing_ravdess  # noqa: E402
from utility_functions import load_config  # noqa: E402

IMPORTED = time.monotonic()


def warm_up(config_path, audio_folder):
    """One clip through load_clip and extract_features, as a worker would process it."""
    config = load_config(config_path)
    pre, settings = config["preprocessing"], config["features"]
    _, path = common.speech_files(audio_folder)[0]
    clip_samples = int(round(pre["clip_seconds"] * pre["sample_rate"]))
    signal = preprocessing_ravdess.load_clip(path, pre["sample_rate"], clip_samples, pre["cut_mode"])
    feat_analysis.extract_features(signal, pre["sample_rate"], settings)


def main(config_path, audio_folder, dataset, jobs, out_json):
    """Warm up, then time preprocess(); write the timings."""
    warm_up(config_path, audio_folder)
    warmed = time.monotonic()
    preprocessing_ravdess.preprocess(audio_folder, dataset, config_path, jobs=int(jobs), force=True, quiet=True)
    ended = time.monotonic()
    timings = {"import_seconds": IMPORTED - STARTED, "warm_up_seconds": warmed - IMPORTED,
               "preprocess_seconds": ended - warmed}
    Path(out_json).write_text(json.dumps(timings, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 6:
        print("usage: python3 benchmarks/warm_pipeline.py CONFIG_INI AUDIO_FOLDER DATASET JOBS OUT.json",
              file=sys.stderr)
        sys.exit(2)
    sys.exit(main(*sys.argv[1:]))
