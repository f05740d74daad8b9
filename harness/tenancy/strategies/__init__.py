"""Built-in strategies: real tenancy patterns, each a few lines."""
