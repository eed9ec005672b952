"""A local HTTP server for the download tests: serves bytes from memory, with Range support and faults to switch on."""
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class FileServer:
    """What the server serves and how; `requests` records every request it answered."""

    files: dict[str, bytes]  # URL path ("/12/test-clean.tar.gz") → body
    honour_range: bool = True  # False: answer every request with the whole file, as some servers do
    cut_next_response: bool = False  # send half of the next body, then close the connection
    requests: list[tuple[str, str | None]] = field(default_factory=list)  # (URL path, Range header)
    base_url: str = ""

    def url(self, path: str) -> str:
        return self.base_url + path


@contextmanager
def serve(files: dict[str, bytes], **behaviour) -> Iterator[FileServer]:
    """Run a server on 127.0.0.1 (a free port) for the duration of the `with` block."""
    state = FileServer(dict(files), **behaviour)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(state))
    state.base_url = f"http://127.0.0.1:{server.server_port}"
    # A short poll interval, so that shutting the server down does not keep every test waiting.
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _handler_for(state: FileServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            range_header = self.headers.get("Range")
            state.requests.append((self.path, range_header))
            body = state.files.get(self.path)
            if body is None:
                self.send_error(404)
                return
            start = 0
            if range_header is not None and state.honour_range:
                start = int(range_header.removeprefix("bytes=").removesuffix("-"))
                if start >= len(body):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(body)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            else:
                self.send_response(200)
            payload = body[start:]
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if state.cut_next_response:
                state.cut_next_response = False
                payload = payload[: len(payload) // 2]
                self.close_connection = True
            self.wfile.write(payload)

        def do_HEAD(self):  # the size, as a free-space check asks it (not recorded: no transfer)
            body = state.files.get(self.path)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()

        def log_message(self, format, *args):  # keep the test output quiet
            pass

    return Handler
