"""scripts/gpu_check.sh cannot run here (no GPU); its CPU-sized variant runs every part of it: both precision modes,
DDP and FSDP2 over 2 CPU processes (gloo), inference with and without speculation, one JSON file."""

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_cpu_variant_writes_every_figure(tmp_path):
    out = tmp_path / "gpu_check.json"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    res = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--tiny", "--steps", "2", "--fsdp-steps",
                          "1", "--infer-steps", "2", "--serve-requests", "8", "--out", str(out)], env=env,
                         capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    r = json.loads(out.read_text())
    assert set(r["train"]) == {"bf16-mixed+adamw", "bf16+adamw-kahan"}
    for mode in r["train"].values():
        assert mode["samples_per_s"] > 0 and mode["peak_mem_gb"] > 0 and "mfu" in mode
    assert "error" not in r, r.get("error")
    assert r["ddp"]["processes"] == 2 and r["ddp"]["samples_per_s"] > 0
    f = r["fsdp"]
    assert f["processes"] == 2 and f["units"] >= 4 and 0.45 < f["local_share"] < 0.55  # really sharded
    assert all(x == x and x > 0 for x in f["losses"])  # finite
    inf = r["inference"]
    assert inf["identical"] is True and set(inf["chunks_per_s"]) == {"spec", "greedy"}
    srv = r["serving"]
    assert "error" not in srv, srv.get("error")
    assert srv["wrong"] == 0 and set(srv["req_per_s"]) == {"1", "8"} and srv["throughput_8_over_1"] > 0
