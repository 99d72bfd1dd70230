"""Amortized inference: train q(z | x) once, then condition on any observation by a forward pass.

``amortize`` trains an :class:`~ppl.inference.vi.guides.AmortizedGuide` either by simulation
(CSIS / neural posterior estimation: maximise log q(z | x) on prior-predictive pairs) or by a
variational bound (ELBO / IWAE averaged over observations, simulated or given).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import torch
from torch import nn

from ppl.inference.program import Program
from ppl.inference.result import Result
from ppl.inference.runtime import Seed, seeded
from ppl.inference.vi.guides import AmortizedGuide, MLPEncoder, SetEncoder
from ppl.inference.vi.joint import JointDensity
from ppl.inference.vi.objectives import csis_loss, get_objective, log_mean_exp
from ppl.inference.vi.train import History, train


@dataclass
class AmortizedFit:
    """A trained amortized guide with the joint density it was trained on."""

    guide: AmortizedGuide
    joint: JointDensity
    history: History
    objective: str

    def posterior(self, x: Optional[torch.Tensor] = None, draws: int = 1000) -> Result:
        """Draws from q(z | x) for one observation (default: the program's own data) as a Result."""
        x = self.joint.observation() if x is None else torch.as_tensor(x).to(self.joint.target.device)
        with torch.no_grad():
            z, log_q = self.guide.sample(draws, x.unsqueeze(0))
            z, log_q = z[:, 0], log_q[:, 0]
            log_p = self.joint.log_joint(z, x.unsqueeze(0).expand((draws,) + tuple(x.shape)))
            samples = self.joint.target.constrain(z)
        lw = log_p - log_q
        return Result(
            engine="amortized",
            samples={k: v.unsqueeze(0) for k, v in samples.items()},
            sample_stats={"lp": log_p.unsqueeze(0), "log_q": log_q.unsqueeze(0)},
            diagnostics={"loss": torch.tensor(self.history.loss)},
            attrs={"elbo": float(lw.double().mean()), "iwae": float(log_mean_exp(lw.double(), 0)),
                   "objective": self.objective, "draws": draws},
        )


def make_encoder(kind: Union[str, nn.Module], obs_shape: Sequence[int], embed_dim: int = 64) -> nn.Module:
    """An encoder by name: "mlp" (any fixed shape, flattened) or "set" (a set (n, d) or (n,), permutation-invariant)."""
    if isinstance(kind, nn.Module):
        return kind
    if kind == "mlp":
        return MLPEncoder(int(torch.Size(obs_shape).numel()), embed_dim)
    if kind == "set":
        elem = 1 if len(obs_shape) == 1 else int(obs_shape[-1])
        return SetEncoder(elem, embed_dim)
    raise ValueError(f"unknown encoder {kind!r}; use 'mlp', 'set' or an nn.Module mapping (B, *obs_shape) -> (B, embed_dim)")


def amortize(
    model: Callable[..., Any],
    *args: Any,
    guide: Optional[AmortizedGuide] = None,
    objective: str = "npe",
    family: str = "normal",
    encoder: Union[str, nn.Module] = "mlp",
    embed_dim: int = 64,
    guide_options: Optional[Mapping[str, Any]] = None,
    steps: int = 2000,
    batch_size: int = 256,
    simulations: Optional[int] = None,
    observations: Optional[torch.Tensor] = None,
    particles: int = 8,
    lr: float = 1e-3,
    seed: Seed = None,
    device: Optional[Any] = None,
    dtype: Optional[torch.dtype] = None,
    model_kwargs: Optional[Mapping[str, Any]] = None,
    **train_options: Any,
) -> AmortizedFit:
    """Train an amortized guide for ``model``; the data passed only fix the observations' shapes.

    ``guide_options`` go to :class:`AmortizedGuide` (``flows``, ``hidden``, ``bins`` for flow families).

    ``objective="npe"`` (alias "csis"): fresh prior-predictive pairs each step (or a fixed set of
    ``simulations`` pairs, in minibatches of ``batch_size``). ``"elbo"`` / ``"iwae"``: ``particles``
    draws per observation from ``observations`` (M, *obs_shape), or simulated ones when not given.
    """
    program = Program(model, args, model_kwargs, device=device, dtype=dtype)
    with seeded(seed, program.device):
        joint = JointDensity(program)
        if guide is None:
            enc = make_encoder(encoder, joint.obs_shape, embed_dim)
            guide = AmortizedGuide(joint.dim, enc, embed_dim, family=family, **dict(guide_options or {}))
        guide = guide.to(device=joint.target.device, dtype=joint.target.dtype)
        data_z = data_x = None
        if observations is not None:
            data_x = torch.as_tensor(observations).to(joint.target.device, joint.target.dtype)
        elif simulations is not None:
            data_z, data_x = joint.simulate(int(simulations))
        size = None if data_x is None else data_x.shape[0]
        name = "npe" if objective in ("npe", "csis") else objective

        if name == "npe":
            if observations is not None:
                raise ValueError("NPE trains on simulated pairs; give `simulations=` rather than `observations=`")

            def loss_fn(step, batch):
                z, x = joint.simulate(batch_size) if batch is None else (data_z[batch], data_x[batch])
                return csis_loss(guide.log_prob(z, x))
        else:
            loss_of = get_objective(name)

            def loss_fn(step, batch):
                x = joint.simulate(batch_size)[1] if batch is None else data_x[batch]
                z, log_q = guide.rsample(particles, x)
                return loss_of(joint.log_joint(z, x), log_q)

        history = train(loss_fn, guide.parameters(), steps=steps, lr=lr, seed=seed, data_size=size,
                        batch_size=batch_size, state={"guide": guide}, **train_options)
    return AmortizedFit(guide, joint, history, name)
