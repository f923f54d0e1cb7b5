"""The naive reference of preprocessing: librosa.load, pad or cut, features, one file after the other.

    python3 benchmarks/naive_preprocessing.py CONFIG_INI AUDIO_FOLDER OUT.npz

Every speech file (RAVDESS name, vocal channel 01) under AUDIO_FOLDER, sorted by name, through
librosa.load(path, sr=sample_rate), zero padding or cutting to clip_seconds (cut_mode), and
feat_analysis.extract_features; OUT.npz holds one float32 (clips, frames, bins) array per actor, the arrays
preprocessing_ravdess.py writes into {dataset}_predictors.npy one after the other.
"""
import sys
from pathlib import Path

USAGE = "usage: python3 benchmarks/naive_preprocessing.py CONFIG.ini AUDIO_FOLDER OUT.npz (preprocessing.py runs it)"
if __name__ == "__main__" and (len(sys.argv) != 4 or {"-h", "--help"} & set(sys.argv[1:])):
    print(f"{USAGE}\n\n{__doc__}")
    raise SystemExit(0 if {"-h", "--help"} & set(sys.argv[1:]) else 2)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the project's modules, however this is started

import librosa
import numpy as np

import feat_analysis
from utility_functions import load_config

if __name__ == "__main__":
    config_path, folder, out = sys.argv[1:]
    config = load_config(config_path)
    pre, settings = config["preprocessing"], config["features"]
    rate, length = pre["sample_rate"], int(round(pre["clip_seconds"] * pre["sample_rate"]))
    plan = feat_analysis.analysis_plan(rate, settings)
    per_actor = {}
    for path in sorted(Path(folder).rglob("??-01-??-??-??-??-??.wav"), key=lambda path: path.name):
        signal, _ = librosa.load(path, sr=rate)
        start = (len(signal) - length) // 2 if pre["cut_mode"] == "center" and len(signal) > length else 0
        signal = signal[start:start + length]
        signal = np.pad(signal, (0, length - len(signal)))
        per_actor.setdefault(path.stem[-2:], []).append(feat_analysis.extract_features(signal, rate, settings, plan))
    np.savez(out, **{actor: np.stack(clips) for actor, clips in per_actor.items()})
