"""The recognizer interface: what transcription asks of a model, whichever back end runs it; and `load_model`, which
picks the back end by the model file and holds the loading policy (device, threads, int8 quantization).

Two back ends implement `SpeechRecognizer`:

- `asr.recognizer.Recognizer`: a model file (`model.pt`) in PyTorch, on a CPU or a GPU, int8-quantized if asked;
- `asr.onnx_model.OnnxRecognizer`: an `asr export` graph (`model.onnx`) on ONNX Runtime, on the CPU, without torch.

`asr.transcribe`, `asr.evaluate` and `asr.serve` read a model only through this interface, so they never ask which
back end they hold. This module imports neither torch nor onnxruntime: `load_model` imports the one the file needs.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from asr.errors import AsrError

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    import numpy as np

    from asr.text import Tokenizer

QUANTIZATIONS = ("int8",)


@runtime_checkable
class SpeechRecognizer(Protocol):
    """What transcription needs from a model (`isinstance` checks that an object has every member)."""

    tokenizer: Tokenizer  # gives the model's outputs their meaning; id 0 is the CTC blank
    frame_shift: float  # seconds between two output frames
    source_path: str | None  # the file it was loaded from, if any

    @property
    def edge_pad_seconds(self) -> float:
        """Seconds of noise floor the model file asks to hear at each edge of a recording (0: none); see
        asr.transcribe.EDGE_FLOOR_DBFS."""

    @property
    def word_span(self) -> Sequence[float] | None:
        """The model file's calibrated word spans for greedy decoding (asr.decoding.GreedyDecoder), if any."""

    @property
    def normalization(self) -> str | None:
        """How features are normalized: 'global', 'utterance' or 'speaker' (FeatureConfig.normalization); None for
        an exported graph, which normalizes inside it each recording alone."""

    @property
    def exposes_features(self) -> bool:
        """Whether the features and posteriors it computes can be drawn (asr.plot); an exported graph keeps them
        inside."""

    def log_probs(self, audio: np.ndarray, audio_lengths: np.ndarray,
                  speaker_cmvn: np.ndarray | None = None) -> tuple[Any, Any]:
        """(B, S) float32 16 kHz audio, zero-padded, and (B,) int64 lengths → (B, T, V) CTC log-probabilities and
        (B,) output lengths, in inference mode: arrays the decoders of asr.decoding read (numpy arrays, or tensors
        left on the model's device so that decoding on a GPU stays there). `speaker_cmvn` (B, 2, n_mels): each
        recording's speaker's statistics, for a model normalized by speaker."""

    def speaker_cmvn(self, utterances: Iterable, progress: bool = False):
        """For a model normalized by speaker: an `asr.normalization.SpeakerStats` of the statistics of each speaker over
        `utterances` (objects with `.audio` and `.speaker`); AsrError for a model that cannot take them."""

    def describe(self) -> str:
        """The model's dimensions, in words."""

    def transcribe(self, audio, **options):
        """One recording (a path or a 16 kHz waveform) → an asr.transcribe.Transcript."""


def is_onnx_model(path) -> bool:
    """Whether a model path names an exported graph (by its suffix), run by ONNX Runtime rather than torch."""
    return Path(path).suffix.lower() == ".onnx"


def load_model(path: str | Path, device: str | None = "cpu", threads: int | None = None,
               quantize: str | None = None) -> SpeechRecognizer:
    """The recognizer of a model file, ready to transcribe: a model file (`model.pt`) as a `Recognizer` in eval
    mode on `device` (None: cuda when available), quantized when `quantize` is 'int8' (CPU only); an `asr export`
    graph (`model.onnx`) as an `OnnxRecognizer` on the CPU, never importing torch. `threads`: CPU threads for torch
    (process-wide) or the ONNX Runtime session (None: the library's choice). AsrError names the file and what it
    cannot do."""
    if quantize is not None and quantize not in QUANTIZATIONS:
        raise AsrError(f"{path}: unknown quantization {quantize!r} (known: {', '.join(QUANTIZATIONS)})")
    if is_onnx_model(path):
        if quantize:
            # ONNX Runtime's dynamic quantization leaves the GRU layers, nearly all of the work, in float32.
            raise AsrError(f"{path}: --quantize {quantize} quantizes a PyTorch model file as it loads; an ONNX graph "
                           f"runs as it was exported (transcribe the model file with --quantize int8 instead)")
        if device not in (None, "cpu"):
            raise AsrError(f"{path}: an ONNX model runs on the CPU (--device {device} is for model files)")
        from asr.onnx_model import OnnxRecognizer

        return OnnxRecognizer(path, threads=threads)
    import torch

    from asr import checkpoint

    if threads:
        torch.set_num_threads(threads)
    recognizer = checkpoint.load_model(path, device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if quantize == "int8":
        from asr.export import quantize_int8

        recognizer = quantize_int8(recognizer)
    return recognizer
