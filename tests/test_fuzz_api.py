"""Schema fuzzing (issue 12, item 7): schemathesis generates requests, valid and invalid, for every operation
of the gateway's own /openapi.json and sends them to a live gateway with an `--instant` CPU engine behind it.
Every answer must be a non-5xx, with a documented status and content type, and a body matching the documented
schema (for errors: the one envelope). Bounded: a few examples per operation, derandomized so a run repeats.

What it found when first run is listed in the module's commit message and the issue's closing note.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from openapi_spec_validator import validate
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from gateway.app import create_app
from tests.gateway_support import GatewayServer, fast_settings, running_gateway
from tests.support import running_engine

#: Examples per operation (valid and invalid together): 24 operations in about a minute on 2 busy cores.
MAX_EXAMPLES = 30
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]

SCHEMA = schemathesis.openapi.from_dict(create_app().openapi())
OPERATIONS = [result.ok() for result in SCHEMA.get_all_operations()]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayServer]:
    with running_engine("--instant") as engine, running_gateway(
        fast_settings(tmp_path_factory.mktemp("shared"), [engine.url], max_upload_bytes=2_000_000)
    ) as gw:
        yield gw


def test_served_openapi_document_is_valid(gateway: GatewayServer) -> None:
    document = httpx.get(f"{gateway.url}/openapi.json", timeout=30).json()
    validate(document)  # OpenAPI 3.1 meta-schema: raises on any violation
    errors = document["paths"]["/v1/audio/speech"]["post"]["responses"]
    assert {"400", "404", "413", "415", "422", "429", "502", "503", "504"} <= set(errors)
    assert errors["422"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}
    assert "text/plain" in document["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    voices_form = document["paths"]["/v1/voices"]["post"]["requestBody"]["content"]["multipart/form-data"]
    assert set(voices_form["schema"]["required"]) == {"name", "audio"}


@pytest.mark.parametrize("operation", OPERATIONS, ids=[operation.label for operation in OPERATIONS])
def test_fuzz_operation(gateway: GatewayServer, operation: schemathesis.APIOperation) -> None:
    @settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate, Phase.shrink])
    # valid and invalid requests; an operation with nothing to get wrong (no parameters) draws only valid ones
    @given(case=st.one_of(*(operation.as_strategy(generation_mode=mode) for mode in GenerationMode)))
    def run(case: schemathesis.Case) -> None:
        case.call_and_validate(base_url=gateway.url, checks=CHECKS, timeout=30)

    run()
