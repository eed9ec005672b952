"""Import a Kaldi-style data folder (`wav.scp` and `text`, optionally `utt2spk`) as a manifest.

    wav.scp   <utterance-id> <audio path>         text   <utterance-id> <transcript words>

Kaldi also lets `wav.scp` hold shell pipelines (`sox in.sph -t wav - |`). Those are never run: running commands
from a data file is a hazard, and the toolkit reads audio files only. Such lines are skipped with their reason, as
is every other utterance that cannot be used; nothing is dropped without being counted in the PrepReport.
"""
from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from asr.audio import audio_info
from asr.data.manifest import PrepReport, Utterance, write_manifest
from asr.errors import AudioError, ManifestError
from asr.text import Tokenizer, normalize_text

log = logging.getLogger(__name__)

# Skip reasons, as they appear in PrepReport.skipped.
PIPED_COMMAND = "wav.scp entry is a piped command (not run)"
AUDIO_MISSING = "audio missing"
AUDIO_UNREADABLE = "audio unreadable"
AUDIO_EMPTY = "audio has no samples"
NO_TRANSCRIPT = "audio without transcript"
NO_AUDIO = "transcript without audio"
NO_USABLE_CHARACTERS = "transcript with no usable characters"
UNKNOWN_CHARACTERS = "transcript with characters outside the tokenizer's alphabet"


def import_kaldi(wav_scp: str | os.PathLike, text: str | os.PathLike, out_manifest: str | os.PathLike,
                 utt2spk: str | os.PathLike | None = None, tokenizer: Tokenizer | None = None,
                 num_workers: int = 8) -> PrepReport:
    """Write the usable utterances of `wav_scp` + `text` to `out_manifest`, in wav.scp order, and report the rest.

    Transcripts are normalized (`asr.text.normalize_text`); with a `tokenizer`, those it cannot spell are skipped
    too. Durations come from the audio headers, read by `num_workers` threads. Relative audio paths resolve against
    the current directory, as Kaldi's tools do (recipes run from the folder above `data/`). Raises ManifestError for
    a malformed line or an id given twice in one file.
    """
    audio_paths = _read_table(wav_scp)
    transcripts = _read_table(text, allow_empty_value=True)
    speakers = _read_table(utt2spk) if utt2spk is not None else {}
    report = PrepReport()
    for utterance_id in sorted(transcripts.keys() - audio_paths.keys()):
        report.skip(NO_AUDIO, utterance_id)

    candidates = []  # (id, absolute audio path, normalized transcript)
    for utterance_id, audio in audio_paths.items():
        if audio.endswith("|"):
            report.skip(PIPED_COMMAND, utterance_id)
        elif utterance_id not in transcripts:
            report.skip(NO_TRANSCRIPT, utterance_id)
        elif not (normalized := normalize_text(transcripts[utterance_id])):
            report.skip(NO_USABLE_CHARACTERS, utterance_id)
        elif tokenizer is not None and tokenizer.unknown_characters(normalized):
            report.skip(UNKNOWN_CHARACTERS, utterance_id)
        else:
            candidates.append((utterance_id, os.path.abspath(audio), normalized))

    with ThreadPoolExecutor(max_workers=num_workers) as pool:
        probes = list(pool.map(_probe_duration, [audio for _, audio, _ in candidates]))
    utterances = []
    for (utterance_id, audio, normalized), (duration, problem) in zip(candidates, probes):
        if problem:
            report.skip(problem, utterance_id)
        else:
            utterances.append(Utterance(utterance_id, audio, duration, normalized, speakers.get(utterance_id)))
    write_manifest(out_manifest, utterances)
    report.written = len(utterances)
    return report


def _probe_duration(audio: str) -> tuple[float, str | None]:
    """The duration in the audio's header, or 0 and the skip reason when the audio cannot be used."""
    if not os.path.exists(audio):
        return 0.0, AUDIO_MISSING
    try:
        info = audio_info(audio)
    except AudioError as error:
        log.warning("skipping %s", error)  # the report keeps only the id; the problem is worth a line here
        return 0.0, AUDIO_UNREADABLE
    if info.frames == 0:
        return 0.0, AUDIO_EMPTY
    return info.duration, None


def _read_table(path: str | os.PathLike, allow_empty_value: bool = False) -> dict[str, str]:
    """A Kaldi table: `<key> <value>` lines, the value being the rest of the line after the first whitespace."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").split("\n")  # not splitlines(): U+2028 may sit in a transcript
    except OSError as error:
        raise ManifestError(path, None, f"cannot read: {error.strerror}") from error
    except UnicodeDecodeError as error:
        raise ManifestError(path, None, f"not UTF-8 text ({error.reason} at byte {error.start})") from error
    table: dict[str, str] = {}
    line_of_key: dict[str, int] = {}
    for line_no, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        fields = line.split(maxsplit=1)
        key, value = fields[0], fields[1].strip() if len(fields) == 2 else ""
        if not value and not allow_empty_value:
            raise ManifestError(path, line_no, f"expected '<utterance-id> <value>', got {line.strip()!r}")
        if key in line_of_key:
            raise ManifestError(path, line_no, f"duplicate id {key!r} (first on line {line_of_key[key]})")
        line_of_key[key] = line_no
        table[key] = value
    return table
