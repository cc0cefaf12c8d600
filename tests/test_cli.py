"""The command line: every verb listed, --version, inspect-tokens JSON, and one clear line + exit 2 on bad input."""

import json
from pathlib import Path

import numpy as np
import pytest

from tinyvla import __version__
from tinyvla.cli.main import main

VERBS = ["data", "train", "eval", "export", "inspect-tokens", "bench", "doctor"]


def run(capsys, *argv):
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_help_lists_every_verb_with_an_example(capsys):
    rc, out, _ = run(capsys, "--help")
    assert rc == 0
    for verb in VERBS:
        assert verb in out
    assert out.count("e.g. tinyvla") >= len(VERBS)


def test_version(capsys):
    rc, out, _ = run(capsys, "--version")
    assert rc == 0 and out.strip() == f"tinyvla {__version__}"


@pytest.mark.parametrize("recipe_text, extra, message", [
    ("train:\n  lr: [1, 2\n", [], "malformed YAML at line"),
    ("trian:\n  lr: 1.0\n", [], "unknown key 'trian' in the recipe (did you mean 'train'?)"),
    ("train:\n  batch_size: eight\n", [], "train.batch_size: expected int"),
    ("train:\n  lr: 1.0e-4\n", ["--set", "train.lrate=1"], "--set train.lrate: no such key (did you mean 'lr'?)"),
])
def test_bad_recipes_exit_2_with_one_line(tmp_path, capsys, recipe_text, extra, message):
    path = tmp_path / "r.yaml"
    path.write_text(recipe_text)
    rc, out, err = run(capsys, "train", str(path), *extra)
    assert rc == 2
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert "Traceback" not in err + out


def test_empty_text_exits_2(capsys):
    rc, _, err = run(capsys, "inspect-tokens", "--text", "  ")
    assert rc == 2 and "--text is empty" in err and err.count("\n") == 1


def test_inspect_tokens_json_with_the_real_qwen_vocabulary(capsys):
    codes = np.arange(56) * 17 % 1001
    text = " ".join(map(str, codes))
    rc, out, _ = run(capsys, "inspect-tokens", "--tokenizer", "qwen", "--json", "--actions", text, "--text", text)
    assert rc == 0
    report = json.loads(out)
    assert report["action_token_count"] == len(text)  # one token per character: digits and spaces
    assert report["one_token_per_char"] is True
    assert report["grammar_ok"] is True
    assert report["parsed"] == codes.reshape(8, 7).tolist()
    assert report["total_token_count"] == report["counts"]["prompt"] + len(text) + 1
    assert report["counts"]["vision"] == 98 + 2  # one 448x224 tiled image at patch 16, merge 2, + start/end markers

    rc, out, _ = run(capsys, "inspect-tokens", "--tokenizer", "qwen", "--json", "--text", "12 0500 7")
    report = json.loads(out)
    assert report["grammar_ok"] is False and len(report["parsed"]) == 8


def test_inspect_tokens_tables(capsys):
    rc, out, _ = run(capsys, "inspect-tokens", "recipes/tiny-cpu.yaml", "--text", "1 2 3")
    assert rc == 0
    for piece in ("prompt as the model reads it", "token counts", "masked training preview", "rejected"):
        assert piece in out


def test_missing_curriculum_stage_is_one_line_before_any_data(tmp_path, capsys):
    root = Path(__file__).resolve().parents[1]
    data = tmp_path / "data"
    rc, out, err = run(capsys, "train", str(root / "recipes" / "tiny-cpu-blockfind.yaml"),
                       "--set", f"model.init_from={tmp_path / 'no-such-run' / 'final'}",
                       "--set", f"data.repo={data}", "--out", str(tmp_path / "out"))
    assert rc == 2 and "model.init_from: no policy at" in err and err.count("\n") == 1
    assert "Traceback" not in err + out
    assert not data.exists()  # failed before generating 3,000 demonstrations


def test_unknown_option_is_a_usage_error_not_a_traceback(capsys):
    rc, out, err = run(capsys, "eval", "--no-such-flag", "x")
    assert rc == 2 and "No such option: --no-such-flag" in err
    assert "Traceback" not in err + out
