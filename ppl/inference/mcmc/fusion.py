"""Kernel steps as pure tensor functions, run fused with the log density when the target can record them.

A kernel writes the body of its inner loop (one NUTS leaf, one HMC leapfrog with its bookkeeping)
as ``fn(leapfrog, *args) -> tuple of tensors``, drawing its random numbers outside and passing
them in. :func:`runner` returns a callable for that body: a :class:`~ppl.inference.mcmc.potential.Potential`
records it once per shape together with the program's gradient (one graph call per leaf instead
of some forty tensor operations from Python); any other ``logp_and_grad`` runs it as plain Python.
Arguments may contain named tuples, which are passed to the graph as their fields.
"""
from __future__ import annotations

from typing import Callable

import torch


def flatten(args: tuple) -> list:
    """Arguments with named tuples spliced in: the plain tensor list a recorded graph takes."""
    flat = []
    for a in args:
        if isinstance(a, tuple):
            flat.extend(a)
        else:
            flat.append(a)
    return flat


def runner(logp_and_grad, name: str, fn: Callable, example: tuple, points: torch.Tensor) -> Callable[..., tuple]:
    """A callable taking ``flatten(args)`` for ``args`` shaped like ``example``; returns ``fn(leapfrog, *args)``.

    ``points`` (C, D) are positions of the kernel's batch (the shape the program graph is checked at).
    Ask once per transition: the callable is valid for that transition's shapes and tempering.
    """
    from ppl.inference.mcmc.hmc import leapfrog
    spec = [(type(a), len(a)) if isinstance(a, tuple) else None for a in example]

    def flat_fn(lf, *flat):
        args, i = [], 0
        for kind in spec:
            if kind is None:
                args.append(flat[i])
                i += 1
            else:
                args.append(kind[0](*flat[i:i + kind[1]]))
                i += kind[1]
        return fn(lf, *args)

    fuse = getattr(logp_and_grad, "fuse", None)
    if fuse is not None:
        return fuse(name, flat_fn, flatten(example), points)
    return lambda *flat: flat_fn(lambda z, p, g, e, m: leapfrog(logp_and_grad, z, p, g, e, m), *flat)
