"""nonna."""
