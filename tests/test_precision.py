"""Precision modes: which dtype the weights train in, and bf16 weights that keep updates below bf16's resolution."""

import torch

from tinyvla.recipe import Recipe, TrainConfig
from tinyvla.training.trainer import build_optimizer, training_dtype


def test_training_dtype_per_precision_mode():
    r = Recipe()
    r.model.dtype = "bf16"
    for precision, expected in (("bf16-mixed", "fp32"), ("fp32", "fp32"), ("bf16", "bf16")):
        r.train.precision = precision
        assert training_dtype(r) == expected


def run_bf16(optimizer_name: str, steps: int = 200) -> tuple[int | None, float]:
    """Weights of a typical size (0.02; bf16 resolution there 1.2e-4) pushed by a constant gradient at lr 5e-6: each
    AdamW update is ~lr, below half a bf16 step. Returns (first step at which a weight changed, mean weight)."""
    w = torch.nn.Parameter(torch.full((256,), 0.02, dtype=torch.bfloat16))
    opt = build_optimizer(torch.nn.Linear(1, 1).to(torch.bfloat16), TrainConfig(lr=5e-6, optimizer=optimizer_name))
    opt.param_groups[0]["params"] = [w]  # the recipe's optimizer, on the test weight
    start = w.detach().clone()
    first = None
    for step in range(1, steps + 1):
        w.grad = torch.ones_like(w)
        opt.step()
        if first is None and (w != start).any():
            first = step
    return first, float(w.detach().float().mean())


def test_kahan_adamw_keeps_small_bf16_updates_plain_adamw_loses_them():
    plain, plain_w = run_bf16("adamw")
    kahan, kahan_w = run_bf16("adamw-kahan")
    start = float(torch.tensor(0.02, dtype=torch.bfloat16))
    assert plain is None and plain_w == start  # every update rounded away
    assert kahan is not None and kahan < 50  # the updates add up and arrive
    assert abs((start - kahan_w) - 200 * 5e-6) < 1.5e-4  # the weight moved by the sum of the updates, +- one bf16 step


def test_weight_decay_skips_biases_and_norm_scales():
    model = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    opt = build_optimizer(model, TrainConfig(lr=1e-3, weight_decay=0.1))
    decay = {id(p) for g in opt.param_groups if g["weight_decay"] == 0.1 for p in g["params"]}
    no_decay = {id(p) for g in opt.param_groups if g["weight_decay"] == 0.0 for p in g["params"]}
    assert decay == {id(model[0].weight), id(model[1].weight)}
    assert no_decay == {id(model[1].bias), id(model[2].weight), id(model[2].bias)}
    # Without decay: one group holding every trainable parameter, as before groups existed.
    plain = build_optimizer(model, TrainConfig(lr=1e-3, weight_decay=0.0))
    assert len(plain.param_groups) == 1 and len(plain.param_groups[0]["params"]) == 5
