"""Fetching corpus archives: resumable HTTP downloads, checksums, and extraction that stays inside its folder.

A download streams into `<file>.part` and becomes `<file>` only once it is whole and its checksum matches, so a file
under its final name is always complete and verified. An interrupted download resumes from the `.part` (an HTTP
Range request); a server that ignores Range sends the whole file again and the `.part` is rewritten from the start.
A file that fails its checksum is deleted, `.part` included: resuming cannot repair wrong bytes, so the next run
downloads it afresh.

Archives come from strangers' servers, so extraction refuses any member that would be written outside the
destination (absolute paths, `..`, links pointing out) and device files, naming the archive and the member.
"""
import gzip
import hashlib
import http.client
import os
import posixpath
import shutil
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from pathlib import Path, PurePosixPath, PureWindowsPath

from tqdm import tqdm

from asr import __version__
from asr.errors import AsrError

CHUNK_BYTES = 1 << 20
USER_AGENT = f"asr/{__version__} (Python urllib)"
FIRST_RETRY_PAUSE_SECONDS = 1.0  # doubled after every failed attempt

# Failures that another attempt may cure: refused or reset connections, timeouts, truncated responses, and the
# HTTP answers "request timeout" and "too many requests" (server errors, 5xx, are retried too).
_TRANSIENT_ERRORS = (urllib.error.URLError, http.client.HTTPException, OSError)
_TRANSIENT_CLIENT_ERROR_CODES = (408, 429)


def download(
    url: str, dest_path, sha256: str | None = None, md5: str | None = None, progress: bool = True, retries: int = 3,
    timeout: float = 60.0,
) -> Path:
    """Download `url` to `dest_path` and return its path, skipping the work when a verified copy is already there.

    `sha256` / `md5` are the expected hex digests (either, both or none). `retries` is how many more attempts follow
    a failed one, each resuming where the last stopped; `timeout` is in seconds per network operation, not for the
    whole file. An existing `dest_path` counts as done when it matches the given digests (or when none is given);
    one that does not match is downloaded again. Raises AsrError when the server refuses the request, when every
    attempt fails (the `.part` is kept for the next run to resume) or when the finished file fails its checksum
    (the file is deleted).
    """
    dest = Path(dest_path)
    if dest.is_file():
        problem = _checksum_problem(dest, sha256, md5)
        if problem is None:
            return dest
        print(f"{dest}: {problem}; downloading it again")
        dest.unlink()
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".part")

    for attempt in range(1, retries + 2):
        try:
            _fetch_into(url, partial, progress, timeout)
            break
        except urllib.error.HTTPError as error:
            if error.code < 500 and error.code not in _TRANSIENT_CLIENT_ERROR_CODES:
                # The request itself is wrong (missing file, forbidden): asking again cannot help.
                raise AsrError(f"{url}: the server answered HTTP {error.code} {error.reason}") from error
            failure = error
        except _TRANSIENT_ERRORS as error:
            failure = error
        if attempt > retries:
            received = partial.stat().st_size if partial.exists() else 0
            kept = f"; {partial} keeps the {received} bytes received, and the next run resumes from there"
            raise AsrError(
                f"{url}: download failed after {attempt} attempt(s): {failure}{kept if received else ''}"
            ) from failure
        time.sleep(FIRST_RETRY_PAUSE_SECONDS * 2 ** (attempt - 1))

    problem = _checksum_problem(partial, sha256, md5)
    if problem is not None:
        partial.unlink()
        raise AsrError(f"{url}: the download to {dest} {problem}; it was deleted, and the next run downloads it afresh")
    os.replace(partial, dest)
    return dest


def remote_size(url: str, timeout: float = 30.0) -> int | None:
    """The size in bytes the server gives for `url` (a HEAD request's Content-Length); None when it gives none or
    cannot be asked."""
    request = urllib.request.Request(url, method="HEAD", headers={"User-Agent": USER_AGENT})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
    except _TRANSIENT_ERRORS:
        return None
    return int(length) if length is not None and length.isdigit() else None


def check_free_space(folder, needed_bytes: int, what: str) -> None:
    """Raise AsrError, with the figures, when the file system of `folder` (or of its nearest existing parent) has
    fewer than `needed_bytes` free: better at once than hours into a download."""
    folder = Path(folder).absolute()
    while not folder.exists():
        folder = folder.parent
    free = shutil.disk_usage(folder).free
    if free < needed_bytes:
        raise AsrError(f"{folder}: {what} need about {_gigabytes(needed_bytes)} ({needed_bytes} bytes) free, and "
                       f"the disk has {_gigabytes(free)}; free {_gigabytes(needed_bytes - free)} or download elsewhere")


def _gigabytes(size: int) -> str:
    return f"{size / 1e9:.1f} GB" if size >= 1e8 else f"{size / 1e6:.1f} MB"


def _fetch_into(url, partial: Path, progress: bool, timeout: float) -> None:
    """One attempt: append the rest of `url` to `partial` (or rewrite it whole); raise if the transfer stops short."""
    offset = partial.stat().st_size if partial.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as error:
        if error.code != 416 or not offset:
            raise
        # "Range Not Satisfiable": nothing lies past the .part's end. It is whole when the server's size equals its
        # length (a run stopped between the last byte and the rename); otherwise it is longer than the file.
        if error.headers.get("Content-Range", "") == f"bytes */{offset}":
            return
        partial.unlink()
        raise ConnectionError(f"{partial} is longer than the file on the server; starting again") from error

    with response:
        if response.status == 206:
            if not response.headers.get("Content-Range", "").startswith(f"bytes {offset}-"):
                partial.unlink()
                raise ConnectionError(f"the server resumed at another byte than {offset}; starting again")
            mode = "ab"
        else:
            # The server ignored the Range header and sends the whole file.
            mode, offset = "wb", 0
        length = response.headers.get("Content-Length")
        expected_size = offset + int(length) if length is not None else None
        with open(partial, mode) as out, tqdm(
            total=expected_size, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
            desc=partial.name.removesuffix(".part"), disable=not progress,
        ) as bar:
            while chunk := response.read(CHUNK_BYTES):
                out.write(chunk)
                bar.update(len(chunk))
            out.flush()
            os.fsync(out.fileno())

    # http.client returns a short body without complaint when the connection closes early.
    received = partial.stat().st_size
    if expected_size is not None and received != expected_size:
        raise ConnectionError(f"the connection closed after {received} of {expected_size} bytes")


def file_digest(path, algorithm: str = "sha256") -> str:
    """The hex digest of a file's bytes (`algorithm` is any name hashlib knows: "sha256", "md5", …)."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as file:
        while chunk := file.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def verify_checksum(path, sha256: str | None = None, md5: str | None = None) -> None:
    """Raise AsrError naming the file, the expected and the actual digest when `path` does not match."""
    problem = _checksum_problem(Path(path), sha256, md5)
    if problem is not None:
        raise AsrError(f"{path}: {problem}")


def _checksum_problem(path: Path, sha256, md5) -> str | None:
    for algorithm, expected in (("sha256", sha256), ("md5", md5)):
        if expected is None:
            continue
        actual = file_digest(path, algorithm)
        if actual != expected.lower():
            return f"fails its {algorithm} checksum: expected {expected.lower()}, got {actual}"
    return None


def safe_extract(archive, dest, sha256: str | None = None, progress: bool = False) -> Path:
    """Unpack a tar (gzip, bzip2, xz or plain) or zip archive into `dest` and return `dest`.

    Every member is checked before it is written: an absolute path, a `..` component, a link pointing outside
    `dest`, or a device file or FIFO raises AsrError naming the archive and the member. Tar extraction also runs
    under tarfile's "data" filter (Python 3.10.12, 3.11.4 or newer), which re-checks each path on disk. The run
    ends by writing the marker `dest/.<archive name>.complete` holding the archive's sha256; a rerun that finds
    the marker for the same archive returns without extracting. `sha256` is the archive's digest when the caller
    already knows it (it is computed otherwise). An interrupted extraction leaves no marker, and the rerun extracts
    over what is there.
    """
    archive, dest = Path(archive), Path(dest)
    if not archive.is_file():
        raise AsrError(f"{archive}: archive not found")
    digest = sha256.lower() if sha256 else file_digest(archive)
    if already_extracted(archive, dest, digest):
        return dest

    dest.mkdir(parents=True, exist_ok=True)
    if zipfile.is_zipfile(archive):
        _extract_zip(archive, dest)
    elif tarfile.is_tarfile(archive):
        _extract_tar(archive, dest, progress)
    else:
        raise AsrError(f"{archive}: not a tar or zip archive")
    _extraction_marker(archive, dest).write_text(digest + "\n")
    return dest


def already_extracted(archive, dest, sha256: str) -> bool:
    """Whether `safe_extract` finished extracting the archive with this sha256 into `dest` (the archive itself
    need not exist any more)."""
    marker = _extraction_marker(Path(archive), Path(dest))
    return marker.is_file() and marker.read_text().strip() == sha256.lower()


def _extraction_marker(archive: Path, dest: Path) -> Path:
    return dest / f".{archive.name}.complete"


def _extract_tar(archive: Path, dest: Path, progress: bool) -> None:
    if not hasattr(tarfile, "data_filter"):
        raise AsrError(f"{archive}: extracting it safely needs Python 3.10.12, 3.11.4 or newer (tarfile's filters)")

    def checked_members(tar):
        # A generator, so the archive is read once: each member is checked just before it is written.
        for member in tqdm(tar, desc=f"extracting {archive.name}", unit=" files", disable=not progress):
            problem = _tar_member_problem(member)
            if problem is not None:
                raise AsrError(f"{archive}: refusing to extract member {member.name!r}: {problem}")
            yield member

    try:
        with tarfile.open(archive) as tar:
            tar.extractall(dest, members=checked_members(tar), filter="data")
    except tarfile.FilterError as error:
        raise AsrError(f"{archive}: refusing to extract: {error}") from error
    except (tarfile.ReadError, EOFError, zlib.error, gzip.BadGzipFile) as error:
        raise AsrError(f"{archive}: corrupt or truncated archive: {error}") from error


def _tar_member_problem(member: tarfile.TarInfo) -> str | None:
    if member.isdev():
        return "it is a device file or FIFO"
    problem = _path_problem(member.name)
    if problem is not None or not (member.issym() or member.islnk()):
        return problem
    if PurePosixPath(member.linkname).is_absolute():
        return f"it is a link to the absolute path {member.linkname!r}"
    # A symbolic link's target is relative to the link's folder; a hard link's to the archive's root.
    base = posixpath.dirname(member.name) if member.issym() else ""
    target = posixpath.normpath(posixpath.join(base, member.linkname))
    if target == ".." or target.startswith("../"):
        return f"it is a link to {member.linkname!r}, outside the destination"
    return None


def _path_problem(name: str) -> str | None:
    if PurePosixPath(name).is_absolute() or PureWindowsPath(name).drive:
        return "its path is absolute"
    if ".." in PurePosixPath(name).parts:
        return "its path has a '..' component"
    return None


def _extract_zip(archive: Path, dest: Path) -> None:
    try:
        with zipfile.ZipFile(archive) as zip_file:
            # The central directory lists every name up front, so all are checked before anything is written.
            for name in zip_file.namelist():
                problem = _path_problem(name)
                if problem is not None:
                    raise AsrError(f"{archive}: refusing to extract member {name!r}: {problem}")
            zip_file.extractall(dest)
    except (zipfile.BadZipFile, zlib.error, EOFError) as error:
        raise AsrError(f"{archive}: corrupt or truncated archive: {error}") from error
