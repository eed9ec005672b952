"""Faster CPU inference: dynamic int8 quantization, and export of a model to ONNX.

- `quantize_int8(recognizer)` stores the weights of every GRU, LSTM and Linear layer of the acoustic model as 8-bit
  integers and computes with them; activations are quantized on the fly before each matrix product (torch's
  dynamic quantization): faster on CPUs, its log-probabilities close to fp32's (speed, differences and WER in
  docs/benchmarks.md). It runs on CPUs only, and happens when a model is loaded
  (`asr transcribe --quantize int8`): a quantized model holds packed weights, which a model file cannot (model
  files are plain tensors, loadable with `weights_only=True`).
- `export_onnx(recognizer, path)` writes the whole Recognizer, audio in and CTC log-probabilities out, as one ONNX
  graph with dynamic batch and length axes, for runtimes without Python (ONNX Runtime, in C++, C#, Java, the web).
  The exporter cannot translate torch.stft's complex output, so the exported graph computes the same spectrum as a
  strided convolution with the windowed Fourier basis (`ConvLogMel`). It needs the `onnx` package. The file also
  carries the tokenizer, frame shift and sample rate as metadata (asr.onnx_model), so that it alone is enough to
  transcribe: `asr transcribe --model model.onnx` runs it on ONNX Runtime without importing torch.
"""
from __future__ import annotations

import copy
import io
import logging
import math
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from asr.errors import AsrError
from asr.features import LogMel
from asr.model import length_mask
from asr.onnx_model import ONNX_INPUTS, ONNX_OUTPUTS, onnx_metadata

log = logging.getLogger(__name__)

ONNX_OPSET = 17


def quantize_int8(recognizer):
    """A copy of `recognizer` (on the CPU) whose GRU, LSTM and Linear layers compute with int8 weights."""
    if recognizer.device.type != "cpu":
        raise AsrError(f"int8 quantization runs on CPUs only; the model is on {recognizer.device}")
    quantized = copy.deepcopy(recognizer).eval()
    with warnings.catch_warnings():
        # torch deprecates its eager quantization API in favour of the torchao package, which this toolkit does not
        # depend on; the API works in the torch versions constraints.txt pins, and tests check its outputs.
        warnings.filterwarnings("ignore", message=".*(torch.ao.quantization|quantize_per_tensor).*")
        quantized.acoustic = torch.ao.quantization.quantize_dynamic(
            quantized.acoustic, {nn.GRU, nn.LSTM, nn.Linear}, dtype=torch.qint8)
    return quantized


class ConvLogMel(nn.Module):
    """asr.features.LogMel with its STFT as a strided 1-D convolution: the same features, to float rounding.

    Each output channel of the convolution is one frequency bin's windowed cosine (real part) or sine (imaginary
    part), so convolving the centred, zero-padded audio with them at the hop's stride gives every frame's spectrum.
    """

    def __init__(self, logmel: LogMel):
        super().__init__()
        cfg = logmel.cfg
        self.cfg = cfg
        # torch.stft centres a window shorter than n_fft inside the frame, zeros either side.
        left = (cfg.n_fft - cfg.win_length) // 2
        window = F.pad(logmel.window, (left, cfg.n_fft - cfg.win_length - left))
        bins = cfg.n_fft // 2 + 1
        phase = 2 * math.pi * torch.outer(torch.arange(bins, dtype=torch.float64),
                                          torch.arange(cfg.n_fft, dtype=torch.float64)) / cfg.n_fft
        basis = torch.cat([torch.cos(phase), -torch.sin(phase)]) * window.double()
        self.register_buffer("basis", basis.float()[:, None, :], persistent=False)  # (2 · bins, 1, n_fft)
        self.register_buffer("mel_filters", logmel.mel_filters.clone(), persistent=False)

    def forward(self, audio: torch.Tensor, audio_lengths: torch.Tensor,
                warp_factors: None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """As LogMel.forward: audio (B, S) and lengths (B,) → features (B, T, n_mels), zero past each length.

        An exported model only infers, so it never warps (VTLP is a training augmentation)."""
        if warp_factors is not None:
            raise ValueError("an exported model does not apply vocal tract length perturbation")
        half = self.cfg.n_fft // 2
        frames = F.conv1d(F.pad(audio.float()[:, None, :], (half, half)), self.basis, stride=self.cfg.hop_length)
        real, imaginary = frames.chunk(2, dim=1)  # (B, bins, T) each
        power = (real.square() + imaginary.square()).transpose(1, 2)
        feats = (power @ self.mel_filters).clamp(min=self.cfg.log_floor).log()
        feat_lengths = self.cfg.num_frames(audio_lengths)
        valid = length_mask(feat_lengths, feats.size(1))
        return feats * valid[..., None], feat_lengths


def exportable(recognizer):
    """A CPU copy of `recognizer` in eval mode whose frontend computes its STFT with `ConvLogMel`."""
    copied = copy.deepcopy(recognizer).cpu().eval()
    copied.frontend.logmel = ConvLogMel(copied.frontend.logmel)
    return copied


def export_onnx(recognizer, path: str | Path, opset: int = ONNX_OPSET) -> Path:
    """Write `recognizer` as an ONNX graph: inputs `audio` (B, S) float32 16 kHz and `audio_lengths` (B,) int64;
    outputs `log_probs` (B, T, vocab_size) and `out_lengths` (B,). Batch and lengths are dynamic axes. The file's
    metadata holds the tokenizer, frame shift, sample rate and a description (asr.onnx_model.onnx_metadata)."""
    try:
        import onnx  # torch's exporter imports it too; asking first gives the user the fix
    except ImportError as error:
        raise AsrError("exporting to ONNX needs the onnx package: pip install onnx") from error
    if recognizer.feature_config.normalization == "speaker":
        log.warning("%s: the model was trained normalized by speaker; the graph normalizes every recording as "
                    "`asr transcribe` does without --one-speaker, by the training set's statistics at the "
                    "recording's own level (`asr evaluate` needs the model file to normalize by speaker)", path)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Two utterances of different lengths, so that nothing specializes to one batch size or to equal lengths.
    audio = 0.1 * torch.randn(2, 16000, generator=torch.Generator().manual_seed(0))
    audio_lengths = torch.tensor([16000, 12000])
    dynamic_axes = {"audio": {0: "batch", 1: "samples"}, "audio_lengths": {0: "batch"},
                    "log_probs": {0: "batch", 1: "frames"}, "out_lengths": {0: "batch"}}
    with warnings.catch_warnings():
        # The TorchScript-based exporter warns that it is deprecated, and about traced size arithmetic that the
        # dynamic axes make symbolic anyway; tests/test_export.py checks the graph against PyTorch at other shapes.
        warnings.simplefilter("ignore")
        graph = io.BytesIO()  # in memory first, so that no file without its metadata is ever written
        torch.onnx.export(exportable(recognizer), (audio, audio_lengths), graph, dynamo=False,
                          opset_version=opset, input_names=list(ONNX_INPUTS), output_names=list(ONNX_OUTPUTS),
                          dynamic_axes=dynamic_axes)
    model = onnx.load_from_string(graph.getvalue())
    onnx.helper.set_model_props(model, onnx_metadata(recognizer.tokenizer, recognizer.frame_shift,
                                                     recognizer.describe(),
                                                     edge_pad_seconds=recognizer.edge_pad_seconds))
    onnx.save(model, str(path))
    return path
