"""A small character-level n-gram language model with a hard constraint: the setting of SMC steering.

A trigram model (add-k smoothed) is fitted on a short bundled text. Generation of ``length``
characters must avoid a set of banned letters (a lipogram, default: no "e"); each character is
followed by a ``pyro.factor`` that is 0 when allowed and -inf otherwise, so the posterior is the
LM conditioned on the constraint and the evidence Z = P(constraint). Z and the constrained
first-character law are exact by a forward pass over the (V x V) contexts.

Written in both forms: :func:`char_lm` (a whole program, for program SMC / the registry) and
:func:`char_lm_init` / :func:`char_lm_step` (step form, for particle filters), plus
:func:`steering_proposal`, the locally constrained proposal (mask banned letters, renormalise)
that makes the filter "SMC steering" with exact weights. :func:`compare_at_equal_compute`
compares it with rejection sampling and best-of-N at the same number of LM evaluations.
"""
from __future__ import annotations

import math
from functools import lru_cache
from typing import Any, Dict, Optional, Sequence

import pyro
import pyro.distributions as dist
import torch

from ppl.models.base import GroundTruth, ModelSpec, register_model

ALPHABET = " abcdefghijklmnopqrstuvwxyz."
V = len(ALPHABET)
INDEX = {c: i for i, c in enumerate(ALPHABET)}

TEXT = (
    "the river ran past the old mill and the miller sat by the door. he watched the water turn the wheel "
    "and thought of the winter to come. the town was quiet in the evening and the lamps were lit one by one. "
    "a small boat came down the river with a man and a dog. the man waved to the miller and the miller waved "
    "back. they had known each other for many years. in the spring the river was high and fast and in the "
    "summer it was slow and warm. children swam near the bridge and fish hid under the stones. the miller "
    "liked the sound of the wheel more than any song. at night he read old books by the fire and his cat "
    "slept on the rug. one morning a letter came from the city. his sister wrote that she would visit soon "
    "with her two sons. the miller cleaned the house and baked bread and waited by the window. when they "
    "came the boys ran to the river at once and the sister laughed and said the place had not changed at all. "
    "that was true and the miller was glad of it. a good mill, a good river, and a warm house are enough for "
    "a quiet man. so the days went by, and the wheel kept turning, and the water kept running to the sea."
)


def encode(s: str) -> torch.Tensor:
    """Indices of the characters of ``s`` (unknown characters map to space)."""
    return torch.tensor([INDEX.get(c, 0) for c in s.lower()], dtype=torch.long)


def decode(idx: Sequence[int]) -> str:
    return "".join(ALPHABET[int(i)] for i in idx)


@lru_cache(maxsize=4)
def fit_trigram(k: float = 0.05) -> torch.Tensor:
    """log P(c | a, b) as a (V, V, V) float64 table, add-``k`` smoothed trigram counts of :data:`TEXT`."""
    x = encode(TEXT)
    counts = torch.full((V, V, V), float(k), dtype=torch.float64)
    idx = (x[:-2] * V + x[1:-1]) * V + x[2:]
    counts.view(-1).index_add_(0, idx, torch.ones(idx.shape[0], dtype=torch.float64))
    return torch.log(counts / counts.sum(-1, keepdim=True))


def allowed_mask(banned: str) -> torch.Tensor:
    """(V,) bool: which characters the constraint allows."""
    mask = torch.ones(V, dtype=torch.bool)
    for c in banned:
        mask[INDEX[c]] = False
    return mask


def _log_ok(c: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    ok = mask.to(c.device)[c]
    return torch.where(ok, torch.zeros((), dtype=torch.float64, device=c.device),
                       torch.full((), -math.inf, dtype=torch.float64, device=c.device))


# ------------------------------------------------------------------------------------- programs
def char_lm(length: int = 12, banned: str = "e", table: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Generate ``length`` characters from the trigram LM (context starts as two spaces), banned letters excluded."""
    table = fit_trigram() if table is None else table
    mask = allowed_mask(banned)
    a = b = torch.tensor(0)
    out = []
    for t in range(int(length)):
        c = pyro.sample(f"c_{t}", dist.Categorical(logits=table[a, b]))
        pyro.factor(f"ok_{t}", _log_ok(c, mask))
        a, b = b, c
        out.append(c)
    return torch.stack(out, -1)


def char_lm_init(table: Optional[torch.Tensor] = None, banned: str = "e") -> Dict[str, torch.Tensor]:
    """Step form, time 0: the context (two spaces) as the state ``{"a", "b"}``."""
    return {"a": torch.tensor(0), "b": torch.tensor(0)}


def char_lm_step(state: Dict[str, torch.Tensor], t: int, y_t: Any = None, table: Optional[torch.Tensor] = None,
                 banned: str = "e") -> Dict[str, torch.Tensor]:
    """Step form, time t: draw c_t from the LM given the context, then the constraint factor."""
    table = fit_trigram() if table is None else table
    c = pyro.sample(f"c_{t}", dist.Categorical(logits=table.to(state["a"].device)[state["a"], state["b"]]))
    pyro.factor(f"ok_{t}", _log_ok(c, allowed_mask(banned)))
    return {"a": state["b"], "b": c}


def steering_proposal(state: Dict[str, torch.Tensor], t: int, y_t: Any = None, table: Optional[torch.Tensor] = None,
                      banned: str = "e") -> None:
    """SMC steering's proposal: the LM's next-character law with banned letters masked out."""
    table = fit_trigram() if table is None else table
    logits = table.to(state["a"].device)[state["a"], state["b"]]
    logits = logits.masked_fill(~allowed_mask(banned).to(logits.device), -math.inf)
    pyro.sample(f"c_{t}", dist.Categorical(logits=logits))


# ------------------------------------------------------------------------------------- exact answers
def exact_log_evidence(length: int = 12, banned: str = "e", table: Optional[torch.Tensor] = None) -> float:
    """log P(no banned letter in ``length`` characters), by a forward pass over (a, b) contexts."""
    table = fit_trigram() if table is None else table
    p = torch.exp(table) * allowed_mask(banned).double()
    alpha = torch.zeros(V, V, dtype=torch.float64)
    alpha[0, 0] = 1.0
    for _ in range(int(length)):
        alpha = torch.einsum("ab,abc->bc", alpha, p)
    return float(torch.log(alpha.sum()))


def data(seed: int = 0, length: int = 12, banned: str = "e") -> Dict[str, Any]:
    return {"length": length, "banned": banned}


def ground_truth(d: Dict[str, Any]) -> GroundTruth:
    return GroundTruth(log_evidence=exact_log_evidence(d["length"], d["banned"]), exact=True)


register_model(
    ModelSpec(
        name="char_lm",
        model=char_lm,
        data=data,
        description="Trigram character LM, 12 characters with no letter 'e' (hard constraint); exact P(constraint).",
        ground_truth=ground_truth,
        tags=("sequential", "discrete", "constrained", "exact"),
    )
)


# ------------------------------------------------------------------------------------- comparison
def compare_at_equal_compute(budget: int = 2000, length: int = 12, banned: str = "e", seed: int = 0) -> Dict[str, Any]:
    """SMC steering vs rejection sampling vs best-of-N, each given ``budget`` full-length LM generations.

    Returns for each method the number of valid (constraint-satisfying) outputs, its log Z
    estimate (where it gives one) and the exact log Z. Best-of-N keeps the highest-LM-score
    sample among the valid ones (one output, no evidence estimate, no posterior).
    """
    from ppl.inference.smc.filters import particle_filter

    table = fit_trigram()
    mask = allowed_mask(banned)
    exact = exact_log_evidence(length, banned, table)
    g = torch.Generator().manual_seed(seed)
    # unconstrained generation of `budget` strings, vectorised over strings
    a = torch.zeros(budget, dtype=torch.long)
    b = torch.zeros(budget, dtype=torch.long)
    ok = torch.ones(budget, dtype=torch.bool)
    score = torch.zeros(budget, dtype=torch.float64)
    chars = []
    for _ in range(length):
        logits = table[a, b]
        c = torch.multinomial(torch.softmax(logits, -1), 1, generator=g).squeeze(-1)
        score += logits.gather(1, c[:, None]).squeeze(-1)
        ok &= mask[c]
        chars.append(c)
        a, b = b, c
    chars_t = torch.stack(chars, 1)
    n_ok = int(ok.sum())
    rejection_lz = math.log(n_ok / budget) if n_ok else -math.inf
    best = decode(chars_t[torch.where(ok, score, torch.full_like(score, -math.inf)).argmax()]) if n_ok else None
    kw = {"table": table, "banned": banned}
    smc = particle_filter(char_lm_init, char_lm_step, [None] * length, particles=budget, proposal=steering_proposal,
                          step_kwargs=kw, init_kwargs=kw, seed=seed)
    texts = torch.stack([smc.samples[f"c_{t}"][0] for t in range(length)], 1)
    smc_valid = int(mask[texts].all(1).sum())
    return {
        "budget": budget, "length": length, "banned": banned, "exact_log_evidence": exact,
        "smc_steering": {"valid": smc_valid, "log_evidence": smc.log_evidence, "log_evidence_se": smc.log_evidence_se,
                         "ess": smc.ess, "example": decode(texts[0])},
        "rejection": {"valid": n_ok, "log_evidence": rejection_lz,
                      "log_evidence_se": math.sqrt((1 - n_ok / budget) / n_ok) if n_ok else math.inf},
        "best_of_n": {"valid": 1 if best else 0, "output": best},
    }
