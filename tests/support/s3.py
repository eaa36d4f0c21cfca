"""A real S3 server on loopback (moto's), a bucket per test, and the job's COS variables."""

from __future__ import annotations

import threading
import uuid

import boto3
import pytest
from botocore.config import Config as BotoConfig
from moto.server import ThreadedMotoServer

REGION = "us-south"
# Distinctive, so a test can search every output for them (moto accepts any keys).
ACCESS_KEY = "AKCANARYID0000ACCESS7F3E"
SECRET_KEY = "CANARYSECRETz9Y8x7W6v5U4t3S2r1Q0pOnMlKjI"


class SerialMotoServer(ThreadedMotoServer):
    """moto's server, one request at a time: moto checks a conditional write's precondition and
    then writes, without a lock, so two racing PUTs with If-None-Match could both pass. Real S3
    decides them atomically; serialising requests gives the tests the same guarantee."""

    def _server_entry(self) -> None:
        from moto.moto_server.threaded_moto_server import MotoRequestHandler
        from moto.server import DomainDispatcherApplication, create_backend_app
        from werkzeug.serving import make_server

        app = DomainDispatcherApplication(create_backend_app)
        lock = threading.Lock()

        def serial(environ, start_response):
            with lock:
                return list(app(environ, start_response))

        self._server = make_server(
            self._ip_address, self._port, serial, True, request_handler=MotoRequestHandler
        )
        self._server_ready_event.set()
        self._server.serve_forever()


@pytest.fixture(scope="session")
def s3_endpoint():
    server = SerialMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


def s3_client(endpoint: str):
    """boto3 set up exactly as the job sets it up for COS."""
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        region_name=REGION,
        config=BotoConfig(
            signature_version="s3v4",
            s3={"addressing_style": "path"},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        ),
    )


@pytest.fixture
def bucket(s3_endpoint):
    name = f"test-{uuid.uuid4().hex[:12]}"
    s3_client(s3_endpoint).create_bucket(
        Bucket=name, CreateBucketConfiguration={"LocationConstraint": REGION}
    )
    return name


def cos_env(endpoint: str, **extra: str) -> dict[str, str]:
    return {
        "COS_ENDPOINT": endpoint,
        "COS_ACCESS_KEY_ID": ACCESS_KEY,
        "COS_SECRET_ACCESS_KEY": SECRET_KEY,
        "COS_REGION": REGION,
        **extra,
    }


def all_objects(endpoint: str, bucket: str) -> dict[str, bytes]:
    """Every object in the bucket. A running job may delete an object between the listing and
    its read (its check probe, an old checkpoint): such an object is left out."""
    client = s3_client(endpoint)
    keys = [
        obj["Key"]
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
        for obj in page.get("Contents", [])
    ]
    objects = {}
    for key in keys:
        try:
            objects[key] = client.get_object(Bucket=bucket, Key=key)["Body"].read()
        except client.exceptions.NoSuchKey:
            continue
    return objects
