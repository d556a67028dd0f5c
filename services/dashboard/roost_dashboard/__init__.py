"""Roost dashboard: server-rendered pages over the service APIs, live by server-sent events."""
