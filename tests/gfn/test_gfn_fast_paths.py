"""The GFN training fast paths compute exactly what the general ones do.

``distinct_states`` must be a lossless compression of a batch of states, and the on-policy
trajectory-balance score (one network pass over the batch's distinct states) must equal the
per-step log P_F of :func:`evaluate`, gradients included.
"""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ppl.inference.gfn import TrainConfig, Trainer
from ppl.inference.gfn.env import distinct_states, sample_forward
from ppl.inference.gfn.losses import evaluate, trajectory_log_pf
from ppl.models.gfn_envs import HyperGrid


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 300), k=st.integers(1, 5), high=st.integers(1, 40), offset=st.integers(-1000, 1000),
       seed=st.integers(0, 2**16))
def test_distinct_states_reconstructs_the_batch(n, k, high, offset, seed):
    g = torch.Generator().manual_seed(seed)
    states = torch.randint(0, high, (n, k), generator=g) + offset
    distinct, inverse = distinct_states(states)
    if inverse is None:
        assert distinct is states
        return
    assert torch.equal(distinct[inverse], states)
    assert distinct.shape[0] == torch.unique(states, dim=0).shape[0] <= 0.75 * n


def test_distinct_states_wide_rows_and_float_states():
    wide = torch.randint(0, 2, (64, 80)) * (2**40)  # keys would overflow int64: the row-unique fallback
    wide[32:] = wide[:32]
    distinct, inverse = distinct_states(wide)
    assert torch.equal(distinct[inverse], wide) and distinct.shape[0] <= 32
    floats = torch.zeros(50, 3)
    assert distinct_states(floats)[1] is None


@pytest.mark.parametrize("keep_inputs", [False, True])
def test_trajectory_log_pf_equals_evaluate_with_gradients(keep_inputs):
    """Both scoring routes (recomputed distinct states, or the rollout's kept inputs) match evaluate."""
    env = HyperGrid(3, 5, R0=0.1)
    trainer = Trainer(env, config=TrainConfig(loss="tb", batch_size=128), seed=0, hidden=32)
    trainer.train(20)
    with torch.no_grad():
        tr = sample_forward(env, trainer.policy, 128, generator=torch.Generator().manual_seed(1), keep_inputs=keep_inputs)
    assert (tr.forward_inputs is not None) == keep_inputs
    if keep_inputs:  # one row per distinct state of each step, far fewer than the batch's states
        assert tr.forward_inputs.encoded.shape[0] < int(tr.length.sum()) // 2
    fast = trajectory_log_pf(env, trainer.policy, tr)
    slow = evaluate(env, trainer.policy, tr).sum_log_pf()
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5)
    params = [p for n, p in trainer.policy.named_parameters() if n != "log_z"]
    g_fast = torch.autograd.grad(fast.square().sum(), params)
    g_slow = torch.autograd.grad(slow.square().sum(), params)
    for a, b in zip(g_fast, g_slow):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_rollouts_do_not_depend_on_the_state_key():
    """The environment's state_key is only a shortcut: rollouts are identical without it."""
    env = HyperGrid(3, 5, R0=0.1)
    policy = Trainer(env, config=TrainConfig(loss="tb", batch_size=64), seed=0, hidden=32).policy
    a = sample_forward(env, policy, 200, generator=torch.Generator().manual_seed(3))
    env.state_key = lambda s: None
    b = sample_forward(env, policy, 200, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a.states, b.states) and torch.equal(a.actions, b.actions)
    assert torch.equal(a.length, (a.actions >= 0).sum(0)) and int(a.length.min()) >= 1
    onehot = torch.nn.functional.one_hot(a.states[-1], env.height).reshape(200, -1).float()
    assert torch.equal(env.encode(a.states[-1]), onehot)
