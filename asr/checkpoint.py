"""Model files and training checkpoints: plain data written atomically, read only with `weights_only=True`.

A *model file* (`model.pt`) is everything needed to transcribe: the model, feature and tokenizer configurations, the
weights (CMVN statistics included, as buffers of the frontend) and training metadata. A *checkpoint* is a model file
plus the trainer's state (optimizer, scheduler, grad scaler, sampler position, random number generators), enough for
`--resume` to continue exactly where a run stopped.

Both hold only tensors and Python literals, so `torch.load(path, weights_only=True)` reads them: a model file
downloaded from a stranger cannot run code on the machine that loads it.

A training run keeps both in its `CheckpointDir` (`exp/NAME/checkpoints`).
"""
from __future__ import annotations

import pickle
from pathlib import Path

import torch

from asr.errors import AsrError, ModelFileError
from asr.files import atomic_write, remove_unfinished_writes

MODEL_FORMAT = "asr-model"
MODEL_FORMAT_VERSION = 1


def write_atomically(payload: dict, path: str | Path) -> None:
    """torch.save `payload` to `path` through `asr.files.atomic_write`: a crash or a kill at any moment leaves either
    the old file or the new one, never half of one. When the disk is full an AsrError says so; the previous file is
    untouched."""
    try:
        with atomic_write(path, "wb") as file:
            torch.save(payload, file)
    except OSError as err:
        raise AsrError(f"{path}: could not write ({err.strerror or err}); the previous file, if any, is intact") \
            from err


def read_plain_data(path: str | Path) -> dict:
    """torch.load with weights_only=True, turning every failure into a ModelFileError that names the file."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: model file not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ModelFileError(
            f"{path}: refused to load: the file holds Python objects other than tensors and plain data, which could "
            f"run code when unpickled (only files written by this toolkit are accepted). Detail: {err}"
        ) from err
    except Exception as err:  # torch's readers raise many kinds on garbage: RuntimeError, EOFError, IndexError, …
        raise ModelFileError(f"{path}: not a readable model file (truncated or corrupt?): {err}") from err
    if not isinstance(payload, dict) or payload.get("format") != MODEL_FORMAT:
        raise ModelFileError(f"{path}: not a model file or checkpoint of this toolkit")
    if payload.get("version", 0) > MODEL_FORMAT_VERSION:
        raise ModelFileError(f"{path}: written by a newer version of the toolkit (format {payload['version']})")
    return payload


def model_payload(recognizer, metadata: dict | None = None) -> dict:
    """The plain-data dictionary of a model file for a Recognizer."""
    return {
        "format": MODEL_FORMAT,
        "version": MODEL_FORMAT_VERSION,
        "model_config": recognizer.model_config.to_dict(),
        "feature_config": recognizer.feature_config.to_dict(),
        "tokenizer": recognizer.tokenizer.to_dict(),
        "state_dict": {name: tensor.detach().cpu() for name, tensor in recognizer.state_dict().items()},
        "metadata": dict(metadata or {}),
    }


def save_model(recognizer, path: str | Path, metadata: dict | None = None) -> None:
    write_atomically(model_payload(recognizer, metadata), path)


def load_model(path: str | Path, device: str | torch.device = "cpu"):
    """Load a model file (or a training checkpoint) into a Recognizer in eval mode."""
    from asr.recognizer import Recognizer  # the recognizer imports this module to save itself

    payload = read_plain_data(path)
    try:
        recognizer = Recognizer.from_payload(payload)
    except (KeyError, TypeError, RuntimeError) as err:
        raise ModelFileError(f"{path}: model file is incomplete or does not match its config: {err}") from err
    recognizer.source_path = str(path)
    return recognizer.to(device).eval()


def save_checkpoint(path: str | Path, recognizer, trainer_state: dict, metadata: dict | None = None) -> None:
    """A model file plus the trainer's state, written atomically."""
    payload = model_payload(recognizer, metadata)
    payload["trainer"] = trainer_state
    write_atomically(payload, path)


def load_checkpoint(path: str | Path) -> dict:
    payload = read_plain_data(path)
    if "trainer" not in payload:
        raise ModelFileError(f"{path}: a model file, not a training checkpoint (no trainer state to resume from)")
    return payload


def average_model_files(paths: list[str | Path], out_path: str | Path) -> dict:
    """Average the weights of several model files or checkpoints of one run; writes a model file, returns it.

    Floating-point tensors are averaged; integer buffers (e.g. counters) are taken from the last file. Averaging the
    last or best few checkpoints typically gives a small, free WER gain.
    """
    if not paths:
        raise AsrError("average: no model files given")
    payloads = [read_plain_data(p) for p in paths]
    first = payloads[0]
    for path, payload in zip(paths[1:], payloads[1:]):
        same_model = payload["model_config"] == first["model_config"]
        if not same_model or payload["state_dict"].keys() != first["state_dict"].keys():
            raise ModelFileError(f"{path}: a different model from {paths[0]}; "
                                 "only checkpoints of one run can be averaged")
    averaged = {}
    for name, tensor in payloads[-1]["state_dict"].items():
        if tensor.is_floating_point():
            averaged[name] = sum(p["state_dict"][name].double() for p in payloads).div(len(payloads)).to(tensor.dtype)
        else:
            averaged[name] = tensor
    result = {key: value for key, value in payloads[-1].items() if key != "trainer"}
    result["state_dict"] = averaged
    result["metadata"] = dict(result.get("metadata", {}), averaged_from=[str(p) for p in paths])
    write_atomically(result, out_path)
    return result


class CheckpointDir:
    """A training run's `exp/NAME/checkpoints` folder: `ckpt-<step>.pt`, the trainer's latest checkpoints, and
    `best-<step>.pt`, the model files of its best validations by dev WER. The trainer writes into it, `--resume`
    takes its latest checkpoint, `asr average` its latest or best few, `asr report` its latest."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    def checkpoint(self, step: int) -> Path:
        return self.folder / f"ckpt-{step}.pt"

    def best_model(self, step: int) -> Path:
        return self.folder / f"best-{step}.pt"

    def checkpoints(self) -> list[Path]:
        """The checkpoints, in step order."""
        return sorted(self.folder.glob("ckpt-*.pt"), key=_step)

    def latest(self) -> Path | None:
        checkpoints = self.checkpoints()
        return checkpoints[-1] if checkpoints else None

    def best_models(self) -> list[Path]:
        """The best model files, lowest dev WER (in their metadata) first; of equal WERs, the earlier step."""
        return sorted(self.folder.glob("best-*.pt"), key=lambda path: (read_plain_data(path)["metadata"]["dev_wer"],
                                                                       _step(path)))

    def to_average(self, num: int, best: bool = False) -> list[Path]:
        """What `asr average` averages: the `num` best model files, or the `num` latest checkpoints."""
        return self.best_models()[:num] if best else self.checkpoints()[-num:]

    def save_checkpoint(self, step: int, recognizer, trainer_state: dict, metadata: dict, keep: int) -> None:
        """Write the checkpoint of `step`, then delete all but the `keep` latest."""
        save_checkpoint(self.checkpoint(step), recognizer, trainer_state, metadata)
        for old in self.checkpoints()[:-keep]:
            old.unlink()

    def save_best(self, step: int, recognizer, metadata: dict) -> None:
        save_model(recognizer, self.best_model(step), metadata)

    def remove_best(self, step: int) -> None:
        self.best_model(step).unlink(missing_ok=True)

    def remove_unfinished_writes(self) -> list[Path]:
        """Delete the temporary files that writes killed before their rename left here; returns their paths. (No
        other process writes into a run's own checkpoint folder.)"""
        return remove_unfinished_writes(self.folder)


def _step(path: Path) -> int:
    """The step of `ckpt-<step>.pt` or `best-<step>.pt`."""
    return int(path.stem.split("-")[1])
