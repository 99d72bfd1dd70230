"""Two helpers the posteriordb models share: Stan's implicit flat prior and a batched X @ beta."""
from __future__ import annotations

import pyro.distributions as dist
import torch
from torch.distributions import constraints


def flat(support: constraints.Constraint = constraints.real, event_shape: tuple = ()) -> dist.ImproperUniform:
    """Stan's implicit prior: log density 0 on ``support`` (improper; it cannot be sampled).

    Engines start such sites Stan's way (Uniform(-2, 2) in unconstrained space, see
    :mod:`ppl.handlers.improper`) or from user ``init=`` values; prior-sampling engines fail.
    """
    return dist.ImproperUniform(support, torch.Size(), torch.Size(event_shape))


def linear(X: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """``X @ beta`` for one coefficient vector (K,) or batched ones (..., 1, K) -> (..., n).

    A batched coefficient sits outside the observation plate, so it carries a singleton at the
    plate's dim; the rows of X take that dim's place (no (..., n, K) intermediate).
    """
    out = beta @ X.transpose(-1, -2)  # (..., [1,] n)
    return out.squeeze(-2) if beta.dim() > 1 else out
