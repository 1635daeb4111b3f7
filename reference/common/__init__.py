"""What every service shares: settings, the database, the outbox and inbox, the HTTP basics."""
