"""Action statistics and the dataset summary behind `tinyvla data stats`.

Everything here works on the (N, D) action array a reader returns from `actions()` (read without decoding an image),
so a 273k-frame dataset is summarised in seconds. The min/max per dimension drive the VLA-0 codec; q01/q99 show how
much of that range a few outliers stretch; the per-task bounds are the optional finer bins keyed by instruction.
"""

from __future__ import annotations

import numpy as np

from tinyvla.errors import UserError

SPARK = "▁▂▃▄▅▆▇█"


def check_finite(actions: np.ndarray, episode_index: np.ndarray, frame_index: np.ndarray) -> None:
    """Raise a UserError naming the first frame whose action holds NaN or inf."""
    finite = np.isfinite(actions)
    if finite.all():
        return
    row, dim = (int(v) for v in np.argwhere(~finite)[0])
    raise UserError(
        f"action of episode {int(episode_index[row])} frame {int(frame_index[row])} (dimension {dim}) is "
        f"{actions[row, dim]}; fix or drop that episode ({int((~finite.all(1)).sum())} bad frames in all)"
    )


def compute_action_stats(actions: np.ndarray) -> dict:
    """Per-dimension min, max, mean, std (population), q01, q99 of an (N, D) array, as lists of floats."""
    a = np.asarray(actions)
    if a.ndim != 2 or len(a) == 0:
        raise UserError(f"need a non-empty (frames, dims) action array, got shape {a.shape}")
    a64 = a.astype(np.float64)
    q01, q99 = np.quantile(a64, [0.01, 0.99], axis=0)
    return {
        "min": a64.min(0).tolist(),
        "max": a64.max(0).tolist(),
        "mean": a64.mean(0).tolist(),
        "std": a64.std(0).tolist(),
        "q01": q01.tolist(),
        "q99": q99.tolist(),
    }


def per_task_bounds(actions: np.ndarray, frame_task: np.ndarray) -> dict[str, dict[str, list[float]]]:
    """instruction -> {"min": [...], "max": [...]} over the frames of that task."""
    # A dict pass instead of np.unique: sorting 273k Python strings takes seconds, hashing them ~50 ms.
    ids: dict[str, int] = {}
    inverse = np.fromiter((ids.setdefault(str(t), len(ids)) for t in frame_task), dtype=np.int64,
                          count=len(frame_task))
    names = list(ids)
    order = np.argsort(inverse, kind="stable")
    starts = np.searchsorted(inverse[order], np.arange(len(names)))
    sorted_actions = np.asarray(actions, dtype=np.float64)[order]
    lo = np.minimum.reduceat(sorted_actions, starts, axis=0)
    hi = np.maximum.reduceat(sorted_actions, starts, axis=0)
    return {str(n): {"min": lo[i].tolist(), "max": hi[i].tolist()} for i, n in enumerate(names)}


def action_histograms(actions: np.ndarray, bins: int = 20) -> list[dict]:
    """Per dimension: {"edges": bins+1 floats, "counts": bins ints} over that dimension's own range."""
    out = []
    for d in range(actions.shape[1]):
        counts, edges = np.histogram(np.asarray(actions[:, d], dtype=np.float64), bins=bins)
        out.append({"edges": edges.tolist(), "counts": counts.tolist()})
    return out


def sparkline(counts) -> str:
    """Unicode bars for a histogram; an empty bin is a space so gaps (e.g. a binary gripper) stay visible."""
    counts = np.asarray(counts, dtype=np.float64)
    top = counts.max() if len(counts) else 0
    if top <= 0:
        return " " * len(counts)
    levels = np.ceil(counts / top * len(SPARK)).astype(int)
    return "".join(" " if c == 0 else SPARK[min(lv, len(SPARK)) - 1] for c, lv in zip(counts, levels))


def episode_bounds(episode_index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per frame: (first frame of its episode, episode length), from the (N,) episode index of frames in order."""
    ep = np.asarray(episode_index)
    change = np.flatnonzero(np.diff(ep) != 0) + 1
    starts = np.concatenate([[0], change])
    lengths = np.diff(np.concatenate([starts, [len(ep)]]))
    return np.repeat(starts, lengths), np.repeat(lengths, lengths)


def action_text_lengths(actions: np.ndarray, episode_index: np.ndarray, horizon: int, a_min, a_max,
                        bins: int = 1000, batch: int = 16384) -> dict:
    """Length of the VLA-0 action text (H*D ints in 0..bins, single spaces) for every frame's chunk.

    With the Qwen tokenizer every digit and every space is one token, so tokens == characters. Uses the project codec
    (global min/max bounds) so the numbers match what training feeds the model.
    """
    from tinyvla.core.codec import ActionCodec, ActionStats

    if horizon < 1:
        raise UserError(f"--horizon must be >= 1, got {horizon}")
    codec = ActionCodec(ActionStats(min=list(a_min), max=list(a_max)), horizon=horizon, bins=bins)
    starts, lengths = episode_bounds(episode_index)
    n, d = actions.shape
    lens = np.empty(n, dtype=np.int64)
    for lo in range(0, n, batch):
        frames = np.arange(lo, min(n, lo + batch))
        idx = np.minimum(frames[:, None] + np.arange(horizon)[None, :], (starts + lengths - 1)[frames, None])
        codes = codec.encode(actions[idx])  # (b, H, D)
        digits = 1 + (codes >= 10).astype(np.int64) + (codes >= 100) + (codes >= 1000) + (codes >= 10000)
        lens[frames] = digits.reshape(len(frames), -1).sum(1) + horizon * d - 1
    return {"horizon": horizon, "dims": d, "bins": bins, "frames": int(n), "min": int(lens.min()),
            "mean": float(lens.mean()), "max": int(lens.max())}


def dataset_summary(reader, horizon: int = 8, histogram_bins: int = 20) -> dict:
    """The JSON object printed by `tinyvla data stats --json`."""
    if len(reader) == 0:
        raise UserError("the dataset has no frames")
    actions = reader.actions()
    episode_index = reader.episode_index()
    if actions.ndim != 2 or len(actions) != len(episode_index):
        raise UserError(f"actions have shape {actions.shape} but the dataset has {len(episode_index)} frames")
    if hasattr(reader, "frame_index"):
        check_finite(actions, episode_index, reader.frame_index())
    action = compute_action_stats(actions)
    info = reader.info
    features = {
        name: {"shape": list(ft.get("shape", [])), "dtype": ft.get("dtype", "?")}
        for name, ft in info.get("features", {}).items()
    }
    return {
        "codebase_version": info.get("codebase_version"),
        "episodes": int(len(np.unique(episode_index))),
        "frames": int(len(actions)),
        "fps": info.get("fps"),
        "tasks": len(reader.task_names),
        "task_names": list(reader.task_names),
        "features": features,
        "keys": {"cameras": ", ".join(reader.cameras) or None,
                 **{role: getattr(reader, f"{role}_key", None) for role in ("state", "action")}},
        "action": action,
        "per_task_bounds": per_task_bounds(actions, reader.frame_task()),
        "histograms": action_histograms(actions, histogram_bins),
        "action_text_tokens": action_text_lengths(actions, episode_index, horizon, action["min"], action["max"]),
    }


def summary_to_action_stats(summary: dict) -> dict:
    """The `tinyvla.core.codec.ActionStats` JSON (what --save-stats writes) from a dataset summary."""
    out = {k: summary["action"][k] for k in ("min", "max", "mean", "std", "q01", "q99")}
    out["per_task"] = summary["per_task_bounds"]
    return out
