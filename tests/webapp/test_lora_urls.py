"""LoRA URLs: the allowlist, public addresses only, redirects, size and time caps; no test needs the internet."""

import http.client
import io
import socket
import ssl
import time

import pytest

from webapp.core import outbound
from webapp.core.errors import ApiError
from webapp.core.outbound import is_public_address
from webapp.loras import fetch
from webapp.loras.fetch import _host_allowed, _read_capped, _vet_redirect, lora_download

PUBLIC_IP = "93.184.216.34"


def code_of(**kwargs) -> ApiError:
    with pytest.raises(ApiError) as info:
        lora_download(**kwargs)
    return info.value


@pytest.fixture
def allow(settings):
    def _allow(*hosts):
        settings.LORA_URL_ALLOWED_HOSTS = list(hosts)

    _allow("example.com", ".hf.example.org")
    return _allow


# --- refusals before any network -------------------------------------------------------------------------


def test_urls_are_disabled_by_default(settings):
    settings.LORA_URL_ALLOWED_HOSTS = []
    assert code_of(url="https://example.com/a.safetensors").code == "LORA_URL_DISABLED"


def test_http_is_refused(allow):
    assert code_of(url="http://example.com/a.safetensors").code == "LORA_URL_NOT_HTTPS"
    assert code_of(url="ftp://example.com/a.safetensors").code == "LORA_URL_NOT_HTTPS"


@pytest.mark.parametrize(
    "url",
    [
        "https://user:pw@example.com/a.safetensors",
        "https://user@example.com/a.safetensors",
        "https://example.com@evil.net/a.safetensors",
    ],
)
def test_userinfo_is_refused(allow, url):
    assert code_of(url=url).code == "LORA_URL_INVALID"


@pytest.mark.parametrize(
    "url",
    [
        "https://[::1/a.safetensors",
        "https://example.com:99999/a.safetensors",
        "https://example.com:port/a.safetensors",
        "https:///a.safetensors",
        "https://exa mple.com/a.safetensors",
        "https://example.com/a\n.safetensors",
    ],
)
def test_malformed_urls_are_refused(allow, url):
    assert code_of(url=url).code == "LORA_URL_INVALID"


@pytest.mark.parametrize(
    "host", ["evil.net", "notexample.com", "example.com.evil.net", "hf.example.org.evil.net", "example.org"]
)
def test_host_not_on_the_allowlist_is_refused(allow, host):
    error = code_of(url=f"https://{host}/a.safetensors")
    assert error.code == "LORA_URL_HOST_NOT_ALLOWED"
    assert error.details["host"] == host


@pytest.mark.parametrize(
    "host,allowed",
    [
        ("example.com", True),
        ("EXAMPLE.com", True),
        ("www.example.com", False),
        ("hf.example.org", True),
        ("cdn.hf.example.org", True),
        ("a.b.hf.example.org", True),
        ("xhf.example.org", False),
        ("example.org", False),
    ],
)
def test_allowlist_matches_exactly_or_by_leading_dot(host, allowed):
    assert _host_allowed(host=host, allowed=["Example.COM", ".hf.example.org"]) is allowed


def test_subdomain_rule_lets_the_url_through_to_address_checks(allow, dns):
    dns["cdn.hf.example.org"] = ["10.1.2.3"]
    assert code_of(url="https://cdn.hf.example.org/x/a.safetensors").code == "LORA_URL_PRIVATE_ADDRESS"


@pytest.mark.parametrize(
    "path",
    [
        "/model.bin",
        "/",
        "",
        "/.safetensors",
        "/a.safetensors/",
        "/a.safetensors.zip",
        "/x/a%2Fb.safetensors",
        "/a.ckpt?f=a.safetensors",
    ],
)
def test_path_must_name_a_safetensors_file(allow, path):
    assert code_of(url=f"https://example.com{path}").code == "LORA_URL_INVALID"


# --- addresses --------------------------------------------------------------------------------------------


def test_allowlisted_localhost_is_refused_after_resolution(allow):
    allow("localhost")
    error = code_of(url="https://localhost/a.safetensors")  # resolved from /etc/hosts, no network
    assert error.code == "LORA_URL_PRIVATE_ADDRESS"


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "10.0.0.1", "169.254.169.254", "[::1]", "[::ffff:127.0.0.1]", "0.0.0.0", "127.1"]
)
def test_ip_literals_that_are_not_global_are_refused_even_when_allowlisted(allow, host):
    allow(host)
    assert code_of(url=f"https://{host}/a.safetensors").code == "LORA_URL_PRIVATE_ADDRESS"


@pytest.mark.parametrize("host", ["127.0.0.1", "169.254.169.254", "[::1]"])
def test_ip_literals_are_refused_by_the_allowlist_first(allow, host):
    assert code_of(url=f"https://{host}/a.safetensors").code == "LORA_URL_HOST_NOT_ALLOWED"


@pytest.mark.parametrize(
    "address,public",
    [
        ("8.8.8.8", True),
        (PUBLIC_IP, True),
        ("2606:4700::1111", True),
        ("::ffff:8.8.8.8", True),
        ("127.0.0.1", False),
        ("10.0.0.1", False),
        ("172.16.0.1", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),
        ("100.64.0.1", False),
        ("0.0.0.0", False),
        ("224.0.0.1", False),
        ("240.0.0.1", False),
        ("255.255.255.255", False),
        ("::1", False),
        ("::", False),
        ("fe80::1%eth0", False),
        ("fc00::1", False),
        ("ff02::1", False),
        ("::ffff:127.0.0.1", False),
        ("::ffff:10.0.0.1", False),
        ("64:ff9b::a00:1", False),
        ("2002:7f00:1::", False),
        ("not-an-ip", False),
    ],
)
def test_public_address_rule(address, public):
    assert is_public_address(address=address) is public


def test_every_resolved_address_must_be_public(allow, dns):
    dns["example.com"] = [PUBLIC_IP, "192.168.0.5"]
    assert code_of(url="https://example.com/a.safetensors").code == "LORA_URL_PRIVATE_ADDRESS"


def test_unresolvable_host_fails_to_fetch(allow, dns):
    assert code_of(url="https://example.com/a.safetensors").code == "LORA_URL_FETCH_FAILED"


def test_connection_goes_to_the_vetted_ip_with_sni_and_verification_for_the_host(monkeypatch):
    calls = {}
    raw = object()

    def fake_create_connection(address, timeout=None, *args, **kwargs):
        calls["connect"] = (address, timeout)
        return raw

    class Context:
        check_hostname = True
        verify_mode = ssl.CERT_REQUIRED
        post_handshake_auth = None

        def wrap_socket(self, sock, server_hostname=None, **kwargs):
            calls["wrap"] = (sock, server_hostname)
            return "tls-socket"

    monkeypatch.setattr(outbound.socket, "create_connection", fake_create_connection)
    conn = outbound.VettedHTTPSConnection("example.com", address=PUBLIC_IP, port=8443, timeout=5.0, context=Context())
    conn.connect()
    assert calls == {"connect": ((PUBLIC_IP, 8443), 5.0), "wrap": (raw, "example.com")}
    assert conn.sock == "tls-socket"


# --- redirects ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "location,target",
    [
        ("/v2/a.safetensors", "https://example.com/v2/a.safetensors"),
        ("b.safetensors?sig=1", "https://example.com/files/b.safetensors?sig=1"),
        ("https://EXAMPLE.com/c.safetensors", "https://EXAMPLE.com/c.safetensors"),
        ("https://example.com:443/c.safetensors", "https://example.com:443/c.safetensors"),
    ],
)
def test_redirect_on_the_same_https_host_is_followed(location, target):
    assert _vet_redirect(current_url="https://example.com/files/a.safetensors", location=location) == target


@pytest.mark.parametrize(
    "location",
    [
        "https://cdn.example.com/a.safetensors",
        "//evil.net/a.safetensors",
        "http://example.com/a.safetensors",
        "https://example.com:8443/a.safetensors",
        "https://user@example.com/a.safetensors",
        "https://127.0.0.1/a.safetensors",
        "file:///etc/passwd",
        "https://[::1/a",
    ],
)
def test_redirect_off_the_host_is_refused(location):
    with pytest.raises(ApiError) as info:
        _vet_redirect(current_url="https://example.com/files/a.safetensors", location=location)
    assert info.value.code == "LORA_URL_REDIRECT_REFUSED"


# --- body size and time -------------------------------------------------------------------------------------


class FakeResponse(io.BytesIO):
    """What _read_capped needs of an HTTPResponse: headers and reads; counts the bytes handed out."""

    def __init__(self, body: bytes, *, headers: dict | None = None, status: int = 200, chunk_delay: float = 0.0):
        super().__init__(body)
        self.headers = {k.lower(): v for k, v in (headers or {}).items()}
        self.status = status
        self.chunk_delay = chunk_delay
        self.served = 0

    def getheader(self, name, default=None):
        return self.headers.get(name.lower(), default)

    def read1(self, n=-1):
        time.sleep(self.chunk_delay)
        chunk = super().read1(min(n, 1000) if n > 0 else 1000)
        self.served += len(chunk)
        return chunk


def far() -> float:
    return time.monotonic() + 60


def test_read_capped_returns_the_body_at_offset_zero():
    body = bytes(range(256)) * 20
    out = _read_capped(
        response=FakeResponse(body, headers={"Content-Length": str(len(body))}), limit=len(body), deadline=far()
    )
    assert out.tell() == 0 and out.read() == body


def test_declared_length_over_the_cap_is_refused_before_reading():
    response = FakeResponse(b"x" * 10, headers={"Content-Length": "1000001"})
    with pytest.raises(ApiError) as info:
        _read_capped(response=response, limit=1_000_000, deadline=far())
    assert info.value.code == "LORA_URL_TOO_LARGE" and info.value.details["size"] == 1000001
    assert response.served == 0


def test_reading_stops_past_the_cap_without_a_declared_length():
    response = FakeResponse(b"x" * 50_000)
    with pytest.raises(ApiError) as info:
        _read_capped(response=response, limit=4_500, deadline=far())
    assert info.value.code == "LORA_URL_TOO_LARGE"
    assert response.served <= 5_000  # stopped at the first chunk past the cap, not at the end


def test_a_body_that_lies_about_its_length_is_caught_by_the_cap():
    response = FakeResponse(b"x" * 50_000, headers={"Content-Length": "100"})
    with pytest.raises(ApiError) as info:
        _read_capped(response=response, limit=4_500, deadline=far())
    assert info.value.code == "LORA_URL_TOO_LARGE"


def test_overall_deadline_stops_a_slow_body():
    response = FakeResponse(b"x" * 100_000, chunk_delay=0.02)
    started = time.monotonic()
    with pytest.raises(ApiError) as info:
        _read_capped(response=response, limit=10**9, deadline=started + 0.1)
    assert info.value.code == "LORA_URL_TIMEOUT"
    assert time.monotonic() - started < 1


@pytest.mark.parametrize("declared,body", [("100", b"x" * 40), ("abc", b"x"), ("-1", b"x")])
def test_truncated_or_unparseable_lengths_fail(declared, body):
    with pytest.raises(ApiError) as info:
        _read_capped(response=FakeResponse(body, headers={"Content-Length": declared}), limit=1000, deadline=far())
    assert info.value.code == "LORA_URL_FETCH_FAILED"


def test_watchdog_wakes_a_read_blocked_past_the_deadline():
    ours, theirs = socket.socketpair()  # a local pair: a peer that never sends

    class Conn:
        sock = ours

    started = time.monotonic()
    timer = outbound.watchdog(conn=Conn(), deadline=started + 0.2)
    try:
        ours.settimeout(5)
        assert ours.recv(10) == b""
        assert time.monotonic() - started < 2
    finally:
        timer.cancel()
        ours.close()
        theirs.close()


# --- the whole download with a scripted server ---------------------------------------------------------------


@pytest.fixture
def server(allow, dns, monkeypatch):
    """Replace the TLS connection with scripted responses keyed by (host, path); count the requests."""
    dns["example.com"] = [PUBLIC_IP]
    routes: dict[tuple[str, str], object] = {}
    seen: list[tuple[str, str, str]] = []

    class FakeConnection:
        def __init__(self, host, *, address, port, timeout, context):
            self.host, self.address, self.sock = host, address, None
            assert context.check_hostname and timeout > 0

        def request(self, method, path, headers=None):
            seen.append((self.host, self.address, path))
            route = routes[(self.host, path)]
            if isinstance(route, BaseException):
                raise route
            self.response = route() if callable(route) else route

        def getresponse(self):
            return self.response

        def close(self):
            pass

    monkeypatch.setattr(fetch, "VettedHTTPSConnection", FakeConnection)
    return routes, seen


def redirect(location, status=302):
    return FakeResponse(b"", headers={"Location": location}, status=status)


def test_download_follows_a_same_host_redirect(server):
    routes, seen = server
    routes[("example.com", "/a.safetensors")] = redirect("/blobs/123?sig=x", status=307)
    routes[("example.com", "/blobs/123?sig=x")] = FakeResponse(b"weights", headers={"Content-Length": "7"})
    fh, filename = lora_download(url="https://example.com/a.safetensors")
    assert (fh.read(), filename) == (b"weights", "a.safetensors")
    assert seen == [("example.com", PUBLIC_IP, "/a.safetensors"), ("example.com", PUBLIC_IP, "/blobs/123?sig=x")]


def test_download_refuses_a_redirect_to_another_host(server):
    routes, seen = server
    routes[("example.com", "/a.safetensors")] = redirect("https://cdn.other.net/a.safetensors")
    assert code_of(url="https://example.com/a.safetensors").code == "LORA_URL_REDIRECT_REFUSED"
    assert len(seen) == 1


def test_download_follows_at_most_three_redirects(server):
    routes, seen = server
    for hop in range(4):
        routes[("example.com", f"/{hop}.safetensors")] = redirect(f"/{hop + 1}.safetensors")
    routes[("example.com", "/4.safetensors")] = FakeResponse(b"weights")
    assert code_of(url="https://example.com/0.safetensors").code == "LORA_URL_REDIRECT_REFUSED"
    assert len(seen) == 4

    routes[("example.com", "/1.safetensors")] = FakeResponse(b"weights")  # three hops from 4 -> body
    fh, filename = lora_download(url="https://example.com/1.safetensors")
    assert fh.read() == b"weights" and filename == "1.safetensors"


def test_download_re_vets_the_address_after_a_redirect(server, dns):
    routes, seen = server

    def rebinding_redirect():  # once the first request is made, the host's DNS answer turns private
        dns["example.com"] = ["127.0.0.1"]
        return redirect("/b.safetensors")

    routes[("example.com", "/a.safetensors")] = rebinding_redirect
    routes[("example.com", "/b.safetensors")] = FakeResponse(b"weights")
    assert code_of(url="https://example.com/a.safetensors").code == "LORA_URL_PRIVATE_ADDRESS"
    assert len(seen) == 1


def test_download_reports_a_non_2xx_status(server):
    routes, _ = server
    routes[("example.com", "/a.safetensors")] = FakeResponse(b"gone", status=404)
    error = code_of(url="https://example.com/a.safetensors")
    assert error.code == "LORA_URL_FETCH_FAILED" and error.details["status"] == 404


def test_download_refuses_a_declared_size_over_the_cap(server, settings):
    routes, _ = server
    settings.LORA_URL_MAX_BYTES = 1000
    routes[("example.com", "/a.safetensors")] = FakeResponse(b"", headers={"Content-Length": "1001"})
    assert code_of(url="https://example.com/a.safetensors").code == "LORA_URL_TOO_LARGE"


@pytest.mark.parametrize(
    "exc,code",
    [
        (ConnectionRefusedError("refused"), "LORA_URL_FETCH_FAILED"),
        (ssl.SSLCertVerificationError("certificate verify failed"), "LORA_URL_FETCH_FAILED"),
        (http.client.RemoteDisconnected("closed"), "LORA_URL_FETCH_FAILED"),
        (TimeoutError("timed out"), "LORA_URL_TIMEOUT"),
    ],
)
def test_network_errors_map_to_stable_codes(server, exc, code):
    routes, _ = server
    routes[("example.com", "/a.safetensors")] = exc
    assert code_of(url="https://example.com/a.safetensors").code == code


# --- a job naming a LoRA by URL: accepted at once, fetched on the CPU queue ---------------------------------------


@pytest.fixture
def sent(monkeypatch, dns):
    """The broker messages a test's committed transactions send: (task, queue)."""
    from workers.celery_app import app

    messages = []
    monkeypatch.setattr(app, "send_task", lambda name, args, queue, **kw: messages.append((name, queue)))
    return messages


def submit_with_url(api, url, multiplier=0.5):
    response = api.post(
        "/api/v1/jobs/",
        {
            "loras": [{"lora": url, "multiplier": multiplier}],
            "prompts": [{"prompt": "a cat", "width": 64, "height": 64}],
        },
        format="json",
    )
    assert response.status_code == 201, response.json()
    return response.json()


@pytest.mark.django_db(transaction=True)
def test_a_url_lora_is_fetched_on_the_cpu_queue_not_in_the_request(api, server, sent, lora_files):
    from webapp.jobs.models import GenerationJob
    from workers import tasks

    routes, seen = server
    body = lora_files["a"].read_bytes()
    routes[("example.com", "/a.safetensors")] = lambda: FakeResponse(body, headers={"Content-Length": str(len(body))})
    job = submit_with_url(api, "https://example.com/a.safetensors")
    assert seen == [] and sent == [("workers.fetch_job_loras", "celery")]  # no byte downloaded by the web process
    assert job["status"] == "queued" and job["loras"][0]["lora"] is None

    assert tasks.fetch_job_loras(job["id"]) == "fetched"
    assert len(seen) == 1 and sent[-1] == ("workers.render_job", "gpu")
    job_lora = GenerationJob.objects.get(pk=job["id"]).job_loras.get()
    assert (job_lora.lora.sha256, job_lora.sha256, job_lora.multiplier) == (job_lora.lora.sha256, job_lora.sha256, 0.5)
    assert job_lora.lora.sha256 == __import__("hashlib").sha256(body).hexdigest()
    assert tasks.fetch_job_loras(job["id"]) == "fetched" and len(seen) == 1  # a second delivery downloads nothing

    again = submit_with_url(api, "https://example.com/a.safetensors")  # registered now: renders at once
    assert again["loras"][0]["lora"] == job_lora.lora_id and sent[-1] == ("workers.render_job", "gpu")


@pytest.mark.django_db(transaction=True)
def test_a_url_that_cannot_be_fetched_fails_its_job_with_the_code(api, server, sent):
    from webapp.jobs.models import GenerationJob
    from workers import tasks

    routes, _ = server
    routes[("example.com", "/gone.safetensors")] = FakeResponse(b"gone", status=404)
    job = submit_with_url(api, "https://example.com/gone.safetensors")
    assert tasks.fetch_job_loras(job["id"]) == "LORA_URL_FETCH_FAILED"
    failed = GenerationJob.objects.get(pk=job["id"])
    assert (failed.status, failed.error_code) == ("failed", "LORA_URL_FETCH_FAILED")
    assert sent == [("workers.fetch_job_loras", "celery")]  # never sent to render
