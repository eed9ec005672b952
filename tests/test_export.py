import sys

import librosa
import numpy as np
import pytest
import torch
from torch import nn

from asr.audio import load_audio
from asr.checkpoint import save_model
from asr.cli import main
from asr.errors import AsrError
from asr.export import ConvLogMel, export_onnx, exportable, quantize_int8
from asr.features import FeatureConfig, LogMel
from asr.model import ModelConfig, length_mask
from asr.recognizer import Recognizer
from asr.text import CharTokenizer

# Largest |Δ log-probability| allowed between PyTorch and the exported graph: both compute the same float32
# operations, in another order (the spectrum as a convolution rather than an FFT).
EXPORT_TOLERANCE = 1e-3
# Largest |Δ log-mel| allowed between ConvLogMel and an FFT: 1% of a band's energy. Bands near the floor, a million
# times weaker than the frame's loudest, are differences of large float32 terms and move most.
LOGMEL_TOLERANCE = 1e-2


def small_recognizer(seed=0, normalization="global"):
    torch.manual_seed(seed)
    tokenizer = CharTokenizer()
    config = ModelConfig(vocab_size=tokenizer.vocab_size, num_layers=2, hidden_size=32, subsampling_channels=8)
    stats = {"mean": [-8.0 + 0.05 * i for i in range(80)], "std": [3.0] * 80}
    return Recognizer(config, FeatureConfig(normalization=normalization), tokenizer, cmvn_stats=stats).eval()


@pytest.fixture(scope="module")
def speech(data_dir):
    """Three real recordings of different lengths as a padded batch, and their lengths."""
    files = sorted((data_dir / "sentences" / "harvard_sentences" / "wav").glob("*.wav"))[:3]
    waves = [load_audio(f)[:16000 * (2 + i)] for i, f in enumerate(files)]  # 2, 3 and 4 s
    return nn.utils.rnn.pad_sequence(waves, batch_first=True), torch.tensor([len(w) for w in waves])


def test_conv_logmel_matches_librosa(speech):
    audio, lengths = speech
    cfg = FeatureConfig()
    feats, feat_lengths = ConvLogMel(LogMel(cfg))(audio, lengths)
    assert feat_lengths.tolist() == [1 + n // cfg.hop_length for n in lengths.tolist()]
    for row, length in enumerate(lengths.tolist()):
        mel = librosa.feature.melspectrogram(
            y=audio[row, :length].numpy(), sr=cfg.sample_rate, n_fft=cfg.n_fft, hop_length=cfg.hop_length,
            win_length=cfg.win_length, window="hann", center=True, pad_mode="constant", power=2.0,
            n_mels=cfg.n_mels, fmin=cfg.f_min, fmax=cfg.f_max, htk=False, norm="slaney")
        expected = np.log(np.maximum(mel, cfg.log_floor)).T
        frames = len(expected)
        # The last frames of a shorter utterance see its own zero padding, not the batch's next samples: equal.
        np.testing.assert_allclose(feats[row, :frames].numpy(), expected, atol=LOGMEL_TOLERANCE, rtol=0)
        assert np.median(np.abs(feats[row, :frames].numpy() - expected)) < 1e-5
        assert torch.all(feats[row, frames:] == 0)


def test_conv_logmel_matches_logmel(speech):
    audio, lengths = speech
    logmel = LogMel(FeatureConfig())
    expected, expected_lengths = logmel(audio, lengths)
    got, got_lengths = ConvLogMel(logmel)(audio, lengths)
    assert torch.equal(got_lengths, expected_lengths)
    difference = (got - expected).abs()
    assert difference.max() < LOGMEL_TOLERANCE and difference.median() < 1e-5


def test_exportable_copy_gives_the_recognizers_outputs_and_leaves_it_alone(speech):
    recognizer = small_recognizer()
    copied = exportable(recognizer)
    assert isinstance(recognizer.frontend.logmel, LogMel)  # the original keeps torch.stft
    with torch.inference_mode():
        expected, expected_lengths = recognizer(*speech)
        got, got_lengths = copied(*speech)
    assert torch.equal(got_lengths, expected_lengths)
    assert (got - expected).abs()[length_mask(expected_lengths, expected.size(1))].max() < EXPORT_TOLERANCE


@pytest.mark.parametrize("normalization", ["global", "utterance", "speaker"])
def test_onnx_graph_matches_pytorch_at_other_shapes(tmp_path, speech, normalization, caplog):
    """A model normalized by speaker is exported as it transcribes a file of no known speaker."""
    onnxruntime = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    recognizer = small_recognizer(normalization=normalization)
    path = export_onnx(recognizer, tmp_path / "model.onnx")
    assert ("normalizes every recording as `asr transcribe` does" in caplog.text) == \
        (normalization == "speaker")
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["audio", "audio_lengths"]
    # The graph was traced on two utterances of 1 s; three of 2-4 s must go through its dynamic axes.
    audio, lengths = speech
    got, got_lengths = session.run(None, {"audio": audio.numpy(), "audio_lengths": lengths.numpy()})
    with torch.inference_mode():
        expected, expected_lengths = recognizer(audio, lengths)
    assert got_lengths.tolist() == expected_lengths.tolist()
    assert got.shape == tuple(expected.shape)
    difference = (torch.from_numpy(got) - expected).abs()[length_mask(expected_lengths, expected.size(1))]
    assert difference.max() < EXPORT_TOLERANCE


def test_asr_export_command(tmp_path, capsys):
    pytest.importorskip("onnx")
    save_model(small_recognizer(), tmp_path / "model.pt")
    assert main(["export", "--model", str(tmp_path / "model.pt"), "--out", str(tmp_path / "out" / "m.onnx")]) == 0
    assert (tmp_path / "out" / "m.onnx").stat().st_size > 0
    assert "inputs audio, audio_lengths" in capsys.readouterr().out


def test_export_without_onnx_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # as if not installed
    with pytest.raises(AsrError, match="pip install onnx"):
        export_onnx(small_recognizer(), tmp_path / "model.onnx")


def test_int8_quantization_replaces_the_recurrent_and_linear_layers_of_a_copy(speech):
    recognizer = small_recognizer()
    quantized = quantize_int8(recognizer)
    dynamic = torch.ao.nn.quantized.dynamic
    assert isinstance(quantized.acoustic.head, dynamic.Linear)
    for layer in quantized.acoustic.encoder.layers:
        assert isinstance(layer.rnn.forward_rnn, dynamic.GRU) and isinstance(layer.rnn.backward_rnn, dynamic.GRU)
    assert type(recognizer.acoustic.head) is nn.Linear  # the original is untouched
    with torch.inference_mode():
        expected, lengths = recognizer(*speech)
        got, got_lengths = quantized(*speech)
    assert torch.equal(got_lengths, lengths)
    valid = length_mask(lengths, expected.size(1))
    # 8-bit weights move the log-probabilities a little, and rarely change the best token of a frame.
    assert 0 < (got - expected).abs()[valid].max() < 0.1
    assert (got.argmax(-1) == expected.argmax(-1))[valid].float().mean() > 0.95


def test_int8_quantization_refuses_a_model_off_the_cpu():
    with pytest.raises(AsrError, match="CPUs only"):
        quantize_int8(small_recognizer().to("meta"))


def test_transcribe_with_int8(tmp_path, data_dir, capsys):
    save_model(small_recognizer(normalization="utterance"), tmp_path / "model.pt")
    wav = sorted((data_dir / "sentences" / "harvard_sentences" / "wav").glob("*.wav"))[0]
    assert main(["transcribe", "--model", str(tmp_path / "model.pt"), "--quantize", "int8", "--threads", "1",
                 str(wav)]) == 0
    assert capsys.readouterr().out.count("\n") == 1  # one line of text, whatever an untrained model says
