"""The acoustic model: log-mel features in, CTC log-probabilities out.

    features (B, T, n_mels) ─▶ Subsampler: 2 × Conv2d, stride 2 in time and frequency ─▶ (B, ⌈T/4⌉, C·⌈n_mels/4⌉)
      ─▶ Encoder: num_layers × bidirectional GRU / LSTM (directions merged, optional layer norm, dropout between)
      ─▶ Linear to the vocabulary (id 0 = CTC blank) ─▶ log-softmax ─▶ (B, ⌈T/4⌉, vocab_size)

Padding never changes a result: every utterance of a batch gets the outputs it would get alone. The convolutions see
zeros past each utterance's end, and the backward direction of every recurrent layer reads each utterance reversed
within its own length, so its recurrence starts on the utterance's last frame rather than on padding. That makes
packed sequences an optimisation, not a matter of correctness (see `uses_packing`).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from asr.errors import ConfigError
from asr.plain_data import build_dataclass

RNN_TYPES = ("gru", "lstm", "gru-lstm")
RNN_IMPLS = ("cudnn", "reference")
MERGES = ("concat", "sum")
PACKINGS = ("auto", "packed", "padded")


@dataclass
class ModelConfig:
    """Dimensions and choices of the acoustic model; a model file stores it as `to_dict()`."""

    input_dim: int = 80  # feature bins (n_mels)
    subsampling_channels: int | tuple[int, int] = 32  # Conv2d output channels: one for both layers, or one per layer
    subsampling_kernel: int = 3  # odd, so that each window is centred on its frame
    num_layers: int = 5
    hidden_size: int = 512  # per direction
    rnn_type: str = "gru"  # "gru" | "lstm" | "gru-lstm" (GRU and LSTM layers alternating, GRU first)
    rnn_impl: str = "cudnn"  # "cudnn": torch's nn.GRU / nn.LSTM | "reference": ReferenceGRU (Cho et al.'s equations)
    merge: str = "concat"  # how the two directions join: "concat" (2 × hidden_size) | "sum" (hidden_size)
    dropout: float = 0.1  # between recurrent layers
    layer_norm: bool = False  # LayerNorm on each recurrent layer's merged output
    # Output size including the CTC blank at id 0. It comes from the tokenizer, which usually does not exist yet when
    # the config is read, so it may stay None until the model is built.
    vocab_size: int | None = None
    packing: str = "auto"  # "packed" | "padded" | "auto": what is faster on the device (see uses_packing)

    def __post_init__(self):
        if isinstance(self.subsampling_channels, list):  # YAML and model files hold lists
            self.subsampling_channels = tuple(self.subsampling_channels)
        channels = self.channels_per_layer()
        _require(len(channels) == 2 and all(c >= 1 for c in channels), "subsampling_channels",
                 f"{self.subsampling_channels!r} is not a positive int or a pair of them (one per Conv2d layer)")
        _require(self.subsampling_kernel >= 1 and self.subsampling_kernel % 2 == 1, "subsampling_kernel",
                 f"{self.subsampling_kernel} is not a positive odd number")
        for key in ("input_dim", "num_layers", "hidden_size"):
            _require(getattr(self, key) >= 1, key, f"{getattr(self, key)} is not a positive number")
        for key, choices in (("rnn_type", RNN_TYPES), ("rnn_impl", RNN_IMPLS), ("merge", MERGES),
                             ("packing", PACKINGS)):
            _require(getattr(self, key) in choices, key, f"{getattr(self, key)!r} is not one of {', '.join(choices)}")
        _require(self.rnn_impl == "cudnn" or self.rnn_type == "gru", "rnn_impl",
                 f"the reference implementation is a GRU only; rnn_type {self.rnn_type!r} needs rnn_impl 'cudnn'")
        _require(0.0 <= self.dropout < 1.0, "dropout", f"{self.dropout} is not in [0, 1)")
        _require(self.vocab_size is None or self.vocab_size >= 2, "vocab_size",
                 f"{self.vocab_size} is too small: the blank and at least one token")

    def channels_per_layer(self) -> tuple[int, ...]:
        """Output channels of the two Conv2d layers."""
        if isinstance(self.subsampling_channels, int):
            return (self.subsampling_channels, self.subsampling_channels)
        return tuple(self.subsampling_channels)

    def layer_rnn_types(self) -> list[str]:
        """The kind of each recurrent layer, "gru" or "lstm", bottom first."""
        if self.rnn_type == "gru-lstm":
            return ["gru" if i % 2 == 0 else "lstm" for i in range(self.num_layers)]
        return [self.rnn_type] * self.num_layers

    def to_dict(self) -> dict:
        """Plain data: per-layer channels as a list, so the dict equals itself read back from JSON or YAML."""
        values = asdict(self)
        if isinstance(values["subsampling_channels"], tuple):
            values["subsampling_channels"] = list(values["subsampling_channels"])
        return values

    @classmethod
    def from_dict(cls, values: dict) -> ModelConfig:
        """The inverse of `to_dict`; unknown keys and values of the wrong type raise ConfigError."""
        return build_dataclass(cls, values, "model")


def _require(condition: bool, key: str, problem: str) -> None:
    if not condition:
        raise ConfigError(f"model.{key}: {problem}")


def uses_packing(packing: str, device: torch.device) -> bool:
    """Whether a recurrent layer runs on packed sequences; both ways give the same outputs, only speed differs.

    "auto" pads on CPU: there padding wins although it computes a third more frames in a length-bucketed batch, and
    wins more as utterances grow (`tools/bench_rnn_packing.py`; figures in docs/benchmarks.md). On CUDA "auto"
    packs, because cuDNN runs packed sequences natively and skips the padded steps; that choice is not measured yet:
    run the same tool on a GPU to check it.
    """
    if packing == "auto":
        return device.type == "cuda"
    return packing == "packed"


def length_mask(lengths: torch.Tensor, size: int) -> torch.Tensor:
    """(B, size) boolean: True at the positions (frames, samples) inside each utterance's length, False on padding."""
    return torch.arange(size, device=lengths.device)[None, :] < lengths[:, None]


def reverse_within_lengths(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Reverse each utterance of a (B, T, ...) batch within its own length, leaving the padding where it is.

    The backward direction reads this, so it starts on an utterance's last frame instead of on padding. The
    operation is its own inverse: applied to the backward direction's outputs it puts them back in time order.
    """
    steps = torch.arange(x.size(1), device=x.device)
    reversed_steps = lengths[:, None] - 1 - steps[None, :]
    source = torch.where(reversed_steps >= 0, reversed_steps, steps[None, :])  # (B, T)
    return x.gather(1, source.view(*source.shape, *([1] * (x.dim() - 2))).expand_as(x))


def _conv_output_length(length, kernel: int):
    """Frames out of a stride-2 convolution with padding kernel // 2 (PyTorch's Conv2d formula): ⌈length/2⌉ for an
    odd kernel, so two layers give ⌈length/4⌉ and an utterance of one frame still gives one output frame."""
    return (length + 2 * (kernel // 2) - kernel) // 2 + 1


class Subsampler(nn.Module):
    """Two Conv2d + ReLU layers, each stride 2 in time and in frequency: (B, T, F) → (B, ⌈T/4⌉, C₂·⌈F/4⌉).

    The features are a one-channel image (time × frequency). Padding before each convolution is zeroed, so the last
    frames of an utterance see zeros past its end, exactly as when the utterance is alone in its batch.
    """

    factor = 4

    def __init__(self, input_dim: int, channels: tuple[int, int], kernel: int):
        super().__init__()
        self.kernel = kernel
        self.convs = nn.ModuleList()
        in_channels, freq_bins = 1, input_dim
        for out_channels in channels:
            self.convs.append(nn.Conv2d(in_channels, out_channels, kernel, stride=2, padding=kernel // 2))
            in_channels, freq_bins = out_channels, _conv_output_length(freq_bins, kernel)
        self.output_dim = in_channels * freq_bins

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """Output frames for input lengths: ⌈⌈T/2⌉/2⌉ = ⌈T/4⌉."""
        for _ in self.convs:
            lengths = _conv_output_length(lengths, self.kernel)
        return lengths

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, F) features and lengths → (B, ⌈T/4⌉, output_dim) frames and their lengths."""
        x = feats.unsqueeze(1)  # (B, 1, T, F)
        for conv in self.convs:
            x = x * length_mask(lengths, x.size(2))[:, None, :, None]
            x = torch.relu(conv(x))
            lengths = _conv_output_length(lengths, self.kernel)
        batch, channels, frames, freq_bins = x.shape
        return x.transpose(1, 2).reshape(batch, frames, channels * freq_bins), lengths


def _init_gate_blocks(weight_input: torch.Tensor, weight_hidden: torch.Tensor, hidden_size: int) -> None:
    """Glorot-uniform input weights and orthogonal recurrent weights, one gate's (hidden_size, ·) block at a time:
    orthogonal recurrent matrices neither grow nor shrink the state as it is carried through long utterances."""
    with torch.no_grad():
        for block in weight_input.split(hidden_size, dim=0):
            nn.init.xavier_uniform_(block)
        for block in weight_hidden.split(hidden_size, dim=0):
            nn.init.orthogonal_(block)


class TorchBiRNN(nn.Module):
    """One bidirectional layer of torch's nn.GRU or nn.LSTM (cuDNN on GPU): (B, T, I) → two (B, T, H) outputs.

    Each direction is its own unidirectional module because the backward one reads a different tensor (each utterance
    reversed within its length): a single bidirectional nn.GRU gives both directions the same input, so on a padded
    batch its backward direction would start on padding.
    """

    def __init__(self, rnn_type: str, input_size: int, hidden_size: int, packing: str):
        super().__init__()
        rnn_class = {"gru": nn.GRU, "lstm": nn.LSTM}[rnn_type]
        self.forward_rnn = rnn_class(input_size, hidden_size, batch_first=True)
        self.backward_rnn = rnn_class(input_size, hidden_size, batch_first=True)
        self.rnn_type = rnn_type
        self.hidden_size = hidden_size
        self.packing = packing
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for rnn in (self.forward_rnn, self.backward_rnn):
            _init_gate_blocks(rnn.weight_ih_l0, rnn.weight_hh_l0, self.hidden_size)
            nn.init.zeros_(rnn.bias_ih_l0)
            nn.init.zeros_(rnn.bias_hh_l0)
            if self.rnn_type == "lstm":
                # Forget-gate bias 1 (gates i, f, g, o): keep the cell state by default early in training.
                nn.init.ones_(rnn.bias_ih_l0[self.hidden_size:2 * self.hidden_size])

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward- and backward-direction outputs, both in time order and zero past each length."""
        packed = uses_packing(self.packing, x.device)
        forward_out = self._run(self.forward_rnn, x, lengths, packed)
        backward_out = self._run(self.backward_rnn, reverse_within_lengths(x, lengths), lengths, packed)
        mask = length_mask(lengths, x.size(1))[..., None]
        return forward_out * mask, reverse_within_lengths(backward_out, lengths) * mask

    @staticmethod
    def _run(rnn: nn.Module, x: torch.Tensor, lengths: torch.Tensor, packed: bool) -> torch.Tensor:
        if not packed:
            return rnn(x)[0]
        sequences = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        return pad_packed_sequence(rnn(sequences)[0], batch_first=True, total_length=x.size(1))[0]


class ReferenceGRU(nn.Module):
    """A bidirectional GRU layer in plain torch ops, exactly the seed's equations (Cho et al. 2014):

        z_t = σ(W_z·[h_{t-1}, x_t] + b_z)               update gate
        r_t = σ(W_r·[h_{t-1}, x_t] + b_r)               reset gate
        h̃_t = tanh(W·[r_t ⊙ h_{t-1}, x_t] + b)          candidate
        h_t = (1 − z_t) ⊙ h_{t-1} + z_t ⊙ h̃_t

    torch's nn.GRU (and cuDNN's) computes a different cell:

        n_t = tanh(W_in x_t + b_in + r_t ⊙ (W_hn h_{t-1} + b_hn)),   h_t = (1 − z_t) ⊙ n_t + z_t ⊙ h_{t-1}

    Its reset gate scales the recurrent product after the matrix multiplication, with an extra bias b_hn inside,
    instead of choosing which units of h_{t-1} the product sees; no choice of weights turns one into the other. Its z
    weights h_{t-1} where the seed's z weights h̃_t; that difference alone is a relabelling (z ↔ 1 − z: the same cell
    with negated update-gate weights and bias). Cho et al.'s paper also puts z on h_{t-1}; the seed's form is the one
    implemented here.

    Parameters, direction 0 forward and 1 backward, rows of each gate block in the order reset, update, candidate:
    `weight_input` (2, 3H, I) multiplies x_t, `weight_hidden` (2, 3H, H) multiplies h_{t-1} (reset, update) and
    r_t ⊙ h_{t-1} (candidate), `bias` (2, 3H); so W_z·[h, x] = weight_hidden[d, H:2H]·h + weight_input[d, H:2H]·x.

    The input halves of all gates are computed for every step in one matrix product; only the recurrence loops, and
    both directions advance in the same loop. The backward direction reads each utterance reversed within its
    length, so padding never enters either recurrence, whatever the packing setting.
    """

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__()
        self.hidden_size = hidden_size
        self.weight_input = nn.Parameter(torch.empty(2, 3 * hidden_size, input_size))
        self.weight_hidden = nn.Parameter(torch.empty(2, 3 * hidden_size, hidden_size))
        self.bias = nn.Parameter(torch.empty(2, 3 * hidden_size))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for weight_input, weight_hidden in zip(self.weight_input, self.weight_hidden):
            _init_gate_blocks(weight_input, weight_hidden, self.hidden_size)
        nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, I) → forward- and backward-direction outputs (B, T, H), in time order, zero past each length."""
        size = self.hidden_size
        inputs = torch.stack([x, reverse_within_lengths(x, lengths)])  # (2, B, T, I)
        input_part = torch.einsum("dbti,dgi->dbtg", inputs, self.weight_input) + self.bias[:, None, None, :]
        hidden_gates = self.weight_hidden[:, :2 * size].transpose(1, 2)  # (2, H, 2H): reset, update
        hidden_candidate = self.weight_hidden[:, 2 * size:].transpose(1, 2)  # (2, H, H)
        state = x.new_zeros(2, x.size(0), size)
        states = []
        for step in range(x.size(1)):
            gates_in, candidate_in = input_part[:, :, step].split([2 * size, size], dim=-1)
            reset, update = torch.sigmoid(torch.baddbmm(gates_in, state, hidden_gates)).chunk(2, dim=-1)
            candidate = torch.tanh(torch.baddbmm(candidate_in, reset * state, hidden_candidate))
            state = (1 - update) * state + update * candidate
            states.append(state)
        outputs = torch.stack(states, dim=2)  # (2, B, T, H)
        mask = length_mask(lengths, x.size(1))[..., None]
        return outputs[0] * mask, reverse_within_lengths(outputs[1], lengths) * mask


class EncoderLayer(nn.Module):
    """A bidirectional recurrent layer whose two directions are merged (concatenated or summed), then layer-normed."""

    def __init__(self, rnn: nn.Module, hidden_size: int, merge: str, layer_norm: bool):
        super().__init__()
        self.rnn = rnn
        self.merge = merge
        self.output_size = 2 * hidden_size if merge == "concat" else hidden_size
        self.norm = nn.LayerNorm(self.output_size) if layer_norm else nn.Identity()

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(B, T, I) → (B, T, output_size)."""
        forward_out, backward_out = self.rnn(x, lengths)
        if self.merge == "concat":
            return self.norm(torch.cat([forward_out, backward_out], dim=-1))
        return self.norm(forward_out + backward_out)


class Encoder(nn.Module):
    """`num_layers` bidirectional recurrent layers with dropout between them: (B, T, I) → (B, T, output_size)."""

    def __init__(self, config: ModelConfig, input_size: int):
        super().__init__()
        self.layers = nn.ModuleList()
        for rnn_type in config.layer_rnn_types():
            if config.rnn_impl == "reference":
                rnn = ReferenceGRU(input_size, config.hidden_size)
            else:
                rnn = TorchBiRNN(rnn_type, input_size, config.hidden_size, config.packing)
            layer = EncoderLayer(rnn, config.hidden_size, config.merge, config.layer_norm)
            self.layers.append(layer)
            input_size = layer.output_size
        self.output_size = input_size
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        for index, layer in enumerate(self.layers):
            if index > 0:
                x = self.dropout(x)
            x = layer(x, lengths)
        return x


class AcousticModel(nn.Module):
    """Features to CTC log-probabilities: Subsampler → Encoder → Linear → log-softmax."""

    subsampling_factor = Subsampler.factor

    def __init__(self, config: ModelConfig):
        super().__init__()
        if config.vocab_size is None:
            raise ConfigError("model.vocab_size: not set (it is the tokenizer's vocab_size, blank included)")
        self.config = config
        self.subsampler = Subsampler(config.input_dim, config.channels_per_layer(), config.subsampling_kernel)
        self.encoder = Encoder(config, self.subsampler.output_dim)
        self.head = nn.Linear(self.encoder.output_size, config.vocab_size)

    def output_lengths(self, feat_lengths: torch.Tensor) -> torch.Tensor:
        """Output frames for each feature length: ⌈T/4⌉."""
        return self.subsampler.output_lengths(feat_lengths)

    def forward(self, feats: torch.Tensor, feat_lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, input_dim) features and their lengths → (B, ⌈T/4⌉, vocab_size) log-probabilities and lengths."""
        if feats.dim() != 3 or feats.size(-1) != self.config.input_dim:
            raise ConfigError(f"model.input_dim: the model takes (batch, frames, {self.config.input_dim}) features, "
                              f"got shape {tuple(feats.shape)} (does features.n_mels match?)")
        x, lengths = self.subsampler(feats, feat_lengths.to(feats.device))
        x = self.encoder(x, lengths)
        return torch.log_softmax(self.head(x), dim=-1), lengths

    def num_parameters(self) -> int:
        """Number of trainable parameters."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def describe(self, input_frame_rate: float = 100.0) -> str:
        """One line: size, output frame rate (for features at `input_frame_rate` a second) and layers."""
        config = self.config
        rnn = {"gru": "GRU", "lstm": "LSTM", "gru-lstm": "GRU/LSTM"}[config.rnn_type]
        if config.rnn_impl == "reference":
            rnn += " (reference cell)"
        norm = ", layer norm" if config.layer_norm else ""
        frame_rate = input_frame_rate / self.subsampling_factor
        return (f"AcousticModel: {self.num_parameters() / 1e6:.2f}M parameters, {config.input_dim} features → "
                f"{self.subsampling_factor}× Conv2d subsampling ({frame_rate:g} frames/s) → "
                f"{config.num_layers} × bidirectional {rnn} {config.hidden_size} ({config.merge}{norm}) → "
                f"{config.vocab_size} outputs")
