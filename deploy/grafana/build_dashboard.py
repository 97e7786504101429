"""Generates deploy/grafana/dashboards/annserve.json with grafana-foundation-sdk (Grafana's own
dashboard-as-code library). Run it after a change; tests/test_observability.py checks that the
committed file is what this writes, and that every query returns data from a real Prometheus.

    python deploy/grafana/build_dashboard.py          # rewrite the JSON
    python deploy/grafana/build_dashboard.py --check  # exit 1 if the JSON is stale

Every query filters by the `$collection` variable (multi-value) where the metric has one, and
rates use `$__rate_interval`, which Grafana sizes from the scrape interval.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import heatmap, prometheus, stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import dashboard as model
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

OUT = Path(__file__).parent / "dashboards" / "annserve.json"
UID = "annserve"
DS = model.DataSourceRef(type_val="prometheus", uid="${datasource}")
C = 'collection=~"$collection"'
SEARCH = 'route=~"/collections/\\\\{name\\\\}/search.*"'  # both search routes (PromQL-escaped braces)


def query(expr: str, legend: str = "", ref: str = "A") -> prometheus.Dataquery:
    return prometheus.Dataquery().expr(expr).legend_format(legend or "__auto").ref_id(ref).datasource(DS)


def series(title: str, unit: str, description: str, *queries: prometheus.Dataquery, w: int = 12) -> timeseries.Panel:
    panel = timeseries.Panel().title(title).description(description).unit(unit).datasource(DS).height(8).span(w)
    for q in queries:
        panel = panel.with_target(q)
    return panel


def build() -> model.Dashboard:
    rate = "$__rate_interval"
    panels = [
        db.Row("Traffic"),
        series("Request rate", "reqps", "HTTP requests per second by route.",
               query(f"sum by (route) (rate(annserve_requests_total[{rate}]))", "{{route}}")),
        series("Search latency p50 / p95 / p99", "s",
               "Server-side duration of search requests (single and batch), all collections.",
               *[query(f"histogram_quantile({q}, sum by (le) (rate(annserve_request_duration_seconds_bucket"
                       f"{{{SEARCH}}}[{rate}])))", f"p{int(q * 100)}", ref)
                 for q, ref in ((0.5, "A"), (0.95, "B"), (0.99, "C"))]),
        series("Error rate", "percentunit",
               "Share of requests answered 5xx (a bug: read the server log) and 4xx (clients' mistakes).",
               query(f'(sum(rate(annserve_requests_total{{status=~"5.."}}[{rate}])) or vector(0)) '
                     f"/ sum(rate(annserve_requests_total[{rate}]))", "5xx", "A"),
               query(f'(sum(rate(annserve_requests_total{{status=~"4.."}}[{rate}])) or vector(0)) '
                     f"/ sum(rate(annserve_requests_total[{rate}]))", "4xx", "B")),
        series("Queries searched per collection", "short",
               "Query vectors searched per second, and the mean queries per engine call (micro-batching, "
               "all collections).",
               query(f"sum by (collection) (rate(annserve_search_queries_total{{{C}}}[{rate}]))", "{{collection}}", "A"),
               query(f"sum(rate(annserve_search_batch_queries_sum[{rate}])) / "
                     f"sum(rate(annserve_search_batch_queries_count[{rate}]))",
                     "queries per engine call (all collections)", "B")),
        db.Row("Recall"),
        series("Recall vs target per collection", "percentunit",
               "Online recall@k (mean of the last N sampled live queries, each re-run exactly) against the "
               "collection's target and rebuild floor.",
               query(f"annserve_recall_ratio{{{C}}}", "{{collection}} recall", "A"),
               query(f"annserve_recall_target_ratio{{{C}}}", "{{collection}} target", "B"),
               query(f"annserve_recall_floor_ratio{{{C}}}", "{{collection}} floor", "C")),
        heatmap.Panel().title("Recall distribution").description(
            "Per-query recall@k of sampled live queries: a band low down means some queries fare badly "
            "even when the mean looks fine.").datasource(DS).height(8).span(12).with_target(
            query(f"sum by (le) (increase(annserve_recall_query_ratio_bucket{{{C}}}[{rate}]))", "{{le}}")
            .format(PromQueryFormat.HEATMAP)),
        series("Recall sampler", "short",
               "Sampled queries measured and dropped per second, and the queue waiting for exact re-runs.",
               query(f"sum by (collection) (rate(annserve_recall_samples_total{{{C}}}[{rate}]))", "{{collection}} measured", "A"),
               query(f"sum by (collection) (rate(annserve_recall_dropped_total{{{C}}}[{rate}]))", "{{collection}} dropped", "B"),
               query("annserve_recall_queue_depth", "queue depth", "C")),
        series("Search knob in force", "short", "The search parameter each collection uses by default (tuned or set).",
               query(f'{{__name__=~"annserve_search_param_.*", {C}}}', "{{collection}} {{__name__}}")),
        db.Row("Index"),
        series("Fresh index size", "short",
               "Items in the exact fresh index, per collection: it grows with writes and empties at each "
               "rebuild; one that keeps growing means rebuilds are not happening.",
               query(f'sum by (collection) (annserve_collection_items{{part="fresh", {C}}})', "{{collection}}")),
        series("Tombstones", "short",
               "Deleted or replaced items still inside main (filtered from answers; compacted by a rebuild).",
               query(f"sum by (collection) (annserve_collection_tombstones{{{C}}})", "{{collection}}")),
        series("Items per shard", "short", "Live items per shard, main and fresh.",
               query(f"annserve_collection_items{{{C}}}", "{{collection}}/{{shard}} {{part}}")),
        series("Index memory", "bytes", "Memory of the main (measured) and fresh (estimated) indexes.",
               query(f"sum by (collection, part) (annserve_index_memory_bytes{{{C}}})", "{{collection}} {{part}}")),
        db.Row("Rebuilds"),
        series("Rebuild duration", "s", "Mean duration of the rebuilds that ended in each interval.",
               query(f"sum by (collection) (increase(annserve_rebuild_duration_seconds_sum{{{C}}}[{rate}])) / "
                     f"sum by (collection) (increase(annserve_rebuild_duration_seconds_count{{{C}}}[{rate}]))",
                     "{{collection}}"), w=8),
        stat.Panel().title("Time since last rebuild").description(
            "Since the newest main index was built (since creation before the first build).").unit("s")
        .datasource(DS).height(8).span(8).with_target(
            query(f"time() - annserve_rebuild_last_success_timestamp_seconds{{{C}}}", "{{collection}}")),
        series("Rebuild refusals and failures", "short",
               "Rebuilds whose new main was refused (recall under the floor: the old main keeps serving) or "
               "that failed, by reason.",
               query(f"sum by (collection, reason) (increase(annserve_rebuild_refusals_total{{{C}}}[{rate}]))",
                     "{{collection}} refused: {{reason}}", "A"),
               query(f"sum by (collection, reason) (increase(annserve_rebuild_failures_total{{{C}}}[{rate}]))",
                     "{{collection}} failed: {{reason}}", "B"), w=8),
    ]
    board = (
        db.Dashboard("annserve").uid(UID).tags(["annserve"]).refresh("30s").time("now-1h", "now")
        .timezone("browser").editable()
        .with_variable(db.DatasourceVariable("datasource").label("Data source").type("prometheus"))
        .with_variable(
            db.QueryVariable("collection").label("Collection").datasource(DS)
            .query("label_values(annserve_collection_items, collection)")
            .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED).sort(model.VariableSort.ALPHABETICAL_ASC)
            .multi(True).include_all(True).all_value(".*")
        )
    )
    for panel in panels:
        board = board.with_row(panel) if isinstance(panel, db.Row) else board.with_panel(panel)
    return board.build()


def render() -> str:
    return json.dumps(build(), cls=JSONEncoder, indent=2, sort_keys=True) + "\n"


def main() -> int:
    text = render()
    if "--check" in sys.argv[1:]:
        if not OUT.exists() or OUT.read_text() != text:
            print(f"{OUT} is stale: run python {Path(__file__).name}", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
