"""The local federation: an emulated FLAME node stack (broker, storage, data, hub adapter, PO, Keycloak).

Nothing outside this package imports it; production code never depends on the emulator.
"""

from flame.sim.faults import FaultPlan, parse_faults
from flame.sim.node import DataSource, NodeSpec
from flame.sim.settings import StackSettings
from flame.sim.stack import FlameStack

__all__ = ["DataSource", "FaultPlan", "FlameStack", "NodeSpec", "StackSettings", "parse_faults"]
