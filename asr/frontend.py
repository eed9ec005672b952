"""What the acoustic model reads: a batch of waveforms through log-mel, normalization and, in training, augmentation.

    audio (B, S) ─▶ LogMel (asr.features; each utterance's frequency axis warped by VTLP in training)
      ─▶ CMVN by `features.normalization` (asr.normalization) ─▶ SpecAugment in training (asr.specaugment)
      ─▶ features (B, T, n_mels)

The Frontend is the first module of a Recognizer and runs on the model's device; its only state is the training set's
CMVN statistics.
"""
import torch
from torch import nn

from asr.errors import ConfigError
from asr.features import FeatureConfig, LogMel
from asr.normalization import GlobalCMVN, apply_cmvn_rows, training_set_at_own_level, utterance_cmvn
from asr.specaugment import SpecAugment, SpecAugmentConfig

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

        `speaker_cmvn` (B, 2, n_mels), each utterance's speaker's mean and standard deviation
        (`asr.normalization.SpeakerStats.rows`), is for `normalization: speaker`; without it each utterance is
        normalized by `training_set_at_own_level`.
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
            feats = apply_cmvn_rows(feats, feat_lengths, speaker_cmvn)
        return self.specaug(feats, feat_lengths), feat_lengths
