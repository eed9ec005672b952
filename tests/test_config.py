import pytest
import yaml

from asr.config import ExperimentConfig, load_config, save_config
from asr.errors import ConfigError


def test_defaults_without_a_file():
    config = load_config(None)
    assert isinstance(config, ExperimentConfig)
    assert config.model.num_layers == 5 and config.model.hidden_size == 512
    assert config.features.n_mels == 80


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text("model:\n  num_layers: 3\n  hidden_size: 128\noptim:\n  lr: 0.002\n")
    config = load_config(path, ["model.num_layers=4", "data.speed_factors=[0.9, 1.0, 1.1]", "optim.lr=1e-3",
                                "model.subsampling_channels=[16, 32]"])
    assert config.model.num_layers == 4
    assert config.model.hidden_size == 128
    assert config.optim.lr == pytest.approx(1e-3)
    assert config.data.speed_factors == [0.9, 1.0, 1.1]
    assert config.model.subsampling_channels == (16, 32)


def test_integer_given_for_a_float_is_accepted(tmp_path):
    assert load_config(None, ["optim.lr=1"]).optim.lr == 1.0


@pytest.mark.parametrize("override, message", [
    ("model.num_layer=3", "unknown key"),
    ("modle.num_layers=3", "unknown key"),
    ("model.num_layers=three", "expected int"),
    ("train.epochs=true", "expected int"),
    ("model.num_layers", "section.key=value"),
    ("model.rnn_type=transformer", "rnn_type"),
])
def test_bad_overrides_are_named(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_saved_config_loads_back_identically(tmp_path):
    config = load_config(None, ["model.num_layers=2", "model.subsampling_channels=[8, 16]", "tokenizer.kind=bpe"])
    save_config(config, tmp_path / "config.yaml")
    assert isinstance(yaml.safe_load((tmp_path / "config.yaml").read_text()), dict)
    assert load_config(tmp_path / "config.yaml") == config


@pytest.mark.parametrize("override, message", [
    ("optim.warmup_steps=500", r"optim.warmup_steps is no longer a setting; use optim.warmup_fraction"),
    ("optim.accum_steps=4", r"optim.accum_steps is no longer a setting; use data.device_max_seconds"),
])
def test_keys_of_older_configs_name_what_replaced_them(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])
    old = tmp_path / "old.yaml"
    old.write_text(f"{override.split('.')[0]}:\n  {override.split('.')[1].split('=')[0]}: 4\n")
    with pytest.raises(ConfigError, match=message):
        load_config(old)


@pytest.mark.parametrize("override, message", [
    ("optim.warmup_fraction=1.0", r"optim.warmup_fraction: 1.0 is not in \[0, 1\)"),
    ("optim.warmup_fraction=-0.1", r"optim.warmup_fraction: -0.1 is not in \[0, 1\)"),
    ("data.max_seconds=0", "data.max_seconds: 0.0 is not a positive number"),
    ("data.device_max_seconds=-5", "data.device_max_seconds: -5.0 is negative"),
])
def test_out_of_range_batch_and_schedule_settings_are_refused(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])
