"""MP4 videos of rollouts: both camera views side by side, upscaled, with the instruction and step number drawn on.

Frames are streamed to ffmpeg (imageio-ffmpeg) as the episode runs, so a 520-step LIBERO episode never sits in memory.
The file is written under a hidden temporary name and renamed when the episode ends: a crash leaves no half video
under the final name, and the final name says how the episode ended (..._success.mp4 / _fail.mp4 / _error.mp4).
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import numpy as np

TARGET_VIEW = 256  # each view is upscaled (nearest neighbour, an integer factor) to at least this many pixels high
BAND = 40  # caption band above the views
MACRO = 16  # H.264 encoders want sides that are multiples of 16; we pad instead of letting imageio resize


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # a scalable font (Pillow >= 10.1 with FreeType)
    except TypeError:
        return ImageFont.load_default()


def compose_frame(obs: dict, step: int, instruction: str, font=None) -> np.ndarray:
    """(H, W, 3) uint8: caption band on top, then the scene view and the wrist view side by side."""
    from PIL import Image, ImageDraw

    views = [np.asarray(obs["image"], dtype=np.uint8), np.asarray(obs["wrist_image"], dtype=np.uint8)]
    h = max(v.shape[0] for v in views)
    scale = max(1, int(np.ceil(TARGET_VIEW / h)))
    views = [v.repeat(scale, axis=0).repeat(scale, axis=1) for v in views]  # nearest: keeps small frames crisp
    gap = np.full((views[0].shape[0], 4, 3), 255, dtype=np.uint8)
    body = np.concatenate([views[0], gap, views[1]], axis=1)
    width = body.shape[1]
    height = BAND + body.shape[0]
    W, H = -(-width // MACRO) * MACRO, -(-height // MACRO) * MACRO
    frame = np.zeros((H, W, 3), dtype=np.uint8)
    frame[BAND : BAND + body.shape[0], : body.shape[1]] = body

    img = Image.fromarray(frame)
    draw = ImageDraw.Draw(img)
    font = font or _font(14)
    label = f"step {step}"
    draw.text((W - 8, 4), label, fill=(255, 255, 0), font=font, anchor="ra")
    # Roughly 7 px per character at size 14: wrap the instruction to the space left of the step label.
    lines = textwrap.wrap(instruction, width=max(10, (W - 90) // 7))[:2]
    for k, line in enumerate(lines):
        draw.text((6, 4 + 17 * k), line, fill=(255, 255, 255), font=font)
    return np.asarray(img)


class VideoRecorder:
    """One episode's MP4. add(obs, step, instruction) per frame; close(success, error) names and publishes it."""

    def __init__(self, path: str | os.PathLike, fps: int = 10):
        self.path = Path(path)  # final name without the outcome suffix: videos/task03_ep000
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # ffmpeg picks the container from the extension, so the temp name must end in .mp4 too.
        self.tmp = self.path.parent / f".{self.path.name}.partial.mp4"
        self.fps = fps
        self.writer = None
        self.frames = 0
        self.final: Path | None = None
        self._font = _font(14)

    def add(self, obs: dict, step: int, instruction: str) -> None:
        frame = compose_frame(obs, step, instruction, self._font)
        if self.writer is None:
            import imageio.v2 as imageio

            self.writer = imageio.get_writer(self.tmp, fps=self.fps, codec="libx264", quality=7, macro_block_size=1,
                                             ffmpeg_log_level="error", pixelformat="yuv420p")
        self.writer.append_data(frame)
        self.frames += 1

    def close(self, success: bool, error: str | None = None) -> Path | None:
        if self.writer is None:
            return None
        self.writer.close()
        self.writer = None
        outcome = "error" if error else ("success" if success else "fail")
        self.final = self.path.with_name(f"{self.path.name}_{outcome}.mp4")
        for old in self.path.parent.glob(f"{self.path.name}_*.mp4"):  # a rerun of the same episode replaces it
            old.unlink()
        os.replace(self.tmp, self.final)
        return self.final

    def abort(self) -> None:
        """The run stopped mid-episode: drop the partial file."""
        if self.writer is not None:
            try:
                self.writer.close()
            finally:
                self.writer = None
        self.tmp.unlink(missing_ok=True)


def video_factory(out_dir: str | os.PathLike, first_k: int, fps: int = 10):
    """The `video` callback for run_episodes: a recorder for the first `first_k` episodes of each task, else None."""
    out_dir = Path(out_dir)

    def make(spec):
        if spec.episode >= first_k:
            return None
        return VideoRecorder(out_dir / f"task{spec.task_id:02d}_ep{spec.episode:03d}", fps=fps)

    return make if first_k > 0 else None
