"""The reference system: the article's shop, built on tidings as we tell users to build theirs.

One folder per service (users, notifications, orders, inventory, payments, frontend), each
its own OS process with its own SQLite database and HTTP API; they talk only through the
bus. ``python -m reference.supervisor`` runs them all.
"""
