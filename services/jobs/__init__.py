"""Offline and event-driven serving: ``shunter batch`` over files, ``shunter stream`` over Redis Streams.

Both are clients of the Open Inference Protocol: they reach a router (auth, limits, splits,
cache) or a worker, never a model directly, so the serving path is the one real-time
clients use.
"""
