"""Placeholder while the module is written."""
IMPLEMENTATIONS: dict = {}
