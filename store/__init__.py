"""Data layer: Redis key layout and the embedded redis-server."""
