"""Shared fixtures-free helpers for the VI tests (a Gaussian mixture with a discrete latent and its EM fit)."""
import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from torch import nn


def gmm(x):
    """Two-component 1-D Gaussian mixture with learnable weights and locations; z is a discrete latent per point."""
    w = pyro.param("weights", torch.tensor([0.5, 0.5]), constraint=constraints.simplex)
    locs = pyro.param("locs", torch.tensor([-1.0, 1.0]))
    with pyro.plate("data", x.shape[-1]):
        z = pyro.sample("z", dist.Categorical(w))
        pyro.sample("x", dist.Normal(locs[z], 1.0), obs=x)


def make_gmm_guide(seed=0):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(1, 16), nn.Tanh(), nn.Linear(16, 2))

    def gmm_guide(x):
        pyro.module("encoder", net)
        with pyro.plate("data", x.shape[-1]):
            pyro.sample("z", dist.Categorical(logits=net(x.unsqueeze(-1))))

    return gmm_guide


def gmm_data(n=400, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = (torch.rand(n, generator=g) < 0.7).long()
    locs = torch.tensor([-2.0, 2.0])
    return locs[z] + torch.randn(n, generator=g)


def gmm_em(x, iters=500):
    """Maximum-likelihood weights and locations by EM (the exact target of RWS / VIMCO / ELBO training)."""
    x = x.double()
    w = torch.tensor([0.5, 0.5], dtype=torch.float64)
    locs = torch.tensor([-1.0, 1.0], dtype=torch.float64)
    for _ in range(iters):
        logr = torch.log(w) + dist.Normal(locs, 1.0).log_prob(x.unsqueeze(-1))
        r = torch.softmax(logr, -1)
        w = r.mean(0)
        locs = (r * x.unsqueeze(-1)).sum(0) / r.sum(0)
    return w, locs
