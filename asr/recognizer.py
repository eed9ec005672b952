"""The Recognizer: what a model file holds and what `asr.load_model()` returns.

It joins the three parts that must travel together: the feature frontend (log-mel, CMVN statistics, SpecAugment while
training), the acoustic model (Conv2d subsampling, bidirectional GRUs, CTC head) and the tokenizer that gives the
model's outputs their meaning. Audio goes in, CTC log-probabilities come out.
"""
from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import nn

from asr.features import FeatureConfig, Frontend, SpecAugmentConfig
from asr.model import AcousticModel, ModelConfig
from asr.text import tokenizer_from_dict


class Recognizer(nn.Module):
    def __init__(self, model_config: ModelConfig, feature_config: FeatureConfig, tokenizer,
                 specaugment_config: SpecAugmentConfig | None = None, cmvn_stats: dict | None = None,
                 initialize: bool = True):
        """`initialize=False` leaves the acoustic model's parameters unallocated (on the meta device), for a caller
        that assigns them all from a state dict, as `from_payload` does."""
        super().__init__()
        if model_config.vocab_size != tokenizer.vocab_size:
            raise ValueError(f"model has {model_config.vocab_size} outputs "
                             f"but the tokenizer {tokenizer.vocab_size} tokens")
        self.model_config = model_config
        self.feature_config = feature_config
        self.tokenizer = tokenizer
        self.frontend = Frontend(feature_config, specaugment_config, cmvn_stats)
        with nullcontext() if initialize else torch.device("meta"):
            self.acoustic = AcousticModel(model_config)
        self.source_path: str | None = None  # the model file it was loaded from, if any

    def forward(self, audio: torch.Tensor, audio_lengths: torch.Tensor,
                speaker_cmvn: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, S) 16 kHz audio and lengths → (B, T, V) CTC log-probabilities and output lengths. `speaker_cmvn`: see
        `Frontend.forward`."""
        feats, feat_lengths = self.frontend(audio, audio_lengths, speaker_cmvn)
        return self.acoustic(feats, feat_lengths)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def frame_shift(self) -> float:
        """Seconds between two output frames (40 ms for a 10 ms hop and 4× subsampling)."""
        return self.feature_config.hop_ms / 1000.0 * self.acoustic.subsampling_factor

    def describe(self) -> str:
        acoustic = self.acoustic.describe(input_frame_rate=1000.0 / self.feature_config.hop_ms)
        return f"{acoustic}; tokenizer {self.tokenizer.kind} ({self.tokenizer.vocab_size} tokens)"

    @classmethod
    def from_payload(cls, payload: dict) -> "Recognizer":
        """Rebuild from a model file's dictionary (see asr.checkpoint)."""
        feature_config = FeatureConfig.from_dict(payload["feature_config"])
        # Placeholder statistics: the real ones arrive with the state dict (they are buffers of the frontend).
        placeholder = {"mean": [0.0] * feature_config.n_mels, "std": [1.0] * feature_config.n_mels}
        # Random initialization would be thrown away, and it is slow: the orthogonal recurrent matrices of the
        # default model took 4 to 10 s of a 2-core CPU, longer than transcribing a minute of audio. So the acoustic
        # model starts unallocated and takes the file's tensors as they are.
        recognizer = cls(ModelConfig.from_dict(payload["model_config"]), feature_config,
                         tokenizer_from_dict(payload["tokenizer"]), cmvn_stats=placeholder, initialize=False)
        recognizer.load_state_dict(payload["state_dict"], assign=True)
        recognizer.metadata = payload.get("metadata", {})
        return recognizer

    def transcribe(self, audio, **options):
        """Transcribe a file path (or a 16 kHz waveform tensor); see asr.transcribe.transcribe_file for options."""
        from asr.transcribe import transcribe_file  # transcription pulls in decoders; keep them off the import path

        return transcribe_file(self, audio, **options)
