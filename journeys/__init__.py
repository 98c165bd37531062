"""Journeys and segments: the condition language, audiences, and the engine that moves each
contact through a journey. Handoff registers itself here with `register_handoff`."""

from journeys.engine import Handoff, register_handoff

__all__ = ["Handoff", "register_handoff"]
