"""Handoff: routes hot leads to the right rep with the full story, holds reps to an SLA and
learns from their outcomes. Journeys' handoff action calls `handoff.service.route_contact`."""
