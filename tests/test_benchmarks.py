"""Smoke tests of the benchmarks: each runs at a tiny size and must give sane, non-zero figures that agree with each
other. No time is ever asserted: only what holds however fast or busy the machine is."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
TOOLS = REPO / "tools"
TRAIN_CLEAN_100_MEAN_SECONDS = 100.6 * 3600 / 28539  # its hours over its utterances


@pytest.fixture
def tools(monkeypatch):
    """The tools folder on sys.path: the tools import each other by module name, as when run as scripts."""
    monkeypatch.syspath_prepend(str(TOOLS))


def test_librispeech_durations_have_train_clean_100s_shape(tools):
    from gpu_bench import librispeech_durations

    durations = librispeech_durations(20000, seed=3)
    assert abs(sum(durations) / len(durations) - TRAIN_CLEAN_100_MEAN_SECONDS) < 0.2
    assert 1.3 <= min(durations) and max(durations) <= 24.5
    short = sum(d < 10 for d in durations) / len(durations)
    assert 0.12 < short < 0.18  # the tail of short utterances, 15% of the draws
    assert librispeech_durations(100, seed=3) == librispeech_durations(100, seed=3)
    assert librispeech_durations(100, seed=3) != librispeech_durations(100, seed=4)


def test_bucketed_batches_fit_the_padded_budget_and_use_every_utterance_once(tools):
    from gpu_bench import bucketed_batches, librispeech_durations

    durations = librispeech_durations(500)
    batches = bucketed_batches(durations, max_seconds=60.0)
    assert sorted(i for batch in batches for i in batch) == list(range(len(durations)))
    assert all(max(durations[i] for i in batch) * len(batch) <= 60.0 for batch in batches)


def test_plan_batches_numbers_the_utterances_it_keeps(tools):
    from bench_training import plan_batches

    durations, batches = plan_batches(count=4, max_seconds=30.0)
    assert len(batches) == 4
    assert sorted(i for batch in batches for i in batch) == list(range(len(durations)))
    assert all(max(durations[i] for i in batch) * len(batch) <= 30.0 for batch in batches)


def test_plain_model_counts_frames_as_the_toolkits_model(tools):
    from bench_training import PlainModel

    from asr.model import AcousticModel, ModelConfig

    config = ModelConfig(vocab_size=10, num_layers=2, hidden_size=8, subsampling_channels=4)
    lengths = torch.tensor([37, 36, 5, 1])
    log_probs, out_lengths = PlainModel(config)(torch.randn(4, 37, 80), lengths)
    assert out_lengths.tolist() == AcousticModel(config).output_lengths(lengths).tolist() == [10, 9, 2, 1]
    assert log_probs.shape == (4, 10, 10)
    assert torch.allclose(log_probs.exp().sum(-1), torch.ones(4, 10))


def test_combined_rounds_take_the_median_rate_and_the_largest_memory(tools):
    from bench_training import add_ratios, combine_rounds

    runs = [{"status": "ok", "audio_seconds_per_second": rate, "peak_memory_gb": memory}
            for rate, memory in ((3.0, 1.0), (9.0, 1.5), (4.0, 1.2))]
    combined = combine_rounds(runs)
    assert combined["audio_seconds_per_second"] == 4.0 and combined["peak_memory_gb"] == 1.5
    assert combine_rounds([{"status": "not installed"}]) == {"status": "not installed"}
    rows = [{"model": "m", "mode": "model", "system": "asr", **combined},
            {"model": "m", "mode": "model", "system": "espnet", "status": "ok", "audio_seconds_per_second": 1.0}]
    add_ratios(rows)
    assert rows[1]["vs_asr_model"] == 0.25


def test_gpu_bench_smoke_run_measures_every_config_and_variant_on_the_cpu(tmp_path, tools):
    import yaml
    from gpu_bench import TRAINING_HOURS, read_setup

    # Each config's own model: what the smoke run shrinks is only the size, and the full run reads it as written.
    for name in TRAINING_HOURS:
        written = yaml.safe_load((REPO / "recipes" / "librispeech" / "conf" / f"{name}.yaml").read_text())
        setup = read_setup(name, smoke=False)
        assert (setup.model.num_layers, setup.model.hidden_size) == (written["model"]["num_layers"],
                                                                     written["model"]["hidden_size"])
        assert setup.model.vocab_size == written["tokenizer"]["vocab_size"]
        assert setup.device_batch_seconds == min(written["data"]["max_seconds"],
                                                 written["data"].get("device_max_seconds") or math.inf)
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHON": sys.executable}  # tiny models: 1 thread
    process = subprocess.run(["bash", str(TOOLS / "gpu_bench.sh"), "--smoke"], cwd=tmp_path,
                             capture_output=True, text=True, env=environment, timeout=300)
    assert process.returncode == 0, process.stderr
    report = json.loads((tmp_path / "gpu_bench.json").read_text())
    assert [(row["config"], row["variant"]) for row in report["results"]] == [
        (config, variant) for config in TRAINING_HOURS for variant in ("synthetic", "cudnn-bidir", "loader")]
    for row in report["results"]:
        assert row["steps"] == 2 and row["audio_seconds"] > 0 and row["peak_memory_gb"] > 0
        assert row["audio_seconds"] <= 2 * 20.0 / 0.9 + 1e-6  # two batches of 20 padded s (speed 0.9 stretches)
        rate = row["audio_seconds"] / row["seconds"]
        assert math.isclose(row["audio_seconds_per_second"], rate, rel_tol=0.01)
        assert math.isclose(row["epoch_minutes"], TRAINING_HOURS[row["config"]] * 60 / rate, rel_tol=0.01)
        assert (row["loader_wait_seconds"] is not None) == (row["variant"] == "loader")
        if row["variant"] == "loader":
            assert 0 <= row["loader_wait_seconds"] <= row["seconds"]
    assert set(report["models"]) == set(TRAINING_HOURS) and report["notes"] == []


@pytest.mark.slow
def test_the_one_command_benchmark_at_its_quick_size(tmp_path):
    """tools/benchmark.py --quick, every section, through the command line as `make bench` runs it."""
    process = subprocess.run([sys.executable, str(TOOLS / "benchmark.py"), "--quick", "--json-out",
                              str(tmp_path / "bench.json")], cwd=tmp_path, capture_output=True, text=True,
                             timeout=170)
    assert process.returncode == 0, process.stderr
    report = json.loads((tmp_path / "bench.json").read_text())
    assert {"command", "date", "machine", "torch", "device"} <= report.keys()
    sections = report["sections"]

    training = sections["training"]
    timed_audio = sum(training["batch_seconds"][training["warmup"]:])
    for row in training["results"]:
        if row["system"] == "espnet" and row["status"] == "not installed":
            continue
        assert row["status"] == "ok", row
        assert row["audio_seconds_per_second"] > 0 and row["peak_memory_gb"] > 0
        if row["system"] != "naive":  # every other system trains on the same bucketed batches
            assert math.isclose(row["audio_seconds"], timed_audio, abs_tol=0.2)

    transcription = sections["transcription"]
    audio_seconds = transcription["audio_seconds"]
    whole = {row["case"]: row for row in transcription["whole_process"]}
    assert {"asr greedy", "asr greedy int8", "asr greedy ONNX", "asr beam + LM", "pocketsphinx"} <= whole.keys()
    for row in whole.values():
        if "status" in row:
            assert row["case"] in ("pocketsphinx", "asr greedy ONNX") and row["status"] == "not installed"
            continue
        assert row["rtf"] > 0 and math.isclose(row["rtf"], row["median_seconds"] / audio_seconds, abs_tol=1e-4)
        assert row["cpu_seconds_per_audio_second"] > 0
    inside = {row["case"]: row for row in transcription["in_process"]}
    assert inside["fp32"]["same_text_as_fp32"] == 1.0 and inside["fp32"]["largest_log_prob_change"] == 0
    assert 0 < inside["int8"]["largest_log_prob_change"] < 0.5
    assert inside["TorchScript"]["largest_log_prob_change"] < 1e-3
    if "status" not in inside["ONNX Runtime"]:
        assert inside["ONNX Runtime"]["largest_log_prob_change"] < 1e-3
        assert inside["ONNX Runtime, spin"]["largest_log_prob_change"] < 1e-3
    loading = transcription["model_loading_seconds"]
    assert loading["load_model"] > 0 and loading["initialize, then load"] > 0

    features = {row["method"]: row for row in sections["features"]["results"]}
    assert features.keys() == {"asr LogMel", "librosa", "kaldi fbank"}
    # LogMel and librosa frame the audio alike (centred frames); Kaldi's fbank keeps whole windows only.
    assert features["asr LogMel"]["frames"] == features["librosa"]["frames"] > features["kaldi fbank"]["frames"] > 0
    assert all(row["frames_per_second"] > 0 for row in features.values())
