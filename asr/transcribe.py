"""Transcribing audio files: short files in batches, long recordings in overlapping windows, and the output formats.

Short files (up to `chunk_seconds`) are sorted by duration and decoded in batches, so that little of a batch is
padding. A longer recording is read in windows of `chunk_seconds` that overlap by `overlap_seconds`; each window is
decoded on its own and the words are stitched by time (`stitch_windows`), so memory stays bounded by one window
whatever the recording's length: an hour of audio never lies in memory as samples, features or log-probabilities.

A transcript turns into plain text, one JSON object, or SRT / WebVTT subtitles (`OUTPUT_FORMATS`).

The recognizer is any back end of the recognizer interface (asr.backend.SpeechRecognizer): a PyTorch `Recognizer`
or an `OnnxRecognizer`. Audio is read and batched as numpy arrays and handed to `recognizer.log_probs`, so with an
ONNX model this module never imports torch.
"""
from __future__ import annotations

import glob
import json
import math
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
from tqdm import tqdm

from asr.audio import SAMPLE_RATE, as_samples, audio_info, load_samples, slide_windows, stream_samples
from asr.decoding import Word, make_decoder
from asr.errors import AsrError, AudioError

if TYPE_CHECKING:
    import torch

    from asr.backend import SpeechRecognizer

# What a folder given as input is searched for (case-insensitively).
AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".aac", ".aif", ".aiff", ".sph", ".webm")

# Subtitle cues: at most this long and this many characters (one line of the usual 42), and a pause this long
# between two words starts a new cue, so that a cue never stays on screen through a silence.
CUE_MAX_SECONDS = 7.0
CUE_MAX_CHARS = 42
CUE_BREAK_PAUSE = 1.0

# A model whose file asks for it (metadata "edge_pad_seconds") hears each recording between that much noise floor at
# both edges. A recording trimmed tight to its word gives a CTC model only a few output frames and no silence on
# either side, unlike everything it was trained on. The floor continues the recording's own: white noise at the RMS
# of its quietest 10 ms, within the range of floors training laid under its utterances (asr.data.synth, digits), so
# that no step in level appears where the recording begins. Seeded: a file's transcript never varies.
EDGE_FLOOR_DBFS = (-90.0, -55.0)


@dataclass
class Transcript:
    """What was recognized in one recording; `words` carry times in seconds from the recording's start."""

    audio: str  # the file's path, or "<waveform>" for a waveform given as samples
    text: str
    duration: float  # seconds of audio
    words: list[Word] = field(default_factory=list)
    # Processing time spent on this recording; a batch's time is shared among its files in proportion to duration.
    compute_seconds: float = 0.0

    def to_dict(self) -> dict:
        """The JSON output: audio, text, duration and words with start, end (seconds) and confidence."""
        return {
            "audio": self.audio,
            "text": self.text,
            "duration": round(self.duration, 3),
            "words": [{"word": w.word, "start": round(w.start, 3), "end": round(w.end, 3),
                       "confidence": round(w.confidence, 4)} for w in self.words],
        }


# ----------------------------------------------------------------------------------------------------------------
# Inputs


def expand_inputs(items: Iterable[str | Path]) -> list[Path]:
    """The audio files that command-line items name: files, folders (searched recursively for AUDIO_EXTENSIONS)
    and glob patterns (`**` recursive), in the order given, each file once.

    An item that names nothing (a missing file, a pattern matching nothing, a folder without audio) is kept as it
    is, so that transcribing it fails with an error naming it while the other items are still transcribed.
    """
    files: list[Path] = []
    for item in map(str, items):
        path = Path(item)
        if not path.exists() and glob.has_magic(item):
            matches = [Path(match) for match in sorted(glob.glob(item, recursive=True))]
        else:
            matches = [path]
        found = [file for match in matches for file in (_audio_in_folder(match) if match.is_dir() else [match])]
        files.extend(found or [path])
    return list(dict.fromkeys(files))


def _audio_in_folder(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file())


def _duration(path: Path) -> float:
    if path.is_dir():  # expand_inputs keeps a folder without audio as it is
        raise AudioError(path, f"a folder without audio files ({', '.join(AUDIO_EXTENSIONS)})")
    info = audio_info(path)
    if info.frames == 0:
        raise AudioError(path, "no audio samples")
    return info.duration


# ----------------------------------------------------------------------------------------------------------------
# Transcribing


def transcribe_file(recognizer: SpeechRecognizer, audio: str | Path | torch.Tensor | np.ndarray, decoder=None,
                    chunk_seconds: float = 30.0, overlap_seconds: float = 5.0,
                    speaker_cmvn: np.ndarray | None = None) -> Transcript:
    """Transcribe one recording: a file path, or a 16 kHz mono waveform (S,), a tensor or a numpy array.

    Up to `chunk_seconds` the recording is decoded whole; a longer one in windows of `chunk_seconds` overlapping by
    `overlap_seconds`, read from the file one window at a time. `decoder` defaults to `make_decoder`'s. Raises
    AudioError for a file that cannot be read. `speaker_cmvn` (2, n_mels): its speaker's mean and standard
    deviation, for a model normalized by speaker (without them, as `asr.normalization.training_set_at_own_level` says).
    """
    decoder = decoder or make_decoder(recognizer)
    started = time.perf_counter()
    is_waveform = not isinstance(audio, (str, os.PathLike))
    if is_waveform:
        audio = as_samples(audio)
        name, duration = "<waveform>", audio.size / SAMPLE_RATE
    else:
        name, duration = str(audio), _duration(Path(audio))
    speaker_rows = None if speaker_cmvn is None else speaker_cmvn[None]  # a batch of one
    if duration <= chunk_seconds:
        wave = audio if is_waveform else load_samples(audio)
        (hypothesis,) = _decode_waves(recognizer, decoder, [wave], speaker_rows)
        transcript = Transcript(name, hypothesis.text, wave.size / SAMPLE_RATE, list(hypothesis.words))
    else:
        windows = (slide_windows(audio, chunk_seconds, overlap_seconds=overlap_seconds) if is_waveform
                   else stream_samples(audio, chunk_seconds, overlap_seconds=overlap_seconds))
        words = stitch_windows(_decode_windows(recognizer, decoder, windows, speaker_rows))
        transcript = Transcript(name, " ".join(word.word for word in words), duration, words)
    transcript.compute_seconds = time.perf_counter() - started
    return transcript


def transcribe_files(recognizer: SpeechRecognizer, paths: Iterable[str | Path], decoder=None, batch_size: int = 16,
                     max_batch_seconds: float = 240.0, chunk_seconds: float = 30.0, overlap_seconds: float = 5.0,
                     progress: bool = False, speaker_cmvn: Sequence[np.ndarray] | None = None
                     ) -> Iterator[tuple[Path, Transcript | AsrError]]:
    """Transcribe many files; yields `(path, Transcript)`, or `(path, AudioError)` for a file that cannot be read,
    in the order of `paths`.

    Files up to `chunk_seconds` long go in batches of at most `batch_size` files and `max_batch_seconds` of padded
    audio, shortest first; longer ones are windowed as in `transcribe_file`. Runs on the recognizer's device.
    `speaker_cmvn`, one (2, n_mels) array a path: the speaker statistics `transcribe_file` takes.
    """
    decoder = decoder or make_decoder(recognizer)
    paths = [Path(p) for p in paths]
    results: dict[int, Transcript | AsrError] = {}
    durations: dict[int, float] = {}
    for index, path in enumerate(paths):
        try:
            durations[index] = _duration(path)
        except AudioError as error:
            results[index] = error
    short = sorted((i for i in durations if durations[i] <= chunk_seconds), key=durations.__getitem__)
    windowed = [i for i in durations if durations[i] > chunk_seconds]
    # The work: batches of short files, then each long file on its own.
    groups = [[short[position] for position in batch]
              for batch in consecutive_batches([durations[i] for i in short], max_batch_seconds, batch_size)]
    groups += [[i] for i in windowed]

    next_to_yield = 0  # results go out in the order of `paths`, each as soon as those before it are out
    with tqdm(total=sum(durations.values()), unit="s", desc="transcribe", disable=not progress) as bar:
        for group in groups:
            if durations[group[0]] > chunk_seconds:
                try:
                    results[group[0]] = transcribe_file(
                        recognizer, paths[group[0]], decoder, chunk_seconds, overlap_seconds,
                        None if speaker_cmvn is None else speaker_cmvn[group[0]])
                except AudioError as error:
                    results[group[0]] = error
            else:
                results.update(_transcribe_batch(recognizer, decoder, {i: paths[i] for i in group}, speaker_cmvn))
            bar.update(sum(durations[i] for i in group))
            while next_to_yield in results:
                yield paths[next_to_yield], results.pop(next_to_yield)
                next_to_yield += 1
    while next_to_yield in results:  # files that failed after the last one transcribed
        yield paths[next_to_yield], results.pop(next_to_yield)
        next_to_yield += 1


def transcribe_waveforms(recognizer: SpeechRecognizer, waves: Sequence[np.ndarray], decoder=None) -> list[Transcript]:
    """Transcribe 16 kHz mono float32 waveforms already in memory, decoded together as one zero-padded batch: one
    Transcript a waveform, in order, each named "<waveform>". For recordings up to a window long; a longer one goes
    through `transcribe_file`, which decodes it window by window. The batch's time is shared by duration."""
    if not waves:
        return []
    decoder = decoder or make_decoder(recognizer)
    waves = [as_samples(wave) for wave in waves]
    started = time.perf_counter()
    return _transcripts(recognizer, decoder, ["<waveform>"] * len(waves), waves, None, started)


def _transcripts(recognizer, decoder, names: list[str], waves: list[np.ndarray], speaker_cmvn: np.ndarray | None,
                 started: float) -> list[Transcript]:
    """Decode `waves` as one batch into a Transcript each; the time since `started` is shared out by duration."""
    hypotheses = _decode_waves(recognizer, decoder, waves, speaker_cmvn)
    elapsed = time.perf_counter() - started
    total_samples = sum(wave.size for wave in waves) or 1
    return [Transcript(name, hypothesis.text, wave.size / SAMPLE_RATE, list(hypothesis.words),
                       elapsed * wave.size / total_samples) for name, wave, hypothesis in zip(names, waves, hypotheses)]


class Recording(NamedTuple):
    """A recording and its speaker: what speaker statistics are estimated from."""

    audio: Path
    speaker: str


def one_speaker_cmvn(recognizer: SpeechRecognizer, paths: Sequence[Path],
                     progress: bool = False) -> list[np.ndarray] | None:
    """For recordings all of one speaker (`asr transcribe --one-speaker`): the statistics of all of them together,
    by which a model normalized by speaker normalizes each, as `transcribe_files` takes them (the same (2, n_mels)
    array for each path); None when no file can be read (transcribing reports each). AsrError for a model that is
    not normalized by speaker."""
    if recognizer.normalization != "speaker":
        how = ("an ONNX graph normalizes each recording alone" if recognizer.normalization is None
               else f"this one normalizes by {recognizer.normalization!r}")
        raise AsrError(f"{recognizer.source_path}: --one-speaker is for models trained with features.normalization: "
                       f"speaker; {how}")
    statistics = recognizer.speaker_cmvn([Recording(path, "inputs") for path in paths], progress=progress)
    if "inputs" not in statistics.by_speaker:
        return None
    return [statistics.rows("inputs").numpy()] * len(paths)


def consecutive_batches(durations: Sequence[float], max_seconds: float,
                        max_count: int | None = None) -> Iterator[range]:
    """Cut recordings of these durations, in their order, into consecutive batches (ranges of positions) whose padded
    audio, the batch's count × its longest, stays within `max_seconds`, of at most `max_count` recordings; a recording
    longer than that makes a batch of its own. Sorted by duration, the batches waste little on padding."""
    start, longest = 0, 0.0
    for position, duration in enumerate(durations):
        if position > start:
            count, longer = position - start + 1, max(longest, duration)
            if (max_count is None or count <= max_count) and count * longer <= max_seconds:
                longest = longer
                continue
            yield range(start, position)
        start, longest = position, duration
    if len(durations) > start:
        yield range(start, len(durations))


def _transcribe_batch(recognizer, decoder, paths: dict[int, Path],
                      speaker_cmvn: Sequence[np.ndarray] | None) -> dict[int, Transcript | AsrError]:
    started = time.perf_counter()
    results: dict[int, Transcript | AsrError] = {}
    waves: dict[int, np.ndarray] = {}
    for index, path in paths.items():
        try:
            waves[index] = load_samples(path)
        except AudioError as error:
            results[index] = error
    if waves:
        rows = None if speaker_cmvn is None else np.stack([speaker_cmvn[i] for i in waves])
        transcripts = _transcripts(recognizer, decoder, [str(paths[i]) for i in waves], list(waves.values()), rows,
                                   started)
        results.update(zip(waves, transcripts))
    return results


def _decode_waves(recognizer, decoder, waves: list[np.ndarray], speaker_cmvn: np.ndarray | None = None) -> list:
    """Hypotheses for a list of float32 waveforms, decoded as one zero-padded batch. `speaker_cmvn`: (B, 2, n_mels)
    or None.

    With the model's edge floor (`recognizer.edge_pad_seconds`), each waveform is decoded between its floors, and
    word times come back in the waveform's own time, within it."""
    pad = round(recognizer.edge_pad_seconds * SAMPLE_RATE)
    if not pad:
        return _decode_batch(recognizer, decoder, waves, speaker_cmvn)
    noise = np.random.default_rng(0).standard_normal(2 * pad).astype(np.float32)
    padded = []
    for wave in waves:
        floor = noise * np.float32(10 ** (_quietest_dbfs(wave) / 20))
        padded.append(np.concatenate([floor[:pad], wave, floor[pad:]]))
    hypotheses = _decode_batch(recognizer, decoder, padded, speaker_cmvn)
    for wave, hypothesis in zip(waves, hypotheses):
        duration = wave.size / SAMPLE_RATE
        for word in hypothesis.words:
            word.start = min(max(word.start - pad / SAMPLE_RATE, 0.0), duration)
            word.end = min(max(word.end - pad / SAMPLE_RATE, word.start), duration)
    return hypotheses


def _quietest_dbfs(wave: np.ndarray) -> float:
    """RMS of the wave's quietest 10 ms, in dB below full scale, within EDGE_FLOOR_DBFS."""
    hop = SAMPLE_RATE // 100
    frames = wave[:max(wave.size // hop, 1) * hop].astype(np.float64)
    frames = np.pad(frames, (0, max(hop - frames.size, 0))).reshape(-1, hop)
    level = 10 * np.log10(np.mean(frames ** 2, axis=1).min() + 1e-20)
    return float(np.clip(level, *EDGE_FLOOR_DBFS))


def _decode_batch(recognizer, decoder, waves: list[np.ndarray], speaker_cmvn: np.ndarray | None) -> list:
    lengths = np.array([wave.size for wave in waves], dtype=np.int64)
    batch = np.zeros((len(waves), lengths.max()), dtype=np.float32)
    for row, wave in enumerate(waves):
        batch[row, :wave.size] = wave
    return decoder.decode(*recognizer.log_probs(batch, lengths, speaker_cmvn))


# ----------------------------------------------------------------------------------------------------------------
# Long recordings


def _decode_windows(recognizer, decoder, windows: Iterable[tuple[float, np.ndarray]],
                    speaker_cmvn: np.ndarray | None = None) -> Iterator[tuple[float, float, list[Word]]]:
    """Decode `(start, waveform)` windows one at a time into `(start, end, words)`, word times from the recording's
    start; `speaker_cmvn` (1, 2, n_mels) or None."""
    for start, wave in windows:
        (hypothesis,) = _decode_waves(recognizer, decoder, [wave], speaker_cmvn)
        yield start, start + wave.size / SAMPLE_RATE, [_shifted(word, start) for word in hypothesis.words]


def _shifted(word: Word, seconds: float) -> Word:
    # Rounded to the millisecond like the decoder's times, so that no float residue tells windows apart.
    return Word(word.word, round(word.start + seconds, 3), round(word.end + seconds, 3), word.confidence)


def stitch_windows(windows: Iterable[tuple[float, float, list[Word]]]) -> list[Word]:
    """Join the words of consecutive overlapping windows, given as `(start, end, words)` with times in seconds
    from the recording's start, into one list in which each spoken word appears once.

    Near its edges a window's model lacks context, and a word cut by the edge is heard only in part. So each word
    is taken from the window where it lies farthest from an edge: between two windows, the handover is the middle
    of their overlap, the earlier window keeps the words centred before it and the later one those centred at or
    after it. A word whose centre the two windows place on different sides of the handover (times jitter by a frame
    or two) would be dropped or doubled by that rule alone; so the later window also keeps a word matching one the
    earlier window gave up, and drops a word matching the last one kept (matching: same spelling, overlapping times).
    """
    stitched: list[Word] = []
    previous_end: float | None = None
    for start, end, words in windows:
        handover = -math.inf if previous_end is None else (start + previous_end) / 2
        given_up = []  # the previous window's words past the handover, nearer its edge than the later window's
        while stitched and _centre(stitched[-1]) >= handover:
            given_up.append(stitched.pop())
        for word in words:
            takes_it = _centre(word) >= handover or any(_same_occurrence(word, other) for other in given_up)
            if takes_it and not (stitched and _same_occurrence(word, stitched[-1])):
                stitched.append(word)
        previous_end = end
    return stitched


def _centre(word: Word) -> float:
    return (word.start + word.end) / 2


def _same_occurrence(a: Word, b: Word) -> bool:
    return a.word == b.word and a.start < b.end and b.start < a.end


# ----------------------------------------------------------------------------------------------------------------
# Output formats


def format_txt(transcript: Transcript) -> str:
    """The text alone, one line."""
    return transcript.text + "\n"


def format_json(transcript: Transcript) -> str:
    """One line of JSON: `{"audio", "text", "duration", "words": [{"word", "start", "end", "confidence"}]}`."""
    return json.dumps(transcript.to_dict(), ensure_ascii=False) + "\n"


@dataclass
class Cue:
    """One subtitle: a run of words shown from `start` to `end` seconds."""

    start: float
    end: float
    text: str


def subtitle_cues(words: list[Word], max_seconds: float = CUE_MAX_SECONDS, max_chars: int = CUE_MAX_CHARS,
                  break_pause: float = CUE_BREAK_PAUSE) -> list[Cue]:
    """Group consecutive words into cues of at most `max_seconds` and `max_chars` (a longer single word gets a cue
    of its own), starting a new cue after a pause of `break_pause` seconds or more."""
    cues: list[Cue] = []
    group: list[Word] = []
    for word in words:
        if group:
            text = " ".join(w.word for w in group + [word])
            fits = (word.end - group[0].start <= max_seconds and len(text) <= max_chars
                    and word.start - group[-1].end < break_pause)
            if not fits:
                cues.append(Cue(group[0].start, group[-1].end, " ".join(w.word for w in group)))
                group = []
        group.append(word)
    if group:
        cues.append(Cue(group[0].start, group[-1].end, " ".join(w.word for w in group)))
    return cues


def format_srt(transcript: Transcript) -> str:
    """SubRip: numbered cues, `HH:MM:SS,mmm --> HH:MM:SS,mmm`, a blank line after each."""
    blocks = [f"{number}\n{_timestamp(cue.start, ',')} --> {_timestamp(cue.end, ',')}\n{cue.text}\n"
              for number, cue in enumerate(subtitle_cues(transcript.words), start=1)]
    return "\n".join(blocks)


def format_vtt(transcript: Transcript) -> str:
    """WebVTT: the `WEBVTT` header, then cues `HH:MM:SS.mmm --> HH:MM:SS.mmm`, a blank line before each."""
    blocks = [f"{_timestamp(cue.start, '.')} --> {_timestamp(cue.end, '.')}\n{cue.text}\n"
              for cue in subtitle_cues(transcript.words)]
    return "\n".join(["WEBVTT\n", *blocks])


def _timestamp(seconds: float, decimal_mark: str) -> str:
    milliseconds = round(max(0.0, seconds) * 1000)
    hours, milliseconds = divmod(milliseconds, 3_600_000)
    minutes, milliseconds = divmod(milliseconds, 60_000)
    whole_seconds, milliseconds = divmod(milliseconds, 1000)
    return f"{hours:02d}:{minutes:02d}:{whole_seconds:02d}{decimal_mark}{milliseconds:03d}"


# Format name → (file extension, formatter).
OUTPUT_FORMATS = {
    "txt": (".txt", format_txt),
    "json": (".json", format_json),
    "srt": (".srt", format_srt),
    "vtt": (".vtt", format_vtt),
}
