"""asr: a bidirectional-GRU CTC speech recognizer, from audio files to word error rates.

    import asr
    model = asr.load_model("exp/digits/model.pt")   # or an `asr export` graph, "model.onnx": no torch needed
    result = model.transcribe("audio.flac")   # .text, .words (with start, end, confidence)

`asr.load_model` (asr.backend) returns either back end of the recognizer interface, `asr.backend.SpeechRecognizer`.
"""

from asr.backend import SpeechRecognizer, load_model

__all__ = ["SpeechRecognizer", "load_model"]
__version__ = "0.1.0"
