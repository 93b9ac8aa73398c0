"""Build katyusha, with the modules a request runs through compiled by Cython when possible.

The modules in ``COMPILED`` are compiled as they are (plain ``.py``, no
``.pyx``); the ``.py`` files ship beside them and stay the reference. The
compilation is asked for (``KATYUSHA_COMPILE=1``, or a comma-separated list of
module names to compile only those): compiled as they are, these modules run
slower than on CPython 3.11's specialising interpreter (docs/performance.md),
so a plain install compiles nothing. It is optional too: without Cython, or
when the C compiler fails on a module, the install still succeeds and those
modules run as Python. Each compiled module's source hash goes to ``katyusha/_compiled.json``;
at import, ``katyusha.compiled`` loads a compiled module only when its ``.py``
still has that hash (and never with ``KATYUSHA_PURE_PYTHON=1``).
See docs/performance.md, "A compiled hot path".
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

# What a body-less request runs through (benchmarks/bytecodes_per_request.py --top).
COMPILED = [
    "katyusha.proxy.app",
    "katyusha.proxy.service",
    "katyusha.proxy.metrics",
    "katyusha.http.server",
    "katyusha.http.connection",
    "katyusha.http.client",
    "katyusha.http.exchange",
    "katyusha.core.service",
    "katyusha.core.loadtable",
    "katyusha.core.queue",
    "katyusha.core.capacity",
    "katyusha.core.retrybudget",
    "katyusha.core.responsepool",
    "katyusha.core.forwarding",
    "katyusha.core.health",
    "katyusha.core.policies.selectors",
    "katyusha.core.policies.metrics",
    "katyusha.core.policies.piggyback",
]
MANIFEST = "_compiled.json"
HERE = Path(__file__).resolve().parent

# Python semantics kept: annotations are not C types, no bounds or None checks dropped.
DIRECTIVES = {"language_level": 3, "annotation_typing": False, "binding": True,
              "embedsignature": False}


def _source(name: str) -> Path:
    return HERE.joinpath(*name.split(".")).with_suffix(".py")


def source_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _note(message: str) -> None:
    sys.stderr.write(f"katyusha build: {message}; those modules run as Python\n")


def wanted(value: str) -> list[str]:
    """The modules ``KATYUSHA_COMPILE`` asks for: "1" all, a list of names those, else none."""
    value = value.strip()
    if value.lower() in ("", "0", "false", "no", "off"):
        return []
    if value.lower() in ("1", "true", "yes", "on"):
        return list(COMPILED)
    names = [name.strip() for name in value.split(",") if name.strip()]
    unknown = sorted(set(names) - set(COMPILED))
    if unknown:
        raise SystemExit(f"KATYUSHA_COMPILE: not among the compilable modules: {', '.join(unknown)}")
    return names


def extensions() -> list[Extension]:
    names = wanted(os.environ.get("KATYUSHA_COMPILE", ""))
    if not names:
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        _note("Cython is not installed, nothing compiled")
        return []
    modules = [Extension(name, [str(_source(name).relative_to(HERE))]) for name in names]
    try:
        return cythonize(modules, compiler_directives=DIRECTIVES, build_dir="build/cython",
                         quiet=True, nthreads=0)
    except Exception as exc:  # a Cython error in one module must not fail the install
        _note(f"Cython failed ({exc})")
        return []


class OptionalBuildExt(build_ext):
    """build_ext that skips a module the compiler fails on, and records what it built."""

    def run(self) -> None:
        self._built: dict[str, str] = {}
        try:
            super().run()
        except Exception as exc:  # no compiler at all (DistutilsPlatformError and kin)
            _note(f"the extensions were not built ({exc})")
            self._built.clear()
        self._write_manifest()

    def build_extension(self, ext) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:  # CCompilerError, DistutilsExecError, a missing CC...
            _note(f"{ext.name} was not compiled ({exc})")
            return
        self._built[ext.name] = source_hash(_source(ext.name))

    def copy_extensions_to_source(self) -> None:
        # In place (or editable): only what was built is copied.
        every = self.extensions
        self.extensions = [ext for ext in every if ext.name in self._built]
        try:
            super().copy_extensions_to_source()
        finally:
            self.extensions = every

    def _write_manifest(self) -> None:
        # Next to the package the extensions went to: the source tree when
        # in place (or editable), the build folder when making a wheel.
        targets = {Path(self.get_ext_fullpath("katyusha._compiled")).parent}
        if self.inplace or getattr(self, "editable_mode", False):
            targets.add(HERE / "katyusha")
        try:
            from Cython import __version__ as cython
        except ImportError:
            cython = None
        text = json.dumps({"cython": cython, "modules": dict(sorted(self._built.items()))},
                          indent=1) + "\n"
        for folder in targets:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / MANIFEST).write_text(text)

    def get_outputs(self) -> list[str]:
        # The manifest is installed with the extensions (a wheel, an editable install).
        return [*super().get_outputs(), str(Path(self.get_ext_fullpath("katyusha._compiled")).parent
                                            / MANIFEST)]


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt},
      # One C compiler a core: the modules are independent.
      options={"build_ext": {"parallel": os.cpu_count() or 1}})
