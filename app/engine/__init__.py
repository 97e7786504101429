"""The collection engine (no web framework): collections of shards, each a durable SQLite store
with a dual main/fresh index; rebuild jobs; the `auto` kind."""
