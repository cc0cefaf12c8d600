"""The weight average (train.ema_decay): its arithmetic, its swap in and out, its checkpoint file, and a training run
that saves it and resumes it exactly."""

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from tinyvla.errors import UserError
from tinyvla.training.ema import WeightAverage

ROOT = Path(__file__).resolve().parents[1]


def test_average_follows_the_formula_and_swaps_back():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    ema = WeightAverage(model, decay=0.9)
    expected = [p.detach().clone() for p in model.parameters()]
    for step in range(1, 30):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        ema.update(step)
        keep = min(0.9, (1 + step) / (10 + step))  # the ramp, then the decay
        expected = [keep * e + (1 - keep) * p.detach() for e, p in zip(expected, model.parameters())]
    assert ema.rate(1) == pytest.approx(2 / 11) and ema.rate(1000) == 0.9
    for avg, e in zip(ema.average, expected):
        assert torch.allclose(avg, e, atol=1e-6)
    last = [p.detach().clone() for p in model.parameters()]
    with ema.applied():
        assert all(torch.equal(p, a) for p, a in zip(model.parameters(), ema.average))
    assert all(torch.equal(p, w) for p, w in zip(model.parameters(), last))  # the trained weights are back
    ema.copy_to_model()
    assert all(torch.equal(p, a) for p, a in zip(model.parameters(), ema.average))


def test_checkpoint_file_round_trips_and_a_mismatch_is_one_line(tmp_path):
    model = torch.nn.Linear(3, 2)
    ema = WeightAverage(model, decay=0.99)
    ema.average[0].fill_(0.5)
    ema.save(tmp_path, rank=1)
    fresh = WeightAverage(torch.nn.Linear(3, 2), decay=0.99)
    fresh.load(tmp_path, rank=1)
    assert torch.equal(fresh.average[0], ema.average[0])
    with pytest.raises(UserError, match="no weight average"):
        fresh.load(tmp_path, rank=0)
    with pytest.raises(UserError, match="does not match"):
        WeightAverage(torch.nn.Linear(4, 2), decay=0.99).load(tmp_path, rank=1)


@pytest.mark.slow
def test_training_saves_the_average_and_resumes_it_exactly(tmp_path):
    from tests.test_train import tiny_recipe
    from tinyvla.training.trainer import list_checkpoints, train

    def run(out, steps, resume=False):
        cfg = tiny_recipe(out, "train.ema_decay=0.5")
        cfg.train.max_steps, cfg.train.save_every = steps, 2
        return train(cfg, resume=resume, smoke_test=True)

    straight = run(tmp_path / "a", 4)
    run(tmp_path / "b", 2)  # "killed" after 2 steps: its checkpoint is all that survives
    resumed = run(tmp_path / "b", 4, resume=True)

    def weights(policy_dir):
        return load_file(str(next((policy_dir / "model").glob("*.safetensors"))))

    a, b = weights(straight.policy_dir), weights(resumed.policy_dir)
    assert a.keys() == b.keys() and all(np.allclose(a[k], b[k], rtol=1e-5, atol=1e-6) for k in a)
    ckpt = list_checkpoints(straight.out_dir / "checkpoints")[-1]
    assert (ckpt / "ema_rank0.safetensors").is_file()
    raw = load_file(str(ckpt / "model.safetensors"))  # the last step's weights, which the policy is not
    shared = [k for k in a if k in raw]
    assert shared and any(not np.array_equal(a[k], raw[k]) for k in shared)
