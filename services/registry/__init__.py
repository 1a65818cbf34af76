"""The registry service: models, traffic policies, worker leases and API keys on Redis."""
