"""Offline evaluation on held-out dataset frames: how far the predicted chunks are from the demonstrations.

The fast-iteration check: seconds instead of simulator minutes. Note it is a poor predictor of closed-loop success
(FACTS §6 saw the loss fall smoothly while success jumped late); use it to catch broken runs, not to pick winners.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def offline_action_error(policy, reader, frames, batch_size: int = 8, return_predictions: bool = False) -> dict:
    """Per-dimension L1 / L2 of predicted vs. true (H, D) chunks, beside a predict-the-mean baseline."""
    horizon = policy.prompt.horizon
    preds, truths, valid = [], [], 0
    frames = [int(f) for f in frames]
    for start in range(0, len(frames), batch_size):
        samples = [reader.sample(f, horizon) for f in frames[start : start + batch_size]]
        texts = policy.generate_text([s["views"] for s in samples], None, [s["instruction"] for s in samples])
        for s, text in zip(samples, texts):
            valid += policy.grammar.accepts(text.strip())
            preds.append(policy.codec.text_to_actions(text, s["instruction"]))
            truths.append(np.asarray(s["actions"], dtype=np.float32))
    pred, true = np.stack(preds), np.stack(truths)
    mean = np.asarray(policy.codec.stats.mean if policy.codec.stats.mean is not None else true.mean((0, 1)))
    l1 = np.abs(pred - true).mean(axis=(0, 1))
    l2 = np.sqrt(((pred - true) ** 2).mean(axis=(0, 1)))
    base = np.abs(mean[None, None] - true).mean(axis=(0, 1))
    result = {
        "frames": len(frames),
        "l1": l1.tolist(), "l2": l2.tolist(), "l1_baseline": base.tolist(),
        "l1_mean": float(l1.mean()), "l2_mean": float(l2.mean()), "l1_baseline_mean": float(base.mean()),
        "grammar_valid_rate": valid / max(1, len(frames)),
    }
    if return_predictions:
        result["_pred"], result["_true"] = pred, true
    return result


def plot_predictions(pred: np.ndarray, true: np.ndarray, out_png: Path, max_points: int = 2000) -> None:
    """Predicted vs. true action, one panel per dimension (first step of each chunk)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    p, t = pred[:max_points, 0], true[:max_points, 0]
    dims = p.shape[1]
    fig, axes = plt.subplots(1, dims, figsize=(2.4 * dims, 2.6), squeeze=False)
    for d in range(dims):
        ax = axes[0][d]
        ax.scatter(t[:, d], p[:, d], s=4, alpha=0.5)
        lo, hi = float(min(t[:, d].min(), p[:, d].min())), float(max(t[:, d].max(), p[:, d].max()))
        ax.plot([lo, hi], [lo, hi], "k--", linewidth=0.8)
        ax.set_title(f"dim {d}")
        ax.set_xlabel("true")
        if d == 0:
            ax.set_ylabel("predicted")
    fig.tight_layout()
    fig.savefig(out_png, dpi=90)
    plt.close(fig)
