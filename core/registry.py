"""Imports every domain's models so that the metadata (and Alembic) sees all tables."""

from __future__ import annotations

import attribution.db_models
import capture.models
import channels.models
import core.feed
import core.keys
import handoff.models
import journeys.models
import scoring.models
from core.models import Base

MODULES = (
    attribution.db_models,
    capture.models,
    channels.models,
    core.feed,
    core.keys,
    handoff.models,
    journeys.models,
    scoring.models,
)
metadata = Base.metadata
