"""`tinyvla eval`: closed-loop success of a policy in BlockFind or LIBERO (or `--offline` action error on a dataset).

    tinyvla eval runs/tiny-cpu/final --suite blockfind-reach --episodes-per-task 50 --num-envs 4
    tinyvla eval runs/libero/final --suite libero_object --num-envs 8 --shard 0/4 --out evals/object
    tinyvla eval expert --suite blockfind              # baselines: random, expert (BlockFind only)
    tinyvla eval runs/tiny-cpu/final --offline --repo data/blockfind-reach

Rerunning into the same --out resumes: finished episodes (OUT/episodes.jsonl) are skipped and the summary covers them
all. Shards (--shard i/n) may share one --out, in turn or at the same time.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from tinyvla.errors import UserError

BASELINES = ("random", "expert")


def evaluate(
    ckpt: Annotated[str, typer.Argument(help="Policy directory (runs/NAME/final or an export), or a baseline: random, expert.")],
    suite: Annotated[Optional[str], typer.Option(help="blockfind-reach, blockfind, libero_spatial, libero_object, libero_goal, libero_10, libero_90.")] = None,
    episodes_per_task: Annotated[int, typer.Option(help="Episodes per task (LIBERO: init states 0..N-1).")] = 50,
    tasks: Annotated[Optional[str], typer.Option(help="Task ids, e.g. 0,2,5-7 (default: all).")] = None,
    max_steps: Annotated[Optional[int], typer.Option(help="Policy steps per episode (default: the suite's protocol).")] = None,
    num_envs: Annotated[int, typer.Option(help="Environments stepped together; LIBERO runs one worker process (~2.2 GB) each.")] = 1,
    shard: Annotated[str, typer.Option(help="i/n: run every n-th episode starting at i.")] = "0/1",
    video: Annotated[int, typer.Option(help="Save MP4s of the first K episodes of each task.")] = 0,
    out: Annotated[Optional[Path], typer.Option(help="Output directory (default: runs/eval/NAME-SUITE).")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Protocol seed (default 7, as openpi and VLA-0).")] = None,
    ensemble: Annotated[Optional[str], typer.Option(help="vla0 | exp | uniform | none (default: the policy's).")] = None,
    ensemble_size: Annotated[Optional[int], typer.Option(help="Chunks kept for ensembling (default: the policy's).")] = None,
    execute_horizon: Annotated[Optional[int], typer.Option(help="Steps between model queries, 1..H (default: the policy's).")] = None,
    wait_steps: Annotated[Optional[int], typer.Option(help="LIBERO no-op steps after reset (default 10).")] = None,
    resolution: Annotated[Optional[int], typer.Option(help="Render size (default: LIBERO 256, BlockFind 64).")] = None,
    rotate: Annotated[bool, typer.Option("--rotate/--no-rotate", help="LIBERO: rotate renders 180 degrees to dataset orientation.")] = True,
    snap_gripper: Annotated[bool, typer.Option("--snap-gripper/--no-snap-gripper", help="LIBERO: gripper action to -1/+1.")] = True,
    device: Annotated[Optional[str], typer.Option(help="Policy device (default: cuda if available, else cpu).")] = None,
    num_threads: Annotated[Optional[int], typer.Option(help="CPU threads for torch (default: torch's). On a busy CPU, 1 can be many times faster.")] = None,
    offline: Annotated[bool, typer.Option("--offline", help="Action error on held-out dataset episodes instead of rollouts.")] = False,
    repo: Annotated[Optional[str], typer.Option(help="--offline: the dataset (LeRobot dir or raw LIBERO HDF5 folder).")] = None,
    offline_frames: Annotated[int, typer.Option(help="--offline: frames to score (sampled from the held-out episodes).")] = 256,
    speculative: Annotated[Optional[bool], typer.Option("--speculative/--no-speculative", help="Chunk-shift speculative decoding: the same actions with far fewer forward passes (default: the recipe's eval.speculative).")] = None,
):
    """Closed-loop success in BlockFind or LIBERO, with a per-task table, results.json, resumable episodes.jsonl."""
    from rich.console import Console

    console = Console()
    shard_t = _parse_shard(shard)
    for name, value, low in (("--num-envs", num_envs, 1), ("--episodes-per-task", episodes_per_task, 1),
                             ("--video", video, 0), ("--offline-frames", offline_frames, 1)):
        if value < low:
            raise UserError(f"{name} must be >= {low}, got {value}")
    if num_threads is not None:
        if num_threads < 1:
            raise UserError(f"--num-threads must be >= 1, got {num_threads}")
        import torch

        torch.set_num_threads(num_threads)
    if offline:
        return _evaluate_offline(ckpt, repo, out, offline_frames, seed, device, console)
    if repo is not None:
        raise UserError("--repo is for --offline evaluation; closed-loop evaluation takes --suite")
    if suite is None:
        raise UserError("--suite is required: one of blockfind-reach, blockfind, libero_spatial, libero_object, "
                        "libero_goal, libero_10, libero_90")

    from tinyvla.evaluation import rollout
    from tinyvla.evaluation.results import (EpisodeLog, check_run_identity, print_table, summarize, versions,
                                            write_results)
    from tinyvla.evaluation.video import video_factory

    rollout.check_suite(suite)
    if ckpt == "expert" and rollout.is_libero(suite):
        raise UserError("LIBERO has no scripted expert; evaluate a policy directory or the random baseline")
    # The cheap checks first: a bad task list should not wait for a model to load.
    setup = rollout.setup_suite(suite, seed=seed, max_steps=max_steps, wait_steps=wait_steps, resolution=resolution,
                                rotate_180=rotate, snap_gripper=snap_gripper)
    task_ids = rollout.parse_tasks(tasks, len(setup.tasks))
    episodes = rollout.episode_list(setup, task_ids, episodes_per_task)

    policy, identity = _load_policy(ckpt, device)
    ens = _apply_ensemble(policy, ensemble, ensemble_size, execute_horizon)
    if hasattr(policy, "speculative"):  # a model policy (the random / expert baselines decode nothing)
        recipe_eval = ((getattr(policy, "meta", {}) or {}).get("recipe") or {}).get("eval") or {}
        policy.speculative = recipe_eval.get("speculative", True) if speculative is None else speculative

    out = Path(out) if out is not None else Path("runs") / "eval" / f"{_label(ckpt)}-{suite}"
    check_run_identity(out, {"suite": suite, "protocol": setup.protocol, "ensemble": ens, "checkpoint": identity})
    log = EpisodeLog(out)
    done = {k: r for k, r in log.load().items() if "error" not in r}  # errored episodes are tried again
    mine = rollout.shard_episodes(episodes, shard_t)
    todo = [e for e in mine if e.key not in done]
    n_envs = max(1, min(num_envs, len(todo)))
    if setup.libero and n_envs > 1:
        _warn_memory(n_envs, console)
    console.print(f"[bold]{suite}[/bold]: {len(mine)} episodes in shard {shard} ({len(mine) - len(todo)} done before), "
                  f"{len(todo)} to run on {n_envs} env(s); policy {identity.get('path') or ckpt}; out {out}",
                  soft_wrap=True)

    started = time.time()
    stats = {}
    if todo:
        progress = {"n": 0}

        def on_done(record: dict) -> None:
            log.append(record)
            progress["n"] += 1
            outcome = ("[red]error[/red]: " + record["error"]) if "error" in record else (
                "[green]success[/green]" if record["success"] else "[yellow]fail[/yellow]")
            console.print(f"  [{progress['n']}/{len(todo)}] task {record['task_id']} episode {record['episode']}: "
                          f"{outcome} after {record['steps']} steps ({record['seconds']:.1f} s)", highlight=False,
                          soft_wrap=True)

        slots = rollout.make_slots(setup, n_envs)
        stats = rollout.run_episodes(todo, policy, slots, on_done,
                                     video=video_factory(out / "videos", video, fps=setup.fps))

    records = log.load()
    summary = summarize(records, {t: setup.tasks[t] for t in task_ids}, [e.key for e in episodes])
    protocol = {
        **setup.protocol,
        "episodes_per_task": episodes_per_task,
        "task_ids": task_ids,
        "init_state_indices": list(range(episodes_per_task)) if setup.libero else None,
        "num_envs": n_envs,
        "shard": f"{shard_t[0]}/{shard_t[1]}",
        "ensemble": ens,
    }
    results = {
        "suite": suite,
        "success_rate": summary["success_rate"],
        **{k: summary[k] for k in ("episodes", "successes", "errors", "episodes_expected", "complete")},
        "tasks": summary["tasks"],
        "protocol": protocol,
        "checkpoint": identity,
        "versions": versions(),
        "run": {"finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "seconds": round(time.time() - started, 2),
                **{k: (round(v, 3) if isinstance(v, float) else v) for k, v in stats.items()}},
    }
    path = write_results(out, results)
    print_table(summary, console, title=f"{suite}: {_label(ckpt)}")
    rate = summary["success_rate"]
    note = ""
    if not summary["complete"]:
        note = (f" [yellow]({summary['episodes']} of {summary['episodes_expected']} episodes so far: run the other "
                "shards into the same --out)[/yellow]")
    console.print(f"success rate {'-' if rate is None else f'{100 * rate:.1f}%'} over {summary['episodes']} episodes"
                  f"{note}; wrote {path}")
    return results


# ----------------------------------------------------------------------------------------------------------------------


def _parse_shard(text: str):
    from tinyvla.evaluation.rollout import parse_shard

    return parse_shard(text)


def _label(ckpt: str) -> str:
    if ckpt in BASELINES:
        return ckpt
    p = Path(ckpt)
    return (p.parent.name if p.name == "final" and p.parent.name else p.name) or "policy"


def _load_policy(ckpt: str, device: str | None):
    """(policy, identity) for a baseline name or a policy directory."""
    from tinyvla.evaluation import rollout

    if ckpt == "random":
        return rollout.RandomPolicy(), {"baseline": "random"}
    if ckpt == "expert":
        return rollout.ExpertPolicy(), {"baseline": "expert"}
    from tinyvla.evaluation.results import checkpoint_identity
    from tinyvla.policy import Policy

    if not Path(ckpt).exists() and (ckpt.count("/") != 1 or ckpt.startswith((".", "/"))):
        raise UserError(f"policy not found: {ckpt} (pass a directory written by tinyvla train/export such as "
                        "runs/NAME/final, or a baseline: random, expert)")
    policy = Policy.from_pretrained(ckpt, device=device)
    root = getattr(policy, "source", ckpt)
    return policy, checkpoint_identity(root)


def _apply_ensemble(policy, weighting, size, execute_horizon) -> dict | None:
    """Override the policy's stored ensembling defaults; returns what will be used (None for baselines)."""
    cfg = getattr(policy, "ensemble_cfg", None)
    if cfg is None:
        if weighting is not None or size is not None or execute_horizon is not None:
            raise UserError("--ensemble / --ensemble-size / --execute-horizon apply to policy directories, "
                            "not baselines")
        return None
    from tinyvla.core.ensemble import WEIGHTINGS

    if weighting is not None:
        if weighting not in WEIGHTINGS:
            raise UserError(f"--ensemble {weighting!r}: choose one of {', '.join(WEIGHTINGS)}")
        cfg["weighting"] = weighting
    if size is not None:
        if size < 1:
            raise UserError(f"--ensemble-size must be >= 1, got {size}")
        cfg["max_chunks"] = size
    if execute_horizon is not None:
        h = policy.prompt.horizon
        if not 1 <= execute_horizon <= h:
            raise UserError(f"--execute-horizon must be in 1..{h} (the policy's chunk horizon), got {execute_horizon}")
        cfg["execute_horizon"] = execute_horizon
    return dict(cfg)


def _warn_memory(n_envs: int, console) -> None:
    import os

    try:
        total_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        return
    need = 2.3 * n_envs
    if need > 0.8 * total_gb:
        console.print(f"[yellow]warning: {n_envs} LIBERO workers need ~{need:.0f} GB (about 2.2 GB each); this machine "
                      f"has {total_gb:.0f} GB. Lower --num-envs if they get killed.[/yellow]")


def _evaluate_offline(ckpt, repo, out, n_frames, seed, device, console):
    """Action error of a policy on held-out episodes of a dataset -> OUT/offline.json + OUT/offline_pred_vs_true.png."""
    if repo is None:
        raise UserError("--offline needs --repo DIR: the dataset to score the policy on")
    if ckpt in BASELINES:
        raise UserError("--offline needs a policy directory; the baselines predict no action chunks")
    policy, identity = _load_policy(ckpt, device)
    out = Path(out) if out is not None else Path("runs") / "eval" / f"{_label(ckpt)}-offline"
    return run_offline(policy, identity, repo, out, n_frames, seed, console)


def run_offline(policy, identity: dict, repo: str, out: Path, n_frames: int = 256, seed: int | None = None,
                console=None) -> dict:
    """Offline evaluation of a loaded policy (the part of `--offline` after loading)."""
    import numpy as np

    from tinyvla.core.atomic import write_json_atomic
    from tinyvla.evaluation.offline import offline_action_error, plot_predictions
    from tinyvla.evaluation.results import versions

    if console is None:
        from rich.console import Console

        console = Console()
    reader, frames, split = _heldout_frames(policy, repo)
    rng = np.random.default_rng(0 if seed is None else seed)
    if len(frames) > n_frames:
        frames = np.sort(rng.choice(frames, size=n_frames, replace=False))
    console.print(f"offline: scoring {len(frames)} frames ({split}) of {repo}")
    result = offline_action_error(policy, reader, frames, return_predictions=True)
    pred, true = result.pop("_pred"), result.pop("_true")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    scored = sorted({int(e) for e in np.asarray(reader.episode_index())[frames]})
    write_json_atomic(out / "offline.json", {**result, "repo": str(repo), "split": split, "episodes": scored,
                                             "checkpoint": identity, "versions": versions()})
    # The plot goes to a temp name first, like every other output.
    tmp = out / ".offline_pred_vs_true.tmp.png"
    plot_predictions(pred, true, tmp)
    tmp.replace(out / "offline_pred_vs_true.png")
    from tinyvla.evaluation.chunk_plot import action_names, per_dimension_line, plot_chunks

    names = action_names(reader, pred.shape[-1])
    tmp = out / ".offline_chunks.tmp.png"
    plot_chunks(pred, true, names, tmp, fps=float(reader.info.get("fps") or 0) or None)
    tmp.replace(out / "offline_chunks.png")
    console.print(per_dimension_line(names, result["l1"], result["l1_baseline"]))
    console.print(f"L1 {result['l1_mean']:.4f} (predict-the-mean baseline {result['l1_baseline_mean']:.4f}), "
                  f"grammar-valid {100 * result['grammar_valid_rate']:.0f}%; wrote {out / 'offline.json'}")
    return result


def _heldout_frames(policy, repo):
    """The reader and frames to score: the training run's held-out episodes when the policy carries its recipe (the same
    dataset view and split as training), else every frame."""
    import numpy as np

    from tinyvla.data import open_dataset

    recipe_dict = (getattr(policy, "meta", None) or {}).get("recipe")
    if recipe_dict:
        from tinyvla.recipe import recipe_from_dict
        from tinyvla.training.data import resolve_dataset, split_episodes

        recipe = recipe_from_dict(recipe_dict)
        if recipe.data.suite in ("blockfind", "blockfind-reach") and not Path(repo).exists():
            # resolve_dataset would generate fresh BlockFind data there: that is not the data the policy saw.
            raise UserError(f"--repo {repo} does not exist")
        recipe.data.repo = str(repo)
        reader = resolve_dataset(recipe, log=lambda *_: None)
        _, val = split_episodes(reader, recipe.data.val_episodes, recipe.train.seed)
        if len(val):
            return reader, val, (f"held-out episodes of training (data.val_episodes={recipe.data.val_episodes}, "
                                 f"train.seed={recipe.train.seed})")
        return reader, np.arange(len(reader)), "all frames (the training run held out no episodes)"
    reader = open_dataset(repo)
    return reader, np.arange(len(reader)), "all frames (the policy records no training recipe)"
