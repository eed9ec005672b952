"""The connected-digit sets built from FSDD: splits, coverage, audio, determinism and reruns, on the real recordings."""
import hashlib
import json
import os
import re
from pathlib import Path

import librosa
import numpy as np
import pytest
import soundfile as sf

from asr.data.digits import Composition, build_connected_digits, single_digit_manifests
from asr.data.manifest import read_manifest
from asr.errors import AsrError, ConfigError

WORDS = "ZERO ONE TWO THREE FOUR FIVE SIX SEVEN EIGHT NINE".split()
NAME = re.compile(r"(\d)_([a-z]+)_(\d+)\.wav")
# Near the fewest utterances that can use every recording at seven digits each (2250 train recordings over five
# speakers: 65 utterances each; 500 test: 72), to keep the builds quick; dev has room for digit counts left random.
SMALL = dict(num_train=350, num_dev=100, num_test=80)


# A folder of the first ten takes keeps builds quicker still where the grid's full coverage is not the point:
# 50 train and 50 dev recordings per speaker (8 utterances each at least), 100 of the test speaker (15).
FEW = dict(num_train=60, num_dev=60, num_test=30)


def link_recordings(source_dir, dest_dir, keep):
    """A folder of symbolic links to the recordings of `source_dir` whose names `keep` accepts."""
    dest_dir.mkdir()
    for path in Path(source_dir).glob("*.wav"):
        if keep(path.name):
            (dest_dir / path.name).symlink_to(path.resolve())
    return dest_dir


def read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def source_files(sources_path):
    """The names of the recordings that a `<split>_sources.jsonl` file says were used."""
    return {source["file"] for record in read_jsonl(sources_path) for source in record["sources"]}


def file_digests(folder):
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(Path(folder).rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="module")
def built(fsdd_dir, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("digits")
    reports = build_connected_digits(fsdd_dir, out_dir, seed=3, progress=False, **SMALL)
    return out_dir, reports


@pytest.fixture(scope="module")
def first_takes(fsdd_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("fsdd") / "recordings"
    return link_recordings(fsdd_dir, folder, lambda name: int(NAME.fullmatch(name).group(3)) < 10)


def test_reports_count_what_was_written(built):
    out_dir, reports = built
    for split, count in zip(("train", "dev", "test"), SMALL.values()):
        assert reports[split].written == count
        assert reports[split].skipped == {}
        assert len(read_jsonl(out_dir / f"{split}.jsonl")) == count


def test_splits_are_disjoint_and_follow_fsdd_takes(built):
    out_dir, _ = built
    used = {}
    for split in ("train", "dev", "test"):
        used[split] = {NAME.fullmatch(name).groups() for name in source_files(out_dir / f"{split}_sources.jsonl")}
    assert not used["train"] & used["dev"] and not used["train"] & used["test"] and not used["dev"] & used["test"]
    assert {speaker for _, speaker, _ in used["test"]} == {"theo"}
    assert "theo" not in {speaker for _, speaker, _ in used["train"] | used["dev"]}
    assert all(int(take) >= 5 for _, _, take in used["train"])
    assert all(int(take) < 5 for _, _, take in used["dev"])


def test_every_recording_of_each_split_is_used(built, fsdd_dir):
    out_dir, _ = built
    all_names = [path.name for path in Path(fsdd_dir).glob("*.wav")]
    expected = {
        "train": {n for n in all_names if "_theo_" not in n and int(NAME.fullmatch(n).group(3)) >= 5},
        "dev": {n for n in all_names if "_theo_" not in n and int(NAME.fullmatch(n).group(3)) < 5},
        "test": {n for n in all_names if "_theo_" in n},
    }
    assert [len(expected[s]) for s in ("train", "dev", "test")] == [2250, 250, 500]
    for split, names in expected.items():
        assert source_files(out_dir / f"{split}_sources.jsonl") == names


def test_text_and_speaker_match_the_recordings_used(built):
    out_dir, _ = built
    for split in ("train", "dev", "test"):
        manifest = {u["id"]: u for u in read_jsonl(out_dir / f"{split}.jsonl")}
        for record in read_jsonl(out_dir / f"{split}_sources.jsonl"):
            utterance = manifest[record["id"]]
            digits, speakers, _ = zip(*(NAME.fullmatch(s["file"]).groups() for s in record["sources"]))
            assert utterance["text"] == " ".join(WORDS[int(d)] for d in digits)
            assert set(speakers) == {utterance["speaker"]}


def test_digit_counts_span_one_to_seven(built):
    out_dir, _ = built
    counts = {len(u["text"].split()) for u in read_jsonl(out_dir / "dev.jsonl")}
    assert counts == set(range(1, 8))


def test_wavs_are_16k_mono_int16_with_manifest_durations(built):
    out_dir, _ = built
    for split in ("train", "dev", "test"):
        assert all(Path(utterance.audio).is_file() for utterance in read_manifest(out_dir / f"{split}.jsonl"))
        for utterance in read_jsonl(out_dir / f"{split}.jsonl"):
            info = sf.info(str(out_dir / utterance["audio"]))
            assert (info.samplerate, info.channels, info.subtype, info.format) == (16000, 1, "PCM_16", "WAV")
            assert utterance["duration"] == pytest.approx(info.frames / 16000, abs=1e-6)


def test_wav_length_is_sources_plus_pauses(built, fsdd_dir):
    """Each word spans its whole recording, and only pauses and edge silences of the configured length lie around."""
    out_dir, _ = built
    composition = Composition()
    for record in read_jsonl(out_dir / "dev_sources.jsonl"):
        wav_seconds = sf.info(str(out_dir / "wav" / "dev" / f"{record['id']}.wav")).duration
        source_seconds = [sf.info(str(Path(fsdd_dir) / s["file"])).duration for s in record["sources"]]
        spans = [(s["start"], s["end"]) for s in record["sources"]]
        for (start, end), seconds in zip(spans, source_seconds):
            assert end - start == pytest.approx(seconds, abs=1e-6)
        pauses = [next_start - end for (_, end), (next_start, _) in zip(spans, spans[1:])]
        low, high = composition.pause_seconds
        assert all(low - 1e-4 <= pause <= high + 1e-4 for pause in pauses)
        low, high = composition.edge_silence_seconds
        assert low - 1e-4 <= spans[0][0] <= high + 1e-4
        assert low - 1e-4 <= wav_seconds - spans[-1][1] <= high + 1e-4


def test_each_word_holds_its_recording_and_silences_hold_low_noise(built, fsdd_dir):
    out_dir, _ = built
    for record in read_jsonl(out_dir / "test_sources.jsonl")[:10]:
        wave, _ = sf.read(str(out_dir / "wav" / "test" / f"{record['id']}.wav"))
        silence = np.ones(len(wave), dtype=bool)
        for source in record["sources"]:
            start, end = round(source["start"] * 16000), round(source["end"] * 16000)
            silence[start:end] = False
            original, rate = sf.read(str(Path(fsdd_dir) / source["file"]))
            # scipy's polyphase filter: a resampler independent of the soxr one the build uses.
            reference = librosa.resample(original, orig_sr=rate, target_sr=16000, res_type="polyphase")
            segment = wave[start:end]
            assert len(segment) == len(reference)
            assert np.corrcoef(segment, reference)[0, 1] > 0.99
            # Faded in and out: the clip's edges carry only the noise floor, whatever the recording starts with.
            assert abs(segment[0]) < 3e-3 and abs(segment[-1]) < 3e-3
        noise_dbfs = 20 * np.log10(np.sqrt(np.mean(wave[silence] ** 2)))
        assert -85 < noise_dbfs < -65


def test_same_seed_gives_identical_files_and_another_seed_does_not(first_takes, tmp_path):
    build_connected_digits(first_takes, tmp_path / "first", seed=3, progress=False, **FEW)
    build_connected_digits(first_takes, tmp_path / "again", seed=3, progress=False, **FEW)
    assert file_digests(tmp_path / "again") == file_digests(tmp_path / "first")
    build_connected_digits(first_takes, tmp_path / "other", seed=4, progress=False, **FEW)
    assert (tmp_path / "other" / "dev.jsonl").read_bytes() != (tmp_path / "first" / "dev.jsonl").read_bytes()


def test_rerun_skips_and_changed_arguments_rebuild(first_takes, tmp_path):
    out_dir = tmp_path / "digits"
    first = build_connected_digits(first_takes, out_dir, progress=False, **FEW)
    manifest = out_dir / "dev.jsonl"
    os.utime(manifest, ns=(0, 0))  # a rebuild would give it the current time again
    rerun = build_connected_digits(first_takes, out_dir, progress=False, **FEW)
    assert manifest.stat().st_mtime_ns == 0
    assert {split: (report.written, report.skipped) for split, report in rerun.items()} == {
        split: (report.written, report.skipped) for split, report in first.items()
    }

    fewer_dev = dict(FEW, num_dev=FEW["num_dev"] - 5)
    build_connected_digits(first_takes, out_dir, progress=False, **fewer_dev)
    assert manifest.stat().st_mtime_ns != 0
    assert len(read_jsonl(manifest)) == fewer_dev["num_dev"]
    # No wavs are left over from the first build.
    assert len(list((out_dir / "wav" / "dev").glob("*.wav"))) == fewer_dev["num_dev"]


def test_missing_and_unreadable_recordings_are_reported_and_left_out(first_takes, tmp_path):
    recordings = link_recordings(first_takes, tmp_path / "recordings", lambda name: name != "3_george_7.wav")
    (recordings / "5_lucas_2.wav").unlink()
    (recordings / "5_lucas_2.wav").write_bytes(b"not a wav file at all")

    reports = build_connected_digits(recordings, tmp_path / "out", progress=False, **FEW)
    # Takes 10-49 are missing too: 40 of each digit and speaker.
    [(reason, names)] = reports["train"].skipped.items()
    assert reason == "missing recording" and len(names) == 5 * 10 * 40 + 1 and "3_george_7" in names
    [(reason, names)] = reports["dev"].skipped.items()
    assert names == ["5_lucas_2"] and "not an audio file" in reason
    assert len(reports["test"].skipped["missing recording"]) == 10 * 40
    used = source_files(tmp_path / "out" / "train_sources.jsonl") | source_files(tmp_path / "out" / "dev_sources.jsonl")
    assert "3_george_7.wav" not in used and "5_lucas_2.wav" not in used


def test_unusable_arguments_and_folders_raise_clear_errors(fsdd_dir, tmp_path):
    with pytest.raises(ConfigError, match="ask for at least 72"):
        build_connected_digits(fsdd_dir, tmp_path / "out", progress=False, **dict(SMALL, num_test=50))
    with pytest.raises(ConfigError, match="'alice'"):
        build_connected_digits(fsdd_dir, tmp_path / "out", test_speaker="alice", progress=False, **SMALL)
    with pytest.raises(ConfigError, match="ask for at least 325"):
        build_connected_digits(fsdd_dir, tmp_path / "out", progress=False, **dict(SMALL, num_train=324))
    with pytest.raises(ConfigError, match="min_digits"):
        build_connected_digits(fsdd_dir, tmp_path / "out", min_digits=3, max_digits=2, progress=False)
    missing = tmp_path / "no-such-folder"
    with pytest.raises(AsrError, match="no-such-folder"):
        build_connected_digits(missing, tmp_path / "out", progress=False)


def test_single_digit_manifests_follow_fsdd_official_split(fsdd_dir, tmp_path):
    reports = single_digit_manifests(fsdd_dir, tmp_path)
    assert (reports["train"].written, reports["test"].written) == (2700, 300)
    for split, takes in (("train", range(5, 50)), ("test", range(5))):
        utterances = read_jsonl(tmp_path / f"official_{split}.jsonl")
        assert len({u["speaker"] for u in utterances}) == 6
        for utterance in utterances:
            digit, speaker, take = NAME.fullmatch(Path(utterance["audio"]).name).groups()
            assert int(take) in takes and speaker == utterance["speaker"]
            assert utterance["text"] == WORDS[int(digit)]
            assert Path(utterance["audio"]).is_absolute()
        for utterance in utterances[::100]:
            assert utterance["duration"] == pytest.approx(sf.info(utterance["audio"]).duration, abs=1e-6)
