"""The local fleet: katyusha in front of emulated pods (sim-backend + nonna) on one machine.

``katyusha fleet up|status|pod`` (see docs/fleet.md). ``spec`` reads and
validates the fleet file, ``runner`` starts and supervises the processes and
runs the control plane (katyusha.control) in-process, ``cli`` steers a
running fleet through its control plane's admin API.
"""
