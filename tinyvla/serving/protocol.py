"""What a request to `tinyvla serve` may say, and the state each connection keeps between its requests.

A request is a msgpack map (see wire.py). Observation keys, either spelling:

    tinyvla                 openpi's LIBERO client
    image                   observation/image           uint8 (H, W, 3), any size: resized as the policy's image spec
    wrist_image             observation/wrist_image     uint8 (H, W, 3)
    instruction             prompt                      str
    (state is not read)     observation/state           accepted and ignored: VLA-0 policies see no robot state

More spellings per policy: "observation_keys" in policy.json or `tinyvla serve --obs-key image=cam_high` (added to
the defaults above; `observation_keys_for`).

Optional control keys:
    reset: true       a new episode starts with this observation (clears the connection's ensembling buffer and
                      speculation draft). A map with only {"reset": true}, or openpi's {"__ctrl__": "episode_start"},
                      resets and is answered without acting.
    return: "chunk"   (default) `actions` is the raw (H, D) chunk predicted for this observation;
            "action"  `actions` is (1, D): the next action, temporally ensembled over this connection's recent chunks
                      (the model is queried only when the ensembler asks, every execute_horizon steps).
    shift: int        "chunk" mode: steps executed since this connection's previous chunk (default 1). Only makes the
                      speculative draft better; the answer is the same whatever it says.

The reply: {"actions": float32 array, "server_timing": {...}, "step", "queried"}; an error is a text frame (what
openpi's client raises on) and the connection stays open.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

KEYS = {
    "image": ("image", "observation/image"),
    "wrist_image": ("wrist_image", "observation/wrist_image"),
    "instruction": ("instruction", "prompt"),
}
IGNORED_KEYS = ("state", "observation/state")
MODES = ("chunk", "action")
MIN_SIDE, MAX_SIDE = 8, 4096  # image sides accepted; the policy resizes to its own size anyway
MAX_INSTRUCTION_CHARS = 2000
PROTOCOL_VERSION = 1


class RequestError(ValueError):
    """A request that is well-formed msgpack but not a valid observation; the text goes back to the client."""


@dataclass
class Request:
    image: np.ndarray | None
    wrist_image: np.ndarray | None
    instruction: str | None
    reset: bool = False
    mode: str = "chunk"
    shift: int = 1

    @property
    def acts(self) -> bool:
        return self.image is not None


def observation_keys_for(extra: dict | None) -> dict[str, tuple[str, ...]]:
    """The default spellings plus a policy's own: {"image": ["cam_high"], ...} (names: image, wrist_image,
    instruction). Raises ValueError naming what is wrong."""
    keys = {k: tuple(v) for k, v in KEYS.items()}
    for name, spellings in (extra or {}).items():
        if name not in KEYS:
            raise ValueError(f"observation key {name!r} is not one of {', '.join(KEYS)}")
        spellings = [spellings] if isinstance(spellings, str) else spellings
        if not isinstance(spellings, (list, tuple)) or not all(isinstance(x, str) and x for x in spellings):
            raise ValueError(f"observation key {name!r}: expected a key name or a list of them, got {spellings!r}")
        keys[name] = tuple(dict.fromkeys([*spellings, *keys[name]]))
    return keys


def _pick(msg: dict, name: str, keys: dict):
    found = [k for k in keys[name] if k in msg]
    if len(found) > 1:
        raise RequestError(f"both {found[0]!r} and {found[1]!r} given; send one of them")
    return msg[found[0]] if found else None


def _image(value, name: str) -> np.ndarray:
    if not isinstance(value, np.ndarray):
        raise RequestError(f"{name} must be a uint8 numpy array (H, W, 3), got {type(value).__name__}")
    if value.dtype != np.uint8 or value.ndim != 3 or value.shape[2] != 3:
        raise RequestError(f"{name} must be uint8 (H, W, 3), got {value.dtype} {tuple(value.shape)}")
    h, w = value.shape[:2]
    if not (MIN_SIDE <= h <= MAX_SIDE and MIN_SIDE <= w <= MAX_SIDE):
        raise RequestError(f"{name} is {h}x{w}; sides must be {MIN_SIDE}..{MAX_SIDE} pixels")
    return value


def parse_request(msg, keys: dict | None = None) -> Request:
    if not isinstance(msg, dict):
        raise RequestError(f"a request must be a map (observation dict), got {type(msg).__name__}")
    ctrl = msg.get("__ctrl__")
    if ctrl is not None:  # openpi's control messages
        return Request(None, None, None, reset=(ctrl == "episode_start"))
    reset = msg.get("reset", False)
    if not isinstance(reset, (bool, np.bool_)):
        raise RequestError(f"reset must be true or false, got {reset!r}"[:200])
    mode = msg.get("return", "chunk")
    if mode not in MODES:
        raise RequestError(f"return must be one of {', '.join(MODES)}, got {mode!r}"[:200])
    shift = msg.get("shift", 1)
    if isinstance(shift, (bool, np.bool_)) or not isinstance(shift, (int, np.integer)) or shift < 0:
        raise RequestError(f"shift must be an int >= 0, got {shift!r}"[:200])
    keys = keys or KEYS
    image, wrist, instruction = (_pick(msg, k, keys) for k in ("image", "wrist_image", "instruction"))
    if image is None and wrist is None and instruction is None:
        if reset:
            return Request(None, None, None, reset=True)
        raise RequestError("no observation: send image / wrist_image / instruction "
                           "(or observation/image, observation/wrist_image, prompt)")
    missing = [k for k, v in (("image", image), ("wrist_image", wrist), ("instruction", instruction)) if v is None]
    if missing:
        raise RequestError("missing " + ", ".join(f"{m} (accepted keys: {', '.join(keys[m])})" for m in missing))
    if not isinstance(instruction, str) or not instruction.strip():
        raise RequestError(f"instruction must be a non-empty string, got {type(instruction).__name__}")
    if len(instruction) > MAX_INSTRUCTION_CHARS:
        raise RequestError(f"instruction has {len(instruction)} characters; at most {MAX_INSTRUCTION_CHARS}")
    return Request(_image(image, "image"), _image(wrist, "wrist_image"), instruction, reset=bool(reset),
                   mode=mode, shift=int(shift))


class Session:
    """One connection's memory: its ensembler, its step count and its last chunk's codes (the speculation draft)."""

    def __init__(self, policy):
        from tinyvla.core.ensemble import ChunkEnsembler

        self.ensembler = ChunkEnsembler(policy.prompt.horizon, policy.prompt.dim,
                                        **policy.config.ensemble.to_dict())
        self.step = 0
        self.last_codes: tuple[int, np.ndarray] | None = None  # (step it was predicted at, (H, D) int codes)

    def reset(self) -> None:
        self.ensembler.reset()
        self.step = 0
        self.last_codes = None

    def draft(self, start_codes: np.ndarray | None) -> np.ndarray | None:
        """The previous chunk shifted to the current step; at an episode start, the latest start chunk any
        connection saw (episode starts look alike)."""
        from tinyvla.modeling.speculative import shift_chunk

        if self.last_codes is not None:
            return shift_chunk(self.last_codes[1], self.step - self.last_codes[0])
        return None if start_codes is None else start_codes.copy()


def metadata(policy, identity: dict | None, max_batch: int, keys: dict | None = None) -> dict:
    """Sent on connect: what the policy reads and writes, so a client can check it talks to the right server."""
    cfg = policy.config.to_json()  # what policy.json says: a client rebuilds the PolicyConfig from it
    return {
        "server": "tinyvla",
        "protocol": PROTOCOL_VERSION,
        "action_horizon": cfg["horizon"],
        "action_dim": cfg["dim"],
        "observation_keys": {k: list(v) for k, v in (keys or KEYS).items()},
        "modes": list(MODES),
        "max_batch": max_batch,
        "policy": cfg,
        # how this server decodes (not in policy.json): a remote eval records it as a local one records its own
        "decoding": {"speculative": bool(policy.config.decoding.speculative),
                     "repetition_penalty": float(policy.config.decoding.repetition_penalty)},
        "checkpoint": identity or {},
    }
