"""Property-based fuzzing of every documented operation (schemathesis): no 500s, responses match the schema.

Schemathesis draws requests that fit the schema and requests that break it; on top of those, every
operation that takes a JSON body gets large and deep JSON values (schemathesis bounds neither) and
raw text nested far past Python's own limit.
"""

import pytest
import schemathesis
from django.core import signals
from django.db import close_old_connections
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import negative_data_rejection, positive_data_acceptance

from webapp.wsgi import application

pytestmark = pytest.mark.fuzz
EXAMPLES_PER_OPERATION = {GenerationMode.POSITIVE: 40, GenerationMode.NEGATIVE: 30}
BODY_EXAMPLES_PER_OPERATION = 25
SETTINGS = dict(deadline=None, suppress_health_check=list(HealthCheck), database=None)
# Schema-valid requests may still name things that do not exist (a LoRA, a login): those 4xx are correct.
# Schema-violating ones DRF reads leniently (a query parameter it ignores, "limit=false") may succeed. Neither is
# a failure here: every other check runs, a 5xx first among them.
EXCLUDED = [positive_data_acceptance, negative_data_rejection]

SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=300)
)
# Wide and large (up to a few thousand leaves) or narrow and deep (past the parser's 32 levels, within what
# the client can serialize).
LARGE = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=30) | st.dictionaries(st.text(max_size=20), inner, max_size=30),
    max_leaves=3000,
)
DEEP = st.integers(min_value=1, max_value=400).flatmap(
    lambda depth: st.lists(st.sampled_from(["list", "dict"]), min_size=depth, max_size=depth)
)


def nested(kinds: list[str], leaf):
    for kind in reversed(kinds):
        leaf = [leaf] if kind == "list" else {"k": leaf}
    return leaf


@pytest.fixture
def api_schema(db, tiny_model, lora_files):
    # Requests made through the WSGI app must not close the test's database connection.
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    yield schemathesis.openapi.from_wsgi("/api/schema/", application)
    signals.request_started.connect(close_old_connections)
    signals.request_finished.connect(close_old_connections)


@pytest.fixture
def token(django_user_model) -> str:
    user = django_user_model.objects.create_user("fuzzer", password="pw-fuzz-123")
    return Token.objects.create(user=user).key


def _operations(api_schema):
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) > 20
    return operations


def _takes_json(operation) -> bool:
    return any(body.media_type == "application/json" for body in operation.body)


def test_api_never_fails_and_matches_its_schema(api_schema, token):
    headers = {"Authorization": f"Token {token}"}
    for operation in _operations(api_schema):
        for mode, examples in EXAMPLES_PER_OPERATION.items():

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(max_examples=examples, **SETTINGS)
            def check(case):
                case.call_and_validate(headers=headers, excluded_checks=EXCLUDED)

            try:
                check()
            except Unsatisfiable:  # an operation without parameters or body has nothing to break
                assert mode == GenerationMode.NEGATIVE


def test_large_and_deep_json_bodies_never_fail(api_schema, token):
    headers = {"Authorization": f"Token {token}"}
    operations = [operation for operation in _operations(api_schema) if _takes_json(operation)]
    assert len(operations) >= 6

    for operation in operations:

        @given(
            case=operation.as_strategy(media_type="application/json"),
            value=LARGE | st.builds(nested, DEEP, SCALARS),
            where=st.sampled_from(["body", "field", "prompt"]),
        )
        @settings(max_examples=BODY_EXAMPLES_PER_OPERATION, **SETTINGS)
        def check(case, value, where):
            body = case.body if isinstance(case.body, dict) and case.media_type == "application/json" else {}
            case.media_type = "application/json"
            if where == "body":
                case.body = value
            elif where == "field":
                case.body = {**body, "extra": value}
            else:
                case.body = {**body, "prompts": [{"prompt": "x", "extra": value}], "items": [{"prompt": value}]}
            case.call_and_validate(headers=headers, excluded_checks=EXCLUDED)

        check()


def test_raw_json_nested_past_pythons_limit_never_fails(api_schema, token):
    client = APIClient(raise_request_exception=False)
    client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    operations = [operation for operation in _operations(api_schema) if _takes_json(operation)]

    for operation in operations:

        @given(
            case=operation.as_strategy(media_type="application/json"),
            depth=st.integers(min_value=33, max_value=200_000),
            opener=st.sampled_from(["[", '{"a":', '{"prompts": [{"prompt": "x", "extra": [']),
            closed=st.booleans(),
        )
        @settings(max_examples=10, **SETTINGS)
        def check(case, depth, opener, closed):
            closer = {"[": "]", '{"a":': "}"}.get(opener, "]}]}")
            raw = opener * depth + ("1" + closer * depth if closed else "")
            response = client.generic(case.method, case.formatted_path, raw, content_type="application/json")
            assert response.status_code < 500, response.content[:300]
            if response.status_code >= 400:
                assert set(response.json()["error"]) == {"code", "message", "details"}

        check()
