"""One router per resource, mounted under ``/api/v1`` (health checks at the root)."""
