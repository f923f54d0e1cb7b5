"""Audio in, features out: xval's one front end, for the dataset's features and for predictions of new files alike.

Audio (clip_signals): any file soundfile reads, mixed to mono, resampled with soxr 'soxr_hq' (librosa.load's
numbers), then padded or cut to a fixed length or cut into windows (length_settings of [preprocessing]).
Features: STFT magnitude, log-mel (dB), MFCC and constant-Q (dB), time first, with librosa.

Every feature is a float32 array shaped (frames, bins): row t is the analysis frame centred on sample
t * hop_length (zero padding of n_fft // 2 at both ends: librosa's center=True, pad_mode='constant'), so time
runs forward down the rows; column k is the k-th frequency bin (STFT: k * sample_rate / n_fft Hz), mel band (low
to high), cepstral coefficient or constant-Q bin (cqt_fmin * 2 ** (k / cqt_bins_per_octave) Hz).

The work is librosa 0.11's (stft, filters.mel, power_to_db, feature.mfcc; keyword arguments only), arranged so:
- many clips go through at once (`extract_features_batch`: librosa works over leading axes), with the mel basis
  built once per run (`analysis_plan`); the per-clip functions are the same code with one clip, so both give
  identical numbers;
- the numbers do not depend on BLAS threading: the mel projection is a sparse product (each FFT bin feeds at
  most two mel bands) in float64, outside BLAS, rounded to float32 once (librosa's dense float32 product changes
  in the last bit with the number of threads: benchmarks/tweaks.py, d_sparse_mel). It is kept for that, not for
  speed: on or off, 0.40 ms a clip;
- the dB floor (top_db) is per clip, as if each clip went through librosa.power_to_db on its own.
"""
import warnings
from pathlib import Path

import librosa
import numpy as np
import scipy.signal
import scipy.sparse
import soundfile as sf

FEATURE_TYPES = ("stft", "mfcc", "mel", "cqt")
PAD_MODE = "constant"  # frames at the edges see zeros beyond the signal (librosa's default since 0.10)
DB_AMIN = 1e-10  # power floor before log10 (-100 dB)
DB_REF = 1.0  # 0 dB is power 1.0
DB_TOP = 80.0  # each clip's dB values are floored at its maximum minus this (librosa's top_db)
MFCC_DCT_TYPE = 2  # orthonormal DCT-II of the dB mel bands (librosa.feature.mfcc's default)
MFCC_NORM = "ortho"
BATCH_BLOCK_CLIPS = 8  # clips transformed together (bounds the temporary float64 arrays)
RESAMPLER = "soxr_hq"  # librosa.load's default resampler
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif", ".au")  # what a folder of audio is read for


def n_frames(n_samples, hop_length):
    """Number of frames of a signal of n_samples samples (centred frames): 1 + n_samples // hop_length."""
    return 1 + n_samples // hop_length


def n_bins(feature_settings):
    """Number of columns of a feature: n_fft // 2 + 1 (stft), n_mels (mel) or n_mfcc (mfcc)."""
    kind = feature_settings["type"]
    if kind == "stft":
        return feature_settings["n_fft"] // 2 + 1
    if kind == "mel":
        return feature_settings["n_mels"]
    if kind == "mfcc":
        return feature_settings["n_mfcc"]
    if kind == "cqt":
        return feature_settings["cqt_bins"]
    raise ValueError(f"feature type {kind!r} is not one of {FEATURE_TYPES}")


def mel_fmax(fmax, sample_rate):
    """Upper mel band edge in Hz: fmax, or sample_rate / 2 when fmax is 0 (the config's 'none')."""
    return float(fmax) if fmax and fmax > 0 else sample_rate / 2.0


def analysis_plan(sample_rate, feature_settings):
    """What every batch reuses: {'mel_basis': sparse float64 (n_mels, n_fft // 2 + 1), or None for stft}.

    The basis is librosa.filters.mel (Slaney scale, area norm), its zeros left out.
    """
    if feature_settings["type"] not in ("mel", "mfcc"):
        return {"mel_basis": None}
    return {"mel_basis": scipy.sparse.csr_array(mel_filters(sample_rate, feature_settings).astype(np.float64))}


def mel_filters(sample_rate, feature_settings):
    """librosa.filters.mel of the settings (n_fft, n_mels, fmin, fmax): float32 (n_mels, n_fft // 2 + 1)."""
    s = feature_settings
    return librosa.filters.mel(sr=sample_rate, n_fft=s["n_fft"], n_mels=s["n_mels"], fmin=s["fmin"],
                               fmax=mel_fmax(s["fmax"], sample_rate))


def mel_power(power, mel_basis):
    """Mel band power of float32 power spectra (clips, frames, n_fft // 2 + 1): float32 (clips, frames, n_mels),
    summed in float64 by scipy.sparse (no BLAS, so the same numbers with any number of threads)."""
    clips, frames, bins = power.shape
    bands = mel_basis @ power.reshape(clips * frames, bins).T.astype(np.float64)  # (n_mels, clips * frames)
    return bands.T.astype(np.float32).reshape(clips, frames, -1)


def constant_q(signals, sample_rate, feature_settings):
    """Constant-Q power in dB of float32 signals (clips, samples) -> float32 (clips, frames, cqt_bins): librosa.cqt
    (hop_length, cqt_fmin, cqt_bins, cqt_bins_per_octave), |C| ** 2 in dB floored like the mel bands."""
    s = feature_settings
    spectrum = librosa.cqt(y=signals, sr=sample_rate, hop_length=s["hop_length"], fmin=s["cqt_fmin"],
                           n_bins=s["cqt_bins"], bins_per_octave=s["cqt_bins_per_octave"], pad_mode=PAD_MODE)
    return clip_decibels(np.swapaxes(np.abs(spectrum) ** 2, -1, -2).astype(np.float32))


def empty_mel_bands(sample_rate, feature_settings):
    """How many of the mel filters of these settings hold no FFT bin (librosa warns and leaves them zero)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        basis = mel_filters(sample_rate, feature_settings)
    return int(np.sum(basis.max(axis=1) == 0))


def cqt_problem(sample_rate, feature_settings):
    """Why librosa cannot compute the constant-Q transform with these settings (one line), or None."""
    s = feature_settings
    try:
        with warnings.catch_warnings():  # librosa's warnings about this 1 s test signal would read as the user's audio
            warnings.simplefilter("ignore", UserWarning)
            librosa.cqt(y=np.zeros(sample_rate, np.float32), sr=sample_rate, hop_length=s["hop_length"],
                        fmin=s["cqt_fmin"], n_bins=s["cqt_bins"], bins_per_octave=s["cqt_bins_per_octave"])
    except librosa.util.exceptions.ParameterError as error:
        return (f"cqt_fmin = {s['cqt_fmin']}, cqt_bins = {s['cqt_bins']}, cqt_bins_per_octave = "
                f"{s['cqt_bins_per_octave']}, hop_length = {s['hop_length']} at {sample_rate} Hz: {error}")
    return None


def settings_problem(pre, feat, feature_type):
    """Why [preprocessing] pre and [features] feat cannot give features of feature_type (a line beginning with the
    section and key to fix), or None."""
    if feature_type not in FEATURE_TYPES:
        return f"[features] type {feature_type!r} is not one of {', '.join(FEATURE_TYPES)} (or fix --features)"
    if feat["win_length"] > feat["n_fft"]:
        return f"[features] win_length = {feat['win_length']} is longer than n_fft = {feat['n_fft']}: make it <= n_fft"
    try:
        scipy.signal.get_window(feat["window"], feat["win_length"])
    except (ValueError, TypeError):
        return (f"[features] window = {feat['window']!r} is not a window scipy.signal.get_window knows: use hann, "
                "hamming, blackman, ...")
    length = length_settings(pre)
    for key, name in (("clip_samples", "clip_seconds"), ("window_samples", "window_seconds"),
                      ("hop_samples", "window_hop_seconds")):
        if key in length and length[key] < 1:
            return f"[preprocessing] {name} = {pre[name]} is shorter than one sample: make it longer"
    if length["mode"] == "windows" and length["hop_samples"] > length["window_samples"]:
        return (f"[preprocessing] window_hop_seconds = {pre['window_hop_seconds']} is longer than window_seconds = "
                f"{pre['window_seconds']}: the audio between two windows would never be used; make the hop at most "
                "the window")
    nyquist = pre["sample_rate"] / 2
    if feature_type != "cqt" and feat["hop_length"] > feat["win_length"]:
        return (f"[features] hop_length = {feat['hop_length']} is longer than win_length = {feat['win_length']}: the "
                "samples between two frames would never be analysed; make hop_length at most win_length")
    if feature_type in ("mel", "mfcc"):
        if feat["fmax"] < 0:
            return (f"[features] fmax = {feat['fmax']} is negative: give the upper band edge in Hz, or 0 for half the "
                    "sample rate")
        fmax = mel_fmax(feat["fmax"], pre["sample_rate"])
        if fmax > nyquist:
            return (f"[features] fmax = {feat['fmax']} is above half the sample rate ({nyquist:g} Hz): lower it, or 0 "
                    "for half the sample rate")
        if not 0 <= feat["fmin"] < fmax:
            return f"[features] fmin = {feat['fmin']} must be at least 0 and below fmax ({fmax:g} Hz): fix it"
        empty = empty_mel_bands(pre["sample_rate"], feat)
        if empty:
            return (f"[features] n_mels = {feat['n_mels']} is too many for n_fft = {feat['n_fft']} at "
                    f"{pre['sample_rate']} Hz between {feat['fmin']:g} and {fmax:g} Hz: {empty} band(s) would hold no "
                    "frequency bin and stay empty; lower n_mels or raise n_fft")
    if feature_type == "mfcc" and feat["n_mfcc"] > feat["n_mels"]:
        return (f"[features] n_mfcc = {feat['n_mfcc']} is more than n_mels = {feat['n_mels']}: lower n_mfcc or raise "
                "n_mels")
    problem = cqt_problem(pre["sample_rate"], feat) if feature_type == "cqt" else None
    return f"[features] {problem}" if problem else None


def spectrogram(signals, feature_settings, power):
    """|STFT| ** power of float32 signals (clips, samples) -> float32 (clips, frames, n_fft // 2 + 1)."""
    s = feature_settings
    spectrum = librosa.stft(y=signals, n_fft=s["n_fft"], hop_length=s["hop_length"], win_length=s["win_length"],
                            window=s["window"], center=True, pad_mode=PAD_MODE)
    return np.swapaxes(np.abs(spectrum) ** np.float32(power), -1, -2)


def clip_decibels(power):
    """10 log10(power / DB_REF) of float32 (clips, frames, bins), floored at DB_AMIN and at each clip's maximum
    minus DB_TOP: float32, same shape."""
    decibels = librosa.power_to_db(power, ref=DB_REF, amin=DB_AMIN, top_db=None)
    return np.maximum(decibels, decibels.max(axis=(1, 2), keepdims=True) - np.float32(DB_TOP))


def features_block(signals, sample_rate, feature_settings, plan):
    """Features of a block of clips: float32 (clips, samples) -> float32 (clips, frames, bins)."""
    s = feature_settings
    if s["type"] == "cqt":
        return constant_q(signals, sample_rate, s)
    if s["type"] == "stft":
        return spectrogram(signals, s, s["power_law_compression"])
    power = spectrogram(signals, s, 2.0)
    decibels = clip_decibels(mel_power(power, plan["mel_basis"]))
    if s["type"] == "mel":
        return decibels
    coefficients = librosa.feature.mfcc(S=np.swapaxes(decibels, -1, -2), n_mfcc=s["n_mfcc"],
                                        dct_type=MFCC_DCT_TYPE, norm=MFCC_NORM)
    return np.swapaxes(coefficients, -1, -2)


def extract_features_batch(signals, sample_rate, feature_settings, plan=None):
    """The feature named by feature_settings['type'] (stft | mel | mfcc | cqt) of many mono clips of equal length.

    signals: float32 (clips, samples), amplitude in [-1, 1]; sample_rate in Hz; feature_settings: the config's
    [features] dict; plan: analysis_plan(sample_rate, feature_settings), built when None.
    Returns float32 (clips, frames, bins): frames = 1 + samples // hop_length, bins = n_bins(feature_settings).
    """
    if feature_settings["type"] not in FEATURE_TYPES:
        raise ValueError(f"feature type {feature_settings['type']!r} is not one of {FEATURE_TYPES}")
    signals = np.asarray(signals, dtype=np.float32)
    if signals.ndim != 2:
        raise ValueError(f"signals must be shaped (clips, samples), got {signals.shape}")
    plan = plan if plan is not None else analysis_plan(sample_rate, feature_settings)
    frames = n_frames(signals.shape[1], feature_settings["hop_length"])
    features = np.empty((len(signals), frames, n_bins(feature_settings)), dtype=np.float32)
    for start in range(0, len(signals), BATCH_BLOCK_CLIPS):
        block = slice(start, start + BATCH_BLOCK_CLIPS)
        features[block] = features_block(signals[block], sample_rate, feature_settings, plan)
    return features


def extract_features(signal, sample_rate, feature_settings, plan=None):
    """The feature named by feature_settings['type'] (stft | mel | mfcc | cqt) of one mono clip.

    signal: float32 (samples,); sample_rate in Hz; feature_settings: the config's [features] dict.
    Returns float32 (frames, bins), frames = 1 + samples // hop_length; the same numbers as
    extract_features_batch gives for this clip.
    """
    signal = np.asarray(signal, dtype=np.float32)
    if signal.ndim != 1:
        raise ValueError(f"signal must be mono, shaped (samples,), got {signal.shape}")
    return extract_features_batch(signal[np.newaxis], sample_rate, feature_settings, plan)[0]


def _settings(kind, n_fft, hop_length, win_length, window, **others):
    """A [features]-like dict for the per-clip functions (unused keys filled with harmless values)."""
    settings = {"type": kind, "n_fft": n_fft, "hop_length": hop_length, "win_length": win_length,
                "window": window, "n_mels": 1, "n_mfcc": 1, "fmin": 0.0, "fmax": 0.0, "power_law_compression": 1.0,
                "cqt_fmin": 32.7, "cqt_bins": 1, "cqt_bins_per_octave": 12}
    settings.update(others)
    return settings


def stft_magnitude(signal, sample_rate, n_fft, hop_length, win_length, window, power_law_compression=1.0):
    """|STFT| ** power_law_compression of a mono clip.

    signal: float32 (samples,), amplitude in [-1, 1]; sample_rate in Hz; n_fft, hop_length, win_length in
    samples; window: a scipy.signal.get_window name. Returns float32 (frames, n_fft // 2 + 1); column k is
    k * sample_rate / n_fft Hz.
    """
    settings = _settings("stft", n_fft, hop_length, win_length, window, power_law_compression=power_law_compression)
    return extract_features(signal, sample_rate, settings)


def log_mel(signal, sample_rate, n_fft, hop_length, win_length, window, n_mels, fmin, fmax):
    """Log-mel power spectrogram in dB: 10 log10 of the mel band power, floored at the clip's maximum - 80 dB.

    signal: float32 (samples,); sample_rate, fmin, fmax in Hz (fmax 0 means sample_rate / 2).
    Returns float32 (frames, n_mels), lowest band first.
    """
    settings = _settings("mel", n_fft, hop_length, win_length, window, n_mels=n_mels, fmin=fmin, fmax=fmax)
    return extract_features(signal, sample_rate, settings)


def mfcc(signal, sample_rate, n_fft, hop_length, win_length, window, n_mfcc, n_mels, fmin, fmax):
    """MFCCs: orthonormal DCT-II over the bands of `log_mel`, first n_mfcc coefficients.

    signal: float32 (samples,); sample_rate, fmin, fmax in Hz (fmax 0 means sample_rate / 2).
    Returns float32 (frames, n_mfcc); column 0 is sqrt(n_mels) times the frame's mean log-mel level (dB).
    """
    settings = _settings("mfcc", n_fft, hop_length, win_length, window, n_mfcc=n_mfcc, n_mels=n_mels, fmin=fmin,
                         fmax=fmax)
    return extract_features(signal, sample_rate, settings)


def cqt_db(signal, sample_rate, hop_length, cqt_fmin, cqt_bins, cqt_bins_per_octave):
    """Constant-Q power in dB: 10 log10 |C| ** 2 of librosa.cqt, floored at the clip's maximum - 80 dB.

    signal: float32 (samples,); sample_rate and cqt_fmin in Hz; hop_length in samples (a multiple of
    2 ** (octaves - 1)). Returns float32 (frames, cqt_bins), lowest bin (cqt_fmin) first.
    """
    settings = _settings("cqt", 2 * hop_length, hop_length, 2 * hop_length, "hann", cqt_fmin=cqt_fmin,
                         cqt_bins=cqt_bins, cqt_bins_per_octave=cqt_bins_per_octave)
    return extract_features(signal, sample_rate, settings)


# ----------------------------------------------------------------------------------------------------------------
# Audio: the same numbers as librosa.load(path, sr=sample_rate) (mono, soxr_hq), then fixed length or windows

def length_settings(preprocessing):
    """What cuts audio into the pieces features are made of: {"mode", "sample_rate", ...} (see clip_signals)."""
    rate = preprocessing["sample_rate"]
    if preprocessing["clip_mode"] == "fixed":
        return {"mode": "fixed", "sample_rate": rate, "clip_samples": int(round(preprocessing["clip_seconds"] * rate)),
                "cut_mode": preprocessing["cut_mode"]}
    return {"mode": "windows", "sample_rate": rate,
            "window_samples": int(round(preprocessing["window_seconds"] * rate)),
            "hop_samples": int(round(preprocessing["window_hop_seconds"] * rate))}


# the [features] keys each feature type reads (type itself always); the other keys idle
FEATURE_KEYS = {"stft": ("n_fft", "win_length", "hop_length", "window", "power_law_compression"),
                "mel": ("n_fft", "win_length", "hop_length", "window", "n_mels", "fmin", "fmax"),
                "mfcc": ("n_fft", "win_length", "hop_length", "window", "n_mels", "n_mfcc", "fmin", "fmax"),
                "cqt": ("hop_length", "cqt_fmin", "cqt_bins", "cqt_bins_per_octave")}
# the [preprocessing] keys each clip mode reads (sample_rate, clip_mode and the front ends' own keys always)
CLIP_MODE_KEYS = {"fixed": ("clip_seconds", "cut_mode"), "windows": ("window_seconds", "window_hop_seconds")}


def idle_settings(preprocessing, features):
    """({[preprocessing] keys}, {[features] keys}) that give the same features whatever their value with these
    settings: the other clip mode's lengths, the other feature types' keys."""
    pre_idle = {key for mode, keys in CLIP_MODE_KEYS.items() if mode != preprocessing.get("clip_mode")
                for key in keys} - set(CLIP_MODE_KEYS.get(preprocessing.get("clip_mode"), ()))
    acting = set(FEATURE_KEYS.get(features.get("type"), features))
    feat_idle = {key for keys in FEATURE_KEYS.values() for key in keys} - acting
    return pre_idle & set(preprocessing), feat_idle & set(features)


def cut_to_clip(duration, length):
    """Whether a recording of duration s loses audio to a fixed-length clip (length: length_settings'; windows
    keep everything); a millisecond of slack for the rounding of clip_samples."""
    return length["mode"] == "fixed" and duration > length["clip_samples"] / length["sample_rate"] + 1e-3



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


def fit_length(signal, n_samples, cut_mode):
    """signal (samples,) padded with zeros at the end, or cut at the start (cut_mode 'start') or around the
    centre ('center'), to exactly n_samples."""
    if len(signal) == n_samples:
        return signal
    start = 0 if cut_mode == "start" or len(signal) <= n_samples else (len(signal) - n_samples) // 2
    kept = signal[start:start + n_samples]
    return np.concatenate([kept, np.zeros(n_samples - len(kept), dtype=signal.dtype)])


def window_count(n_samples, window_samples, hop_samples):
    """Windows that cover a signal of n_samples: 1 + ceil((n_samples - window) / hop), at least 1."""
    return 1 + max(0, -(-(n_samples - window_samples) // hop_samples))


def cut_windows(signal, window_samples, hop_samples):
    """float32 (samples,) -> float32 (windows, window_samples): window i starts at i * hop_samples; the last one
    (or a clip shorter than one window) is padded with zeros at the end."""
    count = window_count(len(signal), window_samples, hop_samples)
    padded = np.zeros((count - 1) * hop_samples + window_samples, dtype=np.float32)
    padded[:len(signal)] = signal
    return np.lib.stride_tricks.sliding_window_view(padded, window_samples)[::hop_samples].copy()


def load_clip(path, sample_rate, clip_samples, cut_mode):
    """One fixed-length clip as the dataset holds it before features: float32 (clip_samples,) at sample_rate Hz."""
    length = {"mode": "fixed", "sample_rate": sample_rate, "clip_samples": clip_samples, "cut_mode": cut_mode}
    return clip_signals(path, length)[0][0]


def clip_signals(path, length):
    """A clip's signals before features, by length settings: ((pieces, samples) float32, native rate in Hz,
    duration in s). length: {"mode": "fixed", "clip_samples", "cut_mode"} gives one piece; {"mode": "windows",
    "window_samples", "hop_samples"} one piece per window. Also the native rate and the duration."""
    signal, native_rate = read_mono(path)
    duration = len(signal) / native_rate
    signal = resample(signal, native_rate, length["sample_rate"])
    if length["mode"] == "fixed":
        return fit_length(signal, length["clip_samples"], length["cut_mode"])[np.newaxis], native_rate, duration
    return cut_windows(signal, length["window_samples"], length["hop_samples"]), native_rate, duration
