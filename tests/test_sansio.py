"""The core is sans-IO: no module under katyusha/core imports I/O or reads a clock or global RNG."""

import ast
import pathlib
import pkgutil

import pytest

import katyusha.core

CORE = pathlib.Path(__file__).resolve().parent.parent / "katyusha" / "core"

# Modules that decide, which must stay in the core (and so under this test):
# one moved out of katyusha/core fails test_the_deciding_modules_are_checked.
DECIDING = {
    "queue.py", "loadtable.py", "feedback.py", "responsepool.py", "delay.py",
    "autoscaler.py", "podstate.py", "placement/solver.py",
    "policies/__init__.py", "policies/base.py", "policies/metrics.py",
    "policies/selectors.py", "policies/index.py", "policies/simple.py",
    "policies/piggyback.py", "policies/peak_ewma.py", "policies/prequal.py",
    "service.py", "capacity.py", "routing.py", "membership.py", "picktrace.py",
    "sidecar.py", "lifecycle.py", "actuation.py", "fleetplan.py", "scaling.py",
    "endpoints.py", "subset.py", "lease.py",
}
# The drivers do I/O: a core module importing one would bring it in.
DRIVERS = {"katyusha.proxy", "katyusha.http", "katyusha.control", "katyusha.fleet",
           "katyusha.cli", "katyusha.serving", "katyusha.procs", "nonna", "sim_backend"}

FORBIDDEN_MODULES = {
    "asyncio", "socket", "selectors", "ssl", "http", "urllib", "httptools", "uvicorn",
    "starlette", "anyio", "aiohttp", "httpx", "requests", "threading", "subprocess",
    "multiprocessing", "time", "datetime", "prometheus_client", "uvloop",
}
# `random` may be imported for the `random.Random` type, never called at module level.
FORBIDDEN_CALLS = {
    ("random", "random"), ("random", "choice"), ("random", "randint"), ("random", "shuffle"),
    ("random", "uniform"), ("random", "expovariate"), ("random", "sample"), ("random", "seed"),
    ("random", "gauss"), ("random", "lognormvariate"), ("os", "urandom"),
}


def core_modules():
    return sorted(CORE.rglob("*.py"))


def test_every_core_module_is_checked():
    # What the import system finds under katyusha.core, against what the
    # parametrized test below scans: a module it missed would go unchecked.
    assert pathlib.Path(katyusha.core.__path__[0]).resolve() == CORE
    scanned = {path.relative_to(CORE).with_suffix("").as_posix() for path in core_modules()}
    modules = {"__init__"}
    for info in pkgutil.walk_packages(katyusha.core.__path__, "katyusha.core."):
        name = info.name.removeprefix("katyusha.core.").replace(".", "/")
        modules.add(f"{name}/__init__" if info.ispkg else name)
    assert modules and modules <= scanned, f"not scanned: {sorted(modules - scanned)}"


def test_the_deciding_modules_are_checked():
    scanned = {path.relative_to(CORE).as_posix() for path in core_modules()}
    assert DECIDING <= scanned, f"moved out of katyusha/core: {sorted(DECIDING - scanned)}"


@pytest.mark.parametrize("path", core_modules(), ids=lambda p: str(p.relative_to(CORE)))
def test_core_module_is_sans_io(path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                assert alias.name.split(".")[0] not in FORBIDDEN_MODULES, (
                    f"{path.name} imports {alias.name}"
                )
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            assert node.module.split(".")[0] not in FORBIDDEN_MODULES, (
                f"{path.name} imports from {node.module}"
            )
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for name in names:
                assert not any(name == d or name.startswith(d + ".") for d in DRIVERS), (
                    f"{path.name} imports the driver {name}"
                )
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            value = node.func.value
            if isinstance(value, ast.Name):
                assert (value.id, node.func.attr) not in FORBIDDEN_CALLS, (
                    f"{path.name} calls {value.id}.{node.func.attr} (global state)"
                )
