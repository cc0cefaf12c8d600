"""Evaluating a policy: closed-loop success in a suite (results.json) or offline action error on a dataset.

    from tinyvla.evaluate import evaluate
    results = evaluate("runs/tiny-cpu/final", suite="blockfind-reach", episodes_per_task=50, num_envs=4)
    evaluate("expert", suite="blockfind")                     # baselines: random, expert (BlockFind only)
    evaluate("runs/tiny-cpu/final", offline=True, repo="data/blockfind-reach")

`tinyvla eval` is this function behind Typer options (cli/evaluate.py). Rerunning into the same `out` resumes:
finished episodes (OUT/episodes.jsonl) are skipped and the summary covers them all. Shards (`shard="i/n"`) may share
one `out`, in turn or at the same time. The pieces: suites and their protocol (tinyvla.envs.suites), episodes and shards
(evaluation/episodes.py), env slots (evaluation/slots.py), the loop (evaluation/rollout.py), what lands on disk
(evaluation/results.py).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from tinyvla.envs import suites
from tinyvla.errors import UserError
from tinyvla.evaluation import episodes as E
from tinyvla.hub import is_hub_id
from tinyvla.interface import PolicyInterface
from tinyvla.versions import versions

BASELINES = ("random", "expert")


def evaluate(ckpt: str, suite: str | None = None, episodes_per_task: int = 50, tasks: str | None = None,
             max_steps: int | None = None, num_envs: int = 1, shard: str = "0/1", video: int = 0,
             out: str | Path | None = None, seed: int | None = None, ensemble: str | None = None,
             ensemble_size: int | None = None, execute_horizon: int | None = None, wait_steps: int | None = None,
             resolution: int | None = None, rotate: bool = True, snap_gripper: bool = True, device: str | None = None,
             num_threads: int | None = None, offline: bool = False, repo: str | None = None,
             offline_frames: int = 256, speculative: bool | None = None, seeding: str = "per_task",
             console=None) -> dict:
    """Closed-loop success in BlockFind or LIBERO, with a per-task table, results.json, resumable episodes.jsonl.
    The arguments are `tinyvla eval`'s options (see `tinyvla eval --help`); returns what results.json holds."""
    if console is None:
        from rich.console import Console

        console = Console()
    shard_t = E.parse_shard(shard)
    for name, value, low in (("--num-envs", num_envs, 1), ("--episodes-per-task", episodes_per_task, 1),
                             ("--video", video, 0), ("--offline-frames", offline_frames, 1)):
        if value < low:
            raise UserError(f"{name} must be >= {low}, got {value}")
    if device is not None:
        _check_device(device)
    if out is not None:
        from tinyvla.core.atomic import check_output_dir

        check_output_dir(out)
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
        raise UserError(f"--suite is required: one of {', '.join(suites.EVAL_SUITES)}")

    from tinyvla.evaluation.results import EpisodeLog, check_run_identity, print_table, summarize, write_results

    suites.check_suite(suite)
    if ckpt == "expert" and suites.is_libero(suite):
        raise UserError("LIBERO has no scripted expert; evaluate a policy directory or the random baseline")
    # The cheap checks first: a bad task list should not wait for a model to load.
    setup = suites.setup_suite(suite, seed=seed, max_steps=max_steps, wait_steps=wait_steps, resolution=resolution,
                               rotate_180=rotate, snap_gripper=snap_gripper, seeding=seeding)
    task_ids = E.parse_tasks(tasks, len(setup.tasks))
    episodes = E.episode_list(setup, task_ids, episodes_per_task)

    policy, identity = load_policy(ckpt, device, ensemble=ensemble, ensemble_size=ensemble_size,
                                   execute_horizon=execute_horizon, speculative=speculative)
    ens = None if ckpt in BASELINES else policy.config.ensemble.to_dict()

    out = Path(out) if out is not None else Path("runs") / "eval" / f"{label(ckpt)}-{suite}"
    check_run_identity(out, {"suite": suite, "protocol": setup.protocol, "ensemble": ens, "checkpoint": identity})
    log = EpisodeLog(out)
    done = {k: r for k, r in log.load().items() if "error" not in r}  # errored episodes are tried again
    mine = E.shard_episodes(episodes, shard_t)
    todo = [e for e in mine if e.key not in done]
    n_envs = max(1, min(num_envs, len(todo)))
    if setup.libero and n_envs > 1:
        _warn_memory(n_envs, console)
    console.print(f"[bold]{suite}[/bold]: {len(mine)} episodes in shard {shard} ({len(mine) - len(todo)} done before), "
                  f"{len(todo)} to run on {n_envs} env(s); policy {identity.get('path') or ckpt}; out {out}",
                  soft_wrap=True)

    started = time.time()
    stats = run_closed_loop(policy, setup, todo, n_envs, log, out, video, console) if todo else {}

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
        # the policy's side: how it decoded, the colour jitter it trained with, its prompt's vision ids
        **({} if ckpt in BASELINES else policy.config.protocol_record()),
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
    print_table(summary, console, title=f"{suite}: {label(ckpt)}")
    rate = summary["success_rate"]
    note = ""
    if not summary["complete"]:
        note = (f" [yellow]({summary['episodes']} of {summary['episodes_expected']} episodes so far: run the other "
                "shards into the same --out)[/yellow]")
    console.print(f"success rate {'-' if rate is None else f'{100 * rate:.1f}%'} over {summary['episodes']} episodes"
                  f"{note}; wrote {path}")
    return results


def run_closed_loop(policy: PolicyInterface, setup, todo: list, n_envs: int, log, out: Path, video: int,
                    console) -> dict:
    """Run the episodes `todo` on n_envs slots, appending each finished one to `log`; returns the loop's timings."""
    from tinyvla.evaluation.rollout import run_episodes
    from tinyvla.evaluation.slots import make_slots
    from tinyvla.evaluation.video import video_factory

    progress = {"n": 0}

    def on_done(record: dict) -> None:
        log.append(record)
        progress["n"] += 1
        outcome = ("[red]error[/red]: " + record["error"]) if "error" in record else (
            "[green]success[/green]" if record["success"] else "[yellow]fail[/yellow]")
        console.print(f"  [{progress['n']}/{len(todo)}] task {record['task_id']} episode {record['episode']}: "
                      f"{outcome} after {record['steps']} steps ({record['seconds']:.1f} s)", highlight=False,
                      soft_wrap=True)

    slots = make_slots(setup, n_envs)
    return run_episodes(todo, policy, slots, on_done, video=video_factory(out / "videos", video, fps=setup.fps))


# ----------------------------------------------------------------------------------------------------------------------
# Which policy


def label(ckpt: str) -> str:
    if ckpt in BASELINES:
        return ckpt
    p = Path(ckpt)
    return (p.parent.name if p.name == "final" and p.parent.name else p.name) or "policy"


def load_policy(ckpt: str, device: str | None = None, ensemble: str | None = None, ensemble_size: int | None = None,
                execute_horizon: int | None = None, speculative: bool | None = None) -> tuple[PolicyInterface, dict]:
    """(policy, identity) for a baseline name or a policy directory, with eval's overrides of the policy's stored
    ensembling (None = the policy's) and decoding (None = the recipe's eval.speculative, else on)."""
    from tinyvla.evaluation.baselines import ExpertPolicy, RandomPolicy

    if ckpt in BASELINES:
        if ensemble is not None or ensemble_size is not None or execute_horizon is not None:
            raise UserError("--ensemble / --ensemble-size / --execute-horizon apply to policy directories, "
                            "not baselines")
        return (RandomPolicy() if ckpt == "random" else ExpertPolicy()), {"baseline": ckpt}
    if ckpt.startswith(("ws://", "wss://")):  # a `tinyvla serve` server: the model runs there (tinyvla/serving)
        from tinyvla.serving.remote import RemotePolicy

        remote = RemotePolicy(ckpt)
        remote.config = remote.config.replace(
            ensemble=_ensemble_overrides(remote.config, ensemble, ensemble_size, execute_horizon))
        return remote, remote.identity
    from tinyvla.evaluation.results import checkpoint_identity
    from tinyvla.policy import Policy
    from tinyvla.policy_dir import load_policy_dir

    if not Path(ckpt).exists() and not is_hub_id(ckpt):
        raise UserError(f"policy not found: {ckpt} (pass a directory written by tinyvla train/export such as "
                        "runs/NAME/final, or a baseline: random, expert)")
    config, model, processor, source = load_policy_dir(ckpt, device=device)
    if speculative is None:  # the recipe's choice, else the recipe default (a policy without a recipe)
        from tinyvla.recipe import EvalConfig

        recipe_eval = (config.meta.get("recipe") or {}).get("eval") or {}
        speculative = recipe_eval.get("speculative", EvalConfig.speculative)
    config = config.replace(ensemble=_ensemble_overrides(config, ensemble, ensemble_size, execute_horizon),
                            decoding={"speculative": speculative,
                                      "repetition_penalty": recipe_repetition_penalty(config.meta)})
    return Policy(config, model, processor, source=source), checkpoint_identity(source)


def recipe_repetition_penalty(meta: dict) -> float:
    """The repetition penalty a policy's recipe asks eval for (eval.repetition_penalty), else none (1.0)."""
    from tinyvla.recipe import EvalConfig

    recipe_eval = (meta.get("recipe") or {}).get("eval") or {}
    return float(recipe_eval.get("repetition_penalty", EvalConfig.repetition_penalty))


def _ensemble_overrides(config, weighting, size, execute_horizon) -> dict:
    """The ensembling settings eval changes, checked."""
    from tinyvla.core.ensemble import WEIGHTINGS

    changes = {}
    if weighting is not None:
        if weighting not in WEIGHTINGS:
            raise UserError(f"--ensemble {weighting!r}: choose one of {', '.join(WEIGHTINGS)}")
        changes["weighting"] = weighting
    if size is not None:
        if size < 1:
            raise UserError(f"--ensemble-size must be >= 1, got {size}")
        changes["max_chunks"] = size
    if execute_horizon is not None:
        h = config.prompt.horizon
        if not 1 <= execute_horizon <= h:
            raise UserError(f"--execute-horizon must be in 1..{h} (the policy's chunk horizon), got {execute_horizon}")
        changes["execute_horizon"] = execute_horizon
    return changes


def _check_device(device: str) -> None:
    import torch

    try:
        kind = torch.device(device).type
    except (RuntimeError, ValueError):
        raise UserError(f"--device {device!r} is not a device: use cpu, cuda, cuda:N or mps") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {device}: no CUDA GPU is visible on this machine; use --device cpu")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"--device {device}: MPS is not available on this machine; use --device cpu")


def _warn_memory(n_envs: int, console) -> None:
    try:
        total_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        return
    need = 2.3 * n_envs
    if need > 0.8 * total_gb:
        console.print(f"[yellow]warning: {n_envs} LIBERO workers need ~{need:.0f} GB (about 2.2 GB each); this machine "
                      f"has {total_gb:.0f} GB. Lower --num-envs if they get killed.[/yellow]")


# ----------------------------------------------------------------------------------------------------------------------
# Offline: action error on held-out dataset frames


def _evaluate_offline(ckpt, repo, out, n_frames, seed, device, console):
    """Action error of a policy on held-out episodes of a dataset -> OUT/offline.json + OUT/offline_pred_vs_true.png."""
    if repo is None:
        raise UserError("--offline needs --repo DIR: the dataset to score the policy on")
    if ckpt in BASELINES or ckpt.startswith(("ws://", "wss://")):
        raise UserError("--offline needs a policy directory; baselines and policy servers are evaluated closed-loop")
    policy, identity = load_policy(ckpt, device)
    out = Path(out) if out is not None else Path("runs") / "eval" / f"{label(ckpt)}-offline"
    return run_offline(policy, identity, repo, out, n_frames, seed, console)


def run_offline(policy, identity: dict, repo: str, out: Path, n_frames: int = 256, seed: int | None = None,
                console=None) -> dict:
    """Offline evaluation of a loaded policy (the part of `--offline` after loading)."""
    import numpy as np

    from tinyvla.core.atomic import write_json_atomic
    from tinyvla.evaluation.offline import offline_action_error, plot_predictions

    if console is None:
        from rich.console import Console

        console = Console()
    reader, frames, split = _heldout_frames(policy, repo)
    data_dim, policy_dim = int(np.asarray(reader.actions()).shape[-1]), policy.config.prompt.dim
    if data_dim != policy_dim:
        raise UserError(f"--repo {repo} has {data_dim}-dimensional actions but the policy writes {policy_dim}; "
                        "score it on the dataset it was trained on (or one with the same action layout)")
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

    recipe_dict = policy.config.meta.get("recipe")
    if recipe_dict:
        from tinyvla.recipe import recipe_from_dict
        from tinyvla.training.data import resolve_dataset, split_episodes

        recipe = recipe_from_dict(recipe_dict)
        if suites.is_blockfind(recipe.data.suite) and not Path(repo).exists():
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
