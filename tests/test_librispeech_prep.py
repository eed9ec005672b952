"""LibriSpeech download (from a local server) and preparation, on real test-clean FLACs copied into tmp_path."""
import gzip
import hashlib
import io
import json
import shutil
import tarfile

import pytest
import soundfile
from download_server import serve

from asr.data.librispeech import (
    AUDIO_WITHOUT_TRANSCRIPT,
    DUPLICATE_ID,
    EMPTY_TRANSCRIPT,
    MISSING_TRANSCRIPT_FILE,
    SUBSETS,
    TRANSCRIPT_WITHOUT_AUDIO,
    UNREADABLE_AUDIO,
    download_librispeech,
    download_librispeech_lm,
    find_librispeech_root,
    prepare_librispeech,
)
from asr.errors import AsrError

# The real utterances under original-formats/LibriSpeech/test-clean, as their .trans.txt files give them.
REAL_TRANSCRIPTS = {
    "1089-134686-0000": "HE HOPED THERE WOULD BE STEW FOR DINNER TURNIPS AND CARROTS AND BRUISED POTATOES AND FAT "
                        "MUTTON PIECES TO BE LADLED OUT IN THICK PEPPERED FLOUR FATTENED SAUCE",
    "1089-134686-0001": "STUFF IT INTO YOU HIS BELLY COUNSELLED HIM",
    "1089-134691-0000": "HE COULD WAIT NO LONGER",
    "1089-134691-0001": "FOR A FULL HOUR HE HAD PACED UP AND DOWN WAITING BUT HE COULD WAIT NO LONGER",
}


@pytest.fixture
def corpus(tmp_path, original_formats):
    """A copy of the real LibriSpeech test-clean files: tmp_path/src/LibriSpeech/test-clean/1089/<chapter>/…"""
    root = tmp_path / "src"
    shutil.copytree(original_formats / "LibriSpeech", root / "LibriSpeech")
    return root


def _read_jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _tar_gz(folder, arcname) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(folder, arcname=arcname)
    return buffer.getvalue()


def test_published_checksums_are_torchaudios():
    from torchaudio.datasets.librispeech import _CHECKSUMS

    prefix = "http://www.openslr.org/resources/12/"
    torchaudio_checksums = {url.removeprefix(prefix): sha for url, sha in _CHECKSUMS.items()}
    assert {f"{subset}.tar.gz": sha for subset, sha in SUBSETS.items()} == torchaudio_checksums


def test_download_then_prepare_gives_the_manifest_of_the_real_files(tmp_path, corpus):
    archive = _tar_gz(corpus / "LibriSpeech", "LibriSpeech")
    sha256 = hashlib.sha256(archive).hexdigest()
    dest = tmp_path / "downloads"
    with serve({"/12/test-clean.tar.gz": archive}) as server:
        root = download_librispeech(
            ["test-clean"], dest, base_url=server.url("/12"), checksums={"test-clean": sha256}, progress=False
        )
        assert root == dest / "LibriSpeech"
        download_librispeech(
            ["test-clean"], dest, base_url=server.url("/12"), checksums={"test-clean": sha256}, progress=False
        )
        assert len(server.requests) == 1  # the rerun found the subset extracted

    reports = prepare_librispeech(dest, ["test-clean"], tmp_path / "manifests", num_workers=2, progress=False)
    assert reports["test-clean"].written == 4 and reports["test-clean"].skipped == {}
    records = _read_jsonl(tmp_path / "manifests" / "test-clean.jsonl")
    assert [record["id"] for record in records] == sorted(REAL_TRANSCRIPTS)
    for record in records:
        speaker, chapter, _ = record["id"].split("-")
        audio = root / "test-clean" / speaker / chapter / f"{record['id']}.flac"
        info = soundfile.info(str(audio))
        assert record["audio"] == str(audio)
        assert record["text"] == REAL_TRANSCRIPTS[record["id"]]
        assert record["speaker"] == "1089"
        assert record["duration"] == pytest.approx(info.frames / info.samplerate, abs=1e-6)


def test_download_enforces_the_published_checksum(tmp_path, corpus):
    archive = _tar_gz(corpus / "LibriSpeech", "LibriSpeech")
    digests = f"expected {SUBSETS['test-clean']}, got {hashlib.sha256(archive).hexdigest()}"
    with serve({"/12/test-clean.tar.gz": archive}) as server:
        with pytest.raises(AsrError, match=digests):
            download_librispeech(["test-clean"], tmp_path, base_url=server.url("/12"), progress=False)
    assert not (tmp_path / "LibriSpeech").exists()


def test_unknown_subset_is_refused_before_downloading(tmp_path):
    with pytest.raises(AsrError, match="unknown LibriSpeech subset.*test-clear"):
        download_librispeech(["test-clear"], tmp_path, base_url="http://127.0.0.1:9", progress=False)


def _add_utterance(chapter_dir, utterance_id, source_flac, transcript=None):
    """Copy a real flac in as `utterance_id` and, when given, append its transcript line."""
    chapter_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(source_flac, chapter_dir / f"{utterance_id}.flac")
    if transcript is not None:
        _append_line(chapter_dir / f"{'-'.join(utterance_id.split('-')[:2])}.trans.txt", f"{utterance_id} {transcript}")


def _append_line(transcript_file, line):
    existing = transcript_file.read_text() if transcript_file.exists() else ""
    separator = "\n" if existing and not existing.endswith("\n") else ""  # the real files lack a final newline
    transcript_file.write_text(existing + separator + line + "\n")


def test_prepare_leaves_out_every_kind_of_bad_utterance(tmp_path, corpus):
    subset = corpus / "LibriSpeech" / "test-clean"
    flac = subset / "1089/134686/1089-134686-0001.flac"
    chapter_a, chapter_b = subset / "1089/134686", subset / "1089/134691"
    _add_utterance(subset / "1089/999999", "1089-999999-0000", flac)  # chapter without .trans.txt
    _add_utterance(subset / "1089/999999", "1089-999999-0001", flac)
    _append_line(chapter_a / "1089-134686.trans.txt", "1089-134686-0099 A LINE WITHOUT AUDIO")
    _add_utterance(chapter_a, "1089-134686-0002", flac)  # audio without a transcript line
    (chapter_b / "1089-134691-0002.flac").write_bytes(b"not a flac at all")
    _append_line(chapter_b / "1089-134691.trans.txt", "1089-134691-0002 UNREADABLE AUDIO")
    _add_utterance(chapter_b, "1089-134691-0003", flac, transcript="-- ?!")  # nothing left once normalized
    _add_utterance(chapter_b, "1089-134691-0004", flac, transcript="")
    _append_line(chapter_a / "1089-134686.trans.txt", "1089-134686-0000 A SECOND LINE FOR THE SAME ID")

    report = prepare_librispeech(corpus, ["test-clean"], tmp_path / "out", num_workers=3, progress=False)["test-clean"]
    assert report.skipped == {
        MISSING_TRANSCRIPT_FILE: ["1089-999999-0000", "1089-999999-0001"],
        TRANSCRIPT_WITHOUT_AUDIO: ["1089-134686-0099"],
        AUDIO_WITHOUT_TRANSCRIPT: ["1089-134686-0002"],
        DUPLICATE_ID: ["1089-134686-0000"],
        UNREADABLE_AUDIO: ["1089-134691-0002"],
        EMPTY_TRANSCRIPT: ["1089-134691-0003", "1089-134691-0004"],
    }
    records = _read_jsonl(tmp_path / "out" / "test-clean.jsonl")
    assert report.written == len(records) == 4
    assert {record["id"]: record["text"] for record in records} == REAL_TRANSCRIPTS  # the first line of an id wins


def test_prepare_normalizes_transcripts(tmp_path, corpus):
    chapter = corpus / "LibriSpeech/test-clean/1089/134691"
    (chapter / "1089-134691.trans.txt").write_text(
        "1089-134691-0000 he could  wait, no longer!\n"
        f"1089-134691-0001 {REAL_TRANSCRIPTS['1089-134691-0001']}\n"
    )
    prepare_librispeech(corpus, "test-clean", tmp_path / "out", progress=False)
    texts = {record["id"]: record["text"] for record in _read_jsonl(tmp_path / "out/test-clean.jsonl")}
    assert texts["1089-134691-0000"] == "HE COULD WAIT NO LONGER"


def test_missing_subset_is_an_error_naming_what_is_there(tmp_path, corpus):
    with pytest.raises(AsrError, match=r"no subset folder dev-clean; it holds test-clean"):
        prepare_librispeech(corpus, ["test-clean", "dev-clean"], tmp_path / "out", progress=False)
    assert not (tmp_path / "out" / "test-clean.jsonl").exists()


def test_find_librispeech_root_accepts_the_usual_places(tmp_path, corpus):
    librispeech = corpus / "LibriSpeech"
    assert find_librispeech_root(corpus) == librispeech
    assert find_librispeech_root(librispeech) == librispeech
    renamed = tmp_path / "my-corpus"
    librispeech.rename(renamed)
    assert find_librispeech_root(renamed) == renamed  # holds test-clean/

    with pytest.raises(AsrError, match="it is a subset folder: give its parent"):
        find_librispeech_root(renamed / "test-clean")
    with pytest.raises(AsrError, match="no LibriSpeech corpus here"):
        find_librispeech_root(tmp_path / "src")
    with pytest.raises(AsrError, match="no such folder"):
        find_librispeech_root(tmp_path / "absent")


ARPA = "\n\\data\\\nngram 1=3\n\n\\1-grams:\n-1.0\t<s>\n-1.0\t</s>\n-0.5\tHELLO\n\n\\end\\\n"


def test_download_lm_decompresses_the_arpa_and_prints_the_sha256(tmp_path, capsys):
    compressed = gzip.compress(ARPA.encode())
    files = {"/11/3-gram.pruned.1e-7.arpa.gz": compressed, "/11/librispeech-vocab.txt": b"HELLO\n"}
    names = ["3-gram.pruned.1e-7.arpa.gz", "librispeech-vocab.txt"]
    with serve(files) as server:
        paths = download_librispeech_lm(tmp_path, names, base_url=server.url("/11"), progress=False)
        assert paths == {names[0]: tmp_path / "3-gram.pruned.1e-7.arpa", names[1]: tmp_path / names[1]}
        assert paths[names[0]].read_text() == ARPA
        assert paths[names[1]].read_bytes() == b"HELLO\n"
        assert hashlib.sha256(compressed).hexdigest() in capsys.readouterr().out

        (tmp_path / names[0]).unlink()  # the .gz may go once decompressed
        download_librispeech_lm(tmp_path, names[:1], base_url=server.url("/11"), progress=False)
        assert len(server.requests) == 2


@pytest.mark.parametrize(
    "served, problem",
    [
        (b"<html>mirror maintenance</html>", "corrupt gzip"),
        (gzip.compress(ARPA.encode())[:-10], "corrupt gzip"),
        (gzip.compress(b"<html>mirror maintenance</html>"), "not an ARPA language model"),
    ],
)
def test_download_lm_rejects_what_is_not_a_gzipped_arpa(tmp_path, served, problem):
    with serve({"/11/4-gram.arpa.gz": served}) as server:
        with pytest.raises(AsrError, match=problem):
            download_librispeech_lm(tmp_path, ["4-gram.arpa.gz"], base_url=server.url("/11"), progress=False)
    assert list(tmp_path.iterdir()) == []  # deleted, so the next run downloads afresh


def test_download_lm_checks_given_checksums(tmp_path):
    with serve({"/11/librispeech-vocab.txt": b"HELLO\n"}) as server:
        with pytest.raises(AsrError, match="fails its sha256 checksum"):
            download_librispeech_lm(
                tmp_path, ["librispeech-vocab.txt"], base_url=server.url("/11"),
                checksums={"librispeech-vocab.txt": "0" * 64}, progress=False,
            )
