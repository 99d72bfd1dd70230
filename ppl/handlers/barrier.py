"""Stop a program run right after its k-th observation (a barrier, for SMC over whole programs)."""
from __future__ import annotations

from typing import Any, Callable, Optional, Tuple

from pyro.poutine.messenger import Messenger

from ppl.handlers._sites import is_observation


class _BarrierReached(Exception):
    """Raised (privately) by :class:`BarrierMessenger` to unwind the program at the barrier."""

    def __init__(self, barrier: "BarrierMessenger") -> None:
        super().__init__(f"barrier after observation {barrier.k}")
        self.barrier = barrier


class BarrierMessenger(Messenger):
    """Halts the run once the ``k``-th observed site (or factor) has been recorded.

    The stop is raised from ``_postprocess_message``, which Pyro runs outermost handler first:
    handlers entered *outside* this one (a trace, the log-density accounting) have already
    recorded the k-th observation, those inside it have not. Run the program with :meth:`call`
    (or catch via it) to learn whether it stopped; ``k=None`` never stops.
    """

    def __init__(self, k: Optional[int]) -> None:
        super().__init__()
        if k is not None and int(k) < 1:
            raise ValueError(f"the barrier must come after observation k >= 1, got {k!r}")
        self.k = None if k is None else int(k)
        self.count = 0
        self.stopped = False

    def __enter__(self):
        self.count = 0
        self.stopped = False
        return super().__enter__()

    def _postprocess_message(self, msg) -> None:
        if self.k is None or not is_observation(msg):
            return
        self.count += 1
        if self.count == self.k:
            self.stopped = True
            raise _BarrierReached(self)

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Tuple[bool, Any]:
        """Run ``fn(*args, **kwargs)`` (which must enter this barrier): ``(stopped, return value or None)``."""
        try:
            return False, fn(*args, **kwargs)
        except _BarrierReached as e:
            if e.barrier is not self:
                raise
            return True, None


def barrier(fn: Optional[Callable] = None, k: Optional[int] = None):
    """Handler form of :class:`BarrierMessenger`."""
    msngr = BarrierMessenger(k)
    return msngr(fn) if fn is not None else msngr
