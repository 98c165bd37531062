"""Shared plumbing: settings, database, model base, ids, clock, task decorator."""
