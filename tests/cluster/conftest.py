"""Services for the cluster tests, each on a free loopback port of its own and stopped afterwards:
a moto S3 server (``.venv-moto``, made by ``scripts/moto.sh venv``)."""
from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MOTO = REPO / ".venv-moto" / "bin" / "moto_server"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, seconds: float, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if process is not None and process.poll() is not None:
                raise RuntimeError(f"service on port {port} exited with {process.returncode}") from None
            time.sleep(0.2)
    raise TimeoutError(f"nothing answers on 127.0.0.1:{port} after {seconds} s")


@pytest.fixture(scope="session")
def moto_endpoint(tmp_path_factory):
    """``http://127.0.0.1:<port>`` of a moto S3 server with a bucket ``lake``."""
    if not MOTO.exists():
        subprocess.run(["bash", str(REPO / "scripts" / "moto.sh"), "venv"], check=True, timeout=900)
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log, "w") as out:
        process = subprocess.Popen([str(MOTO), "-H", "127.0.0.1", "-p", str(port)], stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, 60, process)
        endpoint = f"http://127.0.0.1:{port}"
        subprocess.run([str(MOTO.parent / "python"), "-c",
                        "import boto3, sys; boto3.client('s3', endpoint_url=sys.argv[1], aws_access_key_id='k', "
                        "aws_secret_access_key='s', region_name='us-east-1').create_bucket(Bucket='lake')", endpoint],
                       check=True, timeout=60)
        yield endpoint
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture
def s3_env(moto_endpoint, monkeypatch):
    """The object-store settings of the moto server, as the environment every process reads."""
    env = {"INFNET_S3_ENDPOINT": moto_endpoint, "INFNET_S3_ACCESS_KEY": "k", "INFNET_S3_SECRET_KEY": "s"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


@pytest.fixture(scope="session")
def profile_jars():
    """The Postgres driver and the object-store jars (Maven, once; skipped when present)."""
    subprocess.run(["bash", str(REPO / "scripts" / "resolve_jars.sh"), "metastore-postgres", "object-store"],
                   check=True, timeout=900, capture_output=True)
