"""Transcribing with an exported ONNX graph (asr.onnx_model): the metadata `asr export` writes, the errors for files
it cannot use, and the same transcripts as the PyTorch model, from a process that never imports torch."""
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import asr
from asr.audio import load_samples
from asr.checkpoint import save_model
from asr.cli import main
from asr.errors import AsrError, ModelFileError
from asr.features import FeatureConfig
from asr.model import ModelConfig
from asr.recognizer import Recognizer
from asr.text import BpeTokenizer, CharTokenizer
from asr.transcribe import transcribe_file

onnx = pytest.importorskip("onnx")
onnxruntime = pytest.importorskip("onnxruntime")
from asr.export import export_onnx  # noqa: E402  (after the skips: it needs onnx)
from asr.onnx_model import OnnxRecognizer  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# The backends compute the same float32 operations in another order: times are whole frames either way, and a
# confidence (a probability) moves by far less than this.
CONFIDENCE_TOLERANCE = 1e-3


def peaky_recognizer(tokenizer=None, seed=0):
    """A small untrained model whose outputs are sharp: no frame's best token is a near tie that float rounding could
    flip between the backends, so that both must spell the same words."""
    torch.manual_seed(seed)
    tokenizer = tokenizer or CharTokenizer()
    config = ModelConfig(vocab_size=tokenizer.vocab_size, num_layers=2, hidden_size=32, subsampling_channels=8)
    stats = {"mean": [-8.0 + 0.05 * i for i in range(80)], "std": [3.0] * 80}
    recognizer = Recognizer(config, FeatureConfig(), tokenizer, cmvn_stats=stats).eval()
    with torch.no_grad():
        recognizer.acoustic.head.weight.mul_(8.0)
    return recognizer


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """The same model as a model file and as `asr export`'s ONNX file (written by the command)."""
    folder = tmp_path_factory.mktemp("models")
    save_model(peaky_recognizer(), folder / "model.pt")
    assert main(["export", "--model", str(folder / "model.pt"), "--out", str(folder / "model.onnx")]) == 0
    return folder / "model.pt", folder / "model.onnx"


@pytest.fixture(scope="module")
def speech(data_dir):
    return sorted((data_dir / "sentences" / "harvard_sentences" / "wav").glob("*.wav"))[:3]


def json_records(text):
    return [json.loads(line) for line in text.splitlines()]


def assert_same_transcripts(got, expected):
    """JSON records of the two backends: the same audio, text, duration and words; times and confidences close."""
    assert [r["audio"] for r in got] == [r["audio"] for r in expected]
    for ours, theirs in zip(got, expected):
        assert ours["text"] == theirs["text"] and ours["text"]  # an untrained model still says something
        assert ours["duration"] == theirs["duration"]
        assert [w["word"] for w in ours["words"]] == [w["word"] for w in theirs["words"]]
        for a, b in zip(ours["words"], theirs["words"]):
            assert a["start"] == pytest.approx(b["start"], abs=1e-3) and a["end"] == pytest.approx(b["end"], abs=1e-3)
            assert a["confidence"] == pytest.approx(b["confidence"], abs=CONFIDENCE_TOLERANCE)


# ----------------------------------------------------------------------------------------------------------------
# The metadata


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_export_carries_the_tokenizer_frame_shift_and_sample_rate(tmp_path, data_dir, kind):
    if kind == "bpe":
        lines = (data_dir / "text" / "ljspeech-val-sentences.txt").read_text(encoding="utf-8").splitlines()[:300]
        tokenizer = BpeTokenizer.train(lines, vocab_size=60)
    else:
        tokenizer = CharTokenizer()
    recognizer = peaky_recognizer(tokenizer)
    path = export_onnx(recognizer, tmp_path / "model.onnx")

    properties = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert {"asr_format", "asr_format_version", "tokenizer", "frame_shift", "sample_rate", "description"} <= set(
        properties)
    assert json.loads(properties["tokenizer"])["kind"] == kind
    assert float(properties["frame_shift"]) == recognizer.frame_shift == 0.04
    assert properties["sample_rate"] == "16000"

    loaded = OnnxRecognizer(path, threads=1)
    assert loaded.tokenizer.kind == kind and loaded.tokenizer.tokens == tokenizer.tokens
    assert loaded.tokenizer.encode("THE CAT") == tokenizer.encode("THE CAT")
    assert loaded.frame_shift == recognizer.frame_shift
    assert recognizer.describe() in loaded.describe()


def test_export_carries_the_models_edge_floor_and_both_backends_hear_it(speech, tmp_path):
    """A model file asking for an edge floor (SpeechRecognizer.edge_pad_seconds) exports the request with the graph,
    and the exported graph transcribes as the model file does; a model without one exports no such property."""
    recognizer = peaky_recognizer()
    bare = export_onnx(recognizer, tmp_path / "bare.onnx")
    assert "edge_pad_seconds" not in {p.key for p in onnx.load(str(bare)).metadata_props}
    assert OnnxRecognizer(bare, threads=1).edge_pad_seconds == 0.0

    recognizer.metadata = {"edge_pad_seconds": 0.2}
    path = export_onnx(recognizer, tmp_path / "model.onnx")
    assert {p.key: p.value for p in onnx.load(str(path)).metadata_props}["edge_pad_seconds"] == "0.2"
    loaded = OnnxRecognizer(path, threads=1)
    assert loaded.edge_pad_seconds == recognizer.edge_pad_seconds == 0.2
    for audio in speech[:2]:
        assert_same_transcripts([transcribe_file(loaded, audio).to_dict()],
                                [transcribe_file(recognizer, audio).to_dict()])


def test_a_graph_without_the_metadata_is_refused_with_the_fix(models, speech, tmp_path, capsys):
    _, onnx_path = models
    old = onnx.load(str(onnx_path))
    del old.metadata_props[:]  # what `asr export` wrote before it carried the metadata
    old_path = tmp_path / "old.onnx"
    onnx.save(old, str(old_path))
    with pytest.raises(ModelFileError, match="old.onnx.*Export it again: asr export"):
        OnnxRecognizer(old_path)
    assert main(["transcribe", "--model", str(old_path), str(speech[0])]) == 1
    error = capsys.readouterr().err
    assert str(old_path) in error and "older version" in error and "asr export" in error


def test_a_file_that_is_not_an_onnx_graph_is_named(tmp_path):
    fake = tmp_path / "fake.onnx"
    fake.write_bytes(b"not a graph")
    with pytest.raises(ModelFileError, match="fake.onnx"):
        OnnxRecognizer(fake)
    with pytest.raises(ModelFileError, match="missing.onnx: model file not found"):
        OnnxRecognizer(tmp_path / "missing.onnx")


# ----------------------------------------------------------------------------------------------------------------
# Transcribing


def test_transcription_of_an_onnx_model_never_imports_torch(models, speech):
    """`asr transcribe model.onnx` in a Python where torch cannot be imported: the transcripts of the model file."""
    model_path, onnx_path = models
    script = textwrap.dedent("""
        import sys
        sys.modules["torch"] = None  # `import torch` now raises ImportError, anywhere
        from asr.cli import main
        status = main(sys.argv[1:])
        loaded = sorted(name for name, module in sys.modules.items()
                        if module is not None and name.split(".")[0] in ("torch", "torchaudio"))
        assert not loaded, loaded
        sys.exit(status)
    """)
    options = ["--output-format", "json", "--threads", "1"] + [str(f) for f in speech]
    process = subprocess.run([sys.executable, "-c", script, "transcribe", "--model", str(onnx_path)] + options,
                             capture_output=True, text=True, cwd=REPO, timeout=120)
    assert process.returncode == 0, process.stderr
    without_torch = json_records(process.stdout)
    assert len(without_torch) == len(speech)

    process = subprocess.run([sys.executable, "-m", "asr", "transcribe", "--model", str(model_path)] + options,
                             capture_output=True, text=True, cwd=REPO, timeout=120)
    assert process.returncode == 0, process.stderr
    assert_same_transcripts(without_torch, json_records(process.stdout))


def test_every_output_format_is_the_same_from_both_backends(models, speech, tmp_path, capsys):
    for model in models:
        status = main(["transcribe", "--model", str(model), *map(str, speech), "--output-format", "all",
                       "--out-dir", str(tmp_path / model.suffix[1:]), "--threads", "1"])
        assert status == 0, capsys.readouterr().err
    for extension in ("txt", "srt", "vtt"):
        for wav in speech:
            pt, onnx_file = (tmp_path / folder / f"{wav.stem}.{extension}" for folder in ("pt", "onnx"))
            assert onnx_file.read_text() == pt.read_text()
    for wav in speech:
        assert_same_transcripts(json_records((tmp_path / "onnx" / f"{wav.stem}.json").read_text()),
                                json_records((tmp_path / "pt" / f"{wav.stem}.json").read_text()))


def test_both_backends_answer_what_transcription_asks_alike(models, speech):
    """asr.load_model picks the back end by the file; both answer the recognizer interface's questions the same way,
    and give the same log-probabilities for one zero-padded batch."""
    model_path, onnx_path = models
    recognizer, exported = asr.load_model(model_path), asr.load_model(onnx_path, threads=1)
    assert isinstance(recognizer, Recognizer) and isinstance(exported, OnnxRecognizer)
    for backend in (recognizer, exported):
        assert isinstance(backend, asr.SpeechRecognizer)
    assert exported.tokenizer.tokens == recognizer.tokenizer.tokens
    assert (exported.frame_shift, exported.edge_pad_seconds, exported.word_span) == \
        (recognizer.frame_shift, recognizer.edge_pad_seconds, recognizer.word_span)
    assert (recognizer.exposes_features, exported.exposes_features) == (True, False)
    waves = [load_samples(path) for path in speech[:2]]
    lengths = np.array([wave.size for wave in waves])
    batch = np.zeros((len(waves), lengths.max()), np.float32)
    for row, wave in enumerate(waves):
        batch[row, :wave.size] = wave
    expected, expected_lengths = recognizer.log_probs(batch, lengths)
    got, got_lengths = exported.log_probs(batch, lengths)
    np.testing.assert_array_equal(got_lengths, expected_lengths.numpy())
    for row, length in enumerate(got_lengths):
        np.testing.assert_allclose(got[row, :length], expected[row, :length].numpy(), atol=1e-3)
    with pytest.raises(AsrError, match="cannot take a speaker's statistics"):
        exported.log_probs(batch, lengths, np.ones((2, 2, 80), np.float32))


def test_waveforms_and_long_recordings_in_windows(models, speech):
    """The same pipeline for both backends: a waveform given as samples, and windowed decoding of a long one."""
    model_path, onnx_path = models
    recognizer, exported = asr.load_model(model_path), asr.load_model(onnx_path)
    assert isinstance(exported, OnnxRecognizer)
    wave = np.concatenate([load_samples(f) for f in speech])  # about 8 s
    for audio in (wave, speech[0]):
        for options in ({}, {"chunk_seconds": 3.0, "overlap_seconds": 1.0}):
            expected = transcribe_file(recognizer, torch.from_numpy(wave) if audio is wave else audio, **options)
            got = exported.transcribe(audio, **options)
            assert_same_transcripts([got.to_dict()], [expected.to_dict()])


def test_beam_search_decodes_an_onnx_models_output(models, speech, capsys):
    """Beam search runs on torch tensors: with an ONNX model it imports torch, and gives the model file's result."""
    outputs = []
    for model in models:
        assert main(["transcribe", "--model", str(model), str(speech[0]), "--decoder", "beam", "--beam-size", "8",
                     "--output-format", "json", "--threads", "1"]) == 0
        outputs.append(json_records(capsys.readouterr().out))
    assert_same_transcripts(*outputs)


# ----------------------------------------------------------------------------------------------------------------
# Options


def test_threads_are_the_sessions_and_idle_threads_follow_omp_wait_policy(models, monkeypatch):
    _, onnx_path = models
    recognizer = asr.load_model(onnx_path, threads=3)
    assert isinstance(recognizer, OnnxRecognizer) and recognizer.threads == 3
    options = recognizer.session.get_session_options()
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    assert OnnxRecognizer(onnx_path).session.get_session_options().get_session_config_entry(
        "session.intra_op.allow_spinning") == "0"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert OnnxRecognizer(onnx_path).session.get_session_options().get_session_config_entry(
        "session.intra_op.allow_spinning") == "1"
    assert options.intra_op_num_threads == 3


@pytest.mark.parametrize("option, message", [
    (["--quantize", "int8"], "--quantize int8 quantizes a PyTorch model file"),
    (["--device", "cuda"], "runs on the CPU"),
    (["--plot-dir", "plots"], "--plot-dir draws the features"),
])
def test_options_for_model_files_only_are_refused_with_an_onnx_model(models, speech, capsys, option, message):
    _, onnx_path = models
    assert main(["transcribe", "--model", str(onnx_path), str(speech[0]), *option]) == 1
    error = capsys.readouterr().err
    assert str(onnx_path) in error and message in error
