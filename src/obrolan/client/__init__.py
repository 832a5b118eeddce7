"""obrolan's async client: connection, durable outbox, inbox, local encrypted store."""
