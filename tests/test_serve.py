"""`asr serve` as its users meet it: a real uvicorn server (`python -m asr serve`) on a free port of 127.0.0.1,
spoken to by the official `openai` package and by plain HTTP, with a digits model trained on real FSDD recordings.

Every answer is checked against its own recording: the digits spoken in it, and the transcript the library gives
the same file offline (asr.transcribe.transcribe_file), so that an answer swapped between concurrent requests or a
batch padded wrongly shows.
"""
import concurrent.futures
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import jiwer
import numpy as np
import openai
import pytest
import soundfile
from bad_inputs.corpus import AUDIO_CASES
from prometheus_client.parser import text_string_to_metric_families

import asr
from asr.audio import SAMPLE_RATE, load_samples
from asr.plot import plot_transcript
from asr.serve import BatchingTranscriber, ServeConfig
from asr.transcribe import format_srt, format_vtt, transcribe_file

pytest_plugins = ["bad_inputs.fixtures", "digits_model"]

REPO = Path(__file__).resolve().parents[1]
API_KEY = "s3cret-" + uuid.uuid4().hex


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    """`python -m asr serve` in a subprocess, ready once /healthz answers."""

    def __init__(self, model, *flags, env=None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.TemporaryFile("w+")  # a pipe nobody reads could fill and stall the server
        self.process = subprocess.Popen(
            [sys.executable, "-m", "asr", "serve", "--model", str(model), "--port", str(self.port), "--threads", "1",
             *map(str, flags)], stdout=self.log, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, **(env or {})}, cwd=REPO)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"asr serve exited with {self.process.returncode}:\n{self.output()}")
            try:
                urllib.request.urlopen(self.url + "/healthz", timeout=1).read()
                return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise AssertionError("asr serve did not answer /healthz within 120 s")

    def client(self, api_key="unused", **options):
        return openai.OpenAI(base_url=self.url + "/v1", api_key=api_key, max_retries=0, **options)

    def stop(self) -> str:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.output()

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read()


@pytest.fixture(scope="module")
def model(digits_model):
    return asr.load_model(digits_model.model)


@pytest.fixture(scope="module")
def onnx_model_file(digits_model, tmp_path_factory):
    from asr.cli import main

    path = tmp_path_factory.mktemp("onnx") / "digits.onnx"
    assert main(["export", "--model", str(digits_model.model), "--out", str(path)]) == 0
    return path


@pytest.fixture(scope="module")
def server(digits_model):
    # Windows of 6 s: the model heard utterances of up to 3.5 s, and a window as long as that, not 30 s. Batches
    # wait 20 ms to fill, so that concurrent requests are batched even when the model is quick.
    served = Server(digits_model.model, "--max-upload-mb", 2, "--model-name", "digits", "--chunk-seconds", 6,
                    "--overlap-seconds", 2, "--max-wait-ms", 20)
    yield served
    served.stop()


@pytest.fixture(scope="module")
def onnx_server(onnx_model_file):
    served = Server(onnx_model_file, "--api-key", API_KEY, "--cors-origin", "https://app.example")
    yield served
    served.stop()


@pytest.fixture(scope="module")
def distinct(digits_model):
    """50 recordings, each of a different digit string."""
    by_text = {}
    for utterance in digits_model.utterances:
        by_text.setdefault(utterance.text, utterance)
    assert len(by_text) >= 50
    return list(by_text.values())[:50]


def post(url, fields=(), files=(), headers=None, body=None):
    """POST a multipart form by hand (fields: (name, value); files: (name, filename, bytes)), or a raw body;
    returns (status, headers, body bytes). Lets a test send what no client library would."""
    boundary = uuid.uuid4().hex
    if body is None:
        parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
                 for name, value in fields]
        parts += [f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                  f'Content-Type: application/octet-stream\r\n\r\n'.encode() + data + b"\r\n"
                  for name, filename, data in files]
        body = b"".join(parts) + f"--{boundary}--\r\n".encode()
        headers = {"Content-Type": f"multipart/form-data; boundary={boundary}", **(headers or {})}
    request = urllib.request.Request(url, data=body, headers=headers or {}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


def transcribe_post(server, path, *fields, headers=None):
    return post(server.url + "/v1/audio/transcriptions", [("model", "digits"), *fields],
                [("file", Path(path).name, Path(path).read_bytes())], headers)


def assert_openai_error(status_body, status, param, code, *words):
    got_status, _, body = status_body
    assert got_status == status, body
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["param"], error["code"]) == (param, code), error
    assert error["type"] == ("invalid_request_error" if status < 500 else "server_error")
    for word in words:
        assert word in error["message"], error["message"]
    return error


def metrics(server, api_key=None):
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    text = urllib.request.urlopen(urllib.request.Request(server.url + "/metrics", headers=headers)).read().decode()
    return {sample.name + json.dumps(sample.labels, sort_keys=True) if sample.labels else sample.name: sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


# ----------------------------------------------------------------------------------------------------------------
# The OpenAI API, through the openai package


def test_the_openai_client_gets_every_response_format_of_its_own_recording(server, digits_model, model):
    client = server.client()
    utterance = next(u for u in digits_model.utterances if len(u.text.split()) == 3)
    offline = transcribe_file(model, utterance.audio)
    assert offline.text == utterance.text  # the model knows these digits

    def create(**options):
        with open(utterance.audio, "rb") as audio:
            return client.audio.transcriptions.create(file=audio, model="digits", **options)

    assert create().text == utterance.text
    assert create(response_format="json").text == utterance.text
    assert create(response_format="text").strip() == utterance.text
    assert create(response_format="srt").strip() == format_srt(offline).strip()
    assert create(response_format="vtt").strip() == format_vtt(offline).strip()
    verbose = create(response_format="verbose_json", timestamp_granularities=["word", "segment"],
                     language="en", prompt="digits")  # accepted and ignored
    assert verbose.text == utterance.text and verbose.language == "english"
    assert verbose.duration == pytest.approx(utterance.duration, abs=1e-3)
    assert [(w.word, w.start, w.end) for w in verbose.words] == \
        [(w.word, round(w.start, 3), round(w.end, 3)) for w in offline.words]
    assert [w.confidence for w in verbose.words] == pytest.approx([w.confidence for w in offline.words], abs=1e-4)
    assert " ".join(s.text for s in verbose.segments) == utterance.text
    assert verbose.segments[0].start == verbose.words[0].start and verbose.segments[-1].end == verbose.words[-1].end
    segments_only = create(response_format="verbose_json")  # OpenAI's default granularity: segments, no words
    assert segments_only.words is None and segments_only.segments


def test_models_lists_the_one_model(server, digits_model):
    client = server.client()
    assert [m.id for m in client.models.list().data] == ["digits"]
    assert client.models.retrieve("digits").created == int(os.path.getmtime(digits_model.model))
    with pytest.raises(openai.NotFoundError, match="no model 'whisper-1'"):
        client.models.retrieve("whisper-1")


def test_fifty_concurrent_requests_each_get_their_own_transcript_in_batches(server, distinct):
    client = server.client()
    before = metrics(server)

    def ask(utterance):
        with open(utterance.audio, "rb") as audio:
            return client.audio.transcriptions.create(file=audio, model="digits", response_format="verbose_json")

    with concurrent.futures.ThreadPoolExecutor(len(distinct)) as pool:
        answers = list(pool.map(ask, distinct))
    assert [a.text for a in answers] == [u.text for u in distinct]
    assert [a.duration for a in answers] == pytest.approx([u.duration for u in distinct], abs=1e-3)
    after = metrics(server)
    batches = after["asr_batch_size_count"] - before.get("asr_batch_size_count", 0)
    decoded = after["asr_batch_size_sum"] - before.get("asr_batch_size_sum", 0)
    assert decoded == len(distinct)
    assert batches < len(distinct)  # some requests were decoded together
    assert after["asr_audio_seconds_total"] - before.get("asr_audio_seconds_total", 0) == \
        pytest.approx(sum(u.duration for u in distinct), abs=0.01)


def test_a_long_upload_is_decoded_in_windows_like_the_library_does(server, digits_model, model, tmp_path):
    # 20 s: over the server's 6 s window, so it reads the file window by window (written at 8 kHz to stay small).
    pieces, words = [], []
    noise = np.random.default_rng(0).standard_normal(SAMPLE_RATE // 4).astype(np.float32) * 10 ** (-75 / 20)
    for utterance in digits_model.utterances:
        pieces += [load_samples(utterance.audio), noise]
        words += utterance.text.split()
        if sum(p.size for p in pieces) > 20 * SAMPLE_RATE:
            break
    path = tmp_path / "long.wav"
    soundfile.write(path, np.concatenate(pieces), SAMPLE_RATE, subtype="PCM_16")
    soundfile.write(path, load_samples(path, 8000), 8000, subtype="PCM_16")
    offline = transcribe_file(model, path, chunk_seconds=6, overlap_seconds=2)
    with open(path, "rb") as audio:
        answer = server.client().audio.transcriptions.create(file=audio, model="digits",
                                                             response_format="verbose_json",
                                                             timestamp_granularities=["word"])
    assert answer.duration > 20
    assert answer.text == offline.text
    assert [(w.word, w.start) for w in answer.words] == [(w.word, round(w.start, 3)) for w in offline.words]
    assert jiwer.wer(" ".join(words), answer.text) <= 0.2  # windows of a model trained on short utterances
    # Its picture is drawn from the file, as asr transcribe --plot-dir draws a long recording's.
    status, _, body = post(server.url + "/v1/audio/plot", [("model", "digits")],
                           [("file", "long.wav", path.read_bytes())])
    assert status == 200
    plot_transcript(model, path, offline, tmp_path / "offline.png")
    assert np.abs(png_pixels(body) - png_pixels((tmp_path / "offline.png").read_bytes())).mean() < 1e-3


# ----------------------------------------------------------------------------------------------------------------
# Bad input: a 4xx in OpenAI's error shape naming the problem; the server keeps serving


UPLOADABLE_BAD_AUDIO = [case for case in AUDIO_CASES if not case.readable and case.problem not in
                        ("is a directory", "file not found")]


@pytest.mark.parametrize("case", UPLOADABLE_BAD_AUDIO, ids=lambda case: case.name)
def test_an_unusable_recording_gets_a_400_naming_it_and_the_problem(server, bad_corpus, case):
    error = assert_openai_error(transcribe_post(server, bad_corpus.audio[case.name]), 400, "file",
                                {"truncated or corrupt": "corrupt_audio", "empty file (0 bytes)": "empty_file",
                                 "no audio samples": "empty_audio", "not an audio file": "invalid_file_format",
                                 "contains NaN or infinite samples": "invalid_samples"}[case.problem],
                                case.name, case.problem)
    assert "/tmp" not in error["message"]  # the server's temporary path is not the client's business


def test_bad_requests_get_a_400_naming_the_field(server, distinct):
    url = server.url + "/v1/audio/transcriptions"
    audio = Path(distinct[0].audio).read_bytes()
    good_file = [("file", "one.wav", audio)]
    assert_openai_error(post(url, [("model", "digits")]), 400, "file", "missing_file", "'file'")
    assert_openai_error(post(url, [("model", "digits")], [("audio", "one.wav", audio)]), 400, "audio",
                        "unknown_parameter", "'audio'", "goes in 'file'")
    assert_openai_error(post(url, [("model", "digits"), ("file", "one.wav")]), 400, "file", "invalid_file",
                        "file upload")
    assert_openai_error(post(url, [], good_file), 400, "model", "missing_model", "'model'")
    assert_openai_error(post(url, [("model", "digits"), ("response_format", "diarized_json")], good_file), 400,
                        "response_format", "unsupported_value", "diarized_json", "verbose_json")
    assert_openai_error(post(url, [("model", "digits"), ("response_format", "verbose_json"),
                                   ("timestamp_granularities[]", "sentence")], good_file), 400,
                        "timestamp_granularities", "unsupported_value", "sentence")
    assert_openai_error(post(url, [("model", "digits"), ("timestamp_granularities[]", "word")], good_file), 400,
                        "timestamp_granularities", "invalid_value", "verbose_json")
    assert_openai_error(post(url, [("model", "digits"), ("temperature", "warm")], good_file), 400, "temperature",
                        "invalid_value", "warm")
    assert_openai_error(post(url, [("model", "digits"), ("stream", "true")], good_file), 400, "stream",
                        "unsupported_value", "streaming")
    assert_openai_error(post(url, [("model", "digits")], good_file * 2), 400, "file", "invalid_multipart")
    assert_openai_error(post(url, body=b'{"file": "one.wav"}', headers={"Content-Type": "application/json"}), 400,
                        "file", "invalid_content_type", "multipart/form-data")
    truncated = post(url, body=b"--x\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n\r\nRIFF",
                     headers={"Content-Type": "multipart/form-data; boundary=x"})
    assert truncated[0] == 400 and json.loads(truncated[2])["error"]["param"] == "file"  # a body cut off mid-part
    status, _, body = transcribe_post(server, distinct[0].audio)  # and the server goes on serving
    assert status == 200 and json.loads(body)["text"] == distinct[0].text


def test_bad_uploads_among_concurrent_good_ones_leave_the_good_answers_right(server, bad_corpus, distinct):
    bad = [bad_corpus.audio[case.name] for case in UPLOADABLE_BAD_AUDIO]
    jobs = [("good", u.audio, u.text) for u in distinct[:12]] + [("bad", path, path.name) for path in bad]
    jobs = [jobs[i] for i in np.random.default_rng(0).permutation(len(jobs))]
    with concurrent.futures.ThreadPoolExecutor(len(jobs)) as pool:
        answers = list(pool.map(lambda job: transcribe_post(server, job[1]), jobs))
    for (kind, _, expected), (status, _, body) in zip(jobs, answers):
        if kind == "good":
            assert (status, json.loads(body)["text"]) == (200, expected)
        else:
            assert status == 400 and expected in json.loads(body)["error"]["message"]


def test_a_failing_batch_is_decoded_again_one_by_one_so_only_the_bad_recording_fails(model, distinct):
    # A waveform of two channels fails the whole batch's decoding: the others must still get their transcripts.
    transcriber = BatchingTranscriber(model, ServeConfig(max_wait_ms=0))
    waves = [load_samples(u.audio) for u in distinct[:3]]
    futures = [transcriber.submit(w.size / SAMPLE_RATE, w) for w in waves[:2]]
    futures.append(transcriber.submit(1.0, np.zeros((2, SAMPLE_RATE), np.float32)))
    futures.append(transcriber.submit(waves[2].size / SAMPLE_RATE, waves[2]))
    transcriber.start()  # all four queued: one batch
    transcriber.close()
    assert [f.result().text for i, f in enumerate(futures) if i != 2] == [u.text for u in distinct[:3]]
    assert "1-D waveform" in str(futures[2].exception())


def test_an_upload_over_the_limit_gets_413(server, tmp_path):
    big = tmp_path / "big.wav"
    soundfile.write(big, np.zeros(3 * 2**20 // 2, np.int16), SAMPLE_RATE, subtype="PCM_16")  # 3 MiB > 2 MiB
    assert_openai_error(transcribe_post(server, big), 413, "file", "file_too_large", "2 MiB", "--max-upload-mb")
    with pytest.raises(openai.APIStatusError) as raised, open(big, "rb") as audio:
        server.client().audio.transcriptions.create(file=audio, model="digits")
    assert raised.value.status_code == 413
    # Without Content-Length (chunked), the limit is checked as the body arrives.
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    boundary = "b0undary"
    head = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.wav"\r\n\r\n').encode()
    chunks = [head] + [b"\0" * 2**16] * 48 + [f"\r\n--{boundary}--\r\n".encode()]
    try:
        connection.request("POST", "/v1/audio/transcriptions", body=iter(chunks), encode_chunked=True,
                           headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        response = connection.getresponse()
        assert response.status == 413 and json.loads(response.read())["error"]["code"] == "file_too_large"
    except (BrokenPipeError, ConnectionResetError):
        pytest.fail("the server closed the connection instead of answering 413")
    finally:
        connection.close()


# ----------------------------------------------------------------------------------------------------------------
# An exported model, the API key, CORS


def test_an_onnx_model_behind_an_api_key_answers_as_the_model_file_does(onnx_server, server, distinct):
    with pytest.raises(openai.AuthenticationError, match="API key"):
        with open(distinct[0].audio, "rb") as audio:
            onnx_server.client(api_key="wrong").audio.transcriptions.create(file=audio, model="digits")
    assert_openai_error(transcribe_post(onnx_server, distinct[0].audio), 401, None, "invalid_api_key", "Bearer")
    assert_openai_error(transcribe_post(onnx_server, distinct[0].audio, headers={"Authorization": API_KEY}), 401,
                        None, "invalid_api_key")  # the key without "Bearer"
    with pytest.raises(urllib.error.HTTPError, match="401"):
        urllib.request.urlopen(onnx_server.url + "/metrics")
    assert json.loads(urllib.request.urlopen(onnx_server.url + "/healthz").read())["api_key_required"] is True

    client, reference = onnx_server.client(api_key=API_KEY), server.client()
    for utterance in distinct[:5]:
        with open(utterance.audio, "rb") as audio:
            ours = client.audio.transcriptions.create(file=audio, model="digits", response_format="verbose_json",
                                                      timestamp_granularities=["word"])
        with open(utterance.audio, "rb") as audio:
            theirs = reference.audio.transcriptions.create(file=audio, model="digits",
                                                           response_format="verbose_json",
                                                           timestamp_granularities=["word"])
        assert ours.text == theirs.text == utterance.text
        assert [t for w in ours.words for t in (w.start, w.end)] == \
            pytest.approx([t for w in theirs.words for t in (w.start, w.end)], abs=0.081)  # a frame
    assert metrics(onnx_server, API_KEY)['asr_requests_total{"endpoint": "transcriptions", "status": "401"}'] == 3


def test_cors_headers_only_for_the_origins_asked_for(onnx_server, server):
    def preflight(url, origin):
        request = urllib.request.Request(url + "/v1/audio/transcriptions", method="OPTIONS", headers={
            "Origin": origin, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization"})
        try:
            with urllib.request.urlopen(request) as response:
                return response.headers
        except urllib.error.HTTPError as error:
            return error.headers

    assert preflight(onnx_server.url, "https://app.example")["Access-Control-Allow-Origin"] == "https://app.example"
    assert "Access-Control-Allow-Origin" not in preflight(onnx_server.url, "https://evil.example")
    assert "Access-Control-Allow-Origin" not in preflight(server.url, "https://app.example")  # none unless asked


# ----------------------------------------------------------------------------------------------------------------
# The picture


def png_pixels(data: bytes) -> np.ndarray:
    import io

    from matplotlib.image import imread

    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return imread(io.BytesIO(data), format="png")


def test_the_plot_endpoint_answers_the_picture_asr_transcribe_plot_draws(server, digits_model, model, tmp_path):
    utterance = next(u for u in digits_model.utterances if len(u.text.split()) == 3)
    status, headers, body = post(server.url + "/v1/audio/plot", [("model", "digits")],
                                 [("file", Path(utterance.audio).name, Path(utterance.audio).read_bytes())])
    assert status == 200 and headers["Content-Type"] == "image/png"
    drawn = png_pixels(body)
    plot_transcript(model, utterance.audio, transcribe_file(model, utterance.audio), tmp_path / "offline.png")
    offline = png_pixels((tmp_path / "offline.png").read_bytes())
    assert drawn.shape == offline.shape and drawn.shape[1] >= 800
    # The same picture: the same features, posteriors and words, titled with the upload's name.
    assert np.abs(drawn - offline).mean() < 1e-3


def test_the_plot_endpoint_refuses_what_transcriptions_refuses_and_an_onnx_model(server, onnx_server, distinct):
    status_body = post(server.url + "/v1/audio/plot", [("model", "digits")],
                       [("file", "notes.txt", b"not audio at all" * 100)])
    assert_openai_error(status_body, 400, "file", "invalid_file_format", "notes.txt")
    assert healthz(server)["plot"] is True and healthz(onnx_server)["plot"] is False
    status_body = post(onnx_server.url + "/v1/audio/plot", [("model", "digits")],
                       [("file", "a.wav", Path(distinct[0].audio).read_bytes())],
                       {"Authorization": f"Bearer {API_KEY}"})
    assert_openai_error(status_body, 400, None, "plot_unavailable", "ONNX")
    # Behind the API key as the other /v1/ endpoints are.
    assert post(onnx_server.url + "/v1/audio/plot", [("model", "digits")],
                [("file", "a.wav", Path(distinct[0].audio).read_bytes())])[0] == 401


# ----------------------------------------------------------------------------------------------------------------
# Load: a full queue, metrics, shutdown


def test_a_full_queue_answers_503_with_retry_after(digits_model, distinct):
    # One request may wait, and the first waits 3 s for its batch to fill: the second finds the queue full.
    busy = Server(digits_model.model, "--max-queue", 1, "--max-wait-ms", 3000)
    try:
        first = concurrent.futures.ThreadPoolExecutor(1).submit(transcribe_post, busy, distinct[0].audio)
        deadline = time.monotonic() + 10
        while metrics(busy)["asr_queue_depth"] < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        status, headers, body = transcribe_post(busy, distinct[1].audio)
        assert_openai_error((status, headers, body), 503, None, "queue_full", "Retry-After")
        assert int(headers["Retry-After"]) >= 1
        status, _, body = first.result()
        assert status == 200 and json.loads(body)["text"] == distinct[0].text
    finally:
        busy.stop()


def test_metrics_count_requests_errors_audio_and_latency(server, distinct):
    before = metrics(server)
    for utterance in distinct[:3]:
        assert transcribe_post(server, utterance.audio)[0] == 200
    transcribe_post(server, Path(__file__))  # not audio: 400
    after = metrics(server)

    def grew(name):
        return after.get(name, 0) - before.get(name, 0)

    assert grew('asr_requests_total{"endpoint": "transcriptions", "status": "200"}') == 3
    assert grew('asr_request_errors_total{"endpoint": "transcriptions", "status": "400"}') == 1
    assert grew("asr_request_latency_seconds_count") == 4
    assert grew('asr_request_latency_seconds_bucket{"le": "+Inf"}') == 4
    assert grew("asr_audio_seconds_total") == pytest.approx(sum(u.duration for u in distinct[:3]), abs=1e-3)
    assert after["asr_queue_depth"] == 0


def test_sigterm_answers_the_requests_in_flight_then_exits_leaving_no_upload(digits_model, distinct, tmp_path):
    # The request waits 2 s for its batch to fill; SIGTERM comes meanwhile.
    temp = tmp_path / "tmp"
    temp.mkdir()
    served = Server(digits_model.model, "--max-wait-ms", 2000, env={"TMPDIR": str(temp)})
    try:
        in_flight = concurrent.futures.ThreadPoolExecutor(1).submit(transcribe_post, served, distinct[3].audio)
        deadline = time.monotonic() + 10
        while metrics(served)["asr_queue_depth"] < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert list(temp.glob("asr-serve-*/*")), "the upload waits in the server's temporary folder"
        served.process.send_signal(signal.SIGTERM)
        status, _, body = in_flight.result(timeout=30)
        assert status == 200 and json.loads(body)["text"] == distinct[3].text
        # uvicorn (0.29 and later) re-raises the signal once it has shut down: the status of a process it ended.
        assert served.process.wait(timeout=30) in (0, -signal.SIGTERM)
        with pytest.raises(OSError):
            urllib.request.urlopen(served.url + "/healthz", timeout=2)
        assert list(temp.iterdir()) == []  # the uploads' folder is gone
    finally:
        output = served.stop()
    assert f"Uvicorn running on http://127.0.0.1:{served.port}" in output  # this machine only, by default


@pytest.mark.parametrize("flags, problem", [(["--max-queue", "0"], "--max-queue must be at least 1"),
                                            (["--workers", "0"], "--workers must be at least 1"),
                                            (["--chunk-seconds", "4"], "--overlap-seconds < --chunk-seconds"),
                                            (["--api-key", ""], "the API key is empty")])
def test_asr_serve_refuses_bad_flags_before_loading_the_model(flags, problem, tmp_path, capsys):
    from asr.cli import main

    assert main(["serve", "--model", str(tmp_path / "never_read.pt"), *flags]) == 1
    assert problem in capsys.readouterr().err


def test_a_bad_model_file_with_workers_is_an_error_of_the_command_before_any_worker_starts(tmp_path, capsys):
    from asr.cli import main

    bad = tmp_path / "model.pt"
    bad.write_bytes(b"not a model")
    assert main(["serve", "--model", str(bad), "--workers", "2", "--port", str(free_port())]) == 1
    assert str(bad) in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------------------
# Several worker processes


@pytest.mark.slow
def test_a_worker_that_cannot_start_stops_the_server_with_its_error(digits_model):
    # The model file is good (the parent checks it on the CPU); the device is not there: each worker fails.
    finished = subprocess.run(
        [sys.executable, "-m", "asr", "serve", "--model", str(digits_model.model), "--port", str(free_port()),
         "--workers", "2", "--threads", "1", "--device", "cuda:99"], capture_output=True, text=True, timeout=120,
        cwd=REPO)
    assert finished.returncode == 1
    assert "asr serve: error: a worker could not start, so the server stopped: " in finished.stderr


def healthz(server) -> dict:
    return json.loads(urllib.request.urlopen(server.url + "/healthz", timeout=10).read())


def parent_pid(pid: int) -> int:
    # /proc/PID/stat: "pid (comm) state ppid ...", and comm may hold spaces: split after its closing parenthesis.
    return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])


@pytest.mark.slow
def test_two_workers_share_the_port_answer_each_request_count_metrics_together_and_drain_on_sigterm(
        digits_model, distinct, tmp_path):
    temp = tmp_path / "tmp"
    temp.mkdir()
    # Batches wait 1.5 s to fill: the requests are still in flight when SIGTERM comes.
    served = Server(digits_model.model, "--workers", 2, "--max-wait-ms", 1500, env={"TMPDIR": str(temp)})
    try:
        # Both workers answer on the one port (the second may still be loading its model when the first answers).
        def probe_both(at_least=1):
            pids, probes = set(), 0
            deadline = time.monotonic() + 90
            while (len(pids) < 2 or probes < at_least) and time.monotonic() < deadline:
                pids.add(healthz(served)["pid"])
                probes += 1
            assert len(pids) == 2, f"only worker {pids} answered {probes} probes"
            return pids, probes

        pids, _ = probe_both()
        assert {parent_pid(pid) for pid in pids} == {served.process.pid}
        # /metrics, whichever worker answers it, counts every worker's requests: between two readings, the probes
        # both workers answered.
        before = metrics(served)
        _, probes = probe_both(at_least=10)

        def ask(utterance):
            status, _, body = transcribe_post(served, utterance.audio)
            return status, json.loads(body)

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(ask, distinct[:8]))
        assert answers == [(200, {"text": u.text, "usage": {"type": "duration", "seconds": round(u.duration, 3)}})
                           for u in distinct[:8]]
        after = metrics(served)

        def grew(name):
            return after.get(name, 0) - before.get(name, 0)

        assert grew('asr_requests_total{"endpoint": "healthz", "status": "200"}') == probes
        assert grew('asr_requests_total{"endpoint": "transcriptions", "status": "200"}') == 8
        assert grew("asr_audio_seconds_total") == pytest.approx(sum(u.duration for u in distinct[:8]), abs=1e-3)
        assert after["asr_queue_depth"] == 0

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            in_flight = [pool.submit(ask, utterance) for utterance in distinct[8:16]]
            deadline = time.monotonic() + 10
            while len(list(temp.glob("asr-serve-*/*"))) < 8 and time.monotonic() < deadline:  # the 8 uploads
                time.sleep(0.05)
            served.process.send_signal(signal.SIGTERM)
            assert [future.result(timeout=30)[1]["text"] for future in in_flight] == [u.text for u in distinct[8:16]]
        assert served.process.wait(timeout=30) in (0, -signal.SIGTERM)
        assert not any(Path(f"/proc/{pid}").exists() for pid in pids)
        assert list(temp.iterdir()) == []  # the uploads' folders and the metrics' folder are gone
    finally:
        served.stop()
