import os
import subprocess
import sys

import pytest

from asr.files import atomic_write, remove_unfinished_writes, write_text_atomically


def test_a_writer_that_raises_leaves_the_previous_file_and_no_temporary(tmp_path):
    path = tmp_path / "stats.json"
    write_text_atomically(path, "old\n")
    with pytest.raises(RuntimeError, match="killed"):
        with atomic_write(path) as file:
            file.write("half of the new")
            raise RuntimeError("killed")
    assert path.read_text() == "old\n"
    assert os.listdir(tmp_path) == ["stats.json"]


def test_atomic_write_creates_the_folder_and_replaces_the_file(tmp_path):
    path = tmp_path / "new" / "model.pt"
    with atomic_write(path, "wb") as file:
        file.write(b"\x00\x01")
    with atomic_write(path, "wb") as file:
        file.write(b"\x02")
    assert path.read_bytes() == b"\x02"
    assert os.listdir(path.parent) == ["model.pt"]


def test_the_temporaries_of_killed_writes_are_found_and_removed(tmp_path):
    (tmp_path / "ckpt-5.pt").write_bytes(b"whole")
    killed_while_writing = (f"import os; from asr.files import atomic_write\n"
                            f"with atomic_write({str(tmp_path / 'ckpt-6.pt')!r}, 'wb') as file:\n"
                            f"    file.write(b'half'); file.flush(); os._exit(1)")
    assert subprocess.run([sys.executable, "-c", killed_while_writing]).returncode == 1
    (leftover,) = remove_unfinished_writes(tmp_path)
    assert leftover.name.startswith(".ckpt-6.pt.")
    assert sorted(os.listdir(tmp_path)) == ["ckpt-5.pt"]
