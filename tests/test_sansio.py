"""The core is sans-IO: no module under katyusha/core imports I/O or reads a clock or global RNG."""

import ast
import pathlib

import pytest

CORE = pathlib.Path(__file__).resolve().parent.parent / "katyusha" / "core"

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


def test_core_has_modules():
    assert len(core_modules()) >= 3


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
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            value = node.func.value
            if isinstance(value, ast.Name):
                assert (value.id, node.func.attr) not in FORBIDDEN_CALLS, (
                    f"{path.name} calls {value.id}.{node.func.attr} (global state)"
                )
