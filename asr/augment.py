"""Waveform augmentation, in the dataset (asr.data.dataset), of training utterances only; each draw comes from the
generator the dataset hands over ((seed, epoch, index): the same in every run and every DataLoader worker).

- speed perturbation (`speed_perturb`, Ko et al., 2015), from `data.speed_factors`;
- what real microphones add: a room, noise, a level, a telephone line. The `augment:` section of a config is
  `AugmentConfig`, everything off by default; each utterance goes through the enabled effects in a fixed order, each
  applied with its probability:
  1. room reverberation: convolution with a simulated impulse response, a direct path then exponentially decaying
     Gaussian noise whose energy falls 60 dB in a drawn RT60 (the statistical model of a diffuse late field,
     Polack 1988); the output is aligned on the direct path, so word times do not move;
  2. additive noise at a drawn SNR: white, pink (1/f), brown (1/f²), mains hum, music (notes of harmonic partials
     over a beat), or babble (other training utterances summed);
  3. a microphone's response: a low shelf, a high shelf and a peak at drawn frequencies and gains (RBJ biquads);
  4. gain: a drawn level change, limited so that the peak stays below full scale;
  5. telephone channel: 300-3400 Hz band-pass, 8 kHz, 8-bit μ-law, and back to the input's rate.
  They are plain numpy/scipy on (S,) float waveforms.

The augmentation of the features, VTLP and SpecAugment, runs in the model's frontend on its device, in training mode
(asr.specaugment): a model file loaded to transcribe needs it, and none of this.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy import fft, signal

from asr.audio import SAMPLE_RATE, resample
from asr.errors import ConfigError

NOISE_KINDS = ("white", "pink", "brown", "hum", "music", "babble")
TELEPHONE_BAND = (300.0, 3400.0)
TELEPHONE_RATE = 8000
_EPS = 1e-12


@dataclass
class AugmentConfig:
    reverb_prob: float = 0.0  # probability that an utterance is reverberated
    rt60: list[float] = field(default_factory=lambda: [0.15, 0.8])  # seconds, drawn uniformly
    direct_to_reverberant_db: list[float] = field(default_factory=lambda: [-3.0, 12.0])
    noise_prob: float = 0.0
    snr_db: list[float] = field(default_factory=lambda: [5.0, 30.0])  # drawn uniformly
    noise_kinds: list[str] = field(default_factory=lambda: list(NOISE_KINDS))
    equalizer_prob: float = 0.0
    equalizer_db: list[float] = field(default_factory=lambda: [-10.0, 10.0])  # each filter's gain, drawn uniformly
    gain_prob: float = 0.0
    gain_db: list[float] = field(default_factory=lambda: [-20.0, 10.0])
    telephone_prob: float = 0.0

    def __post_init__(self):
        for name in ("reverb_prob", "noise_prob", "equalizer_prob", "gain_prob", "telephone_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"augment.{name} must lie in [0, 1], got {getattr(self, name)}")
        for name in ("rt60", "direct_to_reverberant_db", "snr_db", "equalizer_db", "gain_db"):
            low_high = getattr(self, name)
            if len(low_high) != 2 or low_high[0] > low_high[1]:
                raise ConfigError(f"augment.{name} must be [low, high], got {low_high}")
        if self.rt60[0] <= 0:
            raise ConfigError(f"augment.rt60 must be positive, got {self.rt60}")
        unknown = sorted(set(self.noise_kinds) - set(NOISE_KINDS))
        if unknown or not self.noise_kinds:
            raise ConfigError(f"augment.noise_kinds: unknown {unknown} or none; known: {list(NOISE_KINDS)}")

    @property
    def enabled(self) -> bool:
        return any((self.reverb_prob, self.noise_prob, self.equalizer_prob, self.gain_prob, self.telephone_prob))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# -- the effects -------------------------------------------------------------------------------------------------

def synthetic_rir(rt60: float, sample_rate: int, rng, direct_to_reverberant_db: float = 3.0) -> np.ndarray:
    """A room impulse response: a unit direct path at sample 0, then Gaussian noise under an exponential envelope
    whose energy decays by 60 dB in `rt60` seconds, scaled so that direct energy / reverberant energy is
    `direct_to_reverberant_db`. It lasts until the tail is 60 dB down (one RT60), at least 10 ms."""
    length = max(int(rt60 * sample_rate), int(0.01 * sample_rate))
    t = np.arange(1, length) / sample_rate
    # Energy 10^(-6) at rt60: amplitude exp(-3 ln(10) t / rt60).
    tail = rng.standard_normal(length - 1) * np.exp(-3 * np.log(10) * t / rt60)
    tail *= np.sqrt(10 ** (-direct_to_reverberant_db / 10) / max(np.sum(tail ** 2), _EPS))
    return np.concatenate([[1.0], tail])


def reverberate(audio: np.ndarray, rir: np.ndarray) -> np.ndarray:
    """`audio` convolved with `rir`, cut to its own length (aligned on the direct path at the RIR's sample 0) and
    scaled back to the input's RMS."""
    wet = signal.fftconvolve(audio, rir)[:len(audio)]
    return wet * np.sqrt(np.mean(audio ** 2) / max(np.mean(wet ** 2), _EPS))


def coloured_noise(kind: str, n: int, rng) -> np.ndarray:
    """Gaussian noise whose power spectrum falls as 1/f^0 (white), 1/f (pink) or 1/f² (brown), unit RMS."""
    exponent = {"white": 0.0, "pink": 1.0, "brown": 2.0}[kind]
    spectrum = np.fft.rfft(rng.standard_normal(max(n, 2)))
    frequencies = np.arange(len(spectrum), dtype=float)
    frequencies[0] = frequencies[1]  # DC gets the lowest band's level, not infinity
    noise = np.fft.irfft(spectrum / frequencies ** (exponent / 2), max(n, 2))[:n]
    noise -= noise.mean()
    return noise / max(np.sqrt(np.mean(noise ** 2)), _EPS)


def hum(n: int, sample_rate: int, rng) -> np.ndarray:
    """Mains hum: 50 or 60 Hz and its first harmonics at drawn levels and phases, a little noise, unit RMS."""
    t = np.arange(n) / sample_rate
    mains = 50.0 if rng.random() < 0.5 else 60.0
    wave = sum(rng.uniform(0.1, 1.0) / harmonic * np.sin(2 * np.pi * mains * harmonic * t + rng.uniform(0, 2 * np.pi))
               for harmonic in range(1, 8))
    wave = wave + 0.05 * rng.standard_normal(n)
    return wave / max(np.sqrt(np.mean(wave ** 2)), _EPS)


def music(n: int, sample_rate: int, rng) -> np.ndarray:
    """A tune, unit RMS: notes and chords of harmonic partials, struck (decaying) or bowed (sustained), at a drawn
    tempo and timbre, over a kick-and-hi-hat beat half of the time. Sounds with onsets and a pitch, as words have,
    that are not words."""
    t_max = np.arange(n) / sample_rate
    beat = 60.0 / rng.uniform(60, 180)
    partials = rng.integers(2, 13)
    rolloff = rng.uniform(0.3, 0.9)  # each partial this much quieter than the one below
    struck = rng.random() < 0.6
    wave = np.zeros(n)
    start = 0
    while start < n:
        length = min(n - start, max(1, round(beat * rng.choice([0.5, 1.0, 2.0]) * sample_rate)))
        t = t_max[:length]
        if struck:
            envelope = np.exp(-t / rng.uniform(0.08, 1.0)) * np.minimum(1.0, t / 0.005)
        else:
            envelope = np.minimum(1.0, t / rng.uniform(0.02, 0.1)) * np.minimum(1.0, (t[-1] - t) / 0.03 + 1e-3)
        for _ in range(rng.integers(1, 4)):  # one note, or a chord of two or three
            f0 = 110.0 * 2 ** (rng.integers(-12, 25) / 12)
            for k in range(1, partials + 1):
                if f0 * k < sample_rate / 2:
                    wave[start:start + length] += (rolloff ** (k - 1) * envelope
                                                   * np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 2 * np.pi)))
        start += length
    if rng.random() < 0.5:
        level = np.sqrt(np.mean(wave ** 2)) * rng.uniform(0.5, 2.0)
        t = t_max[:round(0.2 * sample_rate)]  # a drum hit: 0.2 s, or the whole of a shorter sound
        # A kick drum: a sine gliding from 150 Hz down to 50 Hz as it decays.
        kick = np.sin(2 * np.pi * (50 * t + 100 * 0.03 * (1 - np.exp(-t / 0.03)))) * np.exp(-t / 0.06)
        hat = rng.standard_normal(len(t)) * np.exp(-t / 0.01)
        for number, at in enumerate(range(0, n, max(1, round(beat / 2 * sample_rate)))):
            drum = kick if number % 2 == 0 else 0.3 * hat
            wave[at:at + len(t)] += level * 3 * drum[:n - at]
    wave -= wave.mean()
    return wave / max(np.sqrt(np.mean(wave ** 2)), _EPS)


def biquad(frequency: float, gain_db: float, q: float, sample_rate: int, kind: str = "peak") -> np.ndarray:
    """One second-order section (b0 b1 b2 a0 a1 a2, normalized) of the Audio EQ Cookbook (R. Bristow-Johnson):
    a "peak" of `gain_db` at `frequency`, or a "low" or "high" shelf of `gain_db` below or above it."""
    amplitude = 10 ** (gain_db / 40)
    w0 = 2 * np.pi * frequency / sample_rate
    alpha = np.sin(w0) / (2 * q)
    cos = np.cos(w0)
    if kind == "peak":
        b = [1 + alpha * amplitude, -2 * cos, 1 - alpha * amplitude]
        a = [1 + alpha / amplitude, -2 * cos, 1 - alpha / amplitude]
    elif kind in ("low", "high"):
        sign = 1 if kind == "low" else -1
        root = 2 * np.sqrt(amplitude) * alpha
        b = [amplitude * ((amplitude + 1) - sign * (amplitude - 1) * cos + root),
             sign * 2 * amplitude * ((amplitude - 1) - sign * (amplitude + 1) * cos),
             amplitude * ((amplitude + 1) - sign * (amplitude - 1) * cos - root)]
        a = [(amplitude + 1) + sign * (amplitude - 1) * cos + root,
             -sign * 2 * ((amplitude - 1) + sign * (amplitude + 1) * cos),
             (amplitude + 1) + sign * (amplitude - 1) * cos - root]
    else:
        raise ValueError(f"unknown filter kind {kind!r}")
    return np.array(b + a) / a[0]


def microphone_response(audio: np.ndarray, sample_rate: int, rng, gain_db=(-10.0, 10.0)) -> np.ndarray:
    """`audio` through a drawn microphone-and-room colouring: a low shelf (80-400 Hz), a peak (300-3500 Hz) and a
    high shelf (1.5-3.5 kHz), each of a gain drawn from `gain_db`, then scaled back to the input's RMS."""
    sections = np.stack([
        biquad(rng.uniform(80, 400), rng.uniform(*gain_db), 0.707, sample_rate, "low"),
        biquad(rng.uniform(300, 3500), rng.uniform(*gain_db), rng.uniform(0.5, 2.0), sample_rate, "peak"),
        biquad(rng.uniform(1500, 3500), rng.uniform(*gain_db), 0.707, sample_rate, "high"),
    ])
    coloured = signal.sosfilt(sections, audio)
    return coloured * np.sqrt(np.mean(audio ** 2) / max(np.mean(coloured ** 2), _EPS))


def add_noise(audio: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """`audio` plus `noise` (tiled or cut to its length) scaled so that their power ratio is `snr_db`."""
    if len(noise) < len(audio):
        noise = np.tile(noise, -(-len(audio) // len(noise)))
    noise = noise[:len(audio)]
    scale = np.sqrt(np.mean(audio ** 2) / max(np.mean(noise ** 2), _EPS) / 10 ** (snr_db / 10))
    return audio + scale * noise


def apply_gain(audio: np.ndarray, gain_db: float, max_peak: float = 0.99) -> np.ndarray:
    """`audio` made `gain_db` louder, or less where that would take its peak above `max_peak`."""
    peak = np.abs(audio).max() if len(audio) else 0.0
    factor = 10 ** (gain_db / 20)
    if peak * factor > max_peak:
        factor = max_peak / max(peak, _EPS)
    return audio * factor


def mu_law(audio: np.ndarray, bits: int = 8) -> np.ndarray:
    """G.711-style μ-law companding and quantization to `bits` bits, decoded back to floats."""
    mu = 2 ** bits - 1
    x = np.clip(audio, -1, 1)
    encoded = np.sign(x) * np.log1p(mu * np.abs(x)) / np.log1p(mu)
    steps = 2 ** (bits - 1) - 1  # a mid-tread quantizer: silence stays silence, as G.711's zero codes keep it
    quantized = np.round(encoded * steps) / steps
    return np.sign(quantized) * ((1 + mu) ** np.abs(quantized) - 1) / mu


def telephone(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """A narrow-band telephone line: 300-3400 Hz band-pass, 8 kHz, μ-law, back to `sample_rate`, band-pass."""
    band = signal.butter(6, TELEPHONE_BAND, btype="bandpass", fs=sample_rate, output="sos")
    narrow = signal.resample_poly(signal.sosfilt(band, audio), TELEPHONE_RATE, sample_rate)
    peak = max(np.abs(narrow).max(), _EPS)
    coded = mu_law(narrow / peak * min(peak, 1.0)) * max(peak, 1.0)  # μ-law codes [-1, 1]; keep the level
    # The band-pass again at the far end, as a handset's does: it removes the images of 8 kHz and the μ-law noise
    # outside the band.
    return signal.sosfilt(band, signal.resample_poly(coded, sample_rate, TELEPHONE_RATE))[:len(audio)]


# -- the whole chain ---------------------------------------------------------------------------------------------

class Augmenter:
    """The effects of an AugmentConfig, applied to one waveform at a time.

    `babble` (optional) returns one other training utterance as float samples for a generator; without it, babble
    is never drawn.
    """

    def __init__(self, config: AugmentConfig, sample_rate: int,
                 babble: Callable[[np.random.Generator], np.ndarray] | None = None):
        self.config = config
        self.sample_rate = sample_rate
        self.babble = babble
        self.kinds = [kind for kind in config.noise_kinds if kind != "babble" or babble is not None]

    def noise(self, kind: str, n: int, rng) -> np.ndarray:
        if kind == "hum":
            return hum(n, self.sample_rate, rng)
        if kind == "music":
            return music(n, self.sample_rate, rng)
        if kind == "babble":
            voices = [self.babble(rng) for _ in range(rng.integers(3, 7))]
            mix = np.zeros(n)
            for voice in voices:
                voice = np.resize(voice, n) if len(voice) else np.zeros(n)
                mix += np.roll(voice, rng.integers(n)) / max(np.sqrt(np.mean(voice ** 2)), _EPS)
            return mix
        # A transform of n samples costs many times one of the next 5-smooth length when n has a large prime factor:
        # noise of that length, cut to n, is the same noise.
        return coloured_noise(kind, fft.next_fast_len(n, real=True), rng)[:n]

    def __call__(self, audio: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        cfg = self.config
        audio = np.asarray(audio, dtype=np.float64)
        if len(audio) == 0:
            return audio.astype(np.float32)
        if rng.random() < cfg.reverb_prob:
            rir = synthetic_rir(rng.uniform(*cfg.rt60), self.sample_rate, rng,
                                rng.uniform(*cfg.direct_to_reverberant_db))
            audio = reverberate(audio, rir)
        if rng.random() < cfg.noise_prob and self.kinds and np.any(audio):
            kind = self.kinds[rng.integers(len(self.kinds))]
            audio = add_noise(audio, self.noise(kind, len(audio), rng), rng.uniform(*cfg.snr_db))
        if rng.random() < cfg.equalizer_prob:
            audio = microphone_response(audio, self.sample_rate, rng, cfg.equalizer_db)
        if rng.random() < cfg.gain_prob:
            audio = apply_gain(audio, rng.uniform(*cfg.gain_db))
        if rng.random() < cfg.telephone_prob:
            audio = telephone(audio, self.sample_rate)
        return audio.astype(np.float32)


# -- speed perturbation ------------------------------------------------------------------------------------------

def speed_perturb(wave: torch.Tensor, factor: float, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """Play a waveform `factor` times faster, as Kaldi's sox `speed` does: duration / factor, pitch × factor.

    The samples are taken as if recorded at `sample_rate * factor` and resampled to `sample_rate`.
    """
    if factor <= 0:
        raise ValueError(f"speed factor must be positive, got {factor}")
    return resample(wave, sample_rate * factor, sample_rate)
