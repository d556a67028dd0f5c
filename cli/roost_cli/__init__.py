"""The ``roost`` command line: operate Roost's services (alarms, events, suppression, webhooks)."""

__version__ = "0.1.0"
