"""Coordination between gateway replicas through Redis (only when GATEWAY_REDIS_URL is set)."""
