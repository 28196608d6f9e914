"""The TAPS training math: connectors, eps schedules, attacks, losses, metrics.

Entry points: ``phase_loss`` (one training step's loss) and the metrics in
``tapsc.method.metrics``.
"""

from tapsc.method.connectors import CONNECTORS, connect, connect_with
from tapsc.method.objective import LOSSES, phase_loss
from tapsc.method.schedules import eps_at

__all__ = ["CONNECTORS", "LOSSES", "connect", "connect_with", "eps_at", "phase_loss"]
