"""Passwords cannot be guessed at speed: POST /api/v1/auth/token and the sign-in page are throttled per
username and per client address (429 RATE_LIMITED / a plain message), and right passwords never count."""

import random
import uuid

import pytest
from django.test import Client
from rest_framework.test import APIClient

from webapp.core.auth import AddressSignInThrottle, UsernameSignInThrottle

pytestmark = pytest.mark.django_db
TOKEN, LOGIN = "/api/v1/auth/token", "/accounts/login/"
PER_USERNAME, PER_ADDRESS = UsernameSignInThrottle().num_requests, AddressSignInThrottle().num_requests


def address() -> str:
    """A client address of this test alone (a Redis cache keeps counts between test runs)."""
    return "10.{}.{}.{}".format(*random.sample(range(1, 255), 3))


@pytest.fixture
def member(django_user_model):
    """A user of this test alone: (username, password)."""
    name = f"member-{uuid.uuid4().hex[:10]}"
    django_user_model.objects.create_user(username=name, password="pw-right-123")
    return name, "pw-right-123"


def token(client, username, password, **extra):
    return client.post(TOKEN, {"username": username, "password": password}, format="json", **extra)


def sign_in(client, username, password, **extra):
    return client.post(LOGIN, {"username": username, "password": password}, **extra)


def assert_rate_limited(response):
    assert response.status_code == 429, response.content[:300]
    assert response.json()["error"]["code"] == "RATE_LIMITED"
    assert int(response["Retry-After"]) > 0


# --- the token endpoint ----------------------------------------------------------------------------------------


def test_wrong_passwords_for_one_username_are_throttled_from_any_address(member):
    username, password = member
    for _ in range(PER_USERNAME):
        response = token(APIClient(REMOTE_ADDR=address()), username, "wrong")
        assert response.status_code == 400 and response.json()["error"]["code"] == "VALIDATION_ERROR"
    assert_rate_limited(token(APIClient(REMOTE_ADDR=address()), username, "wrong"))
    # throttled means unchecked: the right password gets no token now either
    assert_rate_limited(token(APIClient(REMOTE_ADDR=address()), username, password))


def test_spellings_of_one_username_share_its_count(member):
    username, _ = member
    spellings = [username, username.upper(), f"  {username} ", username.title()]
    for i in range(PER_USERNAME):
        assert token(APIClient(REMOTE_ADDR=address()), spellings[i % 4], "wrong").status_code == 400
    assert_rate_limited(token(APIClient(REMOTE_ADDR=address()), username.upper(), "wrong"))


def test_wrong_passwords_from_one_address_are_throttled_across_usernames(member):
    client = APIClient(REMOTE_ADDR=address())
    for _ in range(PER_ADDRESS):
        assert token(client, f"nobody-{uuid.uuid4().hex}", "wrong").status_code == 400
    assert_rate_limited(token(client, *member))
    assert token(APIClient(REMOTE_ADDR=address()), *member).status_code == 200  # another address is not


def test_a_forwarded_for_header_is_not_trusted_by_default(member):
    client = APIClient(REMOTE_ADDR=address())
    for _ in range(PER_ADDRESS):
        forwarded = {"HTTP_X_FORWARDED_FOR": address()}
        assert token(client, f"nobody-{uuid.uuid4().hex}", "wrong", **forwarded).status_code == 400
    assert_rate_limited(token(client, f"nobody-{uuid.uuid4().hex}", "wrong", HTTP_X_FORWARDED_FOR=address()))


def test_behind_a_trusted_proxy_the_address_it_saw_counts(member, settings):
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "NUM_PROXIES": 1}
    proxy, client_address = APIClient(REMOTE_ADDR=address()), address()
    for _ in range(PER_ADDRESS):
        forwarded = {"HTTP_X_FORWARDED_FOR": f"{address()}, {client_address}"}  # what the client sent, then the proxy
        assert token(proxy, f"nobody-{uuid.uuid4().hex}", "wrong", **forwarded).status_code == 400
    assert_rate_limited(token(proxy, *member, HTTP_X_FORWARDED_FOR=client_address))
    assert token(proxy, *member, HTTP_X_FORWARDED_FOR=address()).status_code == 200  # another client behind it


def test_right_passwords_never_use_up_the_rates(member):
    username, password = member
    client = APIClient(REMOTE_ADDR=address())
    for _ in range(PER_ADDRESS + 5):
        response = token(client, username, password)
        assert response.status_code == 200 and response.json()["token"]
    for _ in range(PER_USERNAME - 1):
        assert token(client, username, "wrong").status_code == 400
    assert token(client, username, password).status_code == 200  # one wrong guess is still left
    assert token(client, username, "wrong").status_code == 400
    assert_rate_limited(token(client, username, "wrong"))


def test_a_malformed_body_is_an_error_not_a_crash():
    client = APIClient(REMOTE_ADDR=address())
    response = client.post(TOKEN, [1, 2], format="json")
    assert response.status_code == 400
    response = client.post(TOKEN, {"username": ["a"], "password": "x"}, format="json")
    assert response.status_code == 400


# --- the sign-in page --------------------------------------------------------------------------------------------


def test_the_sign_in_page_throttles_wrong_passwords_with_a_plain_message(member):
    username, password = member
    for _ in range(PER_USERNAME):
        response = sign_in(Client(REMOTE_ADDR=address()), username, "wrong")
        assert response.status_code == 200 and "didn't match" in response.content.decode()
    client = Client(REMOTE_ADDR=address())
    response = sign_in(client, username, password)
    page = response.content.decode()
    assert response.status_code == 429 and "Too many sign-in attempts" in page and "didn't match" not in page
    assert int(response["Retry-After"]) > 0 and username in page  # the name stays filled in
    assert "_auth_user_id" not in client.session


def test_the_sign_in_page_throttles_per_address(member):
    client = Client(REMOTE_ADDR=address())
    for _ in range(PER_ADDRESS):
        assert sign_in(client, f"nobody-{uuid.uuid4().hex}", "wrong").status_code == 200
    assert sign_in(client, *member).status_code == 429


def test_signing_in_right_on_the_page_is_never_throttled(member):
    client = Client(REMOTE_ADDR=address())
    for _ in range(PER_ADDRESS + 5):
        response = sign_in(client, *member)
        assert response.status_code == 302 and response["Location"] == "/"
        client.logout()


def test_the_page_and_the_api_share_the_counts(member):
    username, password = member
    for i in range(PER_USERNAME):
        if i % 2:
            assert sign_in(Client(REMOTE_ADDR=address()), username, "wrong").status_code == 200
        else:
            assert token(APIClient(REMOTE_ADDR=address()), username, "wrong").status_code == 400
    assert sign_in(Client(REMOTE_ADDR=address()), username, password).status_code == 429
    assert_rate_limited(token(APIClient(REMOTE_ADDR=address()), username, password))
