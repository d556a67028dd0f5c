"""Roost config service: the system, hosts, inventory and node configuration (sysinv)."""
