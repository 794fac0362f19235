"""Property-based fuzzing of every documented operation (schemathesis): no 500s, responses match the schema."""

import pytest
import schemathesis
from django.core import signals
from django.db import close_old_connections
from hypothesis import HealthCheck, given, settings
from rest_framework.authtoken.models import Token
from schemathesis.specs.openapi.checks import positive_data_acceptance

from webapp.wsgi import application

EXAMPLES_PER_OPERATION = 30


@pytest.fixture
def api_schema(db, tiny_model, lora_files):
    # Requests made through the WSGI app must not close the test's database connection.
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    yield schemathesis.openapi.from_wsgi("/api/schema/", application)
    signals.request_started.connect(close_old_connections)
    signals.request_finished.connect(close_old_connections)


def test_api_never_fails_and_matches_its_schema(api_schema, django_user_model):
    user = django_user_model.objects.create_user("fuzzer", password="pw-fuzz-123")
    headers = {"Authorization": f"Token {Token.objects.create(user=user).key}"}
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) > 20

    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES_PER_OPERATION, deadline=None, suppress_health_check=list(HealthCheck), database=None
        )
        def check(case):
            # Schema-valid requests may still name things that do not exist (a LoRA, a login):
            # those 4xx are correct, so "positive data acceptance" is not checked.
            case.call_and_validate(headers=headers, excluded_checks=[positive_data_acceptance])

        check()
