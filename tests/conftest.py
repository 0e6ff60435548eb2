"""Shared pytest setup. Markers are registered in pyproject.toml."""
