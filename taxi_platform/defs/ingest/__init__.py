"""Ingest stage wiring: the TLC files and the zone lookup as assets, and the release sensor."""
