"""Experiment configuration: YAML files loaded into dataclasses, any key overridable from the command line.

A recipe's `conf/train.yaml` has one section a dataclass (`data`, `tokenizer`, `features`, `specaugment`, `augment`,
`model`, `optim`, `train`). `asr train --config C.yaml model.num_layers=3 optim.lr=2e-3` overrides single keys; values
are parsed as YAML, so `data.speed_factors=[0.9,1.0,1.1]` works. Unknown keys are errors, not silently ignored: a
typo in a config must never train the wrong model for a day.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from asr.augment import AugmentConfig
from asr.errors import ConfigError
from asr.features import FeatureConfig
from asr.model import ModelConfig
from asr.plain_data import build_dataclass
from asr.specaugment import SpecAugmentConfig


@dataclass
class DataConfig:
    train: str = ""  # manifest paths, relative to the directory the command runs in (the recipe's)
    dev: str = ""
    # The global batch: padded audio seconds of one optimizer step, summed over every process and micro-batch; the
    # same training on 1 GPU or 64, only faster.
    max_seconds: float = 200.0
    # The most padded audio seconds one device forwards at once; 0 = no limit. Each process accumulates the gradients
    # of about max_seconds / (processes × device_max_seconds) micro-batches a step.
    device_max_seconds: float = 0.0
    max_duration: float = 35.0  # utterances longer than this are skipped (counted) when training
    num_workers: int = 2
    speed_factors: list[float] = field(default_factory=lambda: [1.0])
    # Each epoch the utterances, sorted by duration, are cut into this many buckets of equal count, and batches are
    # drawn inside a bucket: more buckets, less padding and less varied batches.
    num_buckets: int = 10
    sortagrad: bool = False  # first epoch in order of length (DeepSpeech 2): eases CTC off its blank plateau
    cmvn: str = ""  # global CMVN statistics from `asr cmvn`; empty: estimated from the training manifest

    def __post_init__(self):
        if not self.max_seconds > 0:
            raise ConfigError(f"data.max_seconds: {self.max_seconds} is not a positive number of seconds")
        if self.device_max_seconds < 0:
            raise ConfigError(f"data.device_max_seconds: {self.device_max_seconds} is negative (0 = no limit)")
        if self.num_buckets < 1:
            raise ConfigError(f"data.num_buckets: {self.num_buckets} is not a positive number of buckets")


@dataclass
class TokenizerConfig:
    kind: str = "char"  # "char" | "bpe"
    vocab_size: int = 256  # BPE only
    model_type: str = "unigram"  # BPE only: sentencepiece's "unigram" or "bpe"
    path: str = ""  # a tokenizer file written by `asr tokenizer`; empty: built from the training manifest


@dataclass
class OptimConfig:
    lr: float = 1e-3
    weight_decay: float = 1e-2
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    schedule: str = "cosine"  # "cosine" | "noam" | "constant"; all start with a linear warmup
    # Linear warmup over this fraction of the run's optimizer steps (under decay_by: time, of train.max_minutes);
    # the decay runs over the rest.
    warmup_fraction: float = 0.05
    min_lr_ratio: float = 0.02  # cosine decays to lr * min_lr_ratio
    decay_by: str = "steps"  # "steps" | "time": decay over train.max_minutes, for runs on a time budget
    grad_clip: float = 5.0

    def __post_init__(self):
        if not 0 <= self.warmup_fraction < 1:
            raise ConfigError(f"optim.warmup_fraction: {self.warmup_fraction} is not in [0, 1)")


@dataclass
class TrainConfig:
    seed: int = 0
    epochs: int = 20
    max_steps: int = 0  # optimizer steps; 0 = run all epochs
    max_minutes: float = 0.0  # wall-clock budget for training; 0 = none
    precision: str = "auto"  # "auto" (bf16 on GPUs that have it, fp32 on CPU) | "fp32" | "bf16" | "fp16"
    validate_every: int = 0  # steps; 0 = once an epoch
    checkpoint_every: int = 0  # steps; 0 = once an epoch
    keep_checkpoints: int = 3  # step/epoch checkpoints kept besides the best ones
    keep_best: int = 3  # best checkpoints by dev WER, for averaging
    # What model.pt holds: "best", the validation with the lowest dev WER; "last", the weights the run ends with. A
    # dev set of the training speakers' own held-out takes rewards what suits them: "last" leaves the choice to the
    # schedule, which for a run of a fixed number of steps anneals to its end.
    final_model: str = "best"
    early_stop_patience: int = 0  # validations without improvement before stopping; 0 = never
    log_every: int = 20
    max_bad_batches_in_row: int = 20  # NaN/inf losses or GPU out-of-memory in a row before giving up
    threads: int = 0  # torch CPU threads; 0 = torch's default

    def __post_init__(self):
        if self.final_model not in ("best", "last"):
            raise ConfigError(f"train.final_model: {self.final_model!r} is neither \"best\" nor \"last\"")


@dataclass
class ExperimentConfig:
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    specaugment: SpecAugmentConfig = field(default_factory=SpecAugmentConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)  # waveform effects on training audio
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        """Plain data, each section through its own to_dict where it has one (e.g. tuples become lists)."""
        return {f.name: (getattr(self, f.name).to_dict() if hasattr(getattr(self, f.name), "to_dict")
                         else dataclasses.asdict(getattr(self, f.name))) for f in dataclasses.fields(self)}


# Keys of older configs, and what took their place: named in the error, not only "unknown key".
RETIRED_KEYS = {
    "optim.warmup_steps": "optim.warmup_fraction, a fraction of the run's optimizer steps",
    "optim.accum_steps": "data.device_max_seconds: accumulation follows from the global batch data.max_seconds, the "
                         "number of processes and what one device holds",
}


def _refuse_retired_keys(values: dict) -> None:
    for dotted, replacement in RETIRED_KEYS.items():
        section, key = dotted.split(".")
        if isinstance(values.get(section), dict) and key in values[section]:
            raise ConfigError(f"{dotted} is no longer a setting; use {replacement} "
                              f"(data.max_seconds is now the batch of one optimizer step over all processes)")


def apply_overrides(values: dict, overrides: list[str]) -> dict:
    """Apply `section.key=value` strings to a nested dict (values parsed as YAML)."""
    for override in overrides:
        if "=" not in override:
            raise ConfigError(f"override {override!r}: expected section.key=value")
        dotted, raw = override.split("=", 1)
        parts = dotted.strip().split(".")
        node = values
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {override!r}: {part} is not a section")
        node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else ""  # `data.dev=` clears a path
    return values


def load_config(path: str | Path | None, overrides: list[str] = ()) -> ExperimentConfig:
    """Load a YAML experiment config (or the defaults when path is None) and apply command-line overrides."""
    values: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML ({err})") from err
    values = apply_overrides(values, list(overrides))
    _refuse_retired_keys(values)
    return build_dataclass(ExperimentConfig, values)


def save_config(config: ExperimentConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
