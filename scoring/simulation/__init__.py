"""The simulator: a reproducible population of Chinese B2B buyers with known true effects."""

from scoring.simulation.run import SimulationError, SimulationSummary, simulate

__all__ = ["SimulationError", "SimulationSummary", "simulate"]
