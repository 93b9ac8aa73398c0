"""``katyusha batch``: pull records from a table or CSV file through katyusha to a service (docs/batch.md)."""
