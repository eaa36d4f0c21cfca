"""IBM Cloud Object Storage (or any S3-compatible store) through boto3, the COS way.

COS wants a custom endpoint, HMAC keys, path-style addressing and signature v4; since boto3
1.36 the client must also compute and validate checksums only when required, or many
S3-compatible stores reject uploads. Retries use botocore's standard mode with bounded attempts
and timeouts. Every botocore error becomes a JobError whose message names the variable to fix
and never contains a credential.
"""

from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path

from job.config import Storage
from job.errors import ConfigError, DataError, JobError, PreconditionFailed, TransientError
from job.runstore.layout import Location, safe_key

MULTIPART_THRESHOLD = 16 * 1024 * 1024
CONNECT_TIMEOUT = 5
READ_TIMEOUT = 60
AUTH_CODES = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403"}
MISSING_CODES = {"NoSuchKey", "404", "NotFound"}
# S3's "try again" answers (besides every 5xx, 408, 409 and 429).
RETRY_CODES = {
    "SlowDown", "RequestTimeout", "ServiceUnavailable", "TooManyRequests", "OperationAborted",
    "IncompleteBody", "InternalError", "Throttling", "ThrottlingException",
}  # fmt: skip


def client(storage: Storage):
    import boto3
    from botocore.config import Config as BotoConfig

    return boto3.session.Session().client(
        "s3",
        endpoint_url=storage.endpoint,
        aws_access_key_id=storage.access_key_id,
        aws_secret_access_key=storage.secret_access_key,
        region_name=storage.region,
        config=BotoConfig(
            signature_version="s3v4",
            s3={"addressing_style": "path"},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            retries={"mode": "standard", "total_max_attempts": storage.max_attempts},
            connect_timeout=CONNECT_TIMEOUT,
            read_timeout=READ_TIMEOUT,
        ),
    )


class S3Store:
    """A bucket prefix seen as a Store (see job.runstore.store): same keys, same atomicity.

    A single PUT is atomic in S3; multipart uploads become visible only when completed.
    """

    def __init__(self, storage: Storage, location: Location, variable: str = "OUTPUT_URI") -> None:
        self.bucket, self.prefix = str(location.bucket), location.path
        self.uri = location.uri
        self.variable = variable
        self.endpoint = storage.endpoint or "the default S3 endpoint"
        self.client = client(storage)

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _where(self, key: str) -> str:
        return Location(self._key(key), self.bucket).uri

    @contextlib.contextmanager
    def _errors(self, action: str, key: str):
        """Translate botocore's exceptions into the job's errors (and exit codes)."""
        from boto3.exceptions import S3UploadFailedError
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except S3UploadFailedError as exc:
            # upload_file wraps the real error; classify that one.
            cause = exc.__cause__ or exc.__context__
            if isinstance(cause, ClientError):
                raise self._client_error(cause, action, key) from None
            raise self._unreachable(action, key, cause or exc) from None
        except ClientError as exc:
            raise self._client_error(exc, action, key) from None
        except BotoCoreError as exc:
            raise self._unreachable(action, key, exc) from None

    def _unreachable(self, action: str, key: str, exc: BaseException) -> TransientError:
        # Connection refused, DNS, timeouts, dropped connections: after all retries.
        if type(exc).__name__ == "ResponseParserError":
            return self._not_s3(action, key)
        return TransientError(
            f"cannot {action} {self._where(key)} at COS_ENDPOINT="
            f"{self.endpoint}: {type(exc).__name__}"
        )

    def _client_error(self, exc, action: str, key: str) -> JobError:
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        where = self._where(key)
        if code in ("PreconditionFailed",) or status == 412:
            return PreconditionFailed(f"cannot {action} {where}: another writer ({code})")
        if code == "ConditionalRequestConflict":  # S3 says: retry
            return TransientError(f"cannot {action} {where}: {code}, retry")
        if code == "NotImplemented" or status == 501:
            return ConfigError(
                "COS_ENDPOINT", self.endpoint, f"an S3 store that supports {action} ({code})"
            )
        if code == "AuthorizationHeaderMalformed":
            return ConfigError("COS_REGION", "", f"the bucket's region ({code})")
        if code in ("PermanentRedirect", "TemporaryRedirect") or status == 301:
            return ConfigError("COS_ENDPOINT", self.endpoint, f"the bucket's endpoint ({code})")
        if code == "NoSuchBucket":
            return ConfigError(
                self.variable, self.uri, f"an existing bucket (no bucket {self.bucket!r})"
            )
        if code in AUTH_CODES or status == 403:
            return ConfigError(
                "COS_ACCESS_KEY_ID", "***",
                f"HMAC keys allowed to {action} {where} ({code or status})",
            )  # fmt: skip
        if status >= 500 or status in (408, 409, 429) or code in RETRY_CODES:
            return TransientError(f"cannot {action} {where}: {code or status} after retries")
        # Any other refusal: the store does not accept what this job sends it (an S3-compatible
        # server with gaps, a proxy), which a retry will not change.
        return ConfigError(
            "COS_ENDPOINT", self.endpoint, f"an S3 store that accepts this job's requests "
            f"({code or status} on {action} {where})",
        )  # fmt: skip

    def put_bytes(
        self, key: str, data: bytes, *, if_match: str | None = None, if_none_match: bool = False
    ) -> str:
        conditions = {"IfMatch": if_match} if if_match else {}
        conditions |= {"IfNoneMatch": "*"} if if_none_match else {}
        try:
            with self._errors("write", key):
                try:
                    reply = self.client.put_object(
                        Bucket=self.bucket, Key=self._key(key), Body=data, **conditions
                    )
                except Exception as exc:
                    # If-Match on an object someone deleted: S3 answers 404, not 412.
                    # botocore's connection errors carry `response = None`.
                    code = (getattr(exc, "response", None) or {}).get("Error", {}).get("Code")
                    if if_match and code in MISSING_CODES:
                        raise PreconditionFailed(f"{self._where(key)} is gone (If-Match)") from None
                    raise
        except PreconditionFailed:
            # botocore retries a PUT whose answer was lost; if the first attempt landed, the
            # retry's condition fails on our own write. A single-part upload's ETag is the
            # content's MD5: the object already holds exactly these bytes, so the write stands.
            current = self.etag(key)
            if current is None or current.strip('"') != hashlib.md5(data).hexdigest():
                raise
            return current
        if "ETag" not in reply:  # every S3 PUT answers with one
            raise self._not_s3("write", key)
        return reply["ETag"]

    def put_file(
        self, key: str, path: Path, *, if_match: str | None = None, if_none_match: bool = False
    ) -> str:
        """One PUT (so it can be conditional) up to MULTIPART_THRESHOLD; a multipart upload
        above it, which cannot carry the conditions (nothing this job writes is that large)."""
        if path.stat().st_size < MULTIPART_THRESHOLD:
            return self.put_bytes(
                key, path.read_bytes(), if_match=if_match, if_none_match=if_none_match
            )
        if if_match or if_none_match:  # never drop a fence silently
            raise JobError(f"{self._where(key)}: a conditional write over 16 MiB")
        from boto3.s3.transfer import TransferConfig

        config = TransferConfig(multipart_threshold=MULTIPART_THRESHOLD, use_threads=False)
        with self._errors("upload", key):
            self.client.upload_file(str(path), self.bucket, self._key(key), Config=config)
        return self.etag(key) or ""

    def etag(self, key: str) -> str | None:
        from botocore.exceptions import ClientError

        with self._errors("check", key):
            try:
                reply = self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in MISSING_CODES:
                    return None
                raise
        if "ETag" not in reply or str(reply.get("ContentType", "")).startswith("text/html"):
            raise self._not_s3("check", key)
        return reply["ETag"]

    def _not_s3(self, action: str, key: str) -> TransientError:
        return TransientError(
            f"cannot {action} {self._where(key)}: COS_ENDPOINT={self.endpoint} answered with "
            "something that is not S3 (a proxy or captive portal?)"
        )

    def get_bytes(self, key: str, *, limit: int) -> bytes | None:
        return self.get_if_changed(key, None, limit=limit)[0]  # no tag: a plain GET

    def _body(self, reply: dict, key: str, limit: int) -> bytes:
        # This job never stores HTML: a proxy or captive portal that answers every request with
        # a page of its own must not be read as a run's files.
        if str(reply.get("ContentType", "")).startswith("text/html"):
            raise self._not_s3("read", key)
        body = reply["Body"]
        # The size is known before the body is read: a huge object costs nothing but the refusal.
        size = reply.get("ContentLength")
        if type(size) is int and size > limit:
            body.close()
            raise DataError(f"{self._where(key)}: {size} bytes, more than the {limit} expected")
        data = body.read(limit + 1)
        if len(data) > limit:
            body.close()
            raise DataError(f"{self._where(key)}: more than the {limit} bytes expected")
        return data

    def get_if_changed(
        self, key: str, tag: str | None, *, limit: int
    ) -> tuple[bytes | None, str | None]:
        """A conditional GET on the ETag: an unchanged object costs a 304 and no body."""
        from botocore.exceptions import ClientError

        extra = {"IfNoneMatch": tag} if tag else {}
        with self._errors("read", key):
            try:
                reply = self.client.get_object(Bucket=self.bucket, Key=self._key(key), **extra)
            except ClientError as exc:
                code = str(exc.response.get("Error", {}).get("Code", ""))
                if code in ("304", "NotModified"):
                    return None, tag
                if code in MISSING_CODES:
                    return None, None
                raise
            return self._body(reply, key, limit), reply.get("ETag")

    def exists(self, key: str) -> bool:
        return self.etag(key) is not None

    def delete(self, key: str, *, if_match: str | None = None) -> None:
        condition = {"IfMatch": if_match} if if_match else {}
        with self._errors("delete", key):
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key), **condition)

    def list(self, prefix: str) -> list[str]:
        base = self._key(prefix)
        strip = len(self.prefix) + 1 if self.prefix else 0
        keys: list[str] = []
        with self._errors("list", prefix):
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=base
            )
            for page in pages:
                keys.extend(obj["Key"][strip:] for obj in page.get("Contents", []))
        return sorted(keys)

    def children(self, prefix: str = "") -> list[str]:
        """The names of the "folders" directly under `prefix`: a delimiter listing, one request
        per 1,000 names, whatever the folders hold."""
        base = self._key(prefix.rstrip("/") + "/") if prefix else self._key("")
        names: list[str] = []
        with self._errors("list", prefix):
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=base, Delimiter="/"
            )
            for page in pages:
                names.extend(
                    p["Prefix"][len(base) :].rstrip("/") for p in page.get("CommonPrefixes", [])
                )
        return sorted(n for n in names if n)

    def download(self, key: str, dest: Path) -> None:
        from boto3.s3.transfer import TransferConfig

        dest.parent.mkdir(parents=True, exist_ok=True)
        config = TransferConfig(multipart_threshold=MULTIPART_THRESHOLD, use_threads=False)
        with self._errors("download", key):
            self.client.download_file(self.bucket, self._key(key), str(dest), Config=config)


DATA_SUFFIXES = ("-ubyte", "-ubyte.gz", ".npz")


def download_data(storage: Storage, location: Location, dest: Path) -> Path:
    """DATA_URI=s3://BUCKET/KEY (an .npz) or s3://BUCKET/PREFIX (IDX files) -> a local copy.

    Only the objects directly under the prefix count: files in sub-folders (an `old/` copy)
    are not the data set and must not replace it."""
    store = S3Store(storage, Location("", location.bucket), "DATA_URI")
    key = location.path
    if key and store.exists(key):
        target = dest / safe_key(key.rsplit("/", 1)[-1], location.uri)
        store.download(key, target)
        return target
    base = f"{key}/" if key else ""
    names = [
        safe_key(k[len(base) :], location.uri)
        for k in store.list(base)
        if k.endswith(DATA_SUFFIXES) and "/" not in k[len(base) :]
    ]
    if not names:
        raise DataError(f"DATA_URI={location.uri!r}: no IDX or .npz objects there")
    for name in names:
        store.download(base + name, dest / name)
    return dest
