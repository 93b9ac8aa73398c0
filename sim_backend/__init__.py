"""sim_backend: an emulated pod (lifecycle states, cold starts, service times, CPU/RAM profile).

Run it with the ``sim-backend`` console script; see docs/sim_backend.md.
"""
