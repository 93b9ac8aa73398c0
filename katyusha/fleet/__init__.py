"""The local fleet: katyusha in front of emulated pods (sim-backend + nonna) on one machine.

``katyusha fleet up|status|pod`` (see docs/fleet.md). ``spec`` reads and
validates the fleet file, ``runner`` starts and supervises the processes,
``control`` steers a running fleet through its state file.
"""
