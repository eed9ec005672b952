"""The LibriSpeech recipe (recipes/librispeech/run.sh) on LibriSpeech-shaped trees: real FLACs from test-clean and a
synthetic corpus, served as archives by a local HTTP server, and the experiment report (asr/report.py)."""
import gzip
import hashlib
import importlib.util
import io
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
from download_server import serve

from asr.checkpoint import save_checkpoint, save_model
from asr.cli import main as asr_main
from asr.config import load_config
from asr.data.manifest import read_manifest
from asr.errors import AsrError
from asr.lm import build_arpa
from asr.recognizer import Recognizer
from asr.report import format_report, read_curves, summarize_experiment, write_report
from asr.text import CharTokenizer, normalize_text

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "librispeech"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run_recipe(work_dir: Path, *args: str) -> subprocess.CompletedProcess:
    """run.sh with data/ and exp/ under work_dir, the python of this test session first on the PATH."""
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    return subprocess.run(["bash", str(RECIPE / "run.sh"), "--work-dir", str(work_dir), *args], env=env,
                          capture_output=True, text=True, timeout=600)


def tar_gz(folders: dict[str, Path]) -> bytes:
    """A .tar.gz holding each folder under its member name (e.g. "LibriSpeech/test-clean")."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, folder in folders.items():
            tar.add(folder, arcname=name)
    return buffer.getvalue()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def transcripts(tree: Path) -> dict[str, str]:
    """utterance id → text of every .trans.txt under a LibriSpeech subset folder: the reference to compare with."""
    lines = [line.split(" ", 1) for path in tree.rglob("*.trans.txt") for line in path.read_text().splitlines()]
    return {utterance_id: text for utterance_id, text in lines}


# ----------------------------------------------------------------------------------------------------------------
# Stage 0 and 1: an existing tree, and the download stage's resume, checksum and extraction safety


ONE_SUBSET = ("--train-sets", "test-clean", "--dev-sets", "test-clean", "--test-sets", "test-clean")


@pytest.fixture
def real_test_clean(original_formats) -> Path:
    return original_formats / "LibriSpeech" / "test-clean"


def test_data_root_skips_the_download_and_prepares_the_real_tree(tmp_path, original_formats, real_test_clean):
    result = run_recipe(tmp_path, "--data-root", str(original_formats), *ONE_SUBSET, "--stop-stage", "1")
    assert result.returncode == 0, result.stderr
    assert "download skipped" in result.stdout
    assert not (tmp_path / "data" / "download").exists()
    utterances = read_manifest(tmp_path / "data" / "manifests" / "test-clean.jsonl")
    expected = transcripts(real_test_clean)
    assert len(expected) == 4
    assert {u.id: u.text for u in utterances} == {i: normalize_text(t) for i, t in expected.items()}
    assert all(Path(u.audio).resolve().is_relative_to(real_test_clean.resolve()) for u in utterances)


def download_stage(tmp_path, server, checksums: dict[str, str], *options: str) -> subprocess.CompletedProcess:
    checksums_file = tmp_path / "checksums.json"
    checksums_file.write_text(json.dumps(checksums))
    return run_recipe(tmp_path / "work", "--mirror", server.base_url, "--checksums", str(checksums_file),
                      *ONE_SUBSET, "--stop-stage", "0", *options)


@pytest.mark.parametrize("keep", [False, True], ids=["archive-deleted", "keep-archives"])
def test_download_stage_resumes_an_interrupted_download(tmp_path, real_test_clean, keep):
    archive = tar_gz({"LibriSpeech/test-clean": real_test_clean})
    partial = tmp_path / "work" / "data" / "download" / "test-clean.tar.gz.part"
    partial.parent.mkdir(parents=True)
    partial.write_bytes(archive[: len(archive) // 2])  # what an interrupted run left behind
    with serve({"/12/test-clean.tar.gz": archive}) as server:
        result = download_stage(tmp_path, server, {"test-clean": sha256(archive)}, *["--keep-archives"] * keep)
        assert result.returncode == 0, result.stderr
        assert server.requests == [("/12/test-clean.tar.gz", f"bytes={len(archive) // 2}-")]
        extracted = partial.parent / "LibriSpeech" / "test-clean"
        assert transcripts(extracted) == transcripts(real_test_clean)
        kept = partial.parent / "test-clean.tar.gz"
        assert kept.read_bytes() == archive if keep else not kept.exists()
        # Deleted or kept, the verified extraction is not fetched again.
        assert download_stage(tmp_path, server, {"test-clean": sha256(archive)}).returncode == 0
        assert len(server.requests) == 1


def test_download_refuses_to_start_without_the_free_disk_it_needs(tmp_path, real_test_clean, monkeypatch):
    from asr.data.librispeech import download_librispeech

    archives = {subset: tar_gz({f"LibriSpeech/{subset}": real_test_clean}) for subset in ("test-clean", "dev-clean")}
    checksums = {subset: sha256(body) for subset, body in archives.items()}
    first, last = (len(archives[subset]) for subset in ("test-clean", "dev-clean"))
    # Archives deleted once extracted: the peak is both extractions (1.1 times each archive's bytes) and the last
    # archive; kept: both archives too.
    peak = {False: int(1.1 * first) + int(1.1 * last) + last,
            True: first + int(1.1 * first) + last + int(1.1 * last)}
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**12, 10**12 - 1000, 1000))
    with serve({f"/12/{subset}.tar.gz": body for subset, body in archives.items()}) as server:
        for keep in (False, True):
            needed = rf"{peak[keep] / 1e6:.1f} MB \({peak[keep]} bytes\)"
            with pytest.raises(AsrError, match=rf"LibriSpeech test-clean, dev-clean .* need about {needed} free, "
                                               rf"and the disk has 0.0 MB"):
                download_librispeech(["test-clean", "dev-clean"], tmp_path / "dl", base_url=f"{server.base_url}/12",
                                     checksums=checksums, progress=False, keep_archives=keep)
            assert server.requests == [] and not (tmp_path / "dl").exists()  # nothing fetched, nothing written


def test_download_stage_refuses_a_corrupt_archive(tmp_path, real_test_clean):
    archive = tar_gz({"LibriSpeech/test-clean": real_test_clean})
    corrupt = bytearray(archive)
    corrupt[len(corrupt) // 2] ^= 0xFF
    with serve({"/12/test-clean.tar.gz": bytes(corrupt)}) as server:
        result = download_stage(tmp_path, server, {"test-clean": sha256(archive)})
    assert result.returncode != 0
    assert f"fails its sha256 checksum: expected {sha256(archive)}, got {sha256(bytes(corrupt))}" in result.stderr
    assert "test-clean.tar.gz" in result.stderr
    download_dir = tmp_path / "work" / "data" / "download"
    assert not (download_dir / "LibriSpeech").exists()
    assert [path.name for path in download_dir.iterdir()] == []  # deleted, so the next run starts afresh


def test_download_stage_refuses_an_archive_member_outside_its_folder(tmp_path, real_test_clean):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(real_test_clean, arcname="LibriSpeech/test-clean")
        payload = b"overwritten"
        member = tarfile.TarInfo("LibriSpeech/test-clean/../../../escaped.txt")
        member.size = len(payload)
        tar.addfile(member, io.BytesIO(payload))
    archive = buffer.getvalue()
    with serve({"/12/test-clean.tar.gz": archive}) as server:
        result = download_stage(tmp_path, server, {"test-clean": sha256(archive)})
    assert result.returncode != 0
    assert "refusing to extract member 'LibriSpeech/test-clean/../../../escaped.txt'" in result.stderr
    assert not list(tmp_path.rglob("escaped.txt"))


def test_unreadable_checksums_file_is_named(tmp_path, capsys):
    bad = tmp_path / "checksums.json"
    bad.write_text("{not json")
    assert asr_main(["download", "librispeech", "--out-dir", str(tmp_path), "--checksums", str(bad)]) == 1
    assert f"{bad}: cannot read the checksums" in capsys.readouterr().err


def test_more_gpus_than_the_machine_has_are_refused(tmp_path, original_formats):
    import torch

    asked = torch.cuda.device_count() + 1
    result = run_recipe(tmp_path, "--data-root", str(original_formats), *ONE_SUBSET, "--stage", "4",
                        "--stop-stage", "4", "--gpus", str(asked))
    assert result.returncode == 2
    assert f"--gpus {asked}, but this machine has {asked - 1} GPU(s)" in result.stderr
    assert not (tmp_path / "exp").exists()


TINY_TRAINING = ["train.max_steps=4", "train.max_minutes=0", "optim.decay_by=steps", "model.num_layers=1",
                 "model.hidden_size=16", "model.subsampling_channels=4", "data.max_seconds=40", "data.num_workers=0",
                 "optim.warmup_fraction=0.25", "train.log_every=1"]


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


FAKE_SLURM = {  # just enough of SLURM for local/train.sbatch: every "node" is this machine
    "scontrol": '#!/bin/sh\necho 127.0.0.1\n',
    "srun": '#!/usr/bin/env bash\nwhile [[ $1 == -* ]]; do shift; done\n'
            'for ((node = 0; node < SLURM_JOB_NUM_NODES; node++)); do SLURM_NODEID=$node "$@" & done\n'
            'status=0; for job in $(jobs -p); do wait "$job" || status=1; done; exit $status\n',
}


@pytest.mark.slow
def test_the_sbatch_example_trains_on_two_nodes_through_the_recipe(tmp_path, original_formats):
    """local/train.sbatch under a stand-in srun: two run.sh launches on this machine as nodes 0 and 1, each a torchrun
    of one CPU process (gloo), meeting at 127.0.0.1."""
    common = ["--work-dir", str(tmp_path / "work"), "--data-root", str(original_formats), *ONE_SUBSET,
              "--config", "debug", *TINY_TRAINING]
    prepared = run_recipe(tmp_path / "work", *common[2:], "--stop-stage", "3")
    assert prepared.returncode == 0, prepared.stderr[-2000:]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in FAKE_SLURM.items():
        (bin_dir / name).write_text(body)
        (bin_dir / name).chmod(0o755)
    port = free_port()
    while not 20000 <= port < 40000:  # the script's port is 20000 + job id % 20000: a job id that makes it a free one
        port = free_port()
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               SLURM_JOB_NODELIST="node[1-2]", SLURM_JOB_NUM_NODES="2", SLURM_JOB_ID=str(port - 20000),
               SLURM_SUBMIT_DIR=str(REPO))
    result = subprocess.run(["bash", str(RECIPE / "local" / "train.sbatch"), *common, "--cpu-procs", "1"], env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"2 node(s) × 1 GPU(s), rendezvous at 127.0.0.1:{port}" in result.stdout
    assert result.stdout.count("stage 4: train exp/debug on test-clean (2 node(s) × 1 cpu process(es))") == 2
    exp = tmp_path / "work" / "exp" / "debug"
    assert "on cpu, 2 process(es)" in (exp / "train.log").read_text()
    assert (exp / "model.pt").is_file()
    assert json.loads((exp / "history.json").read_text())[-1]["step"] == 4


def test_lm_text_leaves_out_the_dev_and_test_transcripts(tmp_path):
    manifest = tmp_path / "dev.jsonl"
    manifest.write_text("".join(json.dumps({"id": str(n), "audio": "a.flac", "duration": 1.0, "text": text}) + "\n"
                                for n, text in enumerate(["HELLO THERE WORLD", "IN THE FIFTH CENTURY A D"])))
    text = tmp_path / "text.txt"
    text.write_text("Hello there, world!\nhello there world again\n\nIn the fifth century A.D.\nAnother line.\n")
    out = tmp_path / "lm.txt"
    result = subprocess.run([sys.executable, str(RECIPE / "local" / "lm_text.py"), "--text", str(text), "--exclude",
                             str(manifest), "--out", str(out)], capture_output=True, text=True,
                            env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert result.returncode == 0, result.stderr
    assert out.read_text().splitlines() == ["HELLO THERE WORLD AGAIN", "ANOTHER LINE"]


def load_tune_lm():
    spec = importlib.util.spec_from_file_location("tune_lm", RECIPE / "local" / "tune_lm.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tune_lm_loads_the_lm_once_for_the_grid_and_the_decoding(tmp_path, real_test_clean, kenlm_loads, capsys):
    assert asr_main(["prepare", "librispeech", "--root", str(real_test_clean.parents[1]), "--subsets", "test-clean",
                     "--out-dir", str(tmp_path)]) == 0
    manifest = tmp_path / "test-clean.jsonl"
    references = {utterance.id: utterance.text for utterance in read_manifest(manifest)}
    build_arpa(list(references.values()), tmp_path / "lm.arpa", order=2)
    config = load_config(None, ["model.num_layers=1", "model.hidden_size=8", "model.subsampling_channels=4"])
    tokenizer = CharTokenizer()
    config.model.vocab_size, config.model.input_dim = tokenizer.vocab_size, config.features.n_mels
    torch.manual_seed(0)
    recognizer = Recognizer(config.model, config.features, tokenizer,
                            cmvn_stats={"mean": [0.0] * config.features.n_mels, "std": [1.0] * config.features.n_mels})
    save_model(recognizer, tmp_path / "model.pt", {"step": 1})
    out = tmp_path / "decode_lm"
    assert load_tune_lm().main(["--model", str(tmp_path / "model.pt"), "--lm", str(tmp_path / "lm.arpa"), "--dev",
                                str(manifest), "--lm-weights", "0.5", "1", "2", "--word-scores", "-1", "1",
                                "--tune-beam", "4", "--beam-size", "8", "--decode", str(manifest), "--out",
                                str(out), "--device", "cpu"]) == 0
    assert kenlm_loads == [str(tmp_path / "lm.arpa")]  # six grid points and the decoding: one load
    tuning = json.loads((out / "tuning.json").read_text())
    assert [(p["lm_weight"], p["word_score"]) for p in tuning["points"]] == [
        (w, s) for w in (0.5, 1.0, 2.0) for s in (-1.0, 1.0)]
    best = min(tuning["points"], key=lambda point: point["errors"])
    chosen = json.loads((out / "decoding.json").read_text())
    assert (chosen["lm_weight"], chosen["word_score"], chosen["beam_size"], chosen["tune_beam_size"]) == (
        best["lm_weight"], best["word_score"], 8, 4)
    # Every word score of a two-value grid is an edge; an LM weight is one unless it is the middle value, 1.
    expected_edges = (["lm_weight"] if best["lm_weight"] != 1.0 else []) + ["word_score"]
    assert chosen["on_grid_edge"] == expected_edges
    err = capsys.readouterr().err
    assert ("best lm weight" in err) == (best["lm_weight"] != 1.0)
    assert "best word score" in err and "widen --word-scores" in err
    scores = json.loads((out / "test-clean" / "wer.json").read_text())
    assert scores["utterances"] == len(references)
    assert scores["words"] == sum(len(text.split()) for text in references.values())


# ----------------------------------------------------------------------------------------------------------------
# The report


@pytest.fixture
def experiment(tmp_path) -> Path:
    """An experiment folder as training and decoding leave it, with figures chosen by hand."""
    exp = tmp_path / "exp" / "tiny"
    config = load_config(None, ["model.num_layers=2", "model.hidden_size=8", "model.subsampling_channels=4",
                                "features.n_mels=16"])
    tokenizer = CharTokenizer()
    config.model.vocab_size, config.model.input_dim = tokenizer.vocab_size, 16
    recognizer = Recognizer(config.model, config.features, tokenizer,
                            cmvn_stats={"mean": [0.0] * 16, "std": [1.0] * 16})
    save_model(recognizer, exp / "model.pt", {"step": 20, "epoch": 2, "train_hours": 0.1})
    save_checkpoint(exp / "checkpoints" / "ckpt-30.pt", recognizer, {},
                    {"step": 30, "epoch": 3, "train_hours": 0.25, "train_manifest": "data/manifests/train.jsonl"})
    save_checkpoint(exp / "checkpoints" / "ckpt-9.pt", recognizer, {}, {"step": 9, "epoch": 1, "train_hours": 0.05})
    start = {"event": "start", "utterances": 40, "audio_hours": 0.1, "device": "cuda:0", "global_batch_seconds": 4800.0,
             "steps_per_epoch": 10, "total_steps": 30}
    train = {"event": "train", "lr": 1e-3, "grad_norm": 1.0}
    records = [{**start, "step": 0, "world_size": 2}, {**train, "step": 10, "loss": 3.5},
               {"event": "validation", "step": 10, "dev_loss": 3.0, "dev_wer": 0.9, "dev_cer": 0.5},
               {**train, "step": 20, "loss": 2.9},  # as if the file were not cut back at the resume: the later wins
               {**start, "step": 10, "world_size": 4}, {**train, "step": 20, "loss": 2.5},
               {**train, "step": 30, "loss": 2.0},
               {"event": "validation", "step": 30, "dev_loss": 2.2, "dev_wer": 0.6, "dev_cer": 0.3}]
    (exp / "metrics.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records))
    for name, wers in (("greedy", (0.5, 0.625)), ("lm_small", (0.25, 0.375))):
        folder = exp / f"decode_{name}"
        folder.mkdir()
        results = [{"manifest": f"data/manifests/{subset}.jsonl", "wer": wer}
                   for subset, wer in zip(("dev-clean", "test-clean"), wers)]
        (folder / "results.json").write_text(json.dumps({"results": results}))
    (exp / "decode_lm_small" / "decoding.json").write_text(json.dumps(
        {"lm": "data/lm/small.arpa", "lm_weight": 1.5, "word_score": -1.0, "tuned_on": ["dev-clean"]}))
    return exp


def test_report_summarizes_the_experiment(experiment):
    summary = summarize_experiment(experiment)
    state = torch.load(experiment / "model.pt", weights_only=True)["state_dict"]
    weights = sum(tensor.numel() for name, tensor in state.items()
                  if name.startswith("acoustic.") and tensor.is_floating_point())
    assert summary.parameters == weights
    assert (summary.steps, summary.epochs, summary.training_hours) == (30, 3, 0.25)  # the latest checkpoint's
    assert (summary.device, summary.processes, summary.device_hours) == ("cuda:0", 4, 1.0)  # the last start's
    assert summary.model == "2 × 8 BiGRU"
    assert [decoding.name for decoding in summary.decodings] == ["greedy", "lm_small"]

    lines = format_report(summary).splitlines()
    assert "| data/manifests/train.jsonl | 40 | 0.1 | 2 × 8 BiGRU |" in lines[4]
    assert lines[4].endswith(f"| {weights / 1e6:.1f} M | char (29) | 3 | 30 | 1.00 (4 × cuda:0) |")
    assert "GPU hours" in lines[2]
    assert "4 process(es), a global batch of 4,800 padded audio seconds a step, 10 steps an epoch, 30 steps planned." \
        in lines
    assert "| decoding | dev-clean WER % | test-clean WER % |" in lines
    assert "| greedy | 50.00 | 62.50 |" in lines
    assert "| small.arpa, LM weight 1.5, word score -1 (tuned on dev-clean) | 25.00 | 37.50 |" in lines


def test_report_curves_keep_the_last_value_of_a_step_logged_twice(experiment):
    curves = read_curves(experiment)
    assert curves.train_steps == [10, 20, 30]
    assert curves.train_loss == [3.5, 2.5, 2.0]
    assert (curves.dev_steps, curves.dev_loss, curves.dev_wer) == ([10, 30], [3.0, 2.2], [0.9, 0.6])


def test_report_command_writes_markdown_and_png(experiment, capsys):
    assert asr_main(["report", str(experiment)]) == 0
    assert (experiment / "report.md").read_text() in capsys.readouterr().out
    assert (experiment / "curves.png").read_bytes().startswith(PNG_MAGIC)


def test_report_without_a_model_names_the_folder(tmp_path):
    with pytest.raises(AsrError, match=re.escape(f"{tmp_path}: no model.pt")):
        write_report(tmp_path)


# ----------------------------------------------------------------------------------------------------------------
# End to end: download → prepare → tokenizer → CMVN → train → average → LM → decode → report


@pytest.fixture(scope="module")
def synthetic_tree(tmp_path_factory, shared_dir) -> Path:
    if not all(shutil.which(tool) for tool in ("espeak-ng", "flite", "sox")):
        pytest.skip("espeak-ng, flite and sox are needed to synthesize speech")
    out = tmp_path_factory.mktemp("synth")
    subprocess.run([sys.executable, str(shared_dir / "tools" / "synth_librispeech.py"), "--out", str(out),
                    "--train", "40", "--dev", "10", "--test", "10", "--max-words", "12"], check=True,
                   capture_output=True)
    return out / "LibriSpeech"


@pytest.mark.slow
def test_recipe_end_to_end_from_the_download(tmp_path, synthetic_tree, real_test_clean, data_dir):
    # The corpus: synthetic train/dev/test-clean, and the real test-clean FLACs served as "test-other".
    archives = {f"/12/{subset}.tar.gz": tar_gz({f"LibriSpeech/{subset}": synthetic_tree / subset})
                for subset in ("train-clean-100", "dev-clean", "test-clean")}
    archives["/12/test-other.tar.gz"] = tar_gz({"LibriSpeech/test-other": real_test_clean})
    # The "official" LM: a gzipped ARPA 3-gram of LJSpeech sentences.
    sentences = (data_dir / "text" / "ljspeech-train-sentences.txt").read_text().splitlines()[:3000]
    build_arpa(sentences, tmp_path / "lm.arpa", order=3, normalize=normalize_text)
    archives["/11/3-gram.pruned.1e-7.arpa.gz"] = gzip.compress((tmp_path / "lm.arpa").read_bytes())
    checksums = {Path(path).name.removesuffix(".tar.gz"): sha256(body) for path, body in archives.items()}
    (tmp_path / "checksums.json").write_text(json.dumps(checksums))
    work = tmp_path / "work"
    # Two training processes (gloo on the CPU), as --gpus 2 would start on a machine with GPUs.
    options = ["--checksums", str(tmp_path / "checksums.json"), "--config", "debug", "--dev-sets", "dev-clean",
               "--test-sets", "test-clean test-other", "--lms", "3-gram.pruned.1e-7", "--lm-weights", "0.5 1",
               "--word-scores", "0", "--tune-utterances", "0", "--beam", "50", "--cpu-procs", "2"]
    tiny_training = ["train.max_steps=16", "train.max_minutes=0", "optim.decay_by=steps", "model.num_layers=1",
                     "model.hidden_size=32", "data.max_seconds=40", "optim.warmup_fraction=0.25"]

    with serve(archives) as server:
        result = run_recipe(work, "--mirror", server.base_url, *options, *tiny_training)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        assert sorted(path for path, _ in server.requests) == sorted(archives)
        # Every stage is idempotent: a second pass over download and prepare fetches nothing and writes the same.
        manifests = work / "data" / "manifests"
        before = {path.name: path.read_text() for path in manifests.glob("*.jsonl")}
        again = run_recipe(work, "--mirror", server.base_url, *options, "--stop-stage", "1")
        assert again.returncode == 0, again.stderr
        assert len(server.requests) == len(archives)
        assert {path.name: path.read_text() for path in manifests.glob("*.jsonl")} == before

    # Manifests: every utterance of every subset, with its transcript.
    references = {}
    for subset, tree in (("train-clean-100", synthetic_tree / "train-clean-100"),
                         ("dev-clean", synthetic_tree / "dev-clean"), ("test-clean", synthetic_tree / "test-clean"),
                         ("test-other", real_test_clean)):
        expected = {i: normalize_text(t) for i, t in transcripts(tree).items()}
        utterances = read_manifest(manifests / f"{subset}.jsonl")
        assert {u.id: u.text for u in utterances} == expected, subset
        references[subset] = expected
    assert [len(references[s]) for s in ("train-clean-100", "dev-clean", "test-clean", "test-other")] == [40, 10, 10, 4]

    exp = work / "exp" / "debug"
    assert "stage 4: train exp/debug on train-clean-100 (1 node(s) × 2 cpu process(es))" in result.stdout
    assert "on cpu, 2 process(es)" in (exp / "train.log").read_text()
    assert (exp / "avg.pt").is_file()
    assert "max_steps: 16" in (exp / "config.yaml").read_text()
    history = json.loads((exp / "history.json").read_text())
    assert history and history[-1]["step"] == 16

    # Decoding: every set scored against all its words, greedy and with the LM.
    decodings = {}
    for decoding in ("greedy", "lm_3-gram.pruned.1e-7"):
        decodings[decoding] = {}
        for subset in ("dev-clean", "test-clean", "test-other"):
            scores = json.loads((exp / f"decode_{decoding}" / subset / "wer.json").read_text())
            assert scores["utterances"] == len(references[subset])
            assert scores["words"] == sum(len(text.split()) for text in references[subset].values())
            errors = scores["substitutions"] + scores["deletions"] + scores["insertions"]
            assert math.isclose(scores["wer"], errors / scores["words"], abs_tol=1e-4)
            decodings[decoding][subset] = scores["wer"]

    # The LM's weights were tuned on dev-clean alone, over the grid asked for.
    tuning = json.loads((exp / "decode_lm_3-gram.pruned.1e-7" / "tuning.json").read_text())
    assert [Path(path).name for path in tuning["dev"]] == ["dev-clean.jsonl"]
    assert [(p["lm_weight"], p["word_score"]) for p in tuning["points"]] == [(0.5, 0.0), (1.0, 0.0)]
    chosen = json.loads((exp / "decode_lm_3-gram.pruned.1e-7" / "decoding.json").read_text())
    best = min(tuning["points"], key=lambda point: point["errors"])
    assert (chosen["lm_weight"], chosen["word_score"], chosen["tuned_on"]) == (best["lm_weight"], 0.0, ["dev-clean"])
    assert (chosen["beam_size"], tuning["beam_size"]) == (50, 50)  # so the chosen point's dev WER is the decoding's
    assert math.isclose(best["wer"], decodings["lm_3-gram.pruned.1e-7"]["dev-clean"], abs_tol=1e-4)

    # The report: one row a decoding, the WERs of the decode folders, and the curves.
    report = (exp / "report.md").read_text().splitlines()
    assert "| decoding | dev-clean WER % | test-clean WER % | test-other WER % |" in report
    for decoding, description in (("greedy", "greedy"),
                                  ("lm_3-gram.pruned.1e-7", f"3-gram.pruned.1e-7.arpa, LM weight {best['lm_weight']:g}"
                                                            f", word score 0 (tuned on dev-clean)")):
        cells = " | ".join(f"{100 * decodings[decoding][s]:.2f}" for s in ("dev-clean", "test-clean", "test-other"))
        assert f"| {description} | {cells} |" in report
    assert any("| 40 | " in line and "| 1 × 32 BiGRU |" in line and "| 16 |" in line for line in report)
    assert (exp / "curves.png").read_bytes().startswith(PNG_MAGIC)
