"""An exported model (`asr export`'s ONNX file) run by ONNX Runtime: transcription without torch.

The graph takes `audio` (B, S) float32 at 16 kHz and `audio_lengths` (B,) int64, and gives `log_probs` (B, T, V)
and `out_lengths` (B,). What it takes to read those outputs travels in the same file, as ONNX metadata properties
(string → string, readable from any runtime's API):

    asr_format          "asr-onnx"
    asr_format_version  "1"
    tokenizer           the tokenizer as JSON (asr.text.tokenizer_to_json: tokens, or sentencepiece's model bytes)
    frame_shift         seconds between two output frames, e.g. "0.04"
    sample_rate         the audio rate the graph expects, "16000"
    description         the model's dimensions, as `Recognizer.describe()` words them
    edge_pad_seconds    optional: the seconds of noise floor transcription lays at each edge of a recording
                        (asr.transcribe.EDGE_FLOOR_DBFS), e.g. "0.2"; absent for a model without it

`OnnxRecognizer` loads such a file and implements the recognizer interface (asr.backend.SpeechRecognizer), with
numpy arrays in and out, so that `asr.transcribe` runs it as it runs a PyTorch model. Nothing here imports torch: a
deployment that only transcribes needs onnxruntime, numpy and soundfile, and `asr transcribe model.onnx` starts
without paying for torch's import (docs/benchmarks.md).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from asr.audio import SAMPLE_RATE
from asr.errors import AsrError, ModelFileError
from asr.text import Tokenizer, tokenizer_from_json, tokenizer_to_json

ONNX_INPUTS = ("audio", "audio_lengths")
ONNX_OUTPUTS = ("log_probs", "out_lengths")
ONNX_FORMAT = "asr-onnx"
ONNX_FORMAT_VERSION = 1


def onnx_metadata(tokenizer: Tokenizer, frame_shift: float, description: str,
                  sample_rate: int = SAMPLE_RATE, edge_pad_seconds: float = 0.0) -> dict[str, str]:
    """The metadata properties an exported graph carries (see the module's docstring)."""
    properties = {"asr_format": ONNX_FORMAT, "asr_format_version": str(ONNX_FORMAT_VERSION),
                  "tokenizer": tokenizer_to_json(tokenizer), "frame_shift": repr(float(frame_shift)),
                  "sample_rate": str(int(sample_rate)), "description": description}
    if edge_pad_seconds:
        properties["edge_pad_seconds"] = repr(float(edge_pad_seconds))
    return properties


class OnnxRecognizer:
    """An `asr export` file in an ONNX Runtime session (CPU): (B, S) float32 audio and (B,) int64 lengths in, (B, T, V)
    CTC log-probabilities and (B,) output lengths out, as numpy arrays; with the file's tokenizer, frame shift and
    edge floor. A SpeechRecognizer (asr.backend).

    `threads` is ONNX Runtime's intra-op thread count (None: its default, one a physical core). `spin` lets idle
    threads spin between operations, as ONNX Runtime does by default; None follows OMP_WAIT_POLICY, the variable that
    governs torch's threads, so that one setting holds for both backends: they sleep unless it says ACTIVE, because
    a spinning thread on a CPU shared with other work waits out their time slices (docs/benchmarks.md).
    """

    def __init__(self, path: str | Path, threads: int | None = None, spin: bool | None = None):
        path = Path(path)
        try:
            import onnxruntime
        except ImportError as error:
            raise AsrError("running an ONNX model needs the onnxruntime package: pip install onnxruntime") from error
        if not path.is_file():
            raise ModelFileError(f"{path}: model file not found")
        if spin is None:
            spin = os.environ.get("OMP_WAIT_POLICY", "").upper() == "ACTIVE"
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads or 0
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        options.log_severity_level = 3  # errors only: its warnings about the exporter's unused initializers are noise
        try:
            self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime raises its own classes, not exported under stable names
            raise ModelFileError(f"{path}: not an ONNX model ONNX Runtime can load ({error})") from error
        inputs = tuple(node.name for node in self.session.get_inputs())
        outputs = tuple(node.name for node in self.session.get_outputs())
        if inputs != ONNX_INPUTS or outputs != ONNX_OUTPUTS:
            raise ModelFileError(f"{path}: the graph's inputs {inputs} and outputs {outputs} are not asr export's "
                                 f"{ONNX_INPUTS} and {ONNX_OUTPUTS}")
        metadata = self.session.get_modelmeta().custom_metadata_map
        self.tokenizer, self.frame_shift, self.sample_rate, self.description = _read_metadata(path, metadata)
        try:
            self.edge_pad_seconds = float(metadata.get("edge_pad_seconds", 0.0))
        except ValueError as error:
            raise ModelFileError(f"{path}: unreadable metadata ({error})") from error
        self.source_path = str(path)

    # The graph holds its normalization inside and keeps its features there; the export carries no word spans.
    word_span = None
    normalization = None
    exposes_features = False

    def log_probs(self, audio: np.ndarray, audio_lengths: np.ndarray,
                  speaker_cmvn: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(B, S) 16 kHz audio and lengths → (B, T, V) CTC log-probabilities and output lengths."""
        if speaker_cmvn is not None:
            raise self._no_speaker_statistics()
        feeds = {"audio": np.ascontiguousarray(audio, dtype=np.float32),
                 "audio_lengths": np.ascontiguousarray(audio_lengths, dtype=np.int64)}
        log_probs, out_lengths = self.session.run(list(ONNX_OUTPUTS), feeds)
        return log_probs, out_lengths

    def speaker_cmvn(self, utterances, progress: bool = False):
        raise self._no_speaker_statistics()

    def _no_speaker_statistics(self) -> AsrError:
        return AsrError(f"{self.source_path}: an exported ONNX graph normalizes each recording alone: it cannot take "
                        f"a speaker's statistics; use the model file it was exported from")

    @property
    def threads(self) -> int:
        """The intra-op thread count the session runs with (0: ONNX Runtime's default)."""
        return self.session.get_session_options().intra_op_num_threads

    def describe(self) -> str:
        return f"{self.description}; ONNX Runtime"

    def transcribe(self, audio, **options):
        """Transcribe a file path (or a 16 kHz waveform); see asr.transcribe.transcribe_file for options."""
        from asr.transcribe import transcribe_file  # imported when used: `asr export` needs only the metadata

        return transcribe_file(self, audio, **options)


def _read_metadata(path: Path, metadata: dict[str, str]) -> tuple[Tokenizer, float, int, str]:
    """The tokenizer, frame shift, sample rate and description an exported file carries; ModelFileError naming the
    file when they are missing (a graph from an older `asr export`, or from another tool) or unusable."""
    missing = [key for key in ("asr_format_version", "tokenizer", "frame_shift", "sample_rate")
               if key not in metadata]
    if missing or metadata.get("asr_format") != ONNX_FORMAT:
        raise ModelFileError(f"{path}: this ONNX graph lacks what transcription needs besides the graph (the "
                             f"tokenizer and frame shift, in its metadata): it was exported by an older version of "
                             f"asr, or by another tool. Export it again: asr export --model MODEL.pt --out {path}")
    try:
        version = int(metadata["asr_format_version"])
        frame_shift = float(metadata["frame_shift"])
        sample_rate = int(metadata["sample_rate"])
    except ValueError as error:
        raise ModelFileError(f"{path}: unreadable metadata ({error})") from error
    if version > ONNX_FORMAT_VERSION:
        raise ModelFileError(f"{path}: exported by a newer version of asr (format {version}; this one reads up to "
                             f"{ONNX_FORMAT_VERSION}): upgrade asr")
    if sample_rate != SAMPLE_RATE:
        raise ModelFileError(f"{path}: the graph expects {sample_rate} Hz audio; asr transcribes at {SAMPLE_RATE} Hz")
    try:
        tokenizer = tokenizer_from_json(metadata["tokenizer"])
    except ModelFileError as error:
        raise ModelFileError(f"{path}: {error}") from error
    return tokenizer, frame_shift, sample_rate, metadata.get("description", "")
