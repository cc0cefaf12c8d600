"""The client side: a policy whose model runs in a `tinyvla serve` process, for `tinyvla eval ws://HOST:PORT`.

    policy = RemotePolicy("ws://gpu-box:8000", api_key=...)      # or $TINYVLA_API_KEY
    policy.reset(num_envs=4)
    actions = policy.act_batch(observations, instructions)     # (4, D), like Policy.act_batch

It implements tinyvla.interface.PolicyInterface the way a local Policy does (reset, reset_env, act_batch; `config` is
the served policy's PolicyConfig from the server's metadata, and ensembling happens here with it, so `--ensemble` /
`--execute-horizon` work unchanged), which is what makes a remote eval give the local eval's results. Each env slot has its own websocket connection, so the server keeps one
speculation draft per env; a step sends every env's request before reading any reply, so the server decodes them in
one batch, as a local Policy would.
"""

from __future__ import annotations

import numpy as np

from tinyvla.core.ensemble import EnsembledActor
from tinyvla.errors import UserError
from tinyvla.serving.wire import pack, unpack

CONNECT_TIMEOUT_S = 30.0


class RemotePolicy(EnsembledActor):
    """A `tinyvla.interface.PolicyInterface` whose model runs in a `tinyvla serve` process."""

    def __init__(self, url: str, api_key: str | None = None, timeout_s: float = 600.0):
        import os

        from tinyvla.policy_dir import DecodingConfig, PolicyConfig

        if not url.startswith(("ws://", "wss://")):
            raise UserError(f"a remote policy address starts with ws:// or wss://, got {url!r}")
        self.url = url
        self.api_key = api_key or os.environ.get("TINYVLA_API_KEY") or None
        self.timeout_s = timeout_s
        conn, self.server_metadata = self._connect_one()
        self._conns: list = [conn]  # one per env slot, opened as reset() needs them
        policy_json = self.server_metadata.get("policy")
        if self.server_metadata.get("server") != "tinyvla" or not isinstance(policy_json, dict):
            raise UserError(f"{url} is not a tinyvla policy server (its metadata has no policy config); "
                            "start one with `tinyvla serve POLICY`")
        # The served policy's own config (its policy.json): eval reads and overrides its ensembling as a local one's.
        decoding = self.server_metadata.get("decoding") or {}
        self.config = PolicyConfig.from_json(policy_json, decoding=DecodingConfig(
            speculative=bool(decoding.get("speculative", False)),
            repetition_penalty=float(decoding.get("repetition_penalty", 1.0))))
        # results.json records the served policy (path, sha256, files), not the address: shards evaluated against
        # different servers of one policy, or a local run resumed remotely, share one --out.
        self.identity = self.server_metadata.get("checkpoint") or {}
        if not self.identity.get("sha256"):
            raise UserError(f"{url} does not say which policy it serves (no checkpoint sha256 in its metadata)")
        self._ensembler = None
        self._steps: list[int] = []
        self._last_query: dict[int, int] = {}  # env -> step of its previous chunk (the draft shift the server uses)
        self._fresh: set[int] = set()  # envs whose next request starts an episode

    @property
    def prompt(self):
        return self.config.prompt

    def _connect_one(self):
        from websockets.exceptions import InvalidHandshake, InvalidURI
        from websockets.sync.client import connect

        headers = {"Authorization": f"Api-Key {self.api_key}"} if self.api_key else None
        try:
            # Entered by hand: the connection lives as long as this policy (newer websockets warn otherwise).
            conn = connect(self.url, compression=None, max_size=None, additional_headers=headers,
                           open_timeout=CONNECT_TIMEOUT_S).__enter__()
            meta = unpack(conn.recv(timeout=CONNECT_TIMEOUT_S))
        except (OSError, TimeoutError, InvalidHandshake, InvalidURI) as err:
            raise UserError(f"cannot reach the policy server at {self.url} ({type(err).__name__}: {err}); is "
                            "`tinyvla serve` running there, and is the API key right?") from None
        if not isinstance(meta, dict):
            raise UserError(f"{self.url} sent no metadata map on connect: not a policy server")
        return conn, meta

    # -- PolicyInterface ----------------------------------------------------------------------------------------------
    def bind(self, slots) -> None:
        """Nothing to read from the envs."""

    def seed_env(self, i: int, seed: int) -> None:
        """Deterministic: nothing to seed."""

    def reset(self, num_envs: int = 1) -> None:
        while len(self._conns) < num_envs:
            self._conns.append(self._connect_one()[0])
        super().reset(num_envs)

    def _forget(self, env: int | None) -> None:
        if env is None:
            self._last_query.clear()
            self._fresh = set(range(len(self._steps)))
        else:
            self._last_query.pop(env, None)
            self._fresh.add(env)

    # -- the wire ---------------------------------------------------------------------------------------------------
    def predict_for(self, envs: list[int], observations: list[dict], instructions: list[str],
                           steps: list[int]) -> np.ndarray:
        """(k, H, D) raw chunks, one per env connection; all requests go out before any reply is read."""
        for e, obs, ins, t in zip(envs, observations, instructions, steps):
            msg = {"image": np.asarray(obs["image"]), "wrist_image": np.asarray(obs["wrist_image"]),
                   "instruction": ins, "return": "chunk", "shift": t - self._last_query.get(e, t)}
            if e in self._fresh:
                msg["reset"] = True
            self._conns[e].send(pack(msg))
        chunks, errors = [], []
        for e, t in zip(envs, steps):  # every reply is read, even after an error: none may be left for the next step
            reply = self._conns[e].recv(timeout=self.timeout_s)
            if isinstance(reply, str):
                errors.append(reply)
                continue
            self._fresh.discard(e)
            self._last_query[e] = t
            chunks.append(np.asarray(unpack(reply)["actions"], dtype=np.float32))
        if errors:
            raise RuntimeError(f"policy server: {errors[0]}")
        return np.stack(chunks)

    def close(self) -> None:
        for conn in self._conns:
            conn.close()
        self._conns.clear()
