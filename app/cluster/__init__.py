"""The cluster tier: a router (`ANNSERVE_SHARD_URLS`) that splits writes by the id hash to every
replica of the owning shard node and fans reads out to one replica per shard, with deadlines,
failover, hedging and an explicit partial-answer policy; and what a shard node needs to know
its place (`ANNSERVE_SHARD_INDEX` of `ANNSERVE_SHARD_COUNT`, from a StatefulSet pod's ordinal).

Modules: `topology` (ANNSERVE_SHARD_URLS), `ownership` (which shard owns an id), `fanout` (the
calls to the nodes), `merge` (global top-k), `search`, `items`, `collections`, `jobs` (what each
route does over the cluster), `routes` and `app` (the FastAPI router app), `state`, `metrics`,
`statefulset` (the pod entrypoint), `bench` (`annserve bench-cluster`).

Nothing here is imported by a plain node except `ownership`.
"""
