"""Caps on what one payload may be: its JSON text's size and its nesting depth.

A payload is stored whole in the shard's store, kept in memory by the filter index and sent back
in answers; without a cap one request could park megabytes per item, and a deeply nested one
costs a recursion per level wherever it is read. Settings `max_payload_bytes` (64 KiB) and
`max_payload_depth` (32) bound them; above either the upsert is a ValueError (422) naming the
item, the limit and what came.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def check_payload_limits(
    texts: Sequence[str | None], payloads: Sequence[Any], max_bytes: int, max_depth: int
) -> None:
    """`texts[i]`, the JSON of `payloads[i]`, at most `max_bytes` UTF-8 bytes, and `payloads[i]`
    nested at most `max_depth` levels (an object holding a list is 2). ValueError otherwise."""
    for pos, text in enumerate(texts):
        if text is None:
            continue
        # len(str) counts characters; UTF-8 may take up to 4 bytes each: encode only when it matters.
        if len(text) * 4 > max_bytes and (size := len(text.encode())) > max_bytes:
            raise ValueError(
                f"payload at position {pos}: expected at most {max_bytes} bytes of JSON "
                f"(ANNSERVE_MAX_PAYLOAD_BYTES), got {size}"
            )
        # Depth cannot exceed the count of opening brackets: walk only payloads that could be too deep.
        if text.count("{") + text.count("[") > max_depth:
            depth = nesting_depth(payloads[pos], max_depth + 1)
            if depth > max_depth:
                raise ValueError(
                    f"payload at position {pos}: expected at most {max_depth} levels of nested objects "
                    f"and lists (ANNSERVE_MAX_PAYLOAD_DEPTH), got more than {max_depth}"
                )


def nesting_depth(value: Any, stop: int) -> int:
    """Levels of dicts and lists in `value` (a scalar is 0), counted without recursion and at
    most up to `stop` (no need to walk further once the cap is passed)."""
    deepest = 0
    todo = [(value, 1)]
    while todo:
        node, level = todo.pop()
        if isinstance(node, dict):
            children = node.values()
        elif isinstance(node, (list, tuple)):
            children = node
        else:
            continue
        deepest = max(deepest, level)
        if deepest >= stop:
            return deepest
        todo.extend((child, level + 1) for child in children if isinstance(child, (dict, list, tuple)))
    return deepest
