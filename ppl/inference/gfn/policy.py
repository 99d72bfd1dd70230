"""MLP policies over environment states: masked forward logits, optional backward logits and log-flow."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ppl.inference.gfn.env import masked_log_softmax


def mlp(n_in: int, n_out: int, hidden: int = 256, layers: int = 2) -> nn.Sequential:
    """A plain MLP with LeakyReLU activations."""
    mods, d = [], n_in
    for _ in range(layers):
        mods += [nn.Linear(d, hidden), nn.LeakyReLU()]
        d = hidden
    mods.append(nn.Linear(d, n_out))
    return nn.Sequential(*mods)


class Policy(nn.Module):
    """Forward policy P_F, optional learned backward policy P_B and state log-flow log F(s).

    One trunk with three heads, so a batch of states costs one network pass. ``learn_pb=False``
    means the uniform backward policy (the usual choice; it makes TB unbiased for any P_F).
    ``log_z`` is the learned log partition function used by trajectory balance.
    """

    def __init__(self, encoding_dim: int, n_actions: int, n_bactions: int, hidden: int = 256,
                 layers: int = 2, learn_pb: bool = False, log_z_init: float = 0.0) -> None:
        super().__init__()
        self.n_actions, self.n_bactions, self.learn_pb = n_actions, n_bactions, learn_pb
        self.trunk = mlp(encoding_dim, hidden, hidden, layers - 1) if layers > 1 else nn.Identity()
        d = hidden if layers > 1 else encoding_dim
        self.act = nn.LeakyReLU()
        self.head = nn.Linear(d, n_actions + (n_bactions if learn_pb else 0) + 1)
        self.log_z = nn.Parameter(torch.tensor(float(log_z_init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.trunk(x)
        return self.head(self.act(h) if not isinstance(self.trunk, nn.Identity) else h)

    def split(self, out: torch.Tensor):
        """(forward logits, backward logits or None, log-flow) from one network output."""
        a = self.n_actions
        f = out[..., :a]
        b = out[..., a:a + self.n_bactions] if self.learn_pb else None
        return f, b, out[..., -1]

    def log_pf(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return masked_log_softmax(self.split(self(x))[0], mask)

    def log_pb(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b = self.split(self(x))[1]
        if b is None:
            b = torch.zeros(mask.shape, device=x.device, dtype=x.dtype)
        return masked_log_softmax(b, mask)

    def parameter_groups(self, lr: float = 1e-3, lr_log_z: float = 0.1):
        """Optimiser groups: the network at ``lr``, log Z at its own (larger) rate."""
        net = [p for n, p in self.named_parameters() if n != "log_z"]
        return [{"params": net, "lr": lr}, {"params": [self.log_z], "lr": lr_log_z}]


def backward_policy_fn(policy: Policy) -> Optional[callable]:
    """The callable ``sample_backward`` wants for this policy's P_B (None when uniform)."""
    if not policy.learn_pb:
        return None
    return lambda x, m: policy.log_pb(x, m)
