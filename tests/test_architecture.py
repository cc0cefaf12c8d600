"""The shape of the code: imports flow one way (no cycle, lazy imports included), every module imports on its own,
the light modules stay light, and the policies eval runs implement the declared interface."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import tinyvla

ROOT = Path(tinyvla.__file__).parent


def module_graph() -> dict[str, set[str]]:
    """tinyvla module -> the tinyvla modules it imports anywhere in its file (top level or inside a function)."""
    modules = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    graph = {}
    for name, path in modules.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # `from pkg import mod` imports pkg.mod when that is a module, else a name of pkg
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            # A package's own __init__ runs before any of its modules: not an edge back to it.
            deps |= {t for t in targets if t in modules and t != name and not name.startswith(t + ".")}
        graph[name] = deps
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state, stack = {}, []  # state: 1 = on the current path, 2 = done

    def visit(node):
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                return stack[stack.index(dep):] + [dep]
            if dep not in state and (found := visit(dep)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def dependency_order(graph: dict[str, set[str]]) -> list[str]:
    order, done = [], set()

    def visit(node):
        if node in done:
            return
        done.add(node)
        for dep in sorted(graph[node]):
            visit(dep)
        order.append(node)

    for node in sorted(graph):
        visit(node)
    return order


def test_no_import_cycle():
    graph = module_graph()
    assert len(graph) > 40 and "tinyvla.policy_dir" in graph["tinyvla.policy"]
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_find_cycle_sees_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.slow  # ~10 s idle, ~40 s on a busy 2-core machine: torch, transformers, peft and accelerate load once
def test_every_module_imports_alone_in_dependency_order():
    """A fresh interpreter imports each module after its dependencies: no module needs another one imported first."""
    order = dependency_order(module_graph())
    code = "import importlib, sys\nfor m in sys.argv[1:]:\n    importlib.import_module(m)\n"
    subprocess.run([sys.executable, "-c", code, *order], check=True, timeout=300)


def test_light_modules_do_not_import_torch():
    """What eval's loop, the policy format, suites and the interface need runs without torch (a policy server's
    client, a robot-side process)."""
    code = ("import sys, tinyvla.interface, tinyvla.envs.suites, tinyvla.evaluation.rollout, tinyvla.policy_dir, "
            "tinyvla.evaluate, tinyvla.recipe; assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_policies_implement_the_interface():
    from tinyvla.evaluation.baselines import ExpertPolicy, RandomPolicy
    from tinyvla.interface import PolicyInterface
    from tinyvla.policy import Policy

    assert isinstance(RandomPolicy(), PolicyInterface) and isinstance(ExpertPolicy(), PolicyInterface)
    members = [m for m in vars(PolicyInterface) if not m.startswith("_")] + ["config"]
    assert {"reset", "reset_env", "seed_env", "bind", "act_batch", "config"} <= set(members)
    for m in members:
        if m != "config":  # an instance attribute of Policy (set in __init__)
            assert callable(getattr(Policy, m)), m
