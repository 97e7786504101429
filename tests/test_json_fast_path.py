"""The simdjson fast path (api/transport/simd_rows.py) gives exactly what the orjson path gives:
the same ids, float32 vectors bit for bit and payloads for every body it accepts, and for every
body it is not sure of it declines, so that the answer (values or the 422 message) is the orjson
path's own. Real data (MiniLM 384-d, GloVe 50-d), random numbers of every kind (hypothesis),
the bodies it must decline, and a real server taking a JSON upsert and finding it again."""

from __future__ import annotations

import json
from pathlib import Path
from unittest import mock

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from annserve.api.routes.search import _parse_batch
from annserve.api.routes.vectors import _parse_upsert
from annserve.api.transport import json_pieces, simd_rows
from annserve.bench.server_process import ServeProcess
from annserve.indexes import brute_force_knn

DATA = Path(__file__).parent / "data"
MAX_ITEMS = 10_000
MAX_K = 100
MAX_BATCH = 1000


@pytest.fixture(scope="module")
def minilm() -> np.ndarray:
    with np.load(DATA / "minilm384_3k.npz") as f:
        return f["base"][:600]


@pytest.fixture(scope="module")
def glove() -> np.ndarray:
    with np.load(DATA / "glove50_10k.npz") as f:
        return f["base"][:2000]


def upsert_outcome(raw: bytes, dim: int, fast: bool):
    """("ok", ids, vectors' bits, payloads) or ("error", message) of the upsert route's parse."""
    try:
        ids, vectors, payloads = _parse_upsert(raw, dim, MAX_ITEMS, fast)
    except ValueError as exc:
        return "error", str(exc)
    assert vectors.dtype == np.float32 and vectors.shape == (len(ids), dim)
    return "ok", ids, vectors.view(np.uint32).tobytes(), payloads


def batch_outcome(raw: bytes, dim: int, fast: bool):
    try:
        queries, *rest = _parse_batch(raw, dim, MAX_K, MAX_BATCH, fast)
    except ValueError as exc:
        return "error", str(exc)
    assert queries.dtype == np.float32 and queries.shape[1] == dim
    return "ok", queries.view(np.uint32).tobytes(), queries.shape, rest


def accepted(raw: bytes, dim: int, key: str = "items", piece_bytes: int = simd_rows.PIECE_BYTES) -> bool:
    """Whether the fast path read the body itself (rather than declining to orjson)."""
    parse = simd_rows.item_rows(dim) if key == "items" else simd_rows.query_rows(dim)
    return json_pieces.loads_with(raw, key, parse, piece_bytes) is not None


def same_upsert(raw: bytes, dim: int) -> bool:
    """Assert both paths answer alike (at the real piece size and at tiny pieces, so that small
    bodies are cut too); whether the fast path accepted the body."""
    old = upsert_outcome(raw, dim, fast=False)
    assert upsert_outcome(raw, dim, fast=True) == old, raw[:300]
    with mock.patch.object(simd_rows, "PIECE_BYTES", 256):
        assert upsert_outcome(raw, dim, fast=True) == old, raw[:300]
    return accepted(raw, dim)


def same_batch(raw: bytes, dim: int) -> bool:
    old = batch_outcome(raw, dim, fast=False)
    assert batch_outcome(raw, dim, fast=True) == old, raw[:300]
    with mock.patch.object(simd_rows, "PIECE_BYTES", 256):
        assert batch_outcome(raw, dim, fast=True) == old, raw[:300]
    return accepted(raw, dim, "vectors")


def items_body(rows: np.ndarray, **extra) -> bytes:
    items = [{"id": f"doc-{i}", "vector": row.tolist(), **extra} for i, row in enumerate(rows)]
    return orjson.dumps({"items": items})


# ---- real data --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["minilm", "glove"])
def test_real_vectors_are_read_bit_for_bit(name, request):
    rows = request.getfixturevalue(name)
    dim = rows.shape[1]
    # float32 values written as Python floats (17 digits) and by orjson's numpy support (the
    # shortest float32 repr), and by the standard library with indentation.
    bodies = [
        items_body(rows),
        items_body(rows, payload=None),
        orjson.dumps({"items": [{"vector": r, "id": f"x{i}"} for i, r in enumerate(rows)]}, option=orjson.OPT_SERIALIZE_NUMPY),
        json.dumps({"items": [{"id": f"x{i}", "vector": r.tolist()} for i, r in enumerate(rows[:50])]}, indent=2).encode(),
    ]
    for raw in bodies:
        assert same_upsert(raw, dim)
    ids, vectors, payloads = _parse_upsert(bodies[0], dim, MAX_ITEMS, True)
    assert ids == [f"doc-{i}" for i in range(len(rows))] and payloads == [None] * len(rows)
    assert np.array_equal(vectors.view(np.uint32), rows.astype(np.float32).view(np.uint32))
    # A large body: many pieces at the real piece size.
    big = items_body(np.tile(rows, (max(1, 3_000_000 // rows.nbytes), 1)))
    assert len(big) > 20 * simd_rows.PIECE_BYTES and same_upsert(big, dim)

    for raw in (
        orjson.dumps({"vectors": rows[:MAX_BATCH].tolist(), "k": 10}),
        orjson.dumps({"k": 5, "vectors": rows[:300], "params": {"ef": [64]}, "exact": True}, option=orjson.OPT_SERIALIZE_NUMPY),
        json.dumps({"vectors": rows[:20].tolist(), "with_payload": ["a"]}, indent=1).encode(),
    ):
        assert same_batch(raw, dim)
    queries = _parse_batch(orjson.dumps({"vectors": rows[:MAX_BATCH].tolist()}), dim, MAX_K, MAX_BATCH, True)[0]
    assert np.array_equal(queries.view(np.uint32), rows[:MAX_BATCH].view(np.uint32))


def test_a_double_rounding_number_is_rounded_as_orjson_and_numpy_do():
    """1 + 2^-24 (the midpoint between 1 and the next float32) plus a little: a correctly
    rounded float64 is the midpoint exactly, which float32 rounds to even (1.0); parsing straight
    to float32 would give the next float32. The service's arrays have always been the former."""
    above = "1.000000059604644775390625000001"
    raw = b'{"items": [{"id": "a", "vector": [%s, 0.5]}]}' % above.encode()
    assert same_upsert(raw, 2)
    assert _parse_upsert(raw, 2, MAX_ITEMS, True)[1][0, 0] == np.float32(1.0)
    assert np.float32(np.float64(above)) == 1.0 and np.nextafter(np.float32(1), np.float32(2)) != 1.0


# ---- random numbers (hypothesis) ----------------------------------------------------------------

F32_MAX = float(np.finfo(np.float32).max)
TOKENS = st.sampled_from(
    [
        "-0.0", "0.0", "-0", "0", "1", "1.0", "5e-324", "-5e-324", "1e-50", "1.4e-45", "7e-46", "1e-39",
        "3.4028235e38", "3.4028236e38", "3.5e38", "-3.5e38", "1.7976931348623157e308", "1e309", "-1e400",
        "1E5", "1e+5", "2.5E-3", "1.000000059604644775390625000001", "18446744073709551615",
        "18446744073709551616", "-9223372036854775809", "1152921573326323713", "true", "false", "null",
        '"1.5"', "[1.5]", "[]", "{}", "01", "1.", ".5", "+1", "NaN", "Infinity",
    ]
)  # fmt: skip
FLOATS = st.floats(allow_nan=False, allow_infinity=False).map(repr)  # subnormals and extremes too
F32 = st.floats(width=32, allow_nan=False, allow_infinity=False).map(lambda x: repr(float(x)))  # subnormals too
BEYOND_F32 = st.floats(min_value=F32_MAX, max_value=2 * F32_MAX).map(repr)  # inf in float32
NUMBER = st.one_of(FLOATS, F32, BEYOND_F32, st.integers(-(2**70), 2**70).map(str), TOKENS)


def _row(tokens: list[str]) -> str:
    return "[" + ", ".join(tokens) + "]"


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rows=st.lists(st.lists(NUMBER, min_size=3, max_size=3) | st.lists(FLOATS, min_size=2, max_size=4), min_size=1, max_size=12),
    ids=st.lists(st.text(max_size=6) | st.integers(), min_size=12, max_size=12),
    payload=st.sampled_from(["", ', "payload": null', ', "payload": {"a": 1}', ', "payload": {"a": [1]}', ', "payload": null, "payload": null']),
)  # fmt: skip
def test_random_numbers_ids_and_payloads_answer_alike(rows, ids, payload):
    items = ", ".join(
        f'{{"id": {json.dumps(ids[i], ensure_ascii=i % 2 == 0)}, "vector": {_row(row)}{payload}}}'
        for i, row in enumerate(rows)
    )
    same_upsert(f'{{"items": [{items}]}}'.encode(), 3)
    same_batch(f'{{"vectors": [{", ".join(_row(r) for r in rows)}], "k": 2}}'.encode(), 3)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.floats(allow_nan=False, allow_infinity=False), min_size=4, max_size=4), min_size=1, max_size=40))
def test_random_floats_are_read_by_the_fast_path(rows):
    """Floats only (never a whole value, so no integer can hide): the fast path reads them itself."""
    rows = [[x if x != int(x) else x + 0.5 if abs(x) < 2**50 else 0.1 for x in row] for row in rows]
    raw = json.dumps({"items": [{"id": str(i), "vector": r} for i, r in enumerate(rows)]}).encode()
    assert same_upsert(raw, 4)
    assert same_batch(json.dumps({"vectors": rows}).encode(), 4)


V = "[0.25, 0.5, 0.75]"


def nested(depth: int) -> str:
    """A JSON object `depth` objects deep."""
    return '{"a": ' * depth + "1" + "}" * depth


ACCEPTED_UPSERTS = [
    '{"items": [{"\\u0069d": "a", "vector": [0.25, 0.5, 0.75]}]}',  # an escaped key
    '{"items": [{"id": "a\\u0000\\"\\\\\\ud83d\\ude00", "vector": [0.25, 0.5, 0.75]}]}',  # escapes in an id
    '{"items": [{"id": "\u00e9\u4e2d", "vector": [0.25, 0.5, 0.75]}]}',  # UTF-8 in an id
    '{"items":[{"vector":[2.5E-3,-1e+5,7.0e0],"payload":null,"id":"b"}]}',  # exponents, no spaces
    '\n {"items" :\t[ {"id" : "a" , "vector" : [ 0.25 , 0.5 , 0.75 ] } ] } \r\n',
    '{"items": [{"id": "a", "vector": [-0.0, 1e-50, 3.5e38]}]}',
    f'{{"items": [{{"id": "a", "vector": {V}, "payload": {{"tags": ["x", [1, {{"y": -0}}]], "n": 1.5e300}}}}]}}',
    f'{{"items": [{{"id": "a", "vector": {V}, "payload": {{"a": 1, "b": 2, "a": {{"c": 3, "c": null}}}}}}]}}',
    f'{{"items": [{{"id": "a", "vector": {V}, "payload": [1, 2]}}, {{"id": "b", "vector": {V}, "payload": "s"}}]}}',
    f'{{"items": [{{"id": "a", "vector": {V}, "payload": {nested(40)}}}]}}',  # deep, refused by the engine
    f'{{"items": [{{"id": "a", "vector": {V}, "payload": {{"big": 18446744073709551615, "neg": -9223372036854775808}}}}]}}',
]


@pytest.mark.parametrize("body", ACCEPTED_UPSERTS)
def test_accepted_upserts_answer_as_before(body):
    assert same_upsert(body.encode(), 3)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False, allow_infinity=False) | st.integers(-(2**65), 2**65) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=3), inner, max_size=4),
    max_leaves=12,
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(payloads=st.lists(JSON_VALUES, min_size=1, max_size=6), ascii_only=st.booleans())
def test_random_payloads_answer_alike(payloads, ascii_only):
    items = [{"id": f"p{i}", "vector": [0.25, 0.5, 0.75], "payload": p} for i, p in enumerate(payloads)]
    raw = json.dumps({"items": items}, ensure_ascii=ascii_only).encode()
    same_upsert(raw, 3)


def test_payloads_are_read_by_the_fast_path(minilm):
    """Payloads of the usual kind (flat fields, a list of tags, a nested object) stay on the fast path."""
    payloads = [{"title": f"doc {i}", "n": i, "score": i / 7, "tags": ["a", "b"], "meta": {"ok": True}} for i in range(len(minilm))]
    raw = orjson.dumps({"items": [{"id": f"d{i}", "vector": r.tolist(), "payload": p} for i, (r, p) in enumerate(zip(minilm, payloads))]})
    assert same_upsert(raw, minilm.shape[1])
    assert _parse_upsert(raw, minilm.shape[1], MAX_ITEMS, True)[2] == payloads


# ---- what the fast path declines --------------------------------------------------------------

DECLINED_UPSERTS = [
    '{"items": [{"id": "a", "vector": [0.25, 1, 0.75]}]}',  # an integer among floats
    '{"items": [{"id": "a", "vector": [1152921573326323713, 1, 2]}]}',  # integers only (numpy's int64 path)
    '{"items": [{"id": "a", "vector": [0.25, -0, 0.75]}]}',
    '{"items": [{"id": "a", "vector": [0.25, true, 0.75]}]}',
    '{"items": [{"id": "a", "vector": [0.25, "0.5", 0.75]}]}',
    '{"items": [{"id": "a", "vector": [0.25, null, 0.75]}]}',
    '{"items": [{"id": "a", "vector": [0.25, [0.5], 0.75]}]}',  # nested: as many numbers, flattened
    '{"items": [{"id": "a", "vector": [[], [0.25, 0.5], 0.75]}]}',
    '{"items": [{"id": "a", "vector": [0.25, 0.5]}]}',  # the wrong dim
    '{"items": [{"id": "a", "vector": [0.25, 0.5, 0.75, 1.5]}]}',
    '{"items": [{"id": "a", "vector": {"x": 0.5}}]}',
    '{"items": [{"id": "a", "vector": 0.5}]}',
    f'{{"items": [{{"id": "a", "vector": {V}, "vector": [0.5, 0.5, 0.5]}}]}}',  # a duplicate key
    f'{{"items": [{{"id": "a", "id": "b", "vector": {V}}}]}}',
    f'{{"items": [{{"id": "a", "vector": {V}, "payload": null, "payload": {{"x": 1}}}}]}}',
    f'{{"items": [{{"id": "a", "vector": {V}, "meta": 1}}]}}',  # an unknown field
    f'{{"items": [{{"id": "a", "vector_b64": "AAAA", "vector": {V}}}]}}',
    f'{{"items": [{{"vector": {V}, "payload": null}}]}}',  # no id
    f'{{"items": [{{"id": 7, "vector": {V}}}]}}',  # an id that is not a string
    f'{{"items": [{{"id": "a[0]", "vector": {V}}}]}}',  # a '[' in a string
    f'{{"items": [{{"id": "a", "vector": {V}, "payload": {{"tags": ["x["]}}}}]}}',  # a '[' in a payload string
    f'{{"items": [{{"id": "a", "vector": {V}, "payload": {{"t": [1], "t": 2}}}}]}}',  # a list overwritten
    f'{{"items": [{{"id": "a", "vector": {V}, "payload": {nested(70)}}}]}}',  # deeper than PAYLOAD_DEPTH
    f'{{"items": [{{"id": "a", "vector": {V}, "payload": {"[" * 1030}{"]" * 1030}}}]}}',  # beyond both depth limits
    # Beyond orjson's depth limit in the body, within simdjson's in the piece (one level less).
    f'{{"items": [{{"id": "a", "vector": {V}, "payload": {"[" * 1022}{"]" * 1022}}}]}}',
    f'{{"items": [{{"id": "a", "vector": {V}, "payload": 12345678901234567890123}}]}}',
    f'{{"items": [{{"id": "a", "vector": {V}}}, 5]}}',
    '{"items": [{"id": "a", "vector": [0.25, 1e400, 0.75]}]}',  # beyond float64: invalid for both
    '{"items": [{"id": "a", "vector": [0.25, 18446744073709551616, 0.75]}]}',  # orjson: a float
    '{"items": [{"id": "a", "vector": [0.25, 0.5, 0.75],}]}',  # invalid JSON
    '{"items": [{"id": "\\ud800", "vector": [0.25, 0.5, 0.75]}]}',  # a lone surrogate
    '\ufeff{"items": [{"id": "a", "vector": [0.25, 0.5, 0.75]}]}',  # a byte order mark
    f'{{"items": [{{"id": "a", "vector": {V}}}], "items": [{{"id": "b", "vector": {V}}}]}}',
    '{"items": []}',
    '{"items": {"id": "a"}}',
    '{"items": [{"id": "a", "vector": [0.25, 0.5, 0.75]}]',
    "[1.5]",
]


@pytest.mark.parametrize("body", DECLINED_UPSERTS)
def test_declined_upserts_answer_as_before(body):
    raw = body.encode()
    assert not accepted(raw, 3)
    same_upsert(raw, 3)
    if raw.startswith(b'{"items": ['):  # the same items after forty good ones (own pieces at 256 bytes)
        padded = items_body(np.full((40, 3), 0.25, np.float32))[:-2] + b", " + raw.removeprefix(b'{"items": [')
        assert not accepted(padded, 3)
        same_upsert(padded, 3)


DECLINED_BATCHES = [
    '{"vectors": [[0.25, 1, 0.75]]}',
    '{"vectors": [[1, 2, 3], [4, 5, 6]]}',
    '{"vectors": [[0.25, 0.5, 0.75], [0.25, 0.5]]}',  # ragged
    '{"vectors": [[0.25, 0.5, 0.75, 0.5, 0.25], [0.5]]}',  # ragged, as many numbers as 2 x 3
    '{"vectors": [[0.25, [0.5], 0.75]]}',
    '{"vectors": [0.25, [0.5, 0.75, 0.25, 0.5]]}',
    '{"vectors": [[0.25, false, 0.75]]}',
    '{"vectors": [[0.25, 0.5, 0.75]], "vectors": [[0.5, 0.5, 0.5]]}',
    '{"vectors": []}',
    '{"vectors": [[0.25, 0.5, 1e999]]}',
    '{"vectors": [[0.25, 0.5, 0.75]]} x',
]


@pytest.mark.parametrize("body", DECLINED_BATCHES)
def test_declined_batches_answer_as_before(body):
    raw = body.encode()
    assert not accepted(raw, 3, "vectors")
    same_batch(raw, 3)


@pytest.mark.parametrize(
    "body, key",
    [
        (f'{{"items": [{{"id": "a", "vector": {V}}}], "upsert": true}}', "items"),
        ('{"vectors": [[0.25, 0.5, 0.75]], "vectors_b64": "AAAA"}', "vectors"),
        ('{"vectors": [[0.25, 0.5, 0.75]], "k": 0}', "vectors"),
        ('{"vectors": [[0.25, 0.5, 0.75]], "nope": 1}', "vectors"),
        ('{"vectors": [[0.25, 0.5, 0.75]], "exact": 1}', "vectors"),
    ],
)
def test_bodies_read_fast_but_refused_get_the_same_message(body, key):
    """The rest of the body is the route's to check, after either path: the same 422."""
    raw = body.encode()
    assert accepted(raw, 3, key)
    outcome = upsert_outcome(raw, 3, True) if key == "items" else batch_outcome(raw, 3, True)
    assert outcome[0] == "error"
    assert same_upsert(raw, 3) if key == "items" else same_batch(raw, 3)


def test_values_beyond_float32_and_subnormals_are_read_as_before():
    """No integer, so the fast path reads them: inf beyond float32 (for the engine to name),
    float32 subnormals, and values that underflow to zero, signs kept."""
    row = "[3.5e38, -3.5e38, 1e-40, -1e-50, 1.4e-45, -0.0]"
    raw = f'{{"items": [{{"id": "a", "vector": {row}}}]}}'.encode()
    assert same_upsert(raw, 6)
    vector = _parse_upsert(raw, 6, MAX_ITEMS, True)[1][0]
    assert np.isinf(vector[:2]).all() and vector[2] > 0 and vector[3] == 0 and np.signbit(vector[3]) and np.signbit(vector[5])


# ---- over HTTP ----------------------------------------------------------------------------------


@pytest.mark.integration
def test_a_json_upsert_is_found_again_over_http(tmp_path, minilm):
    """A real server: 600 MiniLM rows upserted as one JSON body (parsed in a thread, in pieces)
    and searched back by a JSON batch with exact search: the same neighbours as computed here."""
    dim = minilm.shape[1]
    server = ServeProcess(tmp_path / "data", tmp_path / "server.log")
    client = server.start()
    try:
        body = {"name": "m", "dim": dim, "metric": "cosine", "index": {"kind": "flat"}}
        assert client.post("/collections", json=body).status_code == 201
        raw = items_body(minilm)
        assert accepted(raw, dim) and len(raw) > 4 * simd_rows.PIECE_BYTES
        answer = client.post("/collections/m/vectors", content=raw, headers={"content-type": "application/json"})
        assert answer.status_code == 200 and answer.json() == {"upserted": len(minilm)}, answer.text
        queries = minilm[:100] + 0.01 * minilm[100:200]
        answer = client.post("/collections/m/search/batch", content=orjson.dumps({"vectors": queries.tolist(), "k": 10, "exact": True}))
        assert answer.status_code == 200, answer.text
        found = [[hit["id"] for hit in row] for row in answer.json()["results"]]
        truth, _ = brute_force_knn(minilm, queries.astype(np.float32), 10, "cosine")
        assert found == [[f"doc-{j}" for j in row] for row in truth]
        # What the fast path declines still gets the usual 422, naming the item.
        bad = b'{"items": [{"id": "z", "vector": [0.5, "x"]}]}'
        answer = client.post("/collections/m/vectors", content=bad)
        assert answer.status_code == 422 and "items[0].vector" in answer.json()["detail"], answer.text
    finally:
        client.close()
        server.stop()
