"""Connected-digit utterances built from real isolated digits: the data stage of the digits recipe.

The Free Spoken Digit Dataset (FSDD) holds 3,000 tightly trimmed recordings of single spoken digits,
`<digit>_<speaker>_<take>.wav`, six speakers × ten digits × fifty takes, 8 kHz. Like TIDIGITS, the recipe wants
strings of one to seven digits, so `build_connected_digits` joins recordings of one speaker with short random pauses,
a little background noise (silences in real recordings are never digital zero) and millisecond fades (a trimmed clip
starts and ends mid-waveform, which would click), and writes them as 16 kHz 16-bit wavs with manifests:

    out_dir/wav/{train,dev,test}/<id>.wav
    out_dir/{train,dev,test}.jsonl            manifests, text like "FOUR SEVEN ONE"
    out_dir/{train,dev,test}_sources.jsonl    which recording each word came from, and where it lies in the wav
    out_dir/digits.stamp.json                 the arguments of the finished build, so a rerun can skip it

The splits keep every recording in one split only:
- train: takes 5-49 of every speaker but the test speaker;
- dev: takes 0-4 of the same speakers (FSDD's own test takes), for choosing checkpoints and settings;
- test: all fifty takes of the held-out test speaker, a voice that training and model selection never hear.
Every recording of a split appears in at least one of its utterances.

`single_digit_manifests` writes FSDD's own split of isolated digits (takes 0-4 test, 5-49 train, all six speakers),
pointing at the original files, to compare with numbers published on FSDD.
"""
import hashlib
import json
import shutil
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from tqdm import tqdm

from asr.audio import SAMPLE_RATE, audio_info, load_audio
from asr.data.fsdd import DIGITS, TAKES, find_fsdd_recordings, parse_fsdd_name
from asr.data.manifest import PrepReport, Utterance, write_manifest
from asr.errors import AsrError, AudioError, ConfigError
from asr.files import write_text_atomically

DIGIT_WORDS = ("ZERO", "ONE", "TWO", "THREE", "FOUR", "FIVE", "SIX", "SEVEN", "EIGHT", "NINE")
SPLITS = ("train", "dev", "test")
DEV_TAKES = range(0, 5)  # FSDD's official test takes
TRAIN_TAKES = range(5, len(TAKES))
STAMP_NAME = "digits.stamp.json"
# The skip reason of a recording the FSDD grid has but the folder lacks. Recordings that are there but cannot be
# used are skipped under the AudioError's problem ("no audio samples", "truncated or corrupt (...)", ...). The ids
# listed in the reports are recording names.
MISSING = "missing recording"


@dataclass(frozen=True)
class Composition:
    """How recordings are joined into one utterance; each range is sampled uniformly per utterance or per gap."""

    pause_seconds: tuple[float, float] = (0.05, 0.30)  # between two digits: fluent to deliberate
    # Before the first and after the last digit. From zero: recordings people transcribe are often trimmed as tightly
    # as FSDD's own, and a model that never met speech at an utterance's edge missed the words there.
    edge_silence_seconds: tuple[float, float] = (0.0, 0.30)
    noise_dbfs: tuple[float, float] = (-80.0, -70.0)  # noise floor RMS; the quietest FSDD take is -53 dBFS
    fade_seconds: float = 0.005  # ramps at each clip's edges, short enough to leave the speech untouched


@dataclass(frozen=True)
class _Recording:
    name: str  # file stem, e.g. "4_george_12"
    path: Path
    digit: int
    speaker: str
    take: int


def build_connected_digits(
    recordings_dir,
    out_dir,
    seed: int = 0,
    num_train: int = 3000,
    num_dev: int = 300,
    num_test: int = 300,
    min_digits: int = 1,
    max_digits: int = 7,
    test_speaker: str = "theo",
    progress: bool = True,
    composition: Composition = Composition(),
) -> dict[str, PrepReport]:
    """Write connected-digit train/dev/test sets built from the FSDD recordings in `recordings_dir`.

    Each utterance joins `min_digits` to `max_digits` recordings of one speaker (the count is uniform in that range,
    so single digits are among them). The defaults give about 2.2 hours of train audio (3,000 utterances of
    2.7 s on average, each train recording used about five times): varied enough for a small model to learn the
    digits, and small enough to keep training on two CPU cores practical. 300 dev and test utterances use each of
    their 250 and 500 recordings at least once; smaller counts than that coverage allows raise a ConfigError.

    The result depends only on the recordings and the arguments: the same seed gives byte-identical files. A rerun
    whose arguments and recordings match the stamp of a finished build returns that build's reports without work;
    otherwise the wav folders are removed and everything is written anew. Recordings that are missing from the
    FSDD grid or cannot be read are left out and listed in the reports; returns one PrepReport per split.
    """
    num_utterances = {"train": num_train, "dev": num_dev, "test": num_test}
    if not 1 <= min_digits <= max_digits:
        raise ConfigError(f"digit counts must satisfy 1 <= min_digits <= max_digits, got {min_digits} and {max_digits}")
    if seed < 0 or min(num_utterances.values()) < 0:
        raise ConfigError(f"seed and utterance counts must not be negative, got seed {seed} and {num_utterances}")
    out_dir = Path(out_dir)
    recordings = _find_recordings(recordings_dir)
    split_recordings, reports = _assign_splits(recordings, test_speaker, recordings_dir)
    for split in SPLITS:
        _check_coverage(split_recordings[split], num_utterances[split], max_digits, split, recordings_dir)

    stamp = {
        "seed": seed,
        "num_utterances": num_utterances,
        "min_digits": min_digits,
        "max_digits": max_digits,
        "test_speaker": test_speaker,
        "composition": asdict(composition),
        "recordings": _fingerprint(recordings),
    }
    finished = _read_stamp(out_dir)
    # Compared as JSON sees it: the stamp read back holds lists where `stamp` holds tuples.
    if finished is not None and finished["args"] == json.loads(json.dumps(stamp)):
        if all((out_dir / f"{split}.jsonl").is_file() for split in SPLITS):
            return {split: PrepReport(**report) for split, report in finished["reports"].items()}

    (out_dir / STAMP_NAME).unlink(missing_ok=True)
    for split_number, split in enumerate(SPLITS):
        waves = _load_recordings(split_recordings[split], reports[split])
        usable = [recording for recording in split_recordings[split] if recording.name in waves]
        if not usable:
            raise AsrError(f"{recordings_dir}: no usable recordings for the {split} split")
        plan_rng = np.random.default_rng([seed, split_number])
        plan = _plan_utterances(usable, num_utterances[split], min_digits, max_digits, plan_rng)
        reports[split].written = _write_split(out_dir, split, split_number, plan, waves, seed, composition, progress)

    finished = {split: {"written": report.written, "skipped": report.skipped} for split, report in reports.items()}
    write_text_atomically(out_dir / STAMP_NAME, json.dumps({"args": stamp, "reports": finished}, indent=2) + "\n")
    return reports


def single_digit_manifests(recordings_dir, out_dir) -> dict[str, PrepReport]:
    """Write FSDD's official split of isolated digits as `official_train.jsonl` and `official_test.jsonl`.

    Takes 0-4 of every speaker are the test set and takes 5-49 the train set, as published with FSDD. The
    manifests point at the original 8 kHz files by absolute path; unreadable or empty files are listed in the
    reports, one PrepReport per split ("train", "test").
    """
    out_dir = Path(out_dir)
    utterances = {"train": [], "test": []}
    reports = {"train": PrepReport(), "test": PrepReport()}
    for recording in _find_recordings(recordings_dir):
        split = "test" if recording.take in DEV_TAKES else "train"
        try:
            info = audio_info(recording.path)
        except AudioError as error:
            reports[split].skip(error.problem, recording.name)
            continue
        if info.frames == 0:
            reports[split].skip("no audio samples", recording.name)
            continue
        utterances[split].append(
            Utterance(
                id=recording.name,
                audio=str(recording.path.absolute()),
                duration=info.duration,
                text=DIGIT_WORDS[recording.digit],
                speaker=recording.speaker,
            )
        )
    for split, split_utterances in utterances.items():
        write_manifest(out_dir / f"official_{split}.jsonl", split_utterances)
        reports[split].written = len(split_utterances)
    return reports


def _find_recordings(recordings_dir) -> list[_Recording]:
    recordings = []
    for path in find_fsdd_recordings(recordings_dir):
        path = Path(path)
        digit, speaker, take = parse_fsdd_name(path.name)
        recordings.append(_Recording(path.stem, path, digit, speaker, take))
    return sorted(recordings, key=lambda recording: (recording.speaker, recording.digit, recording.take))


def _assign_splits(recordings, test_speaker, recordings_dir):
    """Recordings of each split, and a report per split listing the recordings of the FSDD grid the folder lacks."""
    speakers = sorted({recording.speaker for recording in recordings})
    if test_speaker not in speakers:
        raise ConfigError(f"{recordings_dir}: no recordings of test speaker {test_speaker!r}; speakers: {speakers}")
    if len(speakers) < 2:
        raise ConfigError(f"{recordings_dir}: only speaker {test_speaker!r}, none left for train and dev")

    split_recordings = {split: [] for split in SPLITS}
    for recording in recordings:
        if recording.speaker == test_speaker:
            split_recordings["test"].append(recording)
        elif recording.take in DEV_TAKES:
            split_recordings["dev"].append(recording)
        elif recording.take in TRAIN_TAKES:
            split_recordings["train"].append(recording)

    present = {recording.name for recording in recordings}
    reports = {split: PrepReport() for split in SPLITS}
    for speaker in speakers:
        if speaker == test_speaker:
            takes_of_split = {"test": TAKES}
        else:
            takes_of_split = {"train": TRAIN_TAKES, "dev": DEV_TAKES}
        for split, takes in takes_of_split.items():
            for name in (f"{digit}_{speaker}_{take}" for digit in DIGITS for take in takes):
                if name not in present:
                    reports[split].skip(MISSING, name)
    return split_recordings, reports


def _check_coverage(recordings, num_utterances, max_digits, split, recordings_dir) -> None:
    """Refuse an utterance count too small for every recording of the split to appear at least once."""
    recordings_per_speaker = Counter(recording.speaker for recording in recordings)
    if not recordings_per_speaker:
        raise AsrError(f"{recordings_dir}: no recordings for the {split} split")
    # Each speaker gets num_utterances // speakers utterances or one more, and each utterance holds max_digits at most.
    most_recordings = max(recordings_per_speaker.values())
    fewest_utterances = -(-most_recordings // max_digits) * len(recordings_per_speaker)
    if num_utterances < fewest_utterances:
        raise ConfigError(
            f"{num_utterances} {split} utterances of at most {max_digits} digits cannot use each of the "
            f"{len(recordings)} {split} recordings; ask for at least {fewest_utterances}"
        )


def _fingerprint(recordings) -> str:
    """A digest of the recordings' names and sizes: a changed corpus must not pass for the one already built."""
    digest = hashlib.sha256()
    for recording in recordings:
        digest.update(f"{recording.name}:{recording.path.stat().st_size}\n".encode())
    return digest.hexdigest()


def _load_recordings(recordings, report: PrepReport) -> dict[str, np.ndarray]:
    """Each recording by name as 16 kHz mono float32; those that cannot be used go into the report."""
    waves = {}
    for recording in recordings:
        try:
            waves[recording.name] = load_audio(recording.path, SAMPLE_RATE).numpy()
        except AudioError as error:
            report.skip(error.problem, recording.name)
    return waves


def _plan_utterances(recordings, num_utterances, min_digits, max_digits, rng):
    """Choose the speaker and the recordings of each utterance, using every recording at least once.

    `num_utterances` has passed `_check_coverage`, so each speaker has enough utterances to hold all recordings.

    Utterances are spread evenly over the speakers. Each speaker's recordings are dealt from a shuffled deck,
    reshuffled when it runs out, so the first pass through the deck covers them all; where the random digit counts
    would end before that, utterances are lengthened one digit at a time.
    """
    by_speaker = {}
    for recording in recordings:
        by_speaker.setdefault(recording.speaker, []).append(recording)
    speakers = sorted(by_speaker)
    utterance_speakers = rng.permutation(np.resize(speakers, num_utterances)).tolist()

    digit_counts = rng.integers(min_digits, max_digits, endpoint=True, size=num_utterances)
    for speaker in speakers:
        indices = [i for i, s in enumerate(utterance_speakers) if s == speaker]
        while digit_counts[indices].sum() < len(by_speaker[speaker]):
            room = [i for i in indices if digit_counts[i] < max_digits]
            digit_counts[rng.choice(room)] += 1

    decks = {speaker: [] for speaker in speakers}
    plan = []
    for speaker, count in zip(utterance_speakers, digit_counts):
        chosen = []
        for _ in range(count):
            if not decks[speaker]:
                decks[speaker] = [by_speaker[speaker][i] for i in rng.permutation(len(by_speaker[speaker]))]
            chosen.append(decks[speaker].pop())
        plan.append((speaker, chosen))
    return plan


def _write_split(out_dir, split, split_number, plan, waves, seed, composition, progress) -> int:
    """Render and write the planned utterances of one split, its manifest and its sources; returns their number."""
    wav_dir = out_dir / "wav" / split
    if wav_dir.exists():
        shutil.rmtree(wav_dir)  # a rebuild must not leave wavs of the old build behind
    wav_dir.mkdir(parents=True)

    utterances, sources = [], []
    for index, (speaker, chosen) in enumerate(tqdm(plan, desc=f"digits {split}", disable=not progress)):
        utterance_id = f"{split}-{speaker}-{index:05d}"
        # One generator per utterance, seeded by its place: the audio does not depend on what was drawn before it.
        rng = np.random.default_rng([seed, split_number, index])
        samples, spans = join_recordings([waves[recording.name] for recording in chosen], rng, composition)
        wav_path = wav_dir / f"{utterance_id}.wav"
        sf.write(str(wav_path), samples, SAMPLE_RATE, subtype="PCM_16")
        text = " ".join(DIGIT_WORDS[recording.digit] for recording in chosen)
        # write_manifest stores the path relative to the manifest's folder, so out_dir can be moved as a whole.
        utterances.append(Utterance(utterance_id, str(wav_path.absolute()), len(samples) / SAMPLE_RATE, text, speaker))
        sources.append(
            {
                "id": utterance_id,
                "speaker": speaker,
                "text": text,
                "sources": [
                    {"file": recording.path.name, "start": start / SAMPLE_RATE, "end": end / SAMPLE_RATE}
                    for recording, (start, end) in zip(chosen, spans)
                ],
            }
        )
    write_manifest(out_dir / f"{split}.jsonl", utterances)
    write_text_atomically(out_dir / f"{split}_sources.jsonl", "".join(json.dumps(source) + "\n" for source in sources))
    return len(utterances)


def join_recordings(clips, rng, composition) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Lay the clips end to end over a noise floor; returns int16 samples and each clip's (start, end) sample."""
    edges = rng.uniform(*composition.edge_silence_seconds, size=2)
    pauses = rng.uniform(*composition.pause_seconds, size=len(clips) - 1)
    gaps = [round(seconds * SAMPLE_RATE) for seconds in (edges[0], *pauses, edges[1])]
    noise_rms = 10 ** (rng.uniform(*composition.noise_dbfs) / 20)

    total = sum(gaps) + sum(len(clip) for clip in clips)
    wave = rng.standard_normal(total) * noise_rms
    spans = []
    position = gaps[0]
    for clip, gap_after in zip(clips, gaps[1:]):
        wave[position : position + len(clip)] += _fade_edges(clip, round(composition.fade_seconds * SAMPLE_RATE))
        spans.append((position, position + len(clip)))
        position += len(clip) + gap_after
    # soundfile reads int16 as value / 32768, so scaling by 32768 returns the same floats.
    return np.clip(np.round(wave * 32768), -32768, 32767).astype(np.int16), spans


def _fade_edges(clip: np.ndarray, fade_samples: int) -> np.ndarray:
    """The clip with half-cosine ramps from and to zero at its edges."""
    fade_samples = min(fade_samples, len(clip) // 2)
    ramp = 0.5 - 0.5 * np.cos(np.pi * np.arange(fade_samples) / fade_samples)
    faded = clip.astype(np.float64)
    faded[:fade_samples] *= ramp
    faded[len(faded) - fade_samples :] *= ramp[::-1]
    return faded


def _read_stamp(out_dir: Path) -> dict | None:
    try:
        return json.loads((out_dir / STAMP_NAME).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
