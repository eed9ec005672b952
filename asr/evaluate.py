"""Evaluating a model on manifests: transcribe every utterance, score the words against the references, report.

References and hypotheses go through the same normalization, `asr.text.normalize_text`, the one training applies to
its transcripts, so that a WER measures recognition and not spelling conventions. An utterance whose audio cannot be
read is never dropped: it is reported (a warning on stderr and, with `out_dir`, its set's `unreadable.tsv`) and
scored as all deletions, as if nothing had been recognized.

With `out_dir`, each set gets `out_dir/<manifest stem>/{hyp.txt, ref.txt, wer.json, per_utt.tsv}` (see
`asr.scoring.write_report`), and all sets together `results.md` and `results.json`.

A model trained with `features.normalization: speaker` is normalized here as in training: each utterance by the
statistics of all its speaker's utterances in the manifest; one that names no speaker is normalized as
`asr transcribe` normalizes a file (`asr.normalization.training_set_at_own_level`).
"""
from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

from asr.data.manifest import SkipLog, Utterance, read_manifest
from asr.errors import AsrError
from asr.files import output_names
from asr.scoring import SetScore, format_markdown, results_json, score, write_report
from asr.text import normalize_text
from asr.transcribe import transcribe_files

log = logging.getLogger(__name__)


def evaluate(recognizer, manifest_paths: Iterable[str | Path], decoder=None, out_dir: str | Path | None = None,
             batch_size: int = 16, max_batch_seconds: float = 240.0, chunk_seconds: float = 60.0,
             progress: bool = False) -> list[SetScore]:
    """Score the recognizer on each manifest; returns one SetScore a manifest, in the order given.

    `decoder` defaults to greedy decoding; batching as in `asr.transcribe.transcribe_files`, utterances longer than
    `chunk_seconds` (longer than any of LibriSpeech's by default) decoded in overlapping windows. Raises AsrError
    before transcribing anything when two manifests would write their reports into the same folder.
    """
    manifest_paths = [Path(path) for path in manifest_paths]
    if out_dir is not None:
        output_names(manifest_paths, written_as="{}/")  # each manifest's reports go into a folder of its name
    results: dict[str, SetScore] = {}
    for manifest in manifest_paths:
        utterances = read_manifest(manifest)
        result, unreadable = score_utterances(recognizer, utterances, decoder, name=str(manifest),
                                              batch_size=batch_size, max_batch_seconds=max_batch_seconds,
                                              chunk_seconds=chunk_seconds, progress=progress,
                                              speaker_cmvn=_speaker_cmvn(recognizer, utterances, progress))
        results[str(manifest)] = result
        if out_dir is not None:
            _write_set_report(Path(out_dir) / manifest.stem, str(manifest), result, unreadable)
    if out_dir is not None:
        (Path(out_dir) / "results.md").write_text(format_markdown(results) + "\n", encoding="utf-8")
        (Path(out_dir) / "results.json").write_text(results_json(results) + "\n", encoding="utf-8")
    return list(results.values())


def score_utterances(recognizer, utterances: Sequence[Utterance], decoder=None, name: str = "",
                     batch_size: int = 16, max_batch_seconds: float = 240.0, chunk_seconds: float = 60.0,
                     progress: bool = False, speaker_cmvn: Sequence | None = None) -> tuple[SetScore, SkipLog]:
    """Transcribe utterances and score them against their transcripts: how `evaluate` scores each manifest, and the
    trainer its dev set. Returns the score and the utterances whose audio could not be read (scored as all
    deletions, each named in a warning under `name`). `speaker_cmvn`: one (2, n_mels) array an utterance, for a model
    normalized by speaker."""
    hyps: dict[str, str] = {}
    unreadable = SkipLog()
    transcripts = transcribe_files(recognizer, [utterance.audio for utterance in utterances], decoder,
                                   batch_size=batch_size, max_batch_seconds=max_batch_seconds,
                                   chunk_seconds=chunk_seconds, progress=progress, speaker_cmvn=speaker_cmvn)
    for utterance, (_, transcript) in zip(utterances, transcripts):  # transcribe_files keeps the order
        if isinstance(transcript, AsrError):
            unreadable.add(utterance.id, str(transcript))
            log.warning("%s: utterance %s is scored as all deletions: %s", name, utterance.id, transcript)
        else:
            hyps[utterance.id] = transcript.text
    return score({utterance.id: utterance.text for utterance in utterances}, hyps, normalize=normalize_text), \
        unreadable


def _speaker_cmvn(recognizer, utterances, progress: bool):
    """For a model normalized by speaker, the (2, n_mels) statistics of each utterance's speaker over the manifest
    (the training set's, which the model holds, for an utterance of no known speaker among others that have one);
    None for any other model, and for a manifest that names no speaker, normalized as `asr transcribe` does."""
    if recognizer.normalization != "speaker" or all(utterance.speaker is None for utterance in utterances):
        return None
    statistics = recognizer.speaker_cmvn(utterances, progress=progress)
    return [statistics.rows(utterance.speaker).numpy() for utterance in utterances]


def _write_set_report(folder: Path, name: str, result: SetScore, unreadable: SkipLog) -> None:
    write_report(folder, name, result)
    if unreadable.entries:
        unreadable.write(folder / "unreadable.tsv", header=("id", "error"))
