"""Word and character error rates of hypotheses against references (jiwer), and the reports that show them.

`score(refs, hyps)` takes two dictionaries, utterance id → text, and applies the same normalization to both sides
before jiwer aligns them. Rates are fractions over the whole set (errors summed over utterances, divided by the
reference words or characters, spaces counting as characters as jiwer counts them). An utterance with a reference but
no hypothesis is scored as if nothing had been recognized (all deletions) and reported loudly: a decoder that
silently drops utterances must not look better than one that tries. A hypothesis without a reference is reported and
not scored.

Reports: `format_text`, `results_json` and `format_markdown` show several sets, given as a mapping from each set's
manifest path to its SetScore; `write_report` writes one set's hyp.txt, ref.txt, wer.json and per_utt.tsv.
"""
from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import jiwer

from asr.errors import AsrError, ManifestError

log = logging.getLogger(__name__)

TOP_CONFUSIONS = 10  # how many substitutions, deletions and insertions the reports list


def fold_case_and_space(text: str) -> str:
    """The default normalization: upper case, runs of whitespace made one space, none at the ends."""
    return " ".join(text.upper().split())


@dataclass
class UtteranceScore:
    """One utterance's normalized reference and hypothesis, and its word errors."""

    id: str
    ref: str
    hyp: str
    substitutions: int
    deletions: int
    insertions: int
    words: int  # in the reference

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions


@dataclass
class SetScore:
    """The scores of a set of utterances: rates as fractions, error counts, and where the errors are."""

    wer: float
    cer: float
    words: int  # reference words
    utterances: int  # references scored, missing hypotheses included
    substitutions: int
    deletions: int
    insertions: int
    missing: list[str] = field(default_factory=list)  # reference ids without a hypothesis: scored as deletions
    extra: list[str] = field(default_factory=list)  # hypothesis ids without a reference: not scored
    utterance_scores: list[UtteranceScore] = field(default_factory=list)  # in the references' order
    substituted: Counter = field(default_factory=Counter)  # (reference word, hypothesis word) → times
    deleted: Counter = field(default_factory=Counter)  # reference word → times it was missed
    inserted: Counter = field(default_factory=Counter)  # hypothesis word → times it was added

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions


def score(refs: Mapping[str, str], hyps: Mapping[str, str],
          normalize: Callable[[str], str] = fold_case_and_space) -> SetScore:
    """Score hypotheses against references, both id → text, after applying `normalize` to every text."""
    if not refs:
        raise AsrError("no reference utterances to score")
    ids = list(refs)
    missing = [utterance_id for utterance_id in ids if utterance_id not in hyps]
    extra = sorted(utterance_id for utterance_id in hyps if utterance_id not in refs)
    if missing:
        log.warning("%d of %d utterances have no hypothesis and are scored as all deletions: %s",
                    len(missing), len(ids), ", ".join(missing[:10]))
    if extra:
        log.warning("%d hypotheses have no reference and are not scored: %s", len(extra), ", ".join(extra[:10]))

    ref_texts = [normalize(refs[utterance_id]) for utterance_id in ids]
    hyp_texts = [normalize(hyps.get(utterance_id, "")) for utterance_id in ids]
    word_alignment = jiwer.process_words(ref_texts, hyp_texts)
    char_alignment = jiwer.process_characters(ref_texts, hyp_texts)

    result = SetScore(wer=word_alignment.wer, cer=char_alignment.cer,
                      words=word_alignment.hits + word_alignment.substitutions + word_alignment.deletions,
                      utterances=len(ids), substitutions=word_alignment.substitutions,
                      deletions=word_alignment.deletions, insertions=word_alignment.insertions,
                      missing=missing, extra=extra)
    for utterance_id, ref, hyp, chunks, ref_words, hyp_words in zip(
            ids, ref_texts, hyp_texts, word_alignment.alignments, word_alignment.references,
            word_alignment.hypotheses):
        counts = Counter()
        for chunk in chunks:
            ref_part = ref_words[chunk.ref_start_idx:chunk.ref_end_idx]
            hyp_part = hyp_words[chunk.hyp_start_idx:chunk.hyp_end_idx]
            if chunk.type == "substitute":
                result.substituted.update(zip(ref_part, hyp_part))
                counts["substitutions"] += len(ref_part)
            elif chunk.type == "delete":
                result.deleted.update(ref_part)
                counts["deletions"] += len(ref_part)
            elif chunk.type == "insert":
                result.inserted.update(hyp_part)
                counts["insertions"] += len(hyp_part)
        result.utterance_scores.append(UtteranceScore(utterance_id, ref, hyp, counts["substitutions"],
                                                      counts["deletions"], counts["insertions"], len(ref_words)))
    return result


def read_kaldi_text(path: str | Path) -> dict[str, str]:
    """Read a Kaldi `text` file (`<utterance id> <words...>` a line; the words may be none) into id → text.

    Blank lines are skipped. Raises ManifestError naming the line of a repeated id, a line that begins with
    whitespace instead of an id, or text that is not UTF-8.
    """
    texts: dict[str, str] = {}
    first_seen: dict[str, int] = {}
    try:
        with open(path, "rb") as file:
            for line_number, raw in enumerate(file, start=1):
                try:
                    line = raw.decode("utf-8").rstrip("\r\n")
                except UnicodeDecodeError as error:
                    raise ManifestError(path, line_number, f"not UTF-8 text: {error}") from error
                if not line.strip():
                    continue
                if line[0].isspace():
                    raise ManifestError(path, line_number, "the line must begin with an utterance id, not a space")
                fields = line.split(maxsplit=1)
                utterance_id, text = fields[0], fields[1] if len(fields) > 1 else ""
                if utterance_id in texts:
                    raise ManifestError(path, line_number, f"utterance id {utterance_id!r} repeats "
                                                           f"(first on line {first_seen[utterance_id]})")
                texts[utterance_id] = text.strip()
                first_seen[utterance_id] = line_number
    except FileNotFoundError as error:
        raise ManifestError(path, None, "file not found") from error
    return texts


def _result_entry(manifest: str, result: SetScore) -> dict:
    return {"manifest": str(manifest), "wer": round(result.wer, 4), "cer": round(result.cer, 4),
            "words": result.words, "utterances": result.utterances, "substitutions": result.substitutions,
            "deletions": result.deletions, "insertions": result.insertions,
            "missing": len(result.missing), "extra": len(result.extra)}


def results_json(results: Mapping[str, SetScore]) -> str:
    """`{"results": [{"manifest": PATH, "wer": …, "cer": …, "words": …, …}, …]}`, rates as fractions."""
    return json.dumps({"results": [_result_entry(manifest, result) for manifest, result in results.items()]},
                      indent=2)


def _listing(counts: Counter, show) -> str:
    return ", ".join(f"{show(item)} ×{times}" for item, times in counts.most_common(TOP_CONFUSIONS)) or "none"


def format_text(results: Mapping[str, SetScore]) -> str:
    """A few lines a set: rates, error counts, missing and extra utterances, and the most frequent confusions."""
    lines = []
    for manifest, result in results.items():
        lines.append(f"{manifest}: WER {100 * result.wer:.2f}% ({result.errors} errors / {result.words} words: "
                     f"{result.substitutions} sub, {result.deletions} del, {result.insertions} ins), "
                     f"CER {100 * result.cer:.2f}%, {result.utterances} utterances")
        if result.missing:
            lines.append(f"  MISSING: {len(result.missing)} utterances have no hypothesis and were scored as all "
                         f"deletions: {', '.join(result.missing[:10])}{' …' if len(result.missing) > 10 else ''}")
        if result.extra:
            lines.append(f"  extra: {len(result.extra)} hypotheses have no reference and were not scored: "
                         f"{', '.join(result.extra[:10])}{' …' if len(result.extra) > 10 else ''}")
        lines.append(f"  substitutions: {_listing(result.substituted, lambda pair: f'{pair[0]}→{pair[1]}')}")
        lines.append(f"  deletions: {_listing(result.deleted, str)}")
        lines.append(f"  insertions: {_listing(result.inserted, str)}")
    return "\n".join(lines)


def format_markdown(results: Mapping[str, SetScore]) -> str:
    """A Markdown table, one row a set: utterances, words, WER and CER in percent, S/D/I and missing hypotheses."""
    lines = ["| set | utterances | words | WER % | CER % | sub | del | ins | missing |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for manifest, result in results.items():
        lines.append(f"| {manifest} | {result.utterances} | {result.words} | {100 * result.wer:.2f} | "
                     f"{100 * result.cer:.2f} | {result.substitutions} | {result.deletions} | {result.insertions} | "
                     f"{len(result.missing)} |")
    return "\n".join(lines)


def write_report(folder: str | Path, name: str, result: SetScore) -> None:
    """Write one set's report into `folder`: ref.txt and hyp.txt (the normalized texts that were scored, Kaldi
    format, hyp.txt without the missing utterances), wer.json (results_json's entry for `name`, plus the missing and
    extra ids and the top confusions) and per_utt.tsv (one row an utterance)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    missing = set(result.missing)
    with open(folder / "ref.txt", "w", encoding="utf-8") as refs, \
            open(folder / "hyp.txt", "w", encoding="utf-8") as hyps:
        for utterance in result.utterance_scores:
            refs.write(f"{utterance.id} {utterance.ref}".rstrip() + "\n")
            if utterance.id not in missing:
                hyps.write(f"{utterance.id} {utterance.hyp}".rstrip() + "\n")
    details = _result_entry(name, result) | {
        "missing_ids": result.missing, "extra_ids": result.extra,
        "top_substitutions": [[ref, hyp, times]
                              for (ref, hyp), times in result.substituted.most_common(TOP_CONFUSIONS)],
        "top_deletions": [[word, times] for word, times in result.deleted.most_common(TOP_CONFUSIONS)],
        "top_insertions": [[word, times] for word, times in result.inserted.most_common(TOP_CONFUSIONS)]}
    (folder / "wer.json").write_text(json.dumps(details, indent=2) + "\n", encoding="utf-8")
    with open(folder / "per_utt.tsv", "w", encoding="utf-8") as table:
        table.write("id\twords\terrors\tsubstitutions\tdeletions\tinsertions\tref\thyp\n")
        for utterance in result.utterance_scores:
            table.write(f"{utterance.id}\t{utterance.words}\t{utterance.errors}\t{utterance.substitutions}\t"
                        f"{utterance.deletions}\t{utterance.insertions}\t{utterance.ref}\t{utterance.hyp}\n")
