"""A corpus of small Pyro models written the way Pyro users (and Pyro's own test suite) write them,
each with an exact ground truth computed without ppl.

The models are plain, unbatched Pyro programs: latent vectors without plates, data with extra
dimensions and no plate, ``x @ w``, ``torch.stack``, ``w[0]``, ``.to_event()``, ``pyro.param``,
``pyro.deterministic``, ``poutine.mask`` / ``poutine.scale``, ``pyro.factor``, ``pyro.plate(dim=-2)``,
Python ``for`` loops over data points, LKJ latents, ... Nothing here is written to broadcast over an
extra leading batch dimension.

Ground truths (float64) are either closed-form conjugate results ("closed form") or Gauss-Legendre
quadrature on a box of +-12 to +-20 Laplace standard deviations around the posterior mode in
unconstrained space ("quadrature"; 1-3 dimensions; a finer, wider grid changes no mean, sd or log
evidence by more than ~1e-7). The numpy
log densities used by the quadratures are written out by hand (they do not call Pyro). No case uses
an MCMC reference.

``means`` / ``sds`` are keyed by latent sample site and have the site's "named" shape: Pyro's
unbatched value shape with size-1 dims that are only broadcasting dropped (e.g. a site inside
``pyro.plate(..., dim=-2)`` only has value shape ``(3, 1)`` and named shape ``(3,)``). For the
``discrete=True`` cases the discrete sites are included too: their ``means`` are posterior marginal
probabilities ``P(site == 1 | data)`` and ``sds`` are ``sqrt(p (1 - p))``.

``log_evidence`` is log p(data) with every density exactly as Pyro's ``log_prob`` defines it
(including ``poutine.scale``/``poutine.mask``/``pyro.factor`` terms, combinatorial constants, and
with the data exactly as the float32 tensors passed to the model). Models that read a
``pyro.param`` use its initial value; call ``pyro.clear_param_store()`` before running them.

Running this file (``python tests/models/pyro_corpus.py``) is a slow self-check against Pyro's own
NUTS; it is not a pytest test.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from scipy import optimize, special


@dataclass(frozen=True)
class CorpusCase:
    name: str
    model: Callable
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    means: Dict[str, torch.Tensor] = field(default_factory=dict)
    sds: Dict[str, torch.Tensor] = field(default_factory=dict)
    log_evidence: Optional[float] = None
    reference: str = "closed form"
    discrete: bool = False
    note: str = ""


# ----------------------------------------------------------------------------------------------
# helpers (numpy, float64; no Pyro)
# ----------------------------------------------------------------------------------------------
_LOG2PI = math.log(2 * math.pi)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _np(x) -> np.ndarray:
    return x.detach().double().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float64)


def _t(x) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x, dtype=np.float64), dtype=torch.float64)


def _norm_lp(x, loc, scale):
    return -0.5 * ((x - loc) / scale) ** 2 - np.log(scale) - 0.5 * _LOG2PI


def _gamma_lp(x, conc, rate):
    return conc * np.log(rate) - special.gammaln(conc) + (conc - 1) * np.log(x) - rate * x


class _LinearGaussian:
    """z ~ N(m0, V0); observations add log-likelihood terms -1/2 z'Az + b'z + c (optionally scaled)."""

    def __init__(self, m0, V0):
        self.m0 = np.atleast_1d(np.asarray(m0, dtype=np.float64))
        d = self.m0.shape[0]
        V0 = np.asarray(V0, dtype=np.float64)
        self.V0 = V0 if V0.ndim == 2 else np.diag(np.broadcast_to(V0, (d,)))
        self.A = np.zeros((d, d))
        self.b = np.zeros(d)
        self.c = 0.0

    def observe(self, H, y, R, offset=0.0, scale=1.0):
        """y ~ N(H z + offset, R) (R: scalar/diagonal variances or a full covariance)."""
        y = np.atleast_1d(_np(y)) - offset
        H = np.atleast_2d(np.asarray(H, dtype=np.float64)).reshape(y.shape[0], -1)
        R = np.asarray(R, dtype=np.float64)
        R = R if R.ndim == 2 else np.diag(np.broadcast_to(R, y.shape))
        Ri = np.linalg.inv(R)
        self.A += scale * H.T @ Ri @ H
        self.b += scale * H.T @ Ri @ y
        self.c += scale * (-0.5 * y @ Ri @ y - 0.5 * np.linalg.slogdet(2 * math.pi * R)[1])

    def add(self, A, b, c):
        self.A += np.atleast_2d(A)
        self.b += np.atleast_1d(b)
        self.c += c

    def solve(self):
        P0 = np.linalg.inv(self.V0)
        P = P0 + self.A
        h = P0 @ self.m0 + self.b
        cov = np.linalg.inv(P)
        mean = cov @ h
        logz = (self.c - 0.5 * self.m0 @ P0 @ self.m0 - 0.5 * np.linalg.slogdet(self.V0)[1]
                + 0.5 * h @ cov @ h - 0.5 * np.linalg.slogdet(P)[1])
        return mean, np.sqrt(np.diag(cov)), float(logz)


@functools.lru_cache(maxsize=None)
def _leggauss(n):
    return np.polynomial.legendre.leggauss(n)


def _quadrature(logp, d, stats, u0=None, n=None, width=None):
    """Posterior moments and log evidence by tensor Gauss-Legendre quadrature.

    logp(u): (M, d) unconstrained points -> (M,) log joint density including log|Jacobian|.
    stats(u): (M, d) -> {name: (M, ...)} quantities whose posterior mean and sd are wanted.
    The grid is the box [-width, width]^d, mapped through the Cholesky factor of the inverse
    Hessian at the mode (found by BFGS).
    """
    n = n or {1: 240, 2: 200, 3: 56}[d]
    width = width or {1: 20.0, 2: 16.0, 3: 11.0}[d]
    f = lambda u: -float(logp(u[None, :])[0])  # noqa: E731
    u0 = np.zeros(d) if u0 is None else np.asarray(u0, dtype=np.float64)
    mode = optimize.minimize(f, u0, method="BFGS", options={"gtol": 1e-9}).x
    eps = 1e-3
    H = np.zeros((d, d))
    E = np.eye(d) * eps
    for i in range(d):
        for j in range(d):
            H[i, j] = (f(mode + E[i] + E[j]) - f(mode + E[i] - E[j])
                       - f(mode - E[i] + E[j]) + f(mode - E[i] - E[j])) / (4 * eps * eps)
    L = np.linalg.cholesky(np.linalg.inv(0.5 * (H + H.T)))
    t, w = _leggauss(n)
    t, w = t * width, w * width
    grids = np.meshgrid(*([t] * d), indexing="ij")
    wgrids = np.meshgrid(*([np.log(w)] * d), indexing="ij")
    tt = np.stack([g.reshape(-1) for g in grids], -1)
    logw = sum(g.reshape(-1) for g in wgrids) + np.log(np.abs(np.linalg.det(L)))
    u = mode + tt @ L.T
    with np.errstate(all="ignore"):
        lp = logp(u)
    lp = np.where(np.isfinite(lp), lp, -np.inf)
    a = lp + logw
    logz = special.logsumexp(a)
    p = np.exp(a - logz)
    means, sds = {}, {}
    for k, v in stats(u).items():
        m = np.tensordot(p, v, 1)
        s2 = np.tensordot(p, v * v, 1) - m * m
        means[k], sds[k] = _t(m), _t(np.sqrt(np.maximum(s2, 0.0)))
    return means, sds, float(logz)


CASES: List[CorpusCase] = []


def _add(**kw):
    CASES.append(CorpusCase(**kw))


# ----------------------------------------------------------------------------------------------
# 1. beta_bernoulli: Pyro tests/infer/mcmc/test_nuts.py::test_beta_bernoulli
#    latent vector (2,) without a plate, data (N, 2) with no plate
# ----------------------------------------------------------------------------------------------
def beta_bernoulli(data):
    alpha = torch.tensor([1.1, 1.1])
    beta = torch.tensor([1.1, 1.1])
    p_latent = pyro.sample("p_latent", dist.Beta(alpha, beta))
    pyro.sample("obs", dist.Bernoulli(p_latent), obs=data)
    return p_latent


def _beta_bernoulli():
    data = (torch.rand(20, 2, generator=_gen(1)) < torch.tensor([0.8, 0.3])).float()
    s, n = _np(data).sum(0), data.shape[0]
    a, b = 1.1 + s, 1.1 + n - s
    mean = a / (a + b)
    sd = np.sqrt(a * b / ((a + b) ** 2 * (a + b + 1)))
    logz = float(np.sum(special.betaln(a, b) - special.betaln(1.1, 1.1)))
    _add(name="beta_bernoulli", model=beta_bernoulli, args=(data,),
         means={"p_latent": _t(mean)}, sds={"p_latent": _t(sd)}, log_evidence=logz,
         note="test_nuts.py::test_beta_bernoulli; Beta latent of shape (2,) with no plate, "
              "Bernoulli data (20, 2) broadcast against it with no plate")


# ----------------------------------------------------------------------------------------------
# 2. dirichlet_categorical: test_nuts.py::test_dirichlet_categorical (Categorical obs, no plate)
# ----------------------------------------------------------------------------------------------
def dirichlet_categorical(data):
    concentration = torch.tensor([1.0, 1.0, 1.0])
    p_latent = pyro.sample("p_latent", dist.Dirichlet(concentration))
    pyro.sample("obs", dist.Categorical(p_latent), obs=data)
    return p_latent


def _dirichlet_categorical():
    data = torch.tensor([1, 2, 1, 1, 0, 2, 1, 1, 2, 1, 0, 1, 1, 2, 1, 2, 1, 1, 0, 1, 2, 1, 1, 2, 1])
    a0 = np.ones(3)
    a = a0 + np.bincount(data.numpy(), minlength=3)
    A = a.sum()
    mean = a / A
    sd = np.sqrt(a * (A - a) / (A * A * (A + 1)))
    logz = float(special.gammaln(a0.sum()) - special.gammaln(A) + np.sum(special.gammaln(a) - special.gammaln(a0)))
    _add(name="dirichlet_categorical", model=dirichlet_categorical, args=(data,),
         means={"p_latent": _t(mean)}, sds={"p_latent": _t(sd)}, log_evidence=logz,
         note="test_nuts.py::test_dirichlet_categorical; Dirichlet latent (simplex), Categorical obs "
              "(25,) with no plate")


# ----------------------------------------------------------------------------------------------
# 3. gamma_normal: test_nuts.py::test_gamma_normal (Gamma prior on a Normal *scale*, shape (2,))
# ----------------------------------------------------------------------------------------------
def gamma_normal(data):
    concentration = torch.tensor([2.0, 2.0])
    rate = torch.tensor([1.0, 1.0])
    p_latent = pyro.sample("p_latent", dist.Gamma(concentration, rate))
    pyro.sample("obs", dist.Normal(3, p_latent), obs=data)
    return p_latent


def _gamma_normal():
    data = 3 + torch.randn(20, 2, generator=_gen(3)) * torch.tensor([0.5, 2.0])
    x = _np(data)
    S, N = ((x - 3.0) ** 2).sum(0), x.shape[0]

    def logp(u):
        s = np.exp(u)
        return np.sum(_gamma_lp(s, 2.0, 1.0) + u - N * u - S / (2 * s * s) - 0.5 * N * _LOG2PI, -1)

    m, sd, logz = _quadrature(logp, 2, lambda u: {"p_latent": np.exp(u)}, u0=np.log(np.sqrt(S / N)))
    _add(name="gamma_normal", model=gamma_normal, args=(data,), means=m, sds=sd, log_evidence=logz,
         reference="quadrature",
         note="test_nuts.py::test_gamma_normal; Gamma latent (2,) used as a Normal scale, data (20, 2) "
              "no plate, python int loc")


# ----------------------------------------------------------------------------------------------
# 4. gamma_beta: test_nuts.py::test_gamma_beta (two scalar Gamma latents feed a Beta likelihood)
# ----------------------------------------------------------------------------------------------
def gamma_beta(data):
    alpha_prior = pyro.sample("alpha", dist.Gamma(concentration=1.0, rate=1.0))
    beta_prior = pyro.sample("beta", dist.Gamma(concentration=1.0, rate=1.0))
    pyro.sample("x", dist.Beta(concentration1=alpha_prior, concentration0=beta_prior), obs=data)


def _gamma_beta():
    data = torch.rand(20, generator=_gen(4)) ** (1.0 / 3.0)  # Beta(3, 1) by inversion
    x = _np(data)
    assert (x > 0).all() and (x < 1).all()
    sl, sl1, N = np.log(x).sum(), np.log1p(-x).sum(), x.shape[0]

    def logp(u):
        a, b = np.exp(u[:, 0]), np.exp(u[:, 1])
        return (-a + u[:, 0] - b + u[:, 1]
                + (a - 1) * sl + (b - 1) * sl1 - N * special.betaln(a, b))

    m, sd, logz = _quadrature(logp, 2, lambda u: {"alpha": np.exp(u[:, 0]), "beta": np.exp(u[:, 1])})
    _add(name="gamma_beta", model=gamma_beta, args=(data,), means=m, sds=sd, log_evidence=logz,
         reference="quadrature",
         note="test_nuts.py::test_gamma_beta; keyword-argument distributions, scalar latents, Beta obs "
              "(20,) with no plate")


# ----------------------------------------------------------------------------------------------
# 5. logistic_regression: test_nuts.py::test_logistic_regression, `(coefs * data).sum(-1)`
# ----------------------------------------------------------------------------------------------
def logistic_regression(data, labels):
    dim = data.shape[-1]
    coefs_mean = torch.zeros(dim)
    coefs = pyro.sample("beta", dist.Normal(coefs_mean, torch.ones(dim)))
    y = pyro.sample("y", dist.Bernoulli(logits=(coefs * data).sum(-1)), obs=labels)
    return y


def _logistic_regression():
    g = _gen(5)
    data = torch.randn(30, 3, generator=g)
    true_coefs = torch.tensor([1.0, -1.0, 0.5])
    labels = (torch.rand(30, generator=g) < torch.sigmoid((true_coefs * data).sum(-1))).float()
    x, y = _np(data), _np(labels)

    def logp(u):
        lg = u @ x.T
        return np.sum(_norm_lp(u, 0.0, 1.0), -1) + np.sum(y * lg - np.logaddexp(0.0, lg), -1)

    m, sd, logz = _quadrature(logp, 3, lambda u: {"beta": u})
    _add(name="logistic_regression", model=logistic_regression, args=(data, labels), means=m, sds=sd,
         log_evidence=logz, reference="quadrature",
         note="test_nuts.py::test_logistic_regression; Normal latent (3,) with no plate or to_event, "
              "logits = (coefs * data).sum(-1), Bernoulli obs (30,) with no plate")


# ----------------------------------------------------------------------------------------------
# 6. logistic: pyro.param + torch.matmul(data, w), obs in a plate
# ----------------------------------------------------------------------------------------------
def logistic(x, y):
    bias = pyro.param("bias", torch.tensor(-0.5))
    w = pyro.sample("w", dist.Normal(torch.zeros(2), 2.0 * torch.ones(2)).to_event(1))
    logits = torch.matmul(x, w) + bias
    with pyro.plate("data", len(y)):
        pyro.sample("y", dist.Bernoulli(logits=logits), obs=y)


def _logistic():
    g = _gen(6)
    x = torch.randn(25, 2, generator=g)
    y = (torch.rand(25, generator=g) < torch.sigmoid(x @ torch.tensor([1.5, -0.8]) - 0.5)).float()
    xn, yn = _np(x), _np(y)

    def logp(u):
        lg = u @ xn.T - 0.5
        return np.sum(_norm_lp(u, 0.0, 2.0), -1) + np.sum(yn * lg - np.logaddexp(0.0, lg), -1)

    m, sd, logz = _quadrature(logp, 2, lambda u: {"w": u})
    _add(name="logistic", model=logistic, args=(x, y), means=m, sds=sd, log_evidence=logz,
         reference="quadrature",
         note="logistic model with a fixed pyro.param('bias') (initial value -0.5; clear the param store "
              "first), torch.matmul(x, w), .to_event(1) latent, obs in pyro.plate")


# ----------------------------------------------------------------------------------------------
# 7. normal_normal: known-variance Normal mean, obs in a plate
# ----------------------------------------------------------------------------------------------
def normal_normal(data):
    loc = pyro.sample("loc", dist.Normal(1.0, 2.0))
    with pyro.plate("data", len(data)):
        pyro.sample("obs", dist.Normal(loc, 1.5), obs=data)


def _normal_normal():
    data = 2.5 + 1.5 * torch.randn(15, generator=_gen(7))
    lg = _LinearGaussian([1.0], [4.0])
    lg.observe(np.ones((15, 1)), data, 1.5 ** 2)
    m, s, logz = lg.solve()
    _add(name="normal_normal", model=normal_normal, args=(data,),
         means={"loc": _t(m[0])}, sds={"loc": _t(s[0])}, log_evidence=logz,
         note="scalar Normal prior on a Normal mean with known scale; python float arguments; pyro.plate")


# ----------------------------------------------------------------------------------------------
# 8. normal_normal_loop: scalar-only model, python for loop over data points
# ----------------------------------------------------------------------------------------------
def normal_normal_loop(data):
    mu = pyro.sample("mu", dist.Normal(0.0, 3.0))
    for i in range(len(data)):
        pyro.sample(f"obs_{i}", dist.Normal(mu, 0.8), obs=data[i])
    return mu


def _normal_normal_loop():
    data = -1.0 + 0.8 * torch.randn(10, generator=_gen(8))
    lg = _LinearGaussian([0.0], [9.0])
    lg.observe(np.ones((10, 1)), data, 0.8 ** 2)
    m, s, logz = lg.solve()
    _add(name="normal_normal_loop", model=normal_normal_loop, args=(data,),
         means={"mu": _t(m[0])}, sds={"mu": _t(s[0])}, log_evidence=logz,
         note="scalar-only model: `for i in range(len(data)): pyro.sample(f'obs_{i}', ..., obs=data[i])`, "
              "no plate, 10 observed sites")


# ----------------------------------------------------------------------------------------------
# 9. gamma_poisson
# ----------------------------------------------------------------------------------------------
def gamma_poisson(counts):
    rate = pyro.sample("rate", dist.Gamma(2.0, 0.5))
    with pyro.plate("days", counts.shape[0]):
        pyro.sample("obs", dist.Poisson(rate), obs=counts)
    return rate


def _gamma_poisson():
    counts = torch.tensor([3.0, 5.0, 2.0, 4.0, 6.0, 3.0, 1.0, 4.0, 5.0, 3.0, 2.0, 7.0])
    x = _np(counts)
    a0, b0 = 2.0, 0.5
    a, b = a0 + x.sum(), b0 + len(x)
    logz = float(a0 * np.log(b0) - special.gammaln(a0) + special.gammaln(a) - a * np.log(b)
                 - special.gammaln(x + 1).sum())
    _add(name="gamma_poisson", model=gamma_poisson, args=(counts,),
         means={"rate": _t(a / b)}, sds={"rate": _t(np.sqrt(a) / b)}, log_evidence=logz,
         note="Gamma(concentration, rate) latent, Poisson counts in a plate")


# ----------------------------------------------------------------------------------------------
# 10. beta_binomial: Binomial with per-trial total_count tensor
# ----------------------------------------------------------------------------------------------
def beta_binomial(successes, trials):
    p = pyro.sample("p", dist.Beta(2.0, 2.0))
    with pyro.plate("groups", len(trials)):
        pyro.sample("k", dist.Binomial(total_count=trials, probs=p), obs=successes)
    return p


def _beta_binomial():
    trials = torch.tensor([10.0, 12.0, 8.0, 15.0, 9.0, 11.0])
    successes = torch.tensor([3.0, 5.0, 2.0, 6.0, 4.0, 3.0])
    k, n = _np(successes), _np(trials)
    a, b = 2.0 + k.sum(), 2.0 + (n - k).sum()
    logc = special.gammaln(n + 1) - special.gammaln(k + 1) - special.gammaln(n - k + 1)
    logz = float(logc.sum() + special.betaln(a, b) - special.betaln(2.0, 2.0))
    _add(name="beta_binomial", model=beta_binomial, args=(successes, trials),
         means={"p": _t(a / (a + b))}, sds={"p": _t(np.sqrt(a * b / ((a + b) ** 2 * (a + b + 1))))},
         log_evidence=logz,
         note="Beta latent, Binomial obs with a tensor total_count in a plate (log evidence includes "
              "the binomial coefficients)")


# ----------------------------------------------------------------------------------------------
# 11. linear_regression: Pyro examples style, `.expand([3]).to_event(1)` and `x @ w`
# ----------------------------------------------------------------------------------------------
def linear_regression(x, y=None):
    w = pyro.sample("w", dist.Normal(0.0, 1.0).expand([3]).to_event(1))
    b = pyro.sample("b", dist.Normal(0.0, 5.0))
    mean = x @ w + b
    with pyro.plate("data", x.shape[0]):
        return pyro.sample("y", dist.Normal(mean, 0.5), obs=y)


def _linear_regression():
    g = _gen(11)
    x = torch.randn(20, 3, generator=g)
    y = x @ torch.tensor([0.7, -1.2, 0.3]) + 1.0 + 0.5 * torch.randn(20, generator=g)
    lg = _LinearGaussian(np.zeros(4), [1.0, 1.0, 1.0, 25.0])
    lg.observe(np.concatenate([_np(x), np.ones((20, 1))], 1), y, 0.25)
    m, s, logz = lg.solve()
    _add(name="linear_regression", model=linear_regression, args=(x, y),
         means={"w": _t(m[:3]), "b": _t(m[3])}, sds={"w": _t(s[:3]), "b": _t(s[3])}, log_evidence=logz,
         note="Bayesian linear regression, known noise: Normal(0, 1).expand([3]).to_event(1), x @ w + b, "
              "obs in a plate, y=None default argument")


# ----------------------------------------------------------------------------------------------
# 12. normal_2d_to_event: `.to_event()` with no argument
# ----------------------------------------------------------------------------------------------
def normal_2d_to_event(data):
    z = pyro.sample("z", dist.Normal(torch.tensor([0.0, 1.0]), torch.tensor([1.0, 2.0])).to_event())
    with pyro.plate("points", data.shape[0]):
        pyro.sample("obs", dist.Normal(z, torch.tensor([0.5, 1.0])).to_event(1), obs=data)
    return z


def _normal_2d_to_event():
    data = torch.tensor([0.8, -1.0]) + torch.randn(10, 2, generator=_gen(12)) * torch.tensor([0.5, 1.0])
    x = _np(data)
    lg = _LinearGaussian([0.0, 1.0], [1.0, 4.0])
    lg.observe(np.tile(np.eye(2), (10, 1)), x.reshape(-1), np.tile([0.25, 1.0], 10))
    m, s, logz = lg.solve()
    _add(name="normal_2d_to_event", model=normal_2d_to_event, args=(data,),
         means={"z": _t(m)}, sds={"z": _t(s)}, log_evidence=logz,
         note="2-D Normal latent declared with .to_event() (no argument); obs .to_event(1) in a plate")


# ----------------------------------------------------------------------------------------------
# 13. latent_indexing: w[0] + w[1] * x
# ----------------------------------------------------------------------------------------------
def line_fit(x, y):
    w = pyro.sample("w", dist.Normal(torch.zeros(2), torch.ones(2)).to_event(1))
    mean = w[0] + w[1] * x
    with pyro.plate("N", len(x)):
        pyro.sample("y", dist.Normal(mean, 0.3), obs=y)


def _latent_indexing():
    g = _gen(13)
    x = torch.linspace(-1.0, 1.0, 12)
    y = 0.5 - 0.7 * x + 0.3 * torch.randn(12, generator=g)
    lg = _LinearGaussian(np.zeros(2), [1.0, 1.0])
    lg.observe(np.stack([np.ones(12), _np(x)], 1), y, 0.09)
    m, s, logz = lg.solve()
    _add(name="latent_indexing", model=line_fit, args=(x, y),
         means={"w": _t(m)}, sds={"w": _t(s)}, log_evidence=logz,
         note="latent vector indexed with w[0], w[1] (intercept + slope), obs in a plate")


# ----------------------------------------------------------------------------------------------
# 14. torch_stack: scalars stacked into a vector; data (8, 3), no plate, .to_event(1)
# ----------------------------------------------------------------------------------------------
def stacked_means(data):
    a = pyro.sample("a", dist.Normal(0.0, 1.0))
    b = pyro.sample("b", dist.Normal(0.0, 2.0))
    loc = torch.stack([a, b, a - b])
    pyro.sample("obs", dist.Normal(loc, 1.0).to_event(1), obs=data)
    return loc


def _torch_stack():
    data = torch.tensor([0.5, -1.0, 1.5]) + torch.randn(8, 3, generator=_gen(14))
    H1 = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, -1.0]])
    lg = _LinearGaussian(np.zeros(2), [1.0, 4.0])
    lg.observe(np.tile(H1, (8, 1)), _np(data).reshape(-1), 1.0)
    m, s, logz = lg.solve()
    _add(name="torch_stack", model=stacked_means, args=(data,),
         means={"a": _t(m[0]), "b": _t(m[1])}, sds={"a": _t(s[0]), "b": _t(s[1])}, log_evidence=logz,
         note="torch.stack([a, b, a - b]) of scalar latents; obs .to_event(1) with data (8, 3) and no plate")


# ----------------------------------------------------------------------------------------------
# 15. python_float_arith: python float arithmetic on a latent
# ----------------------------------------------------------------------------------------------
def affine_obs(data):
    z = pyro.sample("z", dist.Normal(0.0, 1.0))
    scale = 0.5 * 2 ** -1 + 0.25
    loc = 2.0 * z - 1.0 + 3 / 4
    with pyro.plate("d", len(data)):
        pyro.sample("obs", dist.Normal(loc, scale), obs=data)
    return loc


def _python_float_arith():
    data = 0.75 + 0.5 * torch.randn(10, generator=_gen(15))
    lg = _LinearGaussian([0.0], [1.0])
    lg.observe(np.full((10, 1), 2.0), data, 0.25, offset=-0.25)
    m, s, logz = lg.solve()
    _add(name="python_float_arith", model=affine_obs, args=(data,),
         means={"z": _t(m[0])}, sds={"z": _t(s[0])}, log_evidence=logz,
         note="python float arithmetic (2.0 * z - 1.0 + 3 / 4, scale from python floats) on a scalar latent")


# ----------------------------------------------------------------------------------------------
# 16. deterministic: pyro.deterministic site between latent and likelihood
# ----------------------------------------------------------------------------------------------
def with_deterministic(x, y):
    slope = pyro.sample("slope", dist.Normal(0.0, 1.0))
    mu = pyro.deterministic("mu", slope * x)
    with pyro.plate("data", len(x)):
        pyro.sample("y", dist.Normal(mu, 1.0), obs=y)
    return mu


def _deterministic():
    x = torch.linspace(0.0, 2.0, 10)
    y = 0.8 * x + torch.randn(10, generator=_gen(16))
    lg = _LinearGaussian([0.0], [1.0])
    lg.observe(_np(x)[:, None], y, 1.0)
    m, s, logz = lg.solve()
    _add(name="deterministic", model=with_deterministic, args=(x, y),
         means={"slope": _t(m[0])}, sds={"slope": _t(s[0])}, log_evidence=logz,
         note="pyro.deterministic('mu', slope * x) (an observed Delta site, not a latent)")


# ----------------------------------------------------------------------------------------------
# 17. mask_outlier: poutine.mask(mask=False) removes a whole site
# ----------------------------------------------------------------------------------------------
def masked_outlier(data, outlier):
    mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
    with pyro.plate("data", len(data)):
        pyro.sample("obs", dist.Normal(mu, 1.0), obs=data)
    with poutine.mask(mask=False):
        pyro.sample("outlier", dist.Normal(mu, 1.0), obs=outlier)
    return mu


def _mask_outlier():
    data = 1.0 + torch.randn(12, generator=_gen(17))
    outlier = torch.tensor(25.0)
    lg = _LinearGaussian([0.0], [25.0])
    lg.observe(np.ones((12, 1)), data, 1.0)
    m, s, logz = lg.solve()
    _add(name="mask_outlier", model=masked_outlier, args=(data, outlier),
         means={"mu": _t(m[0])}, sds={"mu": _t(s[0])}, log_evidence=logz,
         note="poutine.mask(mask=False) around an observed outlier site (contributes nothing)")


# ----------------------------------------------------------------------------------------------
# 18. plate_mask: pyro.plate + poutine.mask with a boolean tensor (missing data)
# ----------------------------------------------------------------------------------------------
def partially_observed(data, observed):
    mu = pyro.sample("mu", dist.Normal(0.0, 2.0))
    with pyro.plate("data", len(data)), poutine.mask(mask=observed):
        pyro.sample("obs", dist.Normal(mu, 1.0), obs=data)
    return mu


def _plate_mask():
    data = -0.5 + torch.randn(14, generator=_gen(18))
    observed = torch.tensor([True, True, False, True, True, True, False, True, True, True, False, True, True, True])
    data = torch.where(observed, data, torch.full_like(data, 1e3))  # garbage where missing
    lg = _LinearGaussian([0.0], [4.0])
    keep = observed.numpy()
    lg.observe(np.ones((keep.sum(), 1)), _np(data)[keep], 1.0)
    m, s, logz = lg.solve()
    _add(name="plate_mask", model=partially_observed, args=(data, observed),
         means={"mu": _t(m[0])}, sds={"mu": _t(s[0])}, log_evidence=logz,
         note="missing data: `with pyro.plate(...), poutine.mask(mask=bool_tensor)`; masked entries hold 1e3")


# ----------------------------------------------------------------------------------------------
# 19. dirichlet_multinomial: Dirichlet latent, Multinomial counts in a plate
# ----------------------------------------------------------------------------------------------
def dirichlet_multinomial(counts):
    probs = pyro.sample("probs", dist.Dirichlet(torch.tensor([2.0, 1.0, 1.0, 0.5])))
    with pyro.plate("trials", counts.shape[0]):
        pyro.sample("counts", dist.Multinomial(10, probs), obs=counts)
    return probs


def _dirichlet_multinomial():
    counts = torch.tensor([[4.0, 3.0, 2.0, 1.0], [5.0, 2.0, 3.0, 0.0], [3.0, 4.0, 2.0, 1.0],
                           [6.0, 1.0, 3.0, 0.0], [4.0, 2.0, 4.0, 0.0]])
    c = _np(counts)
    a0 = np.array([2.0, 1.0, 1.0, 0.5])
    a = a0 + c.sum(0)
    A = a.sum()
    logcoef = (special.gammaln(c.sum(1) + 1) - special.gammaln(c + 1).sum(1)).sum()
    logz = float(logcoef + special.gammaln(a0.sum()) - special.gammaln(A)
                 + np.sum(special.gammaln(a) - special.gammaln(a0)))
    _add(name="dirichlet_multinomial", model=dirichlet_multinomial, args=(counts,),
         means={"probs": _t(a / A)}, sds={"probs": _t(np.sqrt(a * (A - a) / (A * A * (A + 1))))},
         log_evidence=logz,
         note="Dirichlet latent (4 categories, one concentration < 1), Multinomial(10, probs) counts in a "
              "plate (log evidence includes multinomial coefficients)")


# ----------------------------------------------------------------------------------------------
# 20-21. LKJ latents (2-D: one free correlation r)
# ----------------------------------------------------------------------------------------------
def _corr_data(seed, n, rho, sd):
    g = _gen(seed)
    e = torch.randn(n, 2, generator=g)
    L = torch.tensor([[1.0, 0.0], [rho, math.sqrt(1 - rho * rho)]])
    return (e @ L.T) * torch.tensor(sd)


def _corr_logp(x, sd, eta):
    a, b = x[:, 0] / sd[0], x[:, 1] / sd[1]
    q = (a * a).sum(), (a * b).sum(), (b * b).sum()
    N = x.shape[0]

    def logp(u):
        r = np.tanh(u[:, 0])
        one = 1 - r * r
        prior = (eta - 1) * np.log(one) - (2 * eta - 1) * math.log(2) - special.betaln(eta, eta)
        lik = (-N * _LOG2PI - N * math.log(sd[0] * sd[1]) - 0.5 * N * np.log(one)
               - 0.5 * (q[0] - 2 * r * q[1] + q[2]) / one)
        return prior + lik + np.log(one)  # d r / d u = 1 - r^2

    return logp


def lkj_cholesky(data):
    sd = torch.tensor([1.0, 2.0])
    L = pyro.sample("L", dist.LKJCholesky(2, concentration=2.0))
    scale_tril = torch.mm(torch.diag(sd), L)
    with pyro.plate("obs_plate", len(data)):
        pyro.sample("obs", dist.MultivariateNormal(torch.zeros(2), scale_tril=scale_tril), obs=data)
    return L


def _lkj_cholesky():
    sd = [1.0, 2.0]
    data = _corr_data(20, 25, 0.6, sd)
    logp = _corr_logp(_np(data), sd, 2.0)

    def stats(u):
        r = np.tanh(u[:, 0])
        z = np.zeros_like(r)
        return {"L": np.stack([np.stack([np.ones_like(r), z], -1), np.stack([r, np.sqrt(1 - r * r)], -1)], -2)}

    m, s, logz = _quadrature(logp, 1, stats)
    _add(name="lkj_cholesky", model=lkj_cholesky, args=(data,), means=m, sds=s, log_evidence=logz,
         reference="quadrature",
         note="LKJCholesky(2, 2.0) latent (2, 2) with torch.mm(torch.diag(sd), L) as MultivariateNormal "
              "scale_tril, obs in a plate; constant entries of L have sd 0")


def lkj_corr(data):
    corr = pyro.sample("corr", dist.LKJ(2, concentration=1.5))
    with pyro.plate("obs_plate", len(data)):
        pyro.sample("obs", dist.MultivariateNormal(torch.zeros(2), covariance_matrix=corr), obs=data)
    return corr


def _lkj_corr():
    sd = [1.0, 1.0]
    data = _corr_data(21, 20, -0.4, sd)
    logp = _corr_logp(_np(data), sd, 1.5)

    def stats(u):
        r = np.tanh(u[:, 0])
        o = np.ones_like(r)
        return {"corr": np.stack([np.stack([o, r], -1), np.stack([r, o], -1)], -2)}

    m, s, logz = _quadrature(logp, 1, stats)
    _add(name="lkj_corr", model=lkj_corr, args=(data,), means=m, sds=s, log_evidence=logz,
         reference="quadrature",
         note="LKJ(2, 1.5) correlation-matrix latent used as a MultivariateNormal covariance_matrix")


# ----------------------------------------------------------------------------------------------
# 22. halfcauchy_scale: unknown mean and HalfCauchy scale (2-D)
# ----------------------------------------------------------------------------------------------
def normal_halfcauchy(data):
    mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
    sigma = pyro.sample("sigma", dist.HalfCauchy(2.0))
    with pyro.plate("data", len(data)):
        pyro.sample("obs", dist.Normal(mu, sigma), obs=data)


def _halfcauchy_scale():
    data = 2.0 + 1.5 * torch.randn(15, generator=_gen(22))
    x = _np(data)
    N = len(x)

    def logp(u):
        mu, ls = u[:, :1], u[:, 1]
        s = np.exp(ls)
        hc = math.log(2 / math.pi) - math.log(2.0) - np.log1p((s / 2.0) ** 2)
        lik = np.sum(-0.5 * ((x - mu) / s[:, None]) ** 2, -1) - N * ls - 0.5 * N * _LOG2PI
        return _norm_lp(mu[:, 0], 0.0, 10.0) + hc + ls + lik

    m, sd, logz = _quadrature(logp, 2, lambda u: {"mu": u[:, 0], "sigma": np.exp(u[:, 1])},
                              u0=[x.mean(), np.log(x.std())])
    _add(name="halfcauchy_scale", model=normal_halfcauchy, args=(data,), means=m, sds=sd, log_evidence=logz,
         reference="quadrature", note="Normal mean + HalfCauchy(2) scale latent, obs in a plate")


# ----------------------------------------------------------------------------------------------
# 23. exponential_scale
# ----------------------------------------------------------------------------------------------
def exponential_scale(data):
    sigma = pyro.sample("sigma", dist.Exponential(1.0))
    with pyro.plate("data", len(data)):
        pyro.sample("obs", dist.Normal(1.0, sigma), obs=data)
    return sigma


def _exponential_scale():
    data = 1.0 + 0.7 * torch.randn(12, generator=_gen(23))
    x = _np(data)
    S, N = ((x - 1.0) ** 2).sum(), len(x)

    def logp(u):
        ls = u[:, 0]
        s = np.exp(ls)
        return -s + ls - N * ls - S / (2 * s * s) - 0.5 * N * _LOG2PI

    m, sd, logz = _quadrature(logp, 1, lambda u: {"sigma": np.exp(u[:, 0])}, u0=[np.log(np.sqrt(S / N))])
    _add(name="exponential_scale", model=exponential_scale, args=(data,), means=m, sds=sd, log_evidence=logz,
         reference="quadrature", note="Exponential(1) prior on a Normal scale, known mean, obs in a plate")


# ----------------------------------------------------------------------------------------------
# 24. inverse_gamma_variance: conjugate, variance.sqrt() as the scale
# ----------------------------------------------------------------------------------------------
def inverse_gamma_variance(data):
    var = pyro.sample("var", dist.InverseGamma(3.0, 2.0))
    with pyro.plate("data", len(data)):
        pyro.sample("obs", dist.Normal(0.0, var.sqrt()), obs=data)
    return var


def _inverse_gamma_variance():
    data = 1.2 * torch.randn(15, generator=_gen(24))
    x = _np(data)
    a0, b0, N = 3.0, 2.0, len(x)
    a, b = a0 + N / 2, b0 + 0.5 * (x * x).sum()
    logz = float(a0 * np.log(b0) - special.gammaln(a0) + special.gammaln(a) - a * np.log(b) - 0.5 * N * _LOG2PI)
    _add(name="inverse_gamma_variance", model=inverse_gamma_variance, args=(data,),
         means={"var": _t(b / (a - 1))}, sds={"var": _t(b / ((a - 1) * np.sqrt(a - 2)))}, log_evidence=logz,
         note="InverseGamma prior on a variance, Normal(0, var.sqrt()) obs in a plate")


# ----------------------------------------------------------------------------------------------
# 25. pyro_factor: a soft Gaussian constraint via pyro.factor; no data arguments
# ----------------------------------------------------------------------------------------------
def factor_model():
    z = pyro.sample("z", dist.Normal(0.0, 1.0))
    pyro.factor("soft_obs", -0.5 * ((z - 1.5) / 0.5) ** 2)
    return z


def _pyro_factor():
    lg = _LinearGaussian([0.0], [1.0])
    lg.add(4.0, 6.0, -4.5)  # -1/2 (z - 1.5)^2 / 0.25
    m, s, logz = lg.solve()
    _add(name="pyro_factor", model=factor_model,
         means={"z": _t(m[0])}, sds={"z": _t(s[0])}, log_evidence=logz,
         note="pyro.factor with an unnormalised Gaussian log-weight; model takes no arguments")


# ----------------------------------------------------------------------------------------------
# 26. plate_dim_minus2: group means in a plate at dim=-2, observations at dim=-1
# ----------------------------------------------------------------------------------------------
def grouped_means(data):
    with pyro.plate("groups", data.shape[0], dim=-2):
        mu = pyro.sample("mu", dist.Normal(0.0, 2.0))
        with pyro.plate("obs", data.shape[1], dim=-1):
            pyro.sample("y", dist.Normal(mu, 1.0), obs=data)
    return mu


def _plate_dim_minus2():
    data = torch.tensor([[-1.0], [0.5], [2.0]]) + torch.randn(3, 8, generator=_gen(26))
    lg = _LinearGaussian(np.zeros(3), [4.0] * 3)
    lg.observe(np.repeat(np.eye(3), 8, axis=0), _np(data).reshape(-1), 1.0)
    m, s, logz = lg.solve()
    _add(name="plate_dim_minus2", model=grouped_means, args=(data,),
         means={"mu": _t(m)}, sds={"mu": _t(s)}, log_evidence=logz,
         note="pyro.plate(dim=-2) for groups and nested pyro.plate(dim=-1) for observations; Pyro's value "
              "shape of 'mu' is (3, 1), named shape (3,)")


# ----------------------------------------------------------------------------------------------
# 27. poutine_scale: a tempered likelihood
# ----------------------------------------------------------------------------------------------
def tempered(data):
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    with poutine.scale(scale=0.5):
        with pyro.plate("data", len(data)):
            pyro.sample("obs", dist.Normal(mu, 1.0), obs=data)
    return mu


def _poutine_scale():
    data = 2.0 + torch.randn(16, generator=_gen(27))
    lg = _LinearGaussian([0.0], [1.0])
    lg.observe(np.ones((16, 1)), data, 1.0, scale=0.5)
    m, s, logz = lg.solve()
    _add(name="poutine_scale", model=tempered, args=(data,),
         means={"mu": _t(m[0])}, sds={"mu": _t(s[0])}, log_evidence=logz,
         note="poutine.scale(scale=0.5) around the likelihood (log evidence = log of the integral of the "
              "prior times the likelihood to the power 0.5)")


# ----------------------------------------------------------------------------------------------
# 28. matrix_regression: MultivariateNormal obs with torch.mm on a latent matrix
# ----------------------------------------------------------------------------------------------
_SIGMA_2D = torch.tensor([[0.5, 0.2], [0.2, 0.3]])


def matrix_regression(x, y):
    W = pyro.sample("W", dist.Normal(torch.zeros(2, 2), 1.0).to_event(2))
    loc = torch.mm(x, W)
    with pyro.plate("data", x.shape[0]):
        pyro.sample("y", dist.MultivariateNormal(loc, covariance_matrix=_SIGMA_2D), obs=y)
    return W


def _matrix_regression():
    g = _gen(28)
    x = torch.randn(12, 2, generator=g)
    W_true = torch.tensor([[1.0, -0.5], [0.3, 0.8]])
    y = x @ W_true + torch.randn(12, 2, generator=g) @ torch.linalg.cholesky(_SIGMA_2D).T
    xn, yn, S = _np(x), _np(y), _np(_SIGMA_2D)
    lg = _LinearGaussian(np.zeros(4), 1.0)
    for i in range(12):
        H = np.zeros((2, 4))
        for j in range(2):
            for k in range(2):
                H[k, 2 * j + k] = xn[i, j]  # loc_i[k] = sum_j x_ij W_jk, W flattened row-major
        lg.observe(H, yn[i], S)
    m, s, logz = lg.solve()
    _add(name="matrix_regression", model=matrix_regression, args=(x, y),
         means={"W": _t(m.reshape(2, 2))}, sds={"W": _t(s.reshape(2, 2))}, log_evidence=logz,
         note="latent matrix W (2, 2) via .to_event(2); torch.mm(x, W) as the loc of a MultivariateNormal "
              "with a full covariance_matrix; obs in a plate")


# ----------------------------------------------------------------------------------------------
# 29. mvn_mvn: MultivariateNormal prior and likelihood
# ----------------------------------------------------------------------------------------------
def mvn_mvn(data):
    prior_cov = torch.tensor([[2.0, 0.8], [0.8, 1.0]])
    z = pyro.sample("z", dist.MultivariateNormal(torch.tensor([0.0, 1.0]), covariance_matrix=prior_cov))
    with pyro.plate("data", data.shape[0]):
        pyro.sample("obs", dist.MultivariateNormal(z, scale_tril=torch.tensor([[1.0, 0.0], [-0.3, 0.6]])),
                    obs=data)
    return z


def _mvn_mvn():
    Lo = np.array([[1.0, 0.0], [-0.3, 0.6]])
    data = torch.tensor([1.0, -0.5]) + torch.randn(10, 2, generator=_gen(29)) @ torch.tensor(Lo, dtype=torch.float32).T
    lg = _LinearGaussian([0.0, 1.0], np.array([[2.0, 0.8], [0.8, 1.0]]))
    for i in range(10):
        lg.observe(np.eye(2), data[i], Lo @ Lo.T)
    m, s, logz = lg.solve()
    _add(name="mvn_mvn", model=mvn_mvn, args=(data,), means={"z": _t(m)}, sds={"z": _t(s)}, log_evidence=logz,
         note="MultivariateNormal latent with covariance_matrix, MultivariateNormal(scale_tril=...) obs in a plate")


# ----------------------------------------------------------------------------------------------
# 30. schools_known_tau: eight schools with the population scale fixed (jointly Gaussian)
# ----------------------------------------------------------------------------------------------
def schools_known_tau(y, sigma):
    mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
    with pyro.plate("school", len(y)):
        theta = pyro.sample("theta", dist.Normal(mu, 5.0))
        pyro.sample("y", dist.Normal(theta, sigma), obs=y)
    return theta


def _schools_known_tau():
    y = torch.tensor([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0])
    sigma = torch.tensor([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0])
    J = 8
    # z = (mu, theta_1..8)
    # exact joint prior: mu ~ N(0, 25), theta_j = mu + 5 e_j  =>  Cov = 25 * 11' + 25 I on theta block
    V0 = np.full((J + 1, J + 1), 25.0)
    V0[1:, 1:] += 25.0 * np.eye(J)
    lg = _LinearGaussian(np.zeros(J + 1), V0)
    H = np.concatenate([np.zeros((J, 1)), np.eye(J)], 1)
    lg.observe(H, y, _np(sigma) ** 2)
    m, s, logz = lg.solve()
    _add(name="schools_known_tau", model=schools_known_tau, args=(y, sigma),
         means={"mu": _t(m[0]), "theta": _t(m[1:])}, sds={"mu": _t(s[0]), "theta": _t(s[1:])},
         log_evidence=logz,
         note="eight schools (centered) with tau fixed at 5: hierarchical latents in a plate, jointly Gaussian")


# ----------------------------------------------------------------------------------------------
# 31. normal_gamma: unknown mean and precision, conjugate Normal-Gamma
# ----------------------------------------------------------------------------------------------
def normal_gamma(data):
    tau = pyro.sample("tau", dist.Gamma(2.0, 1.0))
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0 / (0.5 * tau).sqrt()))
    with pyro.plate("data", len(data)):
        pyro.sample("obs", dist.Normal(mu, 1.0 / tau.sqrt()), obs=data)
    return mu, tau


def _normal_gamma():
    data = 1.0 + 0.8 * torch.randn(12, generator=_gen(31))
    x = _np(data)
    N, xb = len(x), x.mean()
    a0, b0, k0, m0 = 2.0, 1.0, 0.5, 0.0
    k = k0 + N
    mn = (k0 * m0 + N * xb) / k
    a = a0 + N / 2
    b = b0 + 0.5 * ((x - xb) ** 2).sum() + k0 * N * (xb - m0) ** 2 / (2 * k)
    logz = float(special.gammaln(a) - special.gammaln(a0) + a0 * np.log(b0) - a * np.log(b)
                 + 0.5 * np.log(k0 / k) - 0.5 * N * _LOG2PI)
    _add(name="normal_gamma", model=normal_gamma, args=(data,),
         means={"tau": _t(a / b), "mu": _t(mn)},
         sds={"tau": _t(np.sqrt(a) / b), "mu": _t(np.sqrt(b / (k * (a - 1))))}, log_evidence=logz,
         note="conjugate Normal-Gamma: tau ~ Gamma, mu | tau ~ Normal(0, 1/sqrt(0.5 tau)); tensor .sqrt() "
              "of a latent inside a scale")


# ----------------------------------------------------------------------------------------------
# 32. lognormal_obs
# ----------------------------------------------------------------------------------------------
def lognormal_obs(data):
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    with pyro.plate("data", len(data)):
        pyro.sample("obs", dist.LogNormal(mu, 0.5), obs=data)
    return mu


def _lognormal_obs():
    data = torch.exp(0.7 + 0.5 * torch.randn(10, generator=_gen(32)))
    lx = np.log(_np(data))
    lg = _LinearGaussian([0.0], [1.0])
    lg.observe(np.ones((10, 1)), lx, 0.25)
    m, s, logz = lg.solve()
    _add(name="lognormal_obs", model=lognormal_obs, args=(data,),
         means={"mu": _t(m[0])}, sds={"mu": _t(s[0])}, log_evidence=logz - float(lx.sum()),
         note="LogNormal observations of a Normal-prior log-scale location (evidence includes the -log x Jacobian)")


# ----------------------------------------------------------------------------------------------
# 33. bernoulli_latent (discrete): test_nuts.py::test_bernoulli_latent_model
# ----------------------------------------------------------------------------------------------
def bernoulli_latent(data):
    y_prob = pyro.sample("y_prob", dist.Beta(1.0, 1.0))
    with pyro.plate("data", data.shape[0]):
        y = pyro.sample("y", dist.Bernoulli(y_prob))
        z = pyro.sample("z", dist.Bernoulli(0.65 * y + 0.1))
        pyro.sample("obs", dist.Normal(2.0 * z, 1.0), obs=data)


def _bernoulli_latent():
    data = torch.tensor([2.3, -0.4, 0.8, 1.9, 0.1, 2.7, -1.1, 0.5, 1.6, 0.2, 2.2, -0.3])
    x = _np(data)
    n1, n0 = np.exp(_norm_lp(x, 2.0, 1.0)), np.exp(_norm_lp(x, 0.0, 1.0))
    A = 0.75 * n1 + 0.25 * n0  # p(x | y = 1)
    B = 0.10 * n1 + 0.90 * n0  # p(x | y = 0)

    def logp(u):
        t = special.expit(u[:, :1])
        return np.sum(np.log(t * A + (1 - t) * B), -1) + np.log(t[:, 0]) + np.log1p(-t[:, 0])

    def stats(u):
        t = special.expit(u[:, :1])
        px = t * A + (1 - t) * B
        return {"y_prob": t[:, 0], "y": t * A / px, "z": (0.75 * t + 0.1 * (1 - t)) * n1 / px}

    m, s, logz = _quadrature(logp, 1, stats)
    for k in ("y", "z"):
        s[k] = torch.sqrt(m[k] * (1 - m[k]))
    _add(name="bernoulli_latent", model=bernoulli_latent, args=(data,), means=m, sds=s, log_evidence=logz,
         reference="quadrature", discrete=True,
         note="test_nuts.py::test_bernoulli_latent_model; two chained Bernoulli latents per data point in a "
              "plate (enumerable); means of y, z are posterior marginal P(=1)")


# ----------------------------------------------------------------------------------------------
# 34. gmm (discrete): test_nuts.py::test_gaussian_mixture_model, 2 components, known weights
# ----------------------------------------------------------------------------------------------
def gmm(data):
    weights = torch.tensor([0.3, 0.7])
    with pyro.plate("components", 2):
        locs = pyro.sample("locs", dist.Normal(torch.tensor([0.0, 4.0]), 1.0))
    with pyro.plate("data", len(data)):
        assignment = pyro.sample("assignment", dist.Categorical(weights))
        pyro.sample("obs", dist.Normal(locs[assignment], 1.0), obs=data)
    return locs


def _gmm():
    data = torch.tensor([-0.6, 0.4, 0.1, 3.6, 4.4, 5.1, 3.9, 4.8, 2.9, 4.2, 0.9, 4.6])
    x = _np(data)

    def comp(u):
        l0 = np.log(0.3) + _norm_lp(x, u[:, :1], 1.0)
        l1 = np.log(0.7) + _norm_lp(x, u[:, 1:2], 1.0)
        return l0, l1

    def logp(u):
        l0, l1 = comp(u)
        return (np.sum(np.logaddexp(l0, l1), -1) + _norm_lp(u[:, 0], 0.0, 1.0) + _norm_lp(u[:, 1], 4.0, 1.0))

    def stats(u):
        l0, l1 = comp(u)
        return {"locs": u, "assignment": special.expit(l1 - l0)}

    m, s, logz = _quadrature(logp, 2, stats, u0=[0.0, 4.0])
    s["assignment"] = torch.sqrt(m["assignment"] * (1 - m["assignment"]))
    _add(name="gmm", model=gmm, args=(data,), means=m, sds=s, log_evidence=logz,
         reference="quadrature", discrete=True,
         note="test_nuts.py::test_gaussian_mixture_model (2 components, known weights, distinct priors so "
              "no label switching); Categorical assignments in a plate, locs[assignment]; 'assignment' "
              "means are P(assignment == 1)")


for _build in (_beta_bernoulli, _dirichlet_categorical, _gamma_normal, _gamma_beta, _logistic_regression,
               _logistic, _normal_normal, _normal_normal_loop, _gamma_poisson, _beta_binomial,
               _linear_regression, _normal_2d_to_event, _latent_indexing, _torch_stack, _python_float_arith,
               _deterministic, _mask_outlier, _plate_mask, _dirichlet_multinomial, _lkj_cholesky, _lkj_corr,
               _halfcauchy_scale, _exponential_scale, _inverse_gamma_variance, _pyro_factor, _plate_dim_minus2,
               _poutine_scale, _matrix_regression, _mvn_mvn, _schools_known_tau, _normal_gamma, _lognormal_obs,
               _bernoulli_latent, _gmm):
    _build()
del _build

CASE_BY_NAME: Dict[str, CorpusCase] = {c.name: c for c in CASES}


# ----------------------------------------------------------------------------------------------
# self-check (slow; a script, not a pytest test):  python tests/models/pyro_corpus.py [names...]
# For every case: the model runs under plain Pyro and its latent sites match the ground truth's keys
# and sizes; Pyro's own NUTS (1 chain) agrees with the truth within max(5 MCSE, 0.25 sd); discrete
# sites are checked with pyro.infer.infer_discrete draws given the NUTS draws; the log evidence is
# checked by importance sampling Pyro's own potential (a Student-t proposal fitted to the NUTS draws
# in unconstrained space).
# ----------------------------------------------------------------------------------------------
def _self_check(names=None, num_samples=300, warmup_steps=200, seed=0, is_draws=500):  # pragma: no cover
    import time

    torch.set_num_threads(1)

    from pyro.infer import MCMC, NUTS, config_enumerate, infer_discrete
    from pyro.infer.mcmc.util import initialize_model
    from pyro.ops.stats import effective_sample_size
    from pyro.poutine.util import site_is_subsample

    def close(name, what, est, truth, tol, problems):
        bad = (est - truth).abs() > tol
        if bad.any():
            problems.append(f"{name} {what}: got {est[bad].tolist()} want {truth[bad].tolist()} tol {tol[bad].tolist()}")

    results = {}
    for case in CASES:
        if names and case.name not in names:
            continue
        t0 = time.time()
        problems = []
        # 1. runs under plain Pyro; latent sites and sizes match the truth
        pyro.clear_param_store()
        pyro.set_rng_seed(seed)
        tr = poutine.trace(case.model).get_trace(*case.args, **case.kwargs)
        sites = {n: s for n, s in tr.nodes.items()
                 if s["type"] == "sample" and not s["is_observed"] and not site_is_subsample(s)}
        if set(sites) != set(case.means) or set(case.sds) != set(case.means):
            problems.append(f"latent sites {sorted(sites)} != truth keys {sorted(case.means)}")
        for n, s in sites.items():
            if n in case.means and s["value"].numel() != case.means[n].numel():
                problems.append(f"{n}: value shape {tuple(s['value'].shape)} vs truth {tuple(case.means[n].shape)}")
            if n in case.means and (case.means[n].dtype != torch.float64 or case.sds[n].shape != case.means[n].shape):
                problems.append(f"{n}: truth must be float64 with matching mean/sd shapes")
        has_discrete = any(s["fn"].has_enumerate_support for s in sites.values())
        if has_discrete != case.discrete:
            problems.append(f"discrete flag {case.discrete} but model has discrete latents: {has_discrete}")
        if problems:
            results[case.name] = problems
            print(f"FAIL {case.name}: {problems}", flush=True)
            continue

        # 2. Pyro NUTS
        pyro.clear_param_store()
        pyro.set_rng_seed(seed)
        mcmc = MCMC(NUTS(case.model), num_samples=num_samples, warmup_steps=warmup_steps, num_chains=1,
                    disable_progbar=True)
        mcmc.run(*case.args, **case.kwargs)
        raw = mcmc.get_samples()
        draws = {k: v.double().reshape(num_samples, -1) for k, v in raw.items()}
        if case.discrete:  # discrete sites: exact conditional draws given each continuous draw
            disc = {n: [] for n in sites if n not in raw}
            for i in range(0, num_samples, 2):
                cond = poutine.condition(case.model, data={k: v[i] for k, v in raw.items()})
                sampler = infer_discrete(config_enumerate(cond, "parallel"), first_available_dim=-2, temperature=1)
                dtr = poutine.trace(sampler).get_trace(*case.args, **case.kwargs)
                for n in disc:
                    disc[n].append(dtr.nodes[n]["value"].double().reshape(-1))
            draws.update({n: torch.stack(v) for n, v in disc.items()})
        for n in case.means:
            x = draws[n]
            m, s = case.means[n].reshape(-1), case.sds[n].reshape(-1)
            ess = effective_sample_size(x.unsqueeze(0).float()).double().clamp(min=10.0)
            ess = torch.where(torch.isfinite(ess), ess, torch.full_like(ess, float(x.shape[0])))
            if n in raw:
                tol_m = torch.maximum(5 * x.std(0) / ess.sqrt(), 0.25 * s) + 1e-4
                # MCSE of a sample sd without assuming normality: se(var) = sqrt((m4 - var^2) / ess)
                c = x - x.mean(0)
                var, m4 = (c * c).mean(0), (c ** 4).mean(0)
                se_sd = ((m4 - var * var).clamp(min=0) / ess).sqrt() / (2 * var.sqrt().clamp(min=1e-12))
                tol_s = torch.maximum(5 * se_sd, 0.25 * s) + 1e-4
                close(n, "mean", x.mean(0), m, tol_m, problems)
                close(n, "sd", x.std(0), s, tol_s, problems)
            else:  # 0/1 indicator: its sd is sqrt(p (1 - p)); check P(== 1) to 5 binomial standard errors
                close(n, "mean", x.mean(0), m, 5 * s / ess.clamp(max=x.shape[0]).sqrt() + 1e-3, problems)

        # 3. log evidence by importance sampling Pyro's own potential energy
        if case.log_evidence is not None:
            pyro.clear_param_store()
            _, potential_fn, transforms, _ = initialize_model(case.model, case.args, case.kwargs)
            names_c = sorted(raw)
            U = {k: (transforms[k](raw[k]) if k in transforms else raw[k]).double() for k in names_c}
            shapes = {k: U[k].shape[1:] for k in names_c}
            X = torch.cat([U[k].reshape(num_samples, -1) for k in names_c], -1)
            loc = X.mean(0)
            cov = torch.atleast_2d(torch.cov(X.T)) * 1.5 + 1e-8 * torch.eye(X.shape[1], dtype=X.dtype)
            q = dist.MultivariateStudentT(5.0, loc, torch.linalg.cholesky(cov))
            Z = q.sample((is_draws,))
            logq = q.log_prob(Z)
            logw = torch.empty(is_draws, dtype=torch.float64)
            for j in range(is_draws):
                params, off = {}, 0
                for k in names_c:
                    size = int(np.prod(shapes[k])) if len(shapes[k]) else 1
                    params[k] = Z[j, off:off + size].reshape(shapes[k]).to(raw[k].dtype)
                    off += size
                with torch.no_grad():
                    u = potential_fn(params)
                logw[j] = -u.double() - logq[j] if torch.isfinite(u) else -math.inf
            est = float(torch.logsumexp(logw, 0) - math.log(is_draws))
            w = torch.exp(logw - logw.max())
            se = float(w.std() / (w.mean() * math.sqrt(is_draws)))
            if not abs(est - case.log_evidence) <= max(5 * se, 0.05):
                problems.append(f"log evidence: IS {est:.4f} (se {se:.4f}) vs truth {case.log_evidence:.4f}")
            ev = f" logZ IS {est:.3f}+-{se:.3f} vs {case.log_evidence:.3f}"
        else:
            ev = ""
        results[case.name] = problems
        status = "ok  " if not problems else "FAIL"
        print(f"{status} {case.name:24s} [{case.reference}] {time.time() - t0:5.1f}s{ev}", flush=True)
        for p in problems:
            print("     ", p, flush=True)
    failed = [n for n, p in results.items() if p]
    print(f"\n{len(results) - len(failed)}/{len(results)} cases pass" + (f"; failed: {failed}" if failed else ""))
    return not failed


if __name__ == "__main__":  # pragma: no cover
    import sys

    sys.exit(0 if _self_check(sys.argv[1:] or None) else 1)
