"""The Alembic migrations build exactly the schema the models describe, on both databases."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from core.db import make_engine
from core.registry import metadata


def differences(url: str) -> list:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            return list(compare_metadata(context, metadata))
    finally:
        engine.dispose()


def test_migrations_match_models_on_postgresql(postgres_url: str) -> None:
    assert differences(postgres_url) == []


def test_migrations_match_models_on_sqlite(sqlite_dir: Path) -> None:
    assert differences(f"sqlite:///{sqlite_dir / 'nurture.sqlite3'}") == []


@pytest.mark.parametrize("bad", ["sqlite:///", "postgresql://127.0.0.1:1/none"])
def test_settings_refuse_the_default_secret_in_production(bad: str, monkeypatch) -> None:
    from pydantic import ValidationError

    from core.settings import Settings

    monkeypatch.setenv("NURTURE_ENV", "production")
    monkeypatch.delenv("NURTURE_SECRET_KEY", raising=False)
    with pytest.raises(ValidationError, match="NURTURE_SECRET_KEY"):
        Settings(database_url=bad)
    monkeypatch.setenv("NURTURE_SECRET_KEY", "a-private-secret")
    assert Settings(database_url=bad).env == "production"
