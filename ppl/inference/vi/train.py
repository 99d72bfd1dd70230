"""The training driver: optimiser, schedule, minibatches, progress, early stopping, checkpoints, NaN guard.

``train(loss_fn, params, steps=...)`` minimises ``loss_fn(step, batch)``. It keeps the last
parameters whose loss was finite: a NaN / inf loss restores them and raises
:class:`NonFiniteLossError` naming the step (or just stops, with ``on_nonfinite="stop"``).
"""
from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Union

import pyro
import torch
from tqdm.auto import tqdm

from ppl.inference.runtime import Seed, resolve_seed


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; parameters were restored to the last finite step."""


@dataclass
class History:
    """What training did: the loss per step, held-out bounds, the step it stopped at and why."""

    loss: List[float] = field(default_factory=list)
    eval_steps: List[int] = field(default_factory=list)
    eval_values: List[float] = field(default_factory=list)
    stopped: str = "steps"  # "steps", "early_stopping", "nonfinite"
    nonfinite_step: Optional[int] = None
    steps_done: int = 0
    seconds: float = 0.0


def _optimizer(name: Union[str, Callable], params: Sequence[torch.Tensor], lr: float):
    if callable(name):
        return name(params)
    table = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD, "rmsprop": torch.optim.RMSprop}
    if name not in table:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {sorted(table)} or pass a factory")
    return table[name](params, lr=lr)


def _schedule(name: Optional[Union[str, Callable]], opt, steps: int):
    if name is None or name == "constant":
        return None
    if callable(name):
        return name(opt)
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, steps), eta_min=opt.defaults["lr"] * 0.01)
    if name == "exponential":
        return torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.01 ** (1.0 / max(1, steps)))
    raise ValueError(f"unknown schedule {name!r}; choose 'constant', 'cosine', 'exponential' or pass a factory")


def minibatches(n: int, batch_size: Optional[int], generator: Optional[torch.Generator] = None, device=None):
    """An endless stream of index tensors: shuffled minibatches of ``range(n)``, epoch after epoch."""
    while True:
        if batch_size is None or batch_size >= n:
            yield torch.arange(n, device=device)
            continue
        perm = torch.randperm(n, generator=generator).to(device)
        for i in range(0, n - batch_size + 1, batch_size):
            yield perm[i:i + batch_size]


def train(
    loss_fn: Callable[[int, Optional[torch.Tensor]], torch.Tensor],
    params: Iterable[torch.Tensor],
    *,
    steps: int = 1000,
    lr: float = 1e-2,
    optimizer: Union[str, Callable] = "adam",
    schedule: Optional[Union[str, Callable]] = None,
    data_size: Optional[int] = None,
    batch_size: Optional[int] = None,
    eval_fn: Optional[Callable[[], float]] = None,
    eval_every: int = 100,
    patience: Optional[int] = None,
    checkpoint: Optional[Union[str, os.PathLike]] = None,
    checkpoint_every: int = 500,
    state: Optional[Dict[str, object]] = None,
    clip_norm: Optional[float] = None,
    on_nonfinite: str = "raise",
    validate: str = "first",
    seed: Seed = None,
    progress: bool = False,
    desc: str = "vi",
) -> History:
    """Minimise ``loss_fn(step, batch)`` over ``params`` for ``steps`` optimisation steps.

    ``batch`` is a tensor of indices into ``range(data_size)`` (a minibatch of ``batch_size``
    over a data plate or a simulated data set; None without ``data_size``). ``eval_fn`` returns a
    held-out bound (higher is better) every ``eval_every`` steps; with ``patience`` training
    stops after that many evaluations without improvement and keeps the best parameters.
    ``checkpoint`` saves parameters, optimiser and history every ``checkpoint_every`` steps and
    resumes from the file when it exists; ``state`` holds extra modules (name -> nn.Module)
    whose state dicts are checkpointed too. ``validate="first"`` checks distribution arguments
    and supports on the first step only (Pyro's validation costs a large share of a small step);
    "always" keeps the caller's setting throughout.
    """
    if validate not in ("first", "always"):
        raise ValueError(f"validate must be 'first' or 'always', got {validate!r}")
    if on_nonfinite not in ("raise", "stop"):
        raise ValueError(f"on_nonfinite must be 'raise' or 'stop', got {on_nonfinite!r}")
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ValueError("there are no trainable parameters (a guide or model with requires_grad tensors)")
    opt = _optimizer(optimizer, params, lr)
    sched = _schedule(schedule, opt, steps)
    history = History()
    start_step = 0
    if checkpoint is not None and os.path.exists(checkpoint):
        start_step = _load(checkpoint, params, opt, sched, history, state)
    gen = torch.Generator()
    s = resolve_seed(seed)
    gen.manual_seed(s if s is not None else int(torch.randint(0, 2**31, (1,)).item()))
    batches = minibatches(data_size, batch_size, gen, params[0].device) if data_size else None
    good = [p.detach().clone() for p in params]
    best = None
    best_value, stale = -math.inf, 0
    import time

    t0 = time.perf_counter()
    bar = tqdm(range(start_step, steps), desc=desc, disable=not progress, initial=start_step, total=steps)
    step = start_step
    for step in bar:
        batch = next(batches) if batches is not None else None
        opt.zero_grad(set_to_none=True)
        quiet = validate == "first" and step > start_step
        with pyro.validation_enabled(False) if quiet else contextlib.nullcontext():
            loss = loss_fn(step, batch)
        value = float(loss.detach())
        if not math.isfinite(value):
            _restore(params, good)
            history.stopped, history.nonfinite_step = "nonfinite", step
            history.steps_done = step
            if on_nonfinite == "raise":
                raise NonFiniteLossError(
                    f"the loss is {value} at step {step}; training stopped and the parameters are those of step {step - 1}"
                )
            break
        loss.backward()
        grads_ok = all(p.grad is None or bool(torch.isfinite(p.grad).all()) for p in params)
        if not grads_ok:
            _restore(params, good)
            history.stopped, history.nonfinite_step = "nonfinite", step
            history.steps_done = step
            if on_nonfinite == "raise":
                raise NonFiniteLossError(f"a gradient is NaN or infinite at step {step}; parameters restored to step {step - 1}")
            break
        for g, p in zip(good, params):
            g.copy_(p.detach())
        if clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(params, clip_norm)
        opt.step()
        if sched is not None:
            sched.step()
        history.loss.append(value)
        if progress and step % 10 == 0:
            bar.set_postfix(loss=f"{value:.4g}")
        if eval_fn is not None and (step + 1) % eval_every == 0:
            with torch.no_grad():
                v = float(eval_fn())
            history.eval_steps.append(step + 1)
            history.eval_values.append(v)
            if v > best_value:
                best_value, stale = v, 0
                best = [p.detach().clone() for p in params]
            else:
                stale += 1
                if patience is not None and stale >= patience:
                    _restore(params, best)
                    history.stopped = "early_stopping"
                    history.steps_done = step + 1
                    break
        if checkpoint is not None and (step + 1) % checkpoint_every == 0:
            _save(checkpoint, params, opt, sched, history, state, step + 1)
    else:
        history.steps_done = steps
        if steps > start_step:
            # the final step's update is kept only if it is finite
            if not all(bool(torch.isfinite(p).all()) for p in params):
                _restore(params, good)
    bar.close()
    history.seconds = time.perf_counter() - t0
    if checkpoint is not None and history.stopped != "nonfinite":
        _save(checkpoint, params, opt, sched, history, state, history.steps_done)
    return history


def _restore(params: Sequence[torch.Tensor], values: Optional[Sequence[torch.Tensor]]) -> None:
    if values is None:
        return
    with torch.no_grad():
        for p, v in zip(params, values):
            p.copy_(v)


def _save(path, params, opt, sched, history: History, state, step: int) -> None:
    blob = {
        "step": step,
        "params": [p.detach().cpu() for p in params],
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict() if sched is not None else None,
        "history": history.__dict__,
        "state": {k: m.state_dict() for k, m in (state or {}).items()},
    }
    tmp = f"{path}.tmp"
    torch.save(blob, tmp)
    os.replace(tmp, path)


def _load(path, params, opt, sched, history: History, state) -> int:
    blob = torch.load(path, map_location="cpu", weights_only=False)
    if len(blob["params"]) != len(params) or any(a.shape != b.shape for a, b in zip(blob["params"], params)):
        raise ValueError(f"checkpoint {path} does not match these parameters (different guide or model)")
    _restore(params, [p.to(q.device) for p, q in zip(blob["params"], params)])
    opt.load_state_dict(blob["optimizer"])
    if sched is not None and blob["scheduler"] is not None:
        sched.load_state_dict(blob["scheduler"])
    history.__dict__.update(blob["history"])
    for k, m in (state or {}).items():
        if k in blob["state"]:
            m.load_state_dict(blob["state"][k])
    return int(blob["step"])
