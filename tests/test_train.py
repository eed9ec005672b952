"""The trainer on real speech: it learns, it resumes exactly, it runs under torchrun with two gloo processes."""
import copy
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile
import torch

import asr.train
from asr.checkpoint import load_checkpoint, load_model, read_plain_data
from asr.config import load_config
from asr.data.manifest import Utterance, read_manifest, write_manifest
from asr.errors import ConfigError
from asr.metrics import read_metrics
from asr.normalization import SpeakerStats
from asr.train import (
    Schedule,
    autocast_dtype,
    dev_loss,
    lr_factor,
    restore_loss_scaler,
    scales_losses,
    start_training,
    train,
)

DIGITS = "ZERO ONE TWO THREE FOUR FIVE SIX SEVEN EIGHT NINE".split()
REPO = Path(__file__).resolve().parents[1]


def fsdd_manifest(fsdd_dir, path, names):
    """A manifest of FSDD recordings (8 kHz wavs; the loader resamples them)."""
    utterances = []
    for name in names:
        audio = fsdd_dir / f"{name}.wav"
        info = soundfile.info(audio)
        utterances.append(Utterance(id=name, audio=str(audio), duration=info.frames / info.samplerate,
                                    text=DIGITS[int(name.split("_")[0])], speaker=name.split("_")[1]))
    write_manifest(path, utterances)
    return path


def small_config(train_manifest, dev_manifest="", **overrides):
    base = [f"data.train={train_manifest}", f"data.dev={dev_manifest}", "data.num_workers=0",
            "data.max_seconds=2.0", "features.normalization=utterance", "model.num_layers=2",
            "model.hidden_size=48", "model.subsampling_channels=8", "model.dropout=0.0", "train.log_every=1",
            "optim.warmup_fraction=0.02", "optim.lr=3e-3", "train.threads=1"]
    return load_config(None, base + [f"{k}={v}" for k, v in overrides.items()])


def logged_losses(exp_dir):
    """(step, loss) pairs from train.log, in the order written."""
    pattern = re.compile(r"step (\d+) epoch \d+ loss ([0-9.e+-]+|nan|inf)")
    return [(int(m[1]), float(m[2])) for m in pattern.finditer((exp_dir / "train.log").read_text())]


def test_ctc_loss_goes_to_near_zero_when_overfitting_real_utterances(tmp_path, fsdd_dir):
    manifest = fsdd_manifest(fsdd_dir, tmp_path / "train.jsonl",
                             ["0_george_5", "1_jackson_5", "7_lucas_5", "3_nicolas_5"])
    config = small_config(manifest, manifest, **{"train.epochs": 150, "specaugment.enabled": "false",
                                                 "optim.schedule": "constant", "train.validate_every": 0})
    model_path = train(config, tmp_path / "exp", progress=False)
    losses = logged_losses(tmp_path / "exp")
    assert losses[0][1] > 2.0  # it starts at chance
    assert losses[-1][1] < 0.1, losses[-10:]
    history = read_plain_data(model_path)["metadata"]
    assert history["dev_wer"] == 0.0  # the four words, recognized back by greedy decoding


def test_resume_follows_the_same_losses_as_a_straight_run(tmp_path, fsdd_dir, monkeypatch):
    names = [f"{d}_{s}_{t}" for d in (2, 5, 8) for s in ("george", "yweweler") for t in (6, 7)]
    manifest = fsdd_manifest(fsdd_dir, tmp_path / "train.jsonl", names)
    # Everything random is on: speed perturbation, SpecAugment, dropout, shuffled buckets.
    settings = {"data.speed_factors": "[0.9,1.0,1.1]", "model.dropout": 0.2, "optim.schedule": "cosine",
                "train.epochs": 3, "train.max_steps": 9, "train.checkpoint_every": 2}
    straight = tmp_path / "straight"
    train(small_config(manifest, **settings), straight, progress=False)

    class Crash(Exception):
        pass

    loss, calls = asr.train.batch_loss, []

    def crashes_in_step_6(model, batch, amp_dtype):  # one batch a step
        calls.append(batch.ids)
        if len(calls) == 6:  # the last checkpoint is at step 4: step 5's work is lost and redone
            raise Crash()
        return loss(model, batch, amp_dtype)

    resumed = tmp_path / "resumed"
    monkeypatch.setattr(asr.train, "batch_loss", crashes_in_step_6)
    with pytest.raises(Crash):
        train(small_config(manifest, **settings), resumed, progress=False)
    assert [step for step, _ in logged_losses(resumed)] == [1, 2, 3, 4, 5]
    monkeypatch.setattr(asr.train, "batch_loss", loss)
    train(small_config(manifest, **settings), resumed, resume=True, progress=False)

    straight_losses = dict(logged_losses(straight))
    resumed_losses = dict(logged_losses(resumed))  # the redone step 5 overwrites the lost one
    assert sorted(straight_losses) == list(range(1, 10))
    assert resumed_losses == pytest.approx(straight_losses, rel=1e-6, abs=1e-7)
    a, b = load_model(straight / "model.pt"), load_model(resumed / "model.pt")
    for name, tensor in a.state_dict().items():
        assert torch.allclose(tensor, b.state_dict()[name], atol=1e-6), name


def test_same_seed_same_model_different_seed_different_model(tmp_path, fsdd_dir):
    manifest = fsdd_manifest(fsdd_dir, tmp_path / "train.jsonl", ["4_theo_9", "6_lucas_9", "9_george_9"])
    runs = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        train(small_config(manifest, **{"train.max_steps": 3, "train.seed": seed}), tmp_path / name, progress=False)
        runs[name] = load_model(tmp_path / name / "model.pt").state_dict()
    key = next(iter(runs["a"]))
    assert all(torch.equal(runs["a"][k], runs["b"][k]) for k in runs["a"])
    assert not all(torch.equal(runs["a"][k], runs["c"][k]) for k in runs["a"] if runs["a"][k].is_floating_point()), key


def test_model_file_holds_the_best_validation_or_the_last_weights_as_configured(tmp_path, fsdd_dir):
    train_set = fsdd_manifest(fsdd_dir, tmp_path / "train.jsonl", ["2_theo_9", "5_lucas_9", "8_george_9"])
    # Words training never hears: every validation scores a WER of 1 or more, so the best is not the last.
    dev = fsdd_manifest(fsdd_dir, tmp_path / "dev.jsonl", ["0_jackson_9", "1_nicolas_9"])
    models = {}
    for final in ("best", "last"):
        config = small_config(train_set, dev, **{"train.max_steps": 4, "train.validate_every": 1,
                                                 "train.keep_best": 4, "train.final_model": final})
        train(config, tmp_path / final, progress=False)
        models[final] = load_model(tmp_path / final / "model.pt").state_dict()
    history = json.loads((tmp_path / "best" / "history.json").read_text())
    best_step = min((h["wer"], h["step"]) for h in history)[1]  # ties go to the earliest
    assert best_step != 4, history
    best = load_model(tmp_path / "best" / "checkpoints" / f"best-{best_step}.pt").state_dict()
    last = load_checkpoint(tmp_path / "last" / "checkpoints" / "ckpt-4.pt")["state_dict"]
    assert all(torch.equal(models["best"][k], best[k]) for k in best)
    assert all(torch.equal(models["last"][k], last[k]) for k in last)
    assert not all(torch.equal(best[k], last[k]) for k in last)
    assert read_plain_data(tmp_path / "last" / "model.pt")["metadata"]["step"] == 4
    with pytest.raises(ConfigError, match="train.final_model"):
        small_config(train_set, **{"train.final_model": "average"})


def test_the_saved_config_holds_the_sizes_the_model_was_built_with(tmp_path, fsdd_dir):
    manifest = fsdd_manifest(fsdd_dir, tmp_path / "train.jsonl", ["4_theo_9", "6_lucas_9"])
    config = small_config(manifest, **{"features.n_mels": 40, "train.max_steps": 1})
    given = copy.deepcopy(config)
    train(config, tmp_path / "exp", progress=False)
    saved = load_config(tmp_path / "exp" / "config.yaml")
    model = load_model(tmp_path / "exp" / "model.pt")
    assert saved.model.input_dim == 40 == model.acoustic.config.input_dim
    assert saved.model.vocab_size == model.tokenizer.vocab_size == model.model_config.vocab_size
    assert config == given and config.model.vocab_size != model.tokenizer.vocab_size  # the caller's, untouched


def test_speaker_normalization_trains_and_validates_with_each_speakers_statistics(tmp_path, fsdd_dir):
    names = [f"{digit}_{speaker}_{take}" for digit in (1, 2) for speaker in ("george", "yweweler") for take in (5, 6)]
    manifest = fsdd_manifest(fsdd_dir, tmp_path / "train.jsonl", names)
    dev = fsdd_manifest(fsdd_dir, tmp_path / "dev.jsonl", ["1_george_0", "2_lucas_0", "1_lucas_1"])
    config = small_config(manifest, dev, **{"features.normalization": "speaker", "train.max_steps": 2})
    trainer = start_training(config, tmp_path / "exp", progress=False)
    training_set = json.loads((tmp_path / "exp" / "cmvn.json").read_text())
    expected = {name: SpeakerStats.estimate(read_manifest(path), config.features, training_set, progress=False)
                for name, path in (("train", manifest), ("dev", dev))}
    assert expected["train"].speakers == {"george", "yweweler"} and expected["dev"].speakers == {"george", "lucas"}
    for name in ("train", "dev"):  # estimated once, into the experiment folder, for ranks and resumed runs to read
        saved = json.loads((tmp_path / "exp" / f"speaker_cmvn_{name}.json").read_text())
        assert saved.keys() == expected[name].speakers
        for speaker, stats in saved.items():
            assert stats["mean"] == pytest.approx(expected[name].by_speaker[speaker]["mean"])
            assert stats["std"] == pytest.approx(expected[name].by_speaker[speaker]["std"])

    given = []  # every batch's statistics, as the frontend receives them
    forward = trainer.model.frontend.forward
    trainer.model.frontend.forward = lambda audio, lengths, rows=None: given.append(rows) or forward(audio, lengths,
                                                                                                     rows)
    trainer.run()
    assert trainer.model.frontend.cmvn.mean.tolist() == pytest.approx(training_set["mean"])
    speaker_rows = {speaker: expected["train"].rows(speaker) for speaker in expected["train"].speakers}
    training_rows = [row for rows in given[:2] for row in rows]  # the two training steps, then validation
    assert all(any(torch.allclose(row, known) for known in speaker_rows.values()) for row in training_rows)
    assert {speaker for row in training_rows for speaker, known in speaker_rows.items()
            if torch.allclose(row, known)} == {"george", "yweweler"}
    validated = trainer.state.history[-1]["loss"]
    model = trainer.model
    assert dev_loss(model, read_manifest(dev), config, speaker_cmvn=expected["dev"]) == \
        pytest.approx(validated, rel=1e-6)
    # Without them, each utterance normalized as one of no known speaker: another loss, even from this barely
    # trained model.
    assert abs(dev_loss(model, read_manifest(dev), config) - validated) > 1e-4


@pytest.mark.parametrize("normalization", ["global", "speaker"])
def test_a_run_normalized_by_statistics_resumes(tmp_path, fsdd_dir, normalization):
    manifest = fsdd_manifest(fsdd_dir, tmp_path / "train.jsonl", ["0_george_5", "1_jackson_5", "7_lucas_5"])
    settings = {"features.normalization": normalization, "train.checkpoint_every": 1}
    train(small_config(manifest, **settings, **{"train.max_steps": 2}), tmp_path / "exp", progress=False)
    first = load_checkpoint(tmp_path / "exp" / "checkpoints" / "ckpt-2.pt")["state_dict"]
    train(small_config(manifest, **settings, **{"train.max_steps": 4}), tmp_path / "exp", resume=True, progress=False)
    assert [step for step, _ in logged_losses(tmp_path / "exp")] == [1, 2, 3, 4]
    resumed = load_model(tmp_path / "exp" / "model.pt").state_dict()
    for name in ("frontend.cmvn.mean", "frontend.cmvn.std"):
        assert torch.equal(resumed[name], first[name])
    stats = json.loads((tmp_path / "exp" / "cmvn.json").read_text())
    assert resumed["frontend.cmvn.mean"].tolist() == pytest.approx(stats["mean"])


def test_unusable_utterances_are_skipped_and_listed(tmp_path, fsdd_dir):
    good = fsdd_manifest(fsdd_dir, tmp_path / "good.jsonl", ["1_george_5", "2_george_5"])
    utterances = [Utterance("1_george_5", str(fsdd_dir / "1_george_5.wav"), 0.4, "ONE"),
                  Utterance("2_george_5", str(fsdd_dir / "2_george_5.wav"), 0.4, "TWO"),
                  Utterance("missing", str(tmp_path / "missing.wav"), 0.5, "THREE"),
                  Utterance("punctuation", str(fsdd_dir / "3_george_5.wav"), 0.4, "?!"),
                  Utterance("too_long_text", str(fsdd_dir / "4_george_5.wav"), 0.2, "FOUR " * 20),
                  Utterance("cjk", str(fsdd_dir / "5_george_5.wav"), 0.4, "日本")]
    write_manifest(tmp_path / "mixed.jsonl", utterances)
    assert good.exists()
    train(small_config(tmp_path / "mixed.jsonl", **{"train.max_steps": 2}), tmp_path / "exp", progress=False)
    skipped = dict(line.split("\t") for line in (tmp_path / "exp" / "skipped.tsv").read_text().splitlines())
    assert set(skipped) == {"missing", "punctuation", "too_long_text", "cjk"}
    assert "missing.wav" in skipped["missing"]
    assert "no usable characters" in skipped["punctuation"]
    assert "too long" in skipped["too_long_text"]


def test_steps_of_clips_with_no_word_are_trained_not_dropped(tmp_path, fsdd_dir):
    # Empty transcripts (non-speech, taught to give all blanks): a step made of them alone has no target token, and
    # is still a step. Here every global batch holds one clip (max_seconds below two clips' padded length).
    clips = [Utterance(name, str(fsdd_dir / f"{name}.wav"), soundfile.info(fsdd_dir / f"{name}.wav").duration, "")
             for name in ("0_george_5", "1_jackson_5", "7_lucas_5")]
    words = fsdd_manifest(fsdd_dir, tmp_path / "words.jsonl", ["4_theo_9"])
    write_manifest(tmp_path / "train.jsonl", clips + read_manifest(words))
    train(small_config(tmp_path / "train.jsonl", **{"train.max_steps": 4, "data.max_seconds": 0.8}), tmp_path / "exp",
          progress=False)
    records = [r for r in read_metrics(tmp_path / "exp" / "metrics.jsonl") if r["event"] == "train"]
    assert [(r["step"], r["epoch"]) for r in records] == [(1, 1), (2, 1), (3, 1), (4, 1)]  # the whole epoch
    assert sorted(r["tokens"] for r in records) == [1, 1, 1, 4]  # a clip of no word counts one; FOUR four
    assert all(math.isfinite(r["loss"]) for r in records)
    assert "skipped a batch" not in (tmp_path / "exp" / "train.log").read_text()


@pytest.mark.parametrize("precision, device, scaled", [
    ("bf16", "cuda", True),  # cuDNN's GRUs run in float16 under bf16 autocast too
    ("fp16", "cuda", True),
    ("fp32", "cuda", False),
    ("bf16", "cpu", False),  # no autocast on the CPU at all
])
def test_losses_are_scaled_whenever_the_grus_run_in_half_precision(precision, device, scaled):
    assert scales_losses(autocast_dtype(precision, torch.device(device))) is scaled


def test_a_checkpoint_saved_without_loss_scaling_resumes_with_it(tmp_path, fsdd_dir):
    # A bf16 run checkpointed before bf16 scaled its losses, resumed by this version: GradScaler would refuse the
    # checkpoint's empty state. Scaling is CUDA-only in the trainer, so a CPU scaler stands in for the GPU's.
    manifest = fsdd_manifest(fsdd_dir, tmp_path / "train.jsonl", ["4_theo_9", "6_lucas_9"])
    train(small_config(manifest, **{"train.max_steps": 2}), tmp_path / "exp", progress=False)
    saved = load_checkpoint(tmp_path / "exp" / "checkpoints" / "ckpt-2.pt")["trainer"]["scaler"]
    assert saved == {}  # a CPU run scales no loss
    scaler = torch.amp.GradScaler("cpu", enabled=True)
    restore_loss_scaler(scaler, saved)
    assert scaler.get_scale() == torch.amp.GradScaler("cpu").get_scale()
    scaled = torch.amp.GradScaler("cpu", init_scale=8.0)
    restore_loss_scaler(scaler, scaled.state_dict())
    assert scaler.get_scale() == 8.0


def test_warmup_then_cosine_decay():
    cosine = load_config(None, ["optim.schedule=cosine", "optim.min_lr_ratio=0.1"]).optim
    assert lr_factor(cosine, 0.1, 0.0) == pytest.approx(0.1)  # a tenth of the warmup
    assert lr_factor(cosine, 1.0, 0.0) == pytest.approx(1.0)
    assert lr_factor(cosine, 6.0, 0.5) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_factor(cosine, 11.0, 1.0) == pytest.approx(0.1)
    assert lr_factor(cosine, 20.0, 1.7) == pytest.approx(0.1)  # past the budget: stays at the floor
    noam = load_config(None, ["optim.schedule=noam"]).optim
    assert lr_factor(noam, 4.0, 0.0) == pytest.approx(0.5)  # at 4 × the warmup: 1 / sqrt(4)


def test_the_run_counts_shuffled_epochs_and_warms_up_over_a_fraction_of_it(tmp_path, fsdd_dir):
    names = [f"{d}_{s}_{t}" for d in range(10) for s in ("nicolas", "yweweler") for t in (30, 31, 32)]
    manifest = fsdd_manifest(fsdd_dir, tmp_path / "train.jsonl", names)
    config = small_config(manifest, **{"data.sortagrad": "true", "train.epochs": 2, "optim.warmup_fraction": 0.25,
                                       "optim.min_lr_ratio": 0.1, "optim.lr": 1e-3})
    trainer = start_training(config, tmp_path / "exp", progress=False)
    sorted_epoch, shuffled_epoch = (len(trainer.sampler.global_batches(epoch)) for epoch in (0, 1))
    assert sorted_epoch < shuffled_epoch  # SortaGrad's sorted epoch packs into fewer batches
    total = 2 * shuffled_epoch
    warmup = round(0.25 * total)
    assert (trainer.schedule.total_steps, trainer.schedule.warmup_steps) == (total, warmup)
    trainer.run()
    records = [r for r in read_metrics(tmp_path / "exp" / "metrics.jsonl") if r["event"] == "train"]
    assert [r["step"] for r in records] == list(range(1, sorted_epoch + shuffled_epoch + 1))
    for r in records:
        taken = r["step"] - 1
        expected = (taken + 1) / warmup if taken < warmup else \
            0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (taken - warmup) / (total - warmup)))
        assert r["lr"] == pytest.approx(1e-3 * expected), r


def test_decay_by_time_follows_the_budget(tmp_path, fsdd_dir):
    manifest = fsdd_manifest(fsdd_dir, tmp_path / "train.jsonl", ["4_theo_9", "6_lucas_9"])
    config = small_config(manifest, **{"optim.decay_by": "time", "train.max_minutes": 10,
                                       "optim.warmup_fraction": 0.1, "optim.min_lr_ratio": 0.0})
    schedule = Schedule(config.optim, total_steps=100, budget_seconds=600)
    assert schedule.factor(3, elapsed=30.0) == pytest.approx(0.5)  # half the warmup: a tenth of the ten minutes
    assert schedule.factor(50, elapsed=60.0 + 270.0) == pytest.approx(0.5)  # half the decay, whatever the step
    assert schedule.factor(3, elapsed=600.0) == pytest.approx(0.0)
    # A run trains under it: its learning rates rise over the first minute, whatever the steps.
    train(small_config(manifest, **{"optim.decay_by": "time", "train.max_minutes": 10, "train.max_steps": 3}),
          tmp_path / "exp", progress=False)
    lrs = [r["lr"] for r in read_metrics(tmp_path / "exp" / "metrics.jsonl") if r["event"] == "train"]
    assert len(lrs) == 3 and 0 == lrs[0] < lrs[1] < lrs[2] < 3e-3
    without_budget = small_config(manifest, **{"optim.decay_by": "time"})
    with pytest.raises(ConfigError, match="max_minutes"):
        train(without_budget, tmp_path / "exp2", progress=False)


@pytest.mark.slow
def test_ddp_with_two_gloo_processes(tmp_path, fsdd_dir):
    names = [f"{d}_{s}_{t}" for d in range(10) for s in ("jackson", "nicolas") for t in (10, 11)]
    manifest = fsdd_manifest(fsdd_dir, tmp_path / "train.jsonl", names)
    dev = fsdd_manifest(fsdd_dir, tmp_path / "dev.jsonl", names[:6])
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "asr", "train", "--config", str(REPO / "tests" / "data" / "tiny.yaml"), "--exp-dir",
               str(tmp_path / "exp"), "--device", "cpu", "--quiet", f"data.train={manifest}", f"data.dev={dev}",
               "train.epochs=2"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    log = (tmp_path / "exp" / "train.log").read_text()
    assert "2 process(es)" in log
    assert log.count("validation step") == 2  # once an epoch, by rank 0 only
    assert read_plain_data(tmp_path / "exp" / "model.pt")["metadata"]["dev_wer"] is not None
    # metrics.jsonl: the start (what the run is), every step, both validations as history.json has them, the end.
    records = read_metrics(tmp_path / "exp" / "metrics.jsonl")
    start, *steps, done = records
    assert start["event"] == "start" and done["event"] == "done"
    assert (start["world_size"], start["global_batch_seconds"], start["total_steps"]) == \
        (2, 4.0, 2 * start["steps_per_epoch"])
    history = json.loads((tmp_path / "exp" / "history.json").read_text())
    validations = [r for r in steps if r["event"] == "validation"]
    assert [(r["step"], r["dev_loss"], r["dev_wer"], r["dev_cer"]) for r in validations] == \
        [(h["step"], h["loss"], h["wer"], h["cer"]) for h in history]
    assert [r["step"] for r in steps if r["event"] == "train"] == list(range(1, done["step"] + 1))


def run_on_two_gloo_ranks(script_text: str, folder: Path) -> None:
    """Run a script under torchrun as two CPU processes, with `folder` as its argument (where each rank writes)."""
    script = folder / "script.py"
    script.write_text(script_text)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
               str(folder)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 0, result.stderr[-3000:]


FROM_MAIN_SCRIPT = """
import sys
from asr import distributed
distributed.start("cpu")
rank = distributed.rank()
elapsed = distributed.from_main(100.0 + 7 * rank)  # rank 1's clock says 7 s more
with open(f"{sys.argv[1]}/rank{rank}.txt", "w") as out:  # a file each: the ranks' stdout lines interleave
    out.write(str(elapsed))
distributed.stop()
"""


def test_under_torchrun_every_rank_takes_rank_zeros_value(tmp_path):
    """The trainer shares rank 0's clock this way: the time budget and the learning rate decayed by time must agree
    on every rank, or a rank that stopped a step early would leave the other waiting in all-reduce forever."""
    run_on_two_gloo_ranks(FROM_MAIN_SCRIPT, tmp_path)
    assert [(tmp_path / f"rank{rank}.txt").read_text() for rank in (0, 1)] == ["100.0", "100.0"]


RANK0_TOKENIZER_SCRIPT = """
import json, sys
from asr import distributed
from asr.config import load_config
from asr.train import main_process_tokenizer
distributed.start("cpu")
rank = distributed.rank()
config = load_config(None, ["tokenizer.kind=bpe", "tokenizer.vocab_size=18"])
# The ranks see different texts, so their own sentencepiece runs would disagree.
texts = ["ONE TWO THREE", "FOUR FIVE SIX"] * 50 if rank == 0 else ["SEVEN EIGHT NINE", "ZERO OH"] * 50
tokenizer = main_process_tokenizer(config, texts)
with open(f"{sys.argv[1]}/rank{rank}.json", "w") as out:
    json.dump(tokenizer.tokens, out)
distributed.stop()
"""


def test_under_torchrun_every_rank_takes_rank_zeros_tokenizer(tmp_path):
    """A BPE tokenizer trained once a rank could give the ranks different pieces, and the replicas would then train
    one output layer on different meanings of each token: the ranks must use rank 0's."""
    run_on_two_gloo_ranks(RANK0_TOKENIZER_SCRIPT, tmp_path)
    tokens = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert tokens[0] == tokens[1]
    assert "X" in tokens[1] and "G" not in tokens[1]  # the letters of rank 0's texts (SIX), not its own (EIGHT)
