"""Importing a Kaldi data folder: real recordings in, a manifest out, every left-out utterance counted by reason."""
import csv
import os
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile

from asr.data import kaldi
from asr.data.kaldi import import_kaldi
from asr.data.manifest import read_manifest
from asr.errors import ManifestError
from asr.text import CharTokenizer


@pytest.fixture(scope="module")
def librispeech_bits(data_dir):
    folder = data_dir / "sentences" / "librispeech_bits"
    transcripts = dict(line.split(" ", 1) for line in (folder / "text").read_text().splitlines())
    with open(folder / "utt_info.tsv", newline="") as tsv:
        durations = {row["utt_id"]: float(row["duration_s"]) for row in csv.DictReader(tsv, delimiter="\t")}
    return folder, transcripts, durations


def test_import_writes_real_utterances_and_reports_every_skip(tmp_path, librispeech_bits):
    folder, transcripts, durations = librispeech_bits
    (tmp_path / "not-audio.wav").write_text("this is a text file, not a RIFF header")
    (tmp_path / "empty.wav").write_bytes(b"")
    soundfile.write(tmp_path / "no-samples.wav", np.zeros(0, dtype=np.float32), 16000)  # a header, no audio
    ran_marker = tmp_path / "the-pipe-ran"
    wav_scp_lines = [f"{utt_id} {folder / 'wav' / (utt_id + '.wav')}" for utt_id in sorted(transcripts)] + [
        f"piped touch {ran_marker} |",
        f"missing {tmp_path / 'nowhere.wav'}",
        f"corrupt {tmp_path / 'not-audio.wav'}",
        f"empty {tmp_path / 'empty.wav'}",
        f"silent {tmp_path / 'no-samples.wav'}",
        f"untranscribed {folder / 'wav' / '61-70968-0000.wav'}",
        f"punctuation {folder / 'wav' / '61-70968-0000.wav'}",
        f"chinese {folder / 'wav' / '61-70968-0000.wav'}",
    ]
    text_lines = [f"{utt_id} {words.lower()}, indeed!" for utt_id, words in transcripts.items()] + [
        "piped HELLO", "missing HELLO", "corrupt HELLO", "empty HELLO", "silent HELLO",
        "punctuation ?! ... —", "chinese 你好 世界", "orphan NO AUDIO FOR THIS ONE",
    ]
    (tmp_path / "wav.scp").write_text("\n".join(wav_scp_lines) + "\n")
    (tmp_path / "text").write_text("\n".join(text_lines) + "\n")
    out = tmp_path / "out" / "train.jsonl"

    report = import_kaldi(tmp_path / "wav.scp", tmp_path / "text", out, tokenizer=CharTokenizer(), num_workers=3)

    assert not ran_marker.exists()
    assert report.written == len(transcripts) == 6
    assert report.skipped == {
        kaldi.PIPED_COMMAND: ["piped"],
        kaldi.AUDIO_MISSING: ["missing"],
        kaldi.AUDIO_UNREADABLE: ["corrupt", "empty"],
        kaldi.AUDIO_EMPTY: ["silent"],
        kaldi.NO_TRANSCRIPT: ["untranscribed"],
        kaldi.NO_USABLE_CHARACTERS: ["punctuation"],
        kaldi.UNKNOWN_CHARACTERS: ["chinese"],
        kaldi.NO_AUDIO: ["orphan"],
    }
    assert "skipped 9" in report.summary()
    utterances = read_manifest(out)
    assert [u.id for u in utterances] == sorted(transcripts)  # wav.scp order
    for utterance in utterances:
        assert utterance.text == transcripts[utterance.id] + " INDEED"  # normalized
        assert utterance.duration == pytest.approx(durations[utterance.id], abs=5e-4)
        assert utterance.audio == str(folder / "wav" / f"{utterance.id}.wav")
        assert utterance.speaker is None


def test_without_a_tokenizer_any_alphabet_is_kept_and_speakers_come_from_utt2spk(tmp_path, librispeech_bits):
    folder, _, _ = librispeech_bits
    audio = folder / "wav" / "1089-134691-0000.wav"
    (tmp_path / "wav.scp").write_text(f"utt1 {audio}\nutt2   {audio}\n")
    (tmp_path / "text").write_text("utt1 你好 世界\nutt2 Grüße\n")
    (tmp_path / "utt2spk").write_text("utt1 spkA\nutt2 spkB\n")
    report = import_kaldi(tmp_path / "wav.scp", tmp_path / "text", tmp_path / "m.jsonl", utt2spk=tmp_path / "utt2spk")
    assert report.written == 2 and report.skipped == {}
    utterances = read_manifest(tmp_path / "m.jsonl")
    assert [(u.text, u.speaker) for u in utterances] == [("你好 世界", "spkA"), ("GRUSSE", "spkB")]


def test_relative_paths_resolve_against_the_current_directory_as_in_kaldi(tmp_path, librispeech_bits, monkeypatch):
    folder, _, _ = librispeech_bits
    monkeypatch.chdir(folder)
    (tmp_path / "wav.scp").write_text("utt1 wav/1089-134691-0000.wav\n")
    (tmp_path / "text").write_text("utt1 HE COULD WAIT NO LONGER\n")
    import_kaldi(tmp_path / "wav.scp", tmp_path / "text", tmp_path / "m.jsonl")
    audio = read_manifest(tmp_path / "m.jsonl")[0].audio
    assert Path(audio).is_absolute()
    assert os.path.samefile(audio, folder / "wav" / "1089-134691-0000.wav")  # ../shared may be a symlink


@pytest.mark.parametrize("wav_scp, problem", [
    ("utt1 /a.wav\nutt2\n", "wav.scp:2: expected '<utterance-id> <value>', got 'utt2'"),
    ("utt1 /a.wav\n\nutt1 /b.wav\n", "wav.scp:3: duplicate id 'utt1' (first on line 1)"),
])
def test_malformed_tables_raise_with_the_line(tmp_path, wav_scp, problem):
    (tmp_path / "wav.scp").write_text(wav_scp)
    (tmp_path / "text").write_text("utt1 HELLO\n")
    with pytest.raises(ManifestError, match=re.escape(problem)):
        import_kaldi(tmp_path / "wav.scp", tmp_path / "text", tmp_path / "m.jsonl")
    assert not (tmp_path / "m.jsonl").exists()


def test_an_empty_transcript_line_is_a_skip_not_an_error(tmp_path, librispeech_bits):
    folder, _, _ = librispeech_bits
    (tmp_path / "wav.scp").write_text(f"utt1 {folder / 'wav' / '1089-134691-0000.wav'}\n")
    (tmp_path / "text").write_text("utt1\n")
    report = import_kaldi(tmp_path / "wav.scp", tmp_path / "text", tmp_path / "m.jsonl")
    assert report.written == 0 and report.skipped == {kaldi.NO_USABLE_CHARACTERS: ["utt1"]}
    assert read_manifest(tmp_path / "m.jsonl") == []
