"""What the model reads: the VLA-0 system prompt, the chat messages, and how the camera views are laid out.

The model sees one chat: a system turn with the prompt below (H, D, B filled in; or none, SYSTEM_PROMPTS), a user turn with the image(s) then the
task instruction, and an assistant turn holding the action text (in training; at inference the model writes it).
Nothing else: no robot state, no history (VLA-0 found neither helps on LIBERO). Where the instruction sits is a
recorded setting (INSTRUCTION_POSITIONS); VLA-0's place is the default.
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


# Where the instruction goes. With causal attention a token reads only what comes before it, and the token that predicts
# the first action digit reads everything, but only through attention a model has to learn:
#   after_images   user turn = images, instruction (VLA-0; what a pretrained VLM expects)
#   before_images  user turn = instruction, images: every image token can condition on the words (a prefix-LM VLA such
#                  as PaliGemma's gets this for free)
#   end            user turn = images; the instruction opens the assistant turn and the action integers follow its last
#                  word directly, so the first action digit is predicted AT the instruction's last token. A model
#                  trained from scratch needs no attention to carry that word to the answer — the step that a tiny
#                  model never learned in the VLA-0 layout (BENCHMARKS.md, named colours).
INSTRUCTION_POSITIONS = ("after_images", "before_images", "end")


# The system turn: VLA-0's words, or none at all. "none" is for models trained from random weights (the tiny CPU
# recipes), where the 68 constant tokens of VLA-0's turn carry no information but are a third of every sequence (and
# of every step's compute); a pretrained VLM fine-tuned the VLA-0 way keeps "vla0".
SYSTEM_PROMPTS = ("vla0", "none")


def system_prompt(horizon: int, dim: int, bins: int, kind: str = "vla0") -> str:
    """The system turn's text ("" = no system turn)."""
    return SYSTEM_PROMPT_TEMPLATE.format(H=horizon, D=dim, N=horizon * dim, B=bins) if kind == "vla0" else ""


@dataclass(frozen=True)
class PromptSpec:
    """Everything about the prompt that a checkpoint depends on; saved in policy.json."""

    horizon: int = 8
    dim: int = 7
    bins: int = 1000
    tile_views: bool = True  # one side-by-side image (VLA-0 default) or one image per view
    instruction_position: str = "after_images"  # one of INSTRUCTION_POSITIONS
    num_views: int = 2  # camera views per observation (1-3)
    # "Picture N: " before each image, as Qwen2.5-VL's chat template writes it with add_vision_id=True (the official
    # VLA-0 checkpoint was trained so: 5 more prompt tokens per image). Off = tinyvla's default.
    vision_id: bool = False
    system_prompt: str = "vla0"  # one of SYSTEM_PROMPTS

    def __post_init__(self):
        if self.instruction_position not in INSTRUCTION_POSITIONS:
            raise ValueError(f"instruction_position must be one of {', '.join(INSTRUCTION_POSITIONS)}, "
                             f"got {self.instruction_position!r}")
        if self.system_prompt not in SYSTEM_PROMPTS:
            raise ValueError(f"system_prompt must be one of {', '.join(SYSTEM_PROMPTS)}, got {self.system_prompt!r}")

    @property
    def system(self) -> str:
        """The system turn's text; "" when the prompt has none."""
        return system_prompt(self.horizon, self.dim, self.bins, self.system_prompt)

    @property
    def num_images(self) -> int:
        return 1 if self.tile_views else self.num_views


def tile_views(*views: np.ndarray) -> np.ndarray:
    """The views side by side, left to right in camera order (VLA-0: third-person, then wrist): one (H, W1 + ... , 3)
    image. Heights must match. Side by side keeps each view's pixels and the vision encoder's patch grid as they are;
    three 224-px views make one 672 x 224 image."""
    if len({v.shape[0] for v in views}) > 1:
        raise ValueError(f"views must have the same height to tile, got {', '.join(str(v.shape) for v in views)}")
    return np.concatenate(views, axis=1)


def view_images(*views: np.ndarray, tile: bool) -> list[np.ndarray]:
    """The images the model reads, in order: one tiled image, or the views one by one."""
    return [tile_views(*views)] if tile and len(views) > 1 else list(views)


def vision_label(index: int) -> str:
    """The label Qwen2.5-VL's chat template puts before image `index` (1-based) when add_vision_id is set."""
    return f"Picture {index}: "


def build_messages(instruction: str, num_images: int, spec: PromptSpec, action_text: str | None = None) -> list[dict]:
    """Chat messages in the Hugging Face multimodal format; images are placeholders filled by the processor.

    The "Picture N: " labels of `spec.vision_id` are not in the messages: the chat template adds them
    (`apply_chat_template(..., add_vision_id=True)`), as the processor's `render_chat_text` does.

    With `instruction_position="end"` the last message is an assistant turn that starts with the instruction (render it
    with `continue_final_message=True` when there is no action text yet).
    """
    images = [{"type": "image"} for _ in range(num_images)]
    text = [{"type": "text", "text": instruction}]
    position = spec.instruction_position
    user = text + images if position == "before_images" else images if position == "end" else images + text
    messages = [{"role": "system", "content": [{"type": "text", "text": spec.system}]}] if spec.system else []
    messages.append({"role": "user", "content": user})
    answer = (instruction if position == "end" else "") + (action_text or "")
    if answer:
        messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return messages
