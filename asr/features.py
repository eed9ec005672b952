"""How waveforms become log-mel frames: the feature configuration and the signal processing.

  FeatureConfig    the `features:` section of a config: frames, mel bands, and the normalization that follows
  mel_filterbank   Slaney mel filterbank, each utterance's frequency axis optionally warped by `vtlp_warp`
                   (vocal tract length perturbation, Jaitly and Hinton, 2013; drawn in training by asr.augment)
  LogMel           padded batch of 16 kHz waveforms -> (B, T, n_mels) log-mel energies, T = 1 + samples // hop

What follows the log-mel energies lives beside this module: their normalization in asr.normalization, training's
perturbations in asr.augment, and asr.frontend chains them all into what the acoustic model reads.

Each step takes a `lengths` tensor beside the padded batch, on any device; frames past an utterance's length stay
exactly 0 throughout (`zero_padding`).
"""
import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from asr.audio import SAMPLE_RATE
from asr.errors import ConfigError
from asr.model import length_mask
from asr.plain_data import build_dataclass

# How log-mel frames are normalized (asr.normalization): global: by the training set's statistics; utterance: by
# each utterance's own; speaker: by each speaker's own, over all their utterances in the manifest (Kaldi's per-speaker
# CMVN), and where no speaker is known (a file given to `asr transcribe`) by the training set's, moved to the
# utterance's own loudness; none: log-mel energies as they are.
NORMALIZATIONS = ("global", "utterance", "speaker", "none")


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
            # re² + im²: |z|² without the square root that abs() takes and square() undoes
            power = torch.view_as_real(spectrum).square().sum(-1).transpose(1, 2)  # (B, T, n_fft // 2 + 1)
            filters = self.mel_filters if warp_factors is None else mel_filterbank(self.cfg, warp_factors)
            feats = (power @ filters).clamp(min=self.cfg.log_floor).log()
        feat_lengths = self.num_frames(audio_lengths)
        return zero_padding(feats, feat_lengths), feat_lengths


def zero_padding(feats: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """`feats` (B, T, n_mels) with every frame past its utterance's length set to 0."""
    return feats.masked_fill(~length_mask(lengths.to(feats.device), feats.size(1))[..., None], 0.0)
