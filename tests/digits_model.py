"""A small digits model trained in about 20 CPU seconds on real FSDD recordings, for tests that need a model that
recognizes speech (the server's tests: each answer must be its own recording's digits), and the pytest fixture that
trains it once a session.

    pytest_plugins = ["digits_model"]      # in a test module (the tests folder is on sys.path)
    python tests/digits_model.py OUT_DIR   # the same model as a file, e.g. for tools/bench_serve.py

The data: 400 utterances of one to three digits, each joined from takes 5-9 of george or jackson with short pauses,
up to half a second of silence at either edge, over a faint noise floor or digital silence, as the digits recipe
joins them (asr.data.digits), written as 16 kHz wavs. The model (2 × 64 bidirectional GRU over 40 log-mel bands,
globally normalized, whole-word tokens, 12.5 output frames a second) is trained on them for a fixed number of steps,
until it recognizes every one of them. It is a test model: it got 83 of FSDD's 100 test takes (0-4) of the same two
speakers right, and few of an unheard speaker's.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile

REPO = Path(__file__).resolve().parents[1]
DIGIT_WORDS = ("ZERO", "ONE", "TWO", "THREE", "FOUR", "FIVE", "SIX", "SEVEN", "EIGHT", "NINE")
SPEAKERS = ("george", "jackson")
TAKES = range(5, 10)
UTTERANCES = 400
STEPS = 900
EDGE_SECONDS = 0.5  # silence before the first and after the last digit: up to this long


@dataclass(frozen=True)
class DigitsModel:
    model: Path  # model.pt
    utterances: list  # asr.data.manifest.Utterance: the training utterances, each recognized right by the model


def write_utterances(fsdd_dir: Path, out_dir: Path, count: int = UTTERANCES, seed: int = 0) -> list:
    """`count` connected-digit wavs in out_dir, with their manifest (train.jsonl); returns the Utterances."""
    from asr.audio import SAMPLE_RATE, load_samples
    from asr.data.manifest import Utterance, write_manifest

    rng = np.random.default_rng(seed)
    clips = {(digit, speaker, take): load_samples(fsdd_dir / f"{digit}_{speaker}_{take}.wav")
             for digit in range(10) for speaker in SPEAKERS for take in TAKES}
    out_dir.mkdir(parents=True, exist_ok=True)
    utterances = []
    for index in range(count):
        speaker = SPEAKERS[index % len(SPEAKERS)]
        digits = rng.integers(0, 10, size=rng.integers(1, 4))
        pieces = [np.zeros(round(rng.uniform(0.0, EDGE_SECONDS) * SAMPLE_RATE), np.float32)]
        for digit in digits:
            pieces += [clips[int(digit), speaker, int(rng.choice(TAKES))],
                       np.zeros(round(rng.uniform(0.05, 0.3) * SAMPLE_RATE), np.float32)]
        pieces.append(np.zeros(round(rng.uniform(0.0, EDGE_SECONDS) * SAMPLE_RATE), np.float32))
        wave = np.concatenate(pieces)
        if rng.random() < 0.75:  # a noise floor, or else digital silence, as a browser may record it
            wave += rng.standard_normal(wave.size).astype(np.float32) * 10 ** (rng.uniform(-85, -65) / 20)
        path = out_dir / f"digits_{index:03d}.wav"
        soundfile.write(path, wave, SAMPLE_RATE, subtype="PCM_16")
        utterances.append(Utterance(path.stem, str(path), wave.size / SAMPLE_RATE,
                                    " ".join(DIGIT_WORDS[d] for d in digits), speaker))
    write_manifest(out_dir / "train.jsonl", utterances)
    return utterances


def train_digits_model(fsdd_dir: Path, out_dir: Path, steps: int = STEPS) -> DigitsModel:
    from asr.config import load_config
    from asr.train import train

    utterances = write_utterances(fsdd_dir, out_dir / "data")
    config = load_config(None, [
        f"data.train={out_dir / 'data' / 'train.jsonl'}", "data.dev=", "data.num_workers=0", "data.max_seconds=20",
        "tokenizer.kind=bpe", "tokenizer.vocab_size=28", "features.normalization=global", "features.n_mels=40",
        "features.f_max=3800", "features.hop_ms=20", "specaugment.enabled=false", "model.num_layers=2",
        "model.hidden_size=64", "model.subsampling_channels=8", "model.dropout=0.0", "optim.lr=5e-3",
        "optim.warmup_fraction=0.02", f"train.max_steps={steps}", "train.epochs=10000", "train.threads=1",
        "train.log_every=100", f"train.checkpoint_every={steps}", "train.keep_checkpoints=1"])
    return DigitsModel(train(config, out_dir / "exp", progress=False), utterances)


@pytest.fixture(scope="session")
def digits_model(tmp_path_factory, fsdd_dir) -> DigitsModel:
    return train_digits_model(fsdd_dir, tmp_path_factory.mktemp("digits_model"))


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    fsdd = Path(sys.argv[2]) if len(sys.argv) > 2 else REPO.parent / "shared" / "data" / "fsdd" / "recordings"
    print(train_digits_model(fsdd, Path(sys.argv[1])).model)
