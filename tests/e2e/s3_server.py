"""A real S3 API for the tests: a moto server process on 127.0.0.1, started and stopped by pid.

`moto_s3` (module scope) starts ``python -m moto.server`` on a free port, waits until it answers,
creates the bucket `BUCKET` and stops the process when the module's tests are done, whatever
happened. `s3_env` (per test) points boto3 at it through the environment, with dummy credentials,
as a silo process would be configured.

Test modules load it as a plugin (``pytest_plugins = ["s3_server"]``) after importing names from it,
so it is left as it is: PYTEST_DONT_REWRITE (it holds no assertions).
"""

from __future__ import annotations

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
from dataclasses import dataclass

import pytest

BUCKET = "fedsilo-exchange"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}


def free_port() -> int:
    """A port nothing listens on (the OS picked it and it was released again)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class MotoServer:
    process: subprocess.Popen
    port: int

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self):
        """A boto3 client of its own (not the store's), for setting up and inspecting the bucket."""
        import boto3
        from botocore.config import Config

        return boto3.session.Session(
            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"], aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            region_name=CREDENTIALS["AWS_DEFAULT_REGION"],
        ).client("s3", endpoint_url=self.endpoint, config=Config(s3={"addressing_style": "path"}))

    def keys(self, prefix: str, bucket: str = BUCKET) -> list[str]:
        paginator = self.client().get_paginator("list_objects_v2")
        return sorted(item["Key"] for page in paginator.paginate(Bucket=bucket, Prefix=prefix)
                      for item in page.get("Contents", []))


def stop(process: subprocess.Popen) -> None:
    """SIGTERM to the server's pid, then wait; SIGKILL to the same pid if it does not exit."""
    if process.poll() is not None:
        return
    os.kill(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def start(timeout: float = 30.0) -> MotoServer:
    port = free_port()
    log = tempfile.TemporaryFile()  # the server logs every request; a file never fills up like a pipe
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=log,
    )
    log.close()  # the child holds its own descriptor
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"moto server exited with {process.returncode} before answering on port {port}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/moto-api/", timeout=1):
                    break
            except (urllib.error.URLError, OSError):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"moto server on port {port} did not answer within {timeout} s") from None
                time.sleep(0.05)
        server = MotoServer(process=process, port=port)
        server.client().create_bucket(Bucket=BUCKET)
        return server
    except BaseException:
        stop(process)
        raise


@pytest.fixture(scope="module")
def moto_s3():
    server = start()
    try:
        yield server
    finally:
        stop(server.process)


@pytest.fixture
def s3_env(moto_s3, monkeypatch):
    """boto3 in this process (and its children) talks to the moto server with dummy credentials."""
    for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_REGION"):
        monkeypatch.delenv(name, raising=False)
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto_s3.endpoint)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    return moto_s3


@pytest.fixture
def s3_prefix():
    """A fresh prefix in the bucket for one test."""
    return f"t-{uuid.uuid4().hex[:12]}"
