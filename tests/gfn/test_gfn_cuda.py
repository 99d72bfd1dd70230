"""GFlowNet training, exact evaluation and policy SMC on a GPU (skipped where there is none).

The same checks as on the CPU, with every tensor on CUDA: the rollout's replayed pass, the
Gumbel noise blocks and the exact terminal distribution must all run there and agree with the
exact answer.
"""
import pytest
import torch

from ppl.inference.gfn import TrainConfig, Trainer, l1_to_target, policy_smc
from ppl.models.gfn_envs import HyperGrid


def train_and_check(device: str) -> None:
    env = HyperGrid(2, 8, R0=0.1, device=device)
    for learn_pb in (False, True):
        tr = Trainer(env, config=TrainConfig(loss="tb", batch_size=256), seed=0, learn_pb=learn_pb)
        tr.train(300)
        assert tr.policy.log_z.device.type == torch.device(device).type
        assert l1_to_target(env, tr.policy) < 0.05
        assert abs(tr.policy.log_z.item() - env.true_log_z()) < 0.05
    db = Trainer(env, config=TrainConfig(loss="db", batch_size=256), seed=0)
    db.train(300)
    out = policy_smc(env, db.policy, 2000, twist="flow", seed=0)
    assert out.state["s"].device.type == torch.device(device).type
    assert abs(float(out.log_evidence[0]) - env.true_log_z()) < 0.1


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gfn_on_cuda():
    train_and_check("cuda")
