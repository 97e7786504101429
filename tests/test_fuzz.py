"""Schemathesis against the service's own OpenAPI schema, on a real server with keys on: every
operation, with generated (valid and invalid) inputs, must never answer 5xx and every answer
must match the schema's response for its status. A small per-operation budget keeps it under
two minutes; half the generated calls go to a live collection, so they reach the engine and
not only the 404 of an unknown name."""

from __future__ import annotations

import hypothesis.strategies as st
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error, response_schema_conformance

from annserve.bench.server_process import ServeProcess

pytestmark = pytest.mark.integration

ADMIN = {"X-API-Key": "fuzz-admin"}
LIVE = "fuzz"  # a collection that exists, dim 4
EXAMPLES = 15  # per operation; ~25 operations

schema = schemathesis.pytest.from_fixture("api_schema")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz")
    env = {
        "ANNSERVE_ADMIN_API_KEY": ADMIN["X-API-Key"],
        "ANNSERVE_API_KEY": "fuzz-read",
        "ANNSERVE_MAX_BATCH": "16",
        "ANNSERVE_MAX_UPSERT_BATCH": "64",
    }
    server = ServeProcess(tmp / "data", tmp / "server.log", env)
    client = server.start()
    client.headers.update(ADMIN)
    body = {"name": LIVE, "dim": 4, "metric": "l2", "index": {"kind": "flat"}}
    assert client.post("/collections", json=body).status_code == 201
    items = [{"id": f"i{n}", "vector": [n, 1, 2, 3], "payload": {"n": n, "tag": "t"}} for n in range(20)]
    assert client.post(f"/collections/{LIVE}/vectors", json={"items": items}).status_code == 200
    client.close()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def api_schema(server):
    loaded = schemathesis.openapi.from_url(f"{server.url}/openapi.json")

    @loaded.hook
    def flatmap_path_parameters(context, path_parameters):
        # The live collection (and a live item) for half the calls; never delete them (later
        # calls need them).
        if (
            not path_parameters
            or "name" not in path_parameters
            or context.operation.method.upper() == "DELETE"
        ):
            return st.just(path_parameters)
        live = {**path_parameters, "name": LIVE}
        if "item_id" in live:
            live["item_id"] = "i3"
        return st.sampled_from([path_parameters, live])

    return loaded


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
    database=None,
)
def test_no_5xx_and_answers_match_the_schema(case, server):
    case.call_and_validate(
        base_url=server.url,
        headers=ADMIN,
        timeout=30,
        checks=[not_a_server_error, response_schema_conformance],
    )
