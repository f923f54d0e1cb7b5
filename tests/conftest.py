"""Shared test fixtures: configs written into temporary folders, and a tiny preprocessed demo dataset.

Every test works in its own temporary folder with its own config.ini (paths pointing there); nothing is
written into the repository.
"""
import configparser
import contextlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import demo_corpus  # noqa: E402
import preprocessing_ravdess  # noqa: E402

# The tiny dataset of the engine's tests: 6 actors x (neutral + happy, sad, angry at two intensities) x 2
# statements x 1 repetition = 6 x 14 = 84 clips of 1 s, log-mel 63 frames x 32 bands.
TINY_ACTORS = 6
TINY_EMOTIONS = ("neutral", "happy", "sad", "angry")
TINY_CLIP_SECONDS_RANGE = (0.8, 1.2)
TINY_SETTINGS = {"features": {"type": "mel", "n_fft": "512", "win_length": "512", "hop_length": "256",
                              "n_mels": "32"},
                 "preprocessing": {"clip_seconds": "1.0"}}


# The tests' routines fit no baseline (about 2 s each): tests/test_baseline.py and the tests that read one turn it on
# (baseline_config)
TEST_DEFAULTS = {"baseline": {"enabled": "false"}}


def write_config(folder, overrides=None):
    """Write folder/config.ini: the repository's config.ini with [paths] inside folder, TEST_DEFAULTS and the given
    overrides ({section: {key: value}}); returns its path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    parser = configparser.ConfigParser(inline_comment_prefixes=(";", "#"), interpolation=None)
    parser.read(REPO / "config.ini", encoding="utf-8")
    paths = {"ravdess_folder": "ravdess", "demo_folder": "demo_audio", "features_folder": "features",
             "experiment_folder": "experiments"}
    for key, value in paths.items():
        parser.set("paths", key, str(folder / value))
    for section, values in [*TEST_DEFAULTS.items(), *(overrides or {}).items()]:
        for key, value in values.items():
            parser.set(section, key, str(value))
    path = folder / "config.ini"
    with open(path, "w", encoding="utf-8") as handle:
        parser.write(handle)
    return path


@pytest.fixture
def config_factory(tmp_path):
    """write_config into this test's tmp_path (or a sub-folder): config_factory(overrides=None, folder=None)."""
    def make(overrides=None, folder=None):
        return write_config(folder or tmp_path, overrides)
    return make


@pytest.fixture(scope="session")
def tiny_features(tmp_path_factory):
    """A tiny demo corpus preprocessed twice (target emotion as 'tiny', target intensity as 'tiny_intensity').

    Returns {"config_path", "root", "features_folder", "emotion_dataset", "intensity_dataset"}; the config at
    config_path points every [paths] entry into root.
    """
    root = tmp_path_factory.mktemp("tiny_features")
    config_path = write_config(root, TINY_SETTINGS)
    config = preprocessing_ravdess.load_config(config_path)
    audio = config["paths"]["demo_folder"]
    demo_corpus.make_demo_corpus(audio, n_actors=TINY_ACTORS, emotions=TINY_EMOTIONS, repetitions=(1,),
                                 clip_seconds_range=TINY_CLIP_SECONDS_RANGE, jobs=1)
    # jobs=1: no worker processes, so the fixture is safe in a test process that already runs TensorFlow
    for dataset, target in (("tiny", "emotion"), ("tiny_intensity", "intensity")):
        preprocessing_ravdess.preprocess(audio, dataset, config_path, target=target, jobs=1, quiet=True)
    return {"config_path": config_path, "root": root, "features_folder": config["paths"]["features_folder"],
            "emotion_dataset": "tiny", "intensity_dataset": "tiny_intensity"}


def baseline_config(tiny_features, folder):
    """A config like tiny_features' (its features folder) with the baseline on, written into folder."""
    return write_config(folder, {**TINY_SETTINGS, "baseline": {"enabled": "true"},
                                 "paths": {"features_folder": tiny_features["features_folder"]}})


# ----------------------------------------------------------------------------------------------------------------
# Mounts: a read-only folder even root cannot write into (the tests run as root in CI)

def mounting_problem():
    """Why this machine cannot mount a tmpfs or bind-mount a folder read-only (one line), or None."""
    probe = Path(f"/tmp/xval-mount-probe-{os.getpid()}")
    probe.mkdir(exist_ok=True)
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(probe)], capture_output=True,
                              text=True)
        if done.returncode != 0:
            return f"cannot mount here ({done.stderr.strip()[:120]})"
        subprocess.run(["umount", str(probe)], check=True)
        return None
    finally:
        probe.rmdir()


def require(problem, need):
    """A test's outside requirement: nothing when problem is None; else a failure under CI (which provides every
    one, so a skip there would hide a broken setup) and a skip elsewhere, both saying need."""
    if problem and os.environ.get("CI") == "true":
        pytest.fail(f"CI=true but {problem}: {need}")
    if problem:
        pytest.skip(f"{problem}: {need}")


@pytest.fixture(scope="module")
def mounts():
    require(mounting_problem(), "the read-only and full-disk tests need root")


@contextlib.contextmanager
def read_only(folder):
    """folder, bind-mounted read-only onto itself for the with block: even root cannot write into it."""
    subprocess.run(["mount", "--bind", str(folder), str(folder)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(folder)], check=True)
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)
