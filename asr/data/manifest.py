"""The manifest: a corpus as JSON Lines, one utterance a line, and the report of the preparation that wrote it.

    {"id": "1089-134686-0000", "audio": "LibriSpeech/test-clean/1089/134686/1089-134686-0000.flac",
     "duration": 10.435, "text": "HE HOPED THERE WOULD BE STEW FOR DINNER", "speaker": "1089"}

Relative audio paths resolve against the manifest's folder, so a corpus folder holding its manifests can be moved
or copied as a whole. Reading is strict: a bad line stops with a ManifestError naming the file and the line, since
a silently shortened training set is worse than no training at all.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from asr.errors import ManifestError
from asr.files import atomic_write


@dataclass
class Utterance:
    """One recording and its transcript; `audio` is an absolute path once read from a manifest."""

    id: str
    audio: str
    duration: float  # seconds
    text: str
    speaker: str | None = None


# Field name → the JSON types it may hold (bool is excluded from numbers below: JSON true is not a duration).
_REQUIRED_FIELDS = {"id": (str,), "audio": (str,), "duration": (int, float), "text": (str,)}


def read_manifest(path: str | os.PathLike) -> list[Utterance]:
    """The utterances of a JSON Lines manifest, in file order; blank lines are ignored, unknown fields too.

    Raises ManifestError(path, line, problem) for a line that is not a JSON object, a missing or mistyped field,
    a duration that is not a positive number, or an id seen before (the message names both lines).
    """
    path = Path(path)
    folder = path.absolute().parent
    try:
        raw_lines = path.read_bytes().splitlines()
    except OSError as error:
        raise ManifestError(path, None, f"cannot read the manifest: {error.strerror}") from error
    utterances = []
    line_of_id: dict[str, int] = {}
    for line_no, raw in enumerate(raw_lines, start=1):
        if not raw.strip():
            continue
        utterance = _parse_line(path, line_no, raw)
        first_line = line_of_id.get(utterance.id)
        if first_line is not None:
            raise ManifestError(path, line_no, f"duplicate id {utterance.id!r} (first on line {first_line})")
        line_of_id[utterance.id] = line_no
        utterance.audio = os.path.normpath(folder / utterance.audio)  # an absolute path stays itself
        utterances.append(utterance)
    return utterances


def _parse_line(path: Path, line_no: int, raw: bytes) -> Utterance:
    try:
        record = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as error:
        raise ManifestError(path, line_no, f"not UTF-8 text ({error.reason})") from error
    except json.JSONDecodeError as error:
        raise ManifestError(path, line_no, f"bad JSON: {error.msg} at column {error.colno}") from error
    if not isinstance(record, dict):
        raise ManifestError(path, line_no, f"expected a JSON object, got {type(record).__name__}")
    for name, types in _REQUIRED_FIELDS.items():
        if name not in record:
            raise ManifestError(path, line_no, f"missing field {name!r}")
        value = record[name]
        if not isinstance(value, types) or isinstance(value, bool):
            raise ManifestError(path, line_no, f"field {name!r} must be {' or '.join(t.__name__ for t in types)}, "
                                               f"got {json.dumps(value)}")
    speaker = record.get("speaker")
    if speaker is not None and not isinstance(speaker, str):
        raise ManifestError(path, line_no, f"field 'speaker' must be str or null, got {json.dumps(speaker)}")
    if not record["id"]:
        raise ManifestError(path, line_no, "empty id")
    if not record["audio"]:
        raise ManifestError(path, line_no, "empty audio path")
    duration = float(record["duration"])
    if not (math.isfinite(duration) and duration > 0):
        raise ManifestError(path, line_no, f"duration must be a positive number of seconds, got {record['duration']}")
    return Utterance(record["id"], record["audio"], duration, record["text"], speaker)


def write_manifest(path: str | os.PathLike, utterances: list[Utterance],
                   relative_to: str | os.PathLike | None = None) -> None:
    """Write `utterances` as a JSON Lines manifest, atomically (a reader never sees half a file).

    Audio inside the `relative_to` folder (default: the manifest's own folder) is written relative to the
    manifest's folder ("../wav/a.flac" when the manifest sits in a sibling folder), so the corpus folder moves as a
    whole; audio elsewhere is written as an absolute path. The parent folder is created when missing.
    """
    path = Path(path).absolute()
    folder = path.parent
    portable_root = Path(relative_to).absolute() if relative_to is not None else folder
    lines = []
    for utterance in utterances:
        audio = Path(os.path.normpath(Path(utterance.audio).absolute()))
        if audio.is_relative_to(portable_root):
            audio = Path(os.path.relpath(audio, folder))
        record = {"id": utterance.id, "audio": audio.as_posix(), "duration": utterance.duration, "text": utterance.text}
        if utterance.speaker is not None:
            record["speaker"] = utterance.speaker
        lines.append(json.dumps(record, ensure_ascii=False) + "\n")
    with atomic_write(path) as out:
        out.writelines(lines)


@dataclass
class PrepReport:
    """What a corpus preparation wrote, and every utterance it left out, grouped by the reason."""

    written: int = 0
    skipped: dict[str, list[str]] = field(default_factory=dict)  # reason → utterance ids

    def skip(self, reason: str, utterance_id: str) -> None:
        self.skipped.setdefault(reason, []).append(utterance_id)

    @property
    def num_skipped(self) -> int:
        return sum(len(ids) for ids in self.skipped.values())

    def summary(self, max_ids: int = 5) -> str:
        """One line for what was written, one a skip reason with its count and the first `max_ids` ids."""
        lines = [f"wrote {self.written} utterances, skipped {self.num_skipped}"]
        for reason, ids in sorted(self.skipped.items()):
            shown = ", ".join(ids[:max_ids]) + (", ..." if len(ids) > max_ids else "")
            lines.append(f"  {reason}: {len(ids)} ({shown})")
        return "\n".join(lines)


@dataclass
class SkipLog:
    """Utterances left out, each with its reason: the trainer's (`skipped.tsv`: not trained on) and an evaluation's
    (`unreadable.tsv`: scored as all deletions). Never silent.

    An utterance met again (an unreadable file, every epoch and after a resume) is listed once, with its first reason.
    """
    entries: dict[str, str] = field(default_factory=dict)  # utterance id → reason

    def add(self, utterance_id: str, reason: str) -> None:
        self.entries.setdefault(utterance_id, reason)

    def summary(self) -> str:
        """The counts by reason (the part of each before a colon), e.g. "2 unreadable audio, 1 ..."."""
        counts: dict[str, int] = {}
        for reason in self.entries.values():
            key = reason.split(":")[0]
            counts[key] = counts.get(key, 0) + 1
        return ", ".join(f"{n} {reason}" for reason, n in sorted(counts.items())) or "none"

    def write(self, path: str | Path, header: tuple[str, str] | None = None) -> None:
        """One tab-separated line an utterance, id and reason, under an optional header line."""
        with open(path, "w", encoding="utf-8") as table:
            if header:
                table.write("\t".join(header) + "\n")
            table.writelines(f"{utterance_id}\t{reason}\n" for utterance_id, reason in self.entries.items())
