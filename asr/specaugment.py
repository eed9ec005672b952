"""Augmentation of the features while training, in the model's frontend (asr.frontend) on its device: the
`specaugment:` section of a config.

- vocal tract length perturbation: a warp factor for each utterance, by which LogMel stretches its frequency axis
  (`asr.features.vtlp_warp`, Jaitly and Hinton, 2013);
- SpecAugment: random bands of mel channels and of frames set to 0 (Park et al., 2019), as many time masks as an
  utterance's length calls for (adaptive SpecAugment, Park et al., 2020).

Draws come from torch's generator on the features' device, so `torch.manual_seed` makes training repeatable. In eval
mode nothing is drawn and the features pass unchanged. The waveform's augmentation, in the dataset, is asr.augment.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from asr.errors import ConfigError
from asr.model import length_mask
from asr.plain_data import build_dataclass


@dataclass
class SpecAugmentConfig:
    """The `specaugment:` section: SpecAugment's masks, whose time masks scale with each utterance (adaptive
    SpecAugment, Park et al., 2020), and VTLP's warp."""

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
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, settings: dict) -> SpecAugmentConfig:
        return build_dataclass(cls, settings, "specaugment")


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
