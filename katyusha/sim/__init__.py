"""The simulator: katyusha's core objects (balancer, sidecar, lifecycle, KPA, placement) on simulated time.

``katyusha sim SCENARIO.yaml`` runs a scenario file; from Python::

    from katyusha.sim import load, Simulation
    scenario = load("scenario.yaml")
    sim = Simulation(scenario)
    sim.at(30.0, lambda s: s.pod("api-1").to_warmdisk())
    summary = sim.run()

See docs/simulator.md.
"""

from katyusha.sim.clock import Environment
from katyusha.sim.engine import SimPod, Simulation, run_scenario
from katyusha.sim.scenario import Scenario, load, parse

__all__ = ["Environment", "Scenario", "SimPod", "Simulation", "load", "parse", "run_scenario"]
