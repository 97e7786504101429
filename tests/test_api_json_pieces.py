"""`json_pieces.loads` gives exactly what `orjson.loads` gives (values and errors alike), whether
it could cut the body into pieces or had to parse it whole; its conversion sees every element
once, in order, and its errors come after the JSON's own; and it does cut the bodies the
service gets (an upsert's items, a batch's vectors)."""

from __future__ import annotations

import json
import random

import numpy as np
import orjson
import pytest

from annserve.api.transport import json_pieces

PIECE = 64  # bytes: tiny pieces, so that small bodies have many cuts


def outcome(parse, raw: bytes):
    try:
        return "ok", parse(raw)
    except orjson.JSONDecodeError as exc:
        return "error", str(exc)


def pieces_loads(raw: bytes | bytearray, key: str, piece_bytes: int = PIECE):
    """json_pieces.loads with a conversion that keeps the elements, joined back into a list
    (checking that the runs came in order, each with the index of its first element)."""
    body = json_pieces.loads(raw, key, lambda run, first: (first, run), piece_bytes)
    if isinstance(body, dict) and isinstance(body.get(key), json_pieces.Converted):
        converted, elements = body[key], []
        for first, run in converted.results():
            assert first == len(elements)
            elements += run
        assert converted.count == len(elements)
        body[key] = elements
    return body


def check(raw: bytes, key: str = "items") -> bool:
    """Assert loads == orjson.loads on `raw`; whether the body was cut into pieces."""
    assert outcome(lambda r: pieces_loads(r, key), raw) == outcome(orjson.loads, raw), raw
    assert outcome(lambda r: pieces_loads(bytearray(r), key), raw) == outcome(orjson.loads, raw)
    return json_pieces._in_pieces(memoryview(raw), key, lambda run, first: run, PIECE) is not None


def test_the_service_bodies_are_cut_and_equal():
    rows = np.random.default_rng(0).standard_normal((50, 8)).astype(np.float32)
    items = [{"id": f"v{i}", "vector": r, "payload": {"tags": [[1, 2], [3]], "s": "}, {"}} for i, r in enumerate(rows)]
    upsert = orjson.dumps({"items": items}, option=orjson.OPT_SERIALIZE_NUMPY)
    assert check(upsert)
    batch = orjson.dumps({"vectors": rows, "k": 10, "params": {"ef": 64}}, option=orjson.OPT_SERIALIZE_NUMPY)
    assert check(batch, "vectors")
    spaced = json.dumps({"k": 3, "vectors": rows.tolist(), "exact": False}, indent=2).encode()
    assert check(spaced, "vectors")
    big = orjson.dumps({"items": items * 40}, option=orjson.OPT_SERIALIZE_NUMPY)
    assert pieces_loads(big, "items", json_pieces.PIECE_BYTES) == orjson.loads(big)  # the real piece size
    assert json_pieces._in_pieces(memoryview(big), "items", lambda run, first: run, json_pieces.PIECE_BYTES)


def test_conversion_errors_wait_for_the_json():
    """A conversion error is kept until asked for, and only if the body is valid JSON: the
    same order as parsing whole, then converting."""

    def convert(run: list, first: int) -> list:
        for i, element in enumerate(run, start=first):
            if element == {"bad": True}:
                raise ValueError(f"element {i} is bad")
        return run

    elements = [{"a": i} for i in range(30)]
    bad = orjson.dumps({"items": elements[:5] + [{"bad": True}] + elements, "k": 1})
    body = json_pieces.loads(bad, "items", convert, PIECE)
    assert body["k"] == 1 and body["items"].count == 36
    with pytest.raises(ValueError, match="element 5 is bad"):
        body["items"].results()
    with pytest.raises(orjson.JSONDecodeError):  # invalid JSON at the end: orjson's error first
        json_pieces.loads(bad[:-1], "items", convert, PIECE)


@pytest.mark.parametrize(
    "raw",
    [
        b'{"items": [{"a": 1}, {"a": 2}], "items": 5}',  # the later duplicate wins, as in orjson
        b'{"items": 5, "items": [' + b'{"a": 1}, ' * 20 + b'{"a": 2}]}',
        b'{"x": "\\u0000annserve:pieces", "items": [' + b'{"a": 1}, ' * 20 + b'{"a": 2}]}',  # the marker
        b'{"items": [' + b'{"a": 1}, ' * 20 + b', {"a": 2}]}',  # an empty element
        b'{"items": [' + b'{"a": 1}, ' * 20 + b'{"a": 2},]}',  # a trailing comma
        b'{"items": [' + b'{"a": "x\\"}, {\\""}, ' * 20 + b'{"a": 2}]}',  # escaped quotes
        b'{"items": [' + b'{"a": "\\\\"}, ' * 20 + b'{"a": 2}]} trailing',
        b'[{"items": [' + b'{"a": 1}, ' * 20 + b'{"a": 2}]}]',  # not an object at the top
        b'{"items": [' + b'[1, 2], ' * 20 + b'[3]], "after": [[4], [5]]}',
        '{"items": ['.encode() + '{"é": "ü"}, '.encode() * 20 + b'{"a": 2}]}',
        b'{"items": [' + b'{"a": 1}, ' * 20 + b'{"a": 2}]',  # unclosed
        b'{"items": [' + b'{"a": \xff}, ' * 20 + b'{"a": 2}]}',  # not UTF-8
    ],
)
def test_edge_cases_equal_orjson(raw):
    check(raw)


def test_random_bodies_equal_orjson():
    rnd = random.Random(1)
    alphabet = ["a", '"', "\\", "[", "]", "{", "}", ",", " ", "é", "\u0000", ":", '\\"', "\\\\"]

    def text() -> str:
        return "".join(rnd.choice(alphabet) for _ in range(rnd.randint(0, 6)))

    def value(depth: int = 0):
        r = rnd.random()
        if depth > 3 or r < 0.3:
            return rnd.choice([1, -2.5, True, None, text()])
        if r < 0.6:
            return [value(depth + 1) for _ in range(rnd.randint(0, 4))]
        return {text(): value(depth + 1) for _ in range(rnd.randint(0, 3))}

    def mutate(raw: bytes) -> bytes:
        b = bytearray(raw)
        for _ in range(rnd.randint(1, 3)):
            i = rnd.randrange(len(b))
            b[i : i + rnd.randint(0, 1)] = bytes([rnd.choice(b'[]{},"\\: x')])
        return bytes(b)

    cut = 0
    for _ in range(3000):
        items = [{"id": text(), "vector": [rnd.random()] * rnd.randint(0, 4), "payload": value()}
                 for _ in range(rnd.randint(0, 40))]  # fmt: skip
        members = [("items", items)] + [(rnd.choice(["k", "items", text()]), value()) for _ in range(rnd.randint(0, 2))]
        rnd.shuffle(members)
        sep = rnd.choice([(",", ":"), (", ", ": "), (" ,\n", " : ")])
        raw = ("{" + sep[0].join(json.dumps(k) + sep[1] + json.dumps(v, separators=sep) for k, v in members) + "}").encode()
        cut += check(mutate(raw) if rnd.random() < 0.3 else raw)
    assert cut > 1000  # most bodies were cut: the comparison covered the pieces path


def test_the_gil_is_handed_over_at_most_once_a_switch_interval(monkeypatch):
    """Each hand-over is a timer sleep (50-80 us of wall time): back-to-back pieces share one,
    and once a switch interval has passed the next piece hands over again."""
    sleeps = []
    monkeypatch.setattr(json_pieces.time, "sleep", sleeps.append)
    interval = 0.05
    monkeypatch.setattr(json_pieces.sys, "getswitchinterval", lambda: interval)
    json_pieces._hand_over.at = 0.0
    for _ in range(100):
        json_pieces.hand_over_gil()
    assert len(sleeps) == 1
    json_pieces._hand_over.at -= interval  # as if a switch interval had passed
    json_pieces.hand_over_gil()
    assert len(sleeps) == 2
