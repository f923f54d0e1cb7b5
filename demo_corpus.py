"""A synthetic stand-in for RAVDESS speech: same folder layout and file names, emotion carried by prosody.

    {folder}/Actor_XX/03-01-EE-II-SS-RR-XX.wav   48 kHz, 16-bit, mono, 2.5-3.5 s

Each clip is a source-filter voice saying a fixed phone sequence (statement 01 "kids are talking by the door",
statement 02 "dogs are sitting by the door"): glottal pulses (Rosenberg shape) at an f0 contour, with jitter,
shimmer, creak and aspiration noise, through formant resonators per phone, with noise bursts for the stops
and fricatives, syllable amplitude envelopes, a recording channel and background noise.

What carries emotion (EMOTION_PROSODY): pitch level and range, a final rise or fall, tempo, loudness, spectral
tilt and open quotient (breathy to pressed), aspiration, jitter, shimmer, tremor and creak. Strong intensity
scales every deviation from neutral by STRONG_INTENSITY_GAIN. What makes held-out actors hard (actor_traits):
each actor has a sex (even ids female, as in RAVDESS), own f0 and vocal tract length (formant scale), own
tempo, breathiness, recording gain, channel colour and noise floor, own expressiveness, and realises each
emotion with own random offsets. Everything is deterministic from (seed, actor, emotion, intensity, statement,
repetition), so a smaller corpus holds exactly the same clips as the full one.
"""
import functools
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import scipy.signal
import soundfile as sf
import soxr

from utility_functions import (RAVDESS_EMOTIONS, commit_temp_file, remove_stale_temp_files, temp_path_for,
                               whole_number)

SAMPLE_RATE = 48000  # Hz, as RAVDESS
SYNTH_RATE = 24000  # Hz, the voice is made at this rate (it has nothing above 12 kHz), then upsampled
SUBTYPE = "PCM_16"
EMOTION_NAMES = RAVDESS_EMOTIONS  # codes 01..08
ALL_EMOTIONS = tuple(range(1, 9))
INTENSITIES = (1, 2)  # 01 normal, 02 strong; neutral has only 01
N_ACTORS = 24
CLIP_SECONDS_RANGE = (2.5, 3.5)
CONTROL_HOP = 24  # samples between control points of the f0 and amplitude contours (1 ms)
CROSSFADE_SECONDS = 0.025  # overlap of neighbouring phones in the vocal tract filtering
RESONANCE_TAIL_SECONDS = 0.03  # how long a phone's resonators ring on after it
STRONG_INTENSITY_GAIN = 1.7  # strong intensity multiplies every deviation from neutral by this
REFERENCE_PEAK = 0.1  # about -20 dBFS: voice level of a neutral clip before loudness changes
PULSE_TABLE_SIZE = 1024  # samples of the tabulated glottal pulse
LIMIT_AT = 0.9  # peaks above this are soft-limited (tanh), never clipped

# Vowel formants F1..F5 (Hz) of an adult male voice; actors scale them by their vocal tract length factor.
VOWEL_FORMANTS = {
    "i": (280, 2250, 2900, 3500, 4500), "I": (400, 1950, 2550, 3500, 4500), "a": (720, 1150, 2450, 3500, 4500),
    "o": (580, 880, 2400, 3400, 4400), "@": (500, 1450, 2500, 3500, 4500), "N": (280, 1100, 2400, 3400, 4400),
}
FORMANT_BANDWIDTHS = (80.0, 100.0, 140.0, 220.0, 300.0)  # Hz

# Phones: (kind, symbol, duration in ms at neutral tempo, stressed). Kinds: vowel, nasal (voiced murmur),
# stop (closure then burst), vstop (voiced closure then weak burst), fric (noise), vfric (noise over voicing).
STATEMENTS = {
    1: (("stop", "k", 55, 0), ("vowel", "I", 105, 1), ("vfric", "z", 95, 0), ("vowel", "a", 110, 0),
        ("stop", "t", 50, 0), ("vowel", "o", 150, 1), ("stop", "k", 55, 0), ("vowel", "I", 80, 0),
        ("nasal", "N", 70, 0), ("vstop", "b", 40, 0), ("vowel", "a", 100, 1), ("vowel", "i", 85, 0),
        ("vfric", "dh", 45, 0), ("vowel", "@", 65, 0), ("vstop", "d", 45, 0), ("vowel", "o", 250, 1)),
    2: (("vstop", "d", 45, 0), ("vowel", "o", 140, 1), ("vfric", "z", 90, 0), ("vowel", "a", 110, 0),
        ("fric", "s", 110, 0), ("vowel", "I", 100, 1), ("stop", "t", 45, 0), ("vowel", "I", 80, 0),
        ("nasal", "N", 70, 0), ("vstop", "b", 40, 0), ("vowel", "a", 100, 1), ("vowel", "i", 85, 0),
        ("vfric", "dh", 45, 0), ("vowel", "@", 65, 0), ("vstop", "d", 45, 0), ("vowel", "o", 250, 1)),
}
# Noise of consonants: (low, high) band edge in Hz before the actor's formant scale, level relative to voice.
CONSONANT_NOISE = {"s": ((3800, 9000), 0.5), "z": ((3800, 9000), 0.3), "dh": ((1200, 6000), 0.08),
                   "k": ((1200, 4000), 0.6), "t": ((3000, 8000), 0.6), "b": ((300, 2000), 0.15),
                   "d": ((1500, 5000), 0.2)}

# Prosody of each emotion: absolute values for neutral, the others differ from neutral by what they list.
# pitch: f0 shift (semitones); range: factor of accent heights; final: final rise (+) or fall (-) in semitones;
# tempo: speaking rate factor; loudness: dB; tilt: extra source low-pass (0..0.9, higher is darker);
# open_quotient: glottis open share of a period (higher is breathier, softer); breath: aspiration level;
# jitter: f0 perturbation (share of f0); shimmer: period amplitude perturbation; tremor: 6 Hz f0 wobble
# (semitones); creak: share of alternating (period-doubled) pulses.
NEUTRAL_PROSODY = {"pitch": 0.0, "range": 1.0, "final": -1.0, "tempo": 1.0, "loudness": 0.0, "tilt": 0.35,
                   "open_quotient": 0.55, "breath": 0.04, "jitter": 0.006, "shimmer": 0.04, "tremor": 0.0,
                   "creak": 0.0}
EMOTION_PROSODY = {
    "neutral": {},
    "calm": {"pitch": -1.0, "range": 0.75, "final": -1.5, "tempo": 0.9, "loudness": -3.0, "tilt": 0.5,
             "open_quotient": 0.62, "breath": 0.07},
    "happy": {"pitch": 3.0, "range": 1.6, "final": 2.0, "tempo": 1.1, "loudness": 3.0, "tilt": 0.25,
              "open_quotient": 0.5, "jitter": 0.008},
    "sad": {"pitch": -1.5, "range": 0.5, "final": -3.0, "tempo": 0.8, "loudness": -5.0, "tilt": 0.6,
            "open_quotient": 0.68, "breath": 0.1, "jitter": 0.012, "shimmer": 0.06, "tremor": 0.15, "creak": 0.1},
    "angry": {"pitch": 2.0, "range": 1.4, "final": -2.5, "tempo": 1.12, "loudness": 7.0, "tilt": 0.1,
              "open_quotient": 0.4, "breath": 0.02, "jitter": 0.014, "shimmer": 0.07, "creak": 0.05},
    "fearful": {"pitch": 5.0, "range": 1.1, "final": 1.0, "tempo": 1.18, "loudness": 1.0, "open_quotient": 0.6,
                "breath": 0.12, "jitter": 0.018, "shimmer": 0.06, "tremor": 0.6},
    "disgust": {"pitch": -0.5, "range": 0.9, "final": -2.0, "tempo": 0.82, "loudness": -1.0, "tilt": 0.45,
                "open_quotient": 0.5, "breath": 0.05, "jitter": 0.014, "shimmer": 0.09, "creak": 0.35},
    "surprised": {"pitch": 4.0, "range": 2.0, "final": 5.0, "tempo": 1.05, "loudness": 4.0, "tilt": 0.3,
                  "breath": 0.08, "jitter": 0.007},
}
MULTIPLICATIVE = ("range", "tempo")  # deviations of these are ratios (scaled in the log domain)
# Spread of each actor's own realisation of an emotion (added to the deviation, in the deviation's units).
ACTOR_EMOTION_SPREAD = {"pitch": 1.3, "range": 0.25, "final": 1.5, "tempo": 0.06, "loudness": 2.5, "tilt": 0.1,
                        "open_quotient": 0.05, "breath": 0.025, "jitter": 0.003, "shimmer": 0.015,
                        "tremor": 0.1, "creak": 0.06}
LIMITS = {"range": (0.2, 4.0), "tempo": (0.6, 1.6), "tilt": (0.0, 0.9), "open_quotient": (0.3, 0.85),
          "breath": (0.0, 0.4), "jitter": (0.0, 0.05), "shimmer": (0.0, 0.2), "tremor": (0.0, 1.5),
          "creak": (0.0, 0.8)}


# ----------------------------------------------------------------------------------------------------------------
# Names and the corpus plan

def clip_name(actor, emotion, intensity, statement, repetition):
    """RAVDESS file name of an audio-only speech clip, e.g. 03-01-05-02-01-02-07.wav."""
    return f"03-01-{emotion:02d}-{intensity:02d}-{statement:02d}-{repetition:02d}-{actor:02d}.wav"


def emotion_code(emotion):
    """RAVDESS emotion code 1..8 of a code or a name ('happy' -> 3)."""
    if isinstance(emotion, str):
        if emotion not in EMOTION_NAMES:
            raise ValueError(f"emotion {emotion!r} is not one of {EMOTION_NAMES}")
        return EMOTION_NAMES.index(emotion) + 1
    if int(emotion) not in ALL_EMOTIONS:
        raise ValueError(f"emotion code {emotion!r} is not in 1..8")
    return int(emotion)


def corpus_plan(n_actors=N_ACTORS, emotions=ALL_EMOTIONS, statements=(1, 2), repetitions=(1, 2),
                intensities=INTENSITIES):
    """Every clip of a corpus as (actor, emotion, intensity, statement, repetition), sorted; neutral only normal."""
    codes = sorted({emotion_code(emotion) for emotion in emotions})
    return [(actor, emotion, intensity, statement, repetition)
            for actor in range(1, n_actors + 1) for emotion in codes for intensity in sorted(intensities)
            if not (emotion == 1 and intensity == 2)
            for statement in sorted(statements) for repetition in sorted(repetitions)]


def clip_path(folder, clip):
    """Path of a clip (actor, emotion, intensity, statement, repetition) in the corpus folder."""
    return Path(folder) / f"Actor_{clip[0]:02d}" / clip_name(*clip)


# ----------------------------------------------------------------------------------------------------------------
# Who speaks, and how they act an emotion

def actor_traits(seed, actor):
    """An actor's voice: dict of f0 (Hz), formant_scale, tempo, breath, jitter, gain_db, channel_tilt,
    noise_db (background noise, dBFS), expressiveness, formant_offsets (5 factors per vowel)."""
    rng = np.random.default_rng([seed, actor, 1])
    female = actor % 2 == 0
    return {
        "female": female,
        "f0": rng.uniform(175, 245) if female else rng.uniform(95, 140),
        "formant_scale": rng.uniform(1.08, 1.2) if female else rng.uniform(0.92, 1.04),
        "tempo": rng.uniform(0.88, 1.12),
        "breath": rng.uniform(0.0, 0.05) + (0.02 if female else 0.0),
        "jitter": rng.uniform(0.0, 0.004),
        "tilt": rng.uniform(-0.1, 0.1),
        "gain_db": rng.uniform(-6, 6),
        "channel_tilt": rng.uniform(-0.4, 0.4),
        "noise_db": rng.uniform(-70, -52),
        "expressiveness": rng.uniform(0.55, 1.3),
        "formant_offsets": {vowel: rng.uniform(0.93, 1.07, size=5) for vowel in sorted(VOWEL_FORMANTS)},
    }


def _combine(name, neutral_value, deviation):
    """Neutral value moved by a deviation: ratios for MULTIPLICATIVE keys, differences otherwise, then limited."""
    value = neutral_value * np.exp(deviation) if name in MULTIPLICATIVE else neutral_value + deviation
    low, high = LIMITS.get(name, (-np.inf, np.inf))
    return float(np.clip(value, low, high))


def clip_prosody(seed, actor, emotion, intensity, traits):
    """The prosody of one actor acting one emotion at one intensity: NEUTRAL_PROSODY's keys, absolute values.

    deviation = (emotion's deviation from neutral * actor expressiveness + actor's own offset)
                * (STRONG_INTENSITY_GAIN if strong); the actor's offset is fixed per (actor, emotion).
    """
    rng = np.random.default_rng([seed, actor, emotion, 2])
    profile = EMOTION_PROSODY[EMOTION_NAMES[emotion - 1]]
    gain = STRONG_INTENSITY_GAIN if intensity == 2 else 1.0
    prosody = {}
    for name, neutral_value in NEUTRAL_PROSODY.items():
        target = profile.get(name, neutral_value)
        deviation = np.log(target / neutral_value) if name in MULTIPLICATIVE else target - neutral_value
        spread = ACTOR_EMOTION_SPREAD[name]
        if name in MULTIPLICATIVE:
            spread = np.log1p(spread)
        offset = rng.normal(0.0, spread) if emotion != 1 else 0.0
        prosody[name] = _combine(name, neutral_value, (deviation * traits["expressiveness"] + offset) * gain)
    return prosody


# ----------------------------------------------------------------------------------------------------------------
# Signal pieces (all float64 at SYNTH_RATE)

def phone_timeline(phones, tempo, speech_seconds_max, rng):
    """Phones (STATEMENTS' tuples) with start and length in samples: list of (kind, symbol, start, length, stressed).

    Durations are the neutral ones / tempo with +-8 % random variation, shrunk to fit speech_seconds_max.
    """
    seconds = np.array([ms / 1000.0 for _, _, ms, _ in phones]) / tempo * rng.uniform(0.92, 1.08, len(phones))
    if seconds.sum() > speech_seconds_max:
        seconds *= speech_seconds_max / seconds.sum()
    lengths = np.maximum(1, np.round(seconds * SYNTH_RATE).astype(int))
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    return [(kind, symbol, int(start), int(length), stressed)
            for (kind, symbol, _, stressed), start, length in zip(phones, starts, lengths)]


def f0_contour(timeline, n_samples, base_f0, prosody, rng):
    """f0 in Hz per sample (float64 (n_samples,)): level, declination, accents on stressed vowels, final
    rise/fall, tremor and jitter."""
    control_t = np.arange(0, n_samples + CONTROL_HOP, CONTROL_HOP)
    speech_end = timeline[-1][2] + timeline[-1][3]
    progress = np.clip(control_t / max(speech_end, 1), 0, 1)
    semitones = prosody["pitch"] - 2.0 * progress  # declination of 2 semitones over the statement
    accent_height = 2.5 * prosody["range"]
    for kind, _, start, length, stressed in timeline:
        if kind == "vowel" and stressed:
            centre, width = start + 0.4 * length, 0.6 * length + 0.03 * SYNTH_RATE
            height = accent_height * rng.uniform(0.7, 1.3)
            semitones = semitones + height * np.exp(-0.5 * ((control_t - centre) / (0.5 * width)) ** 2)
    last_start, last_length = timeline[-1][2], timeline[-1][3]
    semitones = semitones + prosody["final"] * np.clip((control_t - last_start) / last_length, 0, 1) ** 1.5
    seconds = control_t / SYNTH_RATE
    semitones = semitones + prosody["tremor"] * np.sin(2 * np.pi * rng.uniform(5, 7) * seconds + rng.uniform(0, 6))
    f0 = base_f0 * 2.0 ** (semitones / 12.0)
    f0 = f0 * (1 + prosody["jitter"] * rng.standard_normal(len(control_t)))
    return np.interp(np.arange(n_samples), control_t, np.clip(f0, 50, 600))


def rosenberg_pulse(open_quotient, size=PULSE_TABLE_SIZE):
    """One period of Rosenberg glottal flow, float64 (size,): a raised-cosine opening over 65 % of the open
    phase, a quarter-cosine closing over the rest, closed (0) for the remaining 1 - open_quotient."""
    position = np.arange(size) / size
    opening, closing = 0.65 * open_quotient, 0.35 * open_quotient
    rising = 0.5 * (1 - np.cos(np.pi * np.minimum(position, opening) / opening))
    falling = np.cos(0.5 * np.pi * np.clip((position - opening) / closing, 0, 1))
    return np.where(position < opening, rising, falling)


def glottal_source(f0, prosody, rng):
    """Glottal flow derivative (float64, same length as f0), Rosenberg pulses, one per period of f0, and each
    sample's position within its period (0..1).

    open_quotient sets the open share of a period (a higher one is softer, breathier); tilt low-passes the
    pulses; shimmer scales each period's amplitude at random; creak weakens and delays every other pulse."""
    phase = np.cumsum(f0 / SYNTH_RATE)
    period = phase.astype(np.int64)
    position = phase - period
    n_periods = period[-1] + 2
    amplitude = np.clip(1 + prosody["shimmer"] * rng.standard_normal(n_periods), 0.2, 2.0)
    odd = np.arange(n_periods) % 2 == 1
    amplitude[odd] *= 1 - prosody["creak"]
    if prosody["creak"] > 0:
        position = np.where(odd[period], np.clip(position - 0.25 * prosody["creak"], 0, 1), position)
    pulse = rosenberg_pulse(prosody["open_quotient"])
    flow = pulse[np.minimum((position * PULSE_TABLE_SIZE).astype(np.int64), PULSE_TABLE_SIZE - 1)]
    derivative = np.diff(flow * amplitude[period], prepend=0.0)
    derivative = scipy.signal.lfilter([1 - prosody["tilt"]], [1, -prosody["tilt"]], derivative)
    return derivative / (derivative.std() + 1e-12), position


def resonator_sos(formants, bandwidths):
    """Cascade of two-pole resonators with unit gain at 0 Hz: second-order sections (len(formants), 6)."""
    sections = []
    for frequency, bandwidth in zip(formants, bandwidths):
        if frequency >= 0.47 * SYNTH_RATE:
            continue
        radius = np.exp(-np.pi * bandwidth / SYNTH_RATE)
        a1, a2 = -2 * radius * np.cos(2 * np.pi * frequency / SYNTH_RATE), radius ** 2
        sections.append([1 + a1 + a2, 0, 0, 1, a1, a2])
    return np.array(sections)


def phone_tract(kind, symbol, traits, prosody):
    """Formants and bandwidths (Hz) of the vocal tract during a phone, scaled to the actor."""
    vowel = symbol if kind in ("vowel", "nasal") else "@"
    scale = traits["formant_scale"] * traits["formant_offsets"][vowel]
    formants = np.array(VOWEL_FORMANTS[vowel]) * scale
    bandwidths = np.array(FORMANT_BANDWIDTHS) * (1 + 1.5 * (prosody["open_quotient"] - 0.5))
    if kind != "vowel":
        formants[0] = min(formants[0], 300.0)
        bandwidths = bandwidths * 2.0
    return formants, bandwidths


def crossfade_windows(timeline, n_samples):
    """Per phone, (first sample, weights float64): linear crossfades of CROSSFADE_SECONDS between neighbours,
    so that the weights of all phones sum to 1 during speech."""
    fade = int(CROSSFADE_SECONDS * SYNTH_RATE)
    windows = []
    for index, (_, _, start, length, _) in enumerate(timeline):
        rise = 0 if index == 0 else fade
        fall = 0 if index == len(timeline) - 1 else fade
        first, end = max(0, start - rise // 2), min(n_samples, start + length + fall - fall // 2)
        t = np.arange(first, end) + 0.5
        weights = np.ones(len(t))
        if rise:
            weights = np.minimum(weights, np.clip((t - (start - rise // 2)) / rise, 0, 1))
        if fall:
            weights = np.minimum(weights, np.clip((start + length + fall - fall // 2 - t) / fall, 0, 1))
        windows.append((first, weights))
    return windows


@functools.lru_cache(maxsize=512)
def bandpass_sos(low, high):
    """Second-order Butterworth band-pass between low and high Hz (designed once per band, then reused)."""
    return scipy.signal.butter(2, (low, high), btype="bandpass", fs=SYNTH_RATE, output="sos")


def consonant_noise(kind, symbol, length, traits, rng):
    """Noise of a stop burst or fricative, float64 (length,): band-passed, with its own envelope."""
    (low, high), level = CONSONANT_NOISE[symbol]
    scale = np.sqrt(traits["formant_scale"])
    band = np.clip(np.round(np.array([low, high]) * scale), 100, 0.45 * SYNTH_RATE)
    noise = scipy.signal.sosfilt(bandpass_sos(*band), rng.standard_normal(length))
    noise /= noise.std() + 1e-12
    t = np.arange(length) / max(length - 1, 1)
    if kind in ("stop", "vstop"):
        envelope = np.where(t < 0.6, 0.0, np.exp(-(t - 0.6) * 12))  # closure, then a decaying burst
    else:
        envelope = np.sin(np.pi * t) ** 0.5
    return level * noise * envelope


def syllable_envelope(timeline, n_samples, prosody):
    """Amplitude of the voice per sample (float64): stressed vowels louder, phones ramped, closures silent."""
    control_t = np.arange(0, n_samples + CONTROL_HOP, CONTROL_HOP)
    level = np.zeros(len(control_t))
    for kind, _, start, length, stressed in timeline:
        inside = (control_t >= start) & (control_t < start + length)
        gain = {"vowel": 1.0, "nasal": 0.35, "vfric": 0.25, "vstop": 0.12}.get(kind, 0.0)
        if kind == "vowel":
            gain *= 10 ** ((3.0 * prosody["range"] ** 0.5 if stressed else 0.0) / 20)
        level[inside] = gain
    smooth = np.hanning(2 * int(0.02 * SYNTH_RATE / CONTROL_HOP) + 1)
    level = np.convolve(level, smooth / smooth.sum(), mode="same")
    return np.interp(np.arange(n_samples), control_t, level)


@functools.lru_cache(maxsize=8)
def highpass_sos(cutoff):
    """Second-order Butterworth high-pass at cutoff Hz."""
    return scipy.signal.butter(2, cutoff, btype="highpass", fs=SYNTH_RATE, output="sos")


def microphone(signal, traits):
    """The actor's microphone and preamp: a gentle spectral tilt and a 60 Hz high-pass (float64, SYNTH_RATE)."""
    tilt = traits["channel_tilt"]
    if tilt > 0:
        coloured = scipy.signal.lfilter([1, -tilt], [1], signal)
    else:
        coloured = scipy.signal.lfilter([1 + tilt], [1, tilt], signal)
    return scipy.signal.sosfilt(highpass_sos(60.0), coloured)


def room_noise(n_samples, traits, rng):
    """Background noise of the actor's room: float64 (n_samples,), brownish, at noise_db dBFS."""
    noise = scipy.signal.lfilter([1], [1, -0.9], rng.standard_normal(n_samples, dtype=np.float32))
    return noise * (10 ** (traits["noise_db"] / 20) / (noise.std() + 1e-12))


def soft_limit(signal):
    """Signal with peaks above LIMIT_AT squashed smoothly (tanh), so 16-bit never clips."""
    peak = np.abs(signal).max()
    if peak <= LIMIT_AT:
        return signal
    return LIMIT_AT * np.tanh(signal / LIMIT_AT)


# ----------------------------------------------------------------------------------------------------------------
# One clip

def synthesize_clip(actor, emotion, intensity, statement, repetition, seed=0, clip_seconds_range=CLIP_SECONDS_RANGE,
                    phones=None):
    """One demo clip: float32 (samples,) at SAMPLE_RATE, amplitude within [-LIMIT_AT, LIMIT_AT].

    Length is drawn in clip_seconds_range (s); speech starts after 0.3-0.6 s of room noise. phones: what is said,
    as STATEMENTS' tuples (default STATEMENTS[statement]; other words, e.g. the benchmarks' spoken digits)."""
    traits = actor_traits(seed, actor)
    prosody = clip_prosody(seed, actor, emotion, intensity, traits)
    rng = np.random.default_rng([seed, actor, emotion, intensity, statement, repetition, 3])
    shortest, longest = clip_seconds_range
    clip_seconds = rng.uniform(shortest, longest)
    lead_seconds = min(rng.uniform(0.3, 0.6), 0.2 * clip_seconds)
    speech_seconds_max = clip_seconds - lead_seconds - min(0.25, 0.1 * clip_seconds)
    tempo = prosody["tempo"] * traits["tempo"] * rng.uniform(0.96, 1.04)
    timeline = phone_timeline(phones or STATEMENTS[statement], tempo, speech_seconds_max, rng)
    n_samples = int(round(clip_seconds * SYNTH_RATE))
    lead = int(round(lead_seconds * SYNTH_RATE))
    timeline = [(kind, symbol, start + lead, length, stressed) for kind, symbol, start, length, stressed in timeline]

    voice_prosody = dict(prosody, jitter=prosody["jitter"] + traits["jitter"],
                         tilt=float(np.clip(prosody["tilt"] + traits["tilt"], 0, 0.9)))
    base_f0 = traits["f0"] * 2 ** (rng.normal(0, 0.4) / 12)
    f0 = f0_contour(timeline, n_samples, base_f0, voice_prosody, rng)
    pulses, position = glottal_source(f0, voice_prosody, rng)
    breath = (prosody["breath"] + traits["breath"]) * (0.6 + 0.8 * (position < voice_prosody["open_quotient"]))
    aspiration = scipy.signal.lfilter([1, -0.9], [1], rng.standard_normal(n_samples, dtype=np.float32)) * breath * 3
    source = (pulses + aspiration) * syllable_envelope(timeline, n_samples, prosody)

    voice = np.zeros(n_samples)
    tail = int(RESONANCE_TAIL_SECONDS * SYNTH_RATE)
    for (kind, symbol, start, length, _), (first, weights) in zip(timeline, crossfade_windows(timeline, n_samples)):
        excitation = np.zeros(min(len(weights) + tail, n_samples - first))
        excitation[:len(weights)] = source[first:first + len(weights)] * weights
        formants, bandwidths = phone_tract(kind, symbol, traits, prosody)
        voice[first:first + len(excitation)] += scipy.signal.sosfilt(resonator_sos(formants, bandwidths), excitation)
        if symbol in CONSONANT_NOISE:
            voice[start:start + length] += consonant_noise(kind, symbol, length, traits, rng) * 0.3
    loudness_db = prosody["loudness"] + traits["gain_db"] + rng.normal(0, 0.7)
    voice = microphone(voice * (REFERENCE_PEAK * 10 ** (loudness_db / 20) / (np.abs(voice).max() + 1e-12)), traits)
    recorded = voice + room_noise(n_samples, traits, rng)
    return soft_limit(soxr.resample(recorded, SYNTH_RATE, SAMPLE_RATE, quality="HQ")).astype(np.float32)


# ----------------------------------------------------------------------------------------------------------------
# The corpus on disk

def _write_clips(folder, clips, seed, clip_seconds_range):
    """Synthesise and write clips (list of 5-tuples) atomically; returns how many were written."""
    for clip in clips:
        final = clip_path(folder, clip)
        final.parent.mkdir(parents=True, exist_ok=True)
        temp = temp_path_for(final)
        try:
            sf.write(temp, synthesize_clip(*clip, seed=seed, clip_seconds_range=clip_seconds_range),
                     SAMPLE_RATE, subtype=SUBTYPE)
            commit_temp_file(temp, final)
        finally:
            if temp.exists():
                temp.unlink()
    return len(clips)


def missing_clips(folder, plan=None):
    """The clips of plan (default: the full corpus) whose file is not in folder yet."""
    return [clip for clip in (plan or corpus_plan()) if not clip_path(folder, clip).is_file()]


def make_demo_corpus(folder, n_actors=N_ACTORS, emotions=ALL_EMOTIONS, statements=(1, 2), repetitions=(1, 2),
                     seed=0, clip_seconds_range=CLIP_SECONDS_RANGE, intensities=INTENSITIES, jobs=None):
    """Write the demo corpus into folder (Actor_XX/03-01-EE-II-SS-RR-XX.wav); clips already there are kept.

    emotions: codes 1..8 or names; n_actors: actors 1..n_actors. The full default corpus is 24 actors x 60 clips.
    jobs: processes (default os.cpu_count()). Returns {"folder", "clips" (all paths), "written", "existing"}.
    """
    folder = Path(folder)
    shortest, longest = clip_seconds_range
    if not 0.5 <= shortest <= longest:
        raise ValueError(f"clip_seconds_range {clip_seconds_range} must be (shortest, longest) with 0.5 <= shortest")
    plan = corpus_plan(n_actors, emotions, statements, repetitions, intensities)
    missing = missing_clips(folder, plan)
    if missing:
        folder.mkdir(parents=True, exist_ok=True)
        remove_stale_temp_files(folder)
        jobs = max(1, min(jobs or os.cpu_count() or 1, len(missing) // 8 + 1))
        batches = [missing[index::jobs] for index in range(jobs)]
        if jobs == 1:
            _write_clips(folder, missing, seed, clip_seconds_range)
        else:
            with ProcessPoolExecutor(max_workers=jobs) as pool:
                list(pool.map(_write_clips, [folder] * jobs, batches, [seed] * jobs, [clip_seconds_range] * jobs))
    return {"folder": folder, "clips": [clip_path(folder, clip) for clip in plan], "written": len(missing),
            "existing": len(plan) - len(missing)}


def main(argv=None):
    """Command line: python3 demo_corpus.py FOLDER [--actors N] [--seed S] (preprocessing_ravdess.py --demo makes
    the corpus and its features in one go; this writes the audio alone)."""
    import argparse
    parser = argparse.ArgumentParser(description="Write the synthetic demo corpus (RAVDESS layout: Actor_XX/*.wav) "
                                     "into FOLDER; clips already there are kept. preprocessing_ravdess.py --demo "
                                     "does this and extracts its features.")
    parser.add_argument("folder", type=Path, help="where Actor_01/ ... go")
    parser.add_argument("--actors", type=whole_number, default=N_ACTORS, help=f"number of actors (default {N_ACTORS})")
    parser.add_argument("--seed", type=whole_number, default=0, help="seed of the voices and clips (default 0)")
    args = parser.parse_args(argv)
    if not 1 <= args.actors <= 99:
        parser.error(f"--actors {args.actors} must be between 1 and 99")
    made = make_demo_corpus(args.folder, n_actors=args.actors, seed=args.seed)
    print(f"{made['written']} clips written, {made['existing']} already there: {args.folder}")


if __name__ == "__main__":
    main()
