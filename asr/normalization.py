"""Cepstral mean and variance normalization (CMVN) of log-mel frames, by `features.normalization`:

  global     the training set's mean and standard deviation per mel channel (`estimate_cmvn`, kept in a JSON file
             by `save_cmvn` / `load_cmvn`, and in the model as `GlobalCMVN`'s buffers)
  utterance  each utterance's own (`utterance_cmvn`)
  speaker    each speaker's, over all their utterances (Kaldi's per-speaker CMVN): `SpeakerStats`, whose rows travel
             beside the batch, (B, 2, n_mels) (`apply_cmvn_rows`); where no speaker is known (a file given to
             `asr transcribe`), the training set's moved to the utterance's own level (`training_set_at_own_level`)
  none       log-mel energies as they are

Statistics are dicts `{"mean": [...], "std": [...], "frames": N, "utterances": N}`. Frames past an utterance's
length stay exactly 0.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from asr.audio import load_audio
from asr.errors import AsrError, AudioError, ConfigError
from asr.features import FeatureConfig, LogMel, zero_padding
from asr.files import write_text_atomically
from asr.model import length_mask

log = logging.getLogger(__name__)

# A mel band whose values barely vary in the training data (e.g. above 4 kHz in a corpus of upsampled telephone
# speech) must not turn the first real energy it sees at test time into a value in the thousands.
_MIN_CMVN_STD = 1e-2

# Added to the variance in per-utterance normalization, so a one-frame or silent utterance normalizes to zeros.
_UTTERANCE_VARIANCE_FLOOR = 1e-5


# -- normalizing a padded batch (B, T, n_mels) -------------------------------------------------------------------

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
        return zero_padding((feats - self.mean) / self.std, lengths)

    def statistics(self) -> dict:
        """The mean and standard deviation it holds, as `{"mean": [...], "std": [...]}`."""
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}


def utterance_cmvn(feats: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Normalize each utterance by the mean and variance of its own valid frames; padding stays 0."""
    lengths = lengths.to(feats.device)
    valid = length_mask(lengths, feats.size(1))[..., None]  # (B, T, 1)
    frame_counts = lengths.clamp(min=1).to(feats.dtype)[:, None, None]
    mean = feats.masked_fill(~valid, 0.0).sum(dim=1, keepdim=True) / frame_counts
    centered = (feats - mean).masked_fill(~valid, 0.0)
    variance = centered.square().sum(dim=1, keepdim=True) / frame_counts
    return centered / (variance + _UTTERANCE_VARIANCE_FLOOR).sqrt()


def apply_cmvn_rows(feats: torch.Tensor, lengths: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Normalize each utterance by its own row of `rows` (B, 2, n_mels): its speaker's mean and standard deviation
    (`SpeakerStats.rows`); padding stays 0."""
    rows = rows.to(feats.device, feats.dtype)
    return zero_padding((feats - rows[:, None, 0]) / rows[:, None, 1], lengths)


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
    return zero_padding((feats - (mean - mean.mean() + own_level)) / std, lengths)


# -- the training set's statistics -------------------------------------------------------------------------------

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
    groups, unreadable = _channel_sums([(utterance.audio, "all") for utterance in utterances], cfg,
                                       "CMVN statistics", progress)
    if not groups:
        raise AsrError(f"cannot estimate CMVN statistics: the audio of none of the {len(utterances)} utterances "
                       f"can be read (first: {unreadable[0]})")
    return {**groups["all"].statistics(), "features": log_mel_settings(cfg)}


def log_mel_settings(cfg: FeatureConfig) -> dict:
    """What makes a log-mel frame: statistics of frames made otherwise do not normalize these."""
    return {name: getattr(cfg, name) for name in
            ("sample_rate", "n_mels", "win_ms", "hop_ms", "n_fft", "f_min", "f_max", "log_floor")}


def save_cmvn(path, stats: dict) -> None:
    """Write CMVN statistics (as `estimate_cmvn` returns them) to a JSON file, atomically: a run killed while
    writing leaves no half file for `--resume` to trip on."""
    write_text_atomically(path, json.dumps(stats, indent=1) + "\n")


def load_cmvn(path, features: FeatureConfig | None = None) -> dict:
    """Read CMVN statistics written by `save_cmvn`, checking they can normalize features, and, given `features`,
    that they were estimated on frames made the same way (files from before the settings were recorded hold none)."""
    path = Path(path)
    stats = _read_json(path, "CMVN statistics")
    _check_statistics(path, stats, "CMVN statistics")
    if features is not None and isinstance(stats.get("features"), dict):
        wanted = log_mel_settings(features)
        differ = [f"{name} {stats['features'].get(name)} (the model's: {value})" for name, value in wanted.items()
                  if stats["features"].get(name) != value]
        if differ:
            raise ConfigError(f"{path}: CMVN statistics of other log-mel frames: "
                              f"features.{', features.'.join(differ)}; estimate them again with these (asr cmvn)")
    return stats


# -- each speaker's statistics -----------------------------------------------------------------------------------

class SpeakerStats:
    """Under `normalization: speaker`, the statistics that normalize each utterance: those of its speaker, over all
    of that speaker's utterances, or `default` (the training set's, which the model also holds) for an utterance of
    no known speaker or of one whose audio could not be read.

    `by_speaker` maps a speaker to statistics as `estimate_cmvn` returns them.
    """

    def __init__(self, by_speaker: Mapping[str, dict], default: dict):
        self.by_speaker = dict(by_speaker)
        self.default = default
        self._rows = {speaker: _rows(statistics) for speaker, statistics in self.by_speaker.items()}
        self._default_rows = _rows(default)

    @classmethod
    def estimate(cls, utterances, cfg: FeatureConfig, default: dict, progress: bool = True) -> SpeakerStats:
        """Each speaker's statistics (`utterance.speaker`) over all of that speaker's `utterances` (objects with
        `.audio` and `.speaker`).

        Utterances of no known speaker are not read. Those whose audio cannot be read are left out and named in a
        warning; a speaker none of whose audio can be read gets `default`.
        """
        recordings = [(utterance.audio, utterance.speaker) for utterance in utterances if utterance.speaker is not None]
        groups, _ = _channel_sums(recordings, cfg, "speaker CMVN statistics", progress)
        return cls({speaker: sums.statistics() for speaker, sums in groups.items()}, default)

    @property
    def speakers(self) -> set[str]:
        """The speakers that have statistics of their own."""
        return set(self.by_speaker)

    def rows(self, speaker: str | None) -> torch.Tensor:
        """(2, n_mels) float32: the mean and standard deviation that normalize an utterance of `speaker`."""
        return self._rows.get(speaker, self._default_rows)


def save_speaker_stats(path, stats: SpeakerStats) -> None:
    """Write each speaker's statistics (not the default) to a JSON file `{speaker: statistics}`, atomically as
    `save_cmvn` does."""
    save_cmvn(path, stats.by_speaker)


def load_speaker_stats(path, default: dict) -> SpeakerStats:
    """Read the statistics `save_speaker_stats` wrote, checking each speaker's can normalize features."""
    path = Path(path)
    by_speaker = _read_json(path, "speaker CMVN statistics")
    if not isinstance(by_speaker, dict):
        raise ConfigError(f"{path}: speaker CMVN statistics must map each speaker to its statistics")
    for speaker, stats in by_speaker.items():
        _check_statistics(path, stats, f"speaker {speaker!r}'s CMVN statistics")
    return SpeakerStats(by_speaker, default)


# -- estimation --------------------------------------------------------------------------------------------------

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


def _channel_sums(recordings: list[tuple], cfg: FeatureConfig, description: str,
                  progress: bool) -> tuple[dict[str, _ChannelSums], list[AudioError]]:
    """Log-mel sums of `recordings`, (audio path, group) pairs, by group, and the errors of those whose audio cannot
    be read (named in a warning); a group with no readable recording has no entry."""
    logmel = LogMel(cfg)
    groups: dict[str, _ChannelSums] = {}
    unreadable: list[AudioError] = []
    with torch.inference_mode():
        for audio_path, group in tqdm(recordings, desc=description, unit="utt", disable=not progress):
            try:
                audio = load_audio(audio_path, cfg.sample_rate)
            except AudioError as error:
                unreadable.append(error)
                continue
            feats, _ = logmel(audio[None], torch.tensor([len(audio)]))
            groups.setdefault(group, _ChannelSums(cfg.n_mels)).add(feats[0])
    if unreadable:
        log.warning("%s: left out %d of %d utterances whose audio cannot be read:\n  %s", description,
                    len(unreadable), len(recordings), "\n  ".join(map(str, unreadable)))
    return groups, unreadable


def _rows(statistics: dict) -> torch.Tensor:
    """(2, n_mels) float32: the mean and the standard deviation of CMVN statistics."""
    return torch.tensor([list(statistics["mean"]), list(statistics["std"])], dtype=torch.float32)


def _read_json(path: Path, what: str):
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as error:
        raise ConfigError(f"{path}: {what} file not found") from error
    except json.JSONDecodeError as error:
        raise ConfigError(f"{path}: not JSON ({error})") from error


def _check_statistics(path: Path, stats, what: str) -> None:
    """ConfigError naming `path` unless `stats` has 'mean' and 'std' lists of one length, every std positive."""
    if not isinstance(stats, dict) or not {"mean", "std"} <= stats.keys():
        raise ConfigError(f"{path}: {what} need 'mean' and 'std' lists")
    mean, std = stats["mean"], stats["std"]
    if not isinstance(mean, list) or not isinstance(std, list) or len(mean) != len(std):
        raise ConfigError(f"{path}: 'mean' and 'std' must be lists of the same length")
    if not all(isinstance(value, (int, float)) and value > 0 for value in std):
        raise ConfigError(f"{path}: every 'std' must be a positive number")
