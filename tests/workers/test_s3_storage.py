"""LoRAs and outputs on S3 through django-storages, against a real S3-compatible server process (moto)."""

import socket
import subprocess
import sys
import time
import urllib.request

import boto3
import pytest
from django.core.files.base import ContentFile
from storages.backends.s3 import S3Storage

from tests.conftest import SMALL, wait_for
from tests.mp4 import read_mp4
from tests.webapp.test_compat_api import MINIMAL
from workers.outputs import StorageFailed, save_with_retry

BUCKET = "renders"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_S3_REGION_NAME": "us-east-1"}


@pytest.fixture(scope="module")
def s3_endpoint():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            client.create_bucket(Bucket=BUCKET)
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    yield endpoint, client
    server.terminate()
    server.wait()


@pytest.fixture
def on_s3(settings, s3_endpoint):
    endpoint, client = s3_endpoint
    settings.STORAGES = {**settings.STORAGES, "default": {"BACKEND": "storages.backends.s3.S3Storage"}}
    settings.AWS_STORAGE_BUCKET_NAME, settings.AWS_S3_ENDPOINT_URL = BUCKET, endpoint
    settings.AWS_QUERYSTRING_AUTH, settings.AWS_DEFAULT_ACL, settings.AWS_S3_SIGNATURE_VERSION = True, None, "s3v4"
    for name, value in CREDENTIALS.items():
        setattr(settings, name, value)
    return endpoint, client


def keys(client):
    return {obj["Key"] for obj in client.list_objects_v2(Bucket=BUCKET).get("Contents", [])}


def test_lora_and_outputs_live_on_s3(api, on_s3, start_worker, lora_files, tmp_path):
    endpoint, client = on_s3
    with lora_files["a"].open("rb") as fh:
        upload = api.post("/api/v1/loras/", {"file": fh, "name": "on-s3"}, format="multipart")
    assert upload.status_code == 201, upload.json()
    sha = upload.json()["sha256"]
    assert f"loras/{sha[:2]}/{sha}.safetensors" in keys(client)

    start_worker(
        "s3",
        AWS_STORAGE_BUCKET_NAME=BUCKET,
        AWS_S3_ENDPOINT_URL=endpoint,
        LORA_CACHE_DIR=tmp_path / "lora-cache",
        **CREDENTIALS,
    )
    body = {
        **MINIMAL,
        "loras": [{"path": "on-s3", "network_multiplier": 0.8}],
        "prompts": [{**MINIMAL["prompts"][0], **SMALL}],
    }
    request_id = api.post("/v1/inference", body, format="json").json()["request_id"]
    status = wait_for(
        lambda: (s := api.get(f"/v1/requests/{request_id}/status").json())["status"] in ("succeeded", "failed") and s
    )
    assert status["status"] == "succeeded", status
    assert (tmp_path / "lora-cache" / f"{sha}.safetensors").exists()  # fetched from S3 and verified

    video = api.get(f"/v1/requests/{request_id}/result").json()["outputs"]["videos"][0]
    assert {k for k in keys(client) if k.startswith(f"outputs/{request_id}/")} == {
        f"outputs/{request_id}/000_seed42.mp4",
        f"outputs/{request_id}/000_seed42.png",
    }
    redirect = api.get(video["url"])
    assert redirect.status_code == 302 and "X-Amz-Signature=" in redirect["Location"]  # presigned
    (tmp_path / "v.mp4").write_bytes(urllib.request.urlopen(redirect["Location"]).read())
    frames, meta = read_mp4(tmp_path / "v.mp4")
    assert frames.shape == (9, 128, 128, 3) and meta["fps"] == 16


def test_failed_upload_is_retried_then_reported(on_s3, monkeypatch):
    calls = []
    real_save = S3Storage.save

    def flaky(self, name, content, max_length=None):
        calls.append(name)
        if len(calls) == 1:
            raise ConnectionError("connection reset by peer")
        return real_save(self, name, content, max_length)

    monkeypatch.setattr(S3Storage, "save", flaky)
    assert save_with_retry("outputs/x/retry.txt", ContentFile(b"abc"), backoff_s=0) == "outputs/x/retry.txt"
    assert len(calls) == 2 and "outputs/x/retry.txt" in keys(on_s3[1])

    monkeypatch.setattr(S3Storage, "save", lambda *a, **k: (_ for _ in ()).throw(ConnectionError("down")))
    with pytest.raises(StorageFailed):
        save_with_retry("outputs/x/never.txt", ContentFile(b"abc"), backoff_s=0)
