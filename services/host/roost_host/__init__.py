"""Roost host service: host lifecycle, failure detection, BMC power and sensors, recovery."""
