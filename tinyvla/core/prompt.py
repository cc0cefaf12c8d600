"""What the model reads: the VLA-0 system prompt, the chat messages, and how the two camera views are laid out.

The model sees one chat: a system turn with the prompt below (H, D, B filled in), a user turn with the image(s) then the
task instruction (or the instruction first, a recipe option), and — in training — an assistant turn holding the action text. Nothing else: no robot state, no
history (VLA-0 found neither helps on LIBERO).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# The exact words of the official VLA-0 code; changing them changes what a fine-tuned checkpoint expects.
SYSTEM_PROMPT_TEMPLATE = (
    "Analyze the input image and predict robot actions for the next {H} timesteps. Each action has {D} dimensions. "
    "Output a single sequence of {N} integers (0-{B} each), representing the {H} timesteps sequentially. "
    "Provide only space separated numbers. Nothing else."
)


def system_prompt(horizon: int, dim: int, bins: int) -> str:
    return SYSTEM_PROMPT_TEMPLATE.format(H=horizon, D=dim, N=horizon * dim, B=bins)


@dataclass(frozen=True)
class PromptSpec:
    """Everything about the prompt that a checkpoint depends on; saved in policy.json."""

    horizon: int = 8
    dim: int = 7
    bins: int = 1000
    tile_views: bool = True  # one side-by-side image (VLA-0 default) or two separate images
    # Instruction before the images (VLA-0: after). With causal attention only tokens after the instruction can read
    # it; put first, every image token can condition on it (what a prefix-LM VLA such as PaliGemma's gets for free).
    instruction_first: bool = False

    @property
    def system(self) -> str:
        return system_prompt(self.horizon, self.dim, self.bins)

    @property
    def num_images(self) -> int:
        return 1 if self.tile_views else 2


def tile_views(image: np.ndarray, wrist_image: np.ndarray) -> np.ndarray:
    """Third-person view left, wrist view right, one (H, W1 + W2, 3) image. Heights must match."""
    if image.shape[0] != wrist_image.shape[0]:
        raise ValueError(f"views must have the same height to tile, got {image.shape} and {wrist_image.shape}")
    return np.concatenate([image, wrist_image], axis=1)


def view_images(image: np.ndarray, wrist_image: np.ndarray, tile: bool) -> list[np.ndarray]:
    """The images the model reads, in order: one tiled image, or [third-person, wrist]."""
    return [tile_views(image, wrist_image)] if tile else [image, wrist_image]


def build_messages(instruction: str, num_images: int, spec: PromptSpec, action_text: str | None = None) -> list[dict]:
    """Chat messages in the Hugging Face multimodal format; images are placeholders filled by the processor."""
    images = [{"type": "image"} for _ in range(num_images)]
    text = [{"type": "text", "text": instruction}]
    user = text + images if spec.instruction_first else images + text
    messages = [
        {"role": "system", "content": [{"type": "text", "text": spec.system}]},
        {"role": "user", "content": user},
    ]
    if action_text is not None:
        messages.append({"role": "assistant", "content": [{"type": "text", "text": action_text}]})
    return messages
