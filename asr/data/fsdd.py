"""The Free Spoken Digit Dataset (FSDD): download its v1.0.10 release, find its recordings, and check them.

FSDD v1.0.10 holds 3,000 recordings, `recordings/<digit>_<speaker>_<take>.wav`: ten digits spoken by six
speakers, fifty takes each, as 8 kHz mono wavs (CC BY-SA 4.0, github.com/Jakobovski/free-spoken-digit-dataset).
Turning them into training sets is `asr.data.digits`' work.
"""
import re
from pathlib import Path
from urllib.parse import urlparse

from asr.audio import audio_info
from asr.download import download, file_digest, safe_extract
from asr.errors import AsrError, AudioError

FSDD_URL = "https://github.com/Jakobovski/free-spoken-digit-dataset/archive/refs/tags/v1.0.10.tar.gz"
SPEAKERS = ("george", "jackson", "lucas", "nicolas", "theo", "yweweler")
DIGITS = range(10)
TAKES = range(50)
SAMPLE_RATE = 8000

_RECORDING_NAME = re.compile(r"(\d)_([^_]+)_(\d+)\.wav")
_MAX_NAMES_SHOWN = 20  # an error lists this many names of a kind, then counts the rest


def download_fsdd(dest_dir, url: str = FSDD_URL, sha256=None, progress: bool = True) -> Path:
    """Download and extract FSDD into `dest_dir`, check every recording, and return the recordings folder.

    GitHub publishes no checksum for its release archives and none could be obtained when this was written, so
    none is built in: what is verified is the content (`check_fsdd_recordings`), plus the archive's sha256 when
    `sha256` is given. Without it, the archive's sha256 is printed so that it can be pinned from then on.
    """
    dest_dir = Path(dest_dir)
    archive_name = f"fsdd-{Path(urlparse(url).path).name}"  # "fsdd-v1.0.10.tar.gz"
    archive = download(url, dest_dir / archive_name, sha256=sha256, progress=progress)
    digest = sha256 or file_digest(archive)
    if sha256 is None:
        print(f"{digest}  {archive}  (sha256; pass it as sha256 to pin this archive)")
    safe_extract(archive, dest_dir, sha256=digest, progress=progress)
    recordings_dir = _recordings_folder(dest_dir)
    check_fsdd_recordings(recordings_dir)
    return recordings_dir


def check_fsdd_recordings(recordings_dir) -> list[Path]:
    """Return the paths of all 3,000 FSDD recordings in `recordings_dir`, each a readable 8 kHz mono wav.

    Raises AsrError naming the folder and listing the recordings that are missing, unreadable, empty or in
    another format. Files that are not FSDD recordings are ignored.
    """
    recordings_dir = Path(recordings_dir)
    expected = [
        recordings_dir / f"{digit}_{speaker}_{take}.wav" for speaker in SPEAKERS for digit in DIGITS for take in TAKES
    ]
    missing, unusable = [], []
    for path in expected:
        if not path.is_file():
            missing.append(path.name)
            continue
        try:
            info = audio_info(path)
        except AudioError as error:
            unusable.append(f"{path.name} ({error.problem})")
            continue
        if (info.sample_rate, info.channels) != (SAMPLE_RATE, 1) or info.frames == 0:
            unusable.append(f"{path.name} ({info.sample_rate} Hz, {info.channels} channels, {info.frames} samples)")
    if missing or unusable:
        problems = [_listing("missing", missing), _listing("not a readable 8 kHz mono wav", unusable)]
        raise AsrError(
            f"{recordings_dir}: not a complete FSDD v1.0.10 recordings folder "
            f"({len(expected)} expected): {'; '.join(problem for problem in problems if problem)}"
        )
    return expected


def _listing(kind: str, names: list[str]) -> str:
    if not names:
        return ""
    shown = ", ".join(names[:_MAX_NAMES_SHOWN])
    more = f" and {len(names) - _MAX_NAMES_SHOWN} more" if len(names) > _MAX_NAMES_SHOWN else ""
    return f"{len(names)} {kind}: {shown}{more}"


def find_fsdd_recordings(path) -> list[Path]:
    """The FSDD recordings (`<digit>_<speaker>_<take>.wav`), sorted by name, found from `path`.

    `path` may be the recordings folder itself, a folder holding `recordings/`, or one holding the extracted
    release (`free-spoken-digit-dataset-1.0.10/recordings`). Other files in the folder are ignored.
    """
    folder = _recordings_folder(path)
    return sorted(wav for wav in folder.glob("*.wav") if _RECORDING_NAME.fullmatch(wav.name))


def _recordings_folder(path) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise AsrError(f"{path}: no such folder (expected FSDD recordings)")
    for candidate in (path, path / "recordings", *sorted(path.glob("free-spoken-digit-dataset*/recordings"))):
        if candidate.is_dir() and any(_RECORDING_NAME.fullmatch(wav.name) for wav in candidate.glob("*.wav")):
            return candidate
    raise AsrError(
        f"{path}: no FSDD recordings (<digit>_<speaker>_<take>.wav) in it, in recordings/, "
        "or in free-spoken-digit-dataset-*/recordings/"
    )


def parse_fsdd_name(filename) -> tuple[int, str, int]:
    """(digit, speaker, take) of a recording's file name: "4_george_12.wav" → (4, "george", 12)."""
    match = _RECORDING_NAME.fullmatch(Path(filename).name)
    if match is None:
        raise AsrError(f"{filename}: not an FSDD recording name (<digit>_<speaker>_<take>.wav)")
    digit, speaker, take = match.groups()
    return int(digit), speaker, int(take)
