"""The one Settings object: every knob the service reads from the environment (NURTURE_*)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEVELOPMENT_SECRET = "nurture-development-secret-change-me"  # noqa: S105 - refused outside development


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="NURTURE_", extra="ignore")

    env: Literal["development", "test", "production"] = "development"
    data_dir: Path = Path(".nurture")
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; defaults to a SQLite file under data_dir."
    )
    redis_url: str | None = Field(
        default=None, description="Redis URL for broker and capture queue; embedded store if unset."
    )
    secret_key: str = DEVELOPMENT_SECRET
    public_url: str = "http://127.0.0.1:8000"
    host: str = "127.0.0.1"
    port: int = 8000
    default_timezone: str = "Asia/Shanghai"

    anonymize_ip: bool = True
    session_timeout_minutes: int = 30
    max_clock_skew_seconds: int = 300
    max_event_bytes: int = 32 * 1024
    max_batch_bytes: int = 500 * 1024
    capture_stream: str = "nurture:capture"
    ingest_lanes: int = Field(
        default=2,
        ge=1,
        le=8,
        description="Ingest transactions a worker keeps in flight on PostgreSQL (one on SQLite).",
    )

    @model_validator(mode="after")
    def refuse_default_secret_in_production(self) -> Settings:
        if self.env == "production" and self.secret_key == DEVELOPMENT_SECRET:
            raise ValueError(
                "NURTURE_SECRET_KEY must be set to a private value when NURTURE_ENV=production"
            )
        return self

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'nurture.sqlite3').resolve()}"

    @property
    def is_embedded(self) -> bool:
        return self.redis_url is None


@lru_cache
def get_settings() -> Settings:
    return Settings()
