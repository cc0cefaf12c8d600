"""What needs real processes: a second training into a locked run dir, children dying with their parent (a worker,
the ranks of `accelerate launch`), a multi-process checkpoint, and kill -9 at random moments (scripts/crash_resume.py)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tinyvla.cli.main import main

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "libero_v20_tiny"
RECIPE = str(ROOT / "recipes" / "tiny-cpu.yaml")
LONG = [f"data.repo={FIXTURE}", "data.suite=null", "data.image_size=32", "data.num_workers=0", "data.val_episodes=0",
        "train.batch_size=2", "train.max_steps=100000", "train.save_every=0", "train.tensorboard=false",
        "train.num_threads=1"]


def env() -> dict:
    e = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    e["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), e.get("PYTHONPATH")]))
    return e


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def wait_until(predicate, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_second_training_into_the_same_out_is_refused_naming_the_pid(tmp_path, capsys):
    out = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-m", "tinyvla.cli.main", "train", RECIPE,
                              *[a for o in LONG for a in ("--set", o)], "--out", str(out)],
                             env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        lock = out / ".lock"
        wait_until(lambda: lock.is_file() and lock.read_text().strip() == str(first.pid), 120, "the first run's lock")
        rc = main(["train", RECIPE, *[a for o in LONG for a in ("--set", o)], "--out", str(out), "--resume"])
        err = capsys.readouterr().err
        assert rc == 2 and err.count("\n") == 1
        assert err.startswith(f"error: {out} is in use by another training (PID {first.pid})")
        assert first.poll() is None  # the first run is undisturbed
    finally:
        first.kill()
        first.wait()


@pytest.mark.parametrize("protected", [True, False], ids=["die_with_parent", "unprotected"])
def test_a_child_dies_with_its_parent(tmp_path, protected):
    """The control case (no prctl) shows the test can fail: an unprotected child outlives a kill -9 of its parent."""
    ready = tmp_path / "ready"
    child_code = ("import os, sys, time\n"
                  "from tinyvla.lifetime import die_with_parent\n"
                  f"if {protected}: die_with_parent(int(sys.argv[1]))\n"
                  f"open({str(ready)!r}, 'w').write(str(os.getpid()))\n"
                  "time.sleep(60)\n")
    parent_code = ("import os, subprocess, sys, time\n"
                   f"subprocess.Popen([sys.executable, '-c', {child_code!r}, str(os.getpid())])\n"
                   "time.sleep(60)\n")
    parent = subprocess.Popen([sys.executable, "-c", parent_code], env=env())
    wait_until(lambda: ready.is_file() and ready.read_text(), 60, "the child")
    child = int(ready.read_text())
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    try:
        if protected:
            wait_until(lambda: not alive(child), 5, "the child to die with its parent")
        else:
            time.sleep(1)
            assert alive(child)
    finally:
        if alive(child):
            os.kill(child, signal.SIGKILL)


def test_an_eval_env_worker_dies_with_the_eval(tmp_path):
    """`tinyvla eval --num-envs N` on LIBERO runs each simulator in a worker process. A worker waiting for a command
    sees its pipe close when the eval dies; one busy building or stepping a scene does not, and must not keep going
    after a kill -9 of the eval. Here the env build takes a minute, so only die-with-parent can end it in time."""
    ready = tmp_path / "ready"
    code = ("import os, time\n"
            "from tinyvla.envs.suites import setup_suite\n"
            "from tinyvla.evaluation.slots import make_slots\n"
            "class SlowFactory:\n"
            "    def __call__(self, task_id):\n"
            "        time.sleep(60)  # building a scene, for the purpose of this test forever\n"
            "if __name__ == '__main__':\n"
            "    slots = make_slots(setup_suite('blockfind-reach', max_steps=5), 1, factory=SlowFactory(),\n"
            "                       processes=True)\n"
            "    slots[0].send('reset', (0, 0, None))\n"
            "    time.sleep(3)  # the worker is inside the factory now\n"
            f"    open({str(ready)!r}, 'w').write(str(slots[0].proc.pid))\n"
            "    time.sleep(60)\n")
    script = tmp_path / "eval_parent.py"
    script.write_text(code)
    parent = subprocess.Popen([sys.executable, str(script)], env=env())
    wait_until(lambda: ready.is_file() and ready.read_text(), 60, "the env worker")
    worker = int(ready.read_text())
    assert alive(worker)
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    try:
        wait_until(lambda: not alive(worker), 10, "the env worker to die with the eval")
    finally:
        if alive(worker):
            os.kill(worker, signal.SIGKILL)


@pytest.mark.slow
def test_crash_injection_resumes_bit_identically(tmp_path):
    """Two kill -9 moments of scripts/crash_resume.py (inside a checkpoint save, inside the final write); BENCHMARKS
    has the 20-iteration count."""
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import crash_resume
    finally:
        sys.path.pop(0)
    assert crash_resume.main(["--iterations", "2", "--modes", "checkpoint,final", "--work", str(tmp_path / "w")]) == 0


RACE_SCRIPT = """
import os, sys, time
from pathlib import Path
import torch
from accelerate import Accelerator
from tinyvla.training import checkpoint

accelerator = Accelerator(cpu=True)
assert accelerator.num_processes == 2, accelerator.num_processes
model = torch.nn.Linear(4, 4)
optimizer = torch.optim.AdamW(model.parameters())
model, optimizer = accelerator.prepare(model, optimizer)
save_state = accelerator.save_state
if accelerator.process_index == 1:  # a slow rank: rank 0 must not publish the checkpoint before it is done
    def slow_save_state(path):
        time.sleep(1.5)
        return save_state(path)
    accelerator.save_state = slow_save_state
ckpt_dir = Path(sys.argv[1])
final = checkpoint.save_checkpoint(accelerator, ckpt_dir, 1, {"epoch": 0, "micro_in_epoch": 1}, keep_last=2)
if accelerator.is_main_process:
    assert checkpoint.list_checkpoints(ckpt_dir) == [final]
    assert (final / "random_states_1.pkl").is_file(), sorted(p.name for p in final.iterdir())
"""


@pytest.mark.slow
def test_a_checkpoint_is_published_only_after_every_rank_wrote_it(tmp_path):
    """Issue #15 item 1: two processes (gloo), rank 1 slow to save; the checkpoint must hold rank 1's files."""
    script = tmp_path / "race.py"
    script.write_text(RACE_SCRIPT)
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                             "--standalone", str(script), str(tmp_path / "ckpts")],
                            env=env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    marker = (tmp_path / "ckpts" / "step-00000001" / "COMPLETE.json").read_text()
    assert "random_states_0.pkl" in marker and "random_states_1.pkl" in marker


@pytest.mark.slow
def test_killing_accelerate_launch_stops_its_ranks(tmp_path):
    """Issue #15 item 6: `accelerate launch` keeps its ranks running after a kill -9 of the launcher unless each rank
    asked to die with its parent (the trainer does, when started by a launcher)."""
    out = tmp_path / "run"
    launcher = subprocess.Popen(
        [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
         "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
         "-m", "tinyvla.cli.main", "train", RECIPE, *[a for o in LONG + ["train.log_every=1"] for a in ("--set", o)],
         "--out", str(out)], env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ranks = set()
    try:
        def training():
            ranks.update(int(c) for t in Path(f"/proc/{launcher.pid}/task").glob("*")
                         for c in (t / "children").read_text().split())
            return (out / "metrics.jsonl").is_file()

        wait_until(training, 240, "two ranks training")
        assert len(ranks) >= 2, ranks
        os.kill(launcher.pid, signal.SIGKILL)
        launcher.wait()
        wait_until(lambda: not any(alive(r) for r in ranks), 10, "the ranks to die with the launcher")
    finally:
        launcher.kill()
        for r in ranks:
            if alive(r):
                os.kill(r, signal.SIGKILL)
