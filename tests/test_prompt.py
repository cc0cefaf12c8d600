import numpy as np
import pytest

from tinyvla.core.prompt import PromptSpec, build_messages, system_prompt, tile_views, view_images


def test_system_prompt_exact_words():
    assert system_prompt(8, 7, 1000) == (
        "Analyze the input image and predict robot actions for the next 8 timesteps. Each action has 7 dimensions. "
        "Output a single sequence of 56 integers (0-1000 each), representing the 8 timesteps sequentially. "
        "Provide only space separated numbers. Nothing else."
    )


def test_tiling_puts_wrist_on_the_right():
    a = np.zeros((4, 4, 3), np.uint8)
    b = np.full((4, 6, 3), 255, np.uint8)
    t = tile_views(a, b)
    assert t.shape == (4, 10, 3) and t[:, :4].max() == 0 and t[:, 4:].min() == 255
    assert len(view_images(a, b, tile=True)) == 1 and len(view_images(a, b, tile=False)) == 2


def test_messages_order_and_assistant_turn():
    spec = PromptSpec(horizon=2, dim=7, bins=1000, tile_views=False)
    msgs = build_messages("pick up the bowl", spec.num_images, spec, action_text="1 2")
    assert [m["role"] for m in msgs] == ["system", "user", "assistant"]
    assert [c["type"] for c in msgs[1]["content"]] == ["image", "image", "text"]
    assert msgs[1]["content"][-1]["text"] == "pick up the bowl"
    assert msgs[2]["content"][0]["text"] == "1 2"
    assert "next 2 timesteps" in msgs[0]["content"][0]["text"]
    assert len(build_messages("x", 1, spec)) == 2
    first = PromptSpec(horizon=2, dim=7, bins=1000, tile_views=False, instruction_position="before_images")
    assert [c["type"] for c in build_messages("go", 2, first)[1]["content"]] == ["text", "image", "image"]


def test_instruction_at_the_end_opens_the_answer():
    spec = PromptSpec(horizon=2, dim=7, bins=1000, tile_views=False, instruction_position="end")
    msgs = build_messages("pick up the block that is red", 2, spec, action_text="1 2")
    assert [c["type"] for c in msgs[1]["content"]] == ["image", "image"]  # no words in the user turn
    assert msgs[2]["content"][0]["text"] == "pick up the block that is red1 2"  # the actions follow the last word
    assert build_messages("go", 2, spec)[2]["content"][0]["text"] == "go"  # the prefix the model continues
    with pytest.raises(ValueError, match="instruction_position must be one of"):
        PromptSpec(instruction_position="middle")
