"""Serving stage wiring: the fare_service Bento and the scheduled_quotes batch-scoring asset."""
