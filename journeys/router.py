"""The journeys package's HTTP surface: segments and journeys under /api/v1."""

from __future__ import annotations

from fastapi import APIRouter

from journeys.journeys_router import router as journeys_router
from journeys.segments_router import router as segments_router

router = APIRouter()
router.include_router(segments_router)
router.include_router(journeys_router)
