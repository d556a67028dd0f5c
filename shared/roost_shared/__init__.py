"""Roost's cross-cutting mechanisms, written once and used by every service.

Modules: ``settings`` (ROOST_* configuration), ``logging`` (JSON logs with correlation ids),
``events`` (CloudEvents envelope), ``catalog`` (every event type Roost publishes),
``db`` (PyMongo async client, indexes, transactions), ``bus`` (aio-pika topology, confirmed
publishing, batched idempotent consumers, retries, dead letters), ``outbox`` (transactional
outbox and relay), ``deadletters`` (parked messages: store, API, replay), ``api`` (FastAPI app
factory), ``problems`` (RFC 9457 errors), ``auth`` (tokens and roles), ``metrics`` and ``retry``.
"""
