"""Transcription speed on the CPU: the real-time factor of `asr transcribe` beside pocketsphinx, on the same files in
the same run, and what each inference option is worth.

    python tools/bench_transcription.py                      # the 125 shared sentence recordings, 2 threads
    python tools/bench_transcription.py --repeats 3 --json-out rtf.json
    python tools/bench_transcription.py --quick              # a smoke run: 6 files, one repeat, small model

The model is the default LibriSpeech one (recipes/librispeech/conf/train_100.yaml: 5 × 512 BiGRU over 256 BPE
pieces), untrained: speed does not depend on the weights' values. The beam search decodes with a 3-gram LM built
from the LJSpeech text of the shared data (its lexicon spelled by the model's tokenizer).

Whole process (a fresh Python process each, start-up, imports and model loading included; wall time and CPU time):
  asr greedy          asr transcribe FILES (its defaults: fp32, greedy, batches by length)
  asr greedy int8     asr transcribe --quantize int8 FILES
  asr greedy ONNX     asr transcribe --model model.onnx FILES: `asr export`'s graph on ONNX Runtime (asr.onnx_model),
                      torch never imported
  asr greedy, spin    (with --spin) asr transcribe with OMP_WAIT_POLICY=ACTIVE: idle threads spin instead of
                      sleeping, as they did before `asr transcribe` set the policy; slow on a busy CPU
  asr greedy ONNX, spin  (with --spin) the same for ONNX Runtime's threads, which follow that variable too
  asr beam + LM       asr transcribe --lm LM FILES
  pocketsphinx        pocketsphinx 5 in Python, its bundled en-us model, one Decoder over the files one by one
In process (model loaded, one warm-up batch; asr.transcribe.transcribe_files with greedy decoding, so audio
loading, batching and decoding are in; start-up is not):
  fp32 · int8 · 1 thread · batch 1 (no batching by length) · ONNX Runtime (asr.onnx_model.OnnxRecognizer over
  `asr export`'s graph; with its idle threads sleeping, as under asr transcribe, and spinning) · TorchScript
and model loading: asr.checkpoint.load_model beside building the model with random initialization first (what
load_model did before); start-up: importing torch (and onnxruntime), and `asr transcribe` of the shortest file.
Each variant's transcripts are compared with fp32's, and its log-probabilities on one batch.
With --digits-model (default: recipes/digits/exp/digits/model.pt, when it exists) the WER of fp32 and int8 on the
digits test set is reported too.

Cases take turns (the order reversed every other round) and medians over --repeats rounds are reported, so that a
change in the machine's load hits every case alike.
"""
from __future__ import annotations

import os

# The in-process variants run here: let idle OpenMP threads sleep, as `asr transcribe` does (asr.cli), before torch
# is imported, which reads the variable once.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import importlib.util
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
from provenance import provenance
from torch import nn

from asr.audio import audio_info, load_audio
from asr.checkpoint import load_model, read_plain_data, save_model
from asr.config import load_config
from asr.data.manifest import Utterance
from asr.export import export_onnx, exportable, quantize_int8
from asr.features import FeatureConfig
from asr.lm import build_arpa
from asr.model import ModelConfig, length_mask
from asr.normalization import estimate_cmvn
from asr.onnx_model import OnnxRecognizer
from asr.recognizer import Recognizer
from asr.text import normalize_text, tokenizer_from_dict
from asr.train import build_tokenizer
from asr.transcribe import transcribe_files

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ASR_SHARED", REPO.parent / "shared"))
SENTENCES = SHARED / "data" / "sentences"
LM_TEXT = SHARED / "data" / "text" / "ljspeech-train-sentences.txt"
DEFAULT_RECIPE = REPO / "recipes" / "librispeech" / "conf" / "train_100.yaml"
DIGITS_MODEL = REPO / "recipes" / "digits" / "exp" / "digits" / "model.pt"
DIGITS_TEST = REPO / "recipes" / "digits" / "data" / "test.jsonl"
QUICK_FILES = 6

POCKETSPHINX = """
import sys
import soundfile
from pocketsphinx import Decoder

decoder = Decoder(loglevel="FATAL")  # the bundled en-us acoustic model, language model and dictionary
for path in sys.argv[1:]:
    samples, _ = soundfile.read(path, dtype="int16")  # the sentence recordings are 16 kHz mono
    decoder.start_utt()
    decoder.process_raw(samples.tobytes(), full_utt=True)
    decoder.end_utt()
    print(path, decoder.hyp().hypstr if decoder.hyp() else "", flush=True)
"""


# ----------------------------------------------------------------------------------------------------------------
# What is transcribed, and with what


def sentence_files(quick: bool) -> list[Path]:
    files = sorted(SENTENCES.glob("*/wav/*.wav"))
    return files[::len(files) // QUICK_FILES][:QUICK_FILES] if quick else files


def write_model(path: Path, quick: bool) -> Recognizer:
    """An untrained model of the default recipe (or, quick, a 2 × 64 one) with CMVN statistics of real speech."""
    overrides = ["model.num_layers=2", "model.hidden_size=64", "tokenizer.vocab_size=64"] if quick else []
    config = load_config(DEFAULT_RECIPE, overrides)
    tokenizer = build_tokenizer(config, LM_TEXT.read_text(encoding="utf-8").splitlines())
    config.model.vocab_size = tokenizer.vocab_size
    some_speech = [Utterance(f.stem, str(f), audio_info(f).duration, "") for f in sentence_files(quick=True)]
    cmvn = estimate_cmvn(some_speech, config.features, progress=False)
    torch.manual_seed(0)
    recognizer = Recognizer(config.model, config.features, tokenizer, cmvn_stats=cmvn).eval()
    save_model(recognizer, path)
    return recognizer


# ----------------------------------------------------------------------------------------------------------------
# Whole processes


def whole_process_cases(model: Path, onnx_model: Path | None, lm: Path, files: list[Path], threads: int,
                        pocketsphinx: bool, spin: bool) -> dict:
    """name → (command, extra environment) of each whole-process case (the ONNX ones when `onnx_model` is given)."""
    def asr(model_path: Path) -> list[str]:
        return [sys.executable, "-m", "asr", "transcribe", "--model", str(model_path), "--threads", str(threads)]

    names = [str(f) for f in files]
    cases = {
        "asr greedy": (asr(model) + names, {}),
        "asr greedy int8": (asr(model) + ["--quantize", "int8"] + names, {}),
        "asr beam + LM": (asr(model) + ["--lm", str(lm)] + names, {}),
    }
    if onnx_model is not None:
        cases["asr greedy ONNX"] = (asr(onnx_model) + names, {})
    if spin:
        cases["asr greedy, spin"] = (asr(model) + names, {"OMP_WAIT_POLICY": "ACTIVE"})
        if onnx_model is not None:
            cases["asr greedy ONNX, spin"] = (asr(onnx_model) + names, {"OMP_WAIT_POLICY": "ACTIVE"})
    if pocketsphinx:
        cases["pocketsphinx"] = ([sys.executable, "-c", POCKETSPHINX] + names, {})
    return cases


def run_process(command: list[str], extra_env: dict) -> tuple[float, float, list[str]]:
    """Wall seconds, CPU seconds (user + system, its children included) and the lines of a command's output.

    The command chooses its own OpenMP wait policy (`asr transcribe` sets one), unless `extra_env` sets it.
    """
    environment = {name: value for name, value in os.environ.items() if name != "OMP_WAIT_POLICY"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    process = subprocess.run(command, capture_output=True, text=True, env={**environment, **extra_env})
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:6])} … failed: {process.stderr.strip()[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, process.stdout.splitlines()


def start_up(model: Path, onnx_model: Path | None, files: list[Path], repeats: int) -> dict:
    """Median wall seconds of starting Python and importing torch (and onnxruntime), and of `asr transcribe` on the
    shortest file (with the ONNX model too): what every whole-process run pays before its audio."""
    shortest = min(files, key=lambda f: audio_info(f).duration)
    transcribe = f"asr transcribe {shortest.name} ({audio_info(shortest).duration:.1f} s)"
    commands = {"python -c 'import torch'": ([sys.executable, "-c", "import torch"], {}),
                transcribe: ([sys.executable, "-m", "asr", "transcribe", "--model", str(model), str(shortest)], {})}
    if onnx_model is not None:
        commands["python -c 'import onnxruntime'"] = ([sys.executable, "-c", "import onnxruntime"], {})
        commands[f"{transcribe}, ONNX"] = ([sys.executable, "-m", "asr", "transcribe", "--model", str(onnx_model),
                                            str(shortest)], {})
    rounds = take_turns(commands, repeats, lambda command: run_process(*command))
    return {name: round(statistics.median(r[0] for r in results), 2) for name, results in rounds.items()}


def take_turns(cases: dict, repeats: int, run_case) -> dict[str, list]:
    """Every case once a round, the order reversed every other round; name → the results of its rounds."""
    results = {name: [] for name in cases}
    for round_index in range(repeats):
        order = list(cases) if round_index % 2 == 0 else list(reversed(cases))
        for name in order:
            results[name].append(run_case(cases[name]))
    return results


# ----------------------------------------------------------------------------------------------------------------
# In process


class TracedRecognizer:
    """The exportable recognizer traced by TorchScript, behind the recognizer interface (asr.backend) that
    asr.transcribe reads."""

    word_span = None
    normalization = "global"
    exposes_features = False
    source_path = None

    def __init__(self, recognizer: Recognizer):
        audio = 0.1 * torch.randn(2, 16000, generator=torch.Generator().manual_seed(0))
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit.trace is deprecated, and warns of traced shape arithmetic
            self.traced = torch.jit.trace(exportable(recognizer), (audio, torch.tensor([16000, 12000])),
                                          check_trace=False)
        self.tokenizer = recognizer.tokenizer
        self.frame_shift = recognizer.frame_shift
        self.edge_pad_seconds = recognizer.edge_pad_seconds

    def log_probs(self, audio, audio_lengths, speaker_cmvn=None) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.inference_mode():
            return self.traced(torch.from_numpy(audio), torch.from_numpy(audio_lengths))


def in_process_variants(model_path: Path, onnx_path: Path | None, threads: int) -> dict:
    """name → (recognizer-like, torch threads, transcribe_files keyword arguments) of each in-process variant."""
    recognizer = load_model(model_path)
    variants = {
        "fp32": (recognizer, threads, {}),
        "int8": (quantize_int8(recognizer), threads, {}),
        "fp32, 1 thread": (recognizer, 1, {}),
        "fp32, batch 1": (recognizer, threads, {"batch_size": 1}),
        "TorchScript": (TracedRecognizer(recognizer), threads, {}),
    }
    if onnx_path is not None:
        variants["ONNX Runtime"] = (OnnxRecognizer(onnx_path, threads=threads), threads, {})
        # Its threads sleep when idle here (this process sets OMP_WAIT_POLICY=PASSIVE, as asr transcribe does);
        # ONNX Runtime's own default is to spin. Which is faster depends on how busy the CPU is: both are measured.
        variants["ONNX Runtime, spin"] = (OnnxRecognizer(onnx_path, threads=threads, spin=True), threads, {})
    return variants


def transcribe_in_process(variant, files: list[Path]) -> tuple[float, float, list[str]]:
    """Wall seconds, CPU seconds and texts of transcribe_files over the files with one variant."""
    recognizer, threads, options = variant
    torch.set_num_threads(threads)
    before = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    texts = [transcript.text for _, transcript in transcribe_files(recognizer, files, **options)]
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), texts


def largest_log_prob_change(variant, reference: Recognizer, files: list[Path]) -> float:
    """The largest |Δ log-probability| of a variant against fp32 over one batch of the files (valid frames)."""
    waves = [load_audio(f) for f in files[:4]]
    lengths = torch.tensor([len(w) for w in waves])
    batch = nn.utils.rnn.pad_sequence(waves, batch_first=True)
    recognizer, threads, _ = variant
    with torch.inference_mode():
        expected, out_lengths = reference(batch, lengths)
        torch.set_num_threads(threads)
        got = torch.as_tensor(recognizer.log_probs(batch.numpy(), lengths.numpy())[0])
    valid = length_mask(out_lengths, expected.size(1))
    return float((got - expected).abs()[valid].max())


def load_with_initialization(path: Path) -> Recognizer:
    """What load_model did before it skipped the random initialization of the weights that the file replaces."""
    payload = read_plain_data(path)
    feature_config = FeatureConfig.from_dict(payload["feature_config"])
    placeholder = {"mean": [0.0] * feature_config.n_mels, "std": [1.0] * feature_config.n_mels}
    recognizer = Recognizer(ModelConfig.from_dict(payload["model_config"]), feature_config,
                            tokenizer_from_dict(payload["tokenizer"]), cmvn_stats=placeholder)
    recognizer.load_state_dict(payload["state_dict"])
    return recognizer.eval()


def model_loading(model_path: Path, repeats: int) -> dict:
    """Median seconds of load_model and of load_with_initialization, taking turns."""
    loaders = {"load_model": load_model, "initialize, then load": load_with_initialization}
    seconds = take_turns(loaders, repeats, lambda load: timed(load, model_path))
    return {name: round(statistics.median(values), 3) for name, values in seconds.items()}


def timed(function, *args) -> float:
    start = time.perf_counter()
    function(*args)
    return time.perf_counter() - start


def digits_wer(model_path: Path) -> dict:
    """WER of a trained digits model on the digits test set, fp32 and int8."""
    from asr.evaluate import evaluate

    recognizer = load_model(model_path)
    fp32, = evaluate(recognizer, [DIGITS_TEST])
    int8, = evaluate(quantize_int8(recognizer), [DIGITS_TEST])
    return {"model": str(model_path), "test_set": str(DIGITS_TEST), "utterances": fp32.utterances,
            "words": fp32.words, "fp32_wer": round(fp32.wer, 4), "int8_wer": round(int8.wer, 4),
            "int8_minus_fp32_wer": round(int8.wer - fp32.wer, 4)}


# ----------------------------------------------------------------------------------------------------------------
# The run


def summarize(name: str, rounds: list, audio_seconds: float, reference_texts: list[str] | None) -> dict:
    walls = [r[0] for r in rounds]
    cpus = [r[1] for r in rounds]
    row = {"case": name, "repeats": len(rounds), "median_seconds": round(statistics.median(walls), 3),
           "rtf": round(statistics.median(walls) / audio_seconds, 4),
           "cpu_seconds_per_audio_second": round(statistics.median(cpus) / audio_seconds, 4),
           "seconds": [round(w, 3) for w in walls]}
    if reference_texts is not None:
        texts = rounds[0][2]
        row["same_text_as_fp32"] = round(sum(a == b for a, b in zip(texts, reference_texts)) / len(texts), 3)
    return row


def run(args) -> dict:
    started = time.perf_counter()
    torch.set_num_threads(args.threads)
    files = sentence_files(args.quick)
    audio_seconds = sum(audio_info(f).duration for f in files)
    report = {
        **provenance(),
        "device": "cpu", "torch": torch.__version__, "threads": args.threads,
        "files": len(files), "audio_seconds": round(audio_seconds, 2), "repeats": args.repeats,
        "omp_wait_policy": os.environ["OMP_WAIT_POLICY"],
    }
    pocketsphinx = importlib.util.find_spec("pocketsphinx") is not None
    onnx = all(importlib.util.find_spec(name) for name in ("onnx", "onnxruntime"))
    with tempfile.TemporaryDirectory(prefix="bench_transcription.") as folder:
        folder = Path(folder)
        model_path, lm_path, onnx_path = folder / "model.pt", folder / "lm.arpa", folder / "model.onnx"
        recognizer = write_model(model_path, args.quick)
        report["model"] = recognizer.describe()
        build_arpa(LM_TEXT.read_text(encoding="utf-8").splitlines(), lm_path, order=3, normalize=normalize_text)
        if onnx:
            export_onnx(recognizer, onnx_path)

        cases = whole_process_cases(model_path, onnx_path if onnx else None, lm_path, files, args.threads,
                                    pocketsphinx, args.spin)
        rounds = take_turns(cases, args.repeats, lambda case: run_process(*case))
        reference = rounds["asr greedy"][0][2]
        report["whole_process"] = [summarize(name, rounds[name], audio_seconds,
                                             reference if name.startswith("asr greedy") else None)
                                   for name in cases]
        if not onnx:
            report["whole_process"].append({"case": "asr greedy ONNX", "status": "not installed"})
        if not pocketsphinx:
            report["whole_process"].append({"case": "pocketsphinx", "status": "not installed"})

        variants = in_process_variants(model_path, onnx_path if onnx else None, args.threads)
        for variant in variants.values():  # a warm-up batch each: first-call allocations, TorchScript's profiling
            transcribe_in_process(variant, files[:2])
        rounds = take_turns(variants, args.repeats, lambda variant: transcribe_in_process(variant, files))
        reference = rounds["fp32"][0][2]
        report["in_process"] = []
        for name, variant in variants.items():
            row = summarize(name, rounds[name], audio_seconds, reference)
            row["largest_log_prob_change"] = largest_log_prob_change(variant, variants["fp32"][0], files)
            report["in_process"].append(row)
        if not onnx:
            report["in_process"].append({"case": "ONNX Runtime", "status": "not installed"})
        report["model_loading_seconds"] = model_loading(model_path, max(3, args.repeats))
        report["start_up_seconds"] = start_up(model_path, onnx_path if onnx else None, files, max(3, args.repeats))
    if args.quick:
        report["digits_wer"] = {"status": "not measured at the quick size"}
    elif Path(args.digits_model).is_file():
        report["digits_wer"] = digits_wer(Path(args.digits_model))
    else:
        report["digits_wer"] = {"status": f"no trained digits model at {args.digits_model}"}
    add_ratios(report)
    report["wall_seconds"] = round(time.perf_counter() - started, 1)
    return report


def add_ratios(report: dict) -> None:
    """Speed-ups: whole-process cases over pocketsphinx's time, in-process variants over fp32's."""
    for section, reference_case in (("whole_process", "pocketsphinx"), ("in_process", "fp32")):
        rows = {row["case"]: row for row in report[section] if "median_seconds" in row}
        if reference_case in rows:
            for row in rows.values():
                row[f"speed_vs_{reference_case.replace(' ', '_')}"] = round(
                    rows[reference_case]["median_seconds"] / row["median_seconds"], 2)


def print_report(report: dict) -> None:
    print(f"transcription · {report['files']} files, {report['audio_seconds']:.0f} s of audio · {report['threads']} "
          f"threads · median of {report['repeats']} · torch {report['torch']} · {report['model']}")
    for section, reference in (("whole_process", "pocketsphinx"), ("in_process", "fp32")):
        print(f"{section.replace('_', ' ')}:")
        print(f"  {'case':<22} {'median s':>9} {'RTF':>7} {'CPU s/s':>8} {'speed vs ' + reference:>18} "
              f"{'same text':>9} {'max Δ log p':>11}")
        for row in report[section]:
            if "status" in row:
                print(f"  {row['case']:<22} {row['status']}")
                continue
            ratio = row.get(f"speed_vs_{reference.replace(' ', '_')}")
            same = row.get("same_text_as_fp32")
            change = row.get("largest_log_prob_change")
            print(f"  {row['case']:<22} {row['median_seconds']:>9.2f} {row['rtf']:>7.4f} "
                  f"{row['cpu_seconds_per_audio_second']:>8.4f} {'' if ratio is None else f'{ratio:.2f}×':>18} "
                  f"{'' if same is None else f'{same:.0%}':>9} {'' if change is None else f'{change:.2g}':>11}")
    loading = report["model_loading_seconds"]
    print(f"model loading: load_model {loading['load_model']:.2f} s; initialize, then load "
          f"{loading['initialize, then load']:.2f} s")
    print("start-up: " + "; ".join(f"{name} {seconds:.2f} s" for name, seconds in report["start_up_seconds"].items()))
    wer = report["digits_wer"]
    if "status" in wer:
        print(f"digits WER: {wer['status']}")
    else:
        print(f"digits test WER ({wer['utterances']} utterances): fp32 {wer['fp32_wer']:.2%}, int8 "
              f"{wer['int8_wer']:.2%} ({wer['int8_minus_fp32_wer']:+.2%})")


def parse_args(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--repeats", type=int, default=1, help="rounds of every case; medians are reported")
    parser.add_argument("--spin", action="store_true",
                        help="also run asr transcribe with idle OpenMP threads spinning (slow on a busy CPU)")
    parser.add_argument("--digits-model", default=str(DIGITS_MODEL),
                        help="a trained digits model for the int8 WER (default: the digits recipe's)")
    parser.add_argument("--quick", action="store_true",
                        help=f"a smoke run: {QUICK_FILES} files, one round, a 2 × 64 model")
    parser.add_argument("--json-out", type=Path, help="also write the report here as JSON")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats = 1
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report = run(args)
    print_report(report)
    if args.json_out:
        args.json_out.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
