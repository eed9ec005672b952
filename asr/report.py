"""The report of a training experiment: what was trained, for how long, its word error rates, and its curves.

`write_report(exp_dir)` reads what `asr train` and `asr evaluate` left in an experiment folder

    exp/NAME/metrics.jsonl                  the trainer's records: each start (device, processes, global batch, steps
                                            an epoch and in all), train loss every few steps, each validation
    exp/NAME/checkpoints/ckpt-<step>.pt     the latest holds the steps, epochs and hours trained
    exp/NAME/model.pt                       the model's size and tokenizer
    exp/NAME/decode_<name>/results.json     `asr evaluate --out-dir`: WER of each set decoded one way
    exp/NAME/decode_<name>/decoding.json    optional: how that decoding was made (LM, weights, the sets they were
                                            tuned on)

and writes `exp/NAME/report.md` (a table of the training, a table of WER with one row a decoding and one column a
set) and `exp/NAME/curves.png` (train and dev loss, dev WER, against the step). Nothing needs TensorBoard.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from matplotlib.figure import Figure

from asr.checkpoint import CheckpointDir, load_model, read_plain_data
from asr.errors import AsrError
from asr.metrics import read_metrics


@dataclass
class Decoding:
    """One way an experiment's model was decoded, and its WER (a fraction) on each set, by manifest stem."""

    name: str  # the folder name without "decode_": "greedy", "lm_4-gram", …
    description: str
    wer: dict[str, float]


@dataclass
class Curves:
    """Training progress against the optimizer step."""

    train_steps: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    dev_steps: list[int] = field(default_factory=list)
    dev_loss: list[float] = field(default_factory=list)
    dev_wer: list[float] = field(default_factory=list)  # fractions


@dataclass
class ExperimentSummary:
    name: str
    train_manifest: str
    train_utterances: int
    train_audio_hours: float
    model: str  # "5 × 512 BiGRU"
    parameters: int
    tokens: str  # "bpe (256)"
    steps: int
    epochs: int  # completed epochs
    device: str  # "cuda:0", "cpu"
    processes: int
    training_hours: float  # wall-clock hours of training (validation excluded), summed over resumed runs
    decodings: list[Decoding]
    global_batch_seconds: float = 0.0  # padded audio seconds an optimizer step, over every process
    steps_per_epoch: int = 0
    total_steps: int = 0  # the run's planned length: its schedule's

    @property
    def device_hours(self) -> float:
        """Training hours times the processes: GPU hours on GPUs."""
        return self.training_hours * self.processes


def read_curves(exp_dir: str | Path) -> Curves:
    """Train loss, and dev loss and WER, from metrics.jsonl (empty curves when it is missing).

    A resumed run drops the records of the steps after its checkpoint before taking them again; should a step be in
    the file twice all the same, its later value wins."""
    train_loss: dict[int, float] = {}
    dev: dict[int, tuple[float, float]] = {}
    for record in read_metrics(Path(exp_dir) / "metrics.jsonl"):
        if record["event"] == "train":
            train_loss[record["step"]] = record["loss"]
        elif record["event"] == "validation":
            dev[record["step"]] = (record["dev_loss"], record["dev_wer"])
    curves = Curves(train_steps=sorted(train_loss), dev_steps=sorted(dev))
    curves.train_loss = [train_loss[step] for step in curves.train_steps]
    curves.dev_loss = [dev[step][0] for step in curves.dev_steps]
    curves.dev_wer = [dev[step][1] for step in curves.dev_steps]
    return curves


def plot_curves(curves: Curves, title: str, out_path: str | Path) -> None:
    """Two panels against the step: train and dev CTC loss, and dev greedy WER in percent; written as PNG."""
    figure = Figure(figsize=(11.0, 4.0), layout="constrained")
    loss_axes, wer_axes = figure.subplots(1, 2)
    figure.suptitle(title)
    loss_axes.plot(curves.train_steps, curves.train_loss, label="train", linewidth=1)
    loss_axes.plot(curves.dev_steps, curves.dev_loss, "o-", label="dev", markersize=3)
    loss_axes.set_xlabel("step")
    loss_axes.set_ylabel("CTC loss (per token)")
    loss_axes.legend()
    wer_axes.plot(curves.dev_steps, [100 * wer for wer in curves.dev_wer], "o-", color="C1", markersize=3)
    wer_axes.set_xlabel("step")
    wer_axes.set_ylabel("dev WER % (greedy)")
    for axes in (loss_axes, wer_axes):
        axes.grid(alpha=0.3)
    figure.savefig(out_path, dpi=100)


def read_decodings(exp_dir: str | Path) -> list[Decoding]:
    """Every `decode_*/results.json` of the experiment, greedy first, then by name."""
    decodings = []
    for results_path in sorted(Path(exp_dir).glob("decode_*/results.json")):
        folder = results_path.parent
        results = json.loads(results_path.read_text(encoding="utf-8"))["results"]
        wer = {Path(entry["manifest"]).stem: entry["wer"] for entry in results}
        name = folder.name.removeprefix("decode_")
        decodings.append(Decoding(name, _describe_decoding(folder, name), wer))
    return sorted(decodings, key=lambda decoding: (decoding.name != "greedy", decoding.name))


def _describe_decoding(folder: Path, name: str) -> str:
    settings_path = folder / "decoding.json"
    if not settings_path.is_file():
        return name
    settings = json.loads(settings_path.read_text(encoding="utf-8"))
    description = (f"{Path(settings['lm']).name}, LM weight {settings['lm_weight']:g}, "
                   f"word score {settings['word_score']:g}")
    if settings.get("tuned_on"):
        description += f" (tuned on {', '.join(settings['tuned_on'])})"
    return description


def summarize_experiment(exp_dir: str | Path) -> ExperimentSummary:
    """What was trained and how long (model.pt, the latest checkpoint, metrics.jsonl) and how it decodes."""
    exp_dir = Path(exp_dir)
    model_path = exp_dir / "model.pt"
    if not model_path.is_file():
        raise AsrError(f"{exp_dir}: no model.pt; has training finished?")
    recognizer = load_model(model_path)
    config = recognizer.model_config
    model = f"{config.num_layers} × {config.hidden_size} Bi{config.rnn_type.upper()}"  # every layer is bidirectional

    latest = CheckpointDir(exp_dir / "checkpoints").latest()
    progress = read_plain_data(latest)["metadata"] if latest else recognizer.metadata
    starts = [record for record in read_metrics(exp_dir / "metrics.jsonl") if record["event"] == "start"]
    start = starts[-1] if starts else {}  # the last start (or resume) counts
    return ExperimentSummary(
        name=exp_dir.name, train_manifest=progress.get("train_manifest", ""),
        train_utterances=start.get("utterances", 0), train_audio_hours=start.get("audio_hours", 0.0), model=model,
        parameters=recognizer.acoustic.num_parameters(),
        tokens=f"{recognizer.tokenizer.kind} ({recognizer.tokenizer.vocab_size})", steps=progress.get("step", 0),
        epochs=progress.get("epoch", 0), device=start.get("device", "unknown"),
        processes=start.get("world_size", 1), training_hours=progress.get("train_hours", 0.0),
        decodings=read_decodings(exp_dir), global_batch_seconds=start.get("global_batch_seconds", 0.0),
        steps_per_epoch=start.get("steps_per_epoch", 0), total_steps=start.get("total_steps", 0))


def format_report(summary: ExperimentSummary) -> str:
    """The experiment's Markdown: a table of the training, a table of WER (%) by decoding and set, the curves."""
    hours_kind = "GPU hours" if summary.device.startswith("cuda") else f"{summary.device} hours"
    lines = [
        f"# {summary.name}", "",
        f"| training data | utterances | audio hours | model | parameters | tokens | epochs | steps | {hours_kind} |",
        "|---|---:|---:|---|---:|---|---:|---:|---:|",
        f"| {summary.train_manifest} | {summary.train_utterances} | {summary.train_audio_hours:.1f} | {summary.model} "
        f"| {summary.parameters / 1e6:.1f} M | {summary.tokens} | {summary.epochs} | {summary.steps} "
        f"| {summary.device_hours:.2f} ({summary.processes} × {summary.device}) |",
        "",
    ]
    if summary.global_batch_seconds:  # from metrics.jsonl's last start
        lines += [f"{summary.processes} process(es), a global batch of {summary.global_batch_seconds:,.0f} padded "
                  f"audio seconds a step, {summary.steps_per_epoch:,} steps an epoch, "
                  f"{summary.total_steps:,} steps planned.",
                  ""]
    sets = list(dict.fromkeys(name for decoding in summary.decodings for name in decoding.wer))
    if sets:
        lines += ["| decoding | " + " | ".join(f"{name} WER %" for name in sets) + " |",
                  "|---|" + "---:|" * len(sets)]
        for decoding in summary.decodings:
            cells = [f"{100 * decoding.wer[name]:.2f}" if name in decoding.wer else "–" for name in sets]
            lines.append(f"| {decoding.description} | " + " | ".join(cells) + " |")
        lines.append("")
    lines.append("![training curves](curves.png)")
    return "\n".join(lines) + "\n"


def write_report(exp_dir: str | Path) -> Path:
    """Write `exp_dir/report.md` and `exp_dir/curves.png`; return the path of report.md."""
    exp_dir = Path(exp_dir)
    summary = summarize_experiment(exp_dir)
    plot_curves(read_curves(exp_dir), summary.name, exp_dir / "curves.png")
    report_path = exp_dir / "report.md"
    report_path.write_text(format_report(summary), encoding="utf-8")
    return report_path
