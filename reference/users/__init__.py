"""users: registers users and announces each on topic ``users`` (via the outbox)."""
