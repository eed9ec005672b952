"""LibriSpeech: download it from OpenSLR, and turn its folder tree into one manifest per subset.

An extracted subset is laid out as

    LibriSpeech/<subset>/<speaker>/<chapter>/<speaker>-<chapter>-<n>.flac
    LibriSpeech/<subset>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt    lines "<utterance id> <TRANSCRIPT>"

and `prepare_librispeech` writes `<out_dir>/<subset>.jsonl`, listing what it had to leave out in a PrepReport.
The corpus is OpenSLR resource 12 and its language-model files are resource 11; every mirror serves both, under
`<mirror>/12` and `<mirror>/11`.
"""
import gzip
import logging
import os
import shutil
import zlib
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from tqdm import tqdm

from asr.audio import audio_info
from asr.data.manifest import PrepReport, Utterance, write_manifest
from asr.download import (
    CHUNK_BYTES,
    already_extracted,
    check_free_space,
    download,
    file_digest,
    remote_size,
    safe_extract,
)
from asr.errors import AsrError, AudioError, ConfigError, ManifestError
from asr.files import atomic_write
from asr.text import normalize_text

log = logging.getLogger(__name__)

OPENSLR_MIRRORS = (
    "https://www.openslr.org/resources",
    "https://us.openslr.org/resources",
    "https://openslr.elda.org/resources",
    "https://openslr.magicdatatech.com/resources",
)
LIBRISPEECH_URL = f"{OPENSLR_MIRRORS[0]}/12"
LIBRISPEECH_LM_URL = f"{OPENSLR_MIRRORS[0]}/11"

# Subset → sha256 of `<subset>.tar.gz`, as published with torchaudio's LibriSpeech dataset.
SUBSETS = {
    "dev-clean": "76f87d090650617fca0cac8f88b9416e0ebf80350acb97b343a85fa903728ab3",
    "dev-other": "12661c48e8c3fe1de2c1caa4c3e135193bfb1811584f11f569dd12645aa84365",
    "test-clean": "39fde525e59672dc6d1551919b1478f724438a95aa55f874b576be21967e6c23",
    "test-other": "d09c181bba5cf717b3dee7d4d592af11a3ee3a09e08ae025c5506f6ebe961c29",
    "train-clean-100": "d4ddd1d5a6ab303066f14971d768ee43278a5f2a0aa43dc716b0e64ecbbbf6e2",
    "train-clean-360": "146a56496217e96c14334a160df97fffedd6e0a04e66b9c5af0d40be3c792ecf",
    "train-other-500": "ddb22f27f96ec163645d53215559df6aa36515f26e01dd70798188350adcb6d2",
}
# Subset → size of `<subset>.tar.gz` as OpenSLR lists it, for a mirror that does not say (HEAD without a length).
PUBLISHED_SIZES = {
    "dev-clean": 337_000_000, "dev-other": 314_000_000, "test-clean": 346_000_000, "test-other": 328_000_000,
    "train-clean-100": 6_300_000_000, "train-clean-360": 23_000_000_000, "train-other-500": 30_000_000_000,
}
# Extracted FLACs take about what their archive takes (FLAC does not compress further); the margin covers the file
# system's blocks and the estimate's error.
EXTRACTED_PER_ARCHIVE_BYTE = 1.1

# Language-model files of OpenSLR resource 11: pruned and full n-gram models (gzipped ARPA), and the word lists.
LM_FILES = (
    "3-gram.pruned.1e-7.arpa.gz",
    "3-gram.pruned.3e-7.arpa.gz",
    "4-gram.arpa.gz",
    "librispeech-lexicon.txt",
    "librispeech-vocab.txt",
)

# Why an utterance was left out, as the reasons appear in PrepReport.skipped.
MISSING_TRANSCRIPT_FILE = "missing .trans.txt"
TRANSCRIPT_WITHOUT_AUDIO = "transcript line without audio"
AUDIO_WITHOUT_TRANSCRIPT = "audio without transcript line"
UNREADABLE_AUDIO = "unreadable audio"
EMPTY_AUDIO = "empty audio"
EMPTY_TRANSCRIPT = "empty transcript"
DUPLICATE_ID = "duplicate id"


def download_librispeech(
    subsets: Sequence[str], dest_dir, base_url: str | None = None, checksums=None, progress: bool = True,
    keep_archives: bool = False,
) -> Path:
    """Download and extract subsets into `dest_dir/LibriSpeech/<subset>`; return `dest_dir/LibriSpeech`.

    `base_url` is a mirror of OpenSLR resource 12 (None: `LIBRISPEECH_URL`, openslr.org itself). Each
    `<subset>.tar.gz` is verified against its published sha256 (`checksums`, {subset: sha256}, overrides them),
    extracted, and deleted once its subset's folder is in place (`keep_archives` keeps it in `dest_dir`): 960 h
    take some 60 GB as archives and as much again extracted. A subset already extracted from the archive with that
    checksum is skipped without touching the network. Before anything is downloaded, the free disk is checked
    against what the subsets still to fetch need (`check_free_space`), so a full disk fails at once with the figure.
    """
    dest_dir = Path(dest_dir)
    base_url = (base_url or LIBRISPEECH_URL).rstrip("/")
    expected_sha256 = {**SUBSETS, **(checksums or {})}
    unknown = [subset for subset in _as_list(subsets) if subset not in expected_sha256]
    if unknown:
        raise ConfigError(f"unknown LibriSpeech subset(s) {', '.join(unknown)}; known: {', '.join(SUBSETS)}")
    to_fetch = [subset for subset in _as_list(subsets)
                if not already_extracted(dest_dir / f"{subset}.tar.gz", dest_dir, expected_sha256[subset])]
    if to_fetch:
        needed = _disk_needed(to_fetch, dest_dir, base_url, keep_archives)
        archives = "archives kept" if keep_archives else "archives deleted once extracted"
        check_free_space(dest_dir, needed, f"LibriSpeech {', '.join(to_fetch)} ({archives})")
    for subset in to_fetch:
        archive = dest_dir / f"{subset}.tar.gz"
        sha256 = expected_sha256[subset]
        download(f"{base_url}/{subset}.tar.gz", archive, sha256=sha256, progress=progress)
        safe_extract(archive, dest_dir, sha256=sha256, progress=progress)
        if not (dest_dir / "LibriSpeech" / subset).is_dir():
            raise AsrError(f"{archive}: extracted, but it holds no LibriSpeech/{subset} folder")
        if not keep_archives:
            archive.unlink()  # its extraction is complete (safe_extract's marker holds its sha256 for reruns)
    return dest_dir / "LibriSpeech"


def _disk_needed(subsets: list[str], dest_dir: Path, base_url: str, keep_archives: bool) -> int:
    """Bytes of free disk the download and extraction of `subsets`, one after the other, need at their peak: what is
    left to download of each archive, its extraction, and the archives kept until then."""
    in_use = peak = 0
    for subset in subsets:
        archive = dest_dir / f"{subset}.tar.gz"
        if archive.is_file():
            size = received = archive.stat().st_size
        else:
            size = remote_size(f"{base_url}/{subset}.tar.gz") or PUBLISHED_SIZES.get(subset, 0)
            partial = archive.with_name(archive.name + ".part")
            received = partial.stat().st_size if partial.is_file() else 0
        in_use += max(size - received, 0) + int(size * EXTRACTED_PER_ARCHIVE_BYTE)
        peak = max(peak, in_use)
        if not keep_archives:
            in_use -= size
    return peak


def download_librispeech_lm(
    dest_dir, files: Sequence[str] = LM_FILES, base_url: str | None = None, checksums=None, progress: bool = True
) -> dict[str, Path]:
    """Download LibriSpeech's language-model files into `dest_dir`; return {file name: path of the usable file}.

    `base_url` is a mirror of OpenSLR resource 11 (None: `LIBRISPEECH_LM_URL`, openslr.org itself). A gzipped
    ARPA model (`*.arpa.gz`) is also decompressed, streaming, beside it (`4-gram.arpa`), and its entry points at
    the ARPA file; once that exists a rerun skips the file, even when the `.gz` has been deleted.

    OpenSLR publishes no checksums for these files, and no installed package carries any, so none are built in.
    What can be verified is: the gzip stream decompresses whole (its CRC matches) and the model starts with the
    ARPA header `\\data\\`; a file failing either is deleted so that the next run downloads it afresh. The sha256
    of every file downloaded without an expected digest is printed, so that it can be pinned through `checksums`
    ({file name: sha256}) from then on.
    """
    dest_dir = Path(dest_dir)
    base_url = (base_url or LIBRISPEECH_LM_URL).rstrip("/")
    paths = {}
    for name in _as_list(files):
        is_arpa = name.endswith(".arpa.gz")
        usable = dest_dir / name.removesuffix(".gz") if is_arpa else dest_dir / name
        if is_arpa and usable.is_file():  # written whole or not at all, so its presence means done
            paths[name] = usable
            continue
        sha256 = (checksums or {}).get(name)
        downloaded = download(f"{base_url}/{name}", dest_dir / name, sha256=sha256, progress=progress)
        if sha256 is None:
            print(f"{file_digest(downloaded)}  {downloaded}  (sha256, not verified: no published checksum)")
        paths[name] = _gunzip_arpa(downloaded, usable) if is_arpa else downloaded
    return paths


def _gunzip_arpa(compressed: Path, arpa: Path) -> Path:
    """Decompress a gzipped ARPA model to `arpa` (atomically), checking the gzip CRC and the ARPA header."""
    try:
        with gzip.open(compressed, "rb") as source:
            header = _first_nonblank_line(source)
        if header != "\\data\\":
            raise _discard(compressed, f"not an ARPA language model: it starts with {header[:60]!r}, not '\\data\\'")
        with gzip.open(compressed, "rb") as source, atomic_write(arpa, "wb") as target:
            shutil.copyfileobj(source, target, CHUNK_BYTES)
    except (gzip.BadGzipFile, EOFError, zlib.error) as error:
        raise _discard(compressed, f"corrupt gzip ({error})") from error
    return arpa


def _discard(compressed: Path, problem: str) -> AsrError:
    """Delete a bad download; return the error that says so."""
    compressed.unlink()
    return AsrError(f"{compressed}: {problem}; it was deleted, and the next run downloads it afresh")


def _first_nonblank_line(file: BinaryIO) -> str:
    # ARPA files written by SRILM begin with an empty line; a line is read at most 256 bytes at a time.
    while line := file.readline(256):
        if line.strip():
            return line.strip().decode("utf-8", errors="replace")
    return ""


def find_librispeech_root(path) -> Path:
    """The `LibriSpeech` folder (holding one folder per subset), found from `path`.

    `path` may be the folder holding `LibriSpeech/`, `LibriSpeech/` itself, or any folder holding subset folders
    with LibriSpeech's names (`dev-clean`, `train-clean-100`, …). Raises AsrError otherwise.
    """
    path = Path(os.path.abspath(path))
    if not path.is_dir():
        raise AsrError(f"{path}: no such folder (expected a LibriSpeech corpus)")
    for candidate in (path / "LibriSpeech", path):
        if candidate.is_dir() and (candidate.name == "LibriSpeech" or _holds_subsets(candidate)):
            return candidate
    hint = " (it is a subset folder: give its parent)" if path.name in SUBSETS else ""
    raise AsrError(
        f"{path}: no LibriSpeech corpus here{hint}; expected the folder holding LibriSpeech/, LibriSpeech/ itself, "
        f"or a folder holding subset folders such as {', '.join(SUBSETS)}"
    )


def _holds_subsets(folder: Path) -> bool:
    return any((folder / subset).is_dir() for subset in SUBSETS)


@dataclass(frozen=True)
class _Candidate:
    """An utterance whose transcript and audio file were both found; its audio is not read yet."""

    id: str
    audio: Path
    text: str
    speaker: str


def prepare_librispeech(
    root, subsets: Sequence[str], out_dir, num_workers: int = 4, progress: bool = True
) -> dict[str, PrepReport]:
    """Write `<out_dir>/<subset>.jsonl` for every subset of the corpus found from `root`; return their reports.

    Transcripts are normalized with `normalize_text` and durations come from the audio headers, read by
    `num_workers` threads. The manifest lists utterances sorted by id; audio paths are absolute, or relative
    when the corpus lies inside `out_dir` (see `write_manifest`).
    Left out, and listed in the subset's PrepReport under the reason: every flac of a chapter without its
    `.trans.txt`, transcript lines without a flac, flacs without a transcript line, audio that cannot be read or
    holds no samples, transcripts that normalize to nothing, and a second occurrence of an id (the first is kept).
    A subset folder that does not exist raises AsrError before any manifest is written.
    """
    if num_workers < 1:
        raise ConfigError(f"num_workers must be at least 1, got {num_workers}")
    corpus = find_librispeech_root(root)
    subsets = _as_list(subsets)
    missing = [subset for subset in subsets if not (corpus / subset).is_dir()]
    if missing:
        present = sorted(child.name for child in corpus.iterdir() if child.is_dir())
        raise AsrError(f"{corpus}: no subset folder {', '.join(missing)}; it holds {', '.join(present) or 'none'}")

    reports = {}
    for subset in subsets:
        report = PrepReport()
        candidates = _find_utterances(corpus / subset, report)
        utterances = _measure_audio(candidates, report, num_workers, progress, subset)
        utterances.sort(key=lambda utterance: utterance.id)
        write_manifest(Path(out_dir) / f"{subset}.jsonl", utterances)
        report.written = len(utterances)
        reports[subset] = report
    return reports


def _find_utterances(subset_dir: Path, report: PrepReport) -> list[_Candidate]:
    """Pair every chapter's flacs with its transcript lines; what cannot be paired goes into the report."""
    candidates = []
    seen_ids = set()
    for chapter_dir in sorted(subset_dir.glob("*/*")):
        if not chapter_dir.is_dir():
            continue
        speaker, chapter = chapter_dir.parent.name, chapter_dir.name
        audio_by_id = {audio.stem: audio for audio in chapter_dir.glob("*.flac")}
        transcript_file = chapter_dir / f"{speaker}-{chapter}.trans.txt"
        if not transcript_file.is_file():
            for utterance_id in sorted(audio_by_id):
                report.skip(MISSING_TRANSCRIPT_FILE, utterance_id)
            continue
        for utterance_id, raw_text in _read_transcript(transcript_file):
            if utterance_id in seen_ids:
                report.skip(DUPLICATE_ID, utterance_id)
                continue
            seen_ids.add(utterance_id)
            audio = audio_by_id.pop(utterance_id, None)
            text = normalize_text(raw_text)
            if audio is None:
                report.skip(TRANSCRIPT_WITHOUT_AUDIO, utterance_id)
            elif not text:
                report.skip(EMPTY_TRANSCRIPT, utterance_id)
            else:
                candidates.append(_Candidate(utterance_id, audio, text, speaker))
        for utterance_id in sorted(audio_by_id):  # the flacs no transcript line claimed
            report.skip(AUDIO_WITHOUT_TRANSCRIPT, utterance_id)
    return candidates


def _read_transcript(path: Path) -> Iterator[tuple[str, str]]:
    """(utterance id, raw text) for every non-blank line of a `.trans.txt`; the text may be empty."""
    with open(path, "rb") as file:
        for line_number, raw_line in enumerate(file, start=1):
            try:
                line = raw_line.decode("utf-8").strip()
            except UnicodeDecodeError as error:
                raise ManifestError(path, line_number, f"not UTF-8 text ({error.reason})") from error
            if line:
                utterance_id, _, text = line.partition(" ")
                yield utterance_id, text


def _measure_audio(
    candidates: list[_Candidate], report: PrepReport, num_workers: int, progress: bool, subset: str
) -> list[Utterance]:
    """Utterances for the candidates whose audio header is readable and announces samples."""
    def read_header(candidate: _Candidate):
        try:
            return audio_info(candidate.audio)
        except AudioError as error:
            log.warning("skipping %s", error)  # the report keeps only the id; the problem is worth a line here
            return None

    # Header reads wait on the disk, not the interpreter, so threads overlap them well.
    with ThreadPoolExecutor(max_workers=num_workers) as pool:
        headers = list(tqdm(
            pool.map(read_header, candidates), total=len(candidates), desc=f"reading {subset}", unit=" files",
            disable=not progress,
        ))
    utterances = []
    for candidate, header in zip(candidates, headers):
        if header is None:
            report.skip(UNREADABLE_AUDIO, candidate.id)
        elif header.frames == 0:
            report.skip(EMPTY_AUDIO, candidate.id)
        else:
            utterances.append(
                Utterance(candidate.id, str(candidate.audio), header.duration, candidate.text, candidate.speaker)
            )
    return utterances


def _as_list(names) -> list[str]:
    """A sequence of names; a single name given as a string counts as one."""
    return [names] if isinstance(names, str) else list(names)
