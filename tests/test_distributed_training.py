"""One training, whatever the number of processes: the same config trained by 1 process, by 2 or 3 gloo processes
under torchrun, or with its global batch accumulated in small micro-batches, takes the same optimizer steps at the
same learning rates, to the same losses and weights (dropout and augmentation off, so that nothing random differs)."""
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import soundfile
import torch

from asr.checkpoint import load_model
from asr.cli import main
from asr.data.manifest import Utterance, write_manifest
from asr.metrics import read_metrics

REPO = Path(__file__).resolve().parents[1]
TINY_CONFIG = REPO / "tests" / "data" / "tiny.yaml"
DIGITS = "ZERO ONE TWO THREE FOUR FIVE SIX SEVEN EIGHT NINE".split()
# Fourteen short recordings and two of over 2 s: with a 4-second global batch, a long one makes a batch of its own,
# so that under 2 or 3 processes some rank's share of that step is empty.
NAMES = [f"{digit}_{speaker}_{take}" for digit in (0, 3, 5, 8) for speaker in ("jackson", "nicolas") for take in (4, 5)]
NAMES = NAMES[:14] + ["7_theo_36", "9_theo_16"]
DETERMINISTIC = ["specaugment.enabled=false", "model.dropout=0.0", "data.speed_factors=[1.0]",
                 "data.max_seconds=4.0", "train.max_steps=7", "train.epochs=100", "optim.warmup_fraction=0.3"]


@pytest.fixture(scope="module")
def manifest(tmp_path_factory, fsdd_dir):
    folder = tmp_path_factory.mktemp("manifest")
    utterances = []
    for name in NAMES:
        info = soundfile.info(fsdd_dir / f"{name}.wav")
        utterances.append(Utterance(name, str(fsdd_dir / f"{name}.wav"), info.frames / info.samplerate,
                                    DIGITS[int(name[0])]))
    write_manifest(folder / "train.jsonl", utterances)
    return folder / "train.jsonl"


def train_arguments(manifest, exp, *settings):
    return ["train", "--config", str(TINY_CONFIG), "--exp-dir", str(exp), "--device", "cpu", "--quiet",
            f"data.train={manifest}", *DETERMINISTIC, *settings]


def torchrun(launch: list[str], arguments: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    """`python -m torch.distributed.run LAUNCH -m asr ARGUMENTS`, one torch thread a process."""
    command = [sys.executable, "-m", "torch.distributed.run", *launch, "-m", "asr", *arguments]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=REPO,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))


def train_records(exp: Path) -> list[dict]:
    return [record for record in read_metrics(exp / "metrics.jsonl") if record["event"] == "train"]


def assert_same_training(exp: Path, reference: Path, world_size: int) -> None:
    """The same steps at the same learning rates, to the same losses and the same weights."""
    records, expected = train_records(exp), train_records(reference)
    assert [r["step"] for r in records] == [r["step"] for r in expected] == list(range(1, 8))
    assert [r["world_size"] for r in records] == [world_size] * 7
    assert [r["lr"] for r in records] == pytest.approx([r["lr"] for r in expected], rel=1e-12)
    assert [r["tokens"] for r in records] == [r["tokens"] for r in expected]
    assert [r["audio_seconds"] for r in records] == pytest.approx([r["audio_seconds"] for r in expected])
    assert [r["loss"] for r in records] == pytest.approx([r["loss"] for r in expected], rel=1e-4)
    assert [r["grad_norm"] for r in records] == pytest.approx([r["grad_norm"] for r in expected], rel=1e-3)
    weights = load_model(reference / "model.pt").state_dict()
    for name, tensor in load_model(exp / "model.pt").state_dict().items():
        torch.testing.assert_close(tensor, weights[name], atol=2e-5, rtol=1e-4, msg=name)


@pytest.fixture(scope="module")
def one_process(manifest, tmp_path_factory):
    exp = tmp_path_factory.mktemp("one") / "exp"
    assert main(train_arguments(manifest, exp)) == 0
    records = train_records(exp)
    assert records[0]["loss"] > records[-1]["loss"]  # it learns: a run that learns nothing would prove nothing
    lrs = [r["lr"] for r in records]
    assert lrs[0] < lrs[1] and lrs[-2] > lrs[-1]  # warmup, then decay
    return exp


def test_accumulating_small_micro_batches_is_the_same_training(manifest, one_process, tmp_path):
    # At most 1 padded second a forward: each 4-second step in several micro-batches, the long utterances alone.
    assert main(train_arguments(manifest, tmp_path / "exp", "data.device_max_seconds=1.0")) == 0
    assert_same_training(tmp_path / "exp", one_process, world_size=1)


@pytest.mark.slow
@pytest.mark.parametrize("processes, settings", [(2, ["data.device_max_seconds=1.0"]), (3, [])])
def test_two_or_three_processes_train_the_same_model_as_one(manifest, one_process, tmp_path, processes, settings):
    result = torchrun(["--standalone", "--nproc_per_node", str(processes)],
                      train_arguments(manifest, tmp_path / "exp", *settings))
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_training(tmp_path / "exp", one_process, world_size=processes)
    log = (tmp_path / "exp" / "train.log").read_text()
    assert f"{processes} process(es)" in log and "global batch 4 padded s a step" in log


# ----------------------------------------------------------------------------------------------------------------
# Two machines: two torchrun launches on this one, each a node of one process, meeting at 127.0.0.1

# Everything random is on (speed perturbation, SpecAugment, dropout): each process draws its own, and a resumed run
# must restore each one's generators.
TWO_NODES = ["data.speed_factors=[0.9,1.0,1.1]", "model.dropout=0.2", "specaugment.enabled=true",
             "train.max_steps=12", "train.checkpoint_every=2", "train.keep_checkpoints=2"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_nodes(manifest, out: str, folders: tuple[Path, Path], *extra) -> list[subprocess.Popen]:
    """Node 0 and node 1, each `torchrun --nnodes 2 --node-rank K` of one process, in its own working folder (`out`
    relative to it, or absolute: one folder both see)."""
    port = free_port()
    nodes = []
    for node_rank, folder in enumerate(folders):
        folder.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank", str(node_rank),
                   "--master-addr", "127.0.0.1", "--master-port", str(port), "--nproc-per-node", "1", "-m", "asr",
                   *train_arguments(manifest, out, *TWO_NODES), *extra]
        with open(folder / "stderr.txt", "a") as stderr:
            nodes.append(subprocess.Popen(command, cwd=folder, stdout=subprocess.DEVNULL, stderr=stderr,
                                          env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))))
    return nodes


def wait_for(nodes: list[subprocess.Popen], folders, timeout: float = 300) -> None:
    """Both nodes' success. A node that fails ends the other at once: a torchrun whose workers finished waits up to
    300 s (its exit barrier, which its command line cannot shorten) for a node whose worker died."""
    deadline = time.monotonic() + timeout
    while any(node.poll() is None for node in nodes) and time.monotonic() < deadline:
        if any(node.poll() for node in nodes):
            break
        time.sleep(0.2)
    codes = [node.poll() for node in nodes]
    kill_process_trees([node.pid for node in nodes if node.poll() is None])
    for node in nodes:
        node.wait()
    for code, folder in zip(codes, folders):
        assert code == 0, (folder / "stderr.txt").read_text()[-3000:]


@pytest.mark.slow
def test_two_nodes_train_to_the_end_and_killed_both_resume_to_the_same_weights(manifest, tmp_path):
    # Uninterrupted, each node in its own folder, `--exp-dir exp` relative to it: global rank 0 writes everything, and
    # node 1's process (local rank 0 of its machine) writes nothing at all.
    folders = (tmp_path / "machine0", tmp_path / "machine1")
    wait_for(start_nodes(manifest, "exp", folders), folders)
    straight = folders[0] / "exp"
    assert (straight / "model.pt").is_file() and (straight / "checkpoints" / "ckpt-12.pt").is_file()
    assert sorted(path.name for path in folders[1].rglob("*")) == ["stderr.txt"]
    assert "2 process(es)" in (straight / "train.log").read_text()

    # Killed, both at once, after the checkpoint of step 6 and before the next one; then both restarted with --resume,
    # writing to one folder both see (as on a cluster's shared file system).
    exp = tmp_path / "shared" / "exp"
    folders = (tmp_path / "node0", tmp_path / "node1")
    nodes = start_nodes(manifest, str(exp), folders)
    started = time.monotonic()
    while not ((exp / "checkpoints" / "ckpt-6.pt").exists() and last_step_in(exp) >= 7):
        assert time.monotonic() - started < 300 and all(node.poll() is None for node in nodes), \
            (folders[0] / "stderr.txt").read_text()[-3000:]
        time.sleep(0.02)
    kill_process_trees([node.pid for node in nodes])
    for node in nodes:
        node.wait()
    assert not (exp / "model.pt").exists() and "done:" not in (exp / "train.log").read_text()
    wait_for(start_nodes(manifest, str(exp), folders, "--resume"), folders)

    resumed_at = re.findall(r"resumed from \S+ at step (\d+)", (exp / "train.log").read_text())
    assert resumed_at in (["6"], ["8"])  # some work after the checkpoint was lost, and done again
    records, expected = train_records(exp), train_records(straight)
    assert [r["step"] for r in records] == [r["step"] for r in expected] == list(range(1, 13))
    assert [r["loss"] for r in records] == pytest.approx([r["loss"] for r in expected], rel=1e-6)
    weights = load_model(straight / "model.pt").state_dict()
    for name, tensor in load_model(exp / "model.pt").state_dict().items():
        torch.testing.assert_close(tensor, weights[name], atol=1e-6, rtol=0, msg=name)


def kill_process_trees(pids: list[int]) -> None:
    """SIGKILL the processes and all their descendants at once, as a machine that fails takes them all. (torchrun
    starts its workers in sessions of their own: killing its process group would leave them training.)"""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(stat.parent.name))
    tree, todo = [], list(pids)
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo += children.get(pid, [])
    for pid in tree:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def last_step_in(exp: Path) -> int:
    records = train_records(exp)
    return records[-1]["step"] if records else 0


@pytest.mark.slow
def test_a_node_that_does_not_see_the_checkpoint_stops_the_resumed_run(manifest, tmp_path):
    # --exp-dir relative to folders that are not shared: node 1 does not see node 0's checkpoints, and must not train
    # from scratch beside a node that resumed.
    folders = (tmp_path / "machine0", tmp_path / "machine1")
    wait_for(start_nodes(manifest, "exp", folders, "train.max_steps=2"), folders)
    nodes = start_nodes(manifest, "exp", folders, "train.max_steps=4", "--resume")
    for node in nodes:
        assert node.wait(timeout=300) != 0
    assert "the checkpoint to resume from is missing on some node; --exp-dir must be a folder that every node sees" in \
        (folders[0] / "stderr.txt").read_text() + (folders[1] / "stderr.txt").read_text()


# A NaN loss on rank 1 only, at its third micro-batch: under DDP the step must be skipped on both ranks (a rank that
# went on to its backward would wait for the other's gradients forever).
NAN_ON_RANK_1 = """
import sys
import torch
from asr import distributed
from asr.cli import main
import asr.train
loss, calls = asr.train.batch_loss, []
def nan_on_rank_1(model, batch, amp_dtype):
    calls.append(batch.ids)
    value = loss(model, batch, amp_dtype)
    return value * float("nan") if distributed.rank() == 1 and len(calls) == 3 else value
asr.train.batch_loss = nan_on_rank_1
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_a_nan_on_one_process_skips_the_step_on_every_process(manifest, tmp_path):
    script = tmp_path / "train.py"
    script.write_text(NAN_ON_RANK_1)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
               *train_arguments(manifest, tmp_path / "exp", "data.device_max_seconds=1.0")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=REPO,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 0, result.stderr[-3000:]
    log = (tmp_path / "exp" / "train.log").read_text()
    assert log.count("skipped a batch (loss is NaN or infinite)") == 1
    assert "done: 7 steps" in log and "1 bad batches skipped" in log
    assert [r["step"] for r in train_records(tmp_path / "exp")] == list(range(1, 8))
