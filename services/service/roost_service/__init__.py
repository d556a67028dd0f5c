"""Roost service service: HA service groups and their activity leases (StarlingX sm)."""
