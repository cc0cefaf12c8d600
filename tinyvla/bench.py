"""Speed: training throughput and closed-loop inference, measured the way the project uses them.

    tinyvla bench recipes/tiny-cpu.yaml                      # training + inference, spec vs greedy
    tinyvla bench --model arch:qwen3-2b --only infer         # a full-size architecture, random weights (GPU)
    tinyvla bench runs/tiny-cpu/final --only infer --json    # a trained policy directory

Training: the recipe's model, optimizer, precision and batch size on synthetic batches of the recipe's shape (random
images and action text: the model's cost does not depend on the content; data loading is not timed). Median step
time over a few steps after a warm-up; tokens/s counts every input token (vision included); MFU = 6 * N * tokens /
step time / the GPU's peak bf16 FLOPs (an estimate: 6N per token is the dense-transformer rule of thumb).

Inference: a closed-loop BlockFind-reach rollout (the policy's actions move the gripper, so consecutive observations
are what a robot would see and speculative drafts are as good as they get in use), re-querying every step with the
policy's ensembling. Each mode ("greedy": transformers' generate; "spec": chunk-shift speculative decoding) runs the
same rollout from the same seeds; modes alternate over the repeats and every figure is the median over repeats.
`identical` says whether both modes produced the same actions on every step -- the speculative path must.
With random weights (tiny-*, arch:*) what the model writes is meaningless and often repetitive, which flatters
drafts: judge acceptance on a trained policy.
"""

from __future__ import annotations

import dataclasses
import resource
import statistics
import time
from pathlib import Path

import numpy as np

from tinyvla.errors import UserError
from tinyvla.policy_dir import DecodingConfig, PolicyConfig

MODES = ("spec", "greedy")

# Dense bf16 tensor-core peak of common GPUs (vendor datasheets, no sparsity), FLOP/s. Matched on the device name.
PEAK_BF16_FLOPS = {
    "H200": 989e12,
    "GH200": 989e12,
    "H100 PCIe": 756e12,
    "H100": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "L4": 121e12,
    "A10": 125e12,
    "RTX 4090": 165e12,
}


def peak_flops(device_name: str | None) -> float | None:
    if not device_name:
        return None
    for key in sorted(PEAK_BF16_FLOPS, key=len, reverse=True):  # "H100 PCIe" before "H100"
        if key.lower() in device_name.lower():
            return PEAK_BF16_FLOPS[key]
    return None


def _sync(torch) -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _peak_memory_gb(torch) -> dict:
    if torch.cuda.is_available():
        return {"peak_mem_gb": round(torch.cuda.max_memory_allocated() / 2**30, 3), "memory_kind": "cuda allocated"}
    # Linux reports ru_maxrss in KiB: the whole process's peak, model and Python included.
    rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return {"peak_mem_gb": round(rss_gb, 3), "memory_kind": "peak RSS"}


# ------------------------------------------------------------------------------------------------------------------
# What to measure: a recipe, a policy directory or a model name
# ------------------------------------------------------------------------------------------------------------------


def resolve_target(target: str | None, model: str | None = None, overrides: list[str] | None = None):
    """(recipe or None, policy dir or None). A YAML file is a recipe; a directory with policy.json a policy; with
    neither, `model` on the default recipe (the VLA-0 settings; tiny-* models get the tiny CPU recipe's shapes)."""
    from tinyvla.recipe import Recipe, apply_overrides, load_recipe, recipe_from_dict

    overrides = list(overrides or [])
    if target is None:
        if model is None:
            raise UserError("bench needs a recipe (recipes/tiny-cpu.yaml), a policy directory, or --model NAME")
        recipe = Recipe(name=f"bench-{model}")
        recipe.model.name = model
        # A fixed benchmark shape (tiny-cpu.yaml of session 1: 64 px, H = 4, batch 32, fp32), kept as it was so that
        # figures compare over time; bench a recipe file for its own shapes.
        if model.startswith("tiny-"):
            recipe.model.dtype, recipe.train.precision = "fp32", "fp32"
            recipe.data.suite, recipe.data.image_size, recipe.data.crop_scale = "blockfind-reach", 64, 0.9
            recipe.actions.horizon, recipe.train.batch_size = 4, 32
        if overrides:
            recipe = recipe_from_dict(apply_overrides(recipe.to_dict(), overrides))
        return recipe.validate(), None
    path = Path(target)
    if path.is_dir():
        if not ((path / "policy.json").is_file() or (path / "final" / "policy.json").is_file()):
            raise UserError(f"{target} is a directory without policy.json: pass a policy (runs/NAME/final) or a recipe")
        if overrides or model:
            raise UserError("--set and --model apply to recipes, not to a policy directory")
        return None, path if (path / "policy.json").is_file() else path / "final"
    if path.suffix in (".yaml", ".yml"):
        recipe = load_recipe(path, overrides)
        if model:
            recipe.model.name = model
        return recipe.validate(), None
    raise UserError(f"{target} is neither a recipe (.yaml) nor a policy directory (with policy.json)")


def policy_from_recipe(recipe, device: str | None = None, dtype: str | None = None,
                       decoding: DecodingConfig | None = None):
    """A Policy with the recipe's model (random weights for tiny-*/arch:*), prompt and images; stats span [-1, 1]."""
    import torch

    from tinyvla.core.codec import ActionStats
    from tinyvla.modeling.loading import load_model
    from tinyvla.policy import Policy

    m = recipe.model
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = dtype or (m.dtype if device != "cpu" else "fp32")
    model, processor = load_model(m.name, dtype=dtype, attn_implementation=m.attn_implementation,
                                  trust_remote_code=m.trust_remote_code, tiny_overrides=m.tiny or None,
                                  tokenizer=m.tokenizer, device=device)
    stats = ActionStats(min=[-1.0] * recipe.actions.dim, max=[1.0] * recipe.actions.dim)
    config = PolicyConfig.from_recipe(recipe, stats)
    # No training-time augmentation, global bounds, and decoding as asked (the bench sets the mode per run).
    config = config.replace(image=dataclasses.replace(config.image, color_jitter=False), per_task_bounds=False,
                            decoding=decoding or DecodingConfig())
    return Policy(config, model, processor)


# ------------------------------------------------------------------------------------------------------------------
# Inference: closed loop in BlockFind
# ------------------------------------------------------------------------------------------------------------------


def closed_loop(policy, steps: int = 20, num_envs: int = 1, seed: int = 0, speculative: bool = True,
                suite: str = "blockfind-reach", max_episode_steps: int | None = None) -> dict:
    """Run `num_envs` BlockFind envs for `steps` lock-step policy steps (episodes restart when they end).

    Returns actions (steps, num_envs, D), the policy's decode counters over the run, and the seconds spent inside
    policy calls (env stepping excluded). Deterministic in `seed`: two runs whose actions agree saw the same frames.
    """
    from tinyvla.envs.blockfind import make_env

    # Render at the size the policy crops from (224 / 0.875 = 256 for the paper's setting), so resizing is realistic.
    spec = policy.image_spec
    size = max(16, min(1024, round(spec.image_size / spec.crop_scale)))
    kwargs = {"max_steps": max_episode_steps} if max_episode_steps else {}
    envs = [make_env(suite, image_size=size, **kwargs) for _ in range(num_envs)]
    obs = [env.reset(seed=seed * 1000 + i)[0] for i, env in enumerate(envs)]
    policy.reset(num_envs)
    before = dict(policy.decode_stats)
    actions, call_s, call_passes, fresh = [], [], [], []
    new_episode = [True] * num_envs
    with policy.decoding(speculative=speculative):  # the policy's own setting comes back afterwards
        for _ in range(steps):
            t = time.perf_counter()
            passes = policy.decode_stats["passes"]
            act = policy.act_batch(obs, [env.instruction for env in envs])
            call_s.append(time.perf_counter() - t)
            call_passes.append(policy.decode_stats["passes"] - passes)
            fresh.append(any(new_episode))  # some env had no chunk of its own episode to draft from
            new_episode = [False] * num_envs
            actions.append(act)
            for i, env in enumerate(envs):
                o, _, terminated, truncated, _ = env.step(act[i])
                if terminated or truncated:
                    o, _ = env.reset()
                    policy.reset_env(i)
                    new_episode[i] = True
                obs[i] = o
    counts = {k: policy.decode_stats[k] - before[k] for k in before}
    return {"actions": np.stack(actions), "counts": counts, "seconds": float(sum(call_s)), "call_s": call_s,
            "call_passes": call_passes, "call_fresh": fresh}


def _mean(values):
    return sum(values) / len(values) if values else None


def _loop_metrics(run: dict) -> dict:
    c = run["counts"]
    calls, chunks = max(c["calls"], 1), max(c["chunks"], 1)
    return {
        "ms_per_chunk": 1000 * run["seconds"] / chunks,
        "ms_per_query": 1000 * statistics.median(run["call_s"]),  # one query = one chunk per env, batched
        "tokens_per_chunk": c["tokens"] / chunks,
        "passes_per_chunk": c["passes"] / calls,  # per query: a batched pass writes every env's chunk at once
        # The same without queries where some env starts an episode (no draft of its own yet): the steady state.
        "passes_per_chunk_steady": _mean([p for p, f in zip(run["call_passes"], run["call_fresh"]) if not f]),
        "chunks_per_s": chunks / max(run["seconds"], 1e-9),
        "acceptance": (c["accepted"] / c["drafted"]) if c["drafted"] else None,
    }


def bench_inference(policy, modes=MODES, steps: int = 20, num_envs: int = 1, repeats: int = 3, warmup: int = 1,
                    seed: int = 0) -> dict:
    """Closed-loop inference figures per mode (medians over repeats), ratios spec/greedy, and action identity."""
    modes = list(dict.fromkeys(modes))
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        raise UserError(f"--compare takes a comma list of {', '.join(MODES)}; got {','.join(modes) or 'nothing'}")
    if steps < 1 or repeats < 1 or num_envs < 1 or warmup < 0:
        raise UserError("steps, repeats and num_envs must be >= 1 and warmup >= 0")
    for _ in range(warmup):  # first calls pay one-off costs (kernel selection, allocator growth, grammar tables)
        for mode in modes:
            closed_loop(policy, steps=min(steps, 3), num_envs=num_envs, seed=seed + 1, speculative=mode == "spec")
    per_mode: dict[str, list[dict]] = {m: [] for m in modes}
    actions: dict[str, list[np.ndarray]] = {m: [] for m in modes}
    for r in range(repeats):
        for mode in modes:  # alternate, so a busy machine slows both modes alike
            run = closed_loop(policy, steps=steps, num_envs=num_envs, seed=seed, speculative=mode == "spec")
            per_mode[mode].append(_loop_metrics(run))
            actions[mode].append(run["actions"])
    out = {"steps": steps, "num_envs": num_envs, "repeats": repeats, "warmup": warmup, "seed": seed,
           "horizon": policy.prompt.horizon, "dim": policy.prompt.dim, "bins": policy.prompt.bins, "modes": {}}
    for mode, rows in per_mode.items():
        med = {}
        for key in rows[0]:
            vals = [row[key] for row in rows if row[key] is not None]
            med[key] = round(statistics.median(vals), 4) if vals else None
        out["modes"][mode] = med
    if "spec" in modes and "greedy" in modes:
        s, g = out["modes"]["spec"], out["modes"]["greedy"]
        out["identical"] = all(np.array_equal(a, b) for a, b in zip(actions["spec"], actions["greedy"]))
        out["ratio"] = {k: round(s[k] / g[k], 4) for k in ("passes_per_chunk", "ms_per_chunk") if g[k]}
        out["speedup"] = round(g["ms_per_chunk"] / s["ms_per_chunk"], 3) if s["ms_per_chunk"] else None
    return out


# ------------------------------------------------------------------------------------------------------------------
# Training throughput
# ------------------------------------------------------------------------------------------------------------------


def synthetic_batch(recipe, processor, batch_size: int, seed: int = 0) -> dict:
    """A training batch of the recipe's shape: random frames at the render size, a typical instruction, random action
    codes, the recipe's masking; built by the training code's own encode + collate."""
    from tinyvla.core.codec import ActionCodec
    from tinyvla.inputs import encode_training_example, mask_token_id
    from tinyvla.envs.suites import BLOCKFIND_SUITES
    from tinyvla.policy_dir import specs_from_recipe

    prompt, image_spec = specs_from_recipe(recipe)
    rng = np.random.default_rng(seed)
    size = max(8, round(image_spec.image_size / image_spec.crop_scale))
    instruction = ("pick up the block that is red" if recipe.data.suite in BLOCKFIND_SUITES
                   else "pick up the black bowl between the plate and the ramekin and place it on the plate")
    a = recipe.actions
    mask_id = mask_token_id(processor, a.mask_char) if a.mask_prob > 0 else None
    items = []
    for _ in range(batch_size):
        sample = {"image": rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
                  "wrist_image": rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
                  "instruction": instruction}
        text = ActionCodec.to_text(rng.integers(0, a.bins + 1, (a.horizon, a.dim)))
        items.append(encode_training_example(processor, prompt, image_spec, sample, text, rng, mask_prob=a.mask_prob,
                                             mask_token_id=mask_id, unmasked_fraction=a.unmasked_fraction))
    return processor.collate(items, padding_side="right")


def bench_training(recipe, steps: int = 5, warmup: int = 2, batch_size: int | None = None,
                   peak_tflops: float | None = None, num_threads: int | None = None) -> dict:
    """Median optimizer-step time of the recipe's model on synthetic batches, throughput, memory and MFU.

    CPU threads: `num_threads`, else the recipe's train.num_threads (what training would use), restored afterwards."""
    import torch

    threads = torch.get_num_threads()
    if num_threads or recipe.train.num_threads:
        torch.set_num_threads(num_threads or recipe.train.num_threads)
    try:
        return _bench_training(recipe, steps, warmup, batch_size, peak_tflops)
    finally:
        torch.set_num_threads(threads)


def _bench_training(recipe, steps, warmup, batch_size, peak_tflops) -> dict:
    import torch
    from accelerate import Accelerator

    from tinyvla.training.trainer import answer_loss, build_model, build_optimizer, mixed_precision

    if steps < 1 or warmup < 0:
        raise UserError("training steps must be >= 1 and warmup >= 0")
    cfg = recipe.train
    on_gpu = torch.cuda.is_available()
    mixed = mixed_precision(cfg)
    accelerator = Accelerator(mixed_precision=mixed, cpu=not on_gpu)
    torch.manual_seed(cfg.seed)
    t0 = time.perf_counter()
    model, processor = build_model(recipe)
    build_s = time.perf_counter() - t0
    optimizer = build_optimizer(model, cfg)
    model, optimizer = accelerator.prepare(model, optimizer)
    if cfg.compile:
        model = torch.compile(model)
    bs = batch_size or cfg.batch_size
    batch = {k: v.to(accelerator.device) for k, v in synthetic_batch(recipe, processor, bs, cfg.seed).items()}
    tokens = int(batch["attention_mask"].sum()) * cfg.grad_accum
    if on_gpu:
        torch.cuda.reset_peak_memory_stats()
    model.train()
    times = []
    try:
        for i in range(warmup + steps):
            _sync(torch)
            t = time.perf_counter()
            for _ in range(cfg.grad_accum):
                with accelerator.autocast():
                    loss = answer_loss(model, batch)
                accelerator.backward(loss / cfg.grad_accum)
            if cfg.clip_grad > 0:
                accelerator.clip_grad_norm_(model.parameters(), cfg.clip_grad)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            _sync(torch)
            if i >= warmup:
                times.append(time.perf_counter() - t)
    except torch.cuda.OutOfMemoryError:
        raise UserError(f"out of GPU memory at batch size {bs}: lower --batch-size or use the recipe's LoRA / "
                        "gradient checkpointing settings") from None
    step_s = statistics.median(times)
    n_params = sum(p.numel() for p in model.parameters())
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    device_name = torch.cuda.get_device_name(0) if on_gpu else None
    peak = peak_tflops * 1e12 if peak_tflops else (peak_flops(device_name) if on_gpu else None)
    out = {
        "model": recipe.model.name, "params_m": round(n_params / 1e6, 3), "trainable_m": round(n_train / 1e6, 3),
        "batch_size": bs, "grad_accum": cfg.grad_accum, "precision": mixed if on_gpu else "fp32",
        "tokens_per_step": tokens, "seq_len": int(batch["input_ids"].shape[1]),
        "step_s": round(step_s, 5), "step_s_all": [round(t, 5) for t in times],
        "samples_per_s": round(bs * cfg.grad_accum / step_s, 3), "tokens_per_s": round(tokens / step_s, 1),
        "build_s": round(build_s, 2), "device": device_name or "cpu", "threads": torch.get_num_threads(),
        **_peak_memory_gb(torch),
        "mfu": round(6 * n_params * tokens / step_s / peak, 4) if peak else None,
    }
    del model, optimizer
    if on_gpu:
        torch.cuda.empty_cache()
    return out


# ------------------------------------------------------------------------------------------------------------------
# Training time of a recipe
# ------------------------------------------------------------------------------------------------------------------

LIBERO_ALL_FRAMES = 273_465  # physical-intelligence/libero, the four suites VLA-0 trains on (FACTS §2)


def recipe_frames(recipe) -> tuple[int, str]:
    """(training frames, where the number comes from). Reads a local dataset; BlockFind data not generated yet is
    rolled out in memory at a tiny render size (frame counts do not depend on it); LIBERO from the hub is the published
    count (per suite: a quarter of it, approximately)."""
    from tinyvla.envs.suites import BLOCKFIND_SUITES, is_libero

    d = recipe.data
    if Path(d.repo).exists():
        from tinyvla.training.data import resolve_dataset, split_episodes

        reader = resolve_dataset(recipe, log=lambda *a, **k: None)
        train, _ = split_episodes(reader, d.val_episodes, recipe.train.seed)
        return len(train), f"{d.repo} (local)"
    if d.suite in BLOCKFIND_SUITES:
        from tinyvla.envs.blockfind import generate_episodes

        n_eps = d.generate_episodes
        lengths = [len(e["actions"]) for e in generate_episodes(d.suite, n_eps, d.generate_seed, image_size=16,
                                                                     **d.blockfind_generation())]
        held = min(d.val_episodes, max(0, n_eps - 1))
        mean = sum(lengths) / max(len(lengths), 1)
        return int(sum(lengths) - held * mean), f"{n_eps} {d.suite} expert episodes (to be generated)"
    if d.suite == "libero_all":
        return LIBERO_ALL_FRAMES, f"{d.repo}: published frame count"
    if is_libero(d.suite):
        return LIBERO_ALL_FRAMES // 4, f"{d.repo}: about a quarter of the 4-suite frame count"
    raise UserError(f"cannot count the frames of {d.repo} (not found locally); set train.max_steps for an estimate")


def total_steps(recipe, frames: int, processes: int = 1) -> int:
    """Optimizer steps the trainer will run (its own plan: training/plan.py)."""
    return recipe.train.total_steps(frames, max(1, processes))
