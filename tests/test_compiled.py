"""The optional compiled request path (setup.py, katyusha.compiled): the build, the
switch back to the .py files, the stale check, and the data path the other way round.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from katyusha.compiled import ENV_PURE, CompiledFinder, StaleCompiledWarning, status

ROOT = Path(__file__).resolve().parent.parent
SUFFIX = importlib.machinery.EXTENSION_SUFFIXES[0]


def _package(tmp_path: Path, text: str = "X = 1\n", recorded: str | None = None) -> Path:
    """A fake ``katyusha`` folder: ``core/mod.py``, an extension file beside it, a manifest."""
    root = tmp_path / "katyusha"
    (root / "core").mkdir(parents=True)
    (root / "core" / "mod.py").write_text(text)
    (root / "core" / f"mod{SUFFIX}").write_bytes(b"not loaded by these tests")
    (root / "core" / "plain.py").write_text("Y = 2\n")
    digest = hashlib.sha256(text.encode()).hexdigest() if recorded is None else recorded
    (root / "_compiled.json").write_text(json.dumps({"cython": "3", "modules": {"katyusha.core.mod": digest}}))
    return root


def _spec(finder: CompiledFinder, root: Path, name: str = "katyusha.core.mod"):
    return finder.find_spec(name, [str(root / "core")])


def test_an_unchanged_module_with_an_extension_loads_compiled(tmp_path):
    root = _package(tmp_path)
    finder = CompiledFinder(str(root), environ={})
    spec = _spec(finder, root)
    assert isinstance(spec.loader, importlib.machinery.ExtensionFileLoader)
    assert spec.origin.endswith(SUFFIX)
    assert finder.compiled == ["katyusha.core.mod"]
    # A module with no extension, and a name outside katyusha: Python's own finders.
    assert _spec(finder, root, "katyusha.core.plain") is None
    assert finder.find_spec("other.mod", [str(root / "core")]) is None


@pytest.mark.parametrize("value", ["1", "true", "katyusha.core.mod,katyusha.core.other"])
def test_the_switch_loads_the_py(tmp_path, value):
    root = _package(tmp_path)
    finder = CompiledFinder(str(root), environ={ENV_PURE: value})
    spec = _spec(finder, root)
    assert isinstance(spec.loader, importlib.machinery.SourceFileLoader)
    assert spec.origin.endswith("mod.py")
    assert finder.as_python == {"katyusha.core.mod": f"{ENV_PURE} is set"}
    # Naming another module leaves this one compiled; "0" is off.
    for other in ("katyusha.core.other", "0", ""):
        spec = _spec(CompiledFinder(str(root), environ={ENV_PURE: other}), root)
        assert isinstance(spec.loader, importlib.machinery.ExtensionFileLoader)


def test_an_edited_py_loads_as_python_with_one_warning(tmp_path):
    root = _package(tmp_path, recorded=hashlib.sha256(b"X = 0\n").hexdigest())
    finder = CompiledFinder(str(root), environ={})
    with pytest.warns(StaleCompiledWarning, match=r"katyusha\.core\.mod") as caught:
        spec = _spec(finder, root)
        _spec(finder, root)
    assert len(caught) == 1
    assert isinstance(spec.loader, importlib.machinery.SourceFileLoader)
    assert finder.as_python["katyusha.core.mod"] == "its .py changed since it was compiled"


def test_an_extension_with_no_build_record_loads_as_python(tmp_path):
    root = _package(tmp_path)
    (root / "_compiled.json").unlink()
    finder = CompiledFinder(str(root), environ={})
    with pytest.warns(StaleCompiledWarning):
        spec = _spec(finder, root)
    assert isinstance(spec.loader, importlib.machinery.SourceFileLoader)
    assert finder.as_python["katyusha.core.mod"] == "no build record for it"


def test_the_switches_are_no_unknown_settings():
    from katyusha.proxy.config import from_env

    assert from_env({ENV_PURE: "1", "KATYUSHA_COMPILE": "1"}) == {}


def test_the_finder_is_first_on_the_meta_path():
    assert isinstance(sys.meta_path[0], CompiledFinder)


def _python(tree: Path, code: str, **env) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if k != ENV_PURE}
    full.update(PYTHONPATH=str(tree), **env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full,
                          timeout=60, cwd=tree)


def _compiler() -> bool:
    try:
        import Cython  # noqa: F401
    except ImportError:
        return False
    return shutil.which(os.environ.get("CC", "cc")) is not None


@pytest.mark.skipif(not _compiler(), reason="needs Cython and a C compiler")
def test_the_build_compiles_what_is_asked_and_the_switch_and_stale_check_give_the_py(tmp_path):
    tree = tmp_path / "tree"
    shutil.copytree(ROOT / "katyusha", tree / "katyusha",
                    ignore=shutil.ignore_patterns("*.so", "*.c", "_compiled.json", "__pycache__"))
    shutil.copy(ROOT / "setup.py", tree)
    shutil.copy(ROOT / "pyproject.toml", tree)
    shutil.copy(ROOT / "README.md", tree)
    module = "katyusha.core.retrybudget"
    build = [sys.executable, "setup.py", "-q", "build_ext", "--inplace"]
    # A compiler that fails: the build still succeeds, nothing is compiled.
    failed = subprocess.run(build, cwd=tree, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "KATYUSHA_COMPILE": module, "CC": "false"})
    assert failed.returncode == 0, failed.stderr
    assert f"{module} was not compiled" in failed.stderr
    assert not list((tree / "katyusha" / "core").glob("retrybudget*.so"))
    assert json.loads((tree / "katyusha" / "_compiled.json").read_text())["modules"] == {}
    # Nothing asked: nothing compiled.
    subprocess.run(build, cwd=tree, capture_output=True, check=True, timeout=300,
                   env={k: v for k, v in os.environ.items() if k != "KATYUSHA_COMPILE"})
    assert not list((tree / "katyusha" / "core").glob("retrybudget*.so"))

    built = subprocess.run(build, cwd=tree, capture_output=True, text=True, timeout=300,
                           env={**os.environ, "KATYUSHA_COMPILE": module})
    assert built.returncode == 0, built.stderr
    assert list((tree / "katyusha" / "core").glob("retrybudget*.so"))
    probe = ("import katyusha.core.retrybudget as m, katyusha.compiled as c; "
             "print(m.__file__); print(c.status()['compiled']); m.RetryBudget")
    out = _python(tree, probe)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0].endswith(SUFFIX)
    assert module in out.stdout.splitlines()[1]
    out = _python(tree, probe, **{ENV_PURE: "1"})
    assert out.stdout.splitlines()[0].endswith("retrybudget.py")
    # An edit after the build: the .py runs, with a warning naming the module.
    source = tree / "katyusha" / "core" / "retrybudget.py"
    source.write_text(source.read_text() + "\n# edited after the build\n")
    out = _python(tree, probe)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0].endswith("retrybudget.py")
    assert "StaleCompiledWarning" in out.stderr and module in out.stderr
    assert out.stderr.count("StaleCompiledWarning") == 1
    version = _python(tree, "from katyusha.proxy.cli import main; main(['--version'])", **{ENV_PURE: "1"})
    assert "pure Python" in version.stdout, version.stderr


def _compiled_here() -> bool:
    return bool(json.loads((ROOT / "katyusha" / "_compiled.json").read_text())["modules"]) \
        if (ROOT / "katyusha" / "_compiled.json").exists() else False


# A few of the data-path tests, run the other way round in a subprocess: with the
# compiled modules built here (make compile), the suite runs them compiled and
# this runs them as Python; bounded in time.
DATA_PATH = ["tests/test_data_path_fast.py", "tests/test_retries_e2e.py"]


@pytest.mark.skipif(not _compiled_here(), reason="no compiled modules built in this tree (make compile)")
def test_the_data_path_tests_pass_the_other_way_round():
    import katyusha.proxy.app  # noqa: F401 - the path's modules, as the suite loaded them

    compiled_now = bool(status()["compiled"])
    other = "1" if compiled_now else "0"
    env = {**os.environ, ENV_PURE: other, "PYTHONPATH": str(ROOT)}
    check = subprocess.run(
        [sys.executable, "-c", "import katyusha.proxy.app, katyusha.compiled as c; "
         "print(len(c.status()['compiled']))"], capture_output=True, text=True, env=env, timeout=60)
    assert (int(check.stdout) > 0) == (other == "0"), check.stderr
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *DATA_PATH],
                         capture_output=True, text=True, env=env, cwd=ROOT, timeout=170)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
