"""exp/NAME/metrics.jsonl: the machine-readable record of a training run, one JSON object a line.

The trainer's main process writes a record at each start or resume ("start": device, processes, global batch, steps an
epoch and in all), every train.log_every steps ("train": step, the epoch it is in counted from 1, the learning rate it
took, the loss per token and the audio seconds since the last record, grad norm, processes, global batch seconds,
...), at each validation ("validation": dev loss, WER, CER) and at the end ("done"). Every record has its `event` and
the optimizer `step` it was written at; "start", "validation" and "done" count `epochs_done`. `asr report` reads it;
so can any plotting script, without parsing a log.
"""
from __future__ import annotations

import json
from pathlib import Path

from asr.files import write_text_atomically


class MetricsLog:
    """Appends records to a metrics.jsonl. A run resumed at a checkpoint first drops the records of the steps after
    it, which it is about to take again: no step is ever in the file twice. A fresh start empties the file."""

    def __init__(self, path: Path, resumed_at_step: int):
        self.path = path
        kept = [record for record in read_metrics(path) if record["step"] <= resumed_at_step] if resumed_at_step else []
        write_text_atomically(path, "".join(json.dumps(record) + "\n" for record in kept))  # a kill: old or new

    def write(self, **record) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


def read_metrics(path: str | Path) -> list[dict]:
    """The records of a metrics.jsonl, in order; none when it does not exist. A last line cut short by a kill is
    left out."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records
