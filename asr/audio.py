"""Reading audio files: any format, sample rate and channel count in; 16 kHz mono float32 samples out.

soundfile (libsndfile) reads WAV, FLAC, OGG and MP3 itself. A file whose format it does not recognise goes to
librosa, which hands it to audioread (ffmpeg or GStreamer, where installed). Whatever goes wrong with a file
surfaces as an `AudioError` naming the file and the problem; the library's own exception is chained to it.

`load_samples` and `stream_samples` give numpy arrays, `load_audio` and `stream_audio` the same samples as torch
tensors. This module imports torch only when asked for a tensor: transcribing with an ONNX model never loads torch,
which alone takes longer to import than transcribing a minute of speech.
"""
from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import audioread
import numpy as np
import soundfile
import soxr

from asr.errors import AudioError

if TYPE_CHECKING:
    import torch

SAMPLE_RATE = 16000

# soxr's "high quality": 20-bit precision, linear phase. Resampling to 16 kHz it is flat (within 0.1 dB) up to
# 7.45 kHz and 3 dB down at 7.6 kHz (measured).
_RESAMPLE_QUALITY = "HQ"

# libsndfile's code for "Format not recognised": the one failure that means another decoder should try. Every other
# code comes from a file libsndfile recognised and then could not read.
_SF_ERR_UNRECOGNISED_FORMAT = 1


@dataclass(frozen=True)
class AudioInfo:
    """What a file's header says about its audio."""

    duration: float  # seconds
    sample_rate: int
    channels: int
    frames: int  # samples per channel


def audio_info(path) -> AudioInfo:
    """Read duration, sample rate, channels and frames from the file's header, without decoding the audio.

    MP3 headers give an estimate (a few milliseconds off the decoded length). A header announcing no samples is
    reported as it is (`frames == 0`); `load_audio` is what refuses it.
    """
    path = _existing_file(path)
    try:
        header = soundfile.info(str(path))
    except soundfile.LibsndfileError as error:
        if error.code != _SF_ERR_UNRECOGNISED_FORMAT:
            raise _unreadable(path, error) from error
        return _audioread_info(path, error)
    return AudioInfo(
        duration=header.frames / header.samplerate,
        sample_rate=header.samplerate,
        channels=header.channels,
        frames=header.frames,
    )


def load_samples(path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Decode a whole file to mono float32 samples (S,) at `sample_rate`: channels averaged, then resampled."""
    path = _existing_file(path)
    samples, file_rate = _decode(path)
    mono = _downmix(path, samples)
    if mono.size == 0:
        raise AudioError(path, "no audio samples")
    return _resample_samples(mono, file_rate, sample_rate)


def load_audio(path, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """`load_samples` as a float32 tensor (S,)."""
    import torch

    return torch.from_numpy(load_samples(path, sample_rate))


def resample(wave: np.ndarray | torch.Tensor, orig_sr: float, new_sr: float) -> np.ndarray | torch.Tensor:
    """Resample a 1-D waveform with soxr's anti-aliasing filter; returns float32 of the input's kind: a numpy array,
    or a tensor on the input's device.

    Rates may be fractional: speed perturbation resamples from `16000 * factor`.
    """
    if wave.ndim != 1:
        raise ValueError(f"resample expects a 1-D waveform, got shape {tuple(wave.shape)}")
    if isinstance(wave, np.ndarray):
        return _resample_samples(wave, orig_sr, new_sr)
    import torch

    if orig_sr == new_sr:
        return wave.to(torch.float32)
    samples = wave.detach().cpu().numpy()
    return torch.from_numpy(_resample_samples(samples, orig_sr, new_sr)).to(wave.device)


def _resample_samples(samples: np.ndarray, orig_sr: float, new_sr: float) -> np.ndarray:
    samples = np.ascontiguousarray(samples, dtype=np.float32)
    if orig_sr == new_sr:
        return samples
    return soxr.resample(samples, orig_sr, new_sr, quality=_RESAMPLE_QUALITY)


def stream_samples(
    path, chunk_seconds: float, sample_rate: int = SAMPLE_RATE, overlap_seconds: float = 0.0
) -> Iterator[tuple[float, np.ndarray]]:
    """Yield `(start_seconds, chunk)` over a file, reading about one chunk of it at a time.

    Every chunk holds `chunk_seconds` of mono float32 samples at `sample_rate`, except the last, which holds what is
    left; consecutive chunks share `overlap_seconds`. Without overlap the chunks put end to end equal `load_samples`.
    Memory stays bounded by a few chunks for the formats libsndfile reads; any other format (decoded by librosa) is
    loaded whole and then sliced, because audioread offers no seekable, resumable decoding.
    """
    return _chunks(_resampled_blocks(path, sample_rate, chunk_seconds), chunk_seconds, sample_rate, overlap_seconds)


def slide_windows(
    wave: np.ndarray, chunk_seconds: float, sample_rate: int = SAMPLE_RATE, overlap_seconds: float = 0.0
) -> Iterator[tuple[float, np.ndarray]]:
    """The `(start_seconds, chunk)` that `stream_samples` would read from a file holding the samples `wave`."""
    return _chunks(iter([wave]), chunk_seconds, sample_rate, overlap_seconds)


def _chunks(
    blocks: Iterator[np.ndarray], chunk_seconds: float, sample_rate: int, overlap_seconds: float
) -> Iterator[tuple[float, np.ndarray]]:
    """Consecutive blocks of samples cut into chunks of `chunk_seconds` that overlap by `overlap_seconds`."""
    chunk_length = round(chunk_seconds * sample_rate)
    overlap_length = round(overlap_seconds * sample_rate)
    if chunk_length < 1 or not 0 <= overlap_length < chunk_length:
        raise ValueError(
            f"need chunk_seconds > 0 and 0 <= overlap_seconds < chunk_seconds, "
            f"got chunk_seconds={chunk_seconds}, overlap_seconds={overlap_seconds}"
        )
    step = chunk_length - overlap_length
    pending = np.empty(0, dtype=np.float32)  # samples not yet yielded, plus the overlap kept for the next chunk
    pending_start = 0  # index of pending[0] in the whole
    for block in blocks:
        pending = np.concatenate([pending, block])
        while len(pending) >= chunk_length:
            yield pending_start / sample_rate, pending[:chunk_length].copy()
            pending = pending[step:]
            pending_start += step
    # What follows the last full chunk; when nothing was yielded yet (shorter than one chunk), all of it.
    if len(pending) > overlap_length or (pending_start == 0 and len(pending) > 0):
        yield pending_start / sample_rate, pending


def stream_audio(
    path, chunk_seconds: float, sample_rate: int = SAMPLE_RATE, overlap_seconds: float = 0.0
) -> Iterator[tuple[float, torch.Tensor]]:
    """`stream_samples` with each chunk as a float32 tensor."""
    import torch

    for start, chunk in stream_samples(path, chunk_seconds, sample_rate, overlap_seconds):
        yield start, torch.from_numpy(chunk)


def as_samples(wave) -> np.ndarray:
    """A 1-D waveform given as a numpy array or a torch tensor (on any device), as float32 numpy samples."""
    if not isinstance(wave, np.ndarray):
        wave = wave.detach().cpu().numpy()  # a tensor: torch is loaded already, as it made one
    if wave.ndim != 1:
        raise ValueError(f"expected a 1-D waveform, got shape {tuple(wave.shape)}")
    return np.asarray(wave, dtype=np.float32)


def _resampled_blocks(path, sample_rate: int, block_seconds: float) -> Iterator[np.ndarray]:
    """Yield the file as consecutive mono float32 blocks at `sample_rate`, decoding `block_seconds` at a time."""
    path = _existing_file(path)
    try:
        sound_file = soundfile.SoundFile(str(path))
    except soundfile.LibsndfileError as error:
        if error.code != _SF_ERR_UNRECOGNISED_FORMAT:
            raise _unreadable(path, error) from error
        yield load_samples(path, sample_rate)
        return
    with sound_file:
        # A streaming resampler keeps its filter state across blocks, so the blocks join without seams: the output
        # equals resampling the whole file at once.
        resampler = soxr.ResampleStream(
            sound_file.samplerate, sample_rate, num_channels=1, dtype="float32", quality=_RESAMPLE_QUALITY
        )
        block_frames = max(1, round(block_seconds * sound_file.samplerate))
        frames_read = 0
        while True:
            try:
                samples = sound_file.read(block_frames, dtype="float32", always_2d=True)
            except soundfile.LibsndfileError as error:
                raise _unreadable(path, error) from error
            frames_read += len(samples)
            at_end = len(samples) == 0
            yield resampler.resample_chunk(_downmix(path, samples), last=at_end)
            if at_end:
                break
    if frames_read == 0:
        raise AudioError(path, "no audio samples")


def _existing_file(path) -> Path:
    """The path, once it is known to name a non-empty file; libsndfile's messages for these cases are obscure."""
    path = Path(path)
    if not path.exists():
        raise AudioError(path, "file not found")
    if path.is_dir():
        raise AudioError(path, "is a directory")
    if path.stat().st_size == 0:
        raise AudioError(path, "empty file (0 bytes)")
    return path


def _decode(path: Path) -> tuple[np.ndarray, int]:
    """All of the file's samples as float32 (frames, channels), and its sample rate."""
    try:
        samples, file_rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except soundfile.LibsndfileError as error:
        if error.code != _SF_ERR_UNRECOGNISED_FORMAT:
            raise _unreadable(path, error) from error
        return _decode_with_librosa(path, error)
    return samples, file_rate


def _decode_with_librosa(path: Path, soundfile_error: soundfile.LibsndfileError) -> tuple[np.ndarray, int]:
    import librosa  # only for the formats libsndfile does not read: a deployment that transcribes wav can go without

    # audioread raises DecodeError (EOFError for a cut-off header); librosa 1.0, which drops audioread, will let
    # libsndfile's error through instead.
    try:
        with _quiet_fallback():
            samples, file_rate = librosa.load(str(path), sr=None, mono=False, dtype=np.float32)
    except (audioread.DecodeError, EOFError, soundfile.LibsndfileError) as error:
        raise _not_audio(path, soundfile_error) from error
    # librosa gives (frames,) for mono and (channels, frames) otherwise.
    return np.atleast_2d(samples).T, int(file_rate)


def _audioread_info(path: Path, soundfile_error: soundfile.LibsndfileError) -> AudioInfo:
    try:
        with _quiet_fallback(), audioread.audio_open(str(path)) as decoder:
            return AudioInfo(
                duration=decoder.duration,
                sample_rate=decoder.samplerate,
                channels=decoder.channels,
                frames=round(decoder.duration * decoder.samplerate),
            )
    except (audioread.DecodeError, EOFError) as error:
        raise _not_audio(path, soundfile_error) from error


@contextmanager
def _quiet_fallback():
    """Silence librosa's "PySoundFile failed" and audioread's deprecation warnings, repeated for every file."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _downmix(path: Path, samples: np.ndarray) -> np.ndarray:
    """Average the channels of (frames, channels) samples; refuse NaN or infinite values."""
    mono = samples.mean(axis=1, dtype=np.float32)
    if not np.isfinite(mono).all():
        raise AudioError(path, "contains NaN or infinite samples")
    return mono


def _unreadable(path: Path, error: soundfile.LibsndfileError) -> AudioError:
    return AudioError(path, f"truncated or corrupt (libsndfile: {_reason(error)})")


def _not_audio(path: Path, soundfile_error: soundfile.LibsndfileError) -> AudioError:
    return AudioError(
        path, f"not an audio file (libsndfile: {_reason(soundfile_error)}; audioread: no backend could decode it)"
    )


def _reason(error: soundfile.LibsndfileError) -> str:
    return error.error_string.rstrip(". ")
