"""Background execution: the Celery app, its queues and beat schedule, the ingest loop."""
