"""What the feature tests compare against: librosa's log-mel features, test tones, padded batches.

    from reference_features import librosa_log_mel      # in a test module (the tests folder is on sys.path)
"""
import librosa
import numpy as np
import torch

from asr.audio import SAMPLE_RATE
from asr.features import FeatureConfig


def librosa_log_mel(wave: torch.Tensor, cfg: FeatureConfig) -> np.ndarray:
    """(T, n_mels) log-mel features computed by librosa in float64, configured as LogMel documents itself."""
    mel = librosa.feature.melspectrogram(
        y=wave.numpy().astype(np.float64), sr=cfg.sample_rate, n_fft=cfg.n_fft, hop_length=cfg.hop_length,
        win_length=cfg.win_length, window="hann", center=True, pad_mode="constant", power=2.0, n_mels=cfg.n_mels,
        fmin=cfg.f_min, fmax=cfg.f_max, htk=False, norm="slaney",
    )
    return np.log(np.maximum(mel, cfg.log_floor)).T


def pad(waves: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """A padded batch (B, S) of waveforms and their lengths."""
    lengths = torch.tensor([len(wave) for wave in waves])
    return torch.nn.utils.rnn.pad_sequence(waves, batch_first=True), lengths


def sine(frequency: float, seconds: float, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    return 0.5 * torch.sin(2 * torch.pi * frequency * torch.arange(round(seconds * sample_rate)) / sample_rate)


def peak_frequency(wave: torch.Tensor, sample_rate: int = SAMPLE_RATE) -> float:
    spectrum = torch.fft.rfft(wave * torch.hann_window(len(wave), periodic=False)).abs()
    return torch.fft.rfftfreq(len(wave), 1 / sample_rate)[spectrum.argmax()].item()
