"""Cleaning raw trips and building the feature tables (DuckDB SQL), and their data contracts."""
