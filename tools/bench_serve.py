"""Throughput and latency of `asr serve` under load on 127.0.0.1, with dynamic batching on and off.

For each server setting (SETTINGS: batched, the defaults; waiting, --max-wait-ms 10; unbatched, --max-batch-seconds
0) it starts `python -m asr serve`,
sends a few warm-up requests, then for each number of concurrent clients sends a fixed number of requests (each
client one at a time over its own keep-alive connection, the recordings taken in turn) and prints requests/s, audio
seconds/s and the 50th/95th/99th latency percentiles as a markdown table. Bounded in count (--requests per level)
and in time (--max-seconds per level: a level stops sending once over it, and says so). Settings take turns over
--rounds rounds; the medians are reported. With --workers N, one more setting, workers: N server processes
(`asr serve --workers N`) of one thread each, beside the others' one process of --threads threads: give --threads N
to compare them on the same cores.

    python tools/bench_serve.py --model exp/digits/model.pt
    python tools/bench_serve.py --model model.onnx --concurrency 1 8 32 --requests 256 --threads 1
    python tools/bench_serve.py --model exp/digits/model.pt --settings batched --threads 2 --workers 2

The clients are threads of this process, on the same machine as the server: on a small machine they take CPU
from it, the same for both settings.
"""
from __future__ import annotations

import argparse
import glob
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import soundfile

REPO = Path(__file__).resolve().parents[1]
# batched: the defaults (a batch is what queued while the model was busy); waiting: the oldest request also waits up
# to 10 ms for its batch to fill; unbatched: one request a batch.
SETTINGS = {"batched": [], "waiting": ["--max-wait-ms", "10"], "unbatched": ["--max-batch-seconds", "0"]}


def multipart(path: Path) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\nbench\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{path.name}"\r\n'
            f'Content-Type: audio/wav\r\n\r\n').encode() + path.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def start_server(model: str, flags: list[str], threads: int, workers: int = 1) -> tuple[subprocess.Popen, int]:
    """`asr serve` on a free port, once each of its `workers` processes answers /healthz."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen([sys.executable, "-m", "asr", "serve", "--model", model, "--port", str(port),
                                "--threads", str(threads), "--max-queue", "1024", *flags], cwd=REPO)
    deadline = time.monotonic() + 120
    pids = set()
    while time.monotonic() < deadline:
        try:
            pids.add(json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1).read())["pid"])
            if len(pids) == workers:
                return process, port
            time.sleep(0.02)
        except OSError:
            if process.poll() is not None:
                raise SystemExit(f"asr serve exited with {process.returncode}")
            time.sleep(0.2)
    process.kill()
    raise SystemExit("asr serve did not start in 120 s")


def run_level(port: int, bodies: list[tuple[bytes, str, float]], clients: int, requests: int,
              max_seconds: float) -> dict:
    """`requests` requests from `clients` concurrent clients; latencies in seconds."""
    latencies: list[float] = []
    audio = [0.0]
    failures: list[str] = []
    next_request = [0]
    lock = threading.Lock()
    started = time.perf_counter()

    def client():
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        while True:
            with lock:
                index = next_request[0]
                if index >= requests or time.perf_counter() - started > max_seconds:
                    break
                next_request[0] += 1
            body, content_type, seconds = bodies[index % len(bodies)]
            sent = time.perf_counter()
            connection.request("POST", "/v1/audio/transcriptions", body=body,
                               headers={"Content-Type": content_type})
            response = connection.getresponse()
            payload = response.read()
            elapsed = time.perf_counter() - sent
            with lock:
                if response.status == 200 and "text" in json.loads(payload):
                    latencies.append(elapsed)
                    audio[0] += seconds
                else:
                    failures.append(f"{response.status} {payload[:200]!r}")
        connection.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    if failures:
        raise SystemExit(f"{len(failures)} requests failed, e.g. {failures[0]}")
    quantiles = statistics.quantiles(latencies, n=100, method="inclusive") if len(latencies) > 1 else latencies * 99
    return {"clients": clients, "requests": len(latencies), "seconds": wall, "rps": len(latencies) / wall,
            "audio_per_s": audio[0] / wall, "p50": quantiles[49], "p95": quantiles[94], "p99": quantiles[98],
            "cut_short": len(latencies) < requests}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="model.pt or model.onnx")
    parser.add_argument("--audio", default=str(REPO.parent / "shared/data/fsdd/recordings/*_theo_*.wav"),
                        help="glob of the recordings sent, in turn (default: FSDD's 500 recordings of theo)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--requests", type=int, default=256, help="requests per concurrency level (default: 256)")
    parser.add_argument("--max-seconds", type=float, default=120.0,
                        help="stop sending at a level after this long (default: 120)")
    parser.add_argument("--threads", type=int, default=1, help="the server's --threads (default: 1)")
    parser.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    parser.add_argument("--workers", type=int, default=1,
                        help="over 1: also the setting 'workers', this many processes of one thread (default: 1)")
    parser.add_argument("--rounds", type=int, default=3, help="each setting's runs; medians are reported (default: 3)")
    args = parser.parse_args()
    # setting: (its flags, --threads, its processes)
    settings = {name: (SETTINGS[name], args.threads, 1) for name in args.settings}
    if args.workers > 1:
        settings["workers"] = (["--workers", str(args.workers)], 1, args.workers)

    paths = sorted(Path(p) for p in glob.glob(args.audio))
    if not paths:
        raise SystemExit(f"no recordings match {args.audio}")
    bodies = [(*multipart(path), soundfile.info(path).duration) for path in paths]
    mean_seconds = statistics.mean(seconds for _, _, seconds in bodies)
    print(f"{len(paths)} recordings ({mean_seconds:.2f} s on average) from {args.audio}; model {args.model}; "
          f"server --threads {args.threads}; {os.cpu_count()} CPUs\n")
    if args.workers > 1:
        print(f"workers: --workers {args.workers} --threads 1\n")
    runs: dict[tuple[str, int], list[dict]] = {}
    for round_number in range(args.rounds):
        # The settings take turns, in reverse order every other round, so that a slow spell of a shared machine
        # falls on all of them.
        for setting in list(settings)[::-1] if round_number % 2 else list(settings):
            process, port = start_server(args.model, *settings[setting])
            try:
                run_level(port, bodies, 4, 16, args.max_seconds)  # warm-up: first calls allocate and load
                for clients in args.concurrency:
                    runs.setdefault((setting, clients), []).append(
                        run_level(port, bodies, clients, args.requests, args.max_seconds))
            finally:
                process.terminate()
                process.wait(timeout=60)
    print(f"medians over {args.rounds} rounds\n")
    print("| setting | clients | requests | requests/s | audio s/s | p50 ms | p95 ms | p99 ms |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for (setting, clients), results in runs.items():
        median = {key: statistics.median(r[key] for r in results) for key in
                  ("rps", "audio_per_s", "p50", "p95", "p99")}
        note = " (time limit)" if any(r["cut_short"] for r in results) else ""
        print(f"| {setting} | {clients} | {results[0]['requests']}{note} | {median['rps']:.1f} | "
              f"{median['audio_per_s']:.1f} | {median['p50'] * 1000:.0f} | {median['p95'] * 1000:.0f} | "
              f"{median['p99'] * 1000:.0f} |")


if __name__ == "__main__":
    main()
