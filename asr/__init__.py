"""asr: a bidirectional-GRU CTC speech recognizer, from audio files to word error rates.

    import asr
    model = asr.load_model("exp/digits/model.pt")
    result = model.transcribe("audio.flac")   # .text, .words (with start, end, confidence)
"""

__version__ = "0.1.0"


def load_model(path, device="cpu"):
    """Load a model file (`model.pt`) into a Recognizer ready to transcribe; see asr.checkpoint.load_model."""
    from asr.checkpoint import load_model as _load_model  # keeps `import asr` light: torch loads on first use

    return _load_model(path, device)
