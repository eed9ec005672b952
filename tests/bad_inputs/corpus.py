"""The bad-input corpus: broken and unusual recordings, transcripts, manifests, corpus folders, model files and
archives.

Every case is made here, in a few lines, into a folder the caller gives (a pytest tmp folder), rather than committed
as a binary. Each case says what it is (`what`, the words of docs/reliability.md) and, for a recording, whether the
toolkit must read it (`problem is None`) or refuse it with an `AudioError` whose problem starts with `problem`.

Every readable recording holds the same thing whatever its format: tone bursts starting at `BURST_STARTS`, silence
between them. A listener that writes one word a burst therefore hears the same transcript, `BURST_WORDS`, in each
of them, so that a format read wrongly (a channel dropped, a wrong rate, garbage samples) shows as a wrong transcript.
"""
from __future__ import annotations

import io
import json
import os
import pickle
import struct
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile
import torch

SAMPLE_RATE = 16000
RECORDING_SECONDS = 1.0
BURST_STARTS = (0.1, 0.4, 0.7)  # seconds
BURST_SECONDS = 0.15
BURST_WORDS = "A A A"  # one word a burst: what every readable recording says, and its transcript
HOUR_BURST_STARTS = (1800.0, 3599.0)  # the hour-long recording is silent but for a burst midway and one at its end


def bursts(sample_rate: int, seconds: float = RECORDING_SECONDS, starts=BURST_STARTS,
           amplitude: float = 0.8) -> np.ndarray:
    """float32 samples: silence with a 440 Hz tone of `BURST_SECONDS` at each of `starts`."""
    signal = np.zeros(round(seconds * sample_rate), dtype=np.float32)
    tone = amplitude * np.sin(2 * np.pi * 440.0 * np.arange(round(BURST_SECONDS * sample_rate)) / sample_rate)
    for start in starts:
        first = round(start * sample_rate)
        signal[first:first + len(tone)] = tone[:len(signal) - first]
    return signal


# ----------------------------------------------------------------------------------------------------------------
# Recordings


@dataclass(frozen=True)
class AudioCase:
    """One recording: its file name (the extension is part of the case), how to make it, what must happen to it."""

    name: str
    what: str
    write: Callable[[Path], None]
    problem: str | None = None  # how AudioError.problem starts when the file must be refused; None: it must load
    duration: float = RECORDING_SECONDS  # of a readable recording, in seconds
    burst_starts: tuple[float, ...] = BURST_STARTS

    @property
    def readable(self) -> bool:
        return self.problem is None

    @property
    def words(self) -> str:
        """The transcript a one-word-a-burst listener gives a readable recording."""
        return " ".join("A" for _ in self.burst_starts)


def _pcm(sample_rate: int, subtype: str, channels_of_bursts=(0,), channels: int = 1, amplitude: float = 0.8):
    """A writer of a WAV (or FLAC, by the name's extension) holding the bursts in `channels_of_bursts`, silence in
    the other channels: a reader that keeps one channel instead of averaging them all may lose the speech."""
    def write(path: Path) -> None:
        signal = bursts(sample_rate, amplitude=amplitude)
        samples = np.zeros((len(signal), channels), dtype=np.float32)
        samples[:, list(channels_of_bursts)] = signal[:, None]
        soundfile.write(path, samples, sample_rate, subtype=subtype)
    return write


def _truncated_flac(path: Path) -> None:
    _pcm(SAMPLE_RATE, "PCM_16")(path)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])  # the header still announces every sample


def _corrupt_wav_header(path: Path) -> None:
    _pcm(SAMPLE_RATE, "PCM_16")(path)
    data = path.read_bytes()
    path.write_bytes(data[:12] + b"\xff" * 24 + data[36:])  # the "fmt " chunk overwritten


def _zero_length(path: Path) -> None:
    path.touch()


def _no_samples(path: Path) -> None:
    soundfile.write(path, np.zeros(0, dtype=np.float32), SAMPLE_RATE, subtype="PCM_16")


def _text_named_wav(path: Path) -> None:
    path.write_text("Meeting notes, not a recording.\n" * 40)


def _folder(path: Path) -> None:
    path.mkdir()


def _nothing(path: Path) -> None:
    """The missing file: a name that a list points at, and no file."""


def _float_with(value: float) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        signal = bursts(SAMPLE_RATE)
        signal[round(0.45 * SAMPLE_RATE)] = value  # inside the second burst
        soundfile.write(path, signal, SAMPLE_RATE, subtype="FLOAT")
    return write


def _hour(path: Path) -> None:
    """An hour of 16 kHz 16-bit mono WAV (115 MB, sparse on disk): a canonical header, zeros, and two bursts."""
    frames = round(3600 * SAMPLE_RATE)
    header = (b"RIFF" + struct.pack("<I", 36 + 2 * frames) + b"WAVE"
              + b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, SAMPLE_RATE, 2 * SAMPLE_RATE, 2, 16)
              + b"data" + struct.pack("<I", 2 * frames))
    burst = (bursts(SAMPLE_RATE, seconds=BURST_SECONDS, starts=(0.0,)) * 32767).astype("<i2").tobytes()
    with open(path, "wb") as out:
        out.write(header)
        out.truncate(len(header) + 2 * frames)  # zero samples are silence; the file system need not store them
        for start in HOUR_BURST_STARTS:
            out.seek(len(header) + 2 * round(start * SAMPLE_RATE))
            out.write(burst)


AUDIO_CASES = [
    AudioCase("truncated.flac", "truncated FLAC (cut in half)", _truncated_flac, "truncated or corrupt"),
    AudioCase("corrupt_header.wav", "corrupt WAV header", _corrupt_wav_header, "truncated or corrupt"),
    AudioCase("zero_length.wav", "zero-length file (0 bytes)", _zero_length, "empty file (0 bytes)"),
    AudioCase("no_samples.wav", "empty audio (a WAV header, 0 samples)", _no_samples, "no audio samples"),
    AudioCase("text.wav", "a text file named .wav", _text_named_wav, "not an audio file"),
    AudioCase("folder.flac", "a directory named .flac", _folder, "is a directory"),
    AudioCase("missing.wav", "missing audio file", _nothing, "file not found"),
    AudioCase("nan.wav", "NaN sample in a float WAV", _float_with(np.nan), "contains NaN or infinite samples"),
    AudioCase("inf.wav", "infinite sample in a float WAV", _float_with(np.inf), "contains NaN or infinite samples"),
    AudioCase("u8.wav", "8-bit WAV (unsigned)", _pcm(SAMPLE_RATE, "PCM_U8")),
    AudioCase("s24.wav", "24-bit WAV", _pcm(SAMPLE_RATE, "PCM_24")),
    AudioCase("f32.wav", "32-bit float WAV", _pcm(SAMPLE_RATE, "FLOAT")),
    AudioCase("stereo.wav", "stereo (speech in the left channel only)", _pcm(SAMPLE_RATE, "PCM_16", (0,), 2)),
    AudioCase("six_channels.wav", "6 channels (speech in the last only)",
              _pcm(SAMPLE_RATE, "PCM_16", (5,), 6, amplitude=0.95)),
    AudioCase("8k.wav", "8 kHz", _pcm(8000, "PCM_16")),
    AudioCase("48k.flac", "48 kHz (FLAC)", _pcm(48000, "PCM_16")),
    AudioCase("hour.wav", "a 1-hour recording", _hour, duration=3600.0, burst_starts=HOUR_BURST_STARTS),
]
AUDIO_CASE = {case.name: case for case in AUDIO_CASES}


def write_audio_cases(folder: Path) -> dict[str, Path]:
    """Make every AUDIO_CASES recording in `folder`; returns case name → path (the missing one is not made)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for case in AUDIO_CASES:
        case.write(folder / case.name)
        paths[case.name] = folder / case.name
    return paths


# ----------------------------------------------------------------------------------------------------------------
# Transcripts


@dataclass(frozen=True)
class TextCase:
    """A transcript; in the corpora it goes with a readable recording (`reference.wav`)."""

    id: str
    what: str
    text: str


TEXT_CASES = [
    TextCase("punctuation_only", "a transcript with only punctuation", "?! ... -- \u201c\u201d (;)"),
    TextCase("accents", "accented Latin letters", "Caf\u00e9 na\u00efve Zo\u00eb"),
    TextCase("cjk", "CJK characters", "\u65e5\u672c\u8a9e \u4e2d\u6587"),
    TextCase("emoji", "emoji", "HELLO \U0001F600 WORLD"),
]


def write_reference_recording(folder: Path) -> Path:
    """The readable recording the text cases go with: 16 kHz 16-bit, the bursts."""
    path = folder / "reference.wav"
    _pcm(SAMPLE_RATE, "PCM_16")(path)
    return path


# ----------------------------------------------------------------------------------------------------------------
# Manifests and corpus folders


def manifest_line(utterance_id: str, audio: Path | str, text: str, duration: float = RECORDING_SECONDS) -> str:
    return json.dumps({"id": utterance_id, "audio": str(audio), "duration": duration, "text": text},
                      ensure_ascii=False)


def write_lines(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def write_corpus_manifest(path: Path, audio: dict[str, Path], reference: Path) -> Path:
    """A manifest of every recording case (id: its file name) and every text case (with `reference`).

    The recordings' transcript is what they say; their durations are what the cases announce, as a preparation
    reading the headers would write them (the unreadable ones get the normal length).
    """
    lines = [manifest_line(case.name, audio[case.name], case.words, case.duration) for case in AUDIO_CASES]
    lines += [manifest_line(case.id, reference, case.text) for case in TEXT_CASES]
    return write_lines(path, lines)


@dataclass(frozen=True)
class ManifestCase:
    """A manifest whose second line is bad; reading it must stop with a ManifestError naming the file and line 2."""

    name: str
    what: str
    bad_line: Callable[[Path], str]  # the reference recording → the line
    problem: str


MANIFEST_CASES = [
    ManifestCase("missing_field", "manifest line with a missing field",
                 lambda audio: json.dumps({"id": "b", "audio": str(audio), "text": BURST_WORDS}),
                 "missing field 'duration'"),
    ManifestCase("bad_json", "manifest line that is not JSON",
                 lambda audio: manifest_line("b", audio, BURST_WORDS)[:-10], "bad JSON"),
    ManifestCase("duplicate_id", "manifest with a duplicate id",
                 lambda audio: manifest_line("a", audio, BURST_WORDS), "duplicate id 'a' (first on line 1)"),
]


def write_bad_manifest(folder: Path, case: ManifestCase, reference: Path) -> Path:
    return write_lines(folder / f"{case.name}.jsonl",
                       [manifest_line("a", reference, BURST_WORDS), case.bad_line(reference)])


def write_kaldi_folder(folder: Path, audio: dict[str, Path], reference: Path) -> tuple[Path, Path]:
    """`wav.scp` and `text` of every recording and text case, plus an utterance without audio and one without a
    transcript. Returns (wav.scp, text)."""
    folder.mkdir(parents=True, exist_ok=True)
    scp = [f"{case.name} {audio[case.name]}" for case in AUDIO_CASES] + [
        f"{case.id} {reference}" for case in TEXT_CASES] + [f"untranscribed {reference}"]
    text = [f"{case.name} {case.words}" for case in AUDIO_CASES] + [
        f"{case.id} {case.text}" for case in TEXT_CASES] + [f"unrecorded {BURST_WORDS}"]
    return write_lines(folder / "wav.scp", scp), write_lines(folder / "text", text)


@dataclass(frozen=True)
class LibriSpeechTree:
    """A LibriSpeech-shaped corpus: `root/LibriSpeech/<subset>/...`; `case_of` maps each utterance id to its case."""

    root: Path
    subset: str
    case_of: dict[str, str]


def write_librispeech_tree(root: Path, audio: dict[str, Path], reference: Path) -> LibriSpeechTree:
    """Every case in LibriSpeech's layout (speaker 100, subset dev-clean), one chapter a kind of case:

    chapter 1: each recording case as `100-1-NNNN.flac` (libsndfile reads by content, so a WAV named .flac is
    read as a WAV; the folder case is a folder, the missing case only a transcript line); chapter 2: the text
    cases; chapter 3: recordings without a `.trans.txt`; chapter 4: a transcript line without audio and audio
    without a transcript line.
    """
    subset = "dev-clean"
    speaker_dir = root / "LibriSpeech" / subset / "100"
    case_of: dict[str, str] = {}

    def chapter(number: int, entries: list[tuple[str, Path | None, str | None]], with_transcript=True) -> None:
        """entries: (case, the audio to copy or None for no file, the transcript line's text or None for none)."""
        folder = speaker_dir / str(number)
        folder.mkdir(parents=True)
        lines = []
        for index, (case, source, text) in enumerate(entries):
            utterance_id = f"100-{number}-{index:04d}"
            case_of[utterance_id] = case
            target = folder / f"{utterance_id}.flac"
            if source is not None and source.is_dir():
                target.mkdir()
            elif source is not None and source.exists():
                os.link(source, target)  # a second name, not a copy: the hour-long file stays one sparse file
            if text is not None:
                lines.append(f"{utterance_id} {text}")
        if with_transcript:
            write_lines(folder / f"100-{number}.trans.txt", lines)

    chapter(1, [(case.name, audio[case.name], case.words) for case in AUDIO_CASES])
    chapter(2, [(case.id, reference, case.text) for case in TEXT_CASES])
    chapter(3, [("chapter without .trans.txt", reference, BURST_WORDS)] * 2, with_transcript=False)
    chapter(4, [("transcript line without audio", None, BURST_WORDS),
                ("audio without transcript line", reference, None)])
    return LibriSpeechTree(root, subset, case_of)


# ----------------------------------------------------------------------------------------------------------------
# Model files from strangers


class _CreatesFile:
    """Unpickling this calls open(marker, "w"): any code could stand in its place."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def write_malicious_model_file(path: Path, marker: Path) -> Path:
    """A torch.save'd file shaped like a model file, one of whose values runs code (creates `marker`) when
    unpickled by torch.load without weights_only=True."""
    torch.save({"format": "asr-model", "version": 1, "metadata": {"note": _CreatesFile(marker)}}, path)
    return path


def write_malicious_pickle(path: Path, marker: Path) -> Path:
    """A plain pickle (not torch's zip container) that creates `marker` when unpickled."""
    path.write_bytes(pickle.dumps(_CreatesFile(marker)))
    return path


# ----------------------------------------------------------------------------------------------------------------
# Archives from strangers


def _regular(name: str, data: bytes = b"escaped\n") -> tuple[tarfile.TarInfo, io.BytesIO]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, io.BytesIO(data)


def _special(name: str, kind: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info, None


# What each hostile member would do if extracted naively, and the member: given the archive's top folder, and an
# absolute folder outside the destination (extracting into `outside/dest`, a '..' member lands in `outside` too).
HOSTILE_MEMBERS = {
    "absolute path": lambda top, outside: _regular(f"{outside}/escaped.txt"),
    "'..' in the path": lambda top, outside: _regular(f"{top}/../../escaped.txt"),
    "symbolic link pointing outside": lambda top, outside: _special(f"{top}/passwd", tarfile.SYMTYPE,
                                                                    "../../../etc/passwd"),
    "hard link pointing outside": lambda top, outside: _special(f"{top}/hosts", tarfile.LNKTYPE, "/etc/hosts"),
    "device file": lambda top, outside: _special(f"{top}/null", tarfile.CHRTYPE),
}


def hostile_tar_gz(top: str, kind: str, outside: Path) -> bytes:
    """A tar.gz whose folder `top` holds a harmless README, then the HOSTILE_MEMBERS member of `kind`."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.addfile(*_regular(f"{top}/README.TXT", b"a corpus\n"))
        tar.addfile(*HOSTILE_MEMBERS[kind](top, outside))
    return buffer.getvalue()
