"""Training interrupted: killed at random moments, killed while writing a checkpoint, a full disk, a batch too large
for the GPU, NaN losses.

After a kill, `asr train --resume` must end with the model a run never interrupted ends with (on CPU, within float
tolerance) and the same list of skipped utterances; a full disk or too many bad batches must stop the run with a
clear message, its last checkpoint intact.
"""
import errno
import os
import random
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import soundfile
import torch

import asr.train
from asr.checkpoint import load_checkpoint, load_model, read_plain_data
from asr.cli import main
from asr.data.manifest import Utterance, write_manifest
from asr.errors import ModelFileError
from asr.metrics import read_metrics

REPO = Path(__file__).resolve().parents[1]
TINY_CONFIG = REPO / "tests" / "data" / "tiny.yaml"
DIGITS = "ZERO ONE TWO THREE FOUR FIVE SIX SEVEN EIGHT NINE".split()
MAX_STEPS = 24
# Everything random is on (speed perturbation, SpecAugment, dropout, shuffled buckets), a checkpoint every step,
# and the steps run through several epochs.
SETTINGS = ["data.speed_factors=[0.9,1.0,1.1]", "model.dropout=0.2", "data.max_seconds=2.0",
            f"train.max_steps={MAX_STEPS}", "train.epochs=100", "train.checkpoint_every=1", "train.keep_checkpoints=2"]
STEP_LINE = re.compile(r"step (\d+) epoch \d+ loss ([0-9.e+-]+|nan|inf)")
STALL_SECONDS = 120  # a run that logs nothing new for this long has hung


@pytest.fixture(scope="module")
def manifest(tmp_path_factory, fsdd_dir):
    """Twelve real FSDD recordings, and one missing file that every run must list as skipped."""
    folder = tmp_path_factory.mktemp("manifest")
    utterances = []
    for name in [f"{digit}_{speaker}_{take}" for digit in (1, 4, 7) for speaker in ("jackson", "theo")
                 for take in (20, 21)]:
        info = soundfile.info(fsdd_dir / f"{name}.wav")
        utterances.append(Utterance(name, str(fsdd_dir / f"{name}.wav"), info.frames / info.samplerate,
                                    DIGITS[int(name[0])]))
    utterances.append(Utterance("missing", str(folder / "missing.wav"), 0.5, "ONE"))
    write_manifest(folder / "train.jsonl", utterances)
    return folder / "train.jsonl"


def train_arguments(manifest, exp, *extra):
    return ["train", "--config", str(TINY_CONFIG), "--exp-dir", str(exp), "--device", "cpu", "--quiet",
            *extra, f"data.train={manifest}", *SETTINGS]


def start_training(manifest, exp, *extra, prelude=""):
    """`python -m asr train ...` in a new process; `prelude` is Python run before the CLI (to sabotage it)."""
    script = f"{prelude}\nimport sys\nfrom asr.cli import main\nsys.exit(main(sys.argv[1:]))"
    with open(exp.parent / f"{exp.name}.stderr", "a") as stderr:
        return subprocess.Popen([sys.executable, "-c", script, *train_arguments(manifest, exp, *extra)],
                                stdout=subprocess.DEVNULL, stderr=stderr, cwd=REPO)


@pytest.fixture(scope="module")
def uninterrupted(manifest, tmp_path_factory):
    """The experiment folder of a run never interrupted."""
    exp = tmp_path_factory.mktemp("uninterrupted") / "exp"
    assert start_training(manifest, exp).wait() == 0, (exp.parent / "exp.stderr").read_text()
    return exp


def logged_losses(exp):
    """step → loss from train.log; a step redone after a resume overwrites the lost one."""
    return {int(step): float(loss) for step, loss in STEP_LINE.findall((exp / "train.log").read_text())}


def train_records(exp):
    return [record for record in read_metrics(exp / "metrics.jsonl") if record["event"] == "train"]


def assert_same_run(exp, uninterrupted):
    """Same losses at every step, same final weights, same skipped utterances."""
    losses = logged_losses(exp)
    assert sorted(losses) == list(range(1, MAX_STEPS + 1))
    assert losses == pytest.approx(logged_losses(uninterrupted), rel=1e-5, abs=1e-6)
    # metrics.jsonl holds each step once, though the steps after the last checkpoint were taken again.
    records = train_records(exp)
    assert [record["step"] for record in records] == list(range(1, MAX_STEPS + 1))
    assert [record["loss"] for record in records] == \
        pytest.approx([record["loss"] for record in train_records(uninterrupted)], rel=1e-5, abs=1e-6)
    expected = load_model(uninterrupted / "model.pt").state_dict()
    for name, tensor in load_model(exp / "model.pt").state_dict().items():
        torch.testing.assert_close(tensor, expected[name], atol=1e-5, rtol=0, msg=name)
    assert (exp / "skipped.tsv").read_text() == (uninterrupted / "skipped.tsv").read_text()
    assert (exp / "skipped.tsv").read_text().startswith("missing\tunreadable audio: ")


def last_step_logged_since(log: Path, offset: int) -> int:
    """The last step the run writing `log` reported after byte `offset`; 0 before its first."""
    text = log.read_text()[offset:] if log.exists() else ""
    steps = [int(step) for step, _ in STEP_LINE.findall(text)]
    return steps[-1] if steps else 0


# ----------------------------------------------------------------------------------------------------------------
# SIGKILL


@pytest.mark.slow
def test_killed_at_random_moments_then_resumed_it_ends_as_if_never_interrupted(manifest, uninterrupted, tmp_path):
    rng = random.Random(20240607)
    # Kill once during start-up, up to 3 s after the launch (step 0), then after a random step in each quarter of
    # the run, each time a random fraction of a step later: inside a step, while checkpointing, between the two.
    quarter = MAX_STEPS // 4
    kill_after_steps = [0] + [rng.randrange(i * quarter + 1, (i + 1) * quarter - 1) for i in range(4)]
    exp = tmp_path / "exp"
    kills = 0
    while not (exp / "model.pt").exists():
        log_offset = (exp / "train.log").stat().st_size if (exp / "train.log").exists() else 0
        process = start_training(manifest, exp, *(["--resume"] if kills else []))
        if kills < len(kill_after_steps):
            target = kill_after_steps[kills]
            started, progress = time.monotonic(), 0
            while process.poll() is None and progress < target:
                assert time.monotonic() - started < STALL_SECONDS, f"no step past {progress} in {STALL_SECONDS} s"
                time.sleep(0.02)
                progress = last_step_logged_since(exp / "train.log", log_offset)
            time.sleep(rng.uniform(0.0, 3.0) if target == 0 else rng.uniform(0.0, 0.15))
            process.send_signal(signal.SIGKILL)
            assert process.wait() == -signal.SIGKILL, (tmp_path / "exp.stderr").read_text()
            kills += 1
        else:
            assert process.wait() == 0, (tmp_path / "exp.stderr").read_text()
    assert kills == len(kill_after_steps)
    assert_same_run(exp, uninterrupted)


# ----------------------------------------------------------------------------------------------------------------
# Killed while writing a checkpoint

# torch.save patched to write half of the 5th file it saves, make that half durable, then SIGKILL its own process:
# the 5th checkpoint's temporary file is left half written, as by a kill at the worst moment.
DIES_HALFWAY_THROUGH_THE_FIFTH_WRITE = textwrap.dedent("""
    import io, os, signal
    import torch
    save, files = torch.save, []
    def save_then_die_halfway(payload, file, *args, **kwargs):
        files.append(file)
        if len(files) < 5:
            return save(payload, file, *args, **kwargs)
        whole = io.BytesIO()
        save(payload, whole, *args, **kwargs)
        file.write(whole.getvalue()[:len(whole.getvalue()) // 2])
        file.flush()
        os.fsync(file.fileno())
        os.kill(os.getpid(), signal.SIGKILL)
    torch.save = save_then_die_halfway
""")


@pytest.mark.slow
def test_killed_while_writing_a_checkpoint_the_previous_one_loads_and_resume_works(manifest, uninterrupted,
                                                                                  tmp_path):
    exp = tmp_path / "exp"
    process = start_training(manifest, exp, prelude=DIES_HALFWAY_THROUGH_THE_FIFTH_WRITE)
    assert process.wait() == -signal.SIGKILL, (tmp_path / "exp.stderr").read_text()
    checkpoints = exp / "checkpoints"
    (half_written,) = checkpoints.glob(".ckpt-5.pt.*.tmp")
    assert sorted(path.name for path in checkpoints.glob("ckpt-*.pt")) == ["ckpt-3.pt", "ckpt-4.pt"]
    assert load_checkpoint(checkpoints / "ckpt-4.pt")["trainer"]["step"] == 4
    with pytest.raises(ModelFileError, match="not a readable model file"):  # what the kill left is no checkpoint
        read_plain_data(half_written)

    assert start_training(manifest, exp, "--resume").wait() == 0, (tmp_path / "exp.stderr").read_text()
    assert not half_written.exists()
    assert f"removed {half_written}" in (exp / "train.log").read_text()
    assert_same_run(exp, uninterrupted)


# ----------------------------------------------------------------------------------------------------------------
# A full disk


def test_a_full_disk_stops_training_with_a_clear_message_and_resume_continues(manifest, uninterrupted, tmp_path,
                                                                              monkeypatch, capsys):
    save, files = torch.save, []

    def disk_full_at_the_fifth_write(payload, file, *args, **kwargs):
        files.append(file)
        if len(files) < 5:
            return save(payload, file, *args, **kwargs)
        file.write(b"\0" * 4096)  # what fitted
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    exp = tmp_path / "exp"
    monkeypatch.setattr(torch, "save", disk_full_at_the_fifth_write)
    assert main(train_arguments(manifest, exp)) == 1
    checkpoints = exp / "checkpoints"
    assert capsys.readouterr().err == (f"asr train: error: {checkpoints / 'ckpt-5.pt'}: could not write (No space "
                                       f"left on device); the previous file, if any, is intact\n")
    assert sorted(path.name for path in checkpoints.iterdir()) == ["ckpt-3.pt", "ckpt-4.pt"]  # no partial file
    assert load_checkpoint(checkpoints / "ckpt-4.pt")["trainer"]["step"] == 4

    monkeypatch.setattr(torch, "save", save)  # space freed
    assert main(train_arguments(manifest, exp, "--resume")) == 0
    assert_same_run(exp, uninterrupted)


# ----------------------------------------------------------------------------------------------------------------
# Bad batches


def run_with_losses_replaced(monkeypatch, manifest, exp, replace, *settings):
    """Train in this process with asr.train.batch_loss wrapped: `replace(call_number, loss_of)` returns the loss of
    the call-th batch (1-based), or raises; `loss_of()` computes the real one. Returns the CLI's exit status."""
    loss, calls = asr.train.batch_loss, []

    def replaced_loss(model, batch, amp_dtype):
        calls.append(batch.ids)
        return replace(len(calls), lambda: loss(model, batch, amp_dtype))

    monkeypatch.setattr(asr.train, "batch_loss", replaced_loss)
    return main(train_arguments(manifest, exp) + list(settings)), calls


def test_a_batch_too_large_for_the_gpu_is_skipped_counted_and_training_goes_on(manifest, tmp_path, monkeypatch):
    def out_of_memory_on_batches_3_and_4(call, loss_of):
        if call in (3, 4):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 80.00 GiB")
        return loss_of()

    exp = tmp_path / "exp"
    status, calls = run_with_losses_replaced(monkeypatch, manifest, exp, out_of_memory_on_batches_3_and_4,
                                             "train.max_steps=6")
    assert status == 0
    log = (exp / "train.log").read_text()
    warnings = [line for line in log.splitlines() if "skipped a batch" in line]
    assert len(warnings) == 2
    for warning, ids in zip(warnings, calls[2:4]):
        assert "WARNING" in warning and "out of GPU memory; lower data.device_max_seconds" in warning
        assert warning.endswith(" ".join(ids[:5]))  # names the batch's utterances
    assert "done: 6 steps" in log and "2 bad batches skipped" in log
    assert load_checkpoint(exp / "checkpoints" / "ckpt-6.pt")["trainer"]["bad_batches"] == 2
    assert len(calls) == 6 + 2  # every step after a skipped batch came from a fresh one


OUT_OF_MEMORY_ON_THE_SECOND_BATCH = textwrap.dedent("""
    import torch
    import asr.train
    loss, calls = asr.train.batch_loss, []
    def out_of_memory_on_the_second_batch(model, batch, amp_dtype):
        calls.append(batch.ids)
        if len(calls) == 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 80.00 GiB")
        return loss(model, batch, amp_dtype)
    asr.train.batch_loss = out_of_memory_on_the_second_batch
""")


@pytest.mark.slow
def test_under_torchrun_a_batch_too_large_for_the_gpu_stops_the_run_with_a_clear_message(manifest, tmp_path):
    # Skipping it on one process would leave the others waiting for its gradients forever.
    script = tmp_path / "train.py"
    script.write_text(f"{OUT_OF_MEMORY_ON_THE_SECOND_BATCH}\nimport sys\nfrom asr.cli import main\n"
                      f"sys.exit(main(sys.argv[1:]))\n")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
               *train_arguments(manifest, tmp_path / "exp")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=REPO,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode != 0
    assert re.search(r"asr train: error: step 1: out of GPU memory on a batch of \d+ utterances \(\S+.*\); "
                     r"lower data.device_max_seconds", result.stderr), result.stderr[-3000:]


def test_nan_losses_are_skipped_counted_and_too_many_in_a_row_stop_the_run(manifest, tmp_path, monkeypatch, capsys):
    def nan_on_batch_2_then_from_batch_5_on(call, loss_of):
        return loss_of() * float("nan") if call == 2 or call >= 5 else loss_of()

    exp = tmp_path / "exp"
    status, calls = run_with_losses_replaced(monkeypatch, manifest, exp, nan_on_batch_2_then_from_batch_5_on,
                                             "train.max_bad_batches_in_row=3")
    assert status == 1
    assert capsys.readouterr().err == ("asr train: error: 3 bad batches in a row (last: loss is NaN or infinite); "
                                       "stopping. Lower optim.lr, check the data, or raise "
                                       "train.max_bad_batches_in_row\n")
    log = (exp / "train.log").read_text()
    assert log.count("skipped a batch (loss is NaN or infinite)") == 4  # the lone one did not count towards 3
    assert len(calls) == 7 and max(logged_losses(exp)) == 3
    assert load_checkpoint(exp / "checkpoints" / "ckpt-3.pt")["trainer"]["step"] == 3  # the last good state
