"""From utterances to padded batches: the map-style dataset the DataLoader reads, and the collate function.

An utterance whose audio cannot be read does not stop training: the dataset returns `{"id", "error"}` for it, and
`collate` lists it in `Batch.skipped` so that the trainer counts and names it. One corrupt file among a hundred
thousand should cost one utterance, not a night of training.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn.utils.rnn import pad_sequence

from asr.audio import SAMPLE_RATE, load_audio
from asr.augment import AugmentConfig, Augmenter, speed_perturb
from asr.data.manifest import Utterance
from asr.errors import AsrError, ConfigError
from asr.frontend import PCM16_SCALE
from asr.normalization import SpeakerStats
from asr.text import Tokenizer, normalize_text


class SpeechDataset(torch.utils.data.Dataset):
    """Utterances as `{"id", "audio" (S,) float32, "tokens" (L,) long, "text"}` dicts, or `{"id", "error"}`.

    With `speaker_stats` (for `normalization: speaker`), each item also holds `"speaker_cmvn"` (2, n_mels): the
    mean and standard deviation of its speaker (`SpeakerStats.rows`).

    With several `speed_factors`, each utterance is resampled by one of them, drawn from (seed, epoch, index): the
    same in every run and in every DataLoader worker, different from epoch to epoch. `set_epoch` must be called
    before each epoch's DataLoader iterator is created (the workers copy the dataset then, so persistent workers
    would keep the first epoch's draw).

    With an `augment` config that enables any effect (asr.augment), each utterance then goes through them, drawn
    from (seed, epoch, index) as well; babble noise mixes other utterances of the dataset.
    """

    def __init__(self, utterances: Sequence[Utterance], tokenizer: Tokenizer, speed_factors: Sequence[float] = (1.0,),
                 seed: int = 0, sample_rate: int = SAMPLE_RATE, speaker_stats: SpeakerStats | None = None,
                 augment: AugmentConfig | None = None):
        if not speed_factors or min(speed_factors) <= 0:
            raise ConfigError(f"speed factors must be positive numbers, got {list(speed_factors)}")
        self.utterances = utterances
        self.tokenizer = tokenizer
        self.speed_factors = tuple(speed_factors)
        self.seed = seed
        self.sample_rate = sample_rate
        self.epoch = 0
        self.speaker_stats = speaker_stats
        self.augment = Augmenter(augment, sample_rate, self._babble_voice) if augment and augment.enabled else None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.utterances)

    def speed_factor(self, index: int, epoch: int | None = None) -> float:
        """The speed factor utterance `index` gets in `epoch` (the current one by default)."""
        if len(self.speed_factors) == 1:
            return self.speed_factors[0]
        epoch = self.epoch if epoch is None else epoch
        draw = np.random.default_rng((self.seed, epoch, index)).integers(len(self.speed_factors))
        return self.speed_factors[draw]

    def played_durations(self, epoch: int) -> list[float]:
        """The seconds each utterance lasts in `epoch`, after its speed perturbation: what batches are cut by."""
        return [utterance.duration / self.speed_factor(index, epoch)
                for index, utterance in enumerate(self.utterances)]

    def __getitem__(self, index: int) -> dict:
        utterance = self.utterances[index]
        try:
            tokens = self.tokenizer.encode(utterance.text)
            audio = load_audio(utterance.audio, self.sample_rate)
        except AsrError as error:
            return {"id": utterance.id, "error": str(error)}
        factor = self.speed_factor(index)
        if factor != 1.0:
            audio = speed_perturb(audio, factor, self.sample_rate)
        if self.augment is not None:
            rng = np.random.default_rng((self.seed, self.epoch, index, 1))  # not the speed factor's draw
            audio = torch.from_numpy(self.augment(audio.numpy(), rng))
        item = {"id": utterance.id, "audio": audio, "tokens": torch.tensor(tokens, dtype=torch.long),
                "text": normalize_text(utterance.text)}
        if self.speaker_stats is not None:
            item["speaker_cmvn"] = self.speaker_stats.rows(utterance.speaker)
        return item

    def _babble_voice(self, rng: np.random.Generator) -> np.ndarray:
        """Another utterance's audio, drawn by `rng`; silence where it cannot be read."""
        try:
            return load_audio(self.utterances[rng.integers(len(self.utterances))].audio, self.sample_rate).numpy()
        except AsrError:
            return np.zeros(0)


@dataclass
class Batch:
    """Utterances padded on the right to a common length, and those that could not be loaded.

    `tokens` are padded with 0, the CTC blank; `len(batch)` counts the utterances it holds, which may be none when
    every one of them was skipped.
    """

    ids: list[str]
    audio: torch.Tensor  # (B, S) int16 PCM: half of float32's bytes in shared memory and on the way to the device
    audio_lengths: torch.Tensor  # (B,) long, samples
    tokens: torch.Tensor  # (B, L) long
    token_lengths: torch.Tensor  # (B,) long
    texts: list[str]  # normalized transcripts, the references for WER
    skipped: list[tuple[str, str]]  # (utterance id, why it could not be loaded)
    speaker_cmvn: torch.Tensor | None = None  # (B, 2, n_mels) each utterance's speaker's mean and std, or None

    def __len__(self) -> int:
        return len(self.ids)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """The same batch with its tensors on `device`."""
        return dataclasses.replace(self, **{name: getattr(self, name).to(device, non_blocking=non_blocking)
                                            for name in _TENSOR_FIELDS if getattr(self, name) is not None})

    def pin_memory(self) -> Batch:
        """The same batch in page-locked memory; the DataLoader calls this when `pin_memory=True`."""
        return dataclasses.replace(self, **{name: getattr(self, name).pin_memory() for name in _TENSOR_FIELDS
                                            if getattr(self, name) is not None})


_TENSOR_FIELDS = ("audio", "audio_lengths", "tokens", "token_lengths", "speaker_cmvn")


def collate(items: list[dict]) -> Batch:
    """Pad the dataset's items into a Batch; error items go to `Batch.skipped`.

    The audio travels as int16 PCM (the Frontend turns it back into float on the model's device): a batch of 2,400
    padded seconds is 77 MB instead of 154 MB, which workers pass through /dev/shm (64 MB by default in Docker). For
    16-bit recordings, LibriSpeech's, it is lossless; a speed-perturbed utterance is rounded to 16 bits, as it would
    be written to disk.
    """
    loaded = [item for item in items if "error" not in item]
    return Batch(
        ids=[item["id"] for item in loaded],
        audio=_pad([_pcm16(item["audio"]) for item in loaded], torch.int16),
        audio_lengths=torch.tensor([len(item["audio"]) for item in loaded], dtype=torch.long),
        tokens=_pad([item["tokens"] for item in loaded], torch.long),
        token_lengths=torch.tensor([len(item["tokens"]) for item in loaded], dtype=torch.long),
        texts=[item["text"] for item in loaded],
        skipped=[(item["id"], item["error"]) for item in items if "error" in item],
        speaker_cmvn=torch.stack([item["speaker_cmvn"] for item in loaded])
        if loaded and "speaker_cmvn" in loaded[0] else None,
    )


def _pcm16(audio: torch.Tensor) -> torch.Tensor:
    return (audio * PCM16_SCALE).round_().clamp_(-32768, 32767).to(torch.int16)


def _pad(sequences: list[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    """(B, longest) with zeros after each sequence; (0, 0) for no sequences."""
    if not sequences:
        return torch.zeros((0, 0), dtype=dtype)
    return pad_sequence(sequences, batch_first=True, padding_value=0).to(dtype)
