"""Shared fixtures: where the real speech data lies, and small helpers used by many tests."""
import os
from pathlib import Path

import pytest
import torch

# The models in tests are tiny: a second torch thread only adds synchronization, and on a busy 2-core machine it
# made training steps up to 30× slower. Tests that measure threading set their own.
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]


def _shared_dir() -> Path:
    # The project's shared data sits beside the checkout (../shared); ASR_SHARED overrides it.
    return Path(os.environ.get("ASR_SHARED", REPO.parent / "shared"))


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    path = _shared_dir()
    if not (path / "data").is_dir():
        pytest.skip(f"shared data not found at {path} (set ASR_SHARED)")
    return path


@pytest.fixture(scope="session")
def data_dir(shared_dir) -> Path:
    return shared_dir / "data"


@pytest.fixture(scope="session")
def original_formats(data_dir) -> Path:
    return data_dir / "sentences" / "original-formats"


@pytest.fixture(scope="session")
def fsdd_dir(data_dir) -> Path:
    return data_dir / "fsdd" / "recordings"


@pytest.fixture(scope="session")
def sentence_paths(data_dir) -> list[Path]:
    """Four read sentences, one from each of four corpora and speakers."""
    return [data_dir / "sentences" / name for name in (
        "librispeech_bits/wav/1089-134686-0001.wav",
        "ljspeech_subset/wav/LJ001-0002.wav",
        "harvard_sentences/wav/osr0034-01.wav",
        "mfa_testdata/wav/mfa_whisper.wav",
    )]


@pytest.fixture(scope="session")
def sentence_waves(sentence_paths) -> list[torch.Tensor]:
    from asr.audio import load_audio

    return [load_audio(path) for path in sentence_paths]


@pytest.fixture
def kenlm_loads(monkeypatch) -> list[str]:
    """The path of every KenLM model loaded while the test runs (flashlight's KenLM constructor, spied on)."""
    kenlm = pytest.importorskip("flashlight.lib.text.decoder.kenlm")
    loads = []

    class CountingKenLM(kenlm.KenLM):
        def __init__(self, path, word_dict):
            loads.append(path)
            super().__init__(path, word_dict)

    monkeypatch.setattr(kenlm, "KenLM", CountingKenLM)
    return loads
