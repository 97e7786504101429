"""Service settings: every field reads ANNSERVE_<FIELD> from the environment (pydantic-settings);
`annserve serve` flags override the environment."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic import model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ANNSERVE_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    data_dir: Path = Path("./data")
    log_level: str = "info"
    # Processes serving the data directory on one port (`annserve serve --workers N`); 0, the
    # default: one per core available for a data node, one for a router (app/serve.py). On 2
    # cores, 2 workers served 6,154 searches/s against 4,062 for one (bench-http 50K x 384
    # hnswlib, README Performance), and /metrics and the recall figure are every worker's
    # merged (engine/worker_stats.py). In-process apps (tests, create_app) run one process
    # whatever this says: the worker processes are started by `annserve serve`.
    workers: int = Field(0, ge=0, le=256)

    # Dual index: fresh is exact, so it must stay small; past this many items a rebuild starts.
    fresh_limit: int = Field(20_000, ge=1)
    # Rebuild every collection whose fresh index is non-empty this often; 0 turns it off.
    rebuild_interval_seconds: float = Field(0.0, ge=0)
    # `auto` kind: above this many bytes of raw float32 vectors, pick compressed IVF-PQ. 0 = no budget.
    memory_budget_bytes: int = Field(0, ge=0)

    # Limits on what one request may ask (422 above them; 413 for the body).
    max_body_bytes: int = Field(32 * 1024 * 1024, ge=1024)
    max_k: int = Field(1000, ge=1)
    max_batch: int = Field(1000, ge=1)
    # Small plain searches that cannot wait run on the event loop, sparing a thread hand-off
    # (api/transport/batching.py); false: every engine call goes to a search thread.
    search_on_loop: bool = True
    max_upsert_batch: int = Field(10_000, ge=1)
    # Upsert and batch-search bodies with JSON number lists are read by simdjson straight into
    # float32 (api/transport/simd_rows.py), the same arrays as orjson's path at a third of the
    # CPU; whatever it is not sure of goes the orjson way. False: always orjson (for A/B runs).
    json_fast_path: bool = True
    max_dim: int = Field(4096, ge=1)

    # ---- online recall (engine/recall.py) ----
    # Share of live queries re-run exactly off the request path; 0 turns sampling off.
    recall_sample_rate: float = Field(0.01, ge=0, le=1)
    # The reported figure is the mean over this many latest samples per collection.
    recall_window: int = Field(1000, ge=1)
    # Sampled queries waiting for their exact re-run; past it new samples are dropped (counted).
    recall_queue_size: int = Field(1024, ge=1)
    # Recent sampled queries kept per collection for the rebuild gate and the tuner.
    recall_recent_queries: int = Field(256, ge=1)

    # The event-loop lag probe (annserve_event_loop_lag_seconds): how often it checks; 0 = off.
    loop_lag_interval_seconds: float = Field(0.01, ge=0)
    # How soon a thread holding the GIL hands it to the event loop's thread when that wants it
    # (sys.setswitchinterval; Python's default 0.005). Large bodies are parsed in a thread in
    # short steps; this bounds how long the loop may wait for the GIL between them.
    gil_switch_interval_seconds: float = Field(0.0005, gt=0)
    # A payload's JSON text and nesting (objects and lists inside each other); 422 above them.
    max_payload_bytes: int = Field(64 * 1024, ge=64)
    max_payload_depth: int = Field(32, ge=1)

    # API keys (api/auth.py): comma-separated, several per role for rotation; never logged.
    admin_api_key: SecretStr | None = None
    api_key: SecretStr | None = None
    metrics_api_key: SecretStr | None = None

    # ---- cluster (app/cluster/) ----
    # Set: this process is a router over these nodes (shards by ',', replicas of a shard by '|').
    shard_urls: str = ""
    # Bounds each shard call of a read (search, get, info), its failovers and hedges included.
    shard_timeout_seconds: float = Field(1.0, gt=0)
    # Bounds each node call of a write or an admin call (writes are fsynced; a create opens files).
    shard_write_timeout_seconds: float = Field(30.0, gt=0)
    # Reads: ask a second replica when the first has not answered within this; 0 = no hedging.
    hedge_after_ms: float = Field(0.0, ge=0)
    # A search with a shard down: 200 with "partial": true instead of 503 (a request may say otherwise).
    allow_partial: bool = False
    # A shard node's place in the cluster: it refuses (421) writes of ids that another shard owns.
    shard_index: int | None = Field(None, ge=0)
    shard_count: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _check_shard_place(self) -> "Settings":
        if (self.shard_index is None) != (self.shard_count is None):
            raise ValueError("ANNSERVE_SHARD_INDEX and ANNSERVE_SHARD_COUNT: set both or neither")
        if self.shard_index is not None and self.shard_index >= self.shard_count:
            raise ValueError(
                f"ANNSERVE_SHARD_INDEX: expected 0..{self.shard_count - 1} (ANNSERVE_SHARD_COUNT "
                f"{self.shard_count}), got {self.shard_index}"
            )
        return self
