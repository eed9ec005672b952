"""Downloads against a local HTTP server (resume, servers without Range, checksums) and archive extraction that
refuses members escaping the destination."""
import hashlib
import io
import os
import tarfile
import zipfile

import pytest
from download_server import serve

import asr.download
from asr.download import download, file_digest, safe_extract, verify_checksum
from asr.errors import AsrError

# Random bytes, so that a wrongly joined resume cannot match the expected content by accident.
BODY = os.urandom(300_000)
BODY_SHA256 = hashlib.sha256(BODY).hexdigest()


@pytest.fixture(autouse=True)
def no_retry_pause(monkeypatch):
    monkeypatch.setattr(asr.download, "FIRST_RETRY_PAUSE_SECONDS", 0.0)


def test_download_resumes_from_the_part_file_after_an_interruption(tmp_path):
    dest = tmp_path / "corpus.tar.gz"
    with serve({"/corpus.tar.gz": BODY}, cut_next_response=True) as server:
        with pytest.raises(AsrError, match="resumes"):
            download(server.url("/corpus.tar.gz"), dest, sha256=BODY_SHA256, retries=0, progress=False)
        partial = tmp_path / "corpus.tar.gz.part"
        assert partial.read_bytes() == BODY[: len(BODY) // 2]
        assert not dest.exists()

        assert download(server.url("/corpus.tar.gz"), dest, sha256=BODY_SHA256, retries=0, progress=False) == dest
        assert server.requests[-1] == ("/corpus.tar.gz", f"bytes={len(BODY) // 2}-")
    assert dest.read_bytes() == BODY
    assert not partial.exists()


def test_download_retries_within_one_call(tmp_path):
    dest = tmp_path / "file.bin"
    with serve({"/file.bin": BODY}, cut_next_response=True) as server:
        download(server.url("/file.bin"), dest, sha256=BODY_SHA256, retries=1, progress=False)
    assert [range_header for _, range_header in server.requests] == [None, f"bytes={len(BODY) // 2}-"]
    assert dest.read_bytes() == BODY


def test_server_ignoring_range_restarts_the_file_cleanly(tmp_path):
    dest = tmp_path / "file.bin"
    with serve({"/file.bin": BODY}, cut_next_response=True, honour_range=False) as server:
        with pytest.raises(AsrError):
            download(server.url("/file.bin"), dest, retries=0, progress=False)
        download(server.url("/file.bin"), dest, sha256=BODY_SHA256, retries=0, progress=False)
    assert server.requests[-1][1] == f"bytes={len(BODY) // 2}-"  # asked to resume, was sent the whole file
    assert dest.read_bytes() == BODY


def test_part_file_already_whole_completes_without_transfer(tmp_path):
    # A run stopped between the last byte and the rename: the server answers 416 to a Range past its end.
    dest = tmp_path / "file.bin"
    (tmp_path / "file.bin.part").write_bytes(BODY)
    with serve({"/file.bin": BODY}) as server:
        download(server.url("/file.bin"), dest, sha256=BODY_SHA256, progress=False)
    assert dest.read_bytes() == BODY


def test_corrupt_download_fails_its_checksum_and_is_deleted(tmp_path):
    corrupted = bytearray(BODY)
    corrupted[1000] ^= 0xFF
    actual_sha256 = hashlib.sha256(corrupted).hexdigest()
    dest = tmp_path / "file.bin"
    with serve({"/file.bin": bytes(corrupted)}) as server:
        with pytest.raises(AsrError) as raised:
            download(server.url("/file.bin"), dest, sha256=BODY_SHA256, progress=False)
    message = str(raised.value)
    for part in (server.url("/file.bin"), str(dest), BODY_SHA256, actual_sha256):
        assert part in message
    assert not dest.exists() and not (tmp_path / "file.bin.part").exists()


def test_md5_is_checked_too(tmp_path):
    dest = tmp_path / "file.bin"
    with serve({"/file.bin": BODY}) as server:
        with pytest.raises(AsrError, match="md5"):
            download(server.url("/file.bin"), dest, sha256=BODY_SHA256, md5="0" * 32, progress=False)
        download(server.url("/file.bin"), dest, md5=hashlib.md5(BODY).hexdigest(), progress=False)
    assert dest.read_bytes() == BODY


def test_verified_file_is_not_downloaded_again_and_a_wrong_one_is(tmp_path):
    dest = tmp_path / "file.bin"
    with serve({"/file.bin": BODY}) as server:
        download(server.url("/file.bin"), dest, sha256=BODY_SHA256, progress=False)
        download(server.url("/file.bin"), dest, sha256=BODY_SHA256, progress=False)
        assert len(server.requests) == 1

        dest.write_bytes(b"stale copy")
        download(server.url("/file.bin"), dest, sha256=BODY_SHA256, progress=False)
        assert len(server.requests) == 2
    assert dest.read_bytes() == BODY


def test_missing_file_fails_at_once(tmp_path):
    with serve({}) as server:
        with pytest.raises(AsrError, match="HTTP 404"):
            download(server.url("/nothing.tar.gz"), tmp_path / "nothing.tar.gz", retries=3, progress=False)
    assert len(server.requests) == 1


def test_verify_checksum_and_file_digest_match_hashlib(tmp_path):
    path = tmp_path / "file.bin"
    path.write_bytes(BODY)
    assert file_digest(path) == BODY_SHA256
    assert file_digest(path, "md5") == hashlib.md5(BODY).hexdigest()
    verify_checksum(path, sha256=BODY_SHA256.upper(), md5=hashlib.md5(BODY).hexdigest())
    with pytest.raises(AsrError, match=f"{path}: fails its sha256 checksum: expected {'a' * 64}, got {BODY_SHA256}"):
        verify_checksum(path, sha256="a" * 64)


def _tar_with(path, add_members) -> None:
    with tarfile.open(path, "w:gz") as tar:
        add_members(tar)


def _add_file(tar, name, data=b"data"):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _add_link(tar, name, target, kind=tarfile.SYMTYPE):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    tar.addfile(info)


def _add_device(tar, name, kind):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.devmajor, info.devminor = 1, 3
    tar.addfile(info)


@pytest.mark.parametrize(
    "add_members, member",
    [
        (lambda tar: _add_file(tar, "../escaped.txt"), "../escaped.txt"),
        (lambda tar: _add_file(tar, "corpus/../../escaped.txt"), "corpus/../../escaped.txt"),
        (lambda tar: _add_file(tar, "/tmp/escaped.txt"), "/tmp/escaped.txt"),
        (lambda tar: _add_link(tar, "corpus/passwd", "/etc/passwd"), "corpus/passwd"),
        (lambda tar: _add_link(tar, "corpus/up", "../../escaped"), "corpus/up"),
        (lambda tar: _add_link(tar, "corpus/hard", "../escaped.txt", tarfile.LNKTYPE), "corpus/hard"),
        (lambda tar: _add_device(tar, "corpus/null", tarfile.CHRTYPE), "corpus/null"),
        (lambda tar: _add_device(tar, "corpus/disk", tarfile.BLKTYPE), "corpus/disk"),
        (lambda tar: _add_device(tar, "corpus/pipe", tarfile.FIFOTYPE), "corpus/pipe"),
    ],
)
def test_tar_members_escaping_the_destination_are_refused(tmp_path, add_members, member):
    archive = tmp_path / "evil.tar.gz"

    def add_good_file_then_bad_member(tar):
        _add_file(tar, "corpus/good.txt")
        add_members(tar)

    _tar_with(archive, add_good_file_then_bad_member)
    dest = tmp_path / "out" / "dest"
    with pytest.raises(AsrError) as raised:
        safe_extract(archive, dest)
    assert str(archive) in str(raised.value)
    assert repr(member) in str(raised.value)
    assert not (tmp_path / "out" / "escaped.txt").exists() and not (tmp_path / "escaped.txt").exists()
    assert not (dest / ".evil.tar.gz.complete").exists()


def test_links_inside_the_destination_are_extracted(tmp_path):
    archive = tmp_path / "good.tar.gz"

    def add_members(tar):
        _add_file(tar, "corpus/a/readme.txt", b"hello")
        _add_link(tar, "corpus/b/readme.txt", "../a/readme.txt")

    _tar_with(archive, add_members)
    dest = safe_extract(archive, tmp_path / "dest")
    assert (dest / "corpus/b/readme.txt").is_symlink()
    assert (dest / "corpus/b/readme.txt").read_bytes() == b"hello"


@pytest.mark.parametrize("name", ["../escaped.txt", "/tmp/escaped.txt", "corpus/../../escaped.txt"])
def test_zip_members_escaping_the_destination_are_refused(tmp_path, name):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zip_file:
        zip_file.writestr("corpus/good.txt", "good")
        zip_file.writestr(name, "evil")
    dest = tmp_path / "dest"
    with pytest.raises(AsrError, match=f"{archive}: refusing to extract member {name!r}"):
        safe_extract(archive, dest)
    assert not (dest / "corpus" / "good.txt").exists()  # zip names are all checked before anything is written


def test_zip_is_extracted(tmp_path):
    archive = tmp_path / "good.zip"
    with zipfile.ZipFile(archive, "w") as zip_file:
        zip_file.writestr("corpus/recordings/0_george_0.wav", b"RIFF")
    safe_extract(archive, tmp_path / "dest")
    assert (tmp_path / "dest/corpus/recordings/0_george_0.wav").read_bytes() == b"RIFF"


def test_extraction_is_skipped_when_the_marker_matches_the_archive(tmp_path):
    archive = tmp_path / "corpus.tar.gz"
    _tar_with(archive, lambda tar: _add_file(tar, "corpus/a.txt", b"first"))
    dest = tmp_path / "dest"
    safe_extract(archive, dest)
    assert (dest / ".corpus.tar.gz.complete").read_text().strip() == file_digest(archive)

    (dest / "corpus/a.txt").write_bytes(b"edited")
    safe_extract(archive, dest)
    assert (dest / "corpus/a.txt").read_bytes() == b"edited"  # same archive: not extracted again

    _tar_with(archive, lambda tar: _add_file(tar, "corpus/a.txt", b"second"))
    safe_extract(archive, dest)
    assert (dest / "corpus/a.txt").read_bytes() == b"second"  # another archive under the same name


def test_truncated_or_foreign_archives_are_reported(tmp_path):
    archive = tmp_path / "corpus.tar.gz"
    _tar_with(archive, lambda tar: _add_file(tar, "corpus/a.bin", os.urandom(100_000)))
    archive.write_bytes(archive.read_bytes()[:50_000])
    with pytest.raises(AsrError, match=f"{archive}: corrupt or truncated archive"):
        safe_extract(archive, tmp_path / "dest")

    page = tmp_path / "page.tar.gz"
    page.write_text("<html>Not Found</html>")
    with pytest.raises(AsrError, match=f"{page}: not a tar or zip archive"):
        safe_extract(page, tmp_path / "dest")
    with pytest.raises(AsrError, match="archive not found"):
        safe_extract(tmp_path / "absent.tar.gz", tmp_path / "dest")
