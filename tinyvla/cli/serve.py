"""`tinyvla serve`: a policy behind openpi's websocket protocol, every client's requests decoded in batches.

    tinyvla serve runs/tiny-cpu/final                                   # ws://127.0.0.1:8000, /healthz
    tinyvla serve policies/libero --host 0.0.0.0 --api-key "$KEY" --max-batch 16
    tinyvla eval ws://127.0.0.1:8000 --suite blockfind-reach            # the simulators here, the model there

Clients: openpi's `WebsocketClientPolicy(host, port, api_key=...)`, or anything that speaks msgpack with numpy
arrays over a websocket (tinyvla/serving/protocol.py lists the keys).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Annotated, Optional

import typer

from tinyvla.errors import UserError

LOOPBACK = ("127.0.0.1", "localhost", "::1")
# Draft tokens per pass over a batch on a CPU: 32 a row at the default max batch of 8 (MIN_DRAFT), more as rows
# finish; one row alone is capped only past 256 tokens (an H = 8 answer is ~200). Measured: scripts/profile_serve.py.
CPU_PASS_TOKEN_BUDGET = 256


def serve(
    policy: Annotated[str, typer.Argument(help="Policy directory (runs/NAME/final or an export) or a hub id.")],
    host: Annotated[str, typer.Option(help="Address to listen on; 0.0.0.0 = every interface (set --api-key then).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port (0 = any free port, printed at start).")] = 8000,
    max_batch: Annotated[int, typer.Option(help="Most requests decoded together.")] = 8,
    max_wait_ms: Annotated[float, typer.Option(help="How long the first request of a batch waits for others.")] = 5.0,
    api_key: Annotated[Optional[str], typer.Option(help="Require 'Authorization: Api-Key KEY' (default: $TINYVLA_API_KEY, else none).")] = None,
    device: Annotated[Optional[str], typer.Option(help="Policy device (default: cuda if available, else cpu).")] = None,
    num_threads: Annotated[Optional[int], typer.Option(help="CPU threads for torch (default: torch's).")] = None,
    speculative: Annotated[Optional[bool], typer.Option("--speculative/--no-speculative", help="Chunk-shift speculative decoding per connection: the same actions, fewer forward passes (default: the recipe's eval.speculative, as tinyvla eval).")] = None,
    pass_token_budget: Annotated[Optional[int], typer.Option(help="Speculative draft tokens per forward pass over the whole batch (each row gets budget / rows); 0 = no cap. Default: 256 on a CPU, where a pass costs rows x tokens, none on a GPU. Actions are the same either way.")] = None,
    idle_timeout_s: Annotated[float, typer.Option(help="Close a connection that sends nothing for this long.")] = 600.0,
    max_message_mb: Annotated[float, typer.Option(help="Largest request accepted; bigger ones close their connection.")] = 16.0,
    obs_key: Annotated[Optional[list[str]], typer.Option(help="Another request key for an input, NAME=KEY with NAME one of image, wrist_image, instruction; repeatable (e.g. image=cam_high).")] = None,
):
    """Serve a policy over openpi's websocket protocol (msgpack + numpy), batched across clients."""
    import logging

    for name, value, low in (("--max-batch", max_batch, 1), ("--port", port, 0), ("--max-wait-ms", max_wait_ms, 0),
                             ("--idle-timeout-s", idle_timeout_s, 0.1), ("--max-message-mb", max_message_mb, 0.01)):
        if value < low:
            raise UserError(f"{name} must be >= {low}, got {value}")
    if pass_token_budget is not None and pass_token_budget < 0:
        raise UserError(f"--pass-token-budget must be >= 0 (0 = no cap), got {pass_token_budget}")
    if port > 65535:
        raise UserError(f"--port must be <= 65535, got {port}")
    try:
        import msgpack  # noqa: F401
        import websockets  # noqa: F401
    except ImportError:
        raise UserError("serving needs websockets and msgpack: pip install 'tinyvla[serve]'") from None
    api_key = api_key or os.environ.get("TINYVLA_API_KEY") or None
    extra_keys: dict[str, list[str]] = {}
    for item in obs_key or []:
        name, sep, key = item.partition("=")
        if not sep or not key or name not in ("image", "wrist_image", "instruction"):
            raise UserError(f"--obs-key {item!r}: expected NAME=KEY with NAME one of image, wrist_image, instruction")
        extra_keys.setdefault(name, []).append(key)
    if num_threads is not None:
        if num_threads < 1:
            raise UserError(f"--num-threads must be >= 1, got {num_threads}")
        import torch

        torch.set_num_threads(num_threads)

    from tinyvla.evaluate import BASELINES, load_policy
    from tinyvla.serving.protocol import observation_keys_for
    from tinyvla.serving.server import PolicyServer

    if policy.startswith(("ws://", "wss://")) or policy in BASELINES:
        raise UserError(f"serve a policy directory, not {policy!r}")
    loaded, identity = load_policy(policy, device, speculative=speculative)
    if pass_token_budget is None:  # CPU: cap the rejected-draft compute of a batch (BENCHMARKS.md, serving)
        pass_token_budget = CPU_PASS_TOKEN_BUDGET if loaded.device.type == "cpu" else 0
    loaded.config = loaded.config.replace(decoding=dataclasses.replace(loaded.config.decoding,
                                                                       pass_token_budget=pass_token_budget or None))
    try:
        observation_keys_for(loaded.config.meta.get("observation_keys"))
    except ValueError as err:
        raise UserError(f"policy.json: {err}") from None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    server = PolicyServer(loaded, host=host, port=port, max_batch=max_batch, max_wait_ms=max_wait_ms,
                          api_key=api_key, identity=identity, idle_timeout_s=idle_timeout_s,
                          max_message_mb=max_message_mb, observation_keys=extra_keys)

    def ready(s):
        shown = f"[{s.host}]" if ":" in s.host else s.host
        typer.echo(f"serving {policy} on ws://{shown}:{s.port} (health: http://{shown}:{s.port}/healthz; "
                   f"max batch {max_batch}, max wait {max_wait_ms:g} ms, "
                   f"{'API key required' if api_key else 'no API key'}); Ctrl-C stops", err=False)
        if host not in LOOPBACK and not api_key:
            typer.secho("warning: listening beyond this machine without --api-key: anyone who can reach the port "
                        "can use the policy", fg="yellow", err=True)

    try:
        server.serve_forever(on_ready=ready)
    except OSError as err:  # port in use, address not on this machine
        raise UserError(f"cannot listen on {host}:{port}: {err.strerror or err}; choose another --port or --host") from None
    typer.echo(f"stopped after {server.served['connections']} connection(s), {server.served['requests']} request(s), "
               f"{server.served['errors']} error reply(ies)")
