"""A fast ``logp_and_grad`` for an :class:`UnconstrainedTarget`: the program's Python run, traced once.

Running a Pyro program under handlers costs milliseconds of Python per call, whatever the number
of chains. For a fixed batch shape the computation ``(z, beta) -> (log p, d log p / dz)`` is a
fixed graph of tensor operations, so :class:`Potential` can record it once with ``make_fx``
(``compile="fx"``: replays the recorded ATen graph from Python), then ``torch.jit.trace`` that
graph (``compile="trace"``, the default ``"auto"``: no Python per call, ~0.1 s to build) or hand
it to ``torch.compile`` (``compile="inductor"``: fused kernels, ~20 s of compile time). A recorded
graph is checked against the plain path at fresh points before use; if recording, compiling or
the check fails, the plain path is used with a warning. Programs with data-dependent control
flow (stochastic subsampling, ``if`` on a latent value) must use ``compile=False``.
"""
from __future__ import annotations

import copy
import time
import warnings
from typing import Callable, Dict, Optional, Tuple, Union

import pyro
import torch

from ppl.inference.mcmc.state import velocity
from ppl.inference.target import UnconstrainedTarget

Beta = Union[float, torch.Tensor]


def _sanitize(lp: torch.Tensor, grad: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """NaN log densities count as -inf (rejected); non-finite gradients become 0 (the move is rejected anyway)."""
    lp = torch.nan_to_num(lp, nan=-float("inf"), posinf=float("inf"))
    bad = ~torch.isfinite(lp)
    grad = torch.where(bad.unsqueeze(-1) | ~torch.isfinite(grad), torch.zeros_like(grad), grad)
    return lp, grad


class Potential:
    """``potential(z, beta=None) -> (log target (C,), gradient (C, D))``, with an optional recorded fast path.

    ``compile``: False (plain handler run each call), "fx" (record the ATen graph per batch
    shape), "trace" / "auto" / True (record, then ``torch.jit.trace`` it) or "inductor" (record,
    then ``torch.compile``). ``beta`` tempers the likelihood (scalar or (C,)); ``tempered(beta)``
    returns a view at another temperature sharing the recorded graphs. :meth:`leapfrog` fuses a
    whole leapfrog step into one recorded graph (kernels use it when present). Distribution
    argument validation is off while sampling (a leapfrog step may leave a support numerically;
    such points get log density -inf and are rejected).
    """

    def __init__(self, target: UnconstrainedTarget, compile: Union[bool, str, None] = False, beta: Beta = 1.0) -> None:
        if compile not in (False, None, True, "auto", "fx", "trace", "inductor"):
            raise ValueError(f"compile must be False, 'auto', 'trace', 'fx' or 'inductor', got {compile!r}")
        self.target = target
        self.mode = "trace" if compile in (True, "auto") else (compile or None)
        self.beta = beta
        self._graphs: Dict[tuple, Optional[Callable]] = {}
        self._seen: Dict[tuple, int] = {}
        self.calls = 0
        self.record_s = 0.0  # seconds spent recording / compiling graphs

    def tempered(self, beta: Beta) -> "Potential":
        """The same potential at temperature ``beta``, sharing recorded graphs."""
        view = copy.copy(self)
        view.beta = beta
        return view

    # ------------------------------------------------------------------------- plain path
    def _eager(self, z: torch.Tensor, beta: torch.Tensor, *fixed: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        saved = getattr(self.target, "fixed", None)
        if fixed:  # the target's fixed (e.g. Gibbs-sampled discrete) values are inputs of the recorded graph
            self.target.fixed = dict(zip(sorted(saved), fixed))
        try:
            with torch.enable_grad():
                z = z.detach().requires_grad_(True)
                d = self.target.log_density(z)
                lp = d.prior + d.jacobian + beta * d.likelihood
                (grad,) = torch.autograd.grad(lp.sum(), z)
        finally:
            if fixed:
                self.target.fixed = saved
        return _sanitize(lp.detach(), grad)

    def _fixed(self, z: torch.Tensor) -> tuple:
        """The target's fixed values (sorted by site name), passed to the graph as extra inputs."""
        fixed = getattr(self.target, "fixed", None) or {}
        return tuple(fixed[k].expand((z.shape[0],) + tuple(fixed[k].shape[1:])) for k in sorted(fixed))

    def _eager_leapfrog(self, z, p, grad, eps, inv_mass, beta, *fixed):
        p = p + 0.5 * eps * grad
        z = z + eps * velocity(p, inv_mass)
        lp, grad = self._eager(z, beta, *fixed)
        p = p + 0.5 * eps * grad
        return z, p, lp, grad

    def _beta(self, z: torch.Tensor, beta: Optional[Beta]) -> torch.Tensor:
        beta = self.beta if beta is None else beta
        return torch.as_tensor(beta, dtype=z.dtype, device=z.device).expand(z.shape[0])

    def __call__(self, z: torch.Tensor, beta: Optional[Beta] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        self.calls += 1
        args = (z.detach(), self._beta(z, beta)) + self._fixed(z)
        with pyro.validation_enabled(False):
            fn = self._graph("lpg", self._eager, args) if self.mode else None
            return (fn or self._eager)(*args)

    def leapfrog(self, z, p, grad, eps, inv_mass, beta: Optional[Beta] = None):
        """One velocity-Verlet step ``(z, p, grad) -> (z, p, lp, grad)``; ``eps`` is (C, 1)."""
        self.calls += 1
        args = (z, p, grad, eps.expand(z.shape[0], 1).contiguous(), inv_mass, self._beta(z, beta)) + self._fixed(z)
        with pyro.validation_enabled(False):
            fn = self._graph("leapfrog", self._eager_leapfrog, args) if self.mode else None
            return (fn or self._eager_leapfrog)(*args)

    def log_prob(self, z: torch.Tensor, beta: Optional[Beta] = None) -> torch.Tensor:
        return self(z, beta)[0]

    # ------------------------------------------------------------------------- fast path
    def _graph(self, kind: str, eager: Callable, args: tuple, force: bool = False) -> Optional[Callable]:
        """The recorded graph for these shapes, made on the fifth call (rare shapes stay eager)."""
        key = (kind,) + tuple((tuple(a.shape), a.dtype, str(a.device)) for a in args)
        if key not in self._graphs:
            seen = self._seen.get(key, 0) + 1
            self._seen[key] = seen
            if seen < 5 and not force:
                return None
            t0 = time.perf_counter()
            self._graphs[key] = self._record(eager, args, len(self._fixed(args[0])))
            self.record_s += time.perf_counter() - t0
        return self._graphs[key]

    def _record(self, eager: Callable, args: tuple, n_fixed: int = 0) -> Optional[Callable]:
        from torch.fx.experimental.proxy_tensor import make_fx
        core, fixed = args[:len(args) - n_fixed], args[len(args) - n_fixed:]

        def perturb(scale: float) -> tuple:
            z = core[0] + scale * torch.randn_like(core[0])
            rest = tuple(a + 0.1 * scale * torch.randn_like(a) if i in (1, 2) else a for i, a in enumerate(core[1:], 1))
            rows = torch.randperm(z.shape[0], device=z.device)  # fixed values shuffled over points: still valid
            return (z,) + rest[:-1] + (torch.rand_like(core[-1]),) + tuple(f[rows] for f in fixed)

        try:
            probe = perturb(0.1)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fn = make_fx(lambda *a: eager(*a))(*probe)
                if self.mode == "inductor":
                    fn = torch.compile(fn, dynamic=False)
                elif self.mode == "trace":
                    fn = torch.jit.trace(fn, probe, check_trace=False)
            for scale in (0.5, 1.5):
                check = perturb(scale)
                for w, g in zip(eager(*check), fn(*check)):
                    ok = torch.isfinite(w)
                    atol = 1e-4 * (1 + float(w[ok].abs().max())) if ok.any() else 1e-4
                    if not torch.equal(ok, torch.isfinite(g)) or not torch.allclose(w[ok], g[ok], rtol=1e-4, atol=atol):
                        raise RuntimeError("the recorded graph disagrees with the program at a fresh point")
            return fn
        except Exception as e:  # noqa: BLE001 - any failure means: use the plain path
            warnings.warn(f"compile={self.mode!r} failed for this program ({type(e).__name__}: {e}); "
                          "using the plain (uncompiled) log density", RuntimeWarning)
            return None

    def compiled_for(self, z: torch.Tensor) -> bool:
        """Whether calls at ``z``'s shape use a recorded graph."""
        if not self.mode:
            return False
        args = (z.detach(), self._beta(z, None)) + self._fixed(z)
        return self._graph("lpg", self._eager, args, force=True) is not None
