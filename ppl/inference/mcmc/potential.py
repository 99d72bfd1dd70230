"""A fast ``logp_and_grad`` for an :class:`UnconstrainedTarget`: the program's Python run, traced once.

Running a Pyro program under handlers costs milliseconds of Python per call, whatever the number
of chains. For a fixed batch shape the computation ``(z, beta) -> (log p, d log p / dz)`` is a
fixed graph of tensor operations, so :class:`Potential` can record it once with ``make_fx``,
simplify it (:mod:`ppl.inference.graph_simplify`) and replay it: from Python (``compile="fx"``),
through ``torch.jit.trace`` + freeze (``compile="trace"``, the default ``"auto"``: no Python per
call, ~0.1-1 s to build) or as inductor's fused C++ kernels (``compile="inductor"``: ~3x faster
per call, ~5-10 s of compile per graph). A recorded graph is checked against the plain path at
fresh points before use; if recording, compiling or the check fails, the plain path is used with
a warning. Programs with data-dependent control flow (stochastic subsampling, ``if`` on a latent
value) must use ``compile=False``. Kernels fuse their inner loops with the gradient through
:meth:`Potential.fuse` (see :mod:`ppl.inference.mcmc.fusion`).
"""
from __future__ import annotations

import contextlib
import copy
import time
import warnings
from typing import Callable, Dict, Optional, Tuple, Union

import pyro
import torch

from ppl.inference.graph_simplify import simplify
from ppl.inference.mcmc.state import velocity
from ppl.inference.target import UnconstrainedTarget

Beta = Union[float, torch.Tensor]


def _sanitize(lp: torch.Tensor, grad: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """NaN log densities count as -inf (rejected); non-finite gradients become 0 (the move is rejected anyway)."""
    lp = torch.nan_to_num(lp, nan=-float("inf"), posinf=float("inf"))
    bad = ~torch.isfinite(lp)
    grad = torch.where(bad.unsqueeze(-1) | ~torch.isfinite(grad), torch.zeros_like(grad), grad)
    return lp, grad


def _one_meta_mode():
    """A tracing context holding one fake-tensor mode, so make_fx stores every node's meta value in it.

    Without one, real-mode make_fx builds a new FakeTensorMode per recorded node, and each
    construction captures a Python stack trace: about a third of recording time (1 s of 3 s for
    the eight-schools NUTS kernels). Falls back to no context on a torch without these internals.
    """
    try:
        from torch._guards import TracingContext, tracing
        from torch._subclasses.fake_tensor import FakeTensorMode
        return tracing(TracingContext(FakeTensorMode(allow_fallback_kernels=True)))
    except Exception:  # noqa: BLE001 - private API moved: record the slow way
        return contextlib.nullcontext()


def _inductor(graph: torch.fx.GraphModule, probe: tuple) -> Callable:
    """Compile a recorded graph to fused kernels with inductor, without TorchDynamo's per-call guards.

    The graph's shapes are fixed and checked by the caller, so dynamo (``torch.compile``) would only
    add guard evaluation to every call; its ``compile_fx`` entry point takes the ATen graph as is.
    """
    from torch._inductor.compile_fx import compile_fx
    compiled = compile_fx(graph, list(probe))  # specialised to contiguous inputs, as the probe's copies are
    return lambda *a: tuple(compiled(*[t.contiguous() for t in a]))


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
        self._compiled_for: Dict[tuple, bool] = {}
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

    def fuse(self, name: str, fn: Callable, example: tuple, points: torch.Tensor,
             beta: Optional[Beta] = None) -> Callable[..., tuple]:
        """A callable for ``fn(leapfrog, *args)``, recorded as one graph with the program's log density.

        A kernel's per-step bookkeeping costs as much Python as the program itself, so kernels hand
        it here: ``fn`` gets this potential's ``leapfrog(z, p, grad, eps, inv_mass)`` and must be a
        pure function of its tensor arguments (random numbers drawn outside and passed in), shaped
        like ``example``. ``points`` (C, D) are positions of this shape: the program's own graph must
        pass the fresh-point check there first, and the fused graph must then reproduce ``fn``
        exactly at the call that records it; otherwise ``fn`` runs eagerly around the leapfrog.
        The callable is valid for arguments shaped like ``example`` (kernels ask once per step).
        """
        n = len(example)
        extra = (self._beta(points, beta),) + self._fixed(points)

        def eager(*a):
            core, b, fixed = a[:n], a[n], a[n + 1:]
            return fn(lambda z, p, g, e, m: self._eager_leapfrog(z, p, g, e, m, b, *fixed), *core)

        def plain(*a):
            return fn(lambda z, p, g, e, m: self.leapfrog(z, p, g, e, m, beta), *a)

        if not (self.mode and self.compiled_for(points)):
            return plain
        with pyro.validation_enabled(False):
            graph = self._graph(name, eager, tuple(example) + extra, exact=True)
        if graph is None:
            return plain
        return lambda *a: graph(*a, *extra)

    # ------------------------------------------------------------------------- fast path
    def _graph(self, kind: str, eager: Callable, args: tuple, force: bool = False, exact: bool = False) -> Optional[Callable]:
        """The recorded graph for these shapes, made on the fifth call (rare shapes stay eager).

        ``exact``: check the graph against ``eager`` at ``args`` themselves (for fused kernel steps,
        whose inputs cannot be perturbed at random) instead of at fresh points near them.
        """
        key = (kind, args[0].device) + tuple((a.shape, a.dtype) for a in args)  # inputs share one device
        if key not in self._graphs:
            seen = self._seen.get(key, 0) + 1
            self._seen[key] = seen
            if seen < 5 and not force:
                return None
            t0 = time.perf_counter()
            self._graphs[key] = (self._record_exact(eager, args) if exact
                                 else self._record(eager, args, len(self._fixed(args[0]))))
            self.record_s += time.perf_counter() - t0
        return self._graphs[key]

    def _compile(self, eager: Callable, probe: tuple) -> Callable:
        """Record ``eager`` at ``probe`` as an ATen graph, simplify it, then trace-and-freeze or inductor-compile it."""
        from torch.fx.experimental.proxy_tensor import make_fx
        # tracers tell inputs apart by tensor identity: one tensor passed twice (a tree whose two
        # ends are still its start point) would become one input, so every input gets its own copy
        probe = tuple(a.clone(memory_format=torch.contiguous_format) for a in probe)
        failure = None
        with warnings.catch_warnings():  # tracing warnings are noise here; the graph is checked afterwards
            warnings.simplefilter("ignore")
            with _one_meta_mode():
                gm = make_fx(lambda *a: eager(*a))(*probe)
            fn = simplify(gm, probe)
            if self.mode == "inductor":
                try:
                    return _inductor(fn, probe)
                except Exception as e:  # noqa: BLE001 - no C++ compiler, unsupported op, ...: trace instead
                    failure = e
            if self.mode in ("trace", "inductor"):
                fn = torch.jit.trace(fn, probe, check_trace=False)
                try:  # freezing inlines constants and drops no-op nodes
                    fn = torch.jit.freeze(fn.eval())
                except Exception:  # noqa: BLE001 - an unfrozen traced graph is still correct
                    pass
        if failure is not None:
            warnings.warn(f"inductor could not compile the graph ({type(failure).__name__}: {failure}); "
                          "using the traced graph", RuntimeWarning)
        return fn

    @staticmethod
    def _agree(want: tuple, got: tuple) -> bool:
        """Outputs equal: floats to 1e-4 relative (same non-finite pattern), others exactly."""
        for w, g in zip(want, got):
            if not w.is_floating_point():
                if not torch.equal(w, g):
                    return False
                continue
            ok = torch.isfinite(w)
            atol = 1e-4 * (1 + float(w[ok].abs().max())) if ok.any() else 1e-4
            if not torch.equal(ok, torch.isfinite(g)) or not torch.allclose(w[ok], g[ok], rtol=1e-4, atol=atol):
                return False
        return True

    def _record_checked(self, eager: Callable, probe: tuple, checks: list, what: str) -> Optional[Callable]:
        """Compile ``eager`` at ``probe``; keep it only if it agrees with ``eager`` at every point of ``checks``.

        Any failure (recording, compiling, a disagreement) means the plain path, with a warning.
        """
        try:
            fn = self._compile(eager, probe)
            for point in checks:
                if not self._agree(eager(*point), fn(*point)):
                    raise RuntimeError(f"the recorded graph of {what} disagrees with the plain path")
            return fn
        except Exception as e:  # noqa: BLE001 - any failure means: use the plain path
            warnings.warn(f"compile={self.mode!r} failed for {what} ({type(e).__name__}: {e}); "
                          "running it uncompiled", RuntimeWarning)
            return None

    def _record_exact(self, eager: Callable, args: tuple) -> Optional[Callable]:
        """A fused kernel step: checked at its own (unperturbable) arguments."""
        return self._record_checked(eager, args, [args], "a fused kernel step")

    def _record(self, eager: Callable, args: tuple, n_fixed: int = 0) -> Optional[Callable]:
        """The program's log density: recorded near ``args``, checked at two fresh points."""
        core, fixed = args[:len(args) - n_fixed], args[len(args) - n_fixed:]

        # a private generator: recording must not move the caller's random stream (same seed, same draws)
        gen = torch.Generator(device=core[0].device).manual_seed(20250101)

        def noise(a: torch.Tensor) -> torch.Tensor:
            return torch.randn(a.shape, generator=gen, dtype=a.dtype, device=a.device)

        def perturb(scale: float) -> tuple:
            z = core[0] + scale * noise(core[0])
            rest = tuple(a + 0.1 * scale * noise(a) if i in (1, 2) else a for i, a in enumerate(core[1:], 1))
            rows = torch.randperm(z.shape[0], generator=gen, device=z.device)  # fixed values shuffled: still valid
            beta = torch.rand(core[-1].shape, generator=gen, dtype=core[-1].dtype, device=z.device)
            return (z,) + rest[:-1] + (beta,) + tuple(f[rows] for f in fixed)

        probe = perturb(0.1)
        return self._record_checked(eager, probe, [perturb(0.5), perturb(1.5)], "this program's log density")

    def recompile(self, mode: str) -> None:
        """Switch to compile ``mode`` ("trace", "inductor", ...); every graph is recorded again at its next use."""
        if mode not in ("fx", "trace", "inductor"):
            raise ValueError(f"recompile needs 'fx', 'trace' or 'inductor', got {mode!r}")
        self.mode = mode
        self._graphs.clear()  # shared with tempered views, so they switch too
        self._seen.clear()
        self._compiled_for.clear()

    def compiled_for(self, z: torch.Tensor) -> bool:
        """Whether calls at ``z``'s shape use a recorded graph."""
        if not self.mode:
            return False
        key = (z.shape, z.dtype, z.device)
        if key not in self._compiled_for:
            args = (z.detach(), self._beta(z, None)) + self._fixed(z)
            self._compiled_for[key] = self._graph("lpg", self._eager, args, force=True) is not None
        return self._compiled_for[key]
