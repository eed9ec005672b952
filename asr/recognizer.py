"""The Recognizer: what a model file holds and what `asr.load_model()` returns.

It joins the three parts that must travel together: the feature frontend (log-mel, CMVN statistics, SpecAugment while
training), the acoustic model (Conv2d subsampling, bidirectional GRUs, CTC head) and the tokenizer that gives the
model's outputs their meaning. Audio goes in, CTC log-probabilities come out.

It is the PyTorch back end of the recognizer interface (asr.backend.SpeechRecognizer), which transcription reads.
"""
from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import torch
from torch import nn

from asr.features import FeatureConfig
from asr.frontend import Frontend
from asr.model import AcousticModel, ModelConfig
from asr.normalization import SpeakerStats
from asr.specaugment import SpecAugmentConfig
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
        # What the model file says besides the weights (see asr.checkpoint): e.g. edge_pad_seconds, word_span.
        self.metadata: dict = {}

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

    # -- the recognizer interface (asr.backend.SpeechRecognizer)

    @property
    def edge_pad_seconds(self) -> float:
        return float(self.metadata.get("edge_pad_seconds") or 0.0)

    @property
    def word_span(self):
        return self.metadata.get("word_span")

    @property
    def normalization(self) -> str:
        return self.feature_config.normalization

    exposes_features = True

    def log_probs(self, audio: np.ndarray, audio_lengths: np.ndarray,
                  speaker_cmvn: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, S) float32 audio and (B,) lengths as numpy arrays → (B, T, V) log-probabilities and (B,) lengths as
        tensors on the model's device, in eval mode (the caller's training mode back afterwards) and inference
        mode. `speaker_cmvn`: (B, 2, n_mels) or None."""
        was_training = self.training
        self.eval()
        try:
            with torch.inference_mode():
                device = self.device
                rows = None if speaker_cmvn is None else torch.from_numpy(speaker_cmvn)
                return self(torch.from_numpy(audio).to(device), torch.from_numpy(audio_lengths).to(device), rows)
        finally:
            self.train(was_training)

    def speaker_cmvn(self, utterances, progress: bool = False) -> SpeakerStats:
        """Each speaker's statistics over `utterances` (objects with `.audio` and `.speaker`), and the training set's
        (which the model holds) for an utterance of no known speaker."""
        return SpeakerStats.estimate(utterances, self.feature_config, self.frontend.cmvn.statistics(),
                                     progress=progress)

    def describe(self) -> str:
        acoustic = self.acoustic.describe(input_frame_rate=1000.0 / self.feature_config.hop_ms)
        return f"{acoustic}; tokenizer {self.tokenizer.kind} ({self.tokenizer.vocab_size} tokens)"

    @classmethod
    def from_payload(cls, payload: dict) -> "Recognizer":
        """Rebuild from a model file's dictionary (see asr.checkpoint)."""
        feature_config = FeatureConfig.from_dict(payload["feature_config"])
        # Placeholder statistics: the real ones arrive with the state dict (they are buffers of the frontend).
        placeholder = {"mean": [0.0] * feature_config.n_mels, "std": [1.0] * feature_config.n_mels}
        # Random initialization would be thrown away, and it is slow: orthogonalizing the recurrent matrices of a
        # large model costs more than transcribing a minute of audio (docs/benchmarks.md). So the acoustic model
        # starts unallocated and takes the file's tensors as they are.
        recognizer = cls(ModelConfig.from_dict(payload["model_config"]), feature_config,
                         tokenizer_from_dict(payload["tokenizer"]), cmvn_stats=placeholder, initialize=False)
        recognizer.load_state_dict(payload["state_dict"], assign=True)
        recognizer.metadata = payload.get("metadata", {})
        return recognizer

    def transcribe(self, audio, **options):
        """Transcribe a file path (or a 16 kHz waveform tensor); see asr.transcribe.transcribe_file for options."""
        from asr.transcribe import transcribe_file  # transcription pulls in decoders; keep them off the import path

        return transcribe_file(self, audio, **options)
