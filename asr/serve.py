"""`asr serve`: a model behind an HTTP API that OpenAI's clients speak unchanged, and a web page to try it.

    POST /v1/audio/transcriptions   OpenAI's transcription endpoint: multipart `file`, `model`, `response_format`
                                    (json, text, srt, vtt, verbose_json), `timestamp_granularities[]`
    POST /v1/audio/plot             the same form, answered with asr.plot's picture of the recording (PNG)
    GET  /v1/models                 the one model this server holds
    GET  /healthz, GET /metrics     liveness, and Prometheus metrics
    GET  /                          the page (asr/static/): upload or record, words with times and confidence

A request's upload is copied into the server's temporary folder and decoded by `asr.audio` on Starlette's thread
pool, so that a malformed file is refused (4xx, OpenAI's error shape) before it reaches the model. The samples then
wait in a bounded queue for the one inference thread (`BatchingTranscriber`), which decodes the waiting recordings
together, up to `max_batch_seconds` of padded audio (after waiting up to `max_wait_ms` for the batch to fill, if
asked): a batch of N recordings costs far less than N decodes, so the requests answered a second grow with the load.
A recording longer than a window (`chunk_seconds`) goes alone through `asr.transcribe.transcribe_file`, which reads
it from its file one overlapping window at a time. The event loop never runs the model.

`serve` loads a model and serves it: in this process, or with several workers (`asr serve --workers N`) uvicorn
starts N processes that share the port, each making its own application (`worker_app`: its own model, queue and
thread); their Prometheus metrics are kept in a folder they share, so that /metrics reports the server's, whichever
worker answers.

Policy (limits, batching, error shapes, workers) lives here; `asr serve` in asr/cli.py only parses flags.
docs/serving.md says why Starlette and uvicorn, and what each flag and metric means.
"""
from __future__ import annotations

import asyncio
import contextlib
import hmac
import itertools
import json
import logging
import math
import os
import shutil
import tempfile
import threading
import time
import zlib
from collections import deque
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import prometheus_client
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from asr.audio import SAMPLE_RATE, audio_info, load_samples
from asr.backend import load_model
from asr.errors import AsrError, AudioError, ConfigError
from asr.transcribe import (
    AUDIO_EXTENSIONS,
    Transcript,
    consecutive_batches,
    format_srt,
    format_txt,
    format_vtt,
    subtitle_cues,
    transcribe_file,
    transcribe_waveforms,
)

log = logging.getLogger("asr.serve")

STATIC_DIR = Path(__file__).with_name("static")
RESPONSE_FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
GRANULARITIES = ("segment", "word")
# Fields of OpenAI's request that this server takes and does not use: the model has one language, and a CTC model
# decodes greedily (no sampling temperature, no prompt to condition on). Documented in docs/serving.md.
IGNORED_FIELDS = ("language", "prompt", "temperature")
KNOWN_FIELDS = ("file", "model", "response_format", "timestamp_granularities[]", "timestamp_granularities",
                "stream", *IGNORED_FIELDS)
# The request body may exceed --max-upload-mb by this much: the other form fields and the multipart boundaries.
FORM_OVERHEAD_BYTES = 64 * 1024
# A body refused as too large is still read, and thrown away, up to this much beyond the limit: a client that is
# still sending when the 413 comes would otherwise find the connection closed and never see the answer. A body
# declared larger than that is answered at once, and the connection closed.
REFUSED_BODY_DRAIN_BYTES = 32 * 2**20
# Paths that need the API key when one is set; the page and /healthz do not (a load balancer probes /healthz).
PROTECTED_PREFIXES = ("/v1/", "/metrics")
# What each worker process of `asr serve --workers` loads and serves (JSON), and where one that cannot start leaves
# its error for the parent.
WORKER_SETTINGS_ENV = "ASR_SERVE_SETTINGS"
WORKER_FAILURE_ENV = "ASR_SERVE_WORKER_FAILURE"
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


@dataclass
class ServeConfig:
    """What `asr serve`'s flags set; docs/serving.md explains each."""

    model_name: str = "asr"  # the id GET /v1/models reports
    max_batch_seconds: float = 60.0  # padded audio decoded in one batch; 0: one request a batch (no batching)
    # How long the oldest request waits for its batch to fill. 0: the batch is what queued while the model was busy,
    # which on a CPU served best at every load measured (docs/benchmarks.md); waiting pays where a batch costs
    # little more than one recording, as on a GPU.
    max_wait_ms: float = 0.0
    max_queue: int = 64  # requests waiting for the model; one more gets 503
    max_upload_mb: float = 25.0  # OpenAI's limit
    api_key: str | None = None
    cors_origins: list[str] = field(default_factory=list)
    chunk_seconds: float = 30.0  # longer recordings are decoded in overlapping windows (asr.transcribe)
    overlap_seconds: float = 5.0
    language: str = "english"  # what verbose_json reports: the model's language, not detected

    def __post_init__(self):
        # Named as asr serve's flags: --max-queue sets max_queue.
        for name in ("max_batch_seconds", "max_wait_ms", "max_upload_mb"):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be 0 or more, got {getattr(self, name)}")
        if self.max_queue < 1:
            raise ConfigError(f"--max-queue must be at least 1, got {self.max_queue}")
        if self.api_key is not None and not self.api_key:
            raise ConfigError("the API key is empty")
        if not 0 <= self.overlap_seconds < self.chunk_seconds:
            raise ConfigError(f"need 0 <= --overlap-seconds < --chunk-seconds, got {self.overlap_seconds} and "
                              f"{self.chunk_seconds}")

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_upload_mb * 2**20) + FORM_OVERHEAD_BYTES


# ----------------------------------------------------------------------------------------------------------------
# Metrics


class Metrics:
    """The server's Prometheus metrics, in a registry of its own (several servers may share a process in tests).

    With several worker processes (`asr serve --workers N`), PROMETHEUS_MULTIPROC_DIR names a folder the workers
    share: prometheus_client then keeps each worker's values in files there, and /metrics, whichever worker answers
    it, reports all workers' together (counters and histograms summed, the queue depth summed over live workers).
    """

    def __init__(self):
        self.registry = prometheus_client.CollectorRegistry()
        self.requests = prometheus_client.Counter(
            "asr_requests", "HTTP requests answered, by endpoint and status code", ["endpoint", "status"],
            registry=self.registry)
        self.errors = prometheus_client.Counter(
            "asr_request_errors", "requests answered with a 4xx or 5xx status, by endpoint and status code",
            ["endpoint", "status"], registry=self.registry)
        self.latency = prometheus_client.Histogram(
            "asr_request_latency_seconds", "time from a transcription request's arrival to its answer",
            buckets=LATENCY_BUCKETS, registry=self.registry)
        self.audio_seconds = prometheus_client.Counter(
            "asr_audio_seconds", "seconds of audio transcribed", registry=self.registry)
        self.batch_size = prometheus_client.Histogram(
            "asr_batch_size", "recordings decoded together in one batch", buckets=(1, 2, 4, 8, 16, 32, 64, 128),
            registry=self.registry)
        # Set by the transcriber as its queue changes (a callback gauge cannot be read across processes).
        self.queue_depth = prometheus_client.Gauge(
            "asr_queue_depth", "transcription requests waiting for the model", registry=self.registry,
            multiprocess_mode="livesum")

    @staticmethod
    def shared() -> bool:
        """Whether the values are kept in PROMETHEUS_MULTIPROC_DIR's files, for several worker processes."""
        return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))

    def exposition(self) -> bytes:
        if not self.shared():
            return prometheus_client.generate_latest(self.registry)
        from prometheus_client import multiprocess

        registry = prometheus_client.CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return prometheus_client.generate_latest(registry)

    def process_exited(self) -> None:
        """Drop this process's live gauges (its queue depth) from the shared folder."""
        if self.shared():
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(os.getpid())


# ----------------------------------------------------------------------------------------------------------------
# Dynamic batching


class QueueFull(Exception):
    """The queue holds `max_queue` requests; `retry_after`: seconds after which it has likely drained."""

    def __init__(self, retry_after: int):
        super().__init__(f"the server is busy: {retry_after} s")
        self.retry_after = retry_after


@dataclass
class _Job:
    duration: float  # seconds of audio
    wave: np.ndarray | None  # a recording up to a window long, decoded
    path: Path | None  # a longer one, read window by window from its file
    future: Future
    queued: float = field(default_factory=time.monotonic)


class BatchingTranscriber:
    """One thread runs the model. Requests wait in a bounded FIFO queue; the thread takes the oldest and, unless
    batching is off, waits until `max_wait_ms` after its arrival or until the waiting recordings fill
    `max_batch_seconds` of padded audio, whichever comes first, then decodes all it took as one batch. A recording
    longer than `chunk_seconds` is decoded alone, window by window, from its file.

    `submit` returns a `concurrent.futures.Future` of the Transcript; a batch whose decoding fails is decoded again
    one recording at a time, so that one failing recording fails its own request only.
    """

    def __init__(self, recognizer, config: ServeConfig, decoder=None, metrics: Metrics | None = None):
        self.recognizer = recognizer
        self.decoder = decoder
        self.config = config
        self.metrics = metrics
        self._queue: deque[_Job] = deque()
        self._changed = threading.Condition()
        self._closing = False
        self._compute_per_audio_second = 0.0  # of recent batches: how fast the queue drains, for Retry-After
        self._thread = threading.Thread(target=self._run, name="asr-inference", daemon=True)

    @property
    def depth(self) -> int:
        return len(self._queue)

    @property
    def full(self) -> bool:
        return len(self._queue) >= self.config.max_queue

    def start(self) -> None:
        self._thread.start()

    def submit(self, duration: float, wave: np.ndarray | None = None, path: Path | None = None) -> Future:
        """Queue a recording (samples, or the path of a long one); raises QueueFull when the queue is full."""
        job = _Job(duration, wave, path, Future())
        with self._changed:
            if self._closing:
                raise RuntimeError("the transcriber is closed")
            if len(self._queue) >= self.config.max_queue:
                raise QueueFull(self.retry_after())
            self._queue.append(job)
            self._note_depth()
            self._changed.notify()
        return job.future

    def retry_after(self) -> int:
        """Whole seconds in which the queue is likely decoded, from the speed of recent batches; at least 1."""
        waiting = sum(job.duration for job in self._queue)
        return max(1, math.ceil(waiting * self._compute_per_audio_second + self.config.max_wait_ms / 1000))

    def close(self) -> None:
        """Decode what is queued, then stop the thread."""
        with self._changed:
            self._closing = True
            self._changed.notify_all()
        if self._thread.is_alive():
            self._thread.join()

    # -- the inference thread

    def _run(self) -> None:
        while (batch := self._next_batch()) is not None:
            # A request whose task was cancelled meanwhile (at the end of the shutdown timeout) is not decoded.
            batch = [job for job in batch if job.future.set_running_or_notify_cancel()]
            if batch:
                self._decode(batch)

    def _batching(self) -> bool:
        return self.config.max_batch_seconds > 0

    def _batch_at_head(self) -> int:
        """How many of the queue's first jobs make one batch: recordings up to a window long, taken in order while
        the batch's padded length (its count × its longest) stays within max_batch_seconds; at least one."""
        if not self._batching() or self._queue[0].path is not None:
            return 1
        durations = [job.duration for job in itertools.takewhile(lambda job: job.path is None, self._queue)]
        return len(next(consecutive_batches(durations, self.config.max_batch_seconds)))

    def _next_batch(self) -> list[_Job] | None:
        with self._changed:
            while not self._queue:
                if self._closing:
                    return None
                self._changed.wait()
            if self._batching():
                deadline = self._queue[0].queued + self.config.max_wait_ms / 1000
                # Wait for the batch to fill, unless the queue already holds more than one batch.
                while not self._closing and self._batch_at_head() == len(self._queue):
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._changed.wait(remaining)
            batch = [self._queue.popleft() for _ in range(self._batch_at_head())]
            self._note_depth()
            return batch

    def _note_depth(self) -> None:
        if self.metrics:
            self.metrics.queue_depth.set(len(self._queue))

    def _decode(self, batch: list[_Job]) -> None:
        started = time.perf_counter()
        try:
            if batch[0].path is not None:
                transcripts = [transcribe_file(self.recognizer, batch[0].path, self.decoder,
                                               self.config.chunk_seconds, self.config.overlap_seconds)]
            else:
                transcripts = transcribe_waveforms(self.recognizer, [job.wave for job in batch], self.decoder)
        except Exception as error:  # noqa: BLE001 - handed to the request it belongs to, or retried alone
            if len(batch) > 1:
                log.warning("a batch of %d failed (%s): decoding them one by one", len(batch), error)
                for job in batch:
                    self._decode([job])
            else:
                batch[0].future.set_exception(error)
            return
        elapsed = time.perf_counter() - started
        audio = sum(job.duration for job in batch)
        self._compute_per_audio_second = elapsed / max(audio, 1e-3)
        if self.metrics:
            self.metrics.batch_size.observe(len(batch))
            self.metrics.audio_seconds.inc(audio)
        for job, transcript in zip(batch, transcripts):
            job.future.set_result(transcript)


# ----------------------------------------------------------------------------------------------------------------
# OpenAI's request and response shapes


class RequestError(Exception):
    """A request the server refuses: becomes OpenAI's error JSON with this status."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.headers = status, message, param, code, headers

    def response(self) -> JSONResponse:
        return error_response(self.status, self.message, self.param, self.code, self.headers)


def error_response(status: int, message: str, param: str | None = None, code: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    """OpenAI's error shape: {"error": {"message", "type", "param", "code"}}."""
    kind = "invalid_request_error" if status < 500 else "server_error"
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}},
                        status_code=status, headers=headers)


# AudioError.problem (asr.audio's words) → OpenAI-style error code.
_AUDIO_PROBLEM_CODES = (
    ("empty file", "empty_file"),
    ("no audio samples", "empty_audio"),
    ("not an audio file", "invalid_file_format"),
    ("truncated or corrupt", "corrupt_audio"),
    ("contains NaN or infinite samples", "invalid_samples"),
)


def _busy(retry_after: int) -> RequestError:
    return RequestError(503, "the server is busy: its queue is full; retry after the time in Retry-After", None,
                        "queue_full", {"Retry-After": str(retry_after)})


def audio_request_error(name: str, error: AudioError) -> RequestError:
    """A 400 naming the uploaded file (as the client called it, never the server's temporary path) and the problem."""
    code = next((code for start, code in _AUDIO_PROBLEM_CODES if error.problem.startswith(start)), "invalid_audio")
    message = f"{name}: {error.problem}"
    if code == "invalid_file_format":
        message += " (readable: WAV, FLAC, OGG and MP3, and more where ffmpeg is installed)"
    return RequestError(400, message, "file", code)


@dataclass
class TranscriptionRequest:
    """The fields of a transcription request, checked."""

    upload: UploadFile
    response_format: str
    granularities: list[str]


def parse_transcription_form(form) -> TranscriptionRequest:
    """Check a multipart form against OpenAI's transcription request; raises RequestError naming the field."""
    for key in form.keys():
        if key not in KNOWN_FIELDS:
            hint = " (the audio goes in 'file')" if isinstance(form[key], UploadFile) else ""
            raise RequestError(400, f"unknown field '{key}'{hint}; this endpoint takes {', '.join(KNOWN_FIELDS)}",
                               key, "unknown_parameter")
    files = form.getlist("file")
    if not files:
        raise RequestError(400, "no audio: send the recording as a multipart file field named 'file'", "file",
                           "missing_file")
    if len(files) > 1:
        raise RequestError(400, "one recording a request: 'file' was given more than once", "file",
                           "too_many_files")
    if not isinstance(files[0], UploadFile):
        raise RequestError(400, "'file' must be a file upload (multipart with a filename), not a text field",
                           "file", "invalid_file")
    fields = {key: form[key] for key in form.keys() if key != "file"}
    for key, value in fields.items():
        if isinstance(value, UploadFile):
            raise RequestError(400, f"'{key}' must be a text field, not a file", key, "invalid_value")
    if not fields.get("model", "").strip():
        raise RequestError(400, "'model' is required (any name: this server holds one model, GET /v1/models)",
                           "model", "missing_model")
    response_format = fields.get("response_format", "json")
    if response_format not in RESPONSE_FORMATS:
        raise RequestError(400, f"response_format '{response_format}' is not supported; use one of "
                                f"{', '.join(RESPONSE_FORMATS)}", "response_format", "unsupported_value")
    if "temperature" in fields:
        try:
            float(fields["temperature"])
        except ValueError:
            raise RequestError(400, f"temperature must be a number, got '{fields['temperature']}'", "temperature",
                               "invalid_value") from None
    if fields.get("stream", "false").lower() not in ("false", "0", ""):
        raise RequestError(400, "streaming is not supported: leave 'stream' out or false", "stream",
                           "unsupported_value")
    granularities = form.getlist("timestamp_granularities[]") + form.getlist("timestamp_granularities")
    for value in granularities:
        if value not in GRANULARITIES:
            raise RequestError(400, f"timestamp_granularities: '{value}' is not one of {', '.join(GRANULARITIES)}",
                               "timestamp_granularities", "unsupported_value")
    if granularities and response_format != "verbose_json":
        raise RequestError(400, "timestamp_granularities needs response_format verbose_json", "timestamp_granularities",
                           "invalid_value")
    return TranscriptionRequest(files[0], response_format, granularities or ["segment"])


def verbose_json(transcript: Transcript, granularities: list[str], language: str) -> dict:
    """OpenAI's verbose_json: the text, `segments` (the subtitle cues of asr.transcribe) and, when asked for,
    `words` with start and end, plus each word's confidence (the mean posterior of its tokens).

    A segment's `avg_logprob` is the mean log confidence of its words and `compression_ratio` that of its text under
    zlib, as whisper computes it; `tokens` is empty, `temperature` 0 (greedy CTC) and `no_speech_prob` 0: a CTC model
    makes a segment only of recognized words."""
    result = {"task": "transcribe", "language": language, "duration": round(transcript.duration, 3),
              "text": transcript.text}
    if "segment" in granularities:
        words = iter(transcript.words)
        segments = []
        for number, cue in enumerate(subtitle_cues(transcript.words)):
            # A cue is a run of consecutive words joined by spaces; words never hold a space.
            cue_words = [next(words) for _ in cue.text.split(" ")]
            text = cue.text.encode()
            segments.append({
                "id": number, "seek": 0, "start": round(cue.start, 3), "end": round(cue.end, 3), "text": cue.text,
                "tokens": [], "temperature": 0.0,
                "avg_logprob": round(float(np.mean([math.log(max(w.confidence, 1e-10)) for w in cue_words])), 4),
                "compression_ratio": round(len(text) / len(zlib.compress(text)), 4), "no_speech_prob": 0.0})
        result["segments"] = segments
    if "word" in granularities:
        result["words"] = transcript.to_dict()["words"]  # asr transcribe's JSON words: word, start, end, confidence
    result["usage"] = {"type": "duration", "seconds": round(transcript.duration, 3)}
    return result


def transcription_response(transcript: Transcript, request: TranscriptionRequest, language: str) -> Response:
    """The answer in the format asked for: JSON for json and verbose_json, plain text for text, srt and vtt."""
    if request.response_format == "json":
        return JSONResponse({"text": transcript.text,
                             "usage": {"type": "duration", "seconds": round(transcript.duration, 3)}})
    if request.response_format == "verbose_json":
        return JSONResponse(verbose_json(transcript, request.granularities, language))
    if request.response_format == "vtt":
        return Response(format_vtt(transcript), media_type="text/vtt")
    formatter = format_txt if request.response_format == "text" else format_srt
    return PlainTextResponse(formatter(transcript))


# ----------------------------------------------------------------------------------------------------------------
# The application


def _endpoint(path: str) -> str:
    """The metrics label of a path: a route's name, never the raw path (a scanner would make labels without end)."""
    if path == "/v1/audio/transcriptions":
        return "transcriptions"
    if path == "/v1/audio/plot":
        return "plot"
    if path == "/v1/models" or path.startswith("/v1/models/"):
        return "models"
    if path in ("/healthz", "/metrics"):
        return path[1:]
    if path == "/" or path.startswith("/static/"):
        return "page"
    return "other"


class _BodyTooLarge(Exception):
    """Raised by the gate's `receive` once a body without Content-Length grows over the limit; the route that
    reads the body turns it into a 413 (raised through Starlette, it would become a 500)."""


async def _drain(receive, limit: int) -> None:
    """Read and discard the rest of a refused body, up to `limit` bytes in all (REFUSED_BODY_DRAIN_BYTES)."""
    received = 0
    while received <= limit:
        message = await receive()
        if message["type"] != "http.request":
            return  # the client left
        received += len(message.get("body", b""))
        if not message.get("more_body", False):
            return


def _too_large(config: ServeConfig) -> RequestError:
    # Connection: close, since the rest of the body is not read.
    return RequestError(413, f"the request is larger than the server's limit of {config.max_upload_mb:g} MiB "
                             f"(asr serve --max-upload-mb)", "file", "file_too_large", {"Connection": "close"})


class _Gate:
    """Plain ASGI middleware in front of everything: counts each request by endpoint and status, answers 401 when
    the API key is missing or wrong and 413 when the declared body exceeds the limit, both before any of the body
    is parsed or stored (a body without Content-Length is counted as it arrives)."""

    def __init__(self, app, config: ServeConfig, metrics: Metrics):
        self.app, self.config, self.metrics = app, config, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        endpoint = _endpoint(scope["path"])
        status = 500  # unless a response starts

        async def send_and_note(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        headers = {key.decode("latin-1").lower(): value.decode("latin-1") for key, value in scope["headers"]}
        try:
            refusal = self._refusal(scope["path"], scope["method"], headers)
            if refusal is not None:
                length = headers.get("content-length", "")
                if length.isdigit() and int(length) <= self.config.max_body_bytes + REFUSED_BODY_DRAIN_BYTES:
                    await _drain(receive, int(length))
                await refusal(scope, receive, send_and_note)
                return
            await self.app(scope, self._limited(receive), send_and_note)
        finally:
            self.metrics.requests.labels(endpoint, str(status)).inc()
            if status >= 400:
                self.metrics.errors.labels(endpoint, str(status)).inc()
            if endpoint == "transcriptions":
                self.metrics.latency.observe(time.perf_counter() - started)

    def _refusal(self, path: str, method: str, headers: dict[str, str]) -> Response | None:
        if self.config.api_key and method != "OPTIONS" and path.startswith(PROTECTED_PREFIXES):
            scheme, _, token = headers.get("authorization", "").partition(" ")
            # compare_digest: the time taken does not tell how much of a guessed key was right.
            if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(),
                                                                     self.config.api_key.encode()):
                return error_response(401, "missing or wrong API key: send 'Authorization: Bearer <key>'", None,
                                      "invalid_api_key", {"WWW-Authenticate": "Bearer"})
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.config.max_body_bytes:
            return _too_large(self.config).response()
        return None

    def _limited(self, receive):
        """`receive`, raising _BodyTooLarge once when the body passes the limit; after that, the route reads the
        rest through it (`_drain`) to throw it away."""
        received = 0
        raised = False

        async def receive_within_limit():
            nonlocal received, raised
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.config.max_body_bytes and not raised:
                    raised = True
                    raise _BodyTooLarge
            return message
        return receive_within_limit


class Server:
    """The routes, over one BatchingTranscriber and one temporary folder for uploads, both made at startup and
    removed at shutdown (after the queue is decoded)."""

    def __init__(self, recognizer, config: ServeConfig, decoder=None, model_created: int | None = None):
        self.config = config
        self.model_created = model_created if model_created is not None else int(time.time())
        self.recognizer = recognizer
        self.metrics = Metrics()
        self.transcriber = BatchingTranscriber(recognizer, config, decoder, self.metrics)
        self.upload_dir: Path | None = None
        # The picture needs the features and posteriors the model computes, which an exported graph keeps inside.
        self.can_plot = recognizer.exposes_features
        # Pictures are drawn on Starlette's thread pool, one at a time: matplotlib takes a CPU for a second or so,
        # and the inference thread should keep the others.
        self._plotting = asyncio.Semaphore(1)

    def app(self):
        """The ASGI application: Starlette's routes behind the gate (API key, body limit, request metrics)."""
        middleware = []
        if self.config.cors_origins:
            middleware.append(Middleware(CORSMiddleware, allow_origins=self.config.cors_origins,
                                         allow_methods=["GET", "POST"],
                                         allow_headers=["Authorization", "Content-Type"]))
        routes = [
            Route("/v1/audio/transcriptions", self.transcriptions, methods=["POST"]),
            Route("/v1/audio/plot", self.plot, methods=["POST"]),
            Route("/v1/models", self.models, methods=["GET"]),
            Route("/v1/models/{model_id:path}", self.model, methods=["GET"]),
            Route("/healthz", self.healthz, methods=["GET"]),
            Route("/metrics", self.prometheus, methods=["GET"]),
            Route("/", self.page, methods=["GET"]),
            Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
        ]
        app = Starlette(routes=routes, middleware=middleware, lifespan=self._lifespan,
                        exception_handlers={404: self._not_found, 405: self._not_allowed})
        return _Gate(app, self.config, self.metrics)

    @contextlib.asynccontextmanager
    async def _lifespan(self, app):
        self.upload_dir = Path(tempfile.mkdtemp(prefix="asr-serve-"))
        self.transcriber.start()
        log.info("serving %s; uploads in %s", self.config.model_name, self.upload_dir)
        try:
            yield
        finally:
            # uvicorn ends the lifespan once in-flight requests are answered (or its graceful timeout is over).
            await run_in_threadpool(self.transcriber.close)
            shutil.rmtree(self.upload_dir, ignore_errors=True)
            self.metrics.process_exited()

    # -- routes

    async def transcriptions(self, request: Request) -> Response:
        return await self._answer(request, plot=False)

    async def plot(self, request: Request) -> Response:
        """The picture `asr transcribe --plot-dir` draws (asr.plot), of the recording of a transcription request's form:
        features, CTC posteriors, and the words over the waveform, as a PNG."""
        return await self._answer(request, plot=True)

    async def _answer(self, request: Request, plot: bool) -> Response:
        try:
            if self.transcriber.full:  # refused before the upload is read: the cheapest way to shed load
                raise _busy(self.transcriber.retry_after())
            if not request.headers.get("content-type", "").startswith("multipart/form-data"):
                raise RequestError(400, "expected a multipart/form-data body with the recording in a file field "
                                        "named 'file'", "file", "invalid_content_type")
            async with request.form(max_files=1, max_fields=len(KNOWN_FIELDS) + 8) as form:
                parsed = parse_transcription_form(form)
                if plot and not self.can_plot:
                    raise RequestError(400, "this server holds an ONNX graph, which keeps the features and "
                                            "posteriors the picture shows inside: serve the model file it was "
                                            "exported from to draw it", None, "plot_unavailable")
                transcript, picture = await self._transcribe(parsed.upload, plot)
                if plot:
                    return Response(picture, media_type="image/png")
                return transcription_response(transcript, parsed, self.config.language)
        except _BodyTooLarge:
            await _drain(request.receive, REFUSED_BODY_DRAIN_BYTES)
            return _too_large(self.config).response()
        except HTTPException as error:  # Starlette's answer to a multipart body it cannot parse
            return error_response(error.status_code, f"malformed multipart body: {error.detail}", "file",
                                  "invalid_multipart")
        except RequestError as error:
            return error.response()
        except Exception as error:  # noqa: BLE001 - the model failed: still an answer in OpenAI's shape
            log.exception("transcription failed")
            return error_response(500, f"the model failed on this recording: {error}", None, "server_error")

    async def _transcribe(self, upload: UploadFile, plot: bool = False) -> tuple[Transcript, bytes | None]:
        """The upload's transcript, and with `plot` its picture (PNG bytes)."""
        name = Path(upload.filename or "").name or "the upload"
        # The client's file name never becomes a path: only a known extension is kept, for decoders that go by it.
        suffix = Path(name).suffix.lower()
        handle, temporary = tempfile.mkstemp(suffix=suffix if suffix in AUDIO_EXTENSIONS else "",
                                             dir=self.upload_dir)
        path = Path(temporary)
        try:
            with os.fdopen(handle, "wb") as out:
                await run_in_threadpool(shutil.copyfileobj, upload.file, out, 1 << 20)
            try:
                duration, wave = await run_in_threadpool(self._read, path)
                future = self.transcriber.submit(duration, wave, None if wave is not None else path)
                transcript = await asyncio.wrap_future(future)
                picture = await self._picture(transcript, name, path, wave) if plot else None
                return transcript, picture
            except AudioError as error:
                raise audio_request_error(name, error) from None
            except QueueFull as error:
                raise _busy(error.retry_after) from None
        finally:
            path.unlink(missing_ok=True)

    async def _picture(self, transcript: Transcript, name: str, path: Path, wave: np.ndarray | None) -> bytes:
        """asr.plot's picture of the upload (its first asr.plot.MAX_SECONDS), titled with the client's file name."""
        import torch

        from asr.plot import plot_transcript  # matplotlib: imported with the first picture

        out = path.parent / (path.name + ".png")
        audio = torch.from_numpy(wave) if wave is not None else path
        try:
            async with self._plotting:
                await run_in_threadpool(plot_transcript, self.recognizer, audio, replace(transcript, audio=name), out)
            return out.read_bytes()
        finally:
            out.unlink(missing_ok=True)

    def _read(self, path: Path) -> tuple[float, np.ndarray | None]:
        """(duration, samples) of a recording up to a window long, (duration, None) of a longer one (it is read
        window by window when its turn comes); AudioError for a file that is not usable audio."""
        info = audio_info(path)
        if info.frames == 0:
            raise AudioError(path, "no audio samples")
        if info.duration > self.config.chunk_seconds:
            return info.duration, None
        wave = load_samples(path)
        return wave.size / SAMPLE_RATE, wave

    def _model_card(self) -> dict:
        return {"id": self.config.model_name, "object": "model", "created": self.model_created, "owned_by": "asr"}

    async def models(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [self._model_card()]})

    async def model(self, request: Request) -> Response:
        if request.path_params["model_id"] != self.config.model_name:
            return error_response(404, f"no model '{request.path_params['model_id']}': this server holds "
                                       f"'{self.config.model_name}'", "model", "model_not_found")
        return JSONResponse(self._model_card())

    async def healthz(self, request: Request) -> Response:
        # pid: which worker process answered, with asr serve --workers.
        return JSONResponse({"status": "ok", "model": self.config.model_name, "queue": self.transcriber.depth,
                             "api_key_required": bool(self.config.api_key), "plot": self.can_plot,
                             "pid": os.getpid()})

    async def prometheus(self, request: Request) -> Response:
        return Response(self.metrics.exposition(), media_type=prometheus_client.CONTENT_TYPE_LATEST)

    async def page(self, request: Request) -> Response:
        return FileResponse(STATIC_DIR / "index.html", headers=_PAGE_HEADERS)

    async def _not_found(self, request: Request, exc) -> Response:
        return error_response(404, f"no such endpoint: {request.method} {request.url.path}", None, "not_found")

    async def _not_allowed(self, request: Request, exc) -> Response:
        return error_response(405, f"{request.method} is not allowed on {request.url.path}", None,
                              "method_not_allowed")


# The page loads nothing from elsewhere: a browser refuses any script, style or connection not from this server.
_PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; connect-src 'self' blob:; img-src 'self' data: blob:; "
                               "media-src 'self' blob:; "
                               "object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
}


def make_app(model: str | Path, config: ServeConfig, device: str | None = None, threads: int | None = None,
             quantize: str | None = None):
    """The ASGI application serving the model file `model`, loaded by asr.backend.load_model (`device` None: cuda
    when available)."""
    recognizer = load_model(model, device, threads=threads, quantize=quantize)
    return Server(recognizer, config, model_created=int(os.path.getmtime(model))).app()


def serve(model: str | Path, config: ServeConfig, device: str | None = None, threads: int | None = None,
          quantize: str | None = None, host: str = "127.0.0.1", port: int = 8000, workers: int = 1,
          shutdown_timeout: float = 30.0, access_log: bool = False) -> None:
    """Serve the model file `model` until SIGINT or SIGTERM (see run_server), in this process or in `workers`
    processes, each loading its own copy of the model."""
    if workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {workers}")
    if workers == 1:
        app = make_app(model, config, device, threads, quantize)
    else:
        # Loading the model here first, on the CPU, and dropping it, makes a bad model file an error of this command
        # rather than of every worker.
        load_model(model, "cpu", threads=threads, quantize=quantize)
        os.environ[WORKER_SETTINGS_ENV] = json.dumps({"model": str(model), "config": asdict(config), "device": device,
                                                      "threads": threads, "quantize": quantize})
        app = f"{__name__}:worker_app"
    run_server(app, host, port, workers, shutdown_timeout=shutdown_timeout, access_log=access_log)


def run_server(app, host: str = "127.0.0.1", port: int = 8000, workers: int = 1, shutdown_timeout: float = 30.0,
               access_log: bool = False) -> None:
    """Serve until SIGINT or SIGTERM. `app`: an ASGI application (`Server.app()`), or, for `workers` > 1, the import
    string of a function that makes one ("module:function"), which uvicorn calls in each of its worker processes:
    each loads its own copy of the model and runs its own batching queue; the processes share the listening socket,
    and the kernel hands each new connection to one of them.

    On SIGINT or SIGTERM uvicorn stops accepting connections and answers the requests in flight (for at most
    `shutdown_timeout` seconds), then the transcriber decodes what is left and stops; with workers, uvicorn's parent
    process sends each worker SIGTERM and waits for them all. Their metrics are kept in a temporary folder they share
    (PROMETHEUS_MULTIPROC_DIR, see Metrics), removed at the end."""
    import uvicorn

    options = dict(host=host, port=port, access_log=access_log, timeout_graceful_shutdown=shutdown_timeout,
                   server_header=False)
    if workers == 1:
        uvicorn.run(app, **options)
        return
    if not isinstance(app, str):
        raise ConfigError("several workers need the application as an import string of a function that makes it")
    with tempfile.TemporaryDirectory(prefix="asr-workers-") as run_dir:
        # The workers are started with multiprocessing's spawn: they inherit the environment, and prometheus_client
        # reads the variable when they import it.
        metrics_dir, failure = Path(run_dir, "metrics"), Path(run_dir, "worker-failure")
        metrics_dir.mkdir()
        variables = {"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir), WORKER_FAILURE_ENV: str(failure)}
        os.environ.update(variables)
        try:
            uvicorn.run(app, factory=True, workers=workers, **options)
        finally:
            for name in variables:
                del os.environ[name]
        if failure.exists():
            raise AsrError(f"a worker could not start, so the server stopped: {failure.read_text()}")


def worker_app():
    """uvicorn's application factory in each worker process of `serve`: the application of the settings the parent
    left in the environment (WORKER_SETTINGS_ENV), with its own copy of the model. Should it fail (a device that is
    not there, memory), the error is left for the parent, which reports it, and the worker exits with uvicorn's
    startup-failure status, on which uvicorn's parent stops the others instead of starting the worker again and
    again."""
    from uvicorn.config import STARTUP_FAILURE

    settings = json.loads(os.environ[WORKER_SETTINGS_ENV])
    try:
        return make_app(settings["model"], ServeConfig(**settings["config"]), settings["device"], settings["threads"],
                        settings["quantize"])
    except Exception as error:  # noqa: BLE001 - any failure to start: reported by the parent
        log.exception("this worker could not start")
        Path(os.environ[WORKER_FAILURE_ENV]).write_text(str(error), encoding="utf-8")
        raise SystemExit(STARTUP_FAILURE) from None
