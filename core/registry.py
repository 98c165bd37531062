"""Imports every domain's models so that the metadata (and Alembic) sees all tables."""

from __future__ import annotations

import capture.models
import core.feed
import core.keys
from core.models import Base

MODULES = (capture.models, core.feed, core.keys)
metadata = Base.metadata
