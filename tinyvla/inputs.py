"""Input transforms: camera frames + instruction (+ action text in training) -> token ids, labels and pixels.

Training and inference call the same functions, so a policy reads exactly what it was trained on. The prompt is the
chat the processor renders (system, user = images then instruction, assistant generation prompt; the instruction may
sit elsewhere: `PromptSpec.instruction_position`); in training the action text and the end-of-turn token follow it,
and only those are supervised.
"""

from __future__ import annotations

import numpy as np

from tinyvla.core.masking import mask_action_tokens
from tinyvla.core.prompt import PromptSpec
from tinyvla.data.transforms import ImageSpec, model_images, observation_views


def encode_prompt(processor, prompt: PromptSpec, image_spec: ImageSpec, views: list[np.ndarray],
                  instruction: str, rng: np.random.Generator | None = None) -> dict:
    """One observation (its camera views, in order) -> {input_ids (list), pixel_values, image_grid_thw}."""
    images = model_images(views, image_spec, rng)
    return processor.build_prompt(images, instruction, prompt.system, prompt.instruction_position, prompt.vision_id)


def encode_training_example(processor, prompt: PromptSpec, image_spec: ImageSpec, sample: dict, action_text: str,
                            rng: np.random.Generator | None, mask_prob: float = 0.0, mask_token_id: int | None = None,
                            unmasked_fraction: float = 0.1) -> dict:
    """A dataset sample + its action text -> model inputs with labels on the action text and end-of-turn only.

    `rng` given = training: random crop, colour jitter and masked action augmentation (when mask_prob > 0).
    """
    views = observation_views(sample, image_spec)
    images = model_images(views, image_spec, rng)  # the rng's first use: the crop
    item = processor.build_training_example(images, sample["instruction"], prompt.system, action_text,
                                            prompt.instruction_position)
    start, end = item.pop("action_span")
    input_ids, labels = item["input_ids"], item["labels"]
    if rng is not None and mask_prob > 0:
        input_ids, labels = mask_action_tokens(
            input_ids, labels, action_start=start, action_len=end - start, mask_token_id=mask_token_id,
            mask_prob=mask_prob, unmasked_fraction=unmasked_fraction, rng=rng,
        )
    item["input_ids"] = [int(x) for x in input_ids]
    item["labels"] = [int(x) for x in labels]
    return item


def mask_token_id(processor, mask_char: str) -> int:
    ids = processor.encode_action_text(mask_char)
    if len(ids) != 1:
        from tinyvla.errors import UserError

        raise UserError(f"actions.mask_char {mask_char!r} is {len(ids)} tokens for this tokenizer; pick a character "
                        "that is a single token, such as '?'")
    return ids[0]
