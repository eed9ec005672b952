"""asr: a bidirectional-GRU CTC speech recognizer, from audio files to word error rates."""

__version__ = "0.1.0"
