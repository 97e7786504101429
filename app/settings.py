"""Service settings: every field reads ANNSERVE_<FIELD> from the environment (pydantic-settings);
`annserve serve` flags override the environment."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ANNSERVE_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    data_dir: Path = Path("./data")
    log_level: str = "info"

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
    max_upsert_batch: int = Field(10_000, ge=1)
    max_dim: int = Field(4096, ge=1)
