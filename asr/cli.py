"""The `asr` command (also `python -m asr`): one subcommand a task, each a thin layer over the library.

Each subcommand is two functions side by side: `add_X` defines its flags, `cmd_X` runs it by calling the library,
which holds the policy (which checkpoints to average, which decoder, which back end loads a model, how a server
runs). Flags name what they take: `--out` is a file to write, `--out-dir` a folder to write into, `--exp-dir` an
experiment's folder.

Imports happen inside each subcommand so that `asr --help` answers at once. Errors a user can cause (AsrError) are
printed as one line naming the file and the problem, without a traceback, and exit with status 1.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from asr.errors import AsrError


def _progress() -> bool:
    return sys.stderr.isatty()


# ----------------------------------------------------------------------------------------------------------------
# prepare, download: corpora to manifests


def add_prepare(commands) -> None:
    prepare = commands.add_parser("prepare", help="turn a corpus into JSONL manifests")
    corpora = prepare.add_subparsers(dest="corpus", metavar="CORPUS")
    corpora.required = True

    kaldi = corpora.add_parser("kaldi", help="a Kaldi data folder's wav.scp and text")
    kaldi.add_argument("--wav-scp", required=True, help="Kaldi wav.scp: '<id> <path>' lines")
    kaldi.add_argument("--text", required=True, help="Kaldi text: '<id> <words>' lines")
    kaldi.add_argument("--out-dir", required=True, help="output folder")
    kaldi.add_argument("--name", default="data", help="manifest name: OUT_DIR/NAME.jsonl (default: data)")
    kaldi.set_defaults(func=cmd_prepare_kaldi)

    libri = corpora.add_parser("librispeech", help="a LibriSpeech tree (flac + .trans.txt)")
    libri.add_argument("--root", required=True, help="the folder holding LibriSpeech/, or LibriSpeech/ itself")
    libri.add_argument("--subsets", nargs="+", required=True, help="e.g. train-clean-100 dev-clean test-clean")
    libri.add_argument("--out-dir", required=True, help="output folder: OUT_DIR/<subset>.jsonl")
    libri.add_argument("--workers", type=int, default=4, help="parallel header readers (default: 4)")
    libri.set_defaults(func=cmd_prepare_librispeech)

    digits = corpora.add_parser("digits", help="connected-digit utterances from the Free Spoken Digit Dataset")
    digits.add_argument("--fsdd", required=True, help="FSDD's recordings/ folder (or a folder holding it)")
    digits.add_argument("--out-dir", required=True, help="output folder: wav/ and train/dev/test.jsonl")
    digits.add_argument("--seed", type=int, default=0)
    digits.set_defaults(func=cmd_prepare_digits)


def cmd_prepare_kaldi(args) -> int:
    from asr.data.kaldi import import_kaldi

    print(import_kaldi(args.wav_scp, args.text, Path(args.out_dir) / f"{args.name}.jsonl").summary())
    return 0


def cmd_prepare_librispeech(args) -> int:
    from asr.data.librispeech import prepare_librispeech

    reports = prepare_librispeech(args.root, args.subsets, args.out_dir, num_workers=args.workers,
                                  progress=_progress())
    for subset, report in reports.items():
        print(f"{subset}: {report.summary()}")
    return 0


def cmd_prepare_digits(args) -> int:
    from asr.data.digits import build_connected_digits

    reports = build_connected_digits(args.fsdd, args.out_dir, seed=args.seed, progress=_progress())
    for split, report in reports.items():
        print(f"{split}: {report.summary()}")
    return 0


def add_download(commands) -> None:
    download = commands.add_parser("download", help="download and verify a corpus or language model")
    download.add_argument("corpus", choices=["librispeech", "librispeech-lm", "fsdd"])
    download.add_argument("--out-dir", required=True, help="download and extraction folder")
    download.add_argument("--subsets", nargs="+", default=["dev-clean", "dev-other", "test-clean", "test-other"])
    download.add_argument("--base-url", default=None, help="a mirror (default: the official openslr.org URL)")
    download.add_argument("--files", nargs="+", default=None,
                          help="librispeech-lm: which files (default: all, 4-gram.arpa.gz's 1.3 GB included)")
    download.add_argument("--checksums", default=None, metavar="JSON",
                          help="librispeech, librispeech-lm: a JSON object {subset or file name: sha256} overriding "
                               "the published checksums (a private mirror)")
    download.add_argument("--sha256", default=None, help="fsdd: the archive's expected SHA-256")
    download.add_argument("--keep-archives", action="store_true",
                          help="librispeech: keep each .tar.gz after its extraction (default: deleted once extracted)")
    download.set_defaults(func=cmd_download)


def cmd_download(args) -> int:
    if args.corpus == "librispeech":
        from asr.data.librispeech import download_librispeech

        download_librispeech(args.subsets, args.out_dir, base_url=args.base_url,
                             checksums=_read_checksums(args.checksums), keep_archives=args.keep_archives)
    elif args.corpus == "librispeech-lm":
        from asr.data.librispeech import LM_FILES, download_librispeech_lm

        download_librispeech_lm(args.out_dir, files=args.files or LM_FILES, base_url=args.base_url,
                                checksums=_read_checksums(args.checksums))
    else:
        from asr.data.fsdd import download_fsdd

        print(download_fsdd(args.out_dir, sha256=args.sha256))
    return 0


def _read_checksums(path: str | None) -> dict[str, str] | None:
    """--checksums: a JSON object {archive or file name: sha256}, or None when not given."""
    import json

    if path is None:
        return None
    try:
        checksums = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise AsrError(f"{path}: cannot read the checksums: {error}") from error
    if not isinstance(checksums, dict) or not all(isinstance(v, str) for v in checksums.values()):
        raise AsrError(f"{path}: expected a JSON object of name → sha256 hex digest")
    return checksums


# ----------------------------------------------------------------------------------------------------------------
# cmvn, tokenizer, train, average


def add_cmvn(commands) -> None:
    cmvn = commands.add_parser("cmvn", help="estimate global CMVN statistics (feature mean and deviation) from a "
                                            "manifest")
    cmvn.add_argument("--manifest", required=True)
    cmvn.add_argument("--out", required=True, help="JSON file for the statistics")
    cmvn.add_argument("--config", default=None, help="experiment YAML whose 'features' section to use")
    cmvn.add_argument("--max-utterances", type=int, default=None, help="estimate from at most N utterances")
    cmvn.add_argument("overrides", nargs="*", help="section.key=value")
    cmvn.set_defaults(func=cmd_cmvn)


def cmd_cmvn(args) -> int:
    from asr.config import load_config
    from asr.data.manifest import read_manifest
    from asr.normalization import estimate_cmvn, save_cmvn

    config = load_config(args.config, args.overrides)
    stats = estimate_cmvn(read_manifest(args.manifest), config.features, max_utterances=args.max_utterances,
                          progress=_progress())
    save_cmvn(args.out, stats)
    print(f"CMVN statistics over {stats['frames']} frames of {stats['utterances']} utterances → {args.out}")
    return 0


def add_tokenizer(commands) -> None:
    tokenizer = commands.add_parser("tokenizer", help="build a character or BPE tokenizer from a manifest's text")
    tokenizer.add_argument("--manifest", required=True)
    tokenizer.add_argument("--out", required=True, help="tokenizer file (JSON)")
    tokenizer.add_argument("--kind", choices=["char", "bpe"], default="bpe")
    tokenizer.add_argument("--vocab-size", type=int, default=256)
    tokenizer.add_argument("--model-type", choices=["unigram", "bpe"], default="unigram")
    tokenizer.set_defaults(func=cmd_tokenizer)


def cmd_tokenizer(args) -> int:
    from asr.data.manifest import read_manifest
    from asr.text import BpeTokenizer, CharTokenizer, save_tokenizer

    texts = [utt.text for utt in read_manifest(args.manifest)]
    if args.kind == "char":
        tokenizer = CharTokenizer()
    else:
        tokenizer = BpeTokenizer.train(texts, vocab_size=args.vocab_size, model_type=args.model_type)
    save_tokenizer(tokenizer, args.out)
    print(f"{tokenizer.kind} tokenizer with {tokenizer.vocab_size} tokens → {args.out}")
    return 0


def add_train(commands) -> None:
    train = commands.add_parser("train", help="train a model (under torchrun for several GPUs)")
    train.add_argument("--config", required=True, help="experiment YAML")
    train.add_argument("--exp-dir", required=True, help="experiment folder, e.g. exp/NAME")
    train.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --exp-dir")
    train.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda when available)")
    train.add_argument("--quiet", action="store_true", help="no progress bars")
    train.add_argument("overrides", nargs="*", help="section.key=value, e.g. model.num_layers=3 optim.lr=2e-3")
    train.set_defaults(func=cmd_train)


def cmd_train(args) -> int:
    from asr.config import load_config
    from asr.train import train

    config = load_config(args.config, args.overrides)
    model_path = train(config, args.exp_dir, resume=args.resume, device=args.device,
                       progress=_progress() and not args.quiet)
    if model_path:
        print(f"model: {model_path}")
    return 0


def add_average(commands) -> None:
    average = commands.add_parser("average", help="average the weights of checkpoints into one model file")
    average.add_argument("checkpoints", nargs="*", help="model files or checkpoints")
    average.add_argument("--exp-dir", default=None, help="take checkpoints from EXP_DIR/checkpoints")
    average.add_argument("--num", type=int, default=3, help="with --exp-dir: how many (default: 3)")
    average.add_argument("--best", action="store_true", help="with --exp-dir: the best by dev WER (else the last)")
    average.add_argument("--out", required=True, help="output model file")
    average.set_defaults(func=cmd_average)


def cmd_average(args) -> int:
    from asr.checkpoint import CheckpointDir, average_model_files

    paths = list(args.checkpoints)
    if args.exp_dir:
        paths += CheckpointDir(Path(args.exp_dir) / "checkpoints").to_average(args.num, best=args.best)
    if not paths:
        raise AsrError("average: no checkpoints found (give files, or --exp-dir DIR)")
    average_model_files(paths, args.out)
    print(f"averaged {len(paths)} checkpoints → {args.out}")
    return 0


# ----------------------------------------------------------------------------------------------------------------
# transcribe, evaluate, score, export, report


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    """--model, --device, --threads, --quantize, batching and the decoder's options, shared by transcribe and
    evaluate."""
    parser.add_argument("--model", required=True,
                        help="model file (model.pt), or an ONNX graph from asr export (model.onnx: runs on ONNX "
                             "Runtime, on the CPU, without torch)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda when available)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch, or ONNX Runtime (default: the library's choice)")
    parser.add_argument("--quantize", choices=["int8"], default=None,
                        help="CPU only, model files only: compute the GRU and Linear layers with int8 weights, faster "
                             "(docs/benchmarks.md)")
    parser.add_argument("--batch-seconds", type=float, default=240.0,
                        help="at most this much padded audio a batch (default: 240)")
    decoding = parser.add_argument_group("decoding")
    decoding.add_argument("--decoder", choices=["greedy", "beam"], default=None,
                          help="default: greedy, or beam when --lm or --lexicon is given")
    decoding.add_argument("--beam-size", type=int, default=None, help="hypotheses kept a frame (default: 50)")
    decoding.add_argument("--beam-threshold", type=float, default=None,
                          help="drop hypotheses scoring this much below the best (default: 25)")
    decoding.add_argument("--lm", default=None, help="word n-gram language model: ARPA file or KenLM binary")
    decoding.add_argument("--lexicon", default=None,
                          help="flashlight lexicon, 'WORD<TAB>tokens' a line (default with --lm: the LM's words)")
    decoding.add_argument("--lm-weight", type=float, default=None, help="weight of the LM score (default: 2.0)")
    decoding.add_argument("--word-score", type=float, default=None, help="score added a word (default: 0)")


def _model_and_decoder(args):
    """The recognizer of _add_model_options' flags (asr.backend.load_model) and its decoder (make_decoder)."""
    from asr.backend import load_model
    from asr.decoding import make_decoder

    recognizer = load_model(args.model, args.device, threads=args.threads, quantize=args.quantize)
    decoder = make_decoder(recognizer, args.decoder, lm=args.lm, lexicon=args.lexicon, beam_size=args.beam_size,
                           beam_threshold=args.beam_threshold, lm_weight=args.lm_weight, word_score=args.word_score)
    return recognizer, decoder


def add_transcribe(commands) -> None:
    transcribe = commands.add_parser("transcribe", help="transcribe audio files (text, JSON, SRT or WebVTT)")
    transcribe.add_argument("inputs", nargs="+", metavar="FILE_OR_DIR_OR_GLOB",
                            help="audio files, folders (searched recursively) or glob patterns")
    _add_model_options(transcribe)
    transcribe.add_argument("--output-format", choices=["txt", "json", "srt", "vtt", "all"], default="txt",
                            help="txt (default), json (one object a line), srt or vtt subtitles, all (needs "
                                 "--out-dir)")
    transcribe.add_argument("--out-dir", default=None, help="write one file per input and format here "
                                                             "(default: print to stdout)")
    transcribe.add_argument("--plot-dir", default=None,
                            help="draw features, CTC posteriors and words of each file into PLOT_DIR/<name>.png")
    transcribe.add_argument("--chunk-seconds", type=float, default=30.0,
                            help="longer recordings are decoded in overlapping windows this long (default: 30)")
    transcribe.add_argument("--one-speaker", action="store_true",
                            help="the inputs are all one speaker's: a model trained with features.normalization: "
                                 "speaker normalizes them by statistics over all of them (by default, by the "
                                 "training set's)")
    transcribe.add_argument("--timings", action="store_true",
                            help="real-time factor and per-file times on stderr")
    transcribe.set_defaults(func=cmd_transcribe)


def cmd_transcribe(args) -> int:
    import time

    started = time.perf_counter()  # the real-time factor counts loading the model too
    from asr.files import output_names
    from asr.transcribe import OUTPUT_FORMATS, expand_inputs, one_speaker_cmvn, transcribe_files

    formats = list(OUTPUT_FORMATS) if args.output_format == "all" else [args.output_format]
    paths = expand_inputs(args.inputs)
    if args.out_dir is None and (len(formats) > 1 or (formats[0] in ("srt", "vtt") and len(paths) > 1)):
        raise AsrError(f"--output-format {args.output_format} for {len(paths)} files needs --out-dir")
    names = output_names(paths) if args.out_dir or args.plot_dir else {}
    recognizer, decoder = _model_and_decoder(args)
    if args.plot_dir:
        if not recognizer.exposes_features:
            raise AsrError(f"{args.model}: --plot-dir draws the features the model reads, which an ONNX graph keeps "
                           f"inside: plot with the model file it was exported from")
        from asr.plot import plot_transcript  # matplotlib takes half a second to import: only when plotting
    if args.out_dir:
        Path(args.out_dir).mkdir(parents=True, exist_ok=True)
    speaker_cmvn = one_speaker_cmvn(recognizer, paths, progress=_progress()) if args.one_speaker else None
    failed, audio_seconds = 0, 0.0
    for path, transcript in transcribe_files(recognizer, paths, decoder, max_batch_seconds=args.batch_seconds,
                                             chunk_seconds=args.chunk_seconds, progress=_progress(),
                                             speaker_cmvn=speaker_cmvn):
        if isinstance(transcript, AsrError):
            print(f"asr transcribe: error: {transcript}", file=sys.stderr)
            failed += 1
            continue
        audio_seconds += transcript.duration
        if args.timings:
            print(f"{path}: {transcript.duration:.2f} s of audio in {transcript.compute_seconds:.3f} s",
                  file=sys.stderr)
        if args.out_dir:
            for extension, render in (OUTPUT_FORMATS[name] for name in formats):
                (Path(args.out_dir) / f"{names[path]}{extension}").write_text(render(transcript), encoding="utf-8")
        elif formats == ["txt"] and len(paths) > 1:
            print(f"{path}: {transcript.text}", flush=True)
        else:
            print(OUTPUT_FORMATS[formats[0]][1](transcript), end="", flush=True)
        if args.plot_dir:
            plot_transcript(recognizer, path, transcript, Path(args.plot_dir) / f"{names[path]}.png")
    if args.timings:
        elapsed = time.perf_counter() - started
        print(f"{len(paths) - failed} files, {audio_seconds:.1f} s of audio in {elapsed:.1f} s: real-time factor "
              f"{elapsed / max(audio_seconds, 1e-9):.3f}", file=sys.stderr)
    if failed:
        print(f"asr transcribe: {failed} of {len(paths)} files could not be transcribed", file=sys.stderr)
        return 1
    return 0


def add_evaluate(commands) -> None:
    evaluate = commands.add_parser("evaluate", help="word and character error rates of a model on manifests")
    evaluate.add_argument("--manifest", dest="manifests", nargs="+", required=True, metavar="JSONL",
                          help="one or more manifests, one set each")
    _add_model_options(evaluate)
    evaluate.add_argument("--out-dir", default=None,
                          help="write OUT_DIR/<manifest stem>/{hyp.txt,ref.txt,wer.json,per_utt.tsv}, "
                               "OUT_DIR/results.md and OUT_DIR/results.json")
    evaluate.add_argument("--json", action="store_true", help="print the results as one JSON object")
    evaluate.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args) -> int:
    from asr.evaluate import evaluate
    from asr.scoring import format_text, results_json

    recognizer, decoder = _model_and_decoder(args)
    scores = evaluate(recognizer, args.manifests, decoder, out_dir=args.out_dir,
                      max_batch_seconds=args.batch_seconds, progress=_progress())
    results = dict(zip(args.manifests, scores))
    print(results_json(results) if args.json else format_text(results))
    return 0


def add_score(commands) -> None:
    score = commands.add_parser("score", help="error rates of a Kaldi-style hypothesis file against a reference")
    score.add_argument("--ref", required=True, help="reference: '<id> <words>' lines")
    score.add_argument("--hyp", required=True, help="hypothesis: '<id> <words>' lines; a missing id counts as "
                                                    "all deletions")
    score.add_argument("--json", action="store_true", help="print the results as one JSON object")
    score.set_defaults(func=cmd_score)


def cmd_score(args) -> int:
    from asr.scoring import format_text, read_kaldi_text, results_json, score
    from asr.text import normalize_text

    # The normalization `asr evaluate` applies, so that scoring its ref.txt and hyp.txt again gives its numbers.
    result = score(read_kaldi_text(args.ref), read_kaldi_text(args.hyp), normalize=normalize_text)
    results = {args.ref: result}
    print(results_json(results) if args.json else format_text(results))
    return 0


def add_export(commands) -> None:
    export = commands.add_parser("export", help="write a model as an ONNX graph: audio in, CTC log-probabilities out")
    export.add_argument("--model", required=True, help="model file (model.pt)")
    export.add_argument("--out", required=True, help="the ONNX file to write, e.g. model.onnx")
    export.add_argument("--opset", type=int, default=17, help="ONNX opset (default: 17)")
    export.set_defaults(func=cmd_export)


def cmd_export(args) -> int:
    from asr.checkpoint import load_model
    from asr.export import ONNX_INPUTS, ONNX_OUTPUTS, export_onnx

    path = export_onnx(load_model(args.model), args.out, opset=args.opset)
    print(f"{args.model} → {path}: ONNX opset {args.opset}, inputs {', '.join(ONNX_INPUTS)}, outputs "
          f"{', '.join(ONNX_OUTPUTS)}; tokenizer and frame shift in its metadata (asr transcribe --model {path})")
    return 0


def add_report(commands) -> None:
    report = commands.add_parser("report", help="an experiment's report.md (training, WER tables) and curves.png")
    report.add_argument("experiments", nargs="+", metavar="EXP_DIR", help="experiment folders, e.g. exp/train_100")
    report.set_defaults(func=cmd_report)


def cmd_report(args) -> int:
    from asr.report import write_report

    for exp_dir in args.experiments:
        print(write_report(exp_dir).read_text(encoding="utf-8"))
    return 0


# ----------------------------------------------------------------------------------------------------------------
# serve


def add_serve(commands) -> None:
    serve = commands.add_parser("serve", help="an HTTP server with OpenAI's transcription API and a web page")
    serve.add_argument("--model", required=True, help="model file (model.pt) or an ONNX graph from asr export")
    serve.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda when available)")
    serve.add_argument("--threads", type=int, default=None, help="CPU threads for torch, or ONNX Runtime")
    serve.add_argument("--quantize", choices=["int8"], default=None,
                       help="CPU only, model files only: int8 weights for the GRU and Linear layers")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default: 127.0.0.1, this machine only; 0.0.0.0: every interface)")
    serve.add_argument("--port", type=int, default=8000, help="default: 8000")
    serve.add_argument("--api-key", default=os.environ.get("ASR_API_KEY"),
                       help="require 'Authorization: Bearer KEY' on /v1/ and /metrics (default: $ASR_API_KEY; none)")
    serve.add_argument("--max-batch-seconds", type=float, default=60.0,
                       help="padded audio decoded together in one batch (default: 60; 0: no batching)")
    serve.add_argument("--max-wait-ms", type=float, default=0.0,
                       help="how long the oldest request waits for its batch to fill (default: 0: a batch is what "
                            "queued while the model was busy)")
    serve.add_argument("--max-queue", type=int, default=64,
                       help="requests waiting for the model; more get 503 with Retry-After (default: 64)")
    serve.add_argument("--max-upload-mb", type=float, default=25.0,
                       help="largest upload in MiB; larger requests get 413 (default: 25, as OpenAI's API)")
    serve.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                       help="allow browser pages of this origin to call the API (repeatable; default: none)")
    serve.add_argument("--chunk-seconds", type=float, default=30.0,
                       help="longer recordings are decoded in overlapping windows this long (default: 30)")
    serve.add_argument("--overlap-seconds", type=float, default=5.0,
                       help="how much consecutive windows overlap (default: 5)")
    serve.add_argument("--model-name", default=None, help="the model's id in /v1/models (default: the file's stem)")
    serve.add_argument("--language", default="english", help="the language verbose_json reports (default: english)")
    serve.add_argument("--workers", type=int, default=1,
                       help="server processes sharing the port, each with its own copy of the model and its own "
                            "batching (default: 1; on a CPU: several, with --threads 1 each; on a GPU: 1)")
    serve.add_argument("--shutdown-timeout", type=float, default=30.0,
                       help="on SIGTERM, seconds to finish the requests in flight (default: 30)")
    serve.add_argument("--access-log", action="store_true", help="log each request (uvicorn's access log)")
    serve.set_defaults(func=cmd_serve)


def cmd_serve(args) -> int:
    try:
        from asr.serve import ServeConfig, serve
    except ImportError as error:
        raise AsrError(f"asr serve needs the serve extra (pip install 'asr[serve]'): {error}") from None

    # Bad flags are refused here, before any model loads.
    config = ServeConfig(model_name=args.model_name or Path(args.model).stem, max_batch_seconds=args.max_batch_seconds,
                         max_wait_ms=args.max_wait_ms, max_queue=args.max_queue, max_upload_mb=args.max_upload_mb,
                         api_key=args.api_key, cors_origins=args.cors_origin, chunk_seconds=args.chunk_seconds,
                         overlap_seconds=args.overlap_seconds, language=args.language)
    serve(args.model, config, args.device, args.threads, args.quantize, host=args.host, port=args.port,
          workers=args.workers, shutdown_timeout=args.shutdown_timeout, access_log=args.access_log)
    return 0


# ----------------------------------------------------------------------------------------------------------------
# The command


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="asr", description="Bidirectional-GRU CTC speech recognition.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log informational messages too")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    for add in (add_prepare, add_download, add_cmvn, add_tokenizer, add_train, add_average, add_transcribe,
                add_evaluate, add_score, add_export, add_report, add_serve):
        add(commands)
    return parser


def _let_idle_threads_sleep() -> None:
    """Have torch's OpenMP threads sleep when idle instead of spinning, unless OMP_WAIT_POLICY says otherwise.

    A spinning thread waits out its peers' time slices on a CPU shared with other processes (or with the data
    loader's workers), many times slower on busy cores (docs/benchmarks.md). OpenMP reads the variable once, when
    torch is first imported, so this runs before any command imports it. An ONNX model's threads follow the same
    variable (asr.onnx_model).
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _let_idle_threads_sleep()
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return args.func(args)
    except AsrError as err:
        print(f"asr {args.command}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"asr {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `asr transcribe ... | head`: the reader left, nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes
        return 0


if __name__ == "__main__":
    sys.exit(main())
