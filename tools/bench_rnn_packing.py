"""Packed against padded sequences in the acoustic model's recurrent layers: which is faster on this device?

Both give the same outputs (asr.model keeps padding out of every recurrence either way); this measures what
`ModelConfig.packing="auto"` should pick. Each case is timed forward + backward, padded and packed taking turns after
a warm-up, and the median of the repeats is reported. The batch's lengths are spread evenly over [min_fraction·T, T],
as in a length-bucketed batch.

    python tools/bench_rnn_packing.py                 # one layer and the whole default model, several lengths
    python tools/bench_rnn_packing.py --quick         # a smoke run in seconds
    python tools/bench_rnn_packing.py --device cuda --json gpu.json
    python tools/bench_rnn_packing.py --threads 1     # on a shared CPU: a second thread waiting on a busy core
                                                      # makes the timings erratic

Cases: "layer" is one bidirectional GRU layer of the default model (640 → 2 × 512) at T recurrent frames; "model" is
the whole default AcousticModel (5 × 512 BiGRU) on 4·T feature frames, so that its recurrent layers also see T.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from asr.model import AcousticModel, ModelConfig, TorchBiRNN

PACKINGS = ("padded", "packed")


def spread_lengths(batch_size: int, frames: int, min_fraction: float) -> torch.Tensor:
    """Lengths evenly spaced from min_fraction·frames up to frames, longest first."""
    return torch.linspace(frames, max(1, round(min_fraction * frames)), batch_size).round().long()


def time_interleaved(steps: dict, device: torch.device, warmup: int, repeats: int) -> dict[str, list[float]]:
    """Seconds of each timed call of every step, after `warmup` untimed calls of each.

    The steps take turns, in alternating order, so that a change in the machine's load hits all of them alike.
    """
    seconds = {name: [] for name in steps}
    for index in range(warmup + repeats):
        order = list(steps) if index % 2 == 0 else list(reversed(steps))
        for name in order:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            steps[name]()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if index >= warmup:
                seconds[name].append(time.perf_counter() - start)
    return seconds


def layer_step(packing: str, frames: int, args, device: torch.device):
    """One forward + backward pass of a single bidirectional GRU layer."""
    torch.manual_seed(0)
    layer = TorchBiRNN("gru", args.input_size, args.hidden_size, packing).to(device)
    x = torch.randn(args.batch_size, frames, args.input_size, device=device, requires_grad=True)
    lengths = spread_lengths(args.batch_size, frames, args.min_fraction).to(device)

    def step():
        layer.zero_grad(set_to_none=True)
        forward_out, backward_out = layer(x, lengths)
        (forward_out.square().mean() + backward_out.square().mean()).backward()

    return step


def model_step(packing: str, frames: int, args, device: torch.device):
    """One forward + backward pass of the whole default model, in training mode."""
    torch.manual_seed(0)
    model = AcousticModel(ModelConfig(vocab_size=32, packing=packing)).to(device).train()
    feat_frames = frames * model.subsampling_factor
    feats = torch.randn(args.batch_size, feat_frames, model.config.input_dim, device=device)
    lengths = spread_lengths(args.batch_size, feat_frames, args.min_fraction).to(device)

    def step():
        model.zero_grad(set_to_none=True)
        log_probs, _ = model(feats, lengths)
        (-log_probs.mean()).backward()

    return step


CASES = {"layer": layer_step, "model": model_step}


def run(args) -> dict:
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    results = []
    for case in args.cases:
        for frames in args.frames:
            steps = {packing: CASES[case](packing, frames, args, device) for packing in PACKINGS}
            row = {"case": case, "frames": frames}
            for packing, seconds in time_interleaved(steps, device, args.warmup, args.repeats).items():
                row[f"{packing}_seconds"] = seconds
                row[f"{packing}_median"] = statistics.median(seconds)
            row["packed_over_padded"] = row["packed_median"] / row["padded_median"]
            results.append(row)
            print_row(row)
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "device_type": device.type,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "batch_size": args.batch_size,
        "input_size": args.input_size,
        "hidden_size": args.hidden_size,
        "min_fraction": args.min_fraction,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "results": results,
    }


def print_header() -> None:
    print(f"{'case':<6} {'frames':>6} {'padded s':>9} {'packed s':>9} {'packed/padded':>14}")


def print_row(row: dict) -> None:
    print(f"{row['case']:<6} {row['frames']:>6} {row['padded_median']:>9.3f} {row['packed_median']:>9.3f} "
          f"{row['packed_over_padded']:>13.2f}×", flush=True)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="cpu, cuda or cuda:N (default: cuda when available)")
    parser.add_argument("--quick", action="store_true", help="short lengths, one repeat: a smoke run")
    parser.add_argument("--cases", nargs="+", choices=sorted(CASES), default=["layer", "model"])
    parser.add_argument("--frames", nargs="+", type=int, help="recurrent frames T (default 100 200 400)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--input-size", type=int, default=640, help="layer case: input features per frame")
    parser.add_argument("--hidden-size", type=int, default=512, help="layer case: units per direction")
    parser.add_argument("--min-fraction", type=float, default=0.5, help="shortest length as a fraction of T")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, help="timed passes per cell (default 3)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads; 0 keeps torch's default")
    parser.add_argument("--json", help="also write the results, every repeat included, to this file")
    args = parser.parse_args(argv)
    args.frames = args.frames or ([25, 50] if args.quick else [100, 200, 400])
    args.repeats = args.repeats or (1 if args.quick else 3)
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    print(f"device {args.device}, batch {args.batch_size}, lengths over [{args.min_fraction:g}·T, T], "
          f"forward + backward, median of {args.repeats}")
    print_header()
    report = run(args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
