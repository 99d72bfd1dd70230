"""Effect handlers that turn a Pyro program into the views an engine needs.

Each is a Pyro ``Messenger`` with one effect, composing with Pyro's own ``trace``, ``replay``,
``condition``, ``substitute``, ``block``, ``scale``, ``mask`` and ``plate``.
"""
from ppl.handlers._sites import PARTICLE_PLATE
from ppl.handlers.barrier import BarrierMessenger, barrier
from ppl.handlers.batch import BatchMessenger, batch
from ppl.handlers.fix import FixMessenger
from ppl.handlers.log_density import ROLES, LogDensityMessenger, log_density
from ppl.handlers.propose import GuideMismatchError, ProposeMessenger, propose
from ppl.handlers.resample import ResampleMessenger, particle_axis, reorder, resample
from ppl.handlers.temper import TemperMessenger, temper
from ppl.handlers.unconstrain import DiscreteLatentError, UnconstrainMessenger, unconstrain

__all__ = [
    "PARTICLE_PLATE", "ROLES",
    "BatchMessenger", "batch", "FixMessenger",
    "BarrierMessenger", "barrier",
    "LogDensityMessenger", "log_density",
    "TemperMessenger", "temper",
    "UnconstrainMessenger", "unconstrain", "DiscreteLatentError",
    "ProposeMessenger", "propose", "GuideMismatchError",
    "ResampleMessenger", "resample", "reorder", "particle_axis",
]
