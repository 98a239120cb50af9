"""Property-based fuzzing of the API with schemathesis, from its own OpenAPI document: every
operation gets generated requests, valid and invalid; no answer is a 5xx, and every answer
(status, content type, headers, body) is one the document describes."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from bgjobs.server.openapi import spec
from tests.api_task_fixtures import METRICS_AUTH, Api, api_fixture  # noqa: F401

#: Generated requests per operation and mode: bounded, so the suite stays fast.
EXAMPLES = 60
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_headers_conformance, response_schema_conformance]
# Every operation with valid requests; those that take input, with invalid ones too.
CASES = [(path, method, mode) for path, ops in spec()["paths"].items()
         for method, op in ops.items()
         for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
         if mode == GenerationMode.POSITIVE or op.get("parameters") or op.get("requestBody")]


@pytest.mark.parametrize(("path", "method", "mode"), CASES,
                         ids=[f"{m.upper()} {p} {mode.value}" for p, m, mode in CASES])
def test_the_api_answers_as_its_document_says(api: Api, path: str, method: str,
                                              mode: GenerationMode) -> None:
    operation = schemathesis.openapi.from_wsgi("/api/openapi.json", api.app)[path][method]
    headers = METRICS_AUTH if path == "/metrics" else api.alice.headers

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def fuzz(case: schemathesis.Case) -> None:
        case.call_and_validate(headers=headers, checks=CHECKS)

    fuzz()
