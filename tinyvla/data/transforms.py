"""The VLA-0 image pipeline: crop + colour jitter in training, centre crop at test time, then the views' layout.

Numpy + PIL only (no torch, no torchvision), so the exact same code runs in DataLoader workers, in the policy at test
time, and on machines without torchvision.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageEnhance

from tinyvla.core.prompt import view_images


@dataclass(frozen=True)
class ImageSpec:
    """How raw camera frames become model images; saved in policy.json so a policy sees what it was trained on."""

    image_size: int = 224  # side of each view after crop + resize
    crop_scale: float = 0.875  # crop this fraction of the side (VLA-0: 256 -> 224)
    color_jitter: bool = True  # training only
    tile_views: bool = True
    # False: one jitter (same factors, same order) for all views, as VLA-0's single ColorJitter call over the stacked
    # views; True: each view draws its own.
    jitter_per_view: bool = False
    # The observation keys the policy reads, in image order; None = LIBERO's two ("image", "wrist_image").
    cameras: tuple[str, ...] | None = None

    def to_dict(self) -> dict:
        out = {"image_size": self.image_size, "crop_scale": self.crop_scale, "color_jitter": self.color_jitter,
               "tile_views": self.tile_views, "jitter_per_view": self.jitter_per_view}
        if self.cameras is not None:
            out["cameras"] = list(self.cameras)
        return out

    @property
    def observation_keys(self) -> tuple[str, ...]:
        return self.cameras or DEFAULT_CAMERAS


DEFAULT_CAMERAS = ("image", "wrist_image")  # what BlockFind, the LIBERO env and the v2.0 LIBERO data call the views


def observation_views(obs: dict, spec: ImageSpec) -> list[np.ndarray]:
    """The camera frames of one observation, in the policy's order: a dataset sample's `views`, or the frames under
    the policy's camera keys (an env's or a robot's observation dict)."""
    if "views" in obs:
        return list(obs["views"])
    keys = spec.observation_keys
    if any(k not in obs for k in keys) and len(keys) <= 2 and all(k in obs for k in DEFAULT_CAMERAS[:len(keys)]):
        keys = DEFAULT_CAMERAS[:len(keys)]  # the generic names of views 0 and 1 (an env, a server's wire format)
    missing = [k for k in keys if k not in obs]
    if missing:
        from tinyvla.errors import UserError

        raise UserError(f"the observation has no '{missing[0]}' camera; this policy reads "
                        f"{', '.join(spec.observation_keys)} (the observation has {', '.join(map(str, obs))})")
    return [obs[k] for k in keys]


def crop(image: np.ndarray, scale: float, rng: np.random.Generator | None) -> np.ndarray:
    """A square-ish crop of `scale` x each side: random position when `rng` is given, else centred."""
    h, w = image.shape[:2]
    ch, cw = max(1, round(h * scale)), max(1, round(w * scale))
    if rng is None:
        top, left = (h - ch) // 2, (w - cw) // 2
    else:
        top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    return image[top : top + ch, left : left + cw]


def shift_hue(img: Image.Image, shift: float) -> Image.Image:
    """Rotate hue by `shift` of a full turn (0.05 = 18 degrees)."""
    hsv = np.array(img.convert("HSV"), dtype=np.int16)
    hsv[..., 0] = (hsv[..., 0] + int(round(shift * 255))) % 256
    return Image.fromarray(hsv.astype(np.uint8), "HSV").convert("RGB")


def draw_jitter(rng: np.random.Generator, strength: float = 0.2, hue: float = 0.05) -> dict:
    """One jitter's random draw: brightness, contrast, saturation factors in [1 - s, 1 + s], a hue shift in [-h, h],
    and the order the four are applied in. Drawing once and applying to several views gives them the same jitter."""
    factors = rng.uniform(1 - strength, 1 + strength, size=3)
    return {"brightness": float(factors[0]), "contrast": float(factors[1]), "saturation": float(factors[2]),
            "hue": float(rng.uniform(-hue, hue)) if hue > 0 else 0.0, "order": [int(i) for i in rng.permutation(4)]}


def apply_jitter(img: Image.Image, draw: dict) -> Image.Image:
    ops = [
        lambda im: ImageEnhance.Brightness(im).enhance(draw["brightness"]),
        lambda im: ImageEnhance.Contrast(im).enhance(draw["contrast"]),
        lambda im: ImageEnhance.Color(im).enhance(draw["saturation"]),
        lambda im: shift_hue(im, draw["hue"]) if draw["hue"] else im,
    ]
    for i in draw["order"]:
        img = ops[i](img)
    return img


def color_jitter(img: Image.Image, rng: np.random.Generator, strength: float = 0.2, hue: float = 0.05) -> Image.Image:
    """Brightness, contrast, saturation in [1 - s, 1 + s] and hue in [-h, h], applied in a random order."""
    return apply_jitter(img, draw_jitter(rng, strength, hue))


def transform_view(image: np.ndarray, spec: ImageSpec, rng: np.random.Generator | None,
                   jitter: dict | None = None) -> np.ndarray:
    """One camera frame -> the model's view. `rng` given = training (random crop, jitter); None = evaluation.
    `jitter`: a `draw_jitter` result to apply instead of drawing a new one (views that share a jitter)."""
    out = crop(np.asarray(image), spec.crop_scale, rng)
    img = Image.fromarray(out)
    if img.size != (spec.image_size, spec.image_size):
        img = img.resize((spec.image_size, spec.image_size), Image.BILINEAR)
    if rng is not None and spec.color_jitter:
        img = apply_jitter(img, jitter if jitter is not None else draw_jitter(rng))
    return np.asarray(img)


def model_images(views: list[np.ndarray], spec: ImageSpec, rng: np.random.Generator | None = None
                 ) -> list[Image.Image]:
    """The camera frames -> the PIL images the processor gets (one tiled image, or one per view).

    Crops are drawn per view (as VLA-0 does); the colour jitter is drawn once for all unless `spec.jitter_per_view`.
    """
    shared = draw_jitter(rng) if rng is not None and spec.color_jitter and not spec.jitter_per_view else None
    out = [transform_view(v, spec, rng, shared) for v in views]
    return [Image.fromarray(v) for v in view_images(*out, tile=spec.tile_views)]
