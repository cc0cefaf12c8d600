"""`tinyvla serve`: openpi's websocket protocol, checked with openpi's own client; remote eval; bad clients.

One `tinyvla serve` subprocess (a tiny policy trained a few steps on the LIBERO fixture) serves the whole module on a
loopback port the OS picks. Every byte stays on 127.0.0.1.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("websockets")
pytest.importorskip("msgpack")

from tinyvla.serving.protocol import RequestError, observation_keys_for, parse_request  # noqa: E402
from tinyvla.serving.wire import WireError, pack, unpack  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# openpi's client opens its connection without a `with` block, which newer websockets releases warn about.
pytestmark = pytest.mark.filterwarnings("ignore:connect\\(\\) must be used as a context manager:DeprecationWarning")
TASK = "pick up the block that is red"


# ---------------------------------------------------------------------------------------------------- pure parts
def test_wire_round_trip_and_openpi_format():
    msgpack_numpy = pytest.importorskip("openpi_client.msgpack_numpy")
    obj = {"a": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.uint8(7), "c": "text", "d": [1, 2.5]}
    for packed in (pack(obj), msgpack_numpy.packb(obj)):  # ours and openpi's bytes read the same
        back = unpack(packed)
        assert back["a"].dtype == np.float32 and np.array_equal(back["a"], obj["a"])
        assert back["b"] == 7 and back["c"] == "text" and back["d"] == [1, 2.5]
    theirs = msgpack_numpy.unpackb(pack(obj))
    assert np.array_equal(theirs["a"], obj["a"])


def test_wire_refuses_what_the_network_should_not_send():
    import msgpack

    def arr(dtype, shape, data):
        return msgpack.packb({"x": {b"__ndarray__": True, b"data": data, b"dtype": dtype, b"shape": shape}})

    with pytest.raises(WireError, match="not allowed"):
        unpack(arr("|O", [1], b"\0" * 8))  # object arrays are how pickle sneaks in
    with pytest.raises(WireError, match="needs 12 bytes"):
        unpack(arr("<f4", [3], b"\0" * 5))
    with pytest.raises(WireError, match="not a msgpack"):
        unpack(b"\xc1garbage")
    with pytest.raises(WireError, match="binary"):
        unpack("a text frame")
    with pytest.raises(TypeError):
        pack({"x": np.array([object()])})


def test_parse_request_maps_both_spellings():
    im = np.zeros((100, 80, 3), np.uint8)
    a = parse_request({"observation/image": im, "observation/wrist_image": im, "observation/state": np.zeros(8),
                       "prompt": TASK})
    b = parse_request({"image": im, "wrist_image": im, "instruction": TASK, "return": "action", "reset": True})
    assert a.acts and a.instruction == TASK and a.mode == "chunk" and not a.reset
    assert b.mode == "action" and b.reset
    assert parse_request({"reset": True}).reset and not parse_request({"reset": True}).acts
    keys = observation_keys_for({"image": "cam_high", "instruction": ["task"]})
    c = parse_request({"cam_high": im, "wrist_image": im, "task": TASK}, keys)
    assert c.acts and c.instruction == TASK and keys["image"] == ("cam_high", "image", "observation/image")
    with pytest.raises(ValueError, match="not one of"):
        observation_keys_for({"depth": "d"})
    for bad, match in [([1, 2], "map"), ({"image": im, "instruction": TASK}, "missing wrist_image"),
                       ({"image": im, "wrist_image": im, "instruction": 3}, "non-empty string"),
                       ({"image": im.tolist(), "wrist_image": im, "instruction": TASK}, "numpy array"),
                       ({"image": im[..., :2], "wrist_image": im, "instruction": TASK}, r"\(H, W, 3\)"),
                       ({"image": im.astype(np.float32), "wrist_image": im, "instruction": TASK}, "uint8"),
                       ({"image": im, "observation/image": im, "wrist_image": im, "instruction": TASK}, "both"),
                       ({"image": im, "wrist_image": im, "instruction": TASK, "return": "all"}, "return"),
                       ({}, "no observation")]:
        with pytest.raises(RequestError, match=match):
            parse_request(bad)


def test_the_client_side_needs_no_torch():
    """A robot-side process runs `tinyvla eval ws://...` without torch (like tests/test_architecture.py's light
    modules)."""
    code = "import sys, tinyvla.serving.remote, tinyvla.serving.wire; assert 'torch' not in sys.modules, 'torch'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120, cwd=ROOT,
                   env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_cli_user_errors(tmp_path, capsys):
    from tinyvla.cli.main import main

    assert main(["serve", str(tmp_path / "missing"), "--port", "0"]) == 2
    assert main(["serve", str(tmp_path), "--max-batch", "0"]) == 2
    assert "--max-batch must be >= 1" in capsys.readouterr().err
    assert main(["serve", str(tmp_path), "--pass-token-budget", "-1"]) == 2
    assert "--pass-token-budget must be >= 0" in capsys.readouterr().err
    assert main(["serve", str(tmp_path), "--obs-key", "depth=d"]) == 2
    assert "--obs-key 'depth=d'" in capsys.readouterr().err
    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    assert main(["eval", f"ws://127.0.0.1:{free}", "--suite", "blockfind-reach", "--out", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err
    assert "cannot reach the policy server" in err and "Traceback" not in err
    assert main(["eval", f"ws://127.0.0.1:{free}", "--offline", "--repo", str(tmp_path)]) == 2


# ---------------------------------------------------------------------------------------------------- a live server
@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory):
    """A tiny policy trained a few steps on the LIBERO fixture (as tests/test_export.py gets one), with H=2 and 100
    bins so that a query writes ~40 tokens: a real (H, D) chunk, quickly."""
    from tinyvla.recipe import load_recipe
    from tinyvla.training.smoke import smoke_recipe
    from tinyvla.training.trainer import train

    out = tmp_path_factory.mktemp("run")
    cfg = smoke_recipe(load_recipe(ROOT / "recipes" / "tiny-cpu.yaml", [
        f"data.repo={ROOT / 'tests' / 'fixtures' / 'libero_v20_tiny'}", "data.suite=null", f"train.out_dir={out}",
        "actions.horizon=2", "actions.bins=100"]))
    cfg.train.max_steps = 3
    cfg.train.lr = 3e-2  # a few big steps: weights far from init
    return train(cfg, smoke_test=True).policy_dir


@pytest.fixture(scope="module")
def local_policy(policy_dir):
    from tinyvla.policy import Policy

    return Policy.from_pretrained(policy_dir, device="cpu")


def start_server(policy_dir, *args):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "tinyvla.cli.main", "serve", str(policy_dir), "--port", "0",
                             "--num-threads", "1", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env, cwd=ROOT)
    lines = []
    deadline = time.time() + 180
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith("serving "):
            port = int(line.split("ws://127.0.0.1:")[1].split(" ")[0])
            return proc, port
    proc.kill()
    raise AssertionError("server did not start:\n" + "".join(lines))


@pytest.fixture(scope="module")
def server(policy_dir):
    proc, port = start_server(policy_dir, "--idle-timeout-s", "60", "--obs-key", "image=cam_high")
    # Drain the server's output in the background so its pipe never fills up.
    out: list[str] = []
    reader = threading.Thread(target=lambda: out.extend(proc.stdout), daemon=True)
    reader.start()
    yield port
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0, "".join(out)  # clean shutdown on SIGTERM
    reader.join(5)
    assert any(line.startswith("stopped after") for line in out), "".join(out)


def libero_obs(seed: int, size=(224, 224)):
    rng = np.random.default_rng(seed)
    return {"observation/image": rng.integers(0, 256, (*size, 3), dtype=np.uint8),
            "observation/wrist_image": rng.integers(0, 256, (*size, 3), dtype=np.uint8),
            "observation/state": rng.normal(size=8).astype(np.float32), "prompt": TASK}


def infer_ok(port: int, seed: int = 0) -> np.ndarray:
    from openpi_client.websocket_client_policy import WebsocketClientPolicy

    client = WebsocketClientPolicy("127.0.0.1", port)
    try:
        return client.infer(libero_obs(seed))["actions"]
    finally:
        client._ws.close()


def test_openpi_client_gets_the_policys_chunk(server, local_policy):
    from openpi_client.websocket_client_policy import WebsocketClientPolicy

    client = WebsocketClientPolicy("127.0.0.1", server)
    meta = client.get_server_metadata()
    assert meta["server"] == "tinyvla" and (meta["action_horizon"], meta["action_dim"]) == (2, 7)
    for seed, size in ((0, (224, 224)), (1, (96, 128))):  # any image size
        obs = libero_obs(seed, size)
        reply = client.infer(obs)
        want = local_policy.predict_chunk(obs["observation/image"], obs["observation/wrist_image"], TASK)
        assert reply["actions"].shape == (2, 7) and reply["actions"].dtype == np.float32
        np.testing.assert_array_equal(reply["actions"], want.astype(np.float32))
        assert reply["server_timing"]["infer_ms"] > 0 and reply["server_timing"]["batch_size"] == 1
    # tinyvla's own spelling, same answer; then the ensembled next action, and a reset.
    same = client.infer({"image": obs["observation/image"], "wrist_image": obs["observation/wrist_image"],
                         "instruction": TASK})
    np.testing.assert_array_equal(same["actions"], reply["actions"])
    assert meta["observation_keys"]["image"][0] == "cam_high"  # --obs-key image=cam_high
    other = client.infer({"cam_high": obs["observation/image"], "prompt": TASK,
                          "observation/wrist_image": obs["observation/wrist_image"]})
    np.testing.assert_array_equal(other["actions"], reply["actions"])
    first = client.infer({**obs, "return": "action", "reset": True})
    assert first["actions"].shape == (1, 7) and first["step"] == 0 and first["queried"]
    np.testing.assert_array_equal(first["actions"][0], reply["actions"][0])  # nothing to blend with at step 0
    assert client.infer({**obs, "return": "action"})["step"] == 1
    assert client.infer({"__ctrl__": "episode_start"})["__ack__"] == "episode_start"
    assert client.infer({**obs, "return": "action"})["step"] == 0
    client._ws.close()


def test_health_check_and_api_key(local_policy):
    import urllib.request

    from openpi_client.websocket_client_policy import WebsocketClientPolicy
    from websockets.exceptions import InvalidStatus

    from tinyvla.serving.server import PolicyServer

    import asyncio

    srv, ready = PolicyServer(local_policy, port=0, api_key="s3cret"), threading.Event()
    loop, stop = asyncio.new_event_loop(), asyncio.Event()
    thread = threading.Thread(target=lambda: loop.run_until_complete(srv.run(lambda s: ready.set(), stop)),
                              daemon=True)
    thread.start()
    assert ready.wait(60)
    with urllib.request.urlopen(f"http://127.0.0.1:{srv.port}/healthz", timeout=10) as resp:  # no key needed
        assert resp.status == 200 and resp.read() == b"OK\n"
    with pytest.raises(InvalidStatus, match="401"):
        WebsocketClientPolicy("127.0.0.1", srv.port, api_key="wrong")
    client = WebsocketClientPolicy("127.0.0.1", srv.port, api_key="s3cret")
    assert client.infer(libero_obs(0))["actions"].shape == (2, 7)
    client._ws.close()
    loop.call_soon_threadsafe(stop.set)
    thread.join(30)
    assert not thread.is_alive()


def send_raw(port: int, payload, keep=None):
    """One message on a fresh connection -> the reply (bytes or str), or the close exception."""
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    with connect(f"ws://127.0.0.1:{port}", max_size=None, compression=None) as ws:
        unpack(ws.recv(timeout=30))  # metadata
        try:
            ws.send(payload)
            return ws.recv(timeout=120)
        except ConnectionClosed as err:
            return err


def test_bad_messages_get_an_error_and_the_server_keeps_serving(server):
    import msgpack

    im = np.zeros((64, 64, 3), np.uint8)
    spoof = msgpack.packb({"image": {b"__ndarray__": True, b"data": b"\0" * 8, b"dtype": "|O", b"shape": [1]}})
    bad = {
        "not msgpack": b"\x00\xffnot msgpack at all\xc1",
        "text frame": "hello",
        "a list": pack([1, 2, 3]),
        "wrong types": pack({"image": "abc", "wrist_image": 5, "instruction": ["x"]}),
        "missing keys": pack({"observation/image": im, "prompt": TASK}),
        "wrong image shape": pack({"image": im[..., 0], "wrist_image": im, "instruction": TASK}),
        "object array": spoof,
        "bad reset": pack({"reset": "yes", "image": im, "wrist_image": im, "instruction": TASK}),
    }
    for name, payload in bad.items():
        reply = send_raw(server, payload)
        assert isinstance(reply, str) and reply.startswith("error: "), (name, reply)
    # One connection, a bad message then a good one: an error costs one reply, not the connection.
    from websockets.sync.client import connect

    with connect(f"ws://127.0.0.1:{server}", max_size=None) as ws:
        unpack(ws.recv(timeout=30))
        ws.send(b"junk")
        assert ws.recv(timeout=60).startswith("error: ")
        ws.send(pack(libero_obs(0)))
        assert unpack(ws.recv(timeout=120))["actions"].shape == (2, 7)
    # 100 MB: the connection is closed with "message too big" (1009); nobody else notices.
    from websockets.exceptions import ConnectionClosed

    big = pack({"image": np.zeros((100 * 2**20,), np.uint8), "wrist_image": im, "instruction": TASK})
    closed = send_raw(server, big)
    assert isinstance(closed, ConnectionClosed) and closed.rcvd is not None and closed.rcvd.code == 1009
    assert infer_ok(server).shape == (2, 7)


def test_silent_and_churning_clients_do_not_block_others(server):
    from websockets.sync.client import connect

    silent_tcp = socket.create_connection(("127.0.0.1", server))  # never even says hello
    silent_ws = connect(f"ws://127.0.0.1:{server}").__enter__()  # handshakes, then never sends
    try:
        t0 = time.perf_counter()
        assert infer_ok(server, seed=3).shape == (2, 7)
        assert time.perf_counter() - t0 < 60
        with connect(f"ws://127.0.0.1:{server}") as gone:  # asks, then leaves before the answer
            gone.recv(timeout=30)
            gone.send(pack(libero_obs(5)))
        for _ in range(500):  # opened and closed; the server must not run out of anything
            with connect(f"ws://127.0.0.1:{server}", open_timeout=30) as ws:
                ws.recv(timeout=30)
        assert infer_ok(server, seed=4).shape == (2, 7)
    finally:
        silent_tcp.close()
        silent_ws.close()


def test_concurrent_clients_are_batched_and_each_gets_its_own_answer(server, local_policy):
    from openpi_client.websocket_client_policy import WebsocketClientPolicy

    n = 4
    clients = [WebsocketClientPolicy("127.0.0.1", server) for _ in range(n)]
    obs = [libero_obs(10 + i) for i in range(n)]
    replies: list = [None] * n

    def ask(i):
        replies[i] = clients[i].infer(obs[i])

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    want = local_policy.predict_chunks([o["observation/image"] for o in obs],
                                       [o["observation/wrist_image"] for o in obs], [TASK] * n)
    for i in range(n):
        np.testing.assert_array_equal(replies[i]["actions"], want[i].astype(np.float32))
    assert max(r["server_timing"]["batch_size"] for r in replies) > 1  # decoded together, not one by one
    for c in clients:
        c._ws.close()


# ---------------------------------------------------------------------------------------------------- remote eval
def test_remote_act_batch_equals_local(server, local_policy):
    from tinyvla.serving.remote import RemotePolicy

    from tinyvla.interface import PolicyInterface

    remote = RemotePolicy(f"ws://127.0.0.1:{server}")
    assert isinstance(remote, PolicyInterface)
    assert remote.config.ensemble == local_policy.config.ensemble and remote.config.stats == local_policy.config.stats
    assert remote.config.decoding.speculative  # the server decodes speculatively (tinyvla serve's default)
    rng = np.random.default_rng(5)
    for p in (remote, local_policy):
        p.reset(2)
    for step in range(4):
        obs = [{"image": rng.integers(0, 256, (64, 64, 3), dtype=np.uint8),
                "wrist_image": rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)} for _ in range(2)]
        if step == 2:
            for p in (remote, local_policy):
                p.reset_env(1)
        np.testing.assert_array_equal(remote.act_batch(obs, [TASK] * 2), local_policy.act_batch(obs, [TASK] * 2))
    remote.close()


def test_remote_eval_gives_the_local_results(server, policy_dir, tmp_path):
    from tinyvla.cli.main import main

    common = ["--suite", "blockfind-reach", "--episodes-per-task", "4", "--max-steps", "8", "--num-envs", "2"]
    assert main(["eval", str(policy_dir), *common, "--out", str(tmp_path / "local")]) == 0
    assert main(["eval", f"ws://127.0.0.1:{server}", *common, "--out", str(tmp_path / "remote")]) == 0
    local, remote = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("local", "remote"))
    assert remote["success_rate"] == local["success_rate"] and remote["tasks"] == local["tasks"]
    assert remote["protocol"] == local["protocol"]
    assert remote["checkpoint"] == local["checkpoint"]  # the served policy's identity: one --out may mix the two

    def outcomes(d):
        rows = [json.loads(line) for line in (tmp_path / d / "episodes.jsonl").read_text().splitlines()]
        return sorted((r["task_id"], r["episode"], r["success"], r["steps"]) for r in rows)

    assert outcomes("remote") == outcomes("local")


def test_profile_script_splits_the_time_and_counts_the_work(policy_dir, tmp_path):
    """scripts/profile_serve.py (BENCHMARKS' serving profile) on a tiny policy: every phase timed, passes and token
    positions counted for each variant and batch size, the pass costs measured."""
    out = tmp_path / "profile.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, str(ROOT / "scripts" / "profile_serve.py"), str(policy_dir), "--steps", "2",
                          "--batch", "1,2", "--pass-budget", "0,8", "--json", str(out)], env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    r = json.loads(out.read_text())
    rows = {(p["pass_budget"], p["batch"]): p for p in r["profile"]}
    assert set(rows) == {(None, 1), (None, 2), (8, 1), (8, 2)}
    for p in rows.values():
        assert p["ms_per_request"] > 0 and p["forward_ms_per_request"] > 0 and p["passes_per_batch"] >= 1
        assert p["computed_per_request"] > 0 and 0 <= p["padding_share"] < 1
    assert rows[(None, 2)]["passes_alone_per_row"] >= 1
    assert {c["batch"] for c in r["pass_cost"]} == {1, 2} and all(c["prefill_ms"] > 0 for c in r["pass_cost"])
