"""`tinyvla inspect-tokens`: exactly what the model reads and writes, token by token.

Needs no weights: the tokenizer ("qwen" = the real Qwen vocabulary, built offline) and the model's image settings
(from the project's architecture configs, or the tiny ones) are enough to count every token of the prompt.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import typer

from tinyvla.errors import UserError

DEFAULT_INSTRUCTION = "put the black bowl on the plate"


def _processor_for(model_name: str, tokenizer_name: str | None):
    """A processor with the model's real image settings, without loading any weights."""
    from tinyvla.modeling.processor import processor_for_config
    from tinyvla.modeling.registry import arch_config, resolve_model_name, tiny_config
    from tinyvla.tokenizers import load_tokenizer

    ref = resolve_model_name(model_name)
    if ref.kind == "tiny":
        tok = load_tokenizer(tokenizer_name or "tiny")
        return processor_for_config(tiny_config(ref.family, tok), tok, ref.family), ref
    if ref.kind in ("hub", "arch") and ref.family is not None:
        # Published Qwen-VL models: their architecture is in the project and their vocabulary is Qwen's.
        short = ref.name.split(":", 1)[-1]
        tok = load_tokenizer(tokenizer_name or "qwen")
        return processor_for_config(arch_config("arch:" + short), tok, ref.family), ref
    from tinyvla.modeling.processor import VLAProcessor

    tok = load_tokenizer(tokenizer_name) if tokenizer_name else None
    return VLAProcessor.from_pretrained(ref.source, tokenizer=tok), ref


def _parse_actions(text: str, codec) -> np.ndarray:
    """--actions: H*D ints (used as codes) or floats (encoded with the stats)."""
    pieces = text.replace(",", " ").split()
    try:
        values = [float(p) for p in pieces]
    except ValueError:
        raise UserError(f"--actions must be numbers separated by spaces or commas, got {text!r}") from None
    n = codec.horizon * codec.dim
    if len(values) != n:
        raise UserError(f"--actions needs exactly H*D = {n} numbers for this recipe, got {len(values)}")
    arr = np.asarray(values).reshape(codec.horizon, codec.dim)
    if all(v.is_integer() for v in values) and any(abs(v) > 1 for v in values):  # codes, not actions
        bad = [v for v in values if not 0 <= v <= codec.bins]
        if bad:
            raise UserError(f"--actions codes must be ints in 0..{codec.bins} (actions.bins), got {bad[0]:g}")
        return arr.astype(np.int64)
    lo, hi = codec.bounds()
    outside = np.argwhere((arr < lo) | (arr > hi))
    if len(outside):
        t, d = outside[0]
        raise UserError(f"--actions value {arr[t, d]:g} (step {t}, dim {d}) is outside the stats' bounds "
                        f"[{lo[d]:g}, {hi[d]:g}] and would be clipped; pass --stats for other bounds")
    return codec.encode(arr)


def inspect_tokens(
    recipe: Path | None = typer.Argument(None, help="Recipe whose model, H, D, B and image layout to use."),
    model: str | None = typer.Option(None, "--model", help="Model name (overrides the recipe's), e.g. qwen3-2b, tiny-qwen3."),
    tokenizer: str | None = typer.Option(None, "--tokenizer", help="'qwen' (real vocabulary, offline), 'tiny', or a path."),
    set_: list[str] = typer.Option([], "--set", help="Recipe override, e.g. --set actions.horizon=4."),
    instruction: str = typer.Option(DEFAULT_INSTRUCTION, "--instruction", help="The task text."),
    actions: str | None = typer.Option(None, "--actions", help="An action chunk: H*D ints 0..B, or floats (encoded with the stats)."),
    stats: Path | None = typer.Option(None, "--stats", help="Action stats JSON for float --actions (default: [-1, 1] per dim)."),
    text: str | None = typer.Option(None, "--text", help="A model output to parse and check against the grammar."),
    seed: int = typer.Option(0, "--seed", help="Seed of the example chunk and the masking preview."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of tables."),
):
    """Show the rendered prompt, the action tokens, token counts, a masked-training preview, and parse --text."""
    from tinyvla.core.codec import ActionCodec, ActionStats
    from tinyvla.core.grammar import ActionGrammar
    from tinyvla.core.masking import IGNORE_INDEX, mask_action_tokens
    from tinyvla.recipe import load_recipe, recipe_from_dict, apply_overrides
    from tinyvla.policy_dir import specs_from_recipe

    if text is not None and not text.strip():
        raise UserError("--text is empty: pass the model output to parse, e.g. --text \"500 500 500 ...\"")
    cfg = load_recipe(recipe, list(set_)) if recipe else recipe_from_dict(apply_overrides({}, list(set_)))
    prompt, image_spec = specs_from_recipe(cfg)
    processor, ref = _processor_for(model or cfg.model.name, tokenizer or cfg.model.tokenizer)
    codec_stats = ActionStats.load(stats) if stats else ActionStats(min=[-1.0] * prompt.dim, max=[1.0] * prompt.dim)
    if codec_stats.dim != prompt.dim:
        raise UserError(f"--stats has {codec_stats.dim} dimensions but the recipe's actions.dim is {prompt.dim}")
    codec = ActionCodec(codec_stats, horizon=prompt.horizon, bins=prompt.bins)

    rng = np.random.default_rng(seed)
    codes = _parse_actions(actions, codec) if actions else rng.integers(0, prompt.bins + 1, (prompt.horizon, prompt.dim))
    action_text = codec.to_text(codes)

    # The prompt exactly as the model reads it (blank images of the recipe's size: only their token count matters).
    side = image_spec.image_size
    blank = np.zeros((side, side, 3), np.uint8)
    from tinyvla.inputs import encode_prompt

    item = encode_prompt(processor, prompt, image_spec, [blank] * prompt.num_views, instruction)
    prompt_ids = list(item["input_ids"])
    action_ids = processor.encode_action_text(action_text)
    tail = list(processor.end_of_turn_ids)
    tok = processor.tokenizer
    vision_ids = {processor.image_token_id, processor.vision_start_token_id, processor.vision_end_token_id}
    counts = {
        "system": len(tok(f"<|im_start|>system\n{prompt.system}<|im_end|>\n", add_special_tokens=False)["input_ids"])
        if prompt.system else 0,
        "instruction": len(tok(instruction, add_special_tokens=False)["input_ids"]),
        "vision": sum(1 for i in prompt_ids if i in vision_ids),
        "action": len(action_ids),
    }
    counts["prompt"] = len(prompt_ids)
    counts["total"] = len(prompt_ids) + len(action_ids) + len(tail)
    pieces = [tok.decode([i]) for i in action_ids]

    from tinyvla.inputs import mask_token_id

    masked_inputs, masked_labels = mask_action_tokens(
        action_ids, action_ids, action_start=0, action_len=len(action_ids),
        mask_token_id=mask_token_id(processor, cfg.actions.mask_char),
        mask_prob=cfg.actions.mask_prob, unmasked_fraction=0.0, rng=np.random.default_rng(seed),
    ) if cfg.actions.mask_prob > 0 else (action_ids, action_ids)
    masked_text = tok.decode(list(masked_inputs))
    supervised = "".join(p if lab != IGNORE_INDEX else "_" for p, lab in zip(pieces, masked_labels))

    report = {
        "model": ref.name, "tokenizer": type(tok).__name__, "vocab_size": len(tok),
        "horizon": prompt.horizon, "dim": prompt.dim, "bins": prompt.bins, "tile_views": prompt.tile_views,
        "instruction_position": prompt.instruction_position, "vision_id": prompt.vision_id,
        "image_size": side, "system_prompt": prompt.system, "instruction": instruction,
        "prompt_text": processor.render_prompt_text(prompt_ids),
        "prompt_ids": [int(i) for i in prompt_ids],  # to compare with another tool's rendering, token by token
        "action_text": action_text,
        "action_tokens": [{"id": int(i), "piece": p} for i, p in zip(action_ids, pieces)],
        "action_token_count": len(action_ids), "action_char_count": len(action_text),
        "one_token_per_char": len(action_ids) == len(action_text),
        "counts": counts, "total_token_count": counts["total"],
        "masked_preview": {"mask_prob": cfg.actions.mask_prob, "input": masked_text, "supervised": supervised},
    }
    if text is not None:
        grammar = ActionGrammar(prompt.horizon, prompt.dim, prompt.bins)
        parsed = codec.parse(text)
        report.update({"text": text, "parsed": parsed.tolist(), "grammar_ok": grammar.accepts(text.strip()),
                       "decoded": np.round(codec.decode(parsed), 6).tolist()})

    if as_json:
        typer.echo(json.dumps(report))
        return
    _print_report(report)


def _print_report(r: dict) -> None:
    from rich.console import Console
    from rich.panel import Panel
    from rich.table import Table

    con = Console()
    con.print(Panel(r["prompt_text"], title=f"prompt as the model reads it ({r['model']}, {r['tokenizer']})", expand=False))
    table = Table(title=f"action text: {r['action_token_count']} tokens for {r['action_char_count']} characters")
    table.add_column("#", justify="right")
    table.add_column("id", justify="right")
    table.add_column("piece")
    for k, t in enumerate(r["action_tokens"][:24]):
        table.add_row(str(k), str(t["id"]), repr(t["piece"]))
    if len(r["action_tokens"]) > 24:
        table.add_row("…", "…", f"{len(r['action_tokens']) - 24} more")
    con.print(table)
    counts = Table(title="token counts")
    for key in r["counts"]:
        counts.add_column(key, justify="right")
    counts.add_row(*[str(v) for v in r["counts"].values()])
    con.print(counts)
    m = r["masked_preview"]
    con.print(f"[bold]masked training preview[/bold] (mask_prob {m['mask_prob']}):")
    con.print(f"  input      {m['input']}")
    con.print(f"  supervised {m['supervised']}   ('_' = label ignored)")
    if "text" in r:
        ok = "[green]accepted[/green]" if r["grammar_ok"] else "[red]rejected[/red]"
        con.print(f"[bold]--text[/bold] grammar: {ok}; parses to (H x D ints):")
        for row in r["parsed"]:
            con.print("  " + " ".join(f"{v:4d}" for v in row))
