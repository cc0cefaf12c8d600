"""Export: a training output -> a self-contained policy directory others can load (and a model card).

    tinyvla export runs/tiny-cpu/final --out policies/tiny-cpu [--merge-lora] [--dtype bf16] [--push-to-hub ORG/NAME]
"""

from __future__ import annotations

import json
from pathlib import Path

from tinyvla.errors import UserError


def find_results(ckpt: Path) -> list[dict]:
    """results.json files of evaluations run on this checkpoint (its own dir, or eval* dirs next to it)."""
    found = []
    for candidate in [ckpt / "results.json", *sorted(ckpt.parent.glob("eval*/results.json")),
                      *sorted(ckpt.glob("eval*/results.json"))]:
        if candidate.is_file():
            try:
                found.append(json.loads(candidate.read_text()))
            except json.JSONDecodeError:
                continue
    return found


def model_card(cfg: dict, results: list[dict]) -> str:
    stats = cfg["action_stats"]
    lines = [
        "---", "library_name: tinyvla", "tags: [robotics, vla, vision-language-action, libero]", "---", "",
        f"# tinyvla policy ({cfg.get('base_model', 'unknown base')})", "",
        "A vision-language model fine-tuned the VLA-0 way: it reads two camera views and an instruction and writes the "
        f"next {cfg['horizon']} x {cfg['dim']} actions as integers 0..{cfg['bins']}.", "",
        "```python", "from tinyvla import Policy", "policy = Policy.from_pretrained(\"PATH_OR_REPO\")",
        "action = policy.act({\"image\": image, \"wrist_image\": wrist}, \"pick up the block that is red\")", "```", "",
        "## Actions", "",
        f"- horizon H = {cfg['horizon']}, dimensions D = {cfg['dim']}, bins B = {cfg['bins']}, "
        f"gripper dimension {cfg.get('gripper_dim')}",
        f"- per-dimension min: {[round(x, 4) for x in stats['min']]}",
        f"- per-dimension max: {[round(x, 4) for x in stats['max']]}",
        f"- ensembling: {cfg.get('ensemble')}", "",
    ]
    ds = cfg.get("dataset") or {}
    if ds:
        lines += [f"Trained on `{ds.get('repo')}` (suite {ds.get('suite')}).", ""]
    if results:
        lines += ["## Evaluation", "", "| suite | success rate | episodes |", "|---|---|---|"]
        for r in results:
            n = sum(t.get("episodes", 0) for t in r.get("tasks", []))
            lines.append(f"| {r.get('suite')} | {100 * r.get('success_rate', 0):.1f}% | {n} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def check_export_target(out: Path, force: bool) -> None:
    """--out must be new, empty, or (with --force) an earlier export: an export never deletes anything else."""
    from tinyvla.core.atomic import check_output_dir

    check_output_dir(out)
    if not out.is_dir() or not any(out.iterdir()):
        return
    previous = (out / "policy.json").is_file() and (out / "model").is_dir()
    if not previous:
        raise UserError(f"--out {out} is a non-empty directory that is not a tinyvla policy; choose a new or empty "
                        "directory (export replaces the whole directory)")
    if not force:
        raise UserError(f"--out {out} already holds a policy; pass --force to replace it, or choose another --out")


def export_policy(ckpt: str | Path, out: str | Path, merge_lora: bool = False, dtype: str = "fp32",
                  push_to_hub: str | None = None, force: bool = False) -> Path:
    from tinyvla.core.atomic import write_text_atomic
    from tinyvla.modeling.loading import DTYPES
    from tinyvla.modeling.registry import DTYPE_CHOICES
    from tinyvla.policy import Policy
    from tinyvla.policy_dir import save_policy_dir

    if dtype not in DTYPE_CHOICES:
        raise UserError(f"--dtype must be one of {', '.join(DTYPE_CHOICES)}, got {dtype!r}")
    out = Path(out)
    check_export_target(out, force)
    policy = Policy.from_pretrained(ckpt, device="cpu")
    src = Path(policy.source)
    if out.resolve() == src.resolve():
        raise UserError("--out must differ from the checkpoint directory")
    torch_dtype = DTYPES[dtype]
    recipe = policy.meta.get("recipe")
    save_policy_dir(policy, out, recipe=recipe, merge_lora=merge_lora, dtype=torch_dtype,
                    extra={"exported_from": str(src), "dtype": dtype})
    cfg = json.loads((out / "policy.json").read_text())
    write_text_atomic(out / "README.md", model_card(cfg, find_results(src)))
    if push_to_hub:
        try:
            from huggingface_hub import HfApi

            api = HfApi()
            api.create_repo(push_to_hub, exist_ok=True)
            api.upload_folder(folder_path=str(out), repo_id=push_to_hub)
        except Exception as err:  # offline or unauthorised: the local export is complete either way
            raise UserError(f"exported to {out}, but pushing to {push_to_hub} failed: {_push_hint(err)}") from None
    return out


def _push_hint(err: Exception) -> str:
    """What went wrong with a hub upload and the fix for that case (not always `login`)."""
    import os

    text = " ".join(str(err).split())
    status = getattr(getattr(err, "response", None), "status_code", None)
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes") or type(err).__name__ in (
        "OfflineModeIsEnabled", "ConnectionError", "ConnectTimeout", "ReadTimeout", "LocalEntryNotFoundError")
    if offline or "offline" in text.lower() or "connect" in text.lower():
        return "the hub cannot be reached from here (HF_HUB_OFFLINE is set or there is no network); upload the " \
               "directory later from a connected machine with: huggingface-cli upload REPO DIR"
    if status in (401, 403):
        return f"the hub refused the upload (HTTP {status}); log in with a write token: huggingface-cli login"
    return f"{type(err).__name__}: {text}"
