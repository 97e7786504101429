"""The engine's metrics, read from its state when Prometheus scrapes, in the text format.

Nothing here runs on the request path: the engine keeps plain counters (engine/stats.py, and
each collection's recall monitor, engine/recall.py) and `EngineMetrics.render()` writes them
out once per scrape, looping over the collections once. The text is written here rather than
through prometheus-client's metric families: its exposition costs about 15 us of CPU per line
(label escaping and validation), and 100 collections make some 5,000 lines, 75 ms, where the
budget for a whole scrape is 50 ms. Labels need no escaping: collection names match
NAME_PATTERN (letters, digits, `_ . -`), and every other label value is a fixed word or a number.

Families (all prefixed `annserve_`):
  collection_items{collection,shard,part}          live items in main / fresh
  collection_tombstones{collection,shard}          dead items still inside main
  index_memory_bytes{collection,shard,part}        main (measured), fresh (estimated), payload (filters)
  searches_total, search_queries_total             requests and query vectors searched
  search_batch_queries                             histogram: queries per engine call, all collections
  upserted_items_total, deleted_items_total
  rebuilds_total                                   rebuilds that swapped in new mains
  rebuild_failures_total{reason}, rebuild_refusals_total{reason}
  rebuild_duration_seconds                         histogram, every rebuild
  rebuild_last_success_timestamp_seconds           the newest main's build time (the
                                                   collection's creation before the first build)
  recall_ratio                                     online recall@k, mean of the rolling window
  recall_window_samples                            samples behind it
  recall_query_ratio                               histogram of per-query recall
  recall_samples_total, recall_dropped_total       sampled queries measured / dropped
  recall_target_ratio, recall_floor_ratio          the collection's settings
  recall_last_sample_timestamp_seconds
  search_param_<knob>{collection,kind}             the knob in force (ef, nprobe, ...)
  recall_queue_depth, recall_queue_capacity_samples, recall_sample_rate_ratio   the sampler
  worker_resident_memory_bytes{pid}                with several workers: each live one's RSS

With several workers (`annserve serve --workers N`) the counters, histograms and the recall
window are every worker's merged (engine/worker_stats.py): whichever worker answers the scrape
gives the same figures. The gauges of a shard's state (items, tombstones, memory, knobs) are
the answering worker's, after it caught up with what the others committed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

from ...engine.stats import Histogram, built_at_seconds, look_at_shards
from ...engine.tuning import KNOBS
from ...engine.worker_stats import MergedCollection, MergedView, figures_of

KNOB_NAMES = sorted({knob for knobs in KNOBS.values() for knob in knobs})

# (name, type, help), in the order they are written.
FAMILIES: list[tuple[str, str, str]] = [
    ("annserve_collection_items", "gauge", "Live items per shard, in the main index and in the fresh (exact) index"),
    ("annserve_collection_tombstones", "gauge", "Deleted or replaced items still inside a shard's main index "
     "(filtered out of answers; compacted away by a rebuild)"),
    ("annserve_index_memory_bytes", "gauge", "Memory of a shard's main index (measured), fresh index "
     "(estimated: vectors and ids) and payload index (its arrays, and its distinct strings estimated)"),
    ("annserve_searches_total", "counter", "Search requests answered (a batch search counts one)"),
    ("annserve_search_queries_total", "counter", "Query vectors searched"),
    ("annserve_search_batch_queries", "histogram", "Query vectors per engine search call, all collections "
     "(concurrent requests merged by the micro-batcher, or one batch request)"),
    ("annserve_upserted_items_total", "counter", "Items written (inserted or replaced)"),
    ("annserve_deleted_items_total", "counter", "Items deleted"),
    ("annserve_rebuilds_total", "counter", "Rebuilds that swapped in new main indexes"),
    ("annserve_rebuild_failures_total", "counter", "Rebuilds that failed, by reason (build_error: the kind "
     "could not be built from the data; cancelled: shutdown or delete; error: a bug)"),
    ("annserve_rebuild_refusals_total", "counter", "Rebuilt main indexes not swapped in, by reason "
     "(recall_floor: measured under the collection's recall_floor)"),
    ("annserve_rebuild_duration_seconds", "histogram", "Duration of rebuilds, whatever their outcome"),
    ("annserve_rebuild_last_success_timestamp_seconds", "gauge", "When the newest main index was built "
     "(Unix time; the collection's creation time before its first build)"),
    ("annserve_recall_ratio", "gauge", "Online recall@k: mean over the last annserve_recall_window_samples "
     "sampled live queries, each re-run exactly"),
    ("annserve_recall_window_samples", "gauge", "Sampled queries behind annserve_recall_ratio"),
    ("annserve_recall_query_ratio", "histogram", "Recall@k of each sampled live query"),
    ("annserve_recall_samples_total", "counter", "Sampled live queries whose recall was measured"),
    ("annserve_recall_dropped_total", "counter", "Sampled live queries dropped unmeasured (queue full, "
     "or the exact re-run failed)"),
    ("annserve_recall_target_ratio", "gauge", "The collection's recall target"),
    ("annserve_recall_floor_ratio", "gauge", "The recall a rebuilt main must reach to be swapped in (0: off)"),
    ("annserve_recall_last_sample_timestamp_seconds", "gauge", "When a sample was last measured (Unix time)"),
    *[(f"annserve_search_param_{knob}", "gauge", f"The search parameter {knob} in force for requests that "
       "give none (the collection's default, else the kind's)") for knob in KNOB_NAMES],
    ("annserve_recall_queue_depth", "gauge", "Sampled queries waiting for their exact re-run"),
    ("annserve_recall_queue_capacity_samples", "gauge", "Size of the sample queue (ANNSERVE_RECALL_QUEUE_SIZE)"),
    ("annserve_recall_sample_rate_ratio", "gauge", "Share of live queries sampled (ANNSERVE_RECALL_SAMPLE_RATE)"),
    ("annserve_worker_resident_memory_bytes", "gauge", "Resident memory of each live worker process "
     "(`annserve serve --workers N`; absent with one process: see process_resident_memory_bytes)"),
]


def _number(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    return "+Inf" if value == float("inf") else repr(float(value))


def _histogram(lines: list[str], name: str, labels: str, histogram: Histogram) -> None:
    """`labels`: 'collection="c",' (with the trailing comma) or ''."""
    for bound, count in histogram.cumulative():
        lines.append(f'{name}_bucket{{{labels}le="{_number(float(bound))}"}} {count}\n')
    plain = f"{{{labels[:-1]}}}" if labels else ""
    lines.append(f"{name}_count{plain} {histogram.count}\n")
    lines.append(f"{name}_sum{plain} {_number(histogram.sum)}\n")


class EngineMetrics:
    """Renders the engine's families for `collections()` (the live collections; empty while
    the service starts)."""

    def __init__(self, collections: Callable[[], Iterable[Any]],
                 workers: Callable[[], MergedView | None] = lambda: None) -> None:
        """`workers()`: every worker's figures merged (engine/worker_stats.py), None with one process."""
        self._collections = collections
        self._workers = workers

    def render(self) -> bytes:
        out: dict[str, list[str]] = {name: [] for name, _, _ in FAMILIES}
        sampler = None
        batch: Histogram | None = None
        view = self._workers()
        for collection in self._collections():
            sampler = collection.recall.sampler or sampler
            figures = figures_of(collection, view)
            stats = figures.stats
            batch = stats.batch_queries if batch is None else batch.plus(stats.batch_queries)
            self._one(collection, figures, view is not None, out)
        if view is not None:
            for worker in view.workers:
                if worker["resident_memory_bytes"] is not None:
                    out["annserve_worker_resident_memory_bytes"].append(
                        f'annserve_worker_resident_memory_bytes{{pid="{worker["pid"]}"}} '
                        f'{worker["resident_memory_bytes"]}\n')
        if batch is not None:
            _histogram(out["annserve_search_batch_queries"], "annserve_search_batch_queries", "", batch)
        if sampler is not None:
            out["annserve_recall_queue_depth"].append(f"annserve_recall_queue_depth {sampler.depth}\n")
            out["annserve_recall_queue_capacity_samples"].append(
                f"annserve_recall_queue_capacity_samples {sampler.capacity}\n")
            out["annserve_recall_sample_rate_ratio"].append(
                f"annserve_recall_sample_rate_ratio {_number(sampler.rate)}\n")
        text = []
        for name, kind, help_text in FAMILIES:
            text.append(f"# HELP {name} {help_text}\n# TYPE {name} {kind}\n")
            text += out[name]
        return "".join(text).encode()

    @staticmethod
    def _one(collection: Any, figures: MergedCollection, shared: bool, out: dict[str, list[str]]) -> None:
        """One collection's series; `shared`: several workers serve the data directory."""
        c = f'collection="{collection.name}"'
        stats = figures.stats
        kind = None
        # With several workers, catch up first: the items are the store's, not this worker's lag.
        for shard_no, look in enumerate(look_at_shards(collection, catch_up=shared)):
            kind = kind or look.kind
            s = f'{c},shard="{shard_no}"'
            out["annserve_collection_items"] += [
                f'annserve_collection_items{{{s},part="main"}} {look.main}\n',
                f'annserve_collection_items{{{s},part="fresh"}} {look.fresh}\n',
            ]
            out["annserve_collection_tombstones"].append(f"annserve_collection_tombstones{{{s}}} {look.tombstones}\n")
            out["annserve_index_memory_bytes"] += [
                f'annserve_index_memory_bytes{{{s},part="main"}} {look.main_bytes}\n',
                f'annserve_index_memory_bytes{{{s},part="fresh"}} {look.fresh_bytes}\n',
                f'annserve_index_memory_bytes{{{s},part="payload"}} {look.payload_bytes}\n',
            ]
        for name, value in (
            ("annserve_searches_total", stats.searches), ("annserve_search_queries_total", stats.queries),
            ("annserve_upserted_items_total", stats.upserted), ("annserve_deleted_items_total", stats.deleted),
            ("annserve_rebuilds_total", stats.rebuilds),
            ("annserve_recall_target_ratio", collection.spec.recall_target),
            ("annserve_recall_floor_ratio", collection.spec.recall_floor),
        ):
            out[name].append(f"{name}{{{c}}} {_number(value)}\n")
        for reason, count in stats.failures.items():
            out["annserve_rebuild_failures_total"].append(
                f'annserve_rebuild_failures_total{{{c},reason="{reason}"}} {count}\n')
        for reason, count in stats.refusals.items():
            out["annserve_rebuild_refusals_total"].append(
                f'annserve_rebuild_refusals_total{{{c},reason="{reason}"}} {count}\n')
        _histogram(out["annserve_rebuild_duration_seconds"], "annserve_rebuild_duration_seconds", c + ",",
                   stats.rebuild_seconds)
        built = built_at_seconds(collection)
        if built is None and collection.spec.created_at:
            built = datetime.fromisoformat(collection.spec.created_at).timestamp()
        if built is not None:
            out["annserve_rebuild_last_success_timestamp_seconds"].append(
                f"annserve_rebuild_last_success_timestamp_seconds{{{c}}} {_number(built)}\n")

        summary, histogram, last_sampled_at = figures.recall, figures.recall_histogram, figures.last_sampled_at
        if summary["recall_at_k"] is not None:
            out["annserve_recall_ratio"].append(f"annserve_recall_ratio{{{c}}} {_number(summary['recall_at_k'])}\n")
        out["annserve_recall_window_samples"].append(f"annserve_recall_window_samples{{{c}}} {summary['samples']}\n")
        _histogram(out["annserve_recall_query_ratio"], "annserve_recall_query_ratio", c + ",", histogram)
        out["annserve_recall_samples_total"].append(f"annserve_recall_samples_total{{{c}}} {summary['samples_total']}\n")
        out["annserve_recall_dropped_total"].append(f"annserve_recall_dropped_total{{{c}}} {summary['dropped_total']}\n")
        if last_sampled_at is not None:
            out["annserve_recall_last_sample_timestamp_seconds"].append(
                f"annserve_recall_last_sample_timestamp_seconds{{{c}}} {_number(last_sampled_at)}\n")

        kind = kind or collection.spec.kind
        for knob, value in collection.search_params_in_force().items():
            if knob in KNOB_NAMES and isinstance(value, int):  # forest's search_k may be None: per k
                out[f"annserve_search_param_{knob}"].append(
                    f'annserve_search_param_{knob}{{{c},kind="{kind}"}} {value}\n')
