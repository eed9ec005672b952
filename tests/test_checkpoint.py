import os
import pickle

import pytest
import torch

from asr.checkpoint import (
    CheckpointDir,
    average_model_files,
    load_checkpoint,
    load_model,
    read_plain_data,
    save_checkpoint,
    save_model,
    write_atomically,
)
from asr.errors import AsrError, ModelFileError
from asr.features import FeatureConfig
from asr.model import ModelConfig
from asr.recognizer import Recognizer
from asr.text import BpeTokenizer, CharTokenizer


def tiny_recognizer(tokenizer=None, seed=0):
    torch.manual_seed(seed)
    tokenizer = tokenizer or CharTokenizer()
    config = ModelConfig(vocab_size=tokenizer.vocab_size, num_layers=2, hidden_size=16, subsampling_channels=4)
    stats = {"mean": [float(i) for i in range(80)], "std": [2.0] * 80}
    return Recognizer(config, FeatureConfig(), tokenizer, cmvn_stats=stats).eval()


def outputs(recognizer):
    torch.manual_seed(1)
    audio = torch.randn(2, 8000) * 0.1
    return recognizer(audio, torch.tensor([8000, 5000]))[0]


def test_model_file_round_trip_under_weights_only(tmp_path):
    recognizer = tiny_recognizer()
    save_model(recognizer, tmp_path / "model.pt", metadata={"dev_wer": 0.25})
    payload = torch.load(tmp_path / "model.pt", weights_only=True)  # the safe loader reads it as it is
    assert payload["metadata"]["dev_wer"] == 0.25
    loaded = load_model(tmp_path / "model.pt")
    assert torch.equal(outputs(loaded), outputs(recognizer))
    # CMVN statistics travel inside the file, as buffers of the frontend.
    assert any("mean" in name for name in payload["state_dict"])
    assert loaded.frontend.state_dict().keys() == recognizer.frontend.state_dict().keys()


def test_bpe_tokenizer_travels_in_the_model_file(tmp_path, data_dir):
    lines = (data_dir / "text" / "ljspeech-val-sentences.txt").read_text().splitlines()[:300]
    tokenizer = BpeTokenizer.train(lines, vocab_size=64)
    save_model(tiny_recognizer(tokenizer), tmp_path / "model.pt")
    loaded = load_model(tmp_path / "model.pt")
    assert loaded.tokenizer.encode(lines[0]) == tokenizer.encode(lines[0])


class RunsCode:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/asr-pwned",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # torch's note on the plain pickle's protocol 4
def test_a_malicious_pickle_is_refused_with_a_clear_message(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": "asr-model", "payload": RunsCode()}, path)
    with pytest.raises(ModelFileError, match="refused to load"):
        load_model(path)
    # Plain pickle, not torch.save's zip container: refused too.
    plain = tmp_path / "evil.pkl"
    plain.write_bytes(pickle.dumps(RunsCode()))
    with pytest.raises(ModelFileError, match=str(plain)):
        load_model(plain)


@pytest.mark.parametrize("content, message", [
    (b"", "not a readable model file"),
    (b"this is text, not a model", "not a readable model file"),
])
def test_corrupt_files_are_named(tmp_path, content, message):
    path = tmp_path / "model.pt"
    path.write_bytes(content)
    with pytest.raises(ModelFileError, match=message):
        load_model(path)


def test_truncated_model_file(tmp_path):
    save_model(tiny_recognizer(), tmp_path / "model.pt")
    data = (tmp_path / "model.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="cut.pt"):
        load_model(tmp_path / "cut.pt")


def test_missing_and_foreign_files(tmp_path):
    with pytest.raises(ModelFileError, match="not found"):
        load_model(tmp_path / "absent.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(ModelFileError, match="not a model file"):
        read_plain_data(tmp_path / "other.pt")


def test_a_model_file_is_not_a_checkpoint(tmp_path):
    save_model(tiny_recognizer(), tmp_path / "model.pt")
    with pytest.raises(ModelFileError, match="no trainer state"):
        load_checkpoint(tmp_path / "model.pt")
    save_checkpoint(tmp_path / "ckpt.pt", tiny_recognizer(), {"step": 3})
    assert load_checkpoint(tmp_path / "ckpt.pt")["trainer"]["step"] == 3


def test_disk_full_leaves_the_previous_file_intact(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    write_atomically({"format": "asr-model", "value": 1}, path)

    def disk_full(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(AsrError, match="No space left on device"):
        write_atomically({"format": "asr-model", "value": 2}, path)
    monkeypatch.undo()
    assert read_plain_data(path)["value"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]  # no temporary file left behind


def test_average_of_model_files(tmp_path):
    first, second = tiny_recognizer(seed=0), tiny_recognizer(seed=1)
    save_model(first, tmp_path / "a.pt")
    save_model(second, tmp_path / "b.pt")
    average_model_files([tmp_path / "a.pt", tmp_path / "b.pt"], tmp_path / "avg.pt")
    averaged = load_model(tmp_path / "avg.pt")
    name = "acoustic.head.weight" if "acoustic.head.weight" in averaged.state_dict() else next(
        n for n, t in averaged.state_dict().items() if t.is_floating_point())
    expected = (first.state_dict()[name] + second.state_dict()[name]) / 2
    assert torch.allclose(averaged.state_dict()[name], expected, atol=1e-6)


def test_average_refuses_different_models(tmp_path):
    save_model(tiny_recognizer(), tmp_path / "a.pt")
    other = tiny_recognizer()
    other.model_config = ModelConfig(vocab_size=29, num_layers=3, hidden_size=16, subsampling_channels=4)
    save_model(Recognizer(other.model_config, FeatureConfig(normalization="utterance"), CharTokenizer()),
               tmp_path / "b.pt")
    with pytest.raises(ModelFileError, match="different model"):
        average_model_files([tmp_path / "a.pt", tmp_path / "b.pt"], tmp_path / "avg.pt")


def test_a_checkpoint_folder_lists_by_step_keeps_the_latest_and_picks_the_best(tmp_path):
    folder = CheckpointDir(tmp_path / "checkpoints")
    recognizer = tiny_recognizer()
    assert folder.latest() is None and folder.checkpoints() == [] and folder.best_models() == []
    for step in (9, 10, 30, 100):  # in step order, not the names' (ckpt-100 < ckpt-30 < ckpt-9 as text)
        folder.save_checkpoint(step, recognizer, {"step": step}, {"step": step}, keep=3)
    assert [path.name for path in folder.checkpoints()] == ["ckpt-10.pt", "ckpt-30.pt", "ckpt-100.pt"]  # 9 pruned
    assert folder.latest() == folder.checkpoint(100)
    assert load_checkpoint(folder.latest())["trainer"] == {"step": 100}
    for step, wer in ((10, 0.3), (30, 0.1), (100, 0.2), (200, 0.1)):
        folder.save_best(step, recognizer, {"dev_wer": wer})
    folder.remove_best(200)
    folder.save_best(20, recognizer, {"dev_wer": 0.1})  # a tie goes to the earlier step
    assert [path.name for path in folder.best_models()] == ["best-20.pt", "best-30.pt", "best-100.pt", "best-10.pt"]
    assert folder.to_average(2, best=True) == [folder.best_model(20), folder.best_model(30)]
    assert folder.to_average(2) == [folder.checkpoint(30), folder.checkpoint(100)]


def test_a_checkpoint_folder_removes_what_killed_writes_left(tmp_path):
    folder = CheckpointDir(tmp_path)
    save_model(tiny_recognizer(), tmp_path / "ckpt-1.pt")
    leftover = tmp_path / ".ckpt-2.pt.abc123.tmp"
    leftover.write_bytes(b"half a checkpoint")
    assert folder.remove_unfinished_writes() == [leftover]
    assert not leftover.exists() and (tmp_path / "ckpt-1.pt").exists()
