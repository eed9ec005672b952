"""FSDD: download from a local server of an archive made from the real recordings, and the content check."""
import hashlib
import io
import os
import tarfile

import numpy as np
import pytest
import soundfile
from download_server import serve

from asr.data.fsdd import check_fsdd_recordings, download_fsdd, find_fsdd_recordings, parse_fsdd_name
from asr.errors import AsrError

RELEASE_FOLDER = "free-spoken-digit-dataset-1.0.10"
ARCHIVE_PATH = "/Jakobovski/free-spoken-digit-dataset/archive/refs/tags/v1.0.10.tar.gz"


def _release_archive(fsdd_dir, names) -> bytes:
    """A tar.gz laid out like GitHub's release archive, holding the named real recordings."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=1) as tar:  # level 1: the test waits on gzip
        readme = b"Free Spoken Digit Dataset\n"
        info = tarfile.TarInfo(f"{RELEASE_FOLDER}/README.md")
        info.size = len(readme)
        tar.addfile(info, io.BytesIO(readme))
        for name in names:
            tar.add(fsdd_dir / name, arcname=f"{RELEASE_FOLDER}/recordings/{name}")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def full_archive(fsdd_dir):
    return _release_archive(fsdd_dir, sorted(os.listdir(fsdd_dir)))


def test_parse_fsdd_name():
    assert parse_fsdd_name("4_george_12.wav") == (4, "george", 12)
    assert parse_fsdd_name("/data/recordings/0_yweweler_49.wav") == (0, "yweweler", 49)
    for bad in ("4_george.wav", "12_george_1.wav", "4_george_12.flac", "x_george_1.wav"):
        with pytest.raises(AsrError, match="not an FSDD recording name"):
            parse_fsdd_name(bad)


def test_download_fsdd_checks_all_3000_real_recordings(tmp_path, fsdd_dir, full_archive, capsys):
    with serve({ARCHIVE_PATH: full_archive}) as server:
        recordings = download_fsdd(tmp_path, url=server.url(ARCHIVE_PATH), progress=False)
    assert recordings == tmp_path / RELEASE_FOLDER / "recordings"
    assert sorted(os.listdir(recordings)) == sorted(os.listdir(fsdd_dir))
    assert (recordings / "7_theo_33.wav").read_bytes() == (fsdd_dir / "7_theo_33.wav").read_bytes()
    assert hashlib.sha256(full_archive).hexdigest() in capsys.readouterr().out


def test_download_fsdd_checks_a_given_sha256(tmp_path, full_archive):
    with serve({ARCHIVE_PATH: full_archive}) as server:
        with pytest.raises(AsrError, match="fails its sha256 checksum"):
            download_fsdd(tmp_path, url=server.url(ARCHIVE_PATH), sha256="0" * 64, progress=False)
        download_fsdd(
            tmp_path, url=server.url(ARCHIVE_PATH), sha256=hashlib.sha256(full_archive).hexdigest(), progress=False
        )


def test_download_fsdd_with_recordings_missing_lists_them(tmp_path, fsdd_dir):
    archive = _release_archive(fsdd_dir, ["0_george_0.wav", "5_theo_7.wav"])
    with serve({ARCHIVE_PATH: archive}) as server:
        with pytest.raises(AsrError) as raised:
            download_fsdd(tmp_path, url=server.url(ARCHIVE_PATH), progress=False)
    message = str(raised.value)
    assert message.startswith(f"{tmp_path / RELEASE_FOLDER / 'recordings'}: not a complete FSDD")
    assert "2998 missing: 0_george_1.wav, 0_george_2.wav," in message
    assert "0_george_0.wav" not in message


def test_check_names_unusable_recordings(tmp_path, fsdd_dir):
    # Links to the real recordings make a complete folder cheaply; then two are replaced by unusable files.
    folder = tmp_path / "recordings"
    folder.mkdir()
    for name in os.listdir(fsdd_dir):
        (folder / name).symlink_to(fsdd_dir / name)
    assert len(check_fsdd_recordings(folder)) == 3000

    (folder / "3_lucas_10.wav").unlink()
    soundfile.write(folder / "3_lucas_10.wav", np.zeros(1600, dtype=np.float32), 16000)
    (folder / "9_nicolas_2.wav").unlink()
    (folder / "9_nicolas_2.wav").write_bytes(b"RIFF but not really")
    with pytest.raises(AsrError) as raised:
        check_fsdd_recordings(folder)
    message = str(raised.value)
    assert "2 not a readable 8 kHz mono wav: 3_lucas_10.wav (16000 Hz, 1 channels, 1600 samples), 9_nicolas_2.wav (" \
        in message
    assert "missing" not in message


def test_find_fsdd_recordings_accepts_the_usual_places(tmp_path, fsdd_dir):
    assert len(find_fsdd_recordings(fsdd_dir)) == 3000
    assert find_fsdd_recordings(fsdd_dir.parent) == find_fsdd_recordings(fsdd_dir)

    release = tmp_path / RELEASE_FOLDER / "recordings"
    release.mkdir(parents=True)
    for name in ("1_jackson_3.wav", "0_george_0.wav"):
        (release / name).symlink_to(fsdd_dir / name)
    (release / "notes.txt").write_text("not a recording")
    expected = [release / "0_george_0.wav", release / "1_jackson_3.wav"]
    assert find_fsdd_recordings(tmp_path) == expected
    assert find_fsdd_recordings(tmp_path / RELEASE_FOLDER) == expected
    assert find_fsdd_recordings(release) == expected

    (tmp_path / "empty").mkdir()
    with pytest.raises(AsrError, match="no FSDD recordings"):
        find_fsdd_recordings(tmp_path / "empty")
    with pytest.raises(AsrError, match="no such folder"):
        find_fsdd_recordings(tmp_path / "absent")
