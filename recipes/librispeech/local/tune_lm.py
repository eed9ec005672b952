"""Choose the LM weight and word score of beam-search decoding on the dev sets, never on a test set, then decode.

    python local/tune_lm.py --model exp/train_100/avg.pt --lm data/lm/4-gram.arpa \
        --dev data/manifests/dev-clean.jsonl data/manifests/dev-other.jsonl \
        --lm-weights 0.25 0.5 1 1.5 2 2.5 3 --word-scores -2 -1 0 1 2 --max-utterances 400 \
        --decode data/manifests/{dev,test}-{clean,other}.jsonl --out exp/train_100/decode_lm_4-gram

The LM is loaded once, and the lexicon spelled once, for the whole run (`asr.decoding.WordLM`): every point of the
grid and the final decoding share them, where loading the 4 GB official 4-gram alone takes minutes. Every (LM weight,
word score) pair decodes the dev sets at `--tune-beam`, and the pair with the fewest word errors over all of them
together wins; a warning says when it lies on the grid's edge, where the optimum may lie beyond it. With
`--max-utterances N` each dev set is tuned on N of its utterances, spread evenly over it. The sets of `--decode` are
then decoded with the chosen pair at `--beam-size` and scored into OUT (as `asr evaluate --out` does).

Writes `OUT/tuning.json` (every point of the grid with its WER) and `OUT/decoding.json` (the chosen pair, which
`asr report` reads to say how the decoding was made). Prints the chosen pair.
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
from pathlib import Path

import torch

from asr.checkpoint import load_model
from asr.data.manifest import read_manifest, write_manifest
from asr.decoding import BeamSearchDecoder, WordLM
from asr.errors import AsrError
from asr.evaluate import evaluate

# Beams. The grid's points are compared at a small beam; the chosen pair decodes at a beam a 4-gram needs:
# OpenSeq2Seq's DeepSpeech2 decodes with the LibriSpeech 4-gram at 512, torchaudio's LibriSpeech example at 1,500. A
# beam of 50 prunes word hypotheses that the 4-gram would rescue later in the utterance.
TUNE_BEAM = 50
FINAL_BEAM = 500


def evenly_spread(items: list, count: int) -> list:
    """`count` items spread evenly over the list (all of them when count is 0 or not smaller)."""
    if count == 0 or count >= len(items):
        return items
    return [items[index * len(items) // count] for index in range(count)]


def tune(recognizer, word_lm: WordLM, dev_manifests: list[str], lm_weights: list[float], word_scores: list[float],
         max_utterances: int, beam_size: int) -> list[dict]:
    """WER over all dev sets together at every point of the grid: [{"lm_weight", "word_score", "wer", "errors",
    "words"}, …] in grid order. Every point's decoder is built from the one loaded `word_lm`."""
    points = []
    with tempfile.TemporaryDirectory() as folder:
        tuning_manifests = []
        for manifest in dev_manifests:
            subset = Path(folder) / Path(manifest).name
            write_manifest(subset, evenly_spread(read_manifest(manifest), max_utterances))
            tuning_manifests.append(subset)
        for lm_weight, word_score in itertools.product(lm_weights, word_scores):
            decoder = BeamSearchDecoder(recognizer.tokenizer, beam_size=beam_size, lm=word_lm, lm_weight=lm_weight,
                                        word_score=word_score, frame_shift=recognizer.frame_shift)
            scores = evaluate(recognizer, tuning_manifests, decoder)
            errors, words = sum(s.errors for s in scores), sum(s.words for s in scores)
            points.append({"lm_weight": lm_weight, "word_score": word_score, "wer": errors / max(words, 1),
                           "errors": errors, "words": words})
            print(f"LM weight {lm_weight:g}, word score {word_score:g}: dev WER {100 * errors / max(words, 1):.2f}%",
                  file=sys.stderr, flush=True)
    return points


def edges(best: dict, lm_weights: list[float], word_scores: list[float]) -> list[str]:
    """The settings whose best value lies on the edge of a grid that has more than one value of it: the optimum may
    lie beyond. An edge at LM weight 0 or below is no edge (a negative weight is meaningless)."""
    found = []
    for key, values in (("lm_weight", lm_weights), ("word_score", word_scores)):
        if len(set(values)) > 1 and best[key] in (min(values), max(values)) and not (key == "lm_weight" and
                                                                                     best[key] <= 0):
            found.append(key)
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="model file")
    parser.add_argument("--lm", required=True, help="ARPA language model (or a KenLM binary with --lexicon)")
    parser.add_argument("--lexicon", help="flashlight lexicon (default: the LM's unigrams the tokenizer spells)")
    parser.add_argument("--dev", nargs="+", required=True, metavar="JSONL", help="dev manifests (never test sets)")
    parser.add_argument("--lm-weights", type=float, nargs="+", required=True)
    parser.add_argument("--word-scores", type=float, nargs="+", required=True)
    parser.add_argument("--max-utterances", type=int, default=0,
                        help="tune on at most this many utterances of each dev set (0: all)")
    parser.add_argument("--tune-beam", type=int, default=TUNE_BEAM, help="beam of the grid search")
    parser.add_argument("--beam-size", type=int, default=FINAL_BEAM, help="beam of the final decoding")
    parser.add_argument("--decode", nargs="*", default=[], metavar="JSONL",
                        help="manifests decoded with the chosen pair and scored into --out")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", required=True, help="folder for tuning.json, decoding.json and the decodings")
    args = parser.parse_args(argv)
    try:
        recognizer = load_model(args.model, args.device)
        word_lm = WordLM(recognizer.tokenizer, args.lm, args.lexicon)
        points = tune(recognizer, word_lm, args.dev, args.lm_weights, args.word_scores, args.max_utterances,
                      args.tune_beam)
        best = min(points, key=lambda point: point["errors"])  # the first of equals: the grid's order breaks ties
        on_edge = edges(best, args.lm_weights, args.word_scores)
        for key in on_edge:
            print(f"tune_lm: warning: the best {key.replace('_', ' ')}, {best[key]:g}, lies on the edge of the grid "
                  f"({min(getattr(args, key + 's')):g}..{max(getattr(args, key + 's')):g}); the optimum may lie "
                  f"beyond it: widen --{key.replace('_', '-')}s", file=sys.stderr, flush=True)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "tuning.json").write_text(json.dumps({"dev": args.dev, "max_utterances": args.max_utterances,
                                                     "beam_size": args.tune_beam, "points": points}, indent=1) + "\n")
        chosen = {"lm": args.lm, "lm_weight": best["lm_weight"], "word_score": best["word_score"],
                  "beam_size": args.beam_size, "tune_beam_size": args.tune_beam,
                  "tuned_on": [Path(manifest).stem for manifest in args.dev], "dev_wer": best["wer"],
                  "on_grid_edge": on_edge}
        (out / "decoding.json").write_text(json.dumps(chosen, indent=1) + "\n")
        if args.decode:
            decoder = BeamSearchDecoder(recognizer.tokenizer, beam_size=args.beam_size, lm=word_lm,
                                        lm_weight=best["lm_weight"], word_score=best["word_score"],
                                        frame_shift=recognizer.frame_shift)
            evaluate(recognizer, args.decode, decoder, out_dir=out, progress=sys.stderr.isatty())
    except AsrError as error:
        print(f"tune_lm: error: {error}", file=sys.stderr)
        return 1
    print(f"{best['lm_weight']:g} {best['word_score']:g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
