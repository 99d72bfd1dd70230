"""The ``vi`` engine: fit a guide to a program's posterior and return draws from it as a Result.

``fit`` trains and returns the guide (for reuse as a proposal or initialiser); ``vi`` is the
registered engine around it. Guides are automatic ones on the unconstrained space ("normal",
"lowrank", "fullrank", "flow", "auto"), a :class:`~ppl.inference.vi.guides.Guide`, or a
user-written Pyro guide program (discrete latents allowed with "score", "rws", "vimco").
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Union

import torch

from ppl.inference.program import Program
from ppl.inference.registry import register_engine
from ppl.inference.result import Result, log_mean_exp_with_se
from ppl.inference.runtime import Seed, seeded
from ppl.inference.target import UnconstrainedTarget
from ppl.inference.vi.guides import Guide, auto_guide
from ppl.inference.vi.objectives import REPARAMETERISED, get_objective, log_mean_exp
from ppl.inference.vi.pyro_guides import guided_traces, pyro_guide_log_weights, trace_params
from ppl.inference.vi.train import History, train


@dataclass
class VIFit:
    """A trained guide with what it was trained on: program, target (automatic guides), history."""

    guide: Union[Guide, Callable]
    program: Program
    target: Optional[UnconstrainedTarget]
    history: History
    objective: str
    model_params: List[torch.Tensor]

    @property
    def is_pyro_guide(self) -> bool:
        return not isinstance(self.guide, Guide)

    def log_weights(self, n: int):
        """``n`` guide draws with log p and log q (no gradients): (trace or z, log_p, log_q)."""
        with torch.no_grad():
            if self.is_pyro_guide:
                _, trace, density = guided_traces(self.program, self.guide, n)
                zero = torch.zeros(n, device=self.program.device)
                return trace, density.get("prior") + density.get("likelihood") + zero, density.get("proposal") + zero
            z, log_q = self.guide.sample(n)
            return z, self.target.log_prob(z), log_q

    def init_values(self, n: int) -> Dict[str, torch.Tensor]:
        """``n`` constrained draws per latent site (n, *shape): initial values for MCMC chains."""
        point, _, _ = self.log_weights(n)
        if self.is_pyro_guide:
            return {k: v for k, v in self.program.named_values(point, kinds=("latent",)).items()}
        values = self.target.constrain(point)
        return {k: v for k, v in values.items() if k in self.program.latent_sites()}

    def to_result(self, draws: int = 1000, iwae_k: int = 100, start: Optional[float] = None) -> Result:
        """Draws from the guide as one chain, with ELBO, IWAE(k) and log Z (IS with all draws) in attrs."""
        program = self.program
        with torch.no_grad():
            point, log_p, log_q = self.log_weights(draws)
            if self.is_pyro_guide:
                samples = program.named_values(point)
                loglik = program.pointwise_log_likelihood(point)
            else:
                out = self.target.constrain(point, observed=True)
                loglik = out.pop("__log_likelihood__")
                samples = out
            lw = (log_p - log_q).detach()
            k = max(1, min(iwae_k, draws))
            m = draws // k
            iw = log_mean_exp(lw[: m * k].reshape(m, k), 1)
        elbo = float(lw.double().mean())
        elbo_se = float(lw.double().std() / draws**0.5) if draws > 1 else 0.0
        log_z, log_z_se = log_mean_exp_with_se(lw)
        attrs: Dict[str, Any] = {
            "elbo": elbo, "elbo_se": elbo_se, "iwae": float(iw.double().mean()), "iwae_k": k,
            "objective": self.objective, "guide": _guide_name(self.guide), "steps": self.history.steps_done,
            "stopped": self.history.stopped, "draws": draws, **program.attrs(),
            "train_s": self.history.seconds,
        }
        if start is not None:
            attrs["runtime_s"] = time.perf_counter() - start
        diagnostics: Dict[str, Any] = {"loss": torch.tensor(self.history.loss)}
        if self.history.eval_values:
            diagnostics["heldout_bound"] = torch.tensor(self.history.eval_values)
        return Result(
            engine="vi",
            samples={k_: v.unsqueeze(0) for k_, v in samples.items()},
            log_evidence=log_z,
            log_evidence_se=log_z_se,
            sample_stats={"lp": log_p.unsqueeze(0), "log_q": log_q.unsqueeze(0)},
            diagnostics=diagnostics,
            log_likelihood={k_: v.unsqueeze(0) for k_, v in loglik.items()},
            observed_data=program.observed_data(),
            dims={k_: s.dims for k_, s in program.sites.items()},
            attrs=attrs,
        )


def _guide_name(guide) -> str:
    return type(guide).__name__ if isinstance(guide, Guide) else getattr(guide, "__name__", "pyro_guide")


def fit(
    model: Callable[..., Any],
    *args: Any,
    guide: Union[str, Guide, Callable] = "auto",
    objective: Union[str, Callable] = "elbo",
    steps: int = 2000,
    particles: int = 16,
    lr: float = 0.01,
    seed: Seed = None,
    device: Optional[Any] = None,
    dtype: Optional[torch.dtype] = None,
    model_kwargs: Optional[Mapping[str, Any]] = None,
    max_plate_nesting: Optional[int] = None,
    guide_options: Optional[Mapping[str, Any]] = None,
    plate: Optional[str] = None,
    eval_particles: Optional[int] = None,
    **train_options: Any,
) -> VIFit:
    """Train ``guide`` on the posterior of ``model(*args, **model_kwargs)`` by ``objective`` with ``particles`` per step.

    ``plate`` (Pyro guides only) computes per-data-point weights over that plate, for models whose
    latents are all local to it. ``eval_particles`` enables a held-out ELBO every ``eval_every``
    steps (with ``patience``: early stopping). Other keywords go to :func:`~ppl.inference.vi.train.train`.
    """
    if int(particles) < 1:
        raise ValueError(f"particles must be a positive integer, got {particles!r}")
    program = Program(model, args, model_kwargs, max_plate_nesting=max_plate_nesting, device=device, dtype=dtype)
    name = objective if isinstance(objective, str) else getattr(objective, "__name__", "custom")
    loss_of = get_objective(objective)
    with seeded(seed, program.device):
        program.sites  # analyse first: a model with no latents fails here
        if isinstance(guide, (str, Guide)):
            target = UnconstrainedTarget(program)
            if isinstance(guide, str):
                init_loc = target.sample_prior(200).median(0).values
                guide_obj = auto_guide(target, guide, init_loc=init_loc, **dict(guide_options or {}))
            else:
                if guide.amortized:
                    raise ValueError("an amortized guide is trained with amortize(); pass guide.condition(x) to fit one observation")
                if guide.dim != target.dim:
                    raise ValueError(f"the guide has dim {guide.dim}; the model's unconstrained space has dim {target.dim}")
                guide_obj = guide
            model_params = trace_params(program)["model"]
            reparam = name in REPARAMETERISED or not isinstance(objective, str)

            def loss_fn(step, batch):
                if reparam:
                    z, log_q = guide_obj.rsample(particles)
                else:
                    z = guide_obj.sample(particles)[0]
                    log_q = guide_obj.log_prob(z)
                return loss_of(target.log_prob(z), log_q)

            def eval_fn():
                z, log_q = guide_obj.sample(eval_particles)
                return float((target.log_prob(z) - log_q).mean())

            params = list(guide_obj.parameters()) + model_params
        else:
            if not callable(guide):
                raise TypeError(f"guide must be a name, a Guide or a Pyro guide program, got {type(guide).__name__}")
            target, guide_obj = None, guide
            found = trace_params(program, guide, particles)
            model_params = found["model"]
            params = found["guide"] + model_params

            def loss_fn(step, batch):
                log_p, log_q = pyro_guide_log_weights(program, guide_obj, particles, plate)
                return loss_of(log_p, log_q)

            def eval_fn():
                log_p, log_q = pyro_guide_log_weights(program, guide_obj, eval_particles)
                return float((log_p - log_q).mean())

        history = train(loss_fn, params, steps=steps, lr=lr, seed=seed,
                        eval_fn=eval_fn if eval_particles else None, **train_options)
    return VIFit(guide_obj, program, target, history, name, model_params)


@register_engine("vi", "variational inference: automatic, flow or Pyro guides trained by ELBO / IWAE / RWS / VIMCO")
def vi(
    model: Callable[..., Any],
    *args: Any,
    guide: Union[str, Guide, Callable] = "auto",
    objective: Union[str, Callable] = "elbo",
    steps: int = 2000,
    particles: int = 16,
    lr: float = 0.01,
    draws: int = 1000,
    iwae_k: int = 100,
    seed: Seed = None,
    device: Optional[Any] = None,
    dtype: Optional[torch.dtype] = None,
    model_kwargs: Optional[Mapping[str, Any]] = None,
    progress: bool = False,
    **options: Any,
) -> Result:
    """Variational inference: train a guide (default: full-rank Normal for D <= 50, else low-rank) and draw from it.

    Returns ``draws`` guide draws as one chain, the final ELBO and IWAE(``iwae_k``) bounds in
    ``attrs["elbo"]`` / ``attrs["iwae"]``, log Z from importance weighting the draws, and the
    loss history in ``diagnostics["loss"]``. The trained guide is ``result.fit.guide``.
    """
    start = time.perf_counter()
    vf = fit(model, *args, guide=guide, objective=objective, steps=steps, particles=particles, lr=lr,
             seed=seed, device=device, dtype=dtype, model_kwargs=model_kwargs, progress=progress, **options)
    with seeded(None if seed is None else _next_seed(seed), vf.program.device):
        result = vf.to_result(draws, iwae_k, start)
    result.attrs.update(particles=int(particles), lr=float(lr))
    result.fit = vf  # type: ignore[attr-defined]  (not saved; for reuse as a proposal / initialiser)
    return result


def _next_seed(seed: Seed) -> Seed:
    return seed + 1 if isinstance(seed, int) else seed
