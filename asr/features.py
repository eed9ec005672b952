"""From waveforms to what the acoustic model reads: log-mel frames, normalized, augmented while training.

The `Frontend` module chains the parts, each usable alone:
  LogMel           padded batch of 16 kHz waveforms -> (B, T, n_mels) log-mel energies, T = 1 + samples // hop
  GlobalCMVN       subtract the training set's mean, divide by its standard deviation (from `estimate_cmvn`)
  utterance_cmvn   or the same with each utterance's own statistics
                   or with each speaker's, passed in beside the batch (`SpeakerCmvn`, from `estimate_speaker_cmvn`),
                   the training set's at the utterance's own level where no speaker is known
                   (`training_set_at_own_level`)
  SpecAugment      zero random bands of mel channels and of frames (Park et al., 2019), in training only
`speed_perturb` changes the speed of a waveform before all that (Ko et al., 2015); vocal tract length perturbation
(`vtlp_warp`, Jaitly and Hinton, 2013) stretches each training utterance's frequency axis inside LogMel.

Each step takes a `lengths` tensor beside the padded batch, on any device; frames past an utterance's length stay
exactly 0 throughout.
"""
import json
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from asr.audio import SAMPLE_RATE, load_audio, resample
from asr.errors import AsrError, AudioError, ConfigError
from asr.files import write_text_atomically
from asr.model import length_mask
from asr.plain_data import build_dataclass

log = logging.getLogger(__name__)

# global: the training set's statistics; utterance: each utterance's own; speaker: each speaker's own, over all their
# utterances in the manifest (Kaldi's per-speaker CMVN), and where no speaker is known (a file given to
# `asr transcribe`) the training set's, moved to the utterance's own loudness; none: log-mel energies as they are.
NORMALIZATIONS = ("global", "utterance", "speaker", "none")

# A mel band whose values barely vary in the training data (e.g. above 4 kHz in a corpus of upsampled telephone
# speech) must not turn the first real energy it sees at test time into a value in the thousands.
_MIN_CMVN_STD = 1e-2

# Added to the variance in per-utterance normalization, so a one-frame or silent utterance normalizes to zeros.
_UTTERANCE_VARIANCE_FLOOR = 1e-5


@dataclass
class FeatureConfig:
    """How waveforms become log-mel frames. The defaults are the usual ASR front end for 16 kHz speech."""

    sample_rate: int = SAMPLE_RATE
    n_mels: int = 80
    win_ms: float = 25.0  # long enough to resolve the harmonics of most voices, short enough to be stationary
    hop_ms: float = 10.0
    n_fft: int = 512  # the 400-sample window zero-padded to the next power of two
    f_min: float = 20.0  # below that: DC offset and rumble, never speech
    # Below the 8 kHz Nyquist frequency, where resamplers' anti-aliasing filters cut in (asr.audio's is 3 dB down at
    # 7.6 kHz): the bands above would hold the filter's edge rather than speech.
    f_max: float = 7600.0
    # Energies are clamped to this before the log. It sits just below the energy of 16-bit quantization noise in a
    # mel band (about 3e-10 with these settings), so digital silence lands near the quietest real recording instead
    # of at log(0) = -inf.
    log_floor: float = 1e-10
    normalization: str = "global"  # one of NORMALIZATIONS

    def __post_init__(self):
        if self.normalization not in NORMALIZATIONS:
            raise ConfigError(
                f"features.normalization must be one of {', '.join(NORMALIZATIONS)}, got {self.normalization!r}"
            )
        if self.win_length > self.n_fft:
            raise ConfigError(
                f"features.win_ms={self.win_ms} is {self.win_length} samples, more than features.n_fft={self.n_fft}"
            )
        if self.hop_length < 1:
            raise ConfigError(f"features.hop_ms={self.hop_ms} is less than one sample at {self.sample_rate} Hz")
        if not 0 <= self.f_min < self.f_max <= self.sample_rate / 2:
            raise ConfigError(
                f"need 0 <= features.f_min < features.f_max <= sample_rate / 2 = {self.sample_rate / 2}, "
                f"got f_min={self.f_min}, f_max={self.f_max}"
            )

    @property
    def win_length(self) -> int:
        """Analysis window, in samples."""
        return round(self.sample_rate * self.win_ms / 1000)

    @property
    def hop_length(self) -> int:
        """Distance between frames, in samples."""
        return round(self.sample_rate * self.hop_ms / 1000)

    def num_frames(self, num_samples):
        """Frames in `num_samples` samples (an int or a tensor of lengths): centered frames, one every hop."""
        return 1 + num_samples // self.hop_length

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, settings: dict) -> "FeatureConfig":
        return build_dataclass(cls, settings, "features")


@dataclass
class SpecAugmentConfig:
    """SpecAugment's masks. Time masks scale with each utterance (adaptive SpecAugment, Park et al., 2020)."""

    enabled: bool = True
    freq_masks: int = 2
    freq_width: int = 27  # widest frequency mask, in mel channels (LibriSpeech policy of Park et al., 2019)
    time_masks: int = 2  # time masks an utterance; with time_masks_ratio, the most an utterance gets
    time_width_ratio: float = 0.05  # widest time mask, as a fraction of the utterance's frames
    # Adaptive multiplicity (Park et al. 2020): an utterance of T frames gets min(time_masks, ⌊time_masks_ratio ×
    # T⌋) time masks, so a long utterance is masked as much, in proportion, as a short one (0: time_masks for all).
    time_masks_ratio: float = 0.0
    # Vocal tract length perturbation, also a training-only feature augmentation: each utterance's frequency axis is
    # scaled by a factor drawn uniformly from [1 - vtlp_max_warp, 1 + vtlp_max_warp] (0 = off). It moves formants
    # as a shorter or longer vocal tract would, which helps most when few speakers are heard in training.
    vtlp_max_warp: float = 0.0

    def __post_init__(self):
        if not 0 <= self.vtlp_max_warp < 1:
            raise ConfigError(f"specaugment.vtlp_max_warp must be in [0, 1), got {self.vtlp_max_warp}")
        if not 0 <= self.time_masks_ratio < 1:
            raise ConfigError(f"specaugment.time_masks_ratio must be in [0, 1), got {self.time_masks_ratio}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, settings: dict) -> "SpecAugmentConfig":
        return build_dataclass(cls, settings, "specaugment")


def mel_filterbank(cfg: FeatureConfig, warp_factors: torch.Tensor | None = None) -> torch.Tensor:
    """Slaney-style mel filterbank with area normalization (librosa's and torchaudio's `norm="slaney"`).

    (n_fft // 2 + 1, n_mels) weights from power-spectrum bins to mel bands; with `warp_factors` (B,), a (B, n_freqs,
    n_mels) stack in which utterance i's bins sit at `vtlp_warp(frequency, warp_factors[i])`.
    """
    nyquist = cfg.sample_rate / 2
    bin_freqs = torch.linspace(0, nyquist, cfg.n_fft // 2 + 1, dtype=torch.float64)
    if warp_factors is not None:
        bin_freqs = vtlp_warp(bin_freqs[None, :], warp_factors.double().cpu()[:, None], nyquist)
    # n_mels + 2 edges equally spaced in mels: band m rises from edge m to edge m + 1 and falls to edge m + 2.
    edges = _mel_to_hz(torch.linspace(_hz_to_mel(cfg.f_min), _hz_to_mel(cfg.f_max), cfg.n_mels + 2,
                                      dtype=torch.float64))
    widths = edges.diff()
    offsets = edges - bin_freqs[..., None]  # (..., n_freqs, n_mels + 2)
    rising = -offsets[..., :-2] / widths[:-1]
    falling = offsets[..., 2:] / widths[1:]
    triangles = torch.minimum(rising, falling).clamp(min=0)
    area_normalized = triangles * (2 / (edges[2:] - edges[:-2]))
    return area_normalized.float().to(warp_factors.device if warp_factors is not None else "cpu")


def vtlp_warp(freqs: torch.Tensor, factor: torch.Tensor | float, nyquist: float) -> torch.Tensor:
    """Frequencies as a vocal tract `1 / factor` times as long would place them (Jaitly and Hinton, 2013).

    Scaled by `factor` up to a boundary, then linear to the Nyquist frequency, which stays fixed, so no energy is
    pushed out of the spectrum or left missing at its top. The boundary is where Jaitly and Hinton put it for
    16 kHz speech (4.8 kHz, so 0.6 of Nyquist), pulled down so that scaling never crosses it.
    """
    factor = torch.as_tensor(factor, dtype=freqs.dtype)
    high = 0.6 * nyquist * torch.clamp(factor, max=1.0)
    boundary = high / factor
    above = nyquist - (nyquist - high) / (nyquist - boundary) * (nyquist - freqs)
    return torch.where(freqs <= boundary, freqs * factor, above)


# The Slaney mel scale (librosa's default, htk=False): linear below 1 kHz, logarithmic above.
_MEL_BREAK_HZ, _HZ_PER_MEL, _LOG_STEP = 1000.0, 200.0 / 3, math.log(6.4) / 27.0


def _hz_to_mel(hz: float) -> float:
    if hz < _MEL_BREAK_HZ:
        return hz / _HZ_PER_MEL
    return _MEL_BREAK_HZ / _HZ_PER_MEL + math.log(hz / _MEL_BREAK_HZ) / _LOG_STEP


def _mel_to_hz(mels: torch.Tensor) -> torch.Tensor:
    break_mel = _MEL_BREAK_HZ / _HZ_PER_MEL
    return torch.where(mels < break_mel, mels * _HZ_PER_MEL, _MEL_BREAK_HZ * torch.exp(_LOG_STEP * (mels - break_mel)))


class LogMel(nn.Module):
    """Log mel-filterbank energies of a padded batch of waveforms.

    Power spectrum of Hann-windowed, centered frames (zero-padded at the edges, as librosa's default), through a
    Slaney mel filterbank with area normalization (librosa's default, as in Whisper), clamped at `log_floor`, then log.
    """

    def __init__(self, cfg: FeatureConfig):
        super().__init__()
        self.cfg = cfg
        # Not persistent: they follow the module to its device but stay out of the state_dict, since the config
        # rebuilds them.
        self.register_buffer("window", torch.hann_window(cfg.win_length), persistent=False)
        mel_filters = mel_filterbank(cfg)
        self.register_buffer("mel_filters", mel_filters, persistent=False)  # (n_fft // 2 + 1, n_mels)

    def num_frames(self, num_samples):
        """Frames in `num_samples` samples (an int or a tensor of lengths)."""
        return self.cfg.num_frames(num_samples)

    def forward(
        self, audio: torch.Tensor, audio_lengths: torch.Tensor, warp_factors: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """audio (B, S) and its lengths (B,) -> features (B, T, n_mels), zero past each length, and lengths (B,).

        With `warp_factors` (B,), each utterance's frequency axis is warped by its factor (see `vtlp_warp`).
        """
        # Zero padding, not reflection, at the edges: an utterance then gets the same frames alone as in a batch,
        # where the samples after it are zeros too.
        # float32 even under autocast: half precision cannot hold energies down at the log floor.
        with torch.autocast(device_type=audio.device.type, enabled=False):
            spectrum = torch.stft(
                audio.float(),
                n_fft=self.cfg.n_fft,
                hop_length=self.cfg.hop_length,
                win_length=self.cfg.win_length,
                window=self.window,
                center=True,
                pad_mode="constant",
                return_complex=True,
            )
            power = spectrum.abs().square().transpose(1, 2)  # (B, T, n_fft // 2 + 1)
            filters = self.mel_filters if warp_factors is None else mel_filterbank(self.cfg, warp_factors)
            feats = (power @ filters).clamp(min=self.cfg.log_floor).log()
        feat_lengths = self.num_frames(audio_lengths)
        return _zero_padding(feats, feat_lengths), feat_lengths


class GlobalCMVN(nn.Module):
    """Normalize each mel channel with the training set's mean and standard deviation.

    They are buffers, so they travel in the model's state_dict.
    """

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32))

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Normalized features (B, T, n_mels), zero past each length."""
        return _zero_padding((feats - self.mean) / self.std, lengths)


def estimate_cmvn(utterances, cfg: FeatureConfig, max_utterances: int | None = None, progress: bool = True) -> dict:
    """Mean and standard deviation of each mel channel over the frames of `utterances` (objects with `.audio`).

    With `max_utterances`, that many are taken evenly spaced through the list, so a manifest sorted by speaker
    still contributes all its speakers. Returns `{"mean": [...], "std": [...], "frames": N, "utterances": N}`.
    An utterance whose audio cannot be read is left out, as training leaves it out, and named in a warning at the
    end; AsrError when none can be read.
    """
    utterances = list(utterances)
    if max_utterances is not None and max_utterances < len(utterances):
        utterances = [utterances[i * len(utterances) // max_utterances] for i in range(max_utterances)]
    if not utterances:
        raise AsrError("cannot estimate CMVN statistics: no utterances given")
    groups, unreadable = _channel_sums(utterances, cfg, lambda utterance: "all", "CMVN statistics", progress)
    if not groups:
        raise AsrError(f"cannot estimate CMVN statistics: the audio of none of the {len(utterances)} utterances "
                       f"can be read (first: {unreadable[0]})")
    return groups["all"].statistics()


def estimate_speaker_cmvn(utterances, cfg: FeatureConfig, progress: bool = True) -> dict[str, dict]:
    """`estimate_cmvn`'s statistics for each speaker (`utterance.speaker`), over all of that speaker's utterances.

    Utterances of no known speaker are not read. Those whose audio cannot be read are left out and named in a
    warning; a speaker none of whose audio can be read has no entry.
    """
    with_speaker = [utterance for utterance in utterances if utterance.speaker is not None]
    groups, _ = _channel_sums(with_speaker, cfg, lambda utterance: utterance.speaker, "speaker CMVN statistics",
                              progress)
    return {speaker: sums.statistics() for speaker, sums in groups.items()}


class SpeakerCmvn:
    """Under `normalization: speaker`, the statistics that normalize each utterance: its speaker's, or `default`
    (the training set's, which the model also holds) for an utterance of no known speaker."""

    def __init__(self, by_speaker: dict[str, dict], default: dict):
        self.by_speaker = {speaker: cmvn_rows(statistics) for speaker, statistics in by_speaker.items()}
        self.default = cmvn_rows(default)

    def rows(self, speaker: str | None) -> torch.Tensor:
        """(2, n_mels) float32: the mean and standard deviation that normalize an utterance of `speaker`."""
        return self.by_speaker.get(speaker, self.default)


def cmvn_rows(statistics: dict) -> torch.Tensor:
    """(2, n_mels) float32: the mean and the standard deviation of CMVN statistics, as `Frontend` takes them."""
    return torch.tensor([list(statistics["mean"]), list(statistics["std"])], dtype=torch.float32)


class _ChannelSums:
    """Running sums of frames and of their squares, per mel channel."""

    def __init__(self, n_mels: int):
        # In float64: over 1e8 frames float32 would lose the variance, which is E[x²] - E[x]², a small difference of
        # two large numbers.
        self.total = torch.zeros(n_mels, dtype=torch.float64)
        self.total_of_squares = torch.zeros(n_mels, dtype=torch.float64)
        self.frames = 0
        self.utterances = 0

    def add(self, feats: torch.Tensor) -> None:
        feats = feats.double()
        self.total += feats.sum(dim=0)
        self.total_of_squares += feats.square().sum(dim=0)
        self.frames += len(feats)
        self.utterances += 1

    def statistics(self) -> dict:
        mean = self.total / self.frames
        variance = (self.total_of_squares / self.frames - mean.square()).clamp(min=0)
        std = variance.sqrt().clamp(min=_MIN_CMVN_STD)
        return {"mean": mean.tolist(), "std": std.tolist(), "frames": self.frames, "utterances": self.utterances}


def _channel_sums(utterances, cfg: FeatureConfig, group_of, description: str,
                  progress: bool) -> tuple[dict[str, _ChannelSums], list[AudioError]]:
    """Log-mel sums of `utterances` by `group_of(utterance)`, and the errors of those whose audio cannot be read
    (named in a warning); a group with no readable utterance has no entry."""
    utterances = list(utterances)
    logmel = LogMel(cfg)
    groups: dict[str, _ChannelSums] = {}
    unreadable: list[AudioError] = []
    with torch.inference_mode():
        for utterance in tqdm(utterances, desc=description, unit="utt", disable=not progress):
            try:
                audio = load_audio(utterance.audio, cfg.sample_rate)
            except AudioError as error:
                unreadable.append(error)
                continue
            feats, _ = logmel(audio[None], torch.tensor([len(audio)]))
            groups.setdefault(group_of(utterance), _ChannelSums(cfg.n_mels)).add(feats[0])
    if unreadable:
        log.warning("%s: left out %d of %d utterances whose audio cannot be read:\n  %s", description,
                    len(unreadable), len(utterances), "\n  ".join(map(str, unreadable)))
    return groups, unreadable


def save_cmvn(path, stats: dict) -> None:
    """Write CMVN statistics (as `estimate_cmvn` returns them) to a JSON file, atomically: a run killed while
    writing leaves no half file for `--resume` to trip on."""
    write_text_atomically(path, json.dumps(stats, indent=1) + "\n")


def load_cmvn(path) -> dict:
    """Read CMVN statistics written by `save_cmvn`, checking they can normalize features."""
    path = Path(path)
    try:
        stats = json.loads(path.read_text())
    except FileNotFoundError as error:
        raise ConfigError(f"{path}: CMVN statistics file not found") from error
    except json.JSONDecodeError as error:
        raise ConfigError(f"{path}: not JSON ({error})") from error
    if not isinstance(stats, dict) or not {"mean", "std"} <= stats.keys():
        raise ConfigError(f"{path}: CMVN statistics need 'mean' and 'std' lists")
    mean, std = stats["mean"], stats["std"]
    if not isinstance(mean, list) or not isinstance(std, list) or len(mean) != len(std):
        raise ConfigError(f"{path}: 'mean' and 'std' must be lists of the same length")
    if not all(isinstance(value, (int, float)) and value > 0 for value in std):
        raise ConfigError(f"{path}: every 'std' must be a positive number")
    return stats


def utterance_cmvn(feats: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Normalize each utterance by the mean and variance of its own valid frames; padding stays 0."""
    lengths = lengths.to(feats.device)
    valid = length_mask(lengths, feats.size(1))[..., None]  # (B, T, 1)
    frame_counts = lengths.clamp(min=1).to(feats.dtype)[:, None, None]
    mean = feats.masked_fill(~valid, 0.0).sum(dim=1, keepdim=True) / frame_counts
    centered = (feats - mean).masked_fill(~valid, 0.0)
    variance = centered.square().sum(dim=1, keepdim=True) / frame_counts
    return centered / (variance + _UTTERANCE_VARIANCE_FLOOR).sqrt()


def training_set_at_own_level(feats: torch.Tensor, lengths: torch.Tensor, mean: torch.Tensor,
                              std: torch.Tensor) -> torch.Tensor:
    """Normalize by the training set's statistics with their mean raised or lowered, in every band alike, to the
    utterance's own average level; padding stays 0.

    What a model normalized by speaker does with an utterance of no known speaker. A recording's gain adds the same
    number to every log-mel band, so matching the level makes the result independent of how loud it was recorded,
    while the spectral shape still comes from the training set rather than from the utterance's few words. Chosen
    over the training set's statistics alone, which a voice recorded quieter falls far from, and over the utterance's
    own (recipes/digits/README.md).
    """
    lengths = lengths.to(feats.device)
    valid = length_mask(lengths, feats.size(1))[..., None]
    frame_counts = lengths.clamp(min=1).to(feats.dtype)[:, None, None]
    own_level = feats.masked_fill(~valid, 0.0).sum(dim=(1, 2), keepdim=True) / (frame_counts * feats.size(2))
    return _zero_padding((feats - (mean - mean.mean() + own_level)) / std, lengths)


class SpecAugment(nn.Module):
    """Set random bands of mel channels and of frames to 0 (the mean, after CMVN), in training mode only.

    Each mask's width is drawn uniformly from [0, widest] and its start uniformly where it fits inside the
    utterance's valid frames; padding is never touched. Draws come from torch's generator on the features' device,
    so `torch.manual_seed` makes training repeatable.
    """

    def __init__(self, cfg: SpecAugmentConfig):
        super().__init__()
        self.cfg = cfg

    def draw_warp_factors(self, batch: int, device) -> torch.Tensor | None:
        """Each utterance's VTLP factor, uniform in [1 - vtlp_max_warp, 1 + vtlp_max_warp]; None when VTLP is off."""
        if not self.training or not self.cfg.enabled or self.cfg.vtlp_max_warp == 0:
            return None
        return 1 + self.cfg.vtlp_max_warp * (2 * torch.rand(batch, device=device) - 1)

    def time_mask_counts(self, lengths: torch.Tensor) -> torch.Tensor:
        """How many time masks each utterance of `lengths` frames gets."""
        if self.cfg.time_masks_ratio == 0:
            return torch.full_like(lengths, self.cfg.time_masks)
        return (lengths * self.cfg.time_masks_ratio).long().clamp(max=self.cfg.time_masks)

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        if not self.training or not self.cfg.enabled:
            return feats
        batch, max_frames, n_mels = feats.shape
        device = feats.device
        lengths = lengths.to(device)
        all_channels = torch.full((batch,), n_mels, device=device)
        freq_masked = _random_bands(
            extent=all_channels,
            widest=all_channels.clamp(max=self.cfg.freq_width),
            count=torch.full_like(all_channels, self.cfg.freq_masks),
            most=self.cfg.freq_masks,
            size=n_mels,
        )
        time_masked = _random_bands(
            extent=lengths,
            widest=(lengths * self.cfg.time_width_ratio).long(),
            count=self.time_mask_counts(lengths),
            most=self.cfg.time_masks,
            size=max_frames,
        )
        masked = (time_masked[:, :, None] | freq_masked[:, None, :]) & length_mask(lengths, max_frames)[..., None]
        return feats.masked_fill(masked, 0.0)


def _random_bands(extent: torch.Tensor, widest: torch.Tensor, count: torch.Tensor, most: int,
                  size: int) -> torch.Tensor:
    """(B, size) bool: `count[i]` (at most `most`) bands in row i, each of width uniform in [0, widest] lying within
    [0, extent). `most` comes from the config, so that no count is read back from the device."""
    positions = torch.arange(size, device=extent.device)
    masked = torch.zeros(len(extent), size, dtype=torch.bool, device=extent.device)
    for band in range(most):
        width = _uniform_integers(widest) * (band < count)  # rows with fewer bands get empty ones
        start = _uniform_integers(extent - width)
        masked |= (positions >= start[:, None]) & (positions < (start + width)[:, None])
    return masked


def _uniform_integers(highest: torch.Tensor) -> torch.Tensor:
    """One integer uniform in [0, highest[i]] for each i."""
    draws = (torch.rand(highest.shape, device=highest.device) * (highest + 1)).long()
    return torch.minimum(draws, highest)  # float32 rounding can reach highest + 1 when highest is in the millions


def speed_perturb(wave: torch.Tensor, factor: float, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """Play a waveform `factor` times faster, as Kaldi's sox `speed` does: duration / factor, pitch × factor.

    The samples are taken as if recorded at `sample_rate * factor` and resampled to `sample_rate`.
    """
    if factor <= 0:
        raise ValueError(f"speed factor must be positive, got {factor}")
    return resample(wave, sample_rate * factor, sample_rate)


# int16 PCM sample = float sample × 32768: exact for 16-bit audio (LibriSpeech's FLACs) read as float.
PCM16_SCALE = 32768.0


class Frontend(nn.Module):
    """Waveforms to model inputs: LogMel, then normalization per `cfg.normalization`, then SpecAugment (training).

    The CMVN buffers exist whatever the normalization (zeros and ones when unused), so every frontend's state_dict
    has the same keys and shapes.
    """

    def __init__(
        self, cfg: FeatureConfig, specaug: SpecAugmentConfig | None = None, cmvn_stats: dict | None = None
    ):
        super().__init__()
        if cfg.normalization in ("global", "speaker") and cmvn_stats is None:
            raise ConfigError(
                f"features.normalization is {cfg.normalization!r} but no CMVN statistics were given: estimate them "
                "first with `asr cmvn --manifest train.jsonl --out cmvn.json`, or set "
                "features.normalization to 'utterance'"
            )
        self.cfg = cfg
        self.logmel = LogMel(cfg)
        if cmvn_stats is None:
            self.cmvn = GlobalCMVN(torch.zeros(cfg.n_mels), torch.ones(cfg.n_mels))
        else:
            if not len(cmvn_stats["mean"]) == len(cmvn_stats["std"]) == cfg.n_mels:
                raise ConfigError(
                    f"CMVN statistics hold {len(cmvn_stats['mean'])} channels but features.n_mels is {cfg.n_mels}: "
                    "estimate them again with this feature configuration"
                )
            self.cmvn = GlobalCMVN(cmvn_stats["mean"], cmvn_stats["std"])
        self.specaug = SpecAugment(specaug if specaug is not None else SpecAugmentConfig(enabled=False))

    def forward(self, audio: torch.Tensor, audio_lengths: torch.Tensor,
                speaker_cmvn: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """audio (B, S), float in [-1, 1] or int16 PCM, and its lengths (B,) -> features (B, T, n_mels) and their
        lengths (B,).

        `speaker_cmvn` (B, 2, n_mels), each utterance's speaker's mean and standard deviation (`SpeakerCmvn.rows`),
        is for `normalization: speaker`; without it each utterance is normalized by `training_set_at_own_level`.
        """
        if speaker_cmvn is not None and self.cfg.normalization != "speaker":
            raise ValueError(f"speaker CMVN statistics given to a frontend whose normalization is "
                             f"{self.cfg.normalization!r}")
        if audio.dtype == torch.int16:  # a training batch (asr.data.dataset.collate): to float here, on the device
            audio = audio.float() / PCM16_SCALE
        warp_factors = self.specaug.draw_warp_factors(len(audio), audio.device)  # None unless training with VTLP
        feats, feat_lengths = self.logmel(audio, audio_lengths, warp_factors)
        if self.cfg.normalization == "global":
            feats = self.cmvn(feats, feat_lengths)
        elif self.cfg.normalization == "utterance":
            feats = utterance_cmvn(feats, feat_lengths)
        elif self.cfg.normalization == "speaker" and speaker_cmvn is None:
            feats = training_set_at_own_level(feats, feat_lengths, self.cmvn.mean, self.cmvn.std)
        elif self.cfg.normalization == "speaker":
            speaker_cmvn = speaker_cmvn.to(feats.device, feats.dtype)
            feats = _zero_padding((feats - speaker_cmvn[:, None, 0]) / speaker_cmvn[:, None, 1], feat_lengths)
        return self.specaug(feats, feat_lengths), feat_lengths


def _zero_padding(feats: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    return feats.masked_fill(~length_mask(lengths.to(feats.device), feats.size(1))[..., None], 0.0)
