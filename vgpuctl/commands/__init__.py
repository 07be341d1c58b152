"""CLI sub-commands, one module per area; each imports only what it needs."""
