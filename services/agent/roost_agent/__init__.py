"""Roost's node agent: announces its host, reports hardware inventory, applies configuration."""

__version__ = "0.1.0"
