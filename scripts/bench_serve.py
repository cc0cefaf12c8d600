"""Load benchmark of `tinyvla serve` on loopback: 1, 2, 4, 8 concurrent clients against in-process `Policy.act`.

    python scripts/bench_serve.py runs/tiny-cpu/final --requests 1000
    python scripts/bench_serve.py runs/tiny-cpu/final --clients 1,8 --requests 48 --no-speculative   # greedy
    python scripts/bench_serve.py runs/tiny-cpu/final --server-threads 1,2     # two servers, one thread vs two
    python scripts/bench_serve.py runs/tiny-cpu/final --baseline-root ../main  # and that checkout's server
    python scripts/bench_serve.py runs/tiny-cpu/final --pass-token-budgets 0,256  # the CPU draft budget off / on

What it does, side by side in one run:
  1. In-process: `policy.act` on client 0's observation sequence, one request after another (speculation on or off,
     as the server): the latency a robot gets with the model in its own process.
  2. Starts `tinyvla serve POLICY --port 0 --num-threads T` (127.0.0.1 only; one server per variant asked for) and,
     for each client count n, n threads each with its own websocket connection (openpi's `WebsocketClientPolicy`
     when installed) send ~requests/n requests in "action" mode (the ensembled next action, what `act` returns).
     The (server, client count) pairs take turns, --rounds times, so a shared machine's load changes hit all alike.
Each client replays its own BlockFind episode (seeded, the continuous expert's path), resetting at the end of it, and
checks every reply against the action in-process `act` gives for that step of that episode: a lost, mis-routed or
wrongly ensembled answer is counted (and must be 0). Prints p50 / p99 latency and requests/s per client count, the
round-trip overhead (1 client p50 / in-process p50) and the throughput ratio (8 clients / 1).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def episode(seed: int, length: int, image_size: int = 64):
    """(observations, instruction): `length` consecutive BlockFind-reach observations along the continuous expert."""
    from tinyvla.envs.blockfind import expert_action, make_env

    env = make_env("blockfind-reach", image_size=image_size, max_steps=10 * length)
    rng = np.random.default_rng(seed)
    obs, _ = env.reset(seed=seed)
    out = []
    while len(out) < length:
        out.append({"image": obs["image"].copy(), "wrist_image": obs["wrist_image"].copy()})
        obs, _, term, trunc, _ = env.step(expert_action(env, rng, noise=0.3, kind="continuous"))
        if term or trunc:
            obs, _ = env.reset(seed=seed + 1000 * len(out))
    return out, env.instruction


def expected_actions(policy, episodes) -> list[np.ndarray]:
    """Per client, the (L, D) actions in-process `act` gives along its episode (reset at its start)."""
    out = []
    for obs_seq, ins in episodes:
        policy.reset(1)
        out.append(np.stack([policy.act(o, ins) for o in obs_seq]))
    return out


def start_server(policy_dir: str, threads: int, max_batch: int, max_wait_ms: float, speculative: bool,
                 root: Path = ROOT, budget: int | None = None, device: str = "cpu"):
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(root)}
    if os.path.exists(policy_dir):
        policy_dir = os.path.abspath(policy_dir)
    cmd = [sys.executable, "-m", "tinyvla.cli.main", "serve", policy_dir, "--host", "127.0.0.1", "--port", "0",
           "--num-threads", str(threads), "--max-batch", str(max_batch), "--max-wait-ms", str(max_wait_ms),
           "--device", device, "--speculative" if speculative else "--no-speculative",
           *([] if budget is None else ["--pass-token-budget", str(budget)])]
    # cwd = root too: `python -m` puts the working directory first on sys.path, before PYTHONPATH
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=root)
    for line in proc.stdout:
        if line.startswith("serving "):
            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
            return proc, int(line.split("ws://127.0.0.1:")[1].split(" ")[0])
    raise SystemExit(f"the server did not start (exit {proc.wait()})")


def make_client(port: int):
    try:
        from openpi_client.websocket_client_policy import WebsocketClientPolicy

        client = WebsocketClientPolicy("127.0.0.1", port)
        return client.infer, client._ws.close, "openpi-client"
    except ImportError:
        from websockets.sync.client import connect

        from tinyvla.serving.wire import pack, unpack

        ws = connect(f"ws://127.0.0.1:{port}", compression=None, max_size=None).__enter__()
        unpack(ws.recv())

        def infer(obs):
            ws.send(pack(obs))
            return unpack(ws.recv())

        return infer, ws.close, "tinyvla.serving.wire"


def run_clients(port: int, n: int, total: int, episodes, expected) -> dict:
    per_client = -(-total // n)
    clients = [make_client(port) for _ in range(n)]
    latencies: list[list[float]] = [[] for _ in range(n)]
    wrong = [0] * n
    barrier = threading.Barrier(n + 1)

    def work(c: int):
        infer = clients[c][0]
        obs_seq, ins = episodes[c]
        barrier.wait()
        for k in range(per_client):
            step = k % len(obs_seq)
            msg = {**obs_seq[step], "instruction": ins, "return": "action", "reset": step == 0}
            t0 = time.perf_counter()
            reply = infer(msg)
            latencies[c].append(time.perf_counter() - t0)
            if not np.array_equal(np.asarray(reply["actions"])[0], expected[c][step]):
                wrong[c] += 1

    threads = [threading.Thread(target=work, args=(c,)) for c in range(n)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    for _, close, _ in clients:
        close()
    return {"lat_ms": np.concatenate([np.asarray(x) for x in latencies]) * 1000, "wall_s": wall,
            "wrong": int(sum(wrong)), "client": clients[0][2]}


def summarize(n: int, parts: list[dict]) -> dict:
    """One row from the rounds of one (server, client count): requests/s over their summed wall time."""
    lat = np.concatenate([p["lat_ms"] for p in parts])
    wall = sum(p["wall_s"] for p in parts)
    return {"clients": n, "requests": int(lat.size), "wrong": sum(p["wrong"] for p in parts),
            "wall_s": round(wall, 2), "req_per_s": round(lat.size / wall, 2),
            "p50_ms": round(float(np.percentile(lat, 50)), 2), "p99_ms": round(float(np.percentile(lat, 99)), 2),
            "client": parts[0]["client"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("policy", help="policy directory")
    ap.add_argument("--clients", default="1,2,4,8")
    ap.add_argument("--requests", type=int, default=1000, help="requests per client count, over all its clients")
    ap.add_argument("--rounds", type=int, default=3, help="turns each (server, client count) gets, interleaved")
    ap.add_argument("--episode-steps", type=int, default=20, help="steps in each client's replayed episode")
    ap.add_argument("--threads", type=int, default=1, help="torch threads, in-process and in the server")
    ap.add_argument("--baseline-root", type=Path, default=None,
                    help="another checkout of tinyvla (e.g. main): its server runs first, same settings, to compare "
                         "code versions side by side")
    ap.add_argument("--pass-token-budgets", default=None,
                    help="`tinyvla serve --pass-token-budget` values to compare, one server each (0 = no cap); "
                         "default: the server's own default")
    ap.add_argument("--server-threads", default=None,
                    help="torch threads of the server, a list to compare (e.g. 1,2: one server each, side by side); "
                         "default --threads")
    ap.add_argument("--device", default=None, help="cpu or cuda, in-process and in the server (default: cuda if any)")
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--max-wait-ms", type=float, default=5.0)
    ap.add_argument("--no-speculative", action="store_true", help="greedy decoding, in-process and in the server")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    counts = [int(x) for x in args.clients.split(",")]
    server_threads = [int(x) for x in (args.server_threads or str(args.threads)).split(",")]

    import torch

    from tinyvla.policy import Policy
    from tinyvla.policy_dir import DecodingConfig

    torch.set_num_threads(args.threads)
    # decoding as the server runs it
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    policy = Policy.from_pretrained(args.policy, device=device,
                                    decoding=DecodingConfig(speculative=not args.no_speculative))
    episodes = [episode(seed, args.episode_steps) for seed in range(max(counts))]
    expected = expected_actions(policy, episodes)  # also warms up

    # 1. in-process act, client 0's sequence
    obs_seq, ins = episodes[0]
    lat = []
    policy.reset(1)
    n_local = min(args.requests, 300)
    passes0 = policy.decode_stats["passes"]
    for k in range(n_local):
        if k % len(obs_seq) == 0:
            policy.reset(1)
        t0 = time.perf_counter()
        policy.act(obs_seq[k % len(obs_seq)], ins)
        lat.append(time.perf_counter() - t0)
    lat_ms = np.asarray(lat) * 1000
    local = {"requests": n_local, "p50_ms": round(float(np.percentile(lat_ms, 50)), 2),
             "p99_ms": round(float(np.percentile(lat_ms, 99)), 2), "req_per_s": round(n_local / lat_ms.sum() * 1000, 2),
             "passes_per_act": round((policy.decode_stats["passes"] - passes0) / n_local, 2)}
    print(f"in-process act: {json.dumps(local)}", flush=True)

    # 2. the servers, all started at once; the client counts take turns on them (round robin, --rounds times) so
    #    that a change in the machine's load hits every variant alike: side by side in one run.
    variants = [("baseline", args.threads, None, args.baseline_root)] if args.baseline_root else []
    budgets = [None] if args.pass_token_budgets is None else [int(x) for x in args.pass_token_budgets.split(",")]
    variants += [("this", t, b, ROOT) for t in server_threads for b in budgets]
    servers, parts = [], {}
    try:
        for code, threads, budget, root in variants:
            servers.append(start_server(args.policy, threads, args.max_batch, args.max_wait_ms,
                                        not args.no_speculative, root, budget, device))
        per_round = -(-args.requests // args.rounds)
        for _ in range(args.rounds):
            for n in counts:
                for v, (_, port) in enumerate(servers):
                    parts.setdefault((v, n), []).append(run_clients(port, n, per_round, episodes, expected))
    finally:
        for proc, _ in servers:
            proc.terminate()
        for proc, _ in servers:
            proc.wait(60)
    rows = []
    for v, (code, threads, budget, _) in enumerate(variants):
        for n in counts:
            rows.append({"code": code, "server_threads": threads, "pass_token_budget": budget,
                         **summarize(n, parts[(v, n)])})
            print(json.dumps(rows[-1]), flush=True)
    summary = {"in_process": local, "served": rows}
    for code, threads, budget, _ in variants:
        by_n = {r["clients"]: r for r in rows
                if (r["code"], r["server_threads"], r["pass_token_budget"]) == (code, threads, budget)}
        tag = "" if len(variants) == 1 else f"_{code}_threads{threads}" + ("" if budget is None else f"_budget{budget}")
        if 1 in by_n:
            summary["overhead_p50" + tag] = round(by_n[1]["p50_ms"] / local["p50_ms"], 3)
        if 1 in by_n and 8 in by_n:
            summary["throughput_8_over_1" + tag] = round(by_n[8]["req_per_s"] / by_n[1]["req_per_s"], 2)
    head = ("code", "threads", "budget", "clients", "requests", "wrong", "p50 ms", "p99 ms", "req/s")
    print("\n" + " ".join(f"{h:>8}" for h in head))
    table = [("-", args.threads, "-", "local", local["requests"], "-", local["p50_ms"], local["p99_ms"],
              local["req_per_s"])]
    table += [(r["code"], r["server_threads"], {None: "default", 0: "off"}.get(r["pass_token_budget"],
                                                                               r["pass_token_budget"]),
               r["clients"], r["requests"], r["wrong"], r["p50_ms"], r["p99_ms"], r["req_per_s"]) for r in rows]
    for line in table:
        print(" ".join(f"{str(x):>8}" for x in line))
    print({k: v for k, v in summary.items() if k not in ("in_process", "served")})
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))
    if any(r["wrong"] for r in rows):
        raise SystemExit("some replies did not match in-process act")


if __name__ == "__main__":
    main()
