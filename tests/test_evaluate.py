import json
import logging
import subprocess
import sys
from pathlib import Path

import jiwer
import numpy as np
import pytest
import soundfile
import torch

import asr.checkpoint
from asr.audio import load_samples
from asr.cli import main
from asr.data.manifest import read_manifest
from asr.errors import AsrError
from asr.evaluate import evaluate
from asr.features import FeatureConfig
from asr.model import ModelConfig
from asr.normalization import SpeakerStats
from asr.recognizer import Recognizer
from asr.text import CharTokenizer, normalize_text
from asr.transcribe import transcribe_file

REPO = Path(__file__).resolve().parents[1]
SAMPLE_RATE = 16000

# Hand-made references and hypotheses, and their errors counted by hand.
REFS = {"u1": "THE CAT SAT ON THE MAT", "u2": "HELLO WORLD", "u3": "ONE TWO THREE", "u4": "GOOD MORNING"}
HYPS = {"u1": "the cat sat on mat",  # THE deleted
        "u2": "Hello, big world!",  # BIG inserted (punctuation and case normalized away)
        "u3": "ONE TOO THREE FOUR"}  # TWO → TOO, FOUR inserted; u4 has no hypothesis: GOOD, MORNING deleted
WORDS, SUBSTITUTIONS, DELETIONS, INSERTIONS = 13, 1, 3, 2


def jiwer_rates(refs, hyps):
    """WER and CER over the set, by jiwer on the normalized texts (an absent hypothesis is empty)."""
    ref_texts = [normalize_text(refs[i]) for i in refs]
    hyp_texts = [normalize_text(hyps.get(i, "")) for i in refs]
    return jiwer.wer(ref_texts, hyp_texts), jiwer.cer(ref_texts, hyp_texts)


def write_kaldi_text(path, texts):
    path.write_text("".join(f"{utterance_id} {text}\n" for utterance_id, text in texts.items()))
    return path


# ----------------------------------------------------------------------------------------------------------------
# asr score


def test_score_counts_errors_like_jiwer_and_reports_a_missing_hypothesis_loudly(tmp_path):
    ref = write_kaldi_text(tmp_path / "ref.txt", REFS)
    hyp = write_kaldi_text(tmp_path / "hyp.txt", HYPS)
    # A separate process, so that stderr is what a user would see.
    run = subprocess.run([sys.executable, "-m", "asr", "score", "--ref", str(ref), "--hyp", str(hyp), "--json"],
                         capture_output=True, text=True, cwd=REPO)
    assert run.returncode == 0, run.stderr
    assert "u4" in run.stderr and "deletions" in run.stderr
    result = json.loads(run.stdout)  # stdout holds exactly one JSON object
    wer, cer = jiwer_rates(REFS, HYPS)
    assert wer == pytest.approx((SUBSTITUTIONS + DELETIONS + INSERTIONS) / WORDS)
    (entry,) = result["results"]
    assert {key: entry[key] for key in ("manifest", "words", "utterances", "substitutions", "deletions",
                                        "insertions")} == \
        {"manifest": str(ref), "words": WORDS, "utterances": 4, "substitutions": SUBSTITUTIONS,
         "deletions": DELETIONS, "insertions": INSERTIONS}
    assert entry["wer"] == pytest.approx(wer, abs=1e-4) and entry["cer"] == pytest.approx(cer, abs=1e-4)


def test_score_prints_a_readable_summary(tmp_path, capsys):
    ref = write_kaldi_text(tmp_path / "ref.txt", REFS)
    hyp = write_kaldi_text(tmp_path / "hyp.txt", HYPS)
    assert main(["score", "--ref", str(ref), "--hyp", str(hyp)]) == 0
    out = capsys.readouterr().out
    assert f"WER {100 * 6 / 13:.2f}%" in out
    assert "TWO→TOO" in out and "MISSING" in out


def test_score_names_a_bad_line(tmp_path, capsys):
    ref = write_kaldi_text(tmp_path / "ref.txt", REFS)
    (tmp_path / "hyp.txt").write_text("u1 A\nu1 B\n")
    assert main(["score", "--ref", str(ref), "--hyp", str(tmp_path / "hyp.txt")]) == 1
    assert f"{tmp_path / 'hyp.txt'}:2" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------------------
# evaluate, with a recognizer whose outputs are known


class ScriptedRecognizer:
    """A recognizer (asr.backend.SpeechRecognizer) that recognizes in a recording the text `script[k]`, where k is
    100 × the recording's first sample."""

    normalization = "utterance"
    exposes_features = False
    edge_pad_seconds = 0.0
    word_span = None
    source_path = None

    def __init__(self, script):
        self.tokenizer = CharTokenizer()
        self.frame_shift = 0.04
        self.script = script

    def log_probs(self, audio, audio_lengths, speaker_cmvn=None):
        paths = []
        for row in audio:
            tokens = self.tokenizer.encode(self.script[round(float(row[0]) * 100)])
            paths.append([label for token in tokens for label in (token, 0)])  # a blank after each token
        frames = max(len(path) for path in paths)
        labels = np.array([path + [0] * (frames - len(path)) for path in paths])
        logits = 10.0 * np.eye(self.tokenizer.vocab_size, dtype=np.float32)[labels]
        log_probs = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
        return log_probs, np.array([len(path) for path in paths])


def write_scripted_audio(path, index):
    soundfile.write(path, np.full(SAMPLE_RATE // 2, index / 100, dtype=np.float32), SAMPLE_RATE, subtype="FLOAT")
    return path.name


def write_manifest(path, rows):
    path.write_text("".join(json.dumps({"id": i, "audio": audio, "duration": 0.5, "text": text}) + "\n"
                            for i, audio, text in rows))
    return path


@pytest.fixture
def scripted_sets(tmp_path):
    """Two manifests whose hypotheses are known: the set of REFS/HYPS (u4's audio unreadable) and a perfect one."""
    recognizer = ScriptedRecognizer([HYPS["u1"], HYPS["u2"], HYPS["u3"], "A PERFECT SET"])
    audio = [write_scripted_audio(tmp_path / f"u{index + 1}.wav", index) for index in range(3)]
    (tmp_path / "u4.wav").write_bytes(b"RIFF but not really a wav file")
    first = write_manifest(tmp_path / "dev.jsonl", [(i, f"{i}.wav", text) for i, text in REFS.items()])
    second = write_manifest(tmp_path / "test.jsonl",
                            [("p1", write_scripted_audio(tmp_path / "p1.wav", 3), "A perfect set.")])
    assert audio == ["u1.wav", "u2.wav", "u3.wav"]
    return recognizer, first, second


def test_evaluate_scores_known_outputs_and_an_unreadable_utterance_as_deletions(scripted_sets, tmp_path, caplog):
    recognizer, dev, test = scripted_sets
    with caplog.at_level(logging.WARNING):
        dev_score, test_score = evaluate(recognizer, [dev, test], out_dir=tmp_path / "out")
    assert any("u4" in message and "u4.wav" in message for message in caplog.messages)
    assert (dev_score.words, dev_score.utterances) == (WORDS, 4)
    assert (dev_score.substitutions, dev_score.deletions, dev_score.insertions) == \
        (SUBSTITUTIONS, DELETIONS, INSERTIONS)
    wer, cer = jiwer_rates(REFS, HYPS)
    assert dev_score.wer == pytest.approx(wer) and dev_score.cer == pytest.approx(cer)
    assert dev_score.missing == ["u4"]
    assert (test_score.wer, test_score.cer, test_score.words) == (0.0, 0.0, 3)

    out = tmp_path / "out"
    assert sorted(p.name for p in (out / "dev").iterdir()) == \
        ["hyp.txt", "per_utt.tsv", "ref.txt", "unreadable.tsv", "wer.json"]
    unreadable = (out / "dev" / "unreadable.tsv").read_text().splitlines()
    assert unreadable[0] == "id\terror" and unreadable[1].startswith(f"u4\t{tmp_path / 'u4.wav'}: ")
    assert not (out / "test" / "unreadable.tsv").exists()
    results = json.loads((out / "results.json").read_text())["results"]
    assert [(r["manifest"], r["deletions"]) for r in results] == [(str(dev), DELETIONS), (str(test), 0)]
    assert "| " + str(dev) + " | 4 | 13 |" in (out / "results.md").read_text()

    # Scoring the report's normalized texts again gives the same numbers.
    assert main(["score", "--ref", str(out / "dev" / "ref.txt"), "--hyp", str(out / "dev" / "hyp.txt"),
                 "--json"]) == 0


def test_evaluate_refuses_two_manifests_with_one_report_folder(scripted_sets, tmp_path):
    recognizer, dev, _ = scripted_sets
    (tmp_path / "other").mkdir()
    copy = tmp_path / "other" / "dev.jsonl"
    copy.write_text(dev.read_text())
    with pytest.raises(AsrError) as refused:
        evaluate(recognizer, [dev, copy], out_dir=tmp_path / "out")
    assert str(dev) in str(refused.value) and str(copy) in str(refused.value) and "'dev/'" in str(refused.value)
    assert not (tmp_path / "out").exists()


def test_evaluate_cli_json_is_one_object_with_one_row_a_manifest(scripted_sets, monkeypatch, capsys):
    recognizer, dev, test = scripted_sets
    monkeypatch.setattr(asr.checkpoint, "load_model", lambda path, device: recognizer)
    assert main(["evaluate", "--model", "scripted.pt", "--manifest", str(dev), str(test), "--json",
                 "--device", "cpu"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert list(result) == ["results"]
    rows = result["results"]
    assert [row["manifest"] for row in rows] == [str(dev), str(test)]
    expected = {"words": WORDS, "utterances": 4, "substitutions": SUBSTITUTIONS, "deletions": DELETIONS,
                "insertions": INSERTIONS}
    assert {key: rows[0][key] for key in expected} == expected
    assert rows[0]["wer"] == pytest.approx(6 / 13, abs=1e-4)
    assert (rows[1]["wer"], rows[1]["cer"], rows[1]["words"]) == (0.0, 0.0, 3)

    assert main(["evaluate", "--model", "scripted.pt", "--manifest", str(dev), "--device", "cpu"]) == 0
    assert "TWO→TOO" in capsys.readouterr().out


# evaluate, with a model normalized by speaker


def test_evaluate_normalizes_a_speaker_model_by_each_speakers_statistics_over_the_manifest(fsdd_dir, tmp_path):
    names = ["3_george_0", "5_george_1", "3_lucas_0", "8_lucas_1", "9_lucas_2", "1_theo_0"]
    rows = []
    for name in names:
        digit, speaker, _ = name.split("_")
        rows.append({"id": name, "audio": str(fsdd_dir / f"{name}.wav"), "duration": 0.5, "text": f"DIGIT {digit}",
                     **({"speaker": speaker} if speaker != "theo" else {})})  # theo's names no speaker
    manifest = tmp_path / "test.jsonl"
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    torch.manual_seed(0)
    features = FeatureConfig(normalization="speaker", n_mels=40)
    tokenizer = CharTokenizer()
    training_set = {"mean": torch.linspace(-12, -6, 40).tolist(), "std": torch.linspace(2, 5, 40).tolist()}
    recognizer = Recognizer(ModelConfig(vocab_size=tokenizer.vocab_size, input_dim=40, num_layers=1, hidden_size=16,
                                        subsampling_channels=4), features, tokenizer, cmvn_stats=training_set).eval()
    given = []  # (audio length, speaker statistics) of each utterance the recognizer is run on
    forward = recognizer.forward
    recognizer.forward = lambda audio, lengths, rows=None: given.extend(
        zip(lengths.tolist(), [None] * len(lengths) if rows is None else rows)) or forward(audio, lengths, rows)
    evaluate(recognizer, [manifest], batch_size=4)

    utterances = read_manifest(manifest)
    table = SpeakerStats.estimate(utterances, features, default=training_set, progress=False)
    assert table.speakers == {"george", "lucas"}  # theo's utterance gets the training set's statistics
    expected = {len(load_samples(u.audio)): table.rows(u.speaker) for u in utterances}  # by length: the six differ
    assert len(expected) == len(names) == len(given)
    assert all(torch.equal(rows, expected[length]) for length, rows in given)

    # A recording longer than chunk_seconds is decoded in windows, each with its speaker's statistics.
    given.clear()
    lucas = table.rows("lucas")
    transcribe_file(recognizer, utterances[2].audio, chunk_seconds=0.2, overlap_seconds=0.05,
                    speaker_cmvn=lucas.numpy())
    assert len(given) > 1 and all(torch.equal(rows, lucas) for _, rows in given)

    # A manifest that names no speaker is normalized as `asr transcribe` normalizes files: in the frontend.
    given.clear()
    manifest.write_text("".join(json.dumps({**row, "speaker": None}) + "\n" for row in rows))
    evaluate(recognizer, [manifest])
    assert len(given) == len(names) and all(rows is None for _, rows in given)
