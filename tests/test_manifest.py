"""Manifests: strict reading with errors that name the line, portable relative paths, atomic writes."""
import json
import os

import pytest

from asr.data.manifest import PrepReport, Utterance, read_manifest, write_manifest
from asr.errors import ManifestError


def write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def record(utt_id="a", audio="a.wav", duration=1.5, text="HELLO", **extra):
    return json.dumps({"id": utt_id, "audio": audio, "duration": duration, "text": text, **extra})


def test_read_resolves_relative_paths_against_the_manifest_folder(tmp_path):
    (tmp_path / "sets").mkdir()
    manifest = write_lines(tmp_path / "sets" / "train.jsonl", [
        record("a", "wav/a.wav", 2, "HELLO", speaker="s1"),
        "",
        "   ",
        record("b", "../other/b.flac", 0.25, "WORLD"),
        record("c", "/data/c.wav", 3.5, "ÉLAN 漢字 😀"),
    ])
    utterances = read_manifest(manifest)
    assert utterances == [
        Utterance("a", str(tmp_path / "sets" / "wav" / "a.wav"), 2.0, "HELLO", "s1"),
        Utterance("b", str(tmp_path / "other" / "b.flac"), 0.25, "WORLD"),
        Utterance("c", "/data/c.wav", 3.5, "ÉLAN 漢字 😀"),
    ]
    assert isinstance(utterances[0].duration, float)


@pytest.mark.parametrize("line, problem", [
    ('{"id": "b", "audio": "b.wav", "duration": 1.0, "text": "X"', "bad JSON"),
    ('["b", "b.wav", 1.0, "X"]', "expected a JSON object, got list"),
    ('{"id": "b", "audio": "b.wav", "text": "X"}', "missing field 'duration'"),
    ('{"id": "b", "duration": 1.0, "text": "X"}', "missing field 'audio'"),
    (record("b", duration="1.0"), "field 'duration' must be int or float, got \"1.0\""),
    (record("b", duration=True), "field 'duration' must be int or float, got true"),
    (record("b", text=None), "field 'text' must be str, got null"),
    (record(7), "field 'id' must be str, got 7"),
    (record("b", speaker=12), "field 'speaker' must be str or null, got 12"),
    (record("b", duration=0), "duration must be a positive number of seconds, got 0"),
    (record("b", duration=-2.5), "duration must be a positive number of seconds, got -2.5"),
    ('{"id": "b", "audio": "b.wav", "duration": NaN, "text": "X"}', "positive number of seconds, got nan"),
    (record(""), "empty id"),
    (record("b", audio=""), "empty audio path"),
    (record("a"), "duplicate id 'a' (first on line 1)"),
])
def test_bad_lines_raise_errors_naming_file_and_line(tmp_path, line, problem):
    manifest = write_lines(tmp_path / "m.jsonl", [record("a"), "", line])
    with pytest.raises(ManifestError) as raised:
        read_manifest(manifest)
    assert raised.value.line == 3
    assert raised.value.path == str(manifest)
    assert problem in raised.value.problem
    assert str(raised.value).startswith(f"{manifest}:3: ")


def test_undecodable_and_missing_manifests(tmp_path):
    manifest = tmp_path / "m.jsonl"
    latin1_line = '{"id": "b", "audio": "b.wav", "duration": 1.0, "text": "caf\xe9"}'.encode("latin-1")
    manifest.write_bytes(record("a").encode() + b"\n" + latin1_line + b"\n")
    with pytest.raises(ManifestError, match=r"m.jsonl:2: not UTF-8 text"):
        read_manifest(manifest)
    with pytest.raises(ManifestError, match=r"absent.jsonl: cannot read the manifest"):
        read_manifest(tmp_path / "absent.jsonl")


def test_write_then_read_round_trips_and_moves_with_the_corpus(tmp_path):
    corpus = tmp_path / "corpus"
    utterances = [
        Utterance("a", str(corpus / "wav" / "a.wav"), 1.25, "HELLO WORLD", "spk1"),
        Utterance("b", str(corpus / "manifests" / "local" / "b.wav"), 2.0, "ÉLAN 漢字 😀"),
        Utterance("c", "/elsewhere/c.wav", 3.0, "OUTSIDE"),
    ]
    write_manifest(corpus / "manifests" / "train.jsonl", utterances, relative_to=corpus)
    written = [json.loads(line) for line in (corpus / "manifests" / "train.jsonl").read_text("utf-8").splitlines()]
    assert [r["audio"] for r in written] == ["../wav/a.wav", "local/b.wav", "/elsewhere/c.wav"]
    assert written[0] == {"id": "a", "audio": "../wav/a.wav", "duration": 1.25, "text": "HELLO WORLD",
                          "speaker": "spk1"}
    assert "speaker" not in written[1]
    assert "ÉLAN 漢字 😀" in (corpus / "manifests" / "train.jsonl").read_text("utf-8")  # UTF-8, not \\u escapes
    assert read_manifest(corpus / "manifests" / "train.jsonl") == utterances

    moved = tmp_path / "moved"
    corpus.rename(moved)
    assert [u.audio for u in read_manifest(moved / "manifests" / "train.jsonl")] == [
        str(moved / "wav" / "a.wav"), str(moved / "manifests" / "local" / "b.wav"), "/elsewhere/c.wav"]


def test_by_default_only_audio_inside_the_manifest_folder_is_relative(tmp_path):
    utterances = [Utterance("in", str(tmp_path / "sets" / "in.wav"), 1.0, "A"),
                  Utterance("out", str(tmp_path / "wav" / "out.wav"), 1.0, "B")]
    write_manifest(tmp_path / "sets" / "m.jsonl", utterances)
    audio = [json.loads(line)["audio"] for line in (tmp_path / "sets" / "m.jsonl").read_text().splitlines()]
    assert audio == ["in.wav", str(tmp_path / "wav" / "out.wav")]


def test_write_is_atomic(tmp_path, monkeypatch):
    manifest = tmp_path / "m.jsonl"
    write_manifest(manifest, [Utterance("old", "/a.wav", 1.0, "OLD")])
    before = manifest.read_bytes()

    def failing_fsync(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="No space left"):
        write_manifest(manifest, [Utterance("new", "/b.wav", 2.0, "NEW")])
    assert manifest.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.jsonl"]  # no temporary file left behind

    monkeypatch.undo()
    write_manifest(manifest, [Utterance("new", "/b.wav", 2.0, "NEW")])
    assert [u.id for u in read_manifest(manifest)] == ["new"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.jsonl"]


def test_prep_report_counts_and_lists_skips():
    report = PrepReport()
    report.written = 10
    for utt_id in ["u1", "u2", "u3", "u4", "u5", "u6", "u7"]:
        report.skip("audio missing", utt_id)
    report.skip("audio unreadable", "u9")
    assert report.num_skipped == 8
    assert report.skipped == {"audio missing": ["u1", "u2", "u3", "u4", "u5", "u6", "u7"], "audio unreadable": ["u9"]}
    assert report.summary() == ("wrote 10 utterances, skipped 8\n"
                                "  audio missing: 7 (u1, u2, u3, u4, u5, ...)\n"
                                "  audio unreadable: 1 (u9)")
