"""The collection engine (no web framework): collections of shards, each a durable SQLite store
with a dual main/fresh index; rebuild jobs; the `auto` kind; online recall and tuning.

Where things live:
- manager.py: the collections of a data directory (create, open, delete, rebuild triggers)
- collection.py: one collection, its spec, the fan-out of writes and searches over its shards
- shard.py: one shard (store + main + fresh + labels), its search and the install of a new main
- store.py: a shard's SQLite store of record; errors.py: the engine's exceptions (StorageError)
- inputs.py: the checks of what callers pass (vectors, ids, payloads, k); payload_limits.py
- merge.py: top-k merges of label/score arrays, exact brute force in chunks
- labels.py: a shard's live labels and their ids, compact; routing.py: which shard owns an id
- build.py: building a new main off the request path; files.py: durable file writes
- rwlock.py, group_commit.py, threads.py: a readers-writer lock, group commit, search threads
- jobs.py, auto.py, recall.py, tuning.py, stats.py, snapshots.py: jobs, the auto kind, online
  recall, the tuner, counters for /metrics, snapshot files
"""
