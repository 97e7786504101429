"""annserve.Client and AsyncClient against a real `annserve serve` process (every call, the errors with
their status and detail), and against a small scripted HTTP server of our own on a loopback socket for
what the real one cannot be made to do on demand (answer 503 twice, drop a connection, stall) and to see
exactly what the client sends (the API key header, optional fields). Also the shell commands that use
the client: `annserve collections`, `search`, `rebuild --wait`."""

from __future__ import annotations

import ast
import asyncio
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
import pytest
from conftest import K, serving
from typer.testing import CliRunner

from annserve import (
    ApiConnectionError,
    ApiError,
    AsyncClient,
    Client,
    ConflictError,
    Hit,
    InvalidRequestError,
    NotFoundError,
    Record,
)
from annserve.bench.server_process import ServeProcess, free_port
from annserve.cli import cli
from annserve.indexes import brute_force_knn

pytestmark = pytest.mark.integration

N = 2000  # GloVe rows upserted into the real server
FAST = {"retries": 3, "backoff": 0.01}


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[ServeProcess]:
    """One real server for the module; stopped (and reaped) at the end, whatever happens."""
    with serving(tmp_path_factory.mktemp("client")) as server:
        yield server


@pytest.fixture()
def client(server) -> Iterator[Client]:
    with Client(server.url, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def glove_items(server, glove) -> str:
    """A flat (exact) cosine collection: the first N GloVe rows, ids "0".."N-1", payloads {"row": i}."""
    with Client(server.url, timeout=60) as client:
        client.create_collection("glove", dim=glove.dim, metric="cosine", index="flat")
        client.upsert("glove", np.arange(N), glove.base[:N], payloads=[{"row": i} for i in range(N)])
    return "glove"


# ---- a scripted HTTP server on a real socket ----------------------------------------------------


class Scripted:
    """An HTTP/1.1 server on a free loopback port, in a thread. Each request takes the next answer of
    `script`: `(status, json_body)` or `(status, json_body, headers)`, `"drop"` (close the connection
    without answering), or `("stall", seconds, status, json_body)`; once the script is used up, the last
    answer repeats.
    Every request is recorded as (method, path, headers, parsed body) with its arrival time in `times`."""

    def __init__(self, script: list[Any]) -> None:
        self.script, self.requests, self.times = list(script), [], []
        scripted = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def _answer(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length) if length else b""
                scripted.requests.append(
                    (self.command, self.path, dict(self.headers.items()), json.loads(raw) if raw else None)
                )
                scripted.times.append(time.monotonic())
                answer = scripted.script.pop(0) if len(scripted.script) > 1 else scripted.script[0]
                if answer == "drop":
                    self.close_connection = True
                    return
                if answer[0] == "stall":
                    time.sleep(answer[1])
                    answer = answer[2:]
                status, body, headers = (*answer, {}) if len(answer) == 2 else answer
                data = json.dumps(body).encode()
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = do_PATCH = _answer

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> Scripted:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(10)


UNAVAILABLE = (503, {"detail": "not ready: loading collections"})
COLLECTIONS = (200, {"collections": []})


# ---- collections ----------------------------------------------------------------------------------


def test_collection_lifecycle_and_its_errors(client):
    info = client.create_collection("life", dim=8, metric="l2", index="hnswlib", params={"M": 8})
    assert (info["name"], info["dim"], info["metric"], info["count"]) == ("life", 8, "l2", 0)
    assert info["index"]["kind"] == "hnswlib" and info["index"]["params"] == {"M": 8}
    assert "life" in [c["name"] for c in client.list_collections()]
    assert client.get_collection("life")["dim"] == 8

    with pytest.raises(ConflictError) as conflict:
        client.create_collection("life", dim=8)
    # `detail` is the service's message itself, not the JSON body around it.
    assert conflict.value.status == 409 and "life" in conflict.value.detail and "{" not in conflict.value.detail
    with pytest.raises(InvalidRequestError) as invalid:
        client.create_collection("bad", dim=8, index="no-such-kind")
    assert invalid.value.status == 422 and "no-such-kind" in str(invalid.value.detail)

    client.delete_collection("life")
    with pytest.raises(NotFoundError) as missing:
        client.get_collection("life")
    assert missing.value.status == 404 and "life" in missing.value.detail
    assert isinstance(missing.value, ApiError)
    assert "life" not in [c["name"] for c in client.list_collections()]


# ---- vectors and search ---------------------------------------------------------------------------


def test_upsert_batches_progress_and_get(client, glove, tmp_path):
    client.create_collection("batches", dim=glove.dim, metric="cosine", index="flat")
    seen: list[tuple[float, float]] = []
    # A memory-mapped input: read a batch at a time, as `annserve import` does.
    np.save(tmp_path / "x.npy", glove.base[:1000])
    vectors = np.load(tmp_path / "x.npy", mmap_mode="r")
    payloads = [{"row": i, "tag": "odd" if i % 2 else "even"} if i % 3 else None for i in range(1000)]
    ids = [f"item/{i}?#%" for i in range(1000)]  # characters a URL path must escape
    n = client.upsert(
        "batches", ids, vectors, payloads, batch_size=300, progress=lambda d, t: seen.append((d, t))
    )
    assert n == 1000
    assert seen == [(300, 1000), (600, 1000), (900, 1000), (1000, 1000)]
    assert client.get_collection("batches")["count"] == 1000
    for row in (0, 1, 2, 499, 999):
        record = client.get("batches", ids[row])
        assert isinstance(record, Record) and record.id == ids[row]
        assert record.vector.dtype == np.float32
        np.testing.assert_array_equal(record.vector, glove.base[row])
        assert record.payload == payloads[row]
    # Upsert is by id: sending again replaces, the count stays.
    assert client.upsert("batches", ids[:10], glove.base[10:20]) == 10
    assert client.get_collection("batches")["count"] == 1000
    np.testing.assert_array_equal(client.get("batches", ids[0]).vector, glove.base[10])


def test_search_shape_follows_the_query(client, glove, glove_items):
    base = glove.base[:N]
    queries = glove.queries[:120]
    truth, _ = brute_force_knn(base, queries, K, "cosine")

    one = client.search(glove_items, queries[0], k=K)
    assert isinstance(one, list) and all(isinstance(h, Hit) for h in one)
    assert [h.id for h in one] == [str(i) for i in truth[0]]
    assert all(a.score >= b.score for a, b in zip(one, one[1:]))
    assert one[0].payload is None

    # 120 queries in requests of 50: one list per query, in order.
    many = client.search(glove_items, queries, k=K, batch_size=50)
    assert len(many) == 120 and all(isinstance(row, list) for row in many)
    assert [[h.id for h in row] for row in many] == [[str(i) for i in row] for row in truth]
    single_row = client.search(glove_items, queries[:1], k=3)
    assert len(single_row) == 1 and [h.id for h in single_row[0]] == [h.id for h in one[:3]]

    exact = client.search(glove_items, queries[0], k=K, exact=True, params={})
    assert [h.id for h in exact] == [h.id for h in one]
    assert client.search(glove_items, np.empty((0, glove.dim), np.float32)) == []


def test_search_by_id_leaves_the_item_out(client, glove, glove_items):
    hits = client.search_by_id(glove_items, "7", k=5)
    truth, _ = brute_force_knn(glove.base[:N], glove.base[7:8], 6, "cosine")
    assert [h.id for h in hits] == [str(i) for i in truth[0] if i != 7][:5]
    with pytest.raises(NotFoundError) as missing:
        client.search_by_id(glove_items, "no-such-id")
    assert missing.value.status == 404 and "no-such-id" in missing.value.detail


def test_errors_carry_status_and_detail(client, glove, glove_items):
    with pytest.raises(NotFoundError) as missing:
        client.get(glove_items, "no-such-id")
    assert missing.value.status == 404 and "no-such-id" in missing.value.detail
    with pytest.raises(NotFoundError):
        client.search("no-such-collection", glove.queries[0])
    with pytest.raises(InvalidRequestError) as wrong_dim:
        client.search(glove_items, glove.queries[0][:49])
    assert wrong_dim.value.status == 422 and "196 bytes" in wrong_dim.value.detail  # 49 float32
    with pytest.raises(InvalidRequestError) as wrong_rows:
        client.upsert(glove_items, ["x"], np.ones((1, 3)))
    assert "items[0].vector_b64" in wrong_rows.value.detail
    with pytest.raises(InvalidRequestError) as unknown:
        client.search(glove_items, glove.queries[0], params={"no_such_knob": 1})
    assert "no_such_knob" in unknown.value.detail
    # Checked before anything is sent, with what was expected and what came.
    with pytest.raises(ValueError, match="row 1 holds NaN"):
        client.upsert(glove_items, ["a", "b"], np.array([[0.0] * 50, [np.nan] * 50]))
    with pytest.raises(ValueError, match="one row per id"):
        client.upsert(glove_items, ["a", "b"], glove.base[:3])
    with pytest.raises(ValueError, match=r"\(dim,\) or \(n, dim\)"):
        client.search(glove_items, np.ones((2, 2, 2)))


def test_filter_and_payload_are_sent_only_when_given(client, glove, glove_items):
    # What the client sends, seen by the scripted server.
    with Scripted([(200, {"results": [{"id": "1", "score": 0.5, "payload": {"row": 1}}]})]) as fake:
        with Client(fake.url) as spy:
            plain = spy.search("c", np.ones(4), k=3)
            spy.search("c", np.ones(4), k=3, filter={"row": {"$lt": 10}}, with_payload=["row"])
    first, second = fake.requests[0][3], fake.requests[1][3]
    assert set(first) == {"vector_b64", "k"} and first["k"] == 3
    assert second["filter"] == {"row": {"$lt": 10}} and second["with_payload"] == ["row"]
    assert np.array_equal(
        np.frombuffer(__import__("base64").b64decode(first["vector_b64"]), "<f4"), np.ones(4)
    )
    assert plain == [Hit("1", 0.5, {"row": 1})]
    # The real server: with filters it answers them; without, its 422 comes back as the exception.
    try:
        hits = client.search(glove_items, glove.base[5], k=3, filter={"row": 5}, with_payload=True)
    except InvalidRequestError as exc:
        assert exc.status == 422 and "filter" in str(exc.detail)
    else:
        assert [(h.id, h.payload) for h in hits] == [("5", {"row": 5})]


def test_delete_one_and_many(client, glove):
    client.create_collection("deletes", dim=glove.dim, index="flat")
    client.upsert("deletes", [str(i) for i in range(20)], glove.base[:20])
    assert client.delete("deletes", "13") == 1  # one id, not its characters
    assert client.delete("deletes", ["4", "5", "no-such-id"]) == 2
    assert client.delete("deletes", np.array([6, 7])) == 2
    assert client.delete("deletes", []) == 0
    assert client.get_collection("deletes")["count"] == 15
    for gone in ("13", "4", "5", "6", "7"):
        with pytest.raises(NotFoundError):
            client.get("deletes", gone)
    with pytest.raises(NotFoundError):
        client.delete("no-such-collection", ["1"])


def test_rebuild_waits_with_progress(client, glove):
    client.create_collection("rebuilt", dim=glove.dim, index="hnswlib")
    client.upsert("rebuilt", np.arange(3000), glove.base[:3000])
    seen: list[tuple[float, float]] = []
    job = client.rebuild("rebuilt", wait=True, progress=lambda d, t: seen.append((d, t)), poll_interval=0.05)
    assert job["state"] == "succeeded" and job["error"] is None
    assert seen and seen[-1] == (1.0, 1.0) and all(t == 1.0 for _, t in seen)
    info = client.get_collection("rebuilt")
    assert (info["main_count"], info["fresh_count"]) == (3000, 0)
    # Without waiting: the job as queued, then waited for by id.
    started = client.rebuild("rebuilt")
    assert started["state"] in ("queued", "running", "succeeded")
    assert client.wait_job(started["id"], poll_interval=0.05)["state"] == "succeeded"
    assert client.job(started["id"])["id"] == started["id"]
    with pytest.raises(NotFoundError):
        client.rebuild("no-such-collection")


def test_recall_and_tune_call_their_endpoints(client, glove_items):
    with Scripted(
        [(200, {"recall_at_k": 0.97, "k": 10, "samples": 5}), (200, {"chosen": {"ef": 40}})]
    ) as fake:
        with Client(fake.url, **FAST) as spy:
            assert spy.recall("c")["recall_at_k"] == 0.97
            assert spy.tune("c", target_recall=0.9, k=5) == {"chosen": {"ef": 40}}
    assert [(m, p, b) for m, p, _, b in fake.requests] == [
        ("GET", "/collections/c/recall", None),
        ("POST", "/collections/c/tune", {"target_recall": 0.9, "k": 5}),
    ]
    # The real server answers them, or (before they exist there) its error comes back as the exception.
    for call in (lambda: client.recall(glove_items), lambda: client.tune(glove_items, 0.9, 10)):
        try:
            assert isinstance(call(), dict)
        except ApiError as exc:
            assert exc.status in (404, 405, 409, 422) and exc.detail


def test_async_client_against_the_server(server, glove):
    async def main() -> None:
        async with AsyncClient(server.url, timeout=60) as client:
            await client.create_collection("async", dim=glove.dim, metric="cosine", index="flat")
            assert await client.upsert("async", np.arange(500), glove.base[:500], batch_size=200) == 500
            assert (await client.get_collection("async"))["count"] == 500
            hits, rows = await asyncio.gather(
                client.search("async", glove.base[3], k=3), client.search("async", glove.base[:4], k=1)
            )
            assert hits[0].id == "3" and [row[0].id for row in rows] == ["0", "1", "2", "3"]
            np.testing.assert_array_equal((await client.get("async", "9")).vector, glove.base[9])
            assert await client.delete("async", ["9"]) == 1
            with pytest.raises(NotFoundError) as missing:
                await client.get("async", "9")
            assert missing.value.status == 404
            job = await client.rebuild("async", wait=True, poll_interval=0.05)
            assert job["state"] == "succeeded"
            assert await client.ready()
            await client.delete_collection("async")
            with pytest.raises(NotFoundError):
                await client.get_collection("async")

    asyncio.run(main())


# ---- retries, keys, timeouts (the scripted server) --------------------------------------------------


def test_idempotent_calls_retry_a_503_twice_then_succeed():
    with Scripted([UNAVAILABLE, UNAVAILABLE, COLLECTIONS]) as fake, Client(fake.url, **FAST) as client:
        assert client.list_collections() == []
    assert len(fake.requests) == 3

    item = (200, {"upserted": 2})
    with Scripted([UNAVAILABLE, UNAVAILABLE, item]) as fake, Client(fake.url, **FAST) as client:
        assert client.upsert("c", ["a", "b"], np.ones((2, 4))) == 2
    bodies = [body for _, _, _, body in fake.requests]
    assert len(bodies) == 3 and bodies[0] == bodies[1] == bodies[2]  # the same batch sent again

    hits = (200, {"results": [{"id": "a", "score": 1.0}]})
    with Scripted([UNAVAILABLE, "drop", hits]) as fake, Client(fake.url, **FAST) as client:
        assert client.search("c", np.ones(4)) == [Hit("a", 1.0)]
    assert len(fake.requests) == 3


def test_retries_back_off_and_follow_retry_after():
    # backoff 0.2: waits of 0.2 and 0.4 s, each with jitter down to half.
    for client_class in (Client, AsyncClient):
        with Scripted([UNAVAILABLE, UNAVAILABLE, COLLECTIONS]) as fake:
            client = client_class(fake.url, retries=3, backoff=0.2)
            if client_class is Client:
                client.list_collections()
                client.close()
            else:

                async def main(client=client) -> None:
                    await client.list_collections()
                    await client.aclose()

                asyncio.run(main())
        waits = [b - a for a, b in zip(fake.times, fake.times[1:])]
        assert waits[0] >= 0.1 and waits[1] >= 0.2, (client_class.__name__, waits)
    # A 503 that says when to come back is believed (capped at 10 s).
    later = (503, {"detail": "not ready"}, {"Retry-After": "0.6"})
    with Scripted([later, COLLECTIONS]) as fake, Client(fake.url, **FAST) as client:
        client.list_collections()
    assert fake.times[1] - fake.times[0] >= 0.6


def test_retries_are_bounded_and_writes_that_create_are_not_repeated():
    with Scripted([UNAVAILABLE]) as fake, Client(fake.url, retries=2, backoff=0.01) as client:
        with pytest.raises(ApiError) as unavailable:
            client.get_collection("c")
    assert unavailable.value.status == 503 and unavailable.value.detail == UNAVAILABLE[1]["detail"]
    assert len(fake.requests) == 3  # the first try and 2 retries

    for answer in (UNAVAILABLE, "drop"):
        with Scripted([answer, (201, {"name": "c"})]) as fake, Client(fake.url, **FAST) as client:
            with pytest.raises((ApiError, ApiConnectionError)):
                client.create_collection("c", dim=4)
        assert len(fake.requests) == 1, answer


def test_an_upsert_too_large_for_the_server_is_sent_in_halves():
    too_large = (413, {"detail": "request body above 1024 bytes (ANNSERVE_MAX_BODY_BYTES)"})
    with (
        Scripted([too_large, (200, {"upserted": 2}), (200, {"upserted": 2})]) as fake,
        Client(fake.url) as client,
    ):
        assert client.upsert("c", ["a", "b", "c", "d"], np.ones((4, 2))) == 4
    assert [[item["id"] for item in body["items"]] for _, _, _, body in fake.requests] == [
        ["a", "b", "c", "d"],
        ["a", "b"],
        ["c", "d"],
    ]
    with Scripted([too_large]) as fake, Client(fake.url) as client:
        with pytest.raises(ApiError) as error:
            client.upsert("c", ["a", "b"], np.ones((2, 2)))
    assert error.value.status == 413 and len(fake.requests) == 2  # ["a", "b"], then ["a"] alone: raised


def test_async_client_retries_the_same_way():
    async def main(url: str) -> list:
        async with AsyncClient(url, **FAST) as client:
            return await client.list_collections()

    with Scripted([UNAVAILABLE, "drop", COLLECTIONS]) as fake:
        assert asyncio.run(main(fake.url)) == []
    assert len(fake.requests) == 3


def test_unreachable_service_and_timeouts_raise_connection_errors():
    started = time.monotonic()
    with Client(f"http://127.0.0.1:{free_port()}", **FAST) as client:
        with pytest.raises(ApiConnectionError, match="after 4 attempt"):
            client.list_collections()
    assert time.monotonic() - started < 10
    with Scripted([("stall", 1.5, *COLLECTIONS)]) as fake:
        with Client(fake.url, timeout=0.2, retries=0) as client:
            started = time.monotonic()
            with pytest.raises(ApiConnectionError, match="ReadTimeout"):
                client.list_collections()
            assert time.monotonic() - started < 1.2


def test_api_key_is_sent_as_x_api_key():
    with Scripted([COLLECTIONS, (200, {"upserted": 1}), COLLECTIONS]) as fake:
        with Client(fake.url, api_key="s3cret") as client:
            client.list_collections()
            client.upsert("c", ["a"], np.ones((1, 2)))
        with Client(fake.url) as client:
            client.list_collections()
    assert [headers.get("x-api-key") for _, _, headers, _ in fake.requests] == ["s3cret", "s3cret", None]


def test_shell_commands_send_the_key_from_the_environment():
    with Scripted([COLLECTIONS]) as fake:
        runner = CliRunner()
        result = runner.invoke(cli, ["collections"], env={"ANNSERVE_URL": fake.url, "ANNSERVE_API_KEY": "k1"})
        assert result.exit_code == 0, result.output
        result = runner.invoke(cli, ["collections", "--url", fake.url, "--api-key", "k2"])
        assert result.exit_code == 0, result.output
    assert [headers.get("x-api-key") for _, _, headers, _ in fake.requests] == ["k1", "k2"]


# ---- what importing costs ------------------------------------------------------------------------

SERVER_AND_INDEX_MODULES = ("fastapi", "starlette", "uvicorn", "pydantic", "faiss", "hnswlib", "numba")
LOADED = f"print(sorted({{m.split('.')[0] for m in sys.modules}} & {set(SERVER_AND_INDEX_MODULES)!r}))"


def test_the_client_and_the_http_commands_import_no_server_or_index_code():
    # `import annserve` loads nothing of the client yet; its names bring httpx and numpy, nothing more.
    code = (
        f"import sys, annserve; {LOADED}; assert 'httpx' not in sys.modules; "
        f"annserve.Client, annserve.AsyncClient, annserve.ApiError; {LOADED}"
    )
    lines = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert lines.stdout.split("\n")[:2] == ["[]", "[]"], lines.stdout + lines.stderr
    # `annserve search` (and import, collections, rebuild) start without FAISS, numba or the server
    # (typer itself may use pydantic to parse options).
    code = (
        "import sys; from typer.testing import CliRunner; from annserve.cli import cli; "
        f"assert CliRunner().invoke(cli, ['search', '--help']).exit_code == 0; {LOADED}"
    )
    lines = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert set(ast.literal_eval(lines.stdout)) <= {"pydantic"}, lines.stdout + lines.stderr


# ---- the shell ----------------------------------------------------------------------------------


def test_shell_collections_search_rebuild(server, glove, glove_items):
    runner = CliRunner()
    env = {"ANNSERVE_URL": server.url}
    listed = runner.invoke(cli, ["collections"], env=env)
    assert listed.exit_code == 0, listed.output
    assert "glove" in listed.stdout and f"{N:,}" in listed.stdout

    by_id = runner.invoke(cli, ["search", glove_items, "--id", "7", "-k", "3"], env=env)
    assert by_id.exit_code == 0, by_id.output
    expected = [h.id for h in Client(server.url).search_by_id(glove_items, "7", k=3)]
    assert [line.split()[3] for line in by_id.stdout.splitlines() if line.startswith("│")] == expected

    query = ",".join(str(x) for x in glove.base[11])
    by_vector = runner.invoke(cli, ["search", glove_items, "--vector", query, "-k", "1"], env=env)
    assert by_vector.exit_code == 0, by_vector.output
    assert [line.split()[3] for line in by_vector.stdout.splitlines() if line.startswith("│")] == ["11"]

    rebuilt = runner.invoke(cli, ["rebuild", glove_items, "--wait"], env=env)
    assert rebuilt.exit_code == 0, rebuilt.output
    assert "succeeded" in rebuilt.stdout

    missing = runner.invoke(cli, ["search", "no-such-collection", "--id", "1"], env=env)
    assert missing.exit_code == 1 and "404" in missing.stderr and "no-such-collection" in missing.stderr
    neither = runner.invoke(cli, ["search", glove_items], env=env)
    assert neither.exit_code == 1 and "exactly one of --vector, --id" in neither.stderr
