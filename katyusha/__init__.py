"""katyusha: a load-balancing data plane for serverless-style fleets."""

__version__ = "0.1.0"
