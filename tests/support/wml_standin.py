"""A local TLS stand-in of the few WML v4 REST endpoints the real clients use (test-only).

Neither IBM Cloud nor a Cloud Pak for Data cluster can be reached from here, so the real
`ibm-watsonx-ai` client (and the deprecated `ibm-watson-machine-learning`) talk to this server
instead. It signs users in as both platforms do (IBM Cloud's IAM token exchange, Cloud Pak's
`/icp4d-api/v1/authorize`) and refuses every other call without a token it issued; it
records every request, stores uploaded model-definition zips, checks the storage references a
training is given, and lets a test move a training through its states (queued -> running ->
completed or failed).
"""

from __future__ import annotations

import base64
import datetime
import email.policy
import ipaddress
import json
import ssl
import threading
import time
import uuid
from email.parser import BytesParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit


def self_signed(dest: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost, and its key (trusted through WML_CA_BUNDLE)."""
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
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
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


# What the specification lists hold, as WML names them: Runtime 24.1's TensorFlow training
# runtime and the base specifications of 24.1 and 25.1 (25.1 carries TensorFlow 2.18 under its
# base name; IBM lists no tensorflow_rt25.1), beside other frameworks'.
SOFTWARE_SPECS = (
    "runtime-24.1-py3.11", "runtime-25.1-py3.12", "tensorflow_rt24.1-py3.11",
    "tensorflow_rt24.1-py3.11-edt", "pytorch-onnx_rt24.1-py3.11", "autoai-kb_rt24.1-py3.11",
    "spss-modeler_18.2",
)  # fmt: skip
HARDWARE_SPECS = ("XXS", "XS", "S", "M", "L", "XL", "K80", "K80x2", "V100", "V100x2", "A100x2")
CPD_VERSION = "5.2.0"  # what GET /ml/wml_services/v2/version says


def jwt(claims: dict) -> str:
    """A token shaped like IAM's and Cloud Pak's (the clients read `exp` from the payload)."""

    def part(data: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")

    return f"{part({'alg': 'none'})}.{part({'exp': int(time.time()) + 3600, **claims})}.sig"


def form_file(raw: bytes, content_type: str) -> bytes:
    """The one file of a multipart/form-data body."""
    message = BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + raw
    )
    (part,) = [p for p in message.iter_parts() if p.get_filename() is not None]
    return part.get_payload(decode=True)


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
        # Who may sign in: IBM Cloud API keys, and Cloud Pak users with an API key or password.
        self.cloud_apikeys: set[str] = set()
        self.cpd_users: dict[str, dict[str, str]] = {}  # name -> {"api_key"|"password": value}
        self.tokens: set[str] = set()  # issued, or handed to a test (WML_TOKEN)
        self.connections: set[str] = set()  # connection asset ids in the space
        self.spaces: set[str] = {"space-0001"}
        # Injected failures: (method, path prefix) -> statuses to answer with, one per request.
        self.failures: dict[tuple[str, str], list[int]] = {}
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
                entry["authorization"] = self.headers.get("Authorization", "")
                status, body = standin.answer(self.command, path, raw, self.headers)
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

    def issue_token(self, **claims: str) -> str:
        token = jwt(claims)
        self.tokens.add(token)
        return token

    def answer(self, method: str, path: str, raw: bytes, headers) -> tuple[int, object | None]:
        """Sign-in and version routes are open; everything else needs an issued token."""
        if path == "/identity/token" and method == "POST":  # IBM Cloud IAM
            form = parse_qs(raw.decode())
            if form.get("apikey", [""])[0] in self.cloud_apikeys:
                return 200, {"access_token": self.issue_token(iam_id="iam-1"),
                             "expires_in": 3600, "expiration": int(time.time()) + 3600,
                             "token_type": "Bearer"}  # fmt: skip
            return 400, {"errorCode": "BXNIM0415E", "errorMessage": "Provided API key could "
                         "not be found"}  # fmt: skip
        if path == "/icp4d-api/v1/authorize" and method == "POST":  # Cloud Pak for Data
            body = json.loads(raw or b"{}")
            user = self.cpd_users.get(body.get("username", ""))
            secret = {k: body[k] for k in ("api_key", "password") if k in body}
            if user is not None and secret and secret.items() <= user.items():
                token = self.issue_token(username=body["username"], uid="1000331001")
                return 200, {"_messageCode_": "200", "message": "Success", "token": token}
            return 401, {"_messageCode_": "401", "message": "Invalid user name or password"}
        if path == "/ml/wml_services/v2/version":
            return 200, {"version": CPD_VERSION}
        if path.startswith("/upload/") and method == "PUT":  # the attachment's own URL
            # IBM Cloud PUTs the zip as the body; Cloud Pak for Data as a multipart form.
            content_type = headers.get("Content-Type", "")
            self.uploads[path.rsplit("/", 1)[1]] = (
                form_file(raw, content_type) if content_type.startswith("multipart/") else raw
            )
            return 201, {}
        for (fail_method, prefix), statuses in self.failures.items():
            if method == fail_method and path.startswith(prefix) and statuses:
                status = statuses.pop(0)
                return status, {"errors": [{"code": "injected", "message": f"HTTP {status}"}]}
        auth = headers.get("Authorization", "")
        if auth.removeprefix("Bearer ") not in self.tokens:
            return 401, {"errors": [{"code": "authentication_failed", "message": "no token"}]}
        return self.route(method, path, raw, cpd=headers.get("Host", "").startswith("localhost"))

    def reference_problem(self, ref: dict) -> str | None:
        """Why WML would refuse a data or results reference, or None."""
        location = ref.get("location", {})
        if not location.get("bucket"):
            return "location.bucket missing"
        if ref.get("type") == "s3":
            keys = ("endpoint_url", "access_key_id", "secret_access_key")
            missing = [k for k in keys if not ref.get("connection", {}).get(k)]
            return f"s3 connection lacks {missing}" if missing else None
        if ref.get("type") == "connection_asset":
            connection = ref.get("connection", {})
            if set(connection) != {"id"}:
                return f"a connection asset reference holds only its id, not {sorted(connection)}"
            if connection["id"] not in self.connections:
                return f"no connection asset {connection['id']} in the space"
            return None
        return f"unsupported reference type {ref.get('type')!r}"

    def route(self, method: str, path: str, raw: bytes, cpd: bool) -> tuple[int, object | None]:
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
            space = path.rsplit("/", 1)[1]
            if space not in self.spaces:
                return 404, {"errors": [{"code": "not_found", "message": f"no space {space}"}]}
            self.space = space
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
            # IBM Cloud hands out a signed URL; Cloud Pak for Data a path on the cluster.
            attachment = str(uuid.uuid4())
            url1 = f"/upload/{attachment}" if cpd else f"{self.url}/upload/{attachment}"
            return 201, {"attachment_id": attachment, "url1": url1}
        if path.endswith("/complete") and method == "POST":
            return 200, {}
        if path.startswith("/v2/assets/") and method == "DELETE":  # a failed store's clean-up
            self.assets.pop(path.split("/")[3], None)
            return 204, None
        if path.startswith("/v2/assets/") and method == "GET":
            return 200, self.assets.get(path.split("/")[3], {})
        if path.startswith("/v2/connections/") and method == "GET":
            connection = path.rsplit("/", 1)[1]
            if connection not in self.connections:
                return 404, {"errors": [{"code": "not_found", "message": f"no {connection}"}]}
            return 200, {"metadata": {"asset_id": connection, "asset_type": "connection",
                                      "space_id": self.space, "created_at": now,
                                      "usage": {"last_updated_at": now}},
                         "entity": {"name": "cos", "datasource_type": "cos"}}  # fmt: skip
        if path == "/ml/v4/trainings" and method == "POST":
            training = f"training-{uuid.uuid4().hex[:10]}"
            body = json.loads(raw)
            refs = [*body.get("training_data_references", []), body.get("results_reference", {})]
            problems = [p for ref in refs if (p := self.reference_problem(ref))]
            if problems:
                return 400, {"errors": [{"code": "invalid_input", "message": problems[0]}]}
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
