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


def export_policy(ckpt: str | Path, out: str | Path, merge_lora: bool = False, dtype: str = "fp32",
                  push_to_hub: str | None = None) -> Path:
    from tinyvla.core.atomic import write_text_atomic
    from tinyvla.modeling.loading import DTYPES
    from tinyvla.policy import Policy
    from tinyvla.policy_dir import save_policy_dir

    if dtype not in ("fp32", "bf16", "fp16"):
        raise UserError(f"--dtype must be fp32, bf16 or fp16, got {dtype!r}")
    out = Path(out)
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
            raise UserError(f"exported to {out}, but pushing to {push_to_hub} failed ({type(err).__name__}: "
                            f"{str(err).splitlines()[0][:120]}); run `huggingface-cli login` and retry") from None
    return out
