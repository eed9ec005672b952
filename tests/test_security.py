"""Files and archives from strangers, and commands built from file names.

- Model files and checkpoints are read only by `torch.load(..., weights_only=True)`: every command that loads one
  refuses a malicious pickle with a clear message, and the code it carries never runs. Config files are YAML read by
  `yaml.safe_load`, so a config cannot run code either.
- Corpus downloads are checked against their checksum before extraction, and extraction refuses members that would
  land outside the destination. tests/test_download.py checks `safe_extract` member by member; here the download
  commands get the hostile archives end to end.
- No shell command is built from a file name: the Python uses argument lists (checked on the syntax tree), the
  shell scripts quote their variables (checked by shellcheck).
"""
import ast
import hashlib
import pickle
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from bad_inputs import corpus
from bad_inputs.corpus import HOSTILE_MEMBERS
from download_server import serve

from asr.checkpoint import save_model
from asr.cli import main
from asr.data.fsdd import download_fsdd
from asr.data.librispeech import download_librispeech
from asr.errors import AsrError
from asr.features import FeatureConfig
from asr.model import ModelConfig
from asr.recognizer import Recognizer
from asr.text import CharTokenizer

REPO = Path(__file__).resolve().parents[1]
TINY_CONFIG = REPO / "tests" / "data" / "tiny.yaml"
REFUSED = "refused to load: the file holds Python objects other than tensors and plain data"


# ----------------------------------------------------------------------------------------------------------------
# Model files and configs


@pytest.fixture
def inputs(tmp_path):
    """A readable recording, its manifest and a good model file: what the commands need besides the bad file."""
    recording = corpus.write_reference_recording(tmp_path)
    manifest = corpus.write_lines(tmp_path / "set.jsonl", [corpus.manifest_line("a", recording, "A A A")])
    tokenizer = CharTokenizer()
    config = ModelConfig(vocab_size=tokenizer.vocab_size, num_layers=1, hidden_size=8, subsampling_channels=4)
    save_model(Recognizer(config, FeatureConfig(normalization="utterance"), tokenizer), tmp_path / "good.pt")
    return recording, manifest, tmp_path / "good.pt"


def command_loading(command: str, model_file: Path, inputs, tmp_path) -> tuple[list[str], Path]:
    """The arguments of `command` made to load `model_file`, and the path under which it reads it."""
    recording, manifest, good_model = inputs
    if command == "train --resume":  # the latest checkpoint of the experiment folder
        checkpoint = tmp_path / "exp" / "checkpoints" / "ckpt-9.pt"
        checkpoint.parent.mkdir(parents=True)
        shutil.copy(model_file, checkpoint)
        return ["train", "--config", str(TINY_CONFIG), "--exp-dir", str(tmp_path / "exp"), "--resume", "--quiet",
                f"data.train={manifest}"], checkpoint
    return {
        "transcribe": ["transcribe", "--model", str(model_file), str(recording)],
        "evaluate": ["evaluate", "--model", str(model_file), "--manifest", str(manifest)],
        "average": ["average", str(good_model), str(model_file), "--out", str(tmp_path / "average.pt")],
    }[command], model_file


MALICIOUS_FILES = {"torch.save zip": corpus.write_malicious_model_file, "plain pickle": corpus.write_malicious_pickle}
CARELESS_LOADERS = {"torch.save zip": lambda path: torch.load(path, weights_only=False),
                    "plain pickle": lambda path: pickle.loads(path.read_bytes())}


@pytest.mark.parametrize("kind", MALICIOUS_FILES)
def test_the_malicious_files_run_code_when_loaded_carelessly(tmp_path, kind):
    marker = tmp_path / "code-ran"
    CARELESS_LOADERS[kind](MALICIOUS_FILES[kind](tmp_path / "evil.pt", marker))
    assert marker.exists()  # so that the tests below, which find no marker, show something


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # torch's note on the plain pickle it refuses
@pytest.mark.parametrize("make", MALICIOUS_FILES.values(), ids=MALICIOUS_FILES.keys())
@pytest.mark.parametrize("command", ["transcribe", "evaluate", "average", "train --resume"])
def test_every_command_refuses_a_malicious_model_file_and_runs_none_of_its_code(tmp_path, inputs, capsys, command,
                                                                                 make):
    marker = tmp_path / "code-ran"
    arguments, read_as = command_loading(command, make(tmp_path / "evil.pt", marker), inputs, tmp_path)
    assert main(arguments) == 1
    assert capsys.readouterr().err.startswith(f"asr {arguments[0]}: error: {read_as}: {REFUSED}")
    assert not marker.exists()
    assert not (tmp_path / "average.pt").exists()


def test_a_config_file_cannot_run_code(tmp_path, capsys):
    marker = tmp_path / "code-ran"
    config = tmp_path / "evil.yaml"
    config.write_text(f"train: !!python/object/apply:builtins.open ['{marker}', 'w']\n")
    assert main(["train", "--config", str(config), "--exp-dir", str(tmp_path / "exp"), "data.train=x.jsonl"]) == 1
    error = capsys.readouterr().err
    assert error.startswith("asr train: error: ") and str(config) in error
    assert not marker.exists()
    yaml.unsafe_load(config.read_text())  # what a careless loader would have done
    assert marker.exists()


# ----------------------------------------------------------------------------------------------------------------
# Downloads


def extracted(folder: Path) -> set[str]:
    """Everything under `folder` but the downloaded archives and markers, as relative POSIX paths."""
    return {path.relative_to(folder).as_posix() for path in folder.rglob("*")
            if not path.name.endswith((".tar.gz", ".part")) and not path.name.startswith(".")}


@pytest.mark.parametrize("kind", HOSTILE_MEMBERS)
def test_a_librispeech_archive_with_a_hostile_member_is_never_extracted(tmp_path, capsys, kind):
    outside = tmp_path / "outside"
    dest = outside / "dest"
    archive = corpus.hostile_tar_gz("LibriSpeech", kind, outside)
    with serve({"/12/dev-clean.tar.gz": archive}) as server:
        # The command checks the published checksum first: the archive is deleted unopened.
        assert main(["download", "librispeech", "--subsets", "dev-clean", "--base-url", server.url("/12"),
                     "--out-dir", str(dest)]) == 1
        error = capsys.readouterr().err
        assert "dev-clean.tar.gz" in error and "fails its sha256 checksum" in error
        assert not dest.exists() or extracted(dest) == set()
        # With a checksum that matches (a mirror's own, pinned by hand), extraction itself refuses the member.
        with pytest.raises(AsrError, match=r"dev-clean\.tar\.gz: refusing to extract member"):
            download_librispeech(["dev-clean"], dest, base_url=server.url("/12"), progress=False,
                                 checksums={"dev-clean": hashlib.sha256(archive).hexdigest()})
    assert extracted(outside) <= {"dest", "dest/LibriSpeech", "dest/LibriSpeech/README.TXT"}


@pytest.mark.parametrize("kind", HOSTILE_MEMBERS)
def test_an_fsdd_archive_with_a_hostile_member_is_never_extracted(tmp_path, kind):
    outside = tmp_path / "outside"
    dest = outside / "dest"
    archive = corpus.hostile_tar_gz("free-spoken-digit-dataset-1.0.10", kind, outside)
    with serve({"/v1.0.10.tar.gz": archive}) as server:
        with pytest.raises(AsrError, match=r"fsdd-v1\.0\.10\.tar\.gz: refusing to extract member"):
            download_fsdd(dest, url=server.url("/v1.0.10.tar.gz"), progress=False)
    assert extracted(outside) <= {"dest", "dest/free-spoken-digit-dataset-1.0.10",
                                  "dest/free-spoken-digit-dataset-1.0.10/README.TXT"}


# ----------------------------------------------------------------------------------------------------------------
# No shell, no unsafe loader: the syntax tree of every Python file the toolkit ships

SHIPPED_PYTHON = sorted(path for folder in ("asr", "tools", "recipes") for path in (REPO / folder).rglob("*.py"))
SHELL_CALLS = {"os.system", "os.popen", "subprocess.getoutput", "subprocess.getstatusoutput"}
# Readers that run code found in the file they read.
UNSAFE_LOADERS = {"pickle.load", "pickle.loads", "pickle.Unpickler", "marshal.load", "marshal.loads", "shelve.open",
                  "yaml.load", "yaml.unsafe_load", "yaml.full_load", "yaml.load_all", "torch.jit.load", "dill.load",
                  "dill.loads", "joblib.load"}


def _dotted(node: ast.expr) -> str:
    """`os.path.join` for the expression os.path.join; '' for what is not a dotted name."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else ""
    return ""


def _is_constant(node: ast.expr | None, value) -> bool:
    return isinstance(node, ast.Constant) and node.value is value


def hazards(source: str) -> list[tuple[int, str]]:
    """(line, what) for each call in `source` that hands a string to a shell, or reads a file with a loader that
    can run code: os.system and friends, shell=True, pickle/marshal/unsafe YAML, torch.load without
    weights_only=True, numpy.load with allow_pickle. Names imported with `from module import name` count too."""
    tree = ast.parse(source)
    imported = {alias.asname or alias.name: f"{node.module}.{alias.name}" for node in ast.walk(tree)
                if isinstance(node, ast.ImportFrom) and node.module for alias in node.names}
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        head, _, rest = name.partition(".")
        name = f"{imported[head]}.{rest}".rstrip(".") if head in imported else name
        keywords = {keyword.arg: keyword.value for keyword in node.keywords}
        if name in SHELL_CALLS:
            found.append((node.lineno, f"{name}() runs a shell"))
        if "shell" in keywords and not _is_constant(keywords["shell"], False):
            found.append((node.lineno, f"{name}(shell=...) runs a shell"))
        if name in UNSAFE_LOADERS:
            found.append((node.lineno, f"{name}() can run code from the file"))
        if name == "torch.load" and not _is_constant(keywords.get("weights_only"), True):
            found.append((node.lineno, "torch.load() without weights_only=True can run code from the file"))
        if name in ("numpy.load", "np.load") and not _is_constant(keywords.get("allow_pickle", ast.Constant(False)),
                                                                 False):
            found.append((node.lineno, f"{name}(allow_pickle=...) can run code from the file"))
    return found


def test_the_hazard_finder_finds_each_kind_of_hazard():
    source = "\n".join([
        "import os, pickle, subprocess, torch, yaml, numpy as np",
        "from os import system as run",
        "from torch import load",
        "os.system(f'sox {name} out.wav')",
        "run('ls ' + folder)",
        "subprocess.run(command, shell=True)",
        "subprocess.check_output(command, shell=flag)",
        "os.popen('cat ' + path)",
        "pickle.load(file)",
        "yaml.load(text, Loader=yaml.Loader)",
        "torch.load(path)",
        "load(path, weights_only=False)",
        "np.load(path, allow_pickle=True)",
        # Safe: argument lists, safe loaders.
        "subprocess.run(['sox', name, 'out.wav'], shell=False)",
        "subprocess.run(['ls', folder])",
        "yaml.safe_load(text)",
        "torch.load(path, map_location='cpu', weights_only=True)",
        "np.load(path)",
    ])
    assert sorted(line for line, _ in hazards(source)) == list(range(4, 14))


@pytest.mark.parametrize("path", SHIPPED_PYTHON, ids=lambda path: path.relative_to(REPO).as_posix())
def test_no_shipped_python_passes_strings_to_a_shell_or_loads_unsafely(path):
    assert hazards(path.read_text(encoding="utf-8")) == []


def test_model_files_are_read_by_torch_load_with_weights_only():
    loads = [(path.name, node.lineno) for path in SHIPPED_PYTHON for node in ast.walk(ast.parse(path.read_text()))
             if isinstance(node, ast.Call) and _dotted(node.func) == "torch.load"]
    # The model-file reader is among them (so the test above had something to check), and it passed that test.
    assert "checkpoint.py" in {name for name, _ in loads}


# ----------------------------------------------------------------------------------------------------------------
# Shell scripts

SHELL_SCRIPTS = sorted(REPO.glob("recipes/*/run.sh")) + sorted(REPO.glob("recipes/*/local/*.sh")) + [
    REPO / ".ci" / "run"]


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed (apt-get install "
                                                               "shellcheck)")
@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=lambda path: path.relative_to(REPO).as_posix())
def test_shell_scripts_quote_their_variables(script):
    # shellcheck's SC2086 / SC2046 / SC2206 are unquoted expansions; every other finding fails the test too.
    result = subprocess.run(["shellcheck", "--format=gcc", "--shell=bash", str(script)], capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stdout
