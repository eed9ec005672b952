"""The acoustic model against hand-computed sizes, numpy transcriptions of the GRU equations, torch's GRUCell stepped
by hand, utterances run alone, and a CTC loss that must fall when a few utterances are learnt by heart."""
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from asr.errors import ConfigError
from asr.features import FeatureConfig
from asr.model import (
    AcousticModel,
    ModelConfig,
    ReferenceGRU,
    TorchBiRNN,
    length_mask,
    reverse_within_lengths,
    uses_packing,
)
from asr.recognizer import Recognizer
from asr.text import CharTokenizer


@pytest.fixture(autouse=True)
def one_thread():
    """These models are tiny: a second thread only adds synchronisation, which on a busy machine costs seconds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def small_config(**overrides) -> ModelConfig:
    values = dict(input_dim=16, subsampling_channels=4, num_layers=2, hidden_size=12, dropout=0.0, vocab_size=7)
    values.update(overrides)
    return ModelConfig(**values)


def sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


# --- lengths and shapes -------------------------------------------------------------------------------------------

def test_output_lengths_for_odd_lengths():
    model = AcousticModel(small_config()).eval()
    feat_lengths = torch.tensor([101, 13, 7, 5, 4, 3, 2, 1])
    feats = torch.randn(len(feat_lengths), 101, 16)
    log_probs, out_lengths = model(feats, feat_lengths)
    # ⌈T/4⌉, worked out by hand
    assert out_lengths.tolist() == [26, 4, 2, 2, 1, 1, 1, 1]
    assert log_probs.shape == (8, 26, 7)
    assert torch.allclose(log_probs.exp().sum(-1), torch.ones(8, 26), atol=1e-5)


@pytest.mark.parametrize("kernel", [3, 5])
def test_output_length_formula_matches_what_the_convolutions_produce(kernel):
    model = AcousticModel(small_config(subsampling_kernel=kernel, num_layers=1)).eval()
    for length in range(1, 14):
        log_probs, out_lengths = model(torch.randn(1, length, 16), torch.tensor([length]))
        assert log_probs.shape[1] == out_lengths.item() == math.ceil(length / 4)


def test_frame_rate_subsampling_and_describe():
    model = AcousticModel(small_config(layer_norm=True))
    assert model.subsampling_factor == 4
    line = model.describe()
    assert f"{model.num_parameters() / 1e6:.2f}M parameters" in line
    assert "25 frames/s" in line and "2 × bidirectional GRU 12" in line and "layer norm" in line
    assert "12.5 frames/s" in model.describe(input_frame_rate=50.0)  # features with a 20 ms hop


def test_a_recognizer_states_the_frame_rate_of_its_hop():
    tokenizer = CharTokenizer()
    config = small_config(input_dim=24, vocab_size=tokenizer.vocab_size)
    recognizer = Recognizer(config, FeatureConfig(n_mels=24, hop_ms=20.0, normalization="utterance"), tokenizer)
    assert recognizer.frame_shift == pytest.approx(0.08)
    assert "12.5 frames/s" in recognizer.describe()


def test_reverse_within_lengths_leaves_padding_in_place():
    x = torch.tensor([[1, 2, 3, 0], [4, 5, 0, 0], [6, 7, 8, 9]]).unsqueeze(-1)
    reversed_x = reverse_within_lengths(x, torch.tensor([3, 2, 4]))
    assert reversed_x.squeeze(-1).tolist() == [[3, 2, 1, 0], [5, 4, 0, 0], [9, 8, 7, 6]]


def test_auto_packing_pads_on_cpu_and_packs_on_cuda():
    assert not uses_packing("auto", torch.device("cpu"))
    assert uses_packing("auto", torch.device("cuda"))
    assert uses_packing("packed", torch.device("cpu")) and not uses_packing("padded", torch.device("cuda"))


# --- padding never changes a result -------------------------------------------------------------------------------

@pytest.mark.parametrize("packing", ["padded", "packed"])
@pytest.mark.parametrize("rnn_type, rnn_impl", [("gru", "cudnn"), ("lstm", "cudnn"), ("gru-lstm", "cudnn"),
                                                ("gru", "reference")])
def test_padded_batch_gives_each_utterance_what_it_gets_alone(rnn_type, rnn_impl, packing):
    torch.manual_seed(0)
    model = AcousticModel(small_config(rnn_type=rnn_type, rnn_impl=rnn_impl, packing=packing, num_layers=3,
                                       layer_norm=True)).eval()
    feat_lengths = torch.tensor([37, 29, 6, 1])
    feats = torch.randn(4, 37, 16)
    for row, length in enumerate(feat_lengths):
        feats[row, length:] = 1000.0  # padding the model must never look at
    log_probs, out_lengths = model(feats, feat_lengths)
    for row, length in enumerate(feat_lengths):
        alone, alone_lengths = model(feats[row:row + 1, :length], feat_lengths[row:row + 1])
        assert alone_lengths.item() == out_lengths[row].item()
        torch.testing.assert_close(log_probs[row, :out_lengths[row]], alone[0], atol=1e-5, rtol=0)


# --- the recurrent layers against independent references ----------------------------------------------------------

def numpy_seed_gru(x, w_z, b_z, w_r, b_r, w, b):
    """The seed's four equations over one utterance x (T, I); W_* act on [h_{t-1}, x_t]."""
    h = np.zeros(b.shape[0])
    outputs = []
    for x_t in x:
        z = sigmoid(w_z @ np.concatenate([h, x_t]) + b_z)
        r = sigmoid(w_r @ np.concatenate([h, x_t]) + b_r)
        h_tilde = np.tanh(w @ np.concatenate([r * h, x_t]) + b)
        h = (1 - z) * h + z * h_tilde
        outputs.append(h)
    return np.stack(outputs)


def test_reference_gru_follows_the_seed_equations():
    torch.manual_seed(0)
    input_size, hidden = 5, 4
    gru = ReferenceGRU(input_size, hidden).double()
    with torch.no_grad():
        gru.bias.normal_()  # biases start at zero; make them count
    x = torch.randn(3, 7, input_size, dtype=torch.float64)
    lengths = torch.tensor([7, 5, 1])
    forward_out, backward_out = gru(x, lengths)

    for direction, torch_out in ((0, forward_out), (1, backward_out)):
        w_in = gru.weight_input[direction].detach().numpy()
        w_hid = gru.weight_hidden[direction].detach().numpy()
        bias = gru.bias[direction].detach().numpy()
        # rows: reset [0, H), update [H, 2H), candidate [2H, 3H); W·[h, x] = W_hidden·h + W_input·x
        gate = {name: slice(i * hidden, (i + 1) * hidden) for i, name in enumerate(["r", "z", "c"])}
        w_r, w_z, w = (np.concatenate([w_hid[gate[g]], w_in[gate[g]]], axis=1) for g in ("r", "z", "c"))
        b_r, b_z, b = bias[gate["r"]], bias[gate["z"]], bias[gate["c"]]
        for row, length in enumerate(lengths.tolist()):
            utterance = x[row, :length].numpy()
            if direction == 0:
                expected = numpy_seed_gru(utterance, w_z, b_z, w_r, b_r, w, b)
            else:
                expected = numpy_seed_gru(utterance[::-1], w_z, b_z, w_r, b_r, w, b)[::-1]
            np.testing.assert_allclose(torch_out[row, :length].detach().numpy(), expected, rtol=0, atol=1e-12)
            assert not torch_out[row, length:].any()


@pytest.mark.parametrize("packing", ["padded", "packed"])
def test_torch_layer_matches_gru_cells_stepped_by_hand(packing):
    torch.manual_seed(0)
    input_size, hidden = 6, 5
    layer = TorchBiRNN("gru", input_size, hidden, packing).double()
    with torch.no_grad():
        for name, parameter in layer.named_parameters():
            if "bias" in name:
                parameter.normal_()
    x = torch.randn(3, 8, input_size, dtype=torch.float64)
    lengths = torch.tensor([8, 3, 6])
    forward_out, backward_out = layer(x, lengths)

    directions = ((layer.forward_rnn, forward_out, False), (layer.backward_rnn, backward_out, True))
    for rnn, torch_out, backwards in directions:
        cell = torch.nn.GRUCell(input_size, hidden).double()
        cell.load_state_dict({"weight_ih": rnn.weight_ih_l0, "weight_hh": rnn.weight_hh_l0,
                              "bias_ih": rnn.bias_ih_l0, "bias_hh": rnn.bias_hh_l0})
        for row, length in enumerate(lengths.tolist()):
            steps = range(length - 1, -1, -1) if backwards else range(length)
            h = torch.zeros(1, hidden, dtype=torch.float64)
            for t in steps:
                h = cell(x[row, t:t + 1], h)
                torch.testing.assert_close(torch_out[row, t], h[0], rtol=0, atol=1e-12)
            assert not torch_out[row, length:].any()


def test_recurrent_weights_start_orthogonal():
    layer = TorchBiRNN("lstm", 6, 5, "padded")
    for block in layer.forward_rnn.weight_hh_l0.detach().split(5):
        torch.testing.assert_close(block @ block.T, torch.eye(5), atol=1e-5, rtol=0)
    assert layer.forward_rnn.bias_ih_l0[5:10].eq(1).all()  # LSTM forget gate


# --- sizes --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("merge, encoder_size", [("concat", 24), ("sum", 12)])
def test_merge_sets_the_encoder_output_size(merge, encoder_size):
    model = AcousticModel(small_config(merge=merge)).eval()
    feats, lengths = torch.randn(2, 20, 16), torch.tensor([20, 11])
    x, sub_lengths = model.subsampler(feats, lengths)
    assert model.encoder(x, sub_lengths).shape == (2, 5, encoder_size)
    assert model.head.in_features == encoder_size
    assert model(feats, lengths)[0].shape == (2, 5, 7)


def test_parameter_count_of_a_small_config():
    config = small_config(subsampling_channels=(4, 6), hidden_size=8, rnn_type="gru-lstm", layer_norm=True)
    # conv 1: 1·4·3·3 + 4 = 40; conv 2: 4·6·3·3 + 6 = 222; frequency 16 → 8 → 4, so the encoder reads 6·4 = 24
    # GRU layer, 2 directions: 2·3·8·(24 + 8 + 2) = 1632; layer norm over 16: 32
    # LSTM layer, 2 directions: 2·4·8·(16 + 8 + 2) = 1664; layer norm: 32
    # head: 16·7 + 7 = 119
    assert AcousticModel(config).num_parameters() == 40 + 222 + 1632 + 32 + 1664 + 32 + 119


def test_parameter_count_of_the_reference_gru():
    config = small_config(rnn_impl="reference", hidden_size=8, merge="sum", num_layers=1, subsampling_channels=4)
    # conv 40 + 4·4·9 + 4 = 148; encoder reads 4·4 = 16; one bias per gate: 2·3·8·(16 + 8 + 1) = 1200; head 8·7 + 7
    assert AcousticModel(config).num_parameters() == 40 + 148 + 1200 + 63


def test_default_model_size_and_smoke():
    model = AcousticModel(ModelConfig(vocab_size=29))
    conv = (1 * 32 * 9 + 32) + (32 * 32 * 9 + 32)
    first_gru = 2 * 3 * 512 * (32 * 20 + 512 + 2)  # 80 mel bins → 40 → 20
    other_grus = 4 * 2 * 3 * 512 * (1024 + 512 + 2)
    head = 1024 * 29 + 29
    expected = conv + first_gru + other_grus + head
    print(f"default model: {model.num_parameters():,} parameters (formula {expected:,})")
    assert model.num_parameters() == expected
    assert 22e6 < expected < 23e6
    log_probs, out_lengths = model.eval()(torch.randn(2, 41, 80), torch.tensor([41, 30]))
    assert log_probs.shape == (2, 11, 29) and out_lengths.tolist() == [11, 8]


# --- training -----------------------------------------------------------------------------------------------------

def ctc_loss(log_probs, out_lengths, targets, target_lengths):
    return F.ctc_loss(log_probs.transpose(0, 1), targets, out_lengths, target_lengths, blank=0,
                      reduction="mean", zero_infinity=True)


@pytest.mark.parametrize("rnn_impl", ["cudnn", "reference"])
def test_gradients_reach_every_parameter(rnn_impl):
    torch.manual_seed(0)
    model = AcousticModel(small_config(rnn_impl=rnn_impl, layer_norm=True, dropout=0.1)).train()
    feats, lengths = torch.randn(2, 30, 16), torch.tensor([30, 21])
    log_probs, out_lengths = model(feats, lengths)
    ctc_loss(log_probs, out_lengths, torch.tensor([[1, 2, 3], [4, 5, 0]]), torch.tensor([3, 2])).backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
        assert parameter.grad.abs().sum() > 0, name


def test_ctc_loss_falls_to_near_zero_on_a_few_utterances():
    torch.manual_seed(0)
    model = AcousticModel(small_config(input_dim=20, subsampling_channels=8, hidden_size=32, vocab_size=8))
    feat_lengths = torch.tensor([56, 48, 40])
    feats = torch.randn(3, 56, 20)
    targets = torch.randint(1, 8, (3, 4))
    target_lengths = torch.tensor([4, 3, 3])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(150):
        optimizer.zero_grad()
        loss = ctc_loss(*model(feats, feat_lengths), targets, target_lengths)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.05 * losses[0]
    assert losses[-1] < 0.1


# --- configuration ------------------------------------------------------------------------------------------------

def test_config_round_trips_through_plain_data():
    config = ModelConfig(subsampling_channels=(16, 32), rnn_type="gru-lstm", merge="sum", vocab_size=30)
    values = config.to_dict()
    assert values["subsampling_channels"] == [16, 32]
    assert json.loads(json.dumps(values)) == values
    assert yaml.safe_load(yaml.safe_dump(values)) == values
    assert ModelConfig.from_dict(values) == config


@pytest.mark.parametrize("values, problem", [
    (dict(rnn_type="lstm", rnn_impl="reference"), "model.rnn_impl"),
    (dict(rnn_type="rnn"), "model.rnn_type"),
    (dict(merge="mean"), "model.merge"),
    (dict(packing="sometimes"), "model.packing"),
    (dict(subsampling_kernel=4), "model.subsampling_kernel"),
    (dict(subsampling_channels=(8, 8, 8)), "model.subsampling_channels"),
    (dict(dropout=1.0), "model.dropout"),
    (dict(vocab_size=1), "model.vocab_size"),
])
def test_invalid_configs_name_the_key(values, problem):
    with pytest.raises(ConfigError, match=problem):
        ModelConfig(**values)


def test_unknown_keys_missing_vocabulary_and_wrong_feature_size_are_config_errors():
    with pytest.raises(ConfigError, match="hiden_size"):
        ModelConfig.from_dict({"hiden_size": 256, "vocab_size": 10})
    with pytest.raises(ConfigError, match="vocab_size"):
        AcousticModel(ModelConfig())
    model = AcousticModel(small_config())
    with pytest.raises(ConfigError, match="input_dim"):
        model(torch.randn(1, 10, 80), torch.tensor([10]))


def test_layer_norm_normalizes_each_layers_merged_output_as_the_formula_says():
    torch.manual_seed(0)
    model = AcousticModel(small_config(num_layers=3, layer_norm=True)).eval()
    for layer in model.encoder.layers:  # a scale and shift other than LayerNorm's initial ones and zeros
        torch.nn.init.normal_(layer.norm.weight)
        torch.nn.init.normal_(layer.norm.bias)
    feats, lengths = torch.randn(2, 40, 16), torch.tensor([40, 23])
    with torch.no_grad():
        x, frame_lengths = model.subsampler(feats, lengths)
        for layer in model.encoder.layers:
            forward_out, backward_out = layer.rnn(x, frame_lengths)
            merged = torch.cat([forward_out, backward_out], dim=-1).numpy().astype(np.float64)
            mean = merged.mean(axis=-1, keepdims=True)
            variance = merged.var(axis=-1, keepdims=True)  # LayerNorm's: biased, over the features of a frame
            expected = (merged - mean) / np.sqrt(variance + 1e-5) * layer.norm.weight.numpy() + layer.norm.bias.numpy()
            x = layer(x, frame_lengths)
            np.testing.assert_allclose(x.numpy(), expected, rtol=1e-4, atol=1e-5)
        log_probs, _ = model(feats, lengths)
        np.testing.assert_allclose(log_probs.numpy(), torch.log_softmax(model.head(x), -1).numpy(), atol=1e-5)


def test_a_layer_normed_model_exports_to_onnx_with_the_same_outputs(tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from asr.export import export_onnx

    torch.manual_seed(0)
    tokenizer = CharTokenizer()
    config = small_config(input_dim=80, vocab_size=tokenizer.vocab_size, layer_norm=True, num_layers=3)
    recognizer = Recognizer(config, FeatureConfig(normalization="utterance"), tokenizer).eval()
    session = onnxruntime.InferenceSession(str(export_onnx(recognizer, tmp_path / "model.onnx")),
                                           providers=["CPUExecutionProvider"])
    audio = torch.randn(2, 24000) * 0.1
    lengths = torch.tensor([24000, 15000])
    got, got_lengths = session.run(None, {"audio": audio.numpy(), "audio_lengths": lengths.numpy()})
    with torch.inference_mode():
        expected, expected_lengths = recognizer(audio, lengths)
    assert got_lengths.tolist() == expected_lengths.tolist()
    valid = length_mask(expected_lengths, expected.size(1))
    assert (torch.from_numpy(got) - expected).abs()[valid].max() < 1e-3
