"""A local TLS stand-in of the few WML v4 REST endpoints the real client uses (test-only).

IBM Cloud cannot be reached from here, so the real `ibm-watson-machine-learning` client talks
to this server instead. It records every request, stores uploaded model-definition zips, and
lets a test move a training through its states (queued -> running -> completed or failed).
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import ssl
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit


def self_signed(dest: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key (trusted by the client via REQUESTS_CA_BUNDLE)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = dest / "wml.crt", dest / "wml.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


# What the specification lists hold (the names of WML on Cloud Pak for Data 5.x; Runtime 25.1's
# TensorFlow entry is one WML may offer, not confirmed).
SOFTWARE_SPECS = (
    "runtime-24.1-py3.11", "runtime-25.1-py3.12", "tensorflow_rt24.1-py3.11",
    "tensorflow_rt25.1-py3.12", "tensorflow_rt25.1-py3.12-edt", "pytorch-onnx_rt24.1-py3.11",
    "pytorch-onnx_rt25.1-py3.12", "autoai-kb_rt24.1-py3.11", "spss-modeler_18.2",
)  # fmt: skip
HARDWARE_SPECS = ("XXS", "XS", "S", "M", "L", "XL", "K80", "K80x2", "K80x4", "V100", "V100x2")


def spec_entry(name: str, kind: str, now: str) -> dict:
    asset = f"{kind}-{uuid.uuid5(uuid.NAMESPACE_DNS, name)}"
    python = name.rsplit("-py", 1)[1].split("-")[0] if "-py" in name else None
    entity = (
        {"software_specification": {
            "type": "base", "display_name": name,
            "software_configuration": {"platform": {"name": "python", "version": python}},
        }}
        if kind == "software_specification"
        else {"hardware_specification": {"nodes": {"num_nodes": 1}}}
    )  # fmt: skip
    return {
        "metadata": {"name": name, "asset_id": asset, "asset_type": kind, "created_at": now,
                     "href": f"/v2/{kind}s/{asset}", "description": f"{name} ({kind})"},
        "entity": entity,
    }  # fmt: skip


class WMLStandIn:
    def __init__(self, tmp: Path) -> None:
        self.software_specs = list(SOFTWARE_SPECS)
        self.hardware_specs = list(HARDWARE_SPECS)
        self.requests: list[dict] = []
        self.uploads: dict[str, bytes] = {}
        self.trainings: dict[str, dict] = {}
        self.assets: dict[str, dict] = {}
        self.space = ""
        self.cert, key = self_signed(tmp)
        standin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def reply(self, status: int, body: object | None = None) -> None:
                data = b"" if body is None else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def handle_any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                path = urlsplit(self.path).path
                entry = {"method": self.command, "path": path, "query": urlsplit(self.path).query}
                try:
                    entry["json"] = json.loads(raw) if raw else None
                except (ValueError, UnicodeDecodeError):
                    entry["json"] = None
                standin.requests.append(entry)
                status, body = standin.route(self.command, path, raw, self.headers)
                self.reply(status, body)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = handle_any

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert, key)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def set_state(self, training_id: str, state: str, message: str | None = None) -> None:
        status = self.trainings[training_id]["entity"]["status"]
        status["state"] = state
        if message:
            status["failure"] = {"errors": [{"code": "job_failed", "message": message}]}

    def route(self, method: str, path: str, raw: bytes, headers) -> tuple[int, object | None]:
        now = datetime.datetime.now(datetime.UTC).isoformat()
        if path == "/ml/v1/foundation_model_specs":
            return 200, {"resources": []}
        if path == "/v2/spaces" and method == "GET":
            return 200, {"resources": [], "total_count": 0}
        if path == "/v2/software_specifications" and method == "GET":
            specs = [spec_entry(n, "software_specification", now) for n in self.software_specs]
            return 200, {"total_results": len(specs), "resources": specs}
        if path == "/v2/hardware_specifications" and method == "GET":
            specs = [spec_entry(n, "hardware_specification", now) for n in self.hardware_specs]
            return 200, {"total_results": len(specs), "resources": specs}
        if path.startswith("/v2/spaces/"):
            space = self.space = path.rsplit("/", 1)[1]
            return 200, {"metadata": {"id": space, "created_at": now}, "entity": {"name": "s"}}
        if path == "/v2/assets" and method == "POST":
            asset = str(uuid.uuid4())
            self.assets[asset] = {
                "metadata": {"asset_id": asset, "asset_type": "wml_model_definition",
                             "created_at": now, "name": "md", "space_id": self.space,
                             "usage": {"last_updated_at": now}},
                "entity": {"wml_model_definition": {}},
                "usage": {"last_updated_at": now},
            }  # fmt: skip
            return 201, self.assets[asset]
        if path.startswith("/v2/assets/") and path.endswith("/attachments") and method == "POST":
            attachment = str(uuid.uuid4())
            return 201, {"attachment_id": attachment, "url1": f"{self.url}/upload/{attachment}"}
        if path.startswith("/upload/") and method == "PUT":
            self.uploads[path.rsplit("/", 1)[1]] = raw
            return 201, {}
        if path.endswith("/complete") and method == "POST":
            return 200, {}
        if path.startswith("/v2/assets/") and method == "GET":
            return 200, self.assets.get(path.split("/")[3], {})
        if path == "/ml/v4/trainings" and method == "POST":
            training = f"training-{uuid.uuid4().hex[:10]}"
            body = json.loads(raw)
            self.trainings[training] = {
                "metadata": {"id": training, "created_at": now},
                "entity": {**body, "status": {"state": "queued"}},
            }
            return 201, self.trainings[training]
        if path.startswith("/ml/v4/trainings/"):
            training = path.rsplit("/", 1)[1]
            if training not in self.trainings:
                return 404, {"errors": [{"message": "not found"}]}
            if method == "DELETE":
                self.set_state(training, "canceled")
                return 204, None
            return 200, self.trainings[training]
        return 404, {"errors": [{"code": "not_found", "message": f"stand-in: no {method} {path}"}]}

    def stop(self) -> None:
        self.server.shutdown()
