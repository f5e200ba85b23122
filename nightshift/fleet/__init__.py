"""Fleet simulator: a discrete-event model of spot and dedicated GPU pools driven by the product's
own placement, SLA watch, escalation, shard resume and queue order (``nightshift simulate``)."""

from nightshift.fleet.report import FleetReport, run_scenario
from nightshift.fleet.scenario import Scenario, ScenarioError, load_scenario
from nightshift.fleet.sim import Fleet, FleetRun

__all__ = ["Fleet", "FleetReport", "FleetRun", "Scenario", "ScenarioError", "load_scenario", "run_scenario"]
