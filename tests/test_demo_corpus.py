"""demo_corpus: RAVDESS names and layout, file format, determinism, resuming, and prosody that follows emotion."""
import itertools
import os

import librosa
import numpy as np
import pytest
import soundfile as sf

import demo_corpus

SHORT = (1.0, 1.4)  # clip seconds of the small corpora here


def expected_names(actors, emotion_codes, statements, repetitions):
    """RAVDESS names written out by hand: 03-01-EE-II-SS-RR-AA.wav, neutral (01) only at intensity 01."""
    names = set()
    for actor, emotion, intensity, statement, repetition in itertools.product(
            actors, emotion_codes, (1, 2), statements, repetitions):
        if emotion == 1 and intensity == 2:
            continue
        names.add(f"Actor_{actor:02d}/03-01-{emotion:02d}-{intensity:02d}-{statement:02d}-{repetition:02d}-"
                  f"{actor:02d}.wav")
    return names


def files_under(folder):
    return {path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file()}


def test_small_corpus_has_ravdess_layout_names_and_format(tmp_path):
    made = demo_corpus.make_demo_corpus(tmp_path, n_actors=2, emotions=("neutral", "angry"), statements=(1,),
                                        repetitions=(1, 2), clip_seconds_range=SHORT, jobs=1)
    names = expected_names((1, 2), (1, 5), (1,), (1, 2))
    assert files_under(tmp_path) == names  # nothing else left behind, no temporary files
    assert made["written"] == len(names) == 2 * (2 + 4) and made["existing"] == 0
    for name in names:
        info = sf.info(str(tmp_path / name))
        assert (info.samplerate, info.channels, info.subtype, info.format) == (48000, 1, "PCM_16", "WAV")
        assert SHORT[0] - 1e-3 <= info.duration <= SHORT[1] + 1e-3


def test_full_corpus_plan_is_24_actors_by_60_clips():
    plan = demo_corpus.corpus_plan()
    names = {f"Actor_{clip[0]:02d}/{demo_corpus.clip_name(*clip)}" for clip in plan}
    assert names == expected_names(range(1, 25), range(1, 9), (1, 2), (1, 2))
    assert len(plan) == 24 * 60


def test_same_seed_same_bytes_and_subsets_hold_the_same_clips(tmp_path):
    demo_corpus.make_demo_corpus(tmp_path / "a", n_actors=1, emotions=(3,), statements=(2,), repetitions=(1,),
                                 clip_seconds_range=SHORT, jobs=1)
    demo_corpus.make_demo_corpus(tmp_path / "b", n_actors=2, emotions=(1, 3), statements=(1, 2), repetitions=(1,),
                                 clip_seconds_range=SHORT, jobs=2)
    demo_corpus.make_demo_corpus(tmp_path / "c", n_actors=1, emotions=(3,), statements=(2,), repetitions=(1,),
                                 clip_seconds_range=SHORT, seed=1, jobs=1)
    for name in files_under(tmp_path / "a"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
        assert (tmp_path / "a" / name).read_bytes() != (tmp_path / "c" / name).read_bytes()


def test_existing_clips_are_kept_and_missing_ones_made(tmp_path):
    options = {"n_actors": 1, "emotions": (1, 4), "statements": (1,), "repetitions": (1,),
               "clip_seconds_range": SHORT, "jobs": 1}
    demo_corpus.make_demo_corpus(tmp_path, **options)
    paths = sorted(tmp_path.rglob("*.wav"))
    stamps = {path: path.stat().st_mtime_ns for path in paths}
    again = demo_corpus.make_demo_corpus(tmp_path, **options)
    assert again["written"] == 0 and again["existing"] == len(paths)
    assert {path: path.stat().st_mtime_ns for path in paths} == stamps
    paths[0].unlink()
    repaired = demo_corpus.make_demo_corpus(tmp_path, **options)
    assert repaired["written"] == 1 and paths[0].is_file()
    assert {path: path.stat().st_mtime_ns for path in paths[1:]} == {path: stamps[path] for path in paths[1:]}


def test_bad_options_are_refused(tmp_path):
    with pytest.raises(ValueError, match="emotion"):
        demo_corpus.make_demo_corpus(tmp_path, emotions=("bored",))
    with pytest.raises(ValueError, match="clip_seconds_range"):
        demo_corpus.make_demo_corpus(tmp_path, clip_seconds_range=(3.0, 2.0))
    assert not any(tmp_path.iterdir())


# ----------------------------------------------------------------------------------------------------------------
# Prosody, measured with librosa on the written files

def speech_16k(path):
    """The clip at 16 kHz, read with soundfile and resampled by librosa."""
    signal, rate = sf.read(path, dtype="float32")
    return librosa.resample(signal, orig_sr=rate, target_sr=16000)


def level_db(path):
    """Loudness of the speech: 95th percentile of 25 ms frame RMS, dBFS."""
    rms = librosa.feature.rms(y=speech_16k(path), frame_length=400, hop_length=160)[0]
    return 20 * np.log10(np.percentile(rms, 95) + 1e-9)


def median_f0(path):
    """Median f0 (Hz, YIN) over the loudest third of the 64 ms frames (the vowels)."""
    signal = speech_16k(path)
    f0 = librosa.yin(signal, fmin=60, fmax=700, sr=16000, frame_length=1024, hop_length=320)
    rms = librosa.feature.rms(y=signal, frame_length=1024, hop_length=320)[0][:len(f0)]
    return float(np.median(f0[rms >= np.percentile(rms, 67)]))


@pytest.fixture(scope="module")
def prosody_corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("prosody")
    demo_corpus.make_demo_corpus(folder, n_actors=4, emotions=("neutral", "sad", "angry", "fearful"),
                                 statements=(1,), repetitions=(1,), clip_seconds_range=(2.5, 2.5), jobs=2)
    return folder


def clip_file(folder, actor, emotion, intensity):
    return str(folder / f"Actor_{actor:02d}" / demo_corpus.clip_name(actor, emotion, intensity, 1, 1))


def test_emotion_and_intensity_change_loudness(prosody_corpus):
    actors = range(1, 5)
    neutral = np.mean([level_db(clip_file(prosody_corpus, actor, 1, 1)) for actor in actors])
    angry = {intensity: np.mean([level_db(clip_file(prosody_corpus, actor, 5, intensity)) for actor in actors])
             for intensity in (1, 2)}
    sad = np.mean([level_db(clip_file(prosody_corpus, actor, 4, 2)) for actor in actors])
    assert angry[2] > angry[1] > neutral > sad  # strong exaggerates; angry loud, sad soft
    assert angry[2] - sad > 10


def test_emotion_and_sex_change_pitch(prosody_corpus):
    fearful = [median_f0(clip_file(prosody_corpus, actor, 6, 2)) for actor in range(1, 5)]
    sad = [median_f0(clip_file(prosody_corpus, actor, 4, 2)) for actor in range(1, 5)]
    assert all(high > low for high, low in zip(fearful, sad))  # fear raises pitch, sadness lowers it
    males = [median_f0(clip_file(prosody_corpus, actor, 1, 1)) for actor in (1, 3)]
    females = [median_f0(clip_file(prosody_corpus, actor, 1, 1)) for actor in (2, 4)]
    assert max(males) < 160 < min(females)  # even-numbered actors are female, as in RAVDESS


def test_clips_differ_between_statements_and_repetitions(tmp_path):
    demo_corpus.make_demo_corpus(tmp_path, n_actors=1, emotions=(1,), statements=(1, 2), repetitions=(1, 2),
                                 clip_seconds_range=SHORT, jobs=1)
    signals = [sf.read(path)[0] for path in sorted(tmp_path.rglob("*.wav"))]
    assert len(signals) == 4
    for first, second in itertools.combinations(signals, 2):
        assert len(first) != len(second) or not np.array_equal(first, second)
    assert all(np.abs(signal).max() < 0.95 for signal in signals)  # soft-limited, never clipped
    assert os.path.getsize(sorted(tmp_path.rglob("*.wav"))[0]) > 48000 * 2 * SHORT[0]


def test_missing_clips_lists_what_is_not_there_yet(tmp_path):
    plan = demo_corpus.corpus_plan(n_actors=1, emotions=(1,), statements=(1,), repetitions=(1, 2))
    assert demo_corpus.missing_clips(tmp_path, plan) == plan
    demo_corpus.make_demo_corpus(tmp_path, n_actors=1, emotions=(1,), statements=(1,), repetitions=(1,),
                                 clip_seconds_range=SHORT, jobs=1)
    assert demo_corpus.missing_clips(tmp_path, plan) == [(1, 1, 1, 1, 2)]
    assert len(demo_corpus.missing_clips(tmp_path)) == 24 * 60 - 1
