"""feat_analysis: orientation (time first, forward), frequency placement, frame count, and equality with librosa."""
import librosa
import numpy as np
import pytest
import scipy.signal
import threadpoolctl

import feat_analysis

SAMPLE_RATE = 16000
SETTINGS = {"type": "mel", "n_fft": 1024, "win_length": 1024, "hop_length": 512, "window": "hann", "n_mels": 64,
            "n_mfcc": 20, "fmin": 0.0, "fmax": 0.0, "power_law_compression": 1.0}
VARIANTS = [  # (name, changes to SETTINGS)
    ("config defaults", {}),
    ("short window, hamming, band-limited", {"n_fft": 1000, "win_length": 800, "hop_length": 160,
                                             "window": "hamming", "fmin": 50.0, "fmax": 7000.0}),
    ("small", {"n_fft": 512, "win_length": 400, "hop_length": 256, "n_mels": 32, "n_mfcc": 13}),
]


def noise_with_silence(seconds=2.0, seed=0):
    """Coloured noise with a loud burst and a silent tail: float32 (samples,)."""
    rng = np.random.default_rng(seed)
    signal = scipy.signal.lfilter([1], [1, -0.8], rng.standard_normal(int(seconds * SAMPLE_RATE))) * 0.05
    signal[SAMPLE_RATE // 2:SAMPLE_RATE // 2 + 2000] *= 10
    signal[int(0.75 * len(signal)):] = 0
    return signal.astype(np.float32)


def sine(frequency, seconds=1.0, amplitude=0.5):
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return (amplitude * np.sin(2 * np.pi * frequency * t)).astype(np.float32)


def settings_of(kind, changes=None):
    return dict(SETTINGS, type=kind, **(changes or {}))


# ----------------------------------------------------------------------------------------------------------------
# Orientation and placement, against physics rather than a library

@pytest.mark.parametrize("kind", ["stft", "mel"])
def test_rising_chirp_peak_rises_with_frame_index(kind):
    t = np.arange(2 * SAMPLE_RATE) / SAMPLE_RATE
    chirp = scipy.signal.chirp(t, f0=200, t1=2.0, f1=6000, method="linear").astype(np.float32) * 0.5
    features = feat_analysis.extract_features(chirp, SAMPLE_RATE, settings_of(kind))
    peaks = features[2:-2].argmax(axis=1)  # interior frames (the edge frames see padding)
    assert np.all(np.diff(peaks) >= 0), "time must run forward down the rows, frequency up the columns"
    assert peaks[-1] - peaks[0] > features.shape[1] // 3


def test_1khz_sine_peaks_at_the_1khz_bin():
    n_fft = 512  # bin spacing 16000 / 512 = 31.25 Hz: 1 kHz is exactly bin 32
    changes = {"n_fft": n_fft, "win_length": n_fft, "hop_length": 128}
    magnitude = feat_analysis.extract_features(sine(1000.0), SAMPLE_RATE, settings_of("stft", changes))
    assert magnitude.shape[1] == n_fft // 2 + 1
    assert np.all(magnitude[4:-4].argmax(axis=1) == round(1000.0 * n_fft / SAMPLE_RATE))


def test_1khz_sine_peaks_in_the_mel_band_around_1khz():
    mel = feat_analysis.extract_features(sine(1000.0), SAMPLE_RATE, settings_of("mel"))
    # band centres: n_mels + 2 edges equally spaced in librosa's (Slaney) mels, centre of band i is edge i + 1
    centres = librosa.mel_frequencies(n_mels=SETTINGS["n_mels"] + 2, fmin=0.0, fmax=SAMPLE_RATE / 2)[1:-1]
    expected_band = int(np.argmin(np.abs(centres - 1000.0)))
    assert np.all(np.abs(mel[2:-2].argmax(axis=1) - expected_band) <= 1)


@pytest.mark.parametrize("n_samples, hop_length", [(16000, 512), (16001, 512), (48000, 160), (1000, 256)])
def test_frame_count_matches_the_hop(n_samples, hop_length):
    signal = np.zeros(n_samples, dtype=np.float32)
    changes = {"hop_length": hop_length, "n_fft": 512, "win_length": 512}
    for kind in ("stft", "mel", "mfcc"):
        features = feat_analysis.extract_features(signal, SAMPLE_RATE, settings_of(kind, changes))
        assert features.shape[0] == 1 + n_samples // hop_length == feat_analysis.n_frames(n_samples, hop_length)


def test_a_click_shows_in_the_frame_centred_on_it():
    hop = 256
    signal = np.zeros(SAMPLE_RATE, dtype=np.float32)
    signal[20 * hop] = 1.0  # frame t is centred on sample t * hop
    changes = {"n_fft": 512, "win_length": 512, "hop_length": hop}
    magnitude = feat_analysis.extract_features(signal, SAMPLE_RATE, settings_of("stft", changes))
    assert magnitude.sum(axis=1).argmax() == 20


def test_feature_shapes_and_dtypes():
    signal = noise_with_silence()
    expected_bins = {"stft": SETTINGS["n_fft"] // 2 + 1, "mel": SETTINGS["n_mels"], "mfcc": SETTINGS["n_mfcc"]}
    for kind, bins in expected_bins.items():
        features = feat_analysis.extract_features(signal, SAMPLE_RATE, settings_of(kind))
        assert features.dtype == np.float32
        assert features.shape == (1 + len(signal) // SETTINGS["hop_length"], bins)
        assert np.all(np.isfinite(features))


def test_log_mel_is_floored_80_db_below_the_clip_maximum():
    signal = np.concatenate([sine(440.0, 0.5), np.zeros(SAMPLE_RATE // 2, np.float32)])
    mel = feat_analysis.extract_features(signal, SAMPLE_RATE, settings_of("mel"))
    assert mel.min() == pytest.approx(mel.max() - 80.0, abs=1e-3)
    assert np.all(mel[-3:] == mel.min())  # the silent end sits on the floor


# ----------------------------------------------------------------------------------------------------------------
# The same numbers as librosa

def librosa_kwargs(s):
    return {"n_fft": s["n_fft"], "hop_length": s["hop_length"], "win_length": s["win_length"], "window": s["window"]}


@pytest.mark.parametrize("name, changes", VARIANTS)
def test_stft_magnitude_equals_librosa(name, changes):
    signal = noise_with_silence()
    for compression in (1.0, 0.3):
        s = settings_of("stft", dict(changes, power_law_compression=compression))
        ours = feat_analysis.stft_magnitude(signal, SAMPLE_RATE, s["n_fft"], s["hop_length"], s["win_length"],
                                            s["window"], compression)
        theirs = np.abs(librosa.stft(y=signal, **librosa_kwargs(s))).T ** compression
        np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("name, changes", VARIANTS)
def test_log_mel_equals_librosa(name, changes):
    signal = noise_with_silence()
    s = settings_of("mel", changes)
    fmax = s["fmax"] or SAMPLE_RATE / 2
    ours = feat_analysis.log_mel(signal, SAMPLE_RATE, s["n_fft"], s["hop_length"], s["win_length"], s["window"],
                                 s["n_mels"], s["fmin"], s["fmax"])
    power = librosa.feature.melspectrogram(y=signal, sr=SAMPLE_RATE, n_mels=s["n_mels"], fmin=s["fmin"],
                                           fmax=fmax, **librosa_kwargs(s))
    theirs = librosa.power_to_db(power, ref=1.0, amin=1e-10, top_db=80.0).T
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-4)  # dB; they differ in float32 rounding only


@pytest.mark.parametrize("name, changes", VARIANTS)
def test_mfcc_equals_librosa(name, changes):
    signal = noise_with_silence()
    s = settings_of("mfcc", changes)
    fmax = s["fmax"] or SAMPLE_RATE / 2
    ours = feat_analysis.mfcc(signal, SAMPLE_RATE, s["n_fft"], s["hop_length"], s["win_length"], s["window"],
                              s["n_mfcc"], s["n_mels"], s["fmin"], s["fmax"])
    theirs = librosa.feature.mfcc(y=signal, sr=SAMPLE_RATE, n_mfcc=s["n_mfcc"], n_mels=s["n_mels"], fmin=s["fmin"],
                                  fmax=fmax, **librosa_kwargs(s)).T
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-3)


def test_extract_features_dispatches_on_type():
    signal = noise_with_silence()
    s = SETTINGS
    expected = {
        "stft": feat_analysis.stft_magnitude(signal, SAMPLE_RATE, s["n_fft"], s["hop_length"], s["win_length"],
                                             s["window"], s["power_law_compression"]),
        "mel": feat_analysis.log_mel(signal, SAMPLE_RATE, s["n_fft"], s["hop_length"], s["win_length"],
                                     s["window"], s["n_mels"], s["fmin"], s["fmax"]),
        "mfcc": feat_analysis.mfcc(signal, SAMPLE_RATE, s["n_fft"], s["hop_length"], s["win_length"], s["window"],
                                   s["n_mfcc"], s["n_mels"], s["fmin"], s["fmax"]),
    }
    for kind, features in expected.items():
        np.testing.assert_array_equal(feat_analysis.extract_features(signal, SAMPLE_RATE, settings_of(kind)),
                                      features)
    with pytest.raises(ValueError, match="feature type"):
        feat_analysis.extract_features(signal, SAMPLE_RATE, settings_of("chroma"))


# ----------------------------------------------------------------------------------------------------------------
# Batched = per clip, whatever the threading

@pytest.mark.parametrize("kind", ["stft", "mel", "mfcc"])
def test_batch_gives_the_same_numbers_as_per_clip(kind):
    clips = np.stack([noise_with_silence(1.0, seed) for seed in range(feat_analysis.BATCH_BLOCK_CLIPS + 3)])
    clips[3] = 0.0  # a silent clip
    s = settings_of(kind)
    batched = feat_analysis.extract_features_batch(clips, SAMPLE_RATE, s)
    assert batched.dtype == np.float32
    assert batched.shape == (len(clips), 1 + clips.shape[1] // s["hop_length"], feat_analysis.n_bins(s))
    for clip, features in zip(clips, batched):
        np.testing.assert_array_equal(features, feat_analysis.extract_features(clip, SAMPLE_RATE, s))


def test_numbers_do_not_depend_on_blas_threads():
    clips = np.stack([noise_with_silence(1.0, seed) for seed in range(4)])
    s = settings_of("mfcc")
    default = feat_analysis.extract_features_batch(clips, SAMPLE_RATE, s)
    with threadpoolctl.threadpool_limits(limits=1):
        single = feat_analysis.extract_features_batch(clips, SAMPLE_RATE, s)
    np.testing.assert_array_equal(default, single)


@pytest.mark.parametrize("changes", [{},
                                     {"cqt_fmin": 55.0, "cqt_bins": 60, "cqt_bins_per_octave": 12, "hop_length": 256},
                                     {"cqt_fmin": 110.0, "cqt_bins": 48, "cqt_bins_per_octave": 24}])
def test_cqt_equals_librosa_cqt_in_decibels_and_places_a_tone_in_its_bin(changes):
    settings = settings_of("cqt", {"cqt_fmin": 32.7, "cqt_bins": 84, "cqt_bins_per_octave": 12, **changes})
    signal = noise_with_silence()
    features = feat_analysis.extract_features(signal, SAMPLE_RATE, settings)
    spectrum = librosa.cqt(y=signal, sr=SAMPLE_RATE, hop_length=settings["hop_length"], fmin=settings["cqt_fmin"],
                           n_bins=settings["cqt_bins"], bins_per_octave=settings["cqt_bins_per_octave"])
    expected = librosa.power_to_db(np.abs(spectrum) ** 2, ref=1.0, amin=1e-10, top_db=80.0).T
    assert features.shape == expected.shape == (1 + len(signal) // settings["hop_length"], settings["cqt_bins"])
    np.testing.assert_allclose(features, expected, atol=1e-3)
    tone = 440.0  # A4: bin bins_per_octave * log2(440 / fmin) above the lowest
    peaks = feat_analysis.extract_features(sine(tone), SAMPLE_RATE, settings)[4:-4].argmax(axis=1)
    expected_bin = settings["cqt_bins_per_octave"] * np.log2(tone / settings["cqt_fmin"])
    assert np.all(np.abs(peaks - expected_bin) <= 1)


def test_cqt_settings_librosa_cannot_compute_are_explained():
    settings = settings_of("cqt", {"cqt_fmin": 32.7, "cqt_bins": 84, "cqt_bins_per_octave": 12})
    assert feat_analysis.cqt_problem(SAMPLE_RATE, settings) is None
    assert "Nyquist" in feat_analysis.cqt_problem(8000, settings)


def test_a_window_hop_longer_than_the_window_is_refused():
    pre = {"sample_rate": 16000, "clip_mode": "windows", "clip_seconds": 1.0, "window_seconds": 0.25,
           "window_hop_seconds": 1.0}
    feat = {"type": "mel", "n_fft": 512, "win_length": 512, "hop_length": 256, "n_mels": 32, "fmin": 0.0,
            "fmax": 0.0, "window": "hann"}
    problem = feat_analysis.settings_problem(pre, feat, "mel")
    assert "window_hop_seconds = 1.0 is longer than window_seconds = 0.25" in problem
    assert feat_analysis.settings_problem(dict(pre, window_hop_seconds=0.25), feat, "mel") is None
