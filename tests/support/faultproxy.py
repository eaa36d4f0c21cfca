"""A fault-injecting reverse proxy in front of the S3 server, for storage tests.

Requests pass through to the real server unless a rule says otherwise: answer 503 SlowDown,
drop the connection before or after forwarding (the write happened, the answer is lost), add
latency, or answer 403 InvalidAccessKeyId for an access key other than the expected one (moto
does not check signatures, so this gives credential errors a real HTTP path).
"""

from __future__ import annotations

import http.client
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

S3_ERROR = (
    '<?xml version="1.0" encoding="UTF-8"?>'
    "<Error><Code>{code}</Code><Message>{message}</Message></Error>"
)


@dataclass
class Faults:
    every_503: int = 0  # every Nth request answers 503 SlowDown
    every_drop: int = 0  # every Nth request: forwarded, then the connection dropped
    latency_s: float = 0.0
    fail_path: str | None = None  # requests whose path contains this always get 503
    access_key: str | None = None  # other access keys get 403 InvalidAccessKeyId
    counts: dict = field(default_factory=lambda: {"requests": 0, "503": 0, "dropped": 0})


class FaultProxy:
    def __init__(self, upstream: str, faults: Faults) -> None:
        self.faults = faults
        target = urlsplit(upstream)
        lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def _reply_error(self, status: int, code: str) -> None:
                body = S3_ERROR.format(code=code, message=code).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                with lock:
                    faults.counts["requests"] += 1
                    n = faults.counts["requests"]
                if faults.latency_s:
                    time.sleep(faults.latency_s)
                auth = self.headers.get("Authorization", "")
                key = re.search(r"Credential=([^/]+)/", auth)
                if faults.access_key and (not key or key.group(1) != faults.access_key):
                    return self._reply_error(403, "InvalidAccessKeyId")
                if (faults.fail_path and faults.fail_path in self.path) or (
                    faults.every_503 and n % faults.every_503 == 0
                ):
                    faults.counts["503"] += 1
                    return self._reply_error(503, "SlowDown")
                conn = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                headers["Host"] = target.netloc
                conn.request(self.command, self.path, body=body, headers=headers)
                upstream = conn.getresponse()
                data = upstream.read()
                if faults.every_drop and n % faults.every_drop == 0:
                    faults.counts["dropped"] += 1
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return None
                self.send_response(upstream.status)
                skip = {"transfer-encoding", "connection"}
                if self.command != "HEAD":  # HEAD keeps the object's own length
                    skip.add("content-length")
                    self.send_header("Content-Length", str(len(data)))
                for name, value in upstream.getheaders():
                    if name.lower() not in skip:
                        self.send_header(name, value)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()
                return None

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FaultProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
