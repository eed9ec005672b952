"""The pytest fixture that serves the bad-input corpus, made once a session in a temporary folder.

A test module asks for it with `pytest_plugins = ["bad_inputs.fixtures"]` (the tests folder is on sys.path).
"""
from dataclasses import dataclass
from pathlib import Path

import pytest

from bad_inputs import corpus


@dataclass(frozen=True)
class BadCorpus:
    folder: Path
    audio: dict[str, Path]  # AudioCase name → its file (the missing one does not exist)
    reference: Path  # a readable recording, the audio of the text cases
    manifest: Path  # every recording case and every text case, one utterance each


@pytest.fixture(scope="session")
def bad_corpus(tmp_path_factory) -> BadCorpus:
    folder = tmp_path_factory.mktemp("bad_inputs")
    audio = corpus.write_audio_cases(folder / "audio")
    reference = corpus.write_reference_recording(folder)
    manifest = corpus.write_corpus_manifest(folder / "corpus.jsonl", audio, reference)
    return BadCorpus(folder, audio, reference, manifest)
