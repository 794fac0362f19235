"""What a browser frontend needs of the API: CORS for allowed origins (preflights answered before auth),
byte ranges of output files, the API docs served from this site's own static files under the site's CSP,
and a schema in which every response is typed (a generated client submits and reads a job with it)."""

import importlib
import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from openapi_schema_validator import OAS30Validator

from tests.webapp.browser import needs_chromium, screenshot
from webapp.jobs.models import GenerationJob, JobOutput

APP = "https://app.example.com"
pytestmark = pytest.mark.django_db


@pytest.fixture
def cors(settings):
    settings.CORS_ALLOWED_ORIGINS = [APP]


def preflight(client, url, origin, method="POST"):
    return client.options(
        url,
        HTTP_ORIGIN=origin,
        HTTP_ACCESS_CONTROL_REQUEST_METHOD=method,
        HTTP_ACCESS_CONTROL_REQUEST_HEADERS="authorization,content-type,idempotency-key",
    )


# --- CORS ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("url", ["/api/v1/jobs/", "/v1/inference", "/v1/requests/x/status", "/api/v1/outputs/1/video"])
def test_a_preflight_from_an_allowed_origin_is_answered_before_auth(client, cors, url):
    response = preflight(client, url, APP)
    assert response.status_code == 200
    assert response["Access-Control-Allow-Origin"] == APP
    allowed = {h.strip() for h in response["Access-Control-Allow-Headers"].split(",")}
    assert {"authorization", "content-type", "idempotency-key"} <= allowed
    assert "POST" in response["Access-Control-Allow-Methods"]


def test_a_preflight_from_another_origin_gets_no_allow_origin(client, cors):
    response = preflight(client, "/api/v1/jobs/", "https://evil.example.com")
    assert "Access-Control-Allow-Origin" not in response


def test_no_origin_is_allowed_by_default(client):
    assert "Access-Control-Allow-Origin" not in preflight(client, "/api/v1/jobs/", APP)


def test_answers_to_an_allowed_origin_carry_cors_headers_only_on_api_paths(api, cors):
    response = api.get("/api/v1/jobs/", HTTP_ORIGIN=APP)
    assert response.status_code == 200 and response["Access-Control-Allow-Origin"] == APP
    assert "Content-Range" in response["Access-Control-Expose-Headers"]
    assert api.get("/v1/models", HTTP_ORIGIN=APP)["Access-Control-Allow-Origin"] == APP
    assert "Access-Control-Allow-Origin" not in api.get("/accounts/login/", HTTP_ORIGIN=APP)


# --- Range ---------------------------------------------------------------------------------------------------

BYTES = bytes(range(256)) * 4  # 1024 bytes, each position recognisable


@pytest.fixture
def output(user):
    job = GenerationJob.objects.create(owner=user, prompts=[{"prompt": "x"}], status="succeeded")
    stem = f"outputs/{job.id}/000_seed42"
    return JobOutput.objects.create(
        job=job,
        index=0,
        video=default_storage.save(f"{stem}.mp4", ContentFile(BYTES)),
        poster=default_storage.save(f"{stem}.png", ContentFile(BYTES[:300])),
        width=64,
        height=64,
        num_frames=9,
        fps=8,
        seed=42,
        scheduler="euler",
    )


def body(response) -> bytes:
    return b"".join(response.streaming_content) if response.streaming else response.content


def test_without_range_the_whole_file_and_accept_ranges(api, output):
    response = api.get(f"/api/v1/outputs/{output.pk}/video")
    assert response.status_code == 200 and response["Accept-Ranges"] == "bytes"
    assert response["Content-Type"] == "video/mp4" and response["Content-Length"] == "1024"
    assert body(response) == BYTES


@pytest.mark.parametrize(
    "header, first, last",
    [
        ("bytes=0-99", 0, 99),
        ("bytes=100-", 100, 1023),
        ("bytes=-100", 924, 1023),
        ("bytes=1000-5000", 1000, 1023),  # clipped to the end
        ("bytes=-5000", 0, 1023),  # a suffix longer than the file: all of it
        ("bytes=1023-1023", 1023, 1023),
    ],
)
def test_a_range_answers_206_with_exactly_those_bytes(api, output, header, first, last):
    response = api.get(f"/api/v1/outputs/{output.pk}/video", HTTP_RANGE=header)
    assert response.status_code == 206
    assert response["Content-Range"] == f"bytes {first}-{last}/1024"
    assert response["Accept-Ranges"] == "bytes" and response["Content-Length"] == str(last - first + 1)
    assert response["Content-Type"] == "video/mp4"
    assert body(response) == BYTES[first : last + 1]


def test_a_range_of_the_poster(api, output):
    response = api.get(f"/api/v1/outputs/{output.pk}/poster", HTTP_RANGE="bytes=0-99")
    assert response.status_code == 206 and response["Content-Range"] == "bytes 0-99/300"
    assert body(response) == BYTES[:100]


@pytest.mark.parametrize("header", ["bytes=1024-", "bytes=5000-6000", "bytes=-0"])
def test_an_unsatisfiable_range_answers_416(api, output, header):
    response = api.get(f"/api/v1/outputs/{output.pk}/video", HTTP_RANGE=header)
    assert response.status_code == 416
    assert response["Content-Range"] == "bytes */1024"
    assert response.json()["error"]["code"] == "RANGE_NOT_SATISFIABLE"


@pytest.mark.parametrize("header", ["bytes=0-1,5-6", "bytes=9-5", "items=0-5", "bytes=x-y", "bytes=-"])
def test_a_range_it_does_not_serve_sends_the_whole_file(api, output, header):
    response = api.get(f"/api/v1/outputs/{output.pk}/video", HTTP_RANGE=header)
    assert response.status_code == 200 and body(response) == BYTES


def test_a_range_is_streamed_in_blocks_not_read_whole(api, output, monkeypatch):
    """The 206 body is read through a bounded reader in FileResponse's blocks, never the whole file at once."""
    from django.http import FileResponse

    monkeypatch.setattr(FileResponse, "block_size", 64)
    sizes = []
    real_open = default_storage.open

    class Spy:
        def __init__(self, file):
            self.file = file

        def read(self, size=-1):
            sizes.append(size)
            return self.file.read(size)

        def __getattr__(self, name):
            return getattr(self.file, name)

    def spying_open(name, mode="rb"):
        handle = real_open(name, mode)
        handle.file = Spy(handle.file)
        return handle

    monkeypatch.setattr(default_storage, "open", spying_open)
    response = api.get(f"/api/v1/outputs/{output.pk}/video", HTTP_RANGE="bytes=10-309")
    assert body(response) == BYTES[10:310]
    assert sizes and max(sizes) <= 64 and -1 not in sizes


# --- the docs, from this site ---------------------------------------------------------------------------------


def test_the_docs_load_nothing_from_a_cdn_and_run_under_the_sites_policy(client):
    from tests.webapp.test_security_headers import policy

    docs = client.get("/api/docs/")
    html = docs.content.decode()
    assert docs.status_code == 200 and "cdn" not in html.lower() and "<script>" not in html
    assert "/static/drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.js" in html
    assert 'src="/api/docs/?script="' in html
    csp = policy(docs)
    assert csp["script-src"] == ["'self'"] and csp["connect-src"] == ["'self'"]
    script = client.get("/api/docs/?script=")
    assert script.status_code == 200 and script["Content-Type"].startswith("application/javascript")
    assert "SwaggerUIBundle" in script.content.decode()
    redoc = client.get("/api/redoc/")
    assert redoc.status_code == 200
    assert "/static/drf_spectacular_sidecar/redoc/bundles/redoc.standalone.js" in redoc.content.decode()
    assert policy(redoc)["script-src"] == ["'self'"]


def test_the_sidecar_files_are_static_files():
    from django.contrib.staticfiles import finders

    for name in (
        "swagger-ui-dist/swagger-ui-bundle.js",
        "swagger-ui-dist/swagger-ui.css",
        "redoc/bundles/redoc.standalone.js",
    ):
        assert finders.find(f"drf_spectacular_sidecar/{name}"), name


CSP_LISTENER = (
    "window.__csp = [];"
    "document.addEventListener('securitypolicyviolation',"
    " e => window.__csp.push(e.violatedDirective + ' ' + e.blockedURI));"
)


@needs_chromium
@pytest.mark.parametrize("page, ready", [("docs", ".opblock"), ("redoc", "[data-section-id]")])
def test_the_docs_render_their_operations_in_chromium_without_csp_violations(browser, live_server, page, ready):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": CSP_LISTENER})
    browser.get(f"{live_server.url}/api/{page}/")
    WebDriverWait(browser, 30).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ready)) > 5)
    text = browser.find_element(By.TAG_NAME, "body").text
    assert "/v1/inference" in text and "/api/v1/jobs/" in text
    screenshot(browser, f"api-{page}")
    violations = browser.execute_script("return window.__csp")
    # ReDoc's template links Google's fonts and its sidebar shows ReDoc's logo from its CDN: the policy
    # blocks both (the page falls back to local fonts, the logo is left out), so nothing comes from a CDN.
    allowed = set()
    if page == "redoc":
        allowed = {
            "style-src-elem https://fonts.googleapis.com/css2",
            "img-src https://cdn.redoc.ly/redoc/logo-mini.svg",
        }
    assert {v.split("?")[0] for v in violations} <= allowed, violations


# --- the schema: every response typed ---------------------------------------------------------------------------


@pytest.fixture
def schema(client):
    response = client.get("/api/schema/?format=json")
    assert response.status_code == 200
    return response.json()


def resolve(schema, node):
    while "$ref" in node or "allOf" in node:
        node = node["allOf"][0] if "allOf" in node else node
        if "$ref" in node:
            node = schema["components"]["schemas"][node["$ref"].rsplit("/", 1)[-1]]
    return node


V1 = [
    ("/v1/inference", "post"),
    ("/v1/requests/{request_id}/status", "get"),
    ("/v1/requests/{request_id}/result", "get"),
    ("/v1/requests/{request_id}/cancel", "post"),
    ("/v1/models", "get"),
    ("/health", "get"),
]


@pytest.mark.parametrize("path, method", V1)
def test_each_v1_answer_is_a_component_with_properties(schema, path, method):
    content = schema["paths"][path][method]["responses"]["200"]["content"]["application/json"]["schema"]
    assert "$ref" in content
    component = resolve(schema, content)
    assert component["properties"] and "additionalProperties" not in component


def test_statuses_progress_and_outputs_are_typed(schema):
    components = schema["components"]["schemas"]
    assert components["RequestStatusEnum"]["enum"] == ["in_queue", "in_progress", "succeeded", "failed", "canceled"]
    status = components["RequestStatus"]["properties"]
    assert resolve(schema, status["status"]) == components["RequestStatusEnum"]
    progress = resolve(schema, status["progress"])
    assert set(progress["properties"]) == {"prompt", "prompts", "step", "steps", "fraction"}
    assert resolve(schema, components["Job"]["properties"]["progress"]) == progress
    video = resolve(
        schema, resolve(schema, components["RequestResult"]["properties"]["outputs"])["properties"]["videos"]["items"]
    )
    assert {"url", "poster_url", "webp_url", "width", "seed", "scheduler"} <= set(video["properties"])
    timings = resolve(schema, components["Job"]["properties"]["timings"])
    assert {"load", "prompts"} <= set(timings["properties"])
    output = resolve(schema, components["Job"]["properties"]["outputs"]["items"])
    assert {"url", "poster_url", "webp_url"} <= set(output["properties"])
    record = resolve(schema, output["properties"]["record"])
    assert {"job_id", "model", "prompt", "seed", "loras", "scheduler", "speed", "timings"} <= set(record["properties"])
    assert {"rank", "software", "trigger_words"} <= set(
        resolve(schema, components["Lora"]["properties"]["info"])["properties"]
    )


def conforms(schema, name, instance):
    OAS30Validator({"$ref": f"#/components/schemas/{name}", "components": schema["components"]}).validate(instance)


def test_real_answers_with_an_output_conform_to_the_schema(api, schema, output):
    """Validated with a JSON-schema validator (OpenAPI 3.0's dialect): a finished job with an output and a
    full reproduction record, through both APIs."""
    job = output.job
    GenerationJob.objects.filter(pk=job.pk).update(
        progress={"prompt": 0, "prompts": 1, "step": 2, "steps": 2, "fraction": 1.0},
        timings={"load": 1.5, "prompts": [{"text_encode": 0.1, "denoise": 2.0, "denoise_per_step": 1.0, "save": 0.01}]},
    )
    JobOutput.objects.filter(pk=output.pk).update(
        record={
            "job_id": str(job.id),
            "model": "wan21_14b",
            "checkpoint": "/models/wan",
            "prompt": "x",
            "neg": "",
            "width": 64,
            "height": 64,
            "num_frames": 9,
            "sample_steps": 2,
            "guidance_scale": 4.0,
            "seed": 42,
            "fps": 8,
            "lora_scale": None,
            "scheduler": "euler",
            "speed": "exact",
            "lora_math": "peft",
            "step_cache": None,
            "loras": [{"name": "a", "sha256": "0" * 64, "multiplier": 1.0}],
            "software": {"python": "3.11.7", "torch": "2.9.0"},
            "timings": {"denoise": 2.0, "save": 0.01},
        }
    )
    conforms(schema, "Job", api.get(f"/api/v1/jobs/{job.id}/").json())
    conforms(schema, "RequestStatus", api.get(f"/v1/requests/{job.id}/status").json())
    result = api.get(f"/v1/requests/{job.id}/result").json()
    conforms(schema, "RequestResult", result)
    assert result["outputs"]["videos"][0]["poster_url"].endswith(f"/api/v1/outputs/{output.pk}/poster")
    conforms(schema, "Models", api.get("/v1/models").json())
    conforms(schema, "Health", api.get("/health").json())


# --- a generated client ---------------------------------------------------------------------------------------

GENERATOR = Path(sys.executable).parent / "openapi-python-client"


@pytest.mark.skipif(not GENERATOR.exists(), reason="openapi-python-client is not installed")
def test_a_generated_client_submits_and_reads_a_job(tmp_path, live_server, user, tiny_model, lora_files):
    """openapi-python-client turns the schema into a typed client, offline; the client submits through both
    APIs against a live server and reads the answers back into its models (which fails on an untyped or
    wrong schema: its parsers read each declared field)."""
    from django.test import Client
    from rest_framework.authtoken.models import Token

    schema = Client().get("/api/schema/?format=json").json()
    # JSON request bodies only, as a frontend sends: with DRF's form parsers listed too, this generator
    # (0.29.1) writes request functions that name a type it did not import.
    for operation in (op for path in schema["paths"].values() for op in path.values()):
        content = operation.get("requestBody", {}).get("content", {})
        if "application/json" in content:
            operation["requestBody"]["content"] = {"application/json": content["application/json"]}
    (tmp_path / "schema.json").write_text(json.dumps(schema))
    env = {**os.environ, "PATH": f"{GENERATOR.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    package = f"rq_client_{uuid.uuid4().hex[:8]}"
    done = subprocess.run(
        [str(GENERATOR), "generate", "--path", "schema.json", "--meta", "none", "--output-path", package],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    sys.path.insert(0, str(tmp_path))
    try:
        client_module = importlib.import_module(f"{package}.client")
        models = importlib.import_module(f"{package}.models")
        inference = importlib.import_module(f"{package}.api.v1.v1_inference")
        status = importlib.import_module(f"{package}.api.v1.v1_request_status")
        result = importlib.import_module(f"{package}.api.v1.v1_request_result")
        jobs_create = importlib.import_module(f"{package}.api.api.api_v1_jobs_create")
        jobs_retrieve = importlib.import_module(f"{package}.api.api.api_v1_jobs_retrieve")
        client = client_module.AuthenticatedClient(
            base_url=live_server.url, token=Token.objects.create(user=user).key, prefix="Token"
        )
        small = {"width": 64, "height": 64, "num_frames": 9, "sample_steps": 2}

        request = models.InferenceRequest.from_dict(
            {
                "model": "wan21_14b",
                "loras": [{"path": "job_a/job_a.safetensors"}],
                "prompts": [{"prompt": "a cat", **small}],
            }
        )
        accepted = inference.sync(client=client, body=request)
        assert isinstance(accepted, models.InferenceAccepted), accepted
        assert accepted.status == models.InferenceAcceptedStatusEnum.QUEUED
        read = status.sync(client=client, request_id=str(accepted.request_id))
        assert isinstance(read, models.RequestStatus), read
        assert read.status == models.RequestStatusEnum.IN_QUEUE and read.stale is False
        assert (read.progress.prompts, read.progress.steps, read.progress.fraction) == (1, 2, 0.0)
        answer = result.sync(client=client, request_id=str(accepted.request_id))
        assert isinstance(answer, models.RequestResult) and answer.outputs.videos == []
        assert answer.metadata.model == "wan21_14b" and answer.metadata.inference_time is None

        created = jobs_create.sync(
            client=client,
            body=models.JobCreate.from_dict({"prompts": [{"prompt": "a dog", **small}, {"prompt": "a cow", **small}]}),
        )
        assert isinstance(created, models.Job), created
        job = jobs_retrieve.sync(client=client, id=str(created.id))
        assert isinstance(job, models.Job) and job.status == models.JobStatusEnum.QUEUED
        assert (job.progress.prompt, job.progress.prompts, job.progress.step) == (0, 2, 0)
        assert job.outputs == [] and job.owner == "alice"
    finally:
        sys.path.remove(str(tmp_path))
        shutil.rmtree(tmp_path / package, ignore_errors=True)
