"""A small multi-tenant shop: one schema per tenant, bound with schema_translate_map."""
