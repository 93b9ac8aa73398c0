"""sim_backend."""
