"""Scoring: hand-counted errors, jiwer computed here independently, Kaldi text files, and the report formats."""
import json
import logging

import jiwer
import pytest

from asr.errors import AsrError, ManifestError
from asr.scoring import format_markdown, format_text, read_kaldi_text, results_json, score, write_report

REFS = {"u1": "the cat sat on the mat", "u2": "hello world", "u3": "a b c", "u4": ""}
HYPS = {"u1": "THE CAT SAD ON MAT", "u2": "hello  big world ", "u4": "uh", "x9": "stray"}  # u3 missing, x9 extra


@pytest.fixture
def result():
    return score(REFS, HYPS)


def test_hand_counted_errors(result):
    # u1: SAT→SAD, second THE deleted; u2: BIG inserted; u3: no hypothesis, 3 deletions; u4: empty ref, UH inserted.
    assert (result.substitutions, result.deletions, result.insertions) == (1, 4, 2)
    assert (result.words, result.utterances) == (11, 4)
    assert result.wer == pytest.approx(7 / 11)
    rows = {row.id: (row.substitutions, row.deletions, row.insertions, row.words) for row in result.utterance_scores}
    assert rows == {"u1": (1, 1, 0, 6), "u2": (0, 0, 1, 2), "u3": (0, 3, 0, 3), "u4": (0, 0, 1, 0)}
    assert result.substituted == {("SAT", "SAD"): 1}
    assert result.deleted == {"THE": 1, "A": 1, "B": 1, "C": 1}
    assert result.inserted == {"BIG": 1, "UH": 1}


def test_rates_match_jiwer_on_the_same_normalized_texts(result):
    refs = ["THE CAT SAT ON THE MAT", "HELLO WORLD", "A B C", ""]
    hyps = ["THE CAT SAD ON MAT", "HELLO BIG WORLD", "", "UH"]
    assert result.wer == pytest.approx(jiwer.wer(refs, hyps))
    assert result.cer == pytest.approx(jiwer.cer(refs, hyps))


def test_missing_and_extra_are_reported(caplog):
    with caplog.at_level(logging.WARNING, logger="asr.scoring"):
        result = score(REFS, HYPS)
    assert result.missing == ["u3"]
    assert result.extra == ["x9"]
    assert "no hypothesis" in caplog.text and "u3" in caplog.text
    assert "no reference" in caplog.text and "x9" in caplog.text


def test_the_same_normalization_applies_to_both_sides():
    assert score({"a": "Hello, World"}, {"a": "hello world"}).wer == pytest.approx(0.5)  # "HELLO," ≠ "HELLO"
    no_commas = score({"a": "Hello, World"}, {"a": "hello world"}, normalize=lambda s: s.upper().replace(",", ""))
    assert no_commas.wer == 0.0


def test_empty_references_and_hypotheses_are_perfect():
    result = score({"a": "", "b": "  "}, {"a": "", "b": ""})
    assert (result.wer, result.cer, result.words, result.errors) == (0.0, 0.0, 0, 0)


def test_nothing_to_score_is_an_error():
    with pytest.raises(AsrError, match="no reference"):
        score({}, {"a": "x"})


# ---------------------------------------------------------------------------------------------------------------
# Kaldi text files


def test_read_kaldi_text(tmp_path):
    path = tmp_path / "text"
    path.write_text("u1 HELLO WORLD\n\nu2\nu3   SPACED  WORDS  \r\n")
    assert read_kaldi_text(path) == {"u1": "HELLO WORLD", "u2": "", "u3": "SPACED  WORDS"}


@pytest.mark.parametrize("content, problem", [
    ("u1 A\nu2 B\nu1 C\n", r"text:3: utterance id 'u1' repeats \(first on line 1\)"),
    ("u1 A\n u2 B\n", r"text:2: the line must begin with an utterance id"),
    ("u1 A\nu2 \xff\n".encode("latin-1"), r"text:2: not UTF-8"),
])
def test_bad_kaldi_text_names_the_line(tmp_path, content, problem):
    path = tmp_path / "text"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ManifestError, match=problem):
        read_kaldi_text(path)


def test_missing_kaldi_text(tmp_path):
    with pytest.raises(ManifestError, match="not found"):
        read_kaldi_text(tmp_path / "absent")


def test_real_transcripts_read_and_score_perfectly_against_themselves(data_dir):
    sets = sorted(path for path in (data_dir / "sentences").glob("*/text"))
    refs = {}
    for path in sets:
        refs.update(read_kaldi_text(path))
    assert len(refs) == 125
    result = score(refs, dict(refs))
    assert (result.wer, result.utterances) == (0.0, 125)
    assert result.words == sum(len(text.split()) for text in refs.values())


# ---------------------------------------------------------------------------------------------------------------
# Reports


def test_results_json_layout(result):
    entry = json.loads(results_json({"data/test.jsonl": result, "data/dev.jsonl": result}))["results"][0]
    assert list(entry)[:8] == ["manifest", "wer", "cer", "words", "utterances", "substitutions", "deletions",
                               "insertions"]
    assert entry["manifest"] == "data/test.jsonl"
    assert entry["wer"] == pytest.approx(7 / 11, abs=1e-4)
    assert (entry["words"], entry["utterances"], entry["substitutions"], entry["deletions"], entry["insertions"]) == (
        11, 4, 1, 4, 2)


def test_markdown_has_one_row_a_set(result):
    table = format_markdown({"test": result, "dev": score({"a": "x y"}, {"a": "x y"})}).splitlines()
    assert len(table) == 4
    assert table[2].startswith("| test | 4 | 11 | 63.64 |")
    assert table[3].startswith("| dev | 1 | 2 | 0.00 | 0.00 |")


def test_text_report_shouts_about_missing_hypotheses(result):
    text = format_text({"test": result})
    assert "WER 63.64%" in text
    assert "MISSING: 1 utterances" in text and "u3" in text
    assert "SAT→SAD ×1" in text


def test_written_report_scores_the_same_when_read_back(tmp_path, result):
    write_report(tmp_path / "decode", "test.jsonl", result)
    refs = read_kaldi_text(tmp_path / "decode" / "ref.txt")
    hyps = read_kaldi_text(tmp_path / "decode" / "hyp.txt")
    assert "u3" not in hyps  # still missing, not an empty hypothesis
    again = score(refs, hyps)
    assert (again.wer, again.cer, again.missing) == (result.wer, result.cer, ["u3"])
    details = json.loads((tmp_path / "decode" / "wer.json").read_text())
    assert (details["manifest"], details["missing_ids"], details["top_substitutions"]) == (
        "test.jsonl", ["u3"], [["SAT", "SAD", 1]])
    rows = (tmp_path / "decode" / "per_utt.tsv").read_text().splitlines()
    assert rows[0].split("\t")[:3] == ["id", "words", "errors"]
    assert rows[1].split("\t") == ["u1", "6", "2", "1", "1", "0", "THE CAT SAT ON THE MAT", "THE CAT SAD ON MAT"]
