"""Capture: the tracking API, snippet, pixel and forms; enrichment, identity resolution,
and the contacts and events they build."""
