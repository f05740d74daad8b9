"""Database state: tenant names, the model set, provisioning and reset, strategies."""
