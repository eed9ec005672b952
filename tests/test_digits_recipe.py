"""The digits recipe (recipes/digits/run.sh, what `make demo` runs) end to end on the real FSDD recordings, with a
training budget of seconds instead of minutes: every stage runs, training under torchrun with two processes, and
the last stage prints the WERs of both decodings on dev and test."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from asr.checkpoint import load_model, read_plain_data
from asr.data.manifest import Utterance, read_manifest, write_manifest
from asr.evaluate import score_utterances

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "digits"


def run_recipe(work_dir: Path, *args: str, script: str = "run.sh") -> subprocess.CompletedProcess:
    """A script of the recipe (run.sh, or local/...) with data/ and exp/ under work_dir, the python of this test
    session first on the PATH."""
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", OMP_NUM_THREADS="1")
    return subprocess.run(["bash", str(RECIPE / script), "--work-dir", str(work_dir), *args], env=env,
                          capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_the_recipe_runs_every_stage_and_ends_with_the_wers(fsdd_dir, tmp_path):
    result = run_recipe(tmp_path, "--fsdd", str(fsdd_dir), "--procs", "2", "--synth-count", "2", "train.max_steps=6",
                        "model.num_layers=1", "model.hidden_size=32")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for stage in range(5):
        assert f"=== stage {stage}:" in result.stdout
    assert "stage 2: train (2 process(es))" in result.stdout
    log = (tmp_path / "exp" / "digits" / "train.log").read_text()
    assert "2 process(es)" in log
    # Training heard FSDD's five training speakers connected and alone (not theo), the synthesized voices and
    # non-speech (empty transcripts kept, not skipped).
    train_all = [json.loads(line) for line in (tmp_path / "data" / "train_all.jsonl").open()]
    assert len(train_all) == 3000 + 5 * 10 * 45 + 3 * 2 and sum(row["text"] == "" for row in train_all) == 2
    assert "theo" not in {row.get("speaker") for row in train_all}
    assert "transcript has no usable characters" not in log
    model = read_plain_data(tmp_path / "exp" / "digits" / "model.pt")
    assert model["metadata"]["asr_config"]["model"]["hidden_size"] == 32  # the overrides reached the trainer
    # Stage 3 stores the edge floor and word latency before it decodes: its figures are the model's as users run it.
    assert result.stdout.index("edge_pad_seconds") < result.stdout.index("greedy decoding:")
    # Greedy, then the digit lexicon: a WER line for dev and for test each time.
    wer_lines = re.findall(r"^data/(\S+)\.jsonl: WER (\d+\.\d+)%", result.stdout, re.MULTILINE)
    assert [split for split, _ in wer_lines] == [
        "dev", "test", "official_test", "synth/espeak_heldout", "synth/piper_heldout", "synth/asterisk",
        "judge/laptop", "dev", "test"]
    assert all(0 <= float(wer) <= 100 for _, wer in wer_lines)
    assert "=== stage 4:" in result.stdout and "words at confidence ≥ 0.9" in result.stdout
    judged = json.loads((tmp_path / "exp" / "digits" / "judge" / "judge.json").read_text())
    assert len(judged["nonspeech"]) == 8 and len(judged["sets"]) == 9  # 7 sets, the official split also in 2 parts

    # local/theo_checks.py on a few of the same files: its first row is the model as `asr evaluate` scores it.
    small = tmp_path / "small"
    official = read_manifest(tmp_path / "data" / "official_test.jsonl")
    # Sets of different sizes, so that one counted as another shows even when the tiny model deletes every word.
    parts = {"theo": [u for u in official if u.speaker == "theo"][:4],
             "five": [u for u in official if u.speaker != "theo"][:7],
             "connected": read_manifest(tmp_path / "data" / "test.jsonl")[:5]}
    write_manifest(small / "official_test.jsonl", parts["theo"] + parts["five"])
    write_manifest(small / "test.jsonl", parts["connected"])
    write_manifest(small / "train.jsonl", read_manifest(tmp_path / "data" / "train.jsonl")[:6])
    model_path = tmp_path / "exp" / "digits" / "model.pt"
    checks = subprocess.run([sys.executable, str(RECIPE / "local" / "theo_checks.py"), "--model", str(model_path),
                             "--data", str(small)], capture_output=True, text=True, timeout=600)
    assert checks.returncode == 0, checks.stderr[-3000:]
    rows = {name: [int(count) for count in counts] for name, *counts in re.findall(
        r"^(.+?) +theo's single digits +(\d+)  the five's single digits +(\d+)  theo's connected digits +(\d+)$",
        checks.stdout, re.MULTILINE)}
    assert len(rows) == 6, checks.stdout
    recognizer = load_model(model_path)
    assert rows["as the model is"] == [
        score.substitutions + score.deletions + score.insertions
        for score in (score_utterances(recognizer, parts[name])[0] for name in ("theo", "five", "connected"))]

    # Leaving training speakers out, in the same work directory: lucas is scored, nicolas is not heard at all, the
    # other three train.
    held_out = run_recipe(tmp_path, "--speaker", "lucas", "--drop", "nicolas", "--exp", "loso", "train.max_steps=3",
                          "model.num_layers=1", "model.hidden_size=16", script="local/hold_out.sh")
    assert held_out.returncode == 0, held_out.stdout[-3000:] + held_out.stderr[-3000:]
    split = tmp_path / "data" / "hold_out_lucas_without_nicolas"
    speakers = {name: {json.loads(line)["speaker"] for line in (split / f"{name}.jsonl").open()}
                for name in ("train", "held_out")}
    assert speakers == {"train": {"george", "jackson", "yweweler"}, "held_out": {"lucas"}}
    assert sum(1 for _ in (split / "held_out.jsonl").open()) == 660  # his 600 training and 60 dev utterances
    assert re.search(r"held_out\.jsonl: WER \d+\.\d+%", held_out.stdout)


@pytest.mark.parametrize("arguments, error", [
    (["--speaker", "theo"], "'theo' is not a training speaker (jackson, lucas)"),
    (["--speaker", "lucas", "--drop", "theo"], "'theo' is not a training speaker (jackson, lucas)"),
    (["--speaker", "lucas", "--drop", "jackson"], "no speaker is left to train on"),
])
def test_impossible_speaker_choices_are_refused(tmp_path, arguments, error):
    (tmp_path / "data").mkdir()
    rows = [{"id": speaker, "audio": f"wav/{speaker}.wav", "duration": 1.0, "text": "ONE", "speaker": speaker}
            for speaker in ("lucas", "jackson")]
    (tmp_path / "data" / "train.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    (tmp_path / "data" / "dev.jsonl").write_text("")
    result = run_recipe(tmp_path, *arguments, script="local/hold_out.sh")
    assert result.returncode != 0
    assert error in result.stderr


def test_unknown_arguments_are_refused_before_any_work(tmp_path):
    result = run_recipe(tmp_path / "work", "--frobnicate")
    assert result.returncode == 2
    assert "unknown argument --frobnicate" in result.stderr
    assert not (tmp_path / "work").exists()


def test_degraded_copies_are_quieter_by_25_db_or_under_noise_at_10_db_snr(fsdd_dir, tmp_path):
    names = ["0_theo_0", "7_jackson_3", "5_yweweler_12"]
    write_manifest(tmp_path / "held.jsonl", [
        Utterance(name, str(fsdd_dir / f"{name}.wav"), sf.info(str(fsdd_dir / f"{name}.wav")).duration,
                  ["ZERO", "SEVEN", "FIVE"][i], name.split("_")[1]) for i, name in enumerate(names)])

    def degrade(out_dir):
        result = subprocess.run([sys.executable, str(RECIPE / "local" / "degrade.py"), "--manifest",
                                 str(tmp_path / "held.jsonl"), "--out-dir", str(out_dir)],
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        return {variant: read_manifest(out_dir / f"held_{variant}.jsonl") for variant in ("quiet", "noisy")}

    copies = degrade(tmp_path / "a")
    for variant, utterances in copies.items():
        assert [(u.id, u.text, u.speaker) for u in utterances] == [(u.id, u.text, u.speaker)
                                                                    for u in read_manifest(tmp_path / "held.jsonl")]
    for name, quiet, noisy in zip(names, copies["quiet"], copies["noisy"]):
        original, rate = sf.read(str(fsdd_dir / f"{name}.wav"), dtype="float64")
        assert sf.info(quiet.audio).samplerate == sf.info(noisy.audio).samplerate == rate
        np.testing.assert_allclose(sf.read(quiet.audio, dtype="float64")[0], original * 10 ** (-25 / 20),
                                   atol=1 / 32768)
        added = sf.read(noisy.audio, dtype="float64")[0] - original
        assert 10 * np.log10(np.mean(original ** 2) / np.mean(added ** 2)) == pytest.approx(10.0, abs=0.2)
    again = degrade(tmp_path / "b")  # a fixed seed: the same noise every time
    assert all(np.array_equal(sf.read(a.audio)[0], sf.read(b.audio)[0])
               for a, b in zip(copies["noisy"], again["noisy"]))
