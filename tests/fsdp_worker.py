"""Run by tests/test_distributed.py under torchrun: the tiny model sharded with FSDP2 (`fully_shard`, CPU, gloo) over
the processes, wrapped at the classes recipes/accelerate/fsdp-8gpu.yaml names, then the trainer's own pieces that
run forwards: one optimizer step (trainer.train_step) and the held-out evaluation (trainer.heldout_error), which
generates. Every process must enter every forward; one that does not leaves the others waiting in an all-gather
(the gloo timeout below turns that wait into an error). Each process writes OUT_DIR/rank<r>.json."""

import json
import os
import sys
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import yaml
from accelerate import Accelerator
from torch.distributed.device_mesh import init_device_mesh

from tinyvla.policy import Policy
from tinyvla.policy_dir import PolicyConfig
from tinyvla.recipe import load_recipe
from tinyvla.training import trainer
from tinyvla.training.data import ActionSampleDataset, load_training_data
from tinyvla.training.fsdp import WRAP_CLASSES, shard_model

ROOT = Path(__file__).resolve().parents[1]


def main(recipe_path: str, mode: str, out_dir: str) -> None:
    # A short timeout where the wait is the point (rank0-only); room for a busy machine otherwise.
    dist.init_process_group("gloo", timeout=timedelta(seconds=10 if mode == "rank0-only" else 120))
    rank, world = dist.get_rank(), dist.get_world_size()
    recipe = load_recipe(recipe_path)
    torch.manual_seed(recipe.train.seed)
    model, processor = trainer.build_model(recipe)
    wrap = yaml.safe_load((ROOT / "recipes/accelerate/fsdp-8gpu.yaml").read_text())["fsdp_config"]
    assert set(wrap["fsdp_transformer_layer_cls_to_wrap"].split(",")) == set(WRAP_CLASSES)  # one list, two launchers
    units = shard_model(model, init_device_mesh("cpu", (world,)))
    full = sum(p.numel() for p in model.parameters())
    local = sum(p.to_local().numel() for p in model.parameters())

    data = load_training_data(recipe, log=lambda *a, **k: None)
    config = PolicyConfig.from_recipe(recipe, data.stats)
    prompt, image_spec, codec = config.prompt, config.image, config.codec()
    dataset = ActionSampleDataset(data.reader, codec, processor, prompt, image_spec, train=True, seed=0)
    frames = data.train_frames[rank::world][:4]
    micro = [processor.collate([dataset[(int(f), 0)] for f in frames[i:i + 2]], padding_side="right")
             for i in (0, 2)]
    accelerator = Accelerator(cpu=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    loss = trainer.train_step(accelerator, model, micro)
    optimizer.step()
    optimizer.zero_grad()

    model.eval()
    policy = Policy(config, model, processor)
    if mode == "rank0-only" and rank != 0:  # the old trainer: evaluation on rank 0 alone
        dist.barrier()
        result = None
    else:
        result = trainer.heldout_error(policy, data.reader, data.val_frames, recipe.train)
    row = {"rank": rank, "units": units, "params": full, "local_params": local, "loss": loss,
           "l1": None if result is None else result["l1_mean"]}
    (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps(row))
    dist.barrier()  # both rows written before either process starts tearing down
    dist.destroy_process_group()
    # Leave without the interpreter's teardown: FSDP2 on gloo keeps C++ worker threads and async work objects alive in
    # module state, and finalizing them after Python is half gone aborts the process now and then ("terminate called
    # without an active exception", SIGABRT: pytorch/pytorch#179291) after all the work above succeeded. Everything
    # this worker produces is the two files, written and checked by the test.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main(*sys.argv[1:4])
