"""Property-based fuzzing of the API from its own OpenAPI schema (schemathesis): never a 5xx, and every
answer (errors included) matches the response schema documented for its status."""
from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis")


def test_openapi_fuzz_no_server_errors(eager):
    from hypothesis import HealthCheck, given, settings
    from schemathesis.checks import not_a_server_error, response_schema_conformance

    from polyfuse.serving.app import create_app
    from polyfuse.serving.settings import ServeConfig

    app = create_app(eager, ServeConfig(max_rows=4))
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    ops = [r.ok() for r in schema.get_all_operations()]
    assert {(op.method.upper(), op.path) for op in ops} >= {("POST", "/v1/predict"), ("POST", "/v1/embed")}
    statuses = []
    for op in ops:
        @given(case=op.as_strategy())
        @settings(max_examples=30 if op.method.upper() == "POST" else 3, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def check(case):
            response = case.call()
            statuses.append(response.status_code)
            case.validate_response(response, checks=[not_a_server_error, response_schema_conformance])
        check()
    assert 200 in statuses and max(statuses) < 500
