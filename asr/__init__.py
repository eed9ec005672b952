"""asr: a bidirectional-GRU CTC speech recognizer, from audio files to word error rates.

    import asr
    model = asr.load_model("exp/digits/model.pt")   # or an `asr export` graph, "model.onnx": no torch needed
    result = model.transcribe("audio.flac")   # .text, .words (with start, end, confidence)
"""

__version__ = "0.1.0"


def load_model(path, device="cpu"):
    """Load a model file (`model.pt`) into a Recognizer ready to transcribe (see asr.checkpoint.load_model), or an
    ONNX file from `asr export` (`model.onnx`) into an OnnxRecognizer, which runs on the CPU without torch."""
    from asr.onnx_model import OnnxRecognizer, is_onnx_model

    if is_onnx_model(path):
        if str(device) != "cpu":
            raise ValueError(f"{path}: an ONNX model runs on the CPU, not {device}")
        return OnnxRecognizer(path)
    from asr.checkpoint import load_model as _load_model  # keeps `import asr` light: torch loads on first use

    return _load_model(path, device)
