"""A nonna-only install: the base package runs nonna and sim-backend without ortools and numpy.

The first tests are fast and run with the suite: they read the installed
package's requirements, and run real nonna and sim-backend processes whose
imports of ortools and numpy fail. The last one builds a fresh venv with a
normal ``pip install`` of the base package (14 s with a local wheel mirror,
longer from PyPI); it needs the package index, so it is marked
``install`` and left out of the default run: ``pytest -m install tests/test_base_install.py``.
"""

from __future__ import annotations

import http.client
import importlib.metadata as metadata
import subprocess
import sys
import venv
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.procs import Proc, script

ROOT = Path(__file__).resolve().parent.parent
PLACEMENT_ONLY = {"ortools", "numpy"}

# Run as the first lines of a child Python: any import of ortools or numpy fails.
BLOCK = """
import sys
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("ortools", "numpy"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name.split(".")[0])
sys.meta_path.insert(0, _Block())
"""


def _applies(requirement: Requirement, extras: set[str]) -> bool:
    if requirement.marker is None:
        return True
    return any(requirement.marker.evaluate({"extra": extra}) for extra in extras | {""})


def installed_closure(name: str, extras: set[str]) -> set[str]:
    """Every distribution a ``pip install name[extras]`` pulls, read from the installed metadata."""
    seen: set[str] = set()
    todo = [(name, extras)]
    while todo:
        dist_name, dist_extras = todo.pop()
        key = canonicalize_name(dist_name)
        if key in seen and not dist_extras:
            continue
        seen.add(key)
        for raw in metadata.requires(dist_name) or []:
            requirement = Requirement(raw)
            if _applies(requirement, {canonicalize_name(e) for e in dist_extras}):
                todo.append((requirement.name, set(requirement.extras)))
    return seen


def test_the_base_install_pulls_neither_ortools_nor_numpy():
    base = installed_closure("katyusha", set())
    assert {"uvicorn", "starlette", "prometheus-client"} <= base
    assert not base & PLACEMENT_ONLY, base & PLACEMENT_ONLY
    # make test and make fleet install the test extra, which brings placement back.
    assert PLACEMENT_ONLY <= installed_closure("katyusha", {"placement"})
    assert PLACEMENT_ONLY <= installed_closure("katyusha", {"test"})


def blocked_python(code: str, *args: str) -> list[str]:
    return [sys.executable, "-c", BLOCK + code, *args]


def get(url: str) -> tuple[int, dict]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        conn.request("GET", parts.path)
        response = conn.getresponse()
        response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}
    finally:
        conn.close()


def test_nonna_and_sim_backend_serve_without_placement_packages():
    run_nonna = "from nonna.cli import main; sys.exit(main(sys.argv[1:]))"
    run_backend = "from sim_backend.cli import main; sys.exit(main(sys.argv[1:]))"
    done = subprocess.run(blocked_python(run_nonna, "--help"), capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 0 and "--concurrency" in done.stdout, done.stderr
    with Proc(blocked_python(run_backend, "--port", "0", "--admin-port", "0",
                             "--service-time", "const:1ms")) as backend, \
            Proc(blocked_python(run_nonna, "--port", "0", "--admin-port", "0",
                                "--upstream", backend.url)) as proxy:
        status, headers = get(proxy.url + "/hello")
        assert status == 200 and headers["nonna-concurrency"] == "1"
        assert get(proxy.admin + "/stats")[0] == 200


def test_placement_without_its_packages_names_the_extra():
    done = subprocess.run(blocked_python("import katyusha.core.placement.model"),
                          capture_output=True, text=True, timeout=30)
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError") and "pip install 'katyusha[placement]'" in last, last


@pytest.mark.install
def test_fresh_venv_with_the_base_install_runs_nonna(tmp_path):
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    bin_dir = env_dir / "bin"
    pip = subprocess.run([str(bin_dir / "pip"), "install", "--quiet", str(ROOT)],
                         capture_output=True, text=True, timeout=600)
    assert pip.returncode == 0, pip.stderr
    freeze = subprocess.run([str(bin_dir / "pip"), "freeze"], capture_output=True, text=True,
                            timeout=60).stdout.lower()
    assert "ortools" not in freeze and "numpy" not in freeze, freeze
    assert subprocess.run([str(bin_dir / "nonna"), "--help"], capture_output=True,
                          timeout=60).returncode == 0
    with Proc([script("sim-backend"), "--port", "0", "--admin-port", "0"]) as backend, \
            Proc([str(bin_dir / "nonna"), "--port", "0", "--admin-port", "0",
                  "--upstream", backend.url]) as proxy:
        assert get(proxy.url + "/hello")[0] == 200
    placement = subprocess.run([str(bin_dir / "python"), "-c", "import katyusha.core.placement"],
                               capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert "katyusha[placement]" in placement.stderr
