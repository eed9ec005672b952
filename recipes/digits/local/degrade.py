"""Quiet and noisy copies of a held-out set, to measure the augmentation where it is meant to help.

    python recipes/digits/local/degrade.py --manifest data/synth/espeak_heldout.jsonl --out-dir data/degraded

The held-out espeak-ng voices lie at the levels and on the clean floors training draws; these copies do not:
- `NAME_quiet.jsonl`: every file 25 dB quieter (peaks of -55..-26 dBFS), still 16-bit: what the gain augmentation
  is for;
- `NAME_noisy.jsonl`: every file under room noise (brown and pink noise and mains hum) at 10 dB SNR: what the noise
  augmentation is for.
Drawn from a fixed seed: the same files every time.
"""
import argparse
from dataclasses import replace
from pathlib import Path

import numpy as np
import soundfile as sf

from asr.augment import add_noise, coloured_noise, hum
from asr.data.manifest import read_manifest, write_manifest

QUIETER_DB = 25.0
ROOM_SNR_DB = 10.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--seed", type=int, default=123)
    args = parser.parse_args()
    name = Path(args.manifest).stem
    originals = read_manifest(args.manifest)
    rng = np.random.default_rng(args.seed)
    for variant in ("quiet", "noisy"):
        wav_dir = Path(args.out_dir) / f"{name}_{variant}"
        wav_dir.mkdir(parents=True, exist_ok=True)
        utterances = []
        for original in originals:
            wave, rate = sf.read(original.audio, dtype="float64")
            if variant == "quiet":
                wave = wave * 10 ** (-QUIETER_DB / 20)
            else:
                n = len(wave)
                room = 2 * coloured_noise("brown", n, rng) + coloured_noise("pink", n, rng) + 0.3 * hum(n, rate, rng)
                wave = add_noise(wave, room, ROOM_SNR_DB)
            path = wav_dir / Path(original.audio).name
            sf.write(str(path), np.clip(np.round(wave * 32768), -32768, 32767).astype(np.int16), rate,
                     subtype="PCM_16")
            utterances.append(replace(original, audio=str(path.absolute())))
        write_manifest(Path(args.out_dir) / f"{name}_{variant}.jsonl", utterances)
        print(f"{name}_{variant}: {len(utterances)} utterances → {args.out_dir}/{name}_{variant}.jsonl")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
