"""A search's optional parts beyond vector, k and params: the filter, the score threshold, and
what each result carries besides its id and score (payload, vector).

The filter and the threshold shape which items come back (`Collection.search` takes them); the
payload and the vector are read for the final hits only, one store read per shard
(`with_records`), after the search: a search that asks for neither reads nothing more.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .filters import Node

if TYPE_CHECKING:
    from .collection import Collection, Hits


@dataclass(frozen=True)
class SearchOptions:
    where: Node | None = None  # filters.parse_filter's tree; None admits everything
    with_payload: bool | tuple[str, ...] = False  # True: the whole payload; a tuple: those fields
    with_vector: bool = False
    score_threshold: float | None = None

    @property
    def fetches(self) -> bool:
        """Whether results carry more than id and score."""
        return self.with_payload is not False or self.with_vector


NO_OPTIONS = SearchOptions()


def with_records(collection: Collection, rows: list[Hits], options: SearchOptions) -> list[list[dict[str, Any]]]:
    """`rows` of (id, score) as result objects `{"id", "score", "payload"?, "vector"?}`, with
    what `options` asks for read from the store. A hit whose item was deleted between the search
    and this read is left out (it no longer exists)."""
    ids = [item_id for row in rows for item_id, _ in row]
    records = collection.records(ids, options.with_payload is not False, options.with_vector)
    fields = options.with_payload if isinstance(options.with_payload, tuple) else None
    out = []
    for row in rows:
        results = []
        for item_id, score in row:
            record = records.get(item_id)
            if record is None:
                continue
            vector, payload = record
            hit: dict[str, Any] = {"id": item_id, "score": score}
            if options.with_payload is not False:
                if fields is not None and payload is not None:
                    payload = {name: payload[name] for name in fields if name in payload}
                hit["payload"] = payload
            if options.with_vector:
                hit["vector"] = vector
            results.append(hit)
        out.append(results)
    return out
