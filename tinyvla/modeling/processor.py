"""VLAProcessor: images + instruction -> the exact token ids and pixel patches a Qwen-VL model reads.

Why not the stock Qwen3VLProcessor / Qwen2_5_VLProcessor: they always build a video processor, which needs torchvision,
and the only torchvision wheel for our CPU torch does not import. This processor holds just a tokenizer and the Qwen2-VL
image processor's PIL backend (numpy; identical patch layout), so it runs the same with or without torchvision.

The prompt is the VLA-0 chat rendered in ChatML exactly as Qwen's chat template renders it:

    <|im_start|>system\n{system}<|im_end|>\n
    <|im_start|>user\n<|vision_start|><|image_pad|>*n<|vision_end|>...{instruction}<|im_end|>\n
    <|im_start|>assistant\n

with each image's single `<|image_pad|>` expanded to its token count grid_t * grid_h * grid_w / merge^2, as the
stock processor does. Training appends the action text and `<|im_end|>`.

Image size: images are given at their final size. The pixel budget is opened (min_pixels = (patch*merge)^2) so the
image processor never rescales an image whose sides are multiples of patch*merge (224, 256, 448 for the real models;
64, 128 for the tiny ones). Other sizes are rounded to the nearest multiple (Qwen's `smart_resize`). Note: Qwen3-VL's
published processor has min_pixels = 65536 and would upscale a single 224x224 image to 256x256; we do not.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from tinyvla.core.masking import IGNORE_INDEX
from tinyvla.errors import UserError

PROCESSOR_FILE = "tinyvla_processor.json"


def render_chat_text(system: str, num_images: int, instruction: str, action_text: str | None = None,
                     instruction_position: str = "after_images", vision_id: bool = False) -> str:
    """The chat as text, one `<|image_pad|>` per image; equals `tokenizer.apply_chat_template` with Qwen's template
    for the messages of `build_messages` (core/prompt.py says where the instruction goes and why). `vision_id`:
    "Picture N: " before each image, as Qwen2.5-VL's template renders with `add_vision_id=True`."""
    from tinyvla.core.prompt import vision_label

    images = "".join((vision_label(k + 1) if vision_id else "") + "<|vision_start|><|image_pad|><|vision_end|>"
                     for k in range(num_images))
    user = {"after_images": images + instruction, "before_images": instruction + images, "end": images}
    if instruction_position not in user:
        raise ValueError(f"instruction_position must be one of {', '.join(user)}, got {instruction_position!r}")
    # No system text: no system turn at all, as Qwen3-VL's template writes a chat without a system message.
    text = (f"<|im_start|>system\n{system}<|im_end|>\n" if system else "") + (
        f"<|im_start|>user\n{user[instruction_position]}<|im_end|>\n<|im_start|>assistant\n")
    if instruction_position == "end":  # the answer follows the instruction's last word, no separator
        text += instruction
    if action_text is not None:
        text += f"{action_text}<|im_end|>\n"
    return text


def _to_pil(image):
    from PIL import Image

    if isinstance(image, Image.Image):
        return image.convert("RGB")
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"images must be PIL images or uint8 (H, W, 3) arrays, got {arr.dtype} {arr.shape}")
    return Image.fromarray(arr)


class VLAProcessor:
    """Tokenizer + image processor for Qwen-VL models, without the video processor."""

    def __init__(self, tokenizer, image_processor, settings: dict | None = None):
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.settings = dict(settings or {})
        tok = tokenizer

        def tid(token: str) -> int:
            i = tok.convert_tokens_to_ids(token)
            if i is None or (tok.unk_token_id is not None and i == tok.unk_token_id):
                raise UserError(f"tokenizer lacks the Qwen token {token}; use a Qwen-VL tokenizer ('qwen' or 'tiny')")
            return int(i)

        self.image_token_id = tid("<|image_pad|>")
        self.video_token_id = tid("<|video_pad|>")
        self.vision_start_token_id = tid("<|vision_start|>")
        self.vision_end_token_id = tid("<|vision_end|>")
        self.im_start_token_id = tid("<|im_start|>")
        self.im_end_token_id = tid("<|im_end|>")
        self.endoftext_token_id = tid("<|endoftext|>")
        self.merge_size = int(image_processor.merge_size)
        self.patch_size = int(image_processor.patch_size)

    # ----------------------------------------------------------------------------------------------------- ids
    @property
    def pad_token_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return int(pad) if pad is not None else self.endoftext_token_id

    @property
    def end_of_turn_ids(self) -> list[int]:
        """What the assistant turn ends with; the model must learn to emit it after the action text."""
        return [self.im_end_token_id]

    @property
    def eos_token_ids(self) -> list[int]:
        """Stop generation on either: <|im_end|> ends a chat turn, <|endoftext|> ends a document."""
        return [self.im_end_token_id, self.endoftext_token_id]

    def encode_action_text(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    # ---------------------------------------------------------------------------------------------- images
    def image_token_count(self, height: int, width: int) -> int:
        """Tokens one image of this size becomes (after the processor's rounding to multiples of patch*merge)."""
        n_patches = self.image_processor.get_number_of_image_patches(height, width, {})
        return n_patches // self.merge_size**2

    def process_images(self, images: list) -> dict:
        out = self.image_processor(images=[_to_pil(im) for im in images], return_tensors="pt")
        return {"pixel_values": out["pixel_values"], "image_grid_thw": out["image_grid_thw"].long()}

    # ---------------------------------------------------------------------------------------------- prompts
    def build_prompt(self, images: list, instruction: str, system: str,
                     instruction_position: str = "after_images", vision_id: bool = False) -> dict:
        """Token ids of the chat up to the assistant generation prompt, plus the images' patches and grids."""
        if not images:
            raise ValueError("a VLA prompt needs at least one image")
        vision = self.process_images(images)
        text = render_chat_text(system, len(images), instruction, instruction_position=instruction_position,
                                vision_id=vision_id)
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        counts = (vision["image_grid_thw"].prod(-1) // self.merge_size**2).tolist()
        expanded, k = [], 0
        for i in ids:
            if i == self.image_token_id:
                expanded.extend([self.image_token_id] * counts[k])
                k += 1
            else:
                expanded.append(i)
        if k != len(images):  # the instruction or system text contained an image token, or the tokenizer is wrong
            raise ValueError(f"prompt has {k} image placeholders for {len(images)} images")
        return {"input_ids": expanded, **vision}

    def build_training_example(self, images: list, instruction: str, system: str, action_text: str,
                               instruction_position: str = "after_images", vision_id: bool = False) -> dict:
        """Prompt + action text + end of turn, with labels only on the answer.

        `action_span` = (start, end) token positions of the action text, for masked action augmentation.
        """
        prompt = self.build_prompt(images, instruction, system, instruction_position, vision_id)
        action = self.encode_action_text(action_text)
        ids = prompt["input_ids"] + action + self.end_of_turn_ids
        labels = [IGNORE_INDEX] * len(prompt["input_ids"]) + action + self.end_of_turn_ids
        start = len(prompt["input_ids"])
        return {**prompt, "input_ids": ids, "labels": labels, "action_span": (start, start + len(action))}

    def render_prompt_text(self, prompt) -> str:
        """Decoded prompt for inspection; each run of image tokens is shown once with its length."""
        ids = prompt["input_ids"] if isinstance(prompt, dict) else prompt
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        parts, text_ids, run = [], [], 0
        for i in list(ids) + [None]:
            if i == self.image_token_id:
                run += 1
                continue
            if run:  # close the image run; decode text in whole stretches so multi-byte characters survive
                parts.append(self.tokenizer.decode(text_ids, skip_special_tokens=False) + f"<|image_pad|>x{run}")
                text_ids, run = [], 0
            if i is not None:
                text_ids.append(i)
        parts.append(self.tokenizer.decode(text_ids, skip_special_tokens=False))
        return "".join(parts)

    # ---------------------------------------------------------------------------------------------- batches
    def mm_token_type_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        """1 at image tokens, 2 at video tokens, 0 elsewhere (padding included).

        transformers v5 computes the 3-D M-RoPE positions from this: each contiguous run of 1s consumes the next
        image_grid_thw row, in batch order. Without it a forward with image_grid_thw raises.
        """
        out = torch.zeros_like(input_ids)
        out[input_ids == self.image_token_id] = 1
        out[input_ids == self.video_token_id] = 2
        return out

    def collate(self, items: list[dict], padding_side: str = "right") -> dict:
        """Pad a list of build_prompt / build_training_example outputs into one batch of tensors.

        Training pads on the right; generation must pad on the left so every prompt ends where generation starts.
        """
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        if not items:
            raise ValueError("collate needs at least one item")
        has_labels = ["labels" in it for it in items]
        if any(has_labels) and not all(has_labels):
            raise ValueError("either every item has labels or none does")
        seqs = [torch.as_tensor(it["input_ids"], dtype=torch.long) for it in items]
        width = max(len(s) for s in seqs)
        input_ids = torch.full((len(items), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(items), width), dtype=torch.long)
        labels = torch.full((len(items), width), IGNORE_INDEX, dtype=torch.long) if all(has_labels) else None
        for b, s in enumerate(seqs):
            span = slice(width - len(s), width) if padding_side == "left" else slice(0, len(s))
            input_ids[b, span] = s
            attention_mask[b, span] = 1
            if labels is not None:
                lab = torch.as_tensor(items[b]["labels"], dtype=torch.long)
                if len(lab) != len(s):
                    raise ValueError(f"item {b}: {len(lab)} labels for {len(s)} input ids")
                labels[b, span] = lab
        batch = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "mm_token_type_ids": self.mm_token_type_ids(input_ids),
            "pixel_values": torch.cat([torch.as_tensor(it["pixel_values"]) for it in items], dim=0),
            "image_grid_thw": torch.cat([torch.as_tensor(it["image_grid_thw"]) for it in items], dim=0).long(),
        }
        if labels is not None:
            batch["labels"] = labels
        return batch

    # ---------------------------------------------------------------------------------------------- save / load
    def save_pretrained(self, directory) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(str(directory))
        self.image_processor.save_pretrained(str(directory))
        settings = {**self.settings, "processor": "VLAProcessor"}
        settings.update(patch_size=self.patch_size, merge_size=self.merge_size)
        tmp = directory / f".{PROCESSOR_FILE}.tmp"
        tmp.write_text(json.dumps(settings, indent=2) + "\n")
        tmp.replace(directory / PROCESSOR_FILE)

    @classmethod
    def from_pretrained(cls, name_or_dir: str, tokenizer=None) -> "VLAProcessor":
        """From a dir written by save_pretrained, a downloaded Qwen-VL checkpoint dir, or a hub id."""
        from transformers import AutoTokenizer

        local = Path(name_or_dir).expanduser()
        source = str(local) if local.is_dir() else name_or_dir
        settings = {}
        if local.is_dir() and (local / PROCESSOR_FILE).is_file():
            settings = json.loads((local / PROCESSOR_FILE).read_text())
        try:
            if tokenizer is None:
                tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=False)
            image_processor = _load_image_processor(source)
        except OSError as e:
            raise UserError(
                f"could not load the tokenizer/image processor of {name_or_dir!r} ({e.__class__.__name__}); "
                "offline? download it first (huggingface-cli download ID --local-dir DIR) and pass DIR"
            ) from e
        if not settings:  # a stock checkpoint: open the pixel budget so images keep their size (see module doc)
            image_processor = _open_pixel_budget(image_processor)
        return cls(tokenizer, image_processor, settings)


def _load_image_processor(source: str):
    # Always the PIL backend: it exists without torchvision, and training on a GPU box and evaluating on a CPU box
    # then see bit-identical pixels.
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    return Qwen2VLImageProcessorPil.from_pretrained(source)


def _open_pixel_budget(image_processor):
    factor = int(image_processor.patch_size) * int(image_processor.merge_size)
    size = dict(image_processor.size)
    size["shortest_edge"] = factor * factor
    image_processor.size = size
    return image_processor


def make_image_processor(
    patch_size: int, merge_size: int, temporal_patch_size: int, image_mean, image_std, max_pixels: int
):
    """An image processor matching a vision config (patch/merge/temporal sizes MUST equal the vision tower's)."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    factor = patch_size * merge_size
    return Qwen2VLImageProcessorPil(
        patch_size=patch_size,
        merge_size=merge_size,
        temporal_patch_size=temporal_patch_size,
        image_mean=list(image_mean),
        image_std=list(image_std),
        size={"shortest_edge": factor * factor, "longest_edge": int(max_pixels)},
    )


def processor_for_config(config, tokenizer, family: str | None = None) -> VLAProcessor:
    """A processor whose image settings follow the model config (tiny and arch:* models have no processor files)."""
    from tinyvla.modeling.registry import FAMILY_IMAGE_SETTINGS

    family = family or config.model_type
    fam = FAMILY_IMAGE_SETTINGS.get(family, FAMILY_IMAGE_SETTINGS["qwen3_vl"])
    v = config.vision_config
    image_processor = make_image_processor(
        patch_size=int(v.patch_size),
        merge_size=int(v.spatial_merge_size),
        temporal_patch_size=int(v.temporal_patch_size),
        image_mean=fam["image_mean"],
        image_std=fam["image_std"],
        max_pixels=fam["max_pixels"],
    )
    return VLAProcessor(tokenizer, image_processor, {"family": family})
