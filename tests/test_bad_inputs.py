"""Every entry point that reads audio or text, fed the bad-input corpus (tests/bad_inputs).

Each case must get a correct result, a clear error naming the file and the problem, or, in a batch job, a skip that
is counted and listed; nothing may crash, and every utterance given must come out either processed or listed.

transcribe and evaluate run with `BurstListener`, a stand-in for a trained model that writes one word a tone burst:
every readable recording of the corpus holds the same bursts, so each must come out as the same words whatever its
format, rate or channel count.
"""
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from bad_inputs import corpus
from bad_inputs.corpus import AUDIO_CASE, AUDIO_CASES, MANIFEST_CASES, SAMPLE_RATE, TEXT_CASES

import asr.checkpoint
import asr.train
from asr.cli import main
from asr.data import kaldi, librispeech
from asr.text import CharTokenizer, normalize_text

pytest_plugins = ["bad_inputs.fixtures"]  # the bad_corpus fixture

REPO = Path(__file__).resolve().parents[1]
TINY_CONFIG = REPO / "tests" / "data" / "tiny.yaml"
READABLE = [case for case in AUDIO_CASES if case.readable]
UNREADABLE = [case for case in AUDIO_CASES if not case.readable]
# Unreadable recordings whose header is whole: preparation reads headers only, so it writes them into the manifest,
# and what decodes the audio (training, transcribe, evaluate) refuses them.
WHOLE_HEADER = {"truncated.flac", "nan.wav", "inf.wav"}
# transcribe and evaluate search a folder given as a file for audio files, and say so.
TRANSCRIBE_PROBLEM = {case.name: case.problem for case in UNREADABLE} | {"folder.flac": "a folder without audio files"}
SAMPLES_PER_FRAME = 640  # 40 ms, the real model's output frame


class BurstListener:
    """A recognizer (asr.backend.SpeechRecognizer) that writes "A" for each 40 ms frame louder than -40 dBFS and the
    word delimiter for the others, so that greedy decoding hears one word "A" a tone burst. Records the longest
    stretch of audio it is given at once."""

    normalization = "utterance"
    exposes_features = False
    edge_pad_seconds = 0.0
    word_span = None
    source_path = None

    def __init__(self):
        self.tokenizer = CharTokenizer()
        self.frame_shift = SAMPLES_PER_FRAME / SAMPLE_RATE
        self.longest_input = 0

    def log_probs(self, audio, audio_lengths, speaker_cmvn=None):
        self.longest_input = max(self.longest_input, audio.shape[1])
        frames = -(-audio.shape[1] // SAMPLES_PER_FRAME)
        padded = np.pad(audio, ((0, 0), (0, frames * SAMPLES_PER_FRAME - audio.shape[1])))
        loud = np.sqrt(np.mean(np.square(padded.reshape(len(audio), frames, SAMPLES_PER_FRAME)), axis=-1)) > 0.01
        tokens = self.tokenizer.tokens
        ids = np.where(loud, tokens.index("A"), tokens.index("|"))
        logits = 10.0 * np.eye(len(tokens), dtype=np.float32)[ids]
        log_probs = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
        return log_probs, (audio_lengths + SAMPLES_PER_FRAME - 1) // SAMPLES_PER_FRAME


@pytest.fixture
def listener(monkeypatch):
    """The BurstListener, loaded by the CLI whatever --model names."""
    model = BurstListener()
    monkeypatch.setattr(asr.checkpoint, "load_model", lambda path, device: model)
    return model


def assert_none_lost(given, processed, listed):
    """Every utterance given was either processed or listed as skipped, never both."""
    given, processed, listed = set(given), set(processed), set(listed)
    assert given - processed - listed == set(), "lost without a word"
    assert processed & listed == set()
    assert processed | listed == given


def printed_skips(summary: str) -> dict[str, list[str]]:
    """reason → ids, from a PrepReport summary (every reason here has at most 5 ids, so all are printed)."""
    return {match[1]: match[3].split(", ") for match in re.finditer(r"^  (.+): (\d+) \((.*)\)$", summary, re.M)}


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def read_tsv(path):
    """The rows of a table with a header line, as dicts."""
    header, *lines = path.read_text(encoding="utf-8").splitlines()
    return [dict(zip(header.split("\t"), line.split("\t"))) for line in lines]


# ----------------------------------------------------------------------------------------------------------------
# prepare


def test_prepare_librispeech_writes_what_it_can_read_and_lists_the_rest(bad_corpus, tmp_path, capsys, caplog):
    tree = corpus.write_librispeech_tree(tmp_path / "src", bad_corpus.audio, bad_corpus.reference)
    with caplog.at_level(logging.WARNING):
        assert main(["prepare", "librispeech", "--root", str(tree.root), "--subsets", tree.subset,
                     "--out-dir", str(tmp_path / "out"), "--workers", "2"]) == 0
    expected_skips = {
        "corrupt_header.wav": librispeech.UNREADABLE_AUDIO, "zero_length.wav": librispeech.UNREADABLE_AUDIO,
        "text.wav": librispeech.UNREADABLE_AUDIO, "folder.flac": librispeech.UNREADABLE_AUDIO,
        "no_samples.wav": librispeech.EMPTY_AUDIO, "missing.wav": librispeech.TRANSCRIPT_WITHOUT_AUDIO,
        "punctuation_only": librispeech.EMPTY_TRANSCRIPT,
        "chapter without .trans.txt": librispeech.MISSING_TRANSCRIPT_FILE,
        "transcript line without audio": librispeech.TRANSCRIPT_WITHOUT_AUDIO,
        "audio without transcript line": librispeech.AUDIO_WITHOUT_TRANSCRIPT,
    }
    listed = {utterance_id: reason for reason, ids in printed_skips(capsys.readouterr().out).items()
              for utterance_id in ids}
    assert {tree.case_of[utterance_id]: reason for utterance_id, reason in listed.items()} == expected_skips
    written = {record["id"]: record for record in read_jsonl(tmp_path / "out" / f"{tree.subset}.jsonl")}
    assert_none_lost(tree.case_of, written, listed)

    text_cases = {case.id: case for case in TEXT_CASES}
    for utterance_id, record in written.items():
        case = tree.case_of[utterance_id]
        if case in text_cases:  # kept as normalized, whatever its script
            assert record["text"] == normalize_text(text_cases[case].text) != "", text_cases[case].what
        else:
            assert AUDIO_CASE[case].readable or case in WHOLE_HEADER
            assert record["duration"] == pytest.approx(AUDIO_CASE[case].duration)
    # The reason an unreadable file was left out is logged with its path.
    for utterance_id, case in tree.case_of.items():
        if expected_skips.get(case) == librispeech.UNREADABLE_AUDIO:
            problem = AUDIO_CASE[case].problem
            assert any(utterance_id in message and problem in message for message in caplog.messages), case


def test_prepare_kaldi_writes_what_it_can_read_and_lists_the_rest(bad_corpus, tmp_path, capsys, caplog):
    wav_scp, text = corpus.write_kaldi_folder(tmp_path / "kaldi", bad_corpus.audio, bad_corpus.reference)
    with caplog.at_level(logging.WARNING):
        assert main(["prepare", "kaldi", "--wav-scp", str(wav_scp), "--text", str(text),
                     "--out-dir", str(tmp_path / "out"), "--name", "train"]) == 0
    expected_skips = {
        "corrupt_header.wav": kaldi.AUDIO_UNREADABLE, "zero_length.wav": kaldi.AUDIO_UNREADABLE,
        "text.wav": kaldi.AUDIO_UNREADABLE, "folder.flac": kaldi.AUDIO_UNREADABLE,
        "no_samples.wav": kaldi.AUDIO_EMPTY, "missing.wav": kaldi.AUDIO_MISSING,
        "punctuation_only": kaldi.NO_USABLE_CHARACTERS, "untranscribed": kaldi.NO_TRANSCRIPT,
        "unrecorded": kaldi.NO_AUDIO,
    }
    listed = {utterance_id: reason for reason, ids in printed_skips(capsys.readouterr().out).items()
              for utterance_id in ids}
    assert listed == expected_skips
    written = {record["id"]: record for record in read_jsonl(tmp_path / "out" / "train.jsonl")}
    given = [line.split()[0] for path in (wav_scp, text) for line in path.read_text().splitlines()]
    assert_none_lost(given, written, listed)
    assert {name for name in written if name in AUDIO_CASE} == {case.name for case in READABLE} | WHOLE_HEADER
    for case in READABLE:
        assert written[case.name]["duration"] == pytest.approx(case.duration)
    assert written["cjk"]["text"] == "日本語 中文" and written["emoji"]["text"] == "HELLO 😀 WORLD"
    for name, reason in expected_skips.items():
        if reason == kaldi.AUDIO_UNREADABLE:
            assert any(str(bad_corpus.audio[name]) in message and AUDIO_CASE[name].problem in message
                       for message in caplog.messages), name


# ----------------------------------------------------------------------------------------------------------------
# training


def test_cmvn_estimation_leaves_out_unreadable_audio_and_names_it(bad_corpus, tmp_path, capsys, caplog):
    # Without the hour-long recording: reading all of it is the trainer's job to avoid (data.max_duration).
    lines = [line for line in bad_corpus.manifest.read_text(encoding="utf-8").splitlines() if "hour.wav" not in line]
    manifest = corpus.write_lines(tmp_path / "no_hour.jsonl", lines)
    with caplog.at_level(logging.WARNING):
        assert main(["cmvn", "--manifest", str(manifest), "--out", str(tmp_path / "cmvn.json")]) == 0
    readable_utterances = len(lines) - len(UNREADABLE)
    assert f"of {readable_utterances} utterances" in capsys.readouterr().out
    assert json.loads((tmp_path / "cmvn.json").read_text())["utterances"] == readable_utterances
    (warning,) = [message for message in caplog.messages if "CMVN" in message]
    assert f"left out {len(UNREADABLE)} of {len(lines)}" in warning
    for case in UNREADABLE:
        assert f"{bad_corpus.audio[case.name]}: {case.problem}" in warning

    nothing_readable = corpus.write_lines(tmp_path / "unreadable.jsonl", [
        corpus.manifest_line(case.name, bad_corpus.audio[case.name], case.words) for case in UNREADABLE])
    assert main(["cmvn", "--manifest", str(nothing_readable), "--out", str(tmp_path / "none.json")]) == 1
    first = UNREADABLE[0]
    assert capsys.readouterr().err.splitlines()[-1].startswith(
        f"asr cmvn: error: cannot estimate CMVN statistics: the audio of none of the {len(UNREADABLE)} "
        f"utterances can be read (first: {bad_corpus.audio[first.name]}: {first.problem}")
    assert not (tmp_path / "none.json").exists()


def test_training_lists_every_utterance_it_does_not_train_on_once(bad_corpus, tmp_path, monkeypatch):
    trained = []
    collate = asr.train.collate

    def recording_collate(items):
        batch = collate(items)
        trained.extend(batch.ids)
        return batch

    monkeypatch.setattr(asr.train, "collate", recording_collate)
    exp = tmp_path / "exp"
    # Global CMVN statistics too: estimating them reads every training file before the first step.
    assert main(["train", "--config", str(TINY_CONFIG), "--exp-dir", str(exp), "--quiet", "--device", "cpu",
                 f"data.train={bad_corpus.manifest}", "features.normalization=global", "train.epochs=2"]) == 0

    skipped = dict(line.split("\t") for line in (exp / "skipped.tsv").read_text(encoding="utf-8").splitlines())
    given = [case.name for case in AUDIO_CASES] + [case.id for case in TEXT_CASES]
    assert_none_lost(given, set(trained), skipped)
    assert len(skipped) == len((exp / "skipped.tsv").read_text(encoding="utf-8").splitlines())  # each once
    for case in UNREADABLE:  # met in both epochs, listed once
        assert skipped[case.name].startswith(f"unreadable audio: {bad_corpus.audio[case.name]}: {case.problem}")
    assert skipped["hour.wav"].startswith("longer than data.max_duration")
    assert skipped["punctuation_only"] == "transcript has no usable characters"
    assert skipped["cjk"].startswith("characters the tokenizer lacks") and "😀" in skipped["emoji"]
    assert {case.name for case in READABLE if case.name != "hour.wav"} | {"accents"} == set(trained)
    assert f"{len(UNREADABLE)} unreadable audio" in (exp / "train.log").read_text(encoding="utf-8")


@pytest.mark.parametrize("case", MANIFEST_CASES, ids=lambda case: case.what)
@pytest.mark.parametrize("command", ["train", "evaluate", "cmvn", "tokenizer"])
def test_a_bad_manifest_line_stops_every_command_naming_file_and_line(bad_corpus, tmp_path, capsys, listener,
                                                                       case, command):
    manifest = corpus.write_bad_manifest(tmp_path, case, bad_corpus.reference)
    arguments = {
        "train": ["--config", str(TINY_CONFIG), "--exp-dir", str(tmp_path / "exp"), "--quiet",
                  f"data.train={manifest}"],
        "evaluate": ["--model", "listener.pt", "--manifest", str(manifest)],
        "cmvn": ["--manifest", str(manifest), "--out", str(tmp_path / "cmvn.json")],
        "tokenizer": ["--manifest", str(manifest), "--out", str(tmp_path / "tokenizer.json"), "--kind", "char"],
    }[command]
    assert main([command, *arguments]) == 1
    assert capsys.readouterr().err.startswith(f"asr {command}: error: {manifest}:2: {case.problem}")


# ----------------------------------------------------------------------------------------------------------------
# transcribe, evaluate, score


def test_transcribe_gives_every_readable_file_its_words_and_names_every_other(bad_corpus, listener, capsys):
    paths = [bad_corpus.audio[case.name] for case in AUDIO_CASES]
    assert main(["transcribe", "--model", "listener.pt", *map(str, paths), "--output-format", "json"]) == 1
    captured = capsys.readouterr()
    transcripts = {Path(record["audio"]).name: record for record in map(json.loads, captured.out.splitlines())}
    errors = captured.err.splitlines()
    assert errors[-1] == f"asr transcribe: {len(UNREADABLE)} of {len(AUDIO_CASES)} files could not be transcribed"
    problems = {case.name: next(line for line in errors if f"{bad_corpus.audio[case.name]}:" in line)
                for case in UNREADABLE}
    assert_none_lost([case.name for case in AUDIO_CASES], transcripts, problems)

    for case in UNREADABLE:
        assert problems[case.name].startswith(
            f"asr transcribe: error: {bad_corpus.audio[case.name]}: {TRANSCRIBE_PROBLEM[case.name]}")
    for case in READABLE:
        record = transcripts[case.name]
        assert record["text"] == case.words, case.what
        assert record["duration"] == pytest.approx(case.duration, abs=1e-3)
        starts = [word["start"] for word in record["words"]]
        assert starts == pytest.approx(case.burst_starts, abs=0.05), case.what
    # The hour went through the model in 30-second windows, never whole.
    assert listener.longest_input == 30 * SAMPLE_RATE


def test_evaluate_scores_readable_files_lists_the_others_and_scores_any_script(bad_corpus, listener, tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(["evaluate", "--model", "listener.pt", "--manifest", str(bad_corpus.manifest), "--out-dir", str(out),
                 "--json"]) == 0
    (result,) = json.loads(capsys.readouterr().out)["results"]
    report = out / bad_corpus.manifest.stem
    unreadable = {row["id"]: row["error"] for row in read_tsv(report / "unreadable.tsv")}
    assert set(unreadable) == {case.name for case in UNREADABLE}
    for case in UNREADABLE:
        assert unreadable[case.name].startswith(f"{bad_corpus.audio[case.name]}: {TRANSCRIBE_PROBLEM[case.name]}")
    rows = {row["id"]: row for row in read_tsv(report / "per_utt.tsv")}
    given = [case.name for case in AUDIO_CASES] + [case.id for case in TEXT_CASES]
    assert sorted(rows) == sorted(given)  # every utterance is scored: the unreadable ones as all deletions
    hypotheses = [line.split()[0] for line in (report / "hyp.txt").read_text(encoding="utf-8").splitlines()]
    assert_none_lost(given, hypotheses, unreadable)
    for case in READABLE:
        assert (rows[case.name]["errors"], rows[case.name]["hyp"]) == ("0", case.words), case.what
    for case in UNREADABLE:
        assert rows[case.name]["deletions"] == "3" and rows[case.name]["hyp"] == ""
    # The listener hears "A A A" in the text cases' recording; their errors, counted by hand.
    expected = {"punctuation_only": ("0", "0", "0", "3"),  # no reference words: three insertions
                "accents": ("3", "3", "0", "0"),  # CAFE NAIVE ZOE
                "cjk": ("2", "2", "0", "1"),  # 日本語 中文
                "emoji": ("3", "3", "0", "0")}  # HELLO 😀 WORLD
    for utterance_id, (words, substitutions, deletions, insertions) in expected.items():
        row = rows[utterance_id]
        assert (row["words"], row["substitutions"], row["deletions"], row["insertions"]) == \
            (words, substitutions, deletions, insertions), utterance_id
    assert result["missing"] == len(UNREADABLE)


def test_score_normalizes_any_script_alike_on_both_sides(tmp_path, capsys):
    ref = corpus.write_lines(tmp_path / "ref.txt", [f"{case.id} {case.text}" for case in TEXT_CASES])
    hyp = corpus.write_lines(tmp_path / "hyp.txt", ["punctuation_only", "accents cafe naive zoe", "cjk 日本語",
                                                    "emoji hello world"])
    assert main(["score", "--ref", str(ref), "--hyp", str(hyp), "--json"]) == 0
    (result,) = json.loads(capsys.readouterr().out)["results"]
    # By hand: 0 + 3 + 2 + 3 reference words; 中文 and 😀 deleted.
    assert (result["words"], result["deletions"], result["substitutions"], result["insertions"]) == (8, 2, 0, 0)
    assert result["wer"] == 0.25


@pytest.mark.parametrize("entry", ["prepare librispeech", "prepare kaldi", "train", "score"])
def test_a_transcript_not_in_utf8_stops_every_reader_naming_the_file(bad_corpus, tmp_path, capsys, entry):
    latin1 = "CAF\u00c9".encode("latin-1")  # É is one byte in Latin-1, never a whole character in UTF-8
    if entry == "prepare librispeech":
        tree = corpus.write_librispeech_tree(tmp_path / "src", bad_corpus.audio, bad_corpus.reference)
        bad_file = next((tmp_path / "src").rglob("100-2.trans.txt"))
        bad_file.write_bytes(bad_file.read_bytes() + b"100-2-0009 " + latin1 + b"\n")
        arguments, where = ["prepare", "librispeech", "--root", str(tree.root), "--subsets", tree.subset, "--out-dir",
                            str(tmp_path / "out")], f"{bad_file}:{len(TEXT_CASES) + 1}"
    elif entry == "prepare kaldi":
        wav_scp, bad_file = corpus.write_kaldi_folder(tmp_path / "kaldi", bad_corpus.audio, bad_corpus.reference)
        bad_file.write_bytes(bad_file.read_bytes() + b"latin1 " + latin1 + b"\n")
        arguments, where = ["prepare", "kaldi", "--wav-scp", str(wav_scp), "--text", str(bad_file), "--out-dir",
                            str(tmp_path / "out")], str(bad_file)
    elif entry == "train":
        bad_file = tmp_path / "train.jsonl"
        bad_file.write_bytes(corpus.manifest_line("a", bad_corpus.reference, "X").encode().replace(b"X", latin1))
        arguments, where = ["train", "--config", str(TINY_CONFIG), "--exp-dir", str(tmp_path / "exp"), "--quiet",
                            f"data.train={bad_file}"], f"{bad_file}:1"
    else:
        bad_file = tmp_path / "ref.txt"
        bad_file.write_bytes(b"accents " + latin1 + b"\n")
        arguments, where = ["score", "--ref", str(bad_file), "--hyp", str(bad_file)], f"{bad_file}:1"
    assert main(arguments) == 1
    assert capsys.readouterr().err.splitlines()[-1].startswith(f"asr {arguments[0]}: error: {where}: not UTF-8 text")


# ----------------------------------------------------------------------------------------------------------------
# several processes


@pytest.mark.slow
def test_training_on_two_processes_lists_the_unreadable_files_of_both_shards(bad_corpus, tmp_path):
    exp = tmp_path / "exp"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "asr", "train", "--config", str(TINY_CONFIG), "--exp-dir", str(exp), "--device", "cpu", "--quiet",
               f"data.train={bad_corpus.manifest}", "train.epochs=1"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 0, result.stderr[-3000:]
    skipped = dict(line.split("\t") for line in (exp / "skipped.tsv").read_text(encoding="utf-8").splitlines())
    assert {name for name, reason in skipped.items() if reason.startswith("unreadable audio")} == \
        {case.name for case in UNREADABLE}
