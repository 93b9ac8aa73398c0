"""Which of katyusha's modules run compiled, and the switch back to their ``.py``.

setup.py may compile the modules a request runs through with Cython (as they
are, from their ``.py``) and records each one's source hash in
``katyusha/_compiled.json``. Python's own import would load an extension
module ahead of the ``.py`` beside it; the finder installed here (first on
``sys.meta_path``) decides instead, for every ``katyusha.*`` module that has an
extension file:

* ``KATYUSHA_PURE_PYTHON=1`` (or a comma-separated list of module names):
  the ``.py``, for every compiled module (or for those named);
* a ``.py`` whose hash is not the one recorded at build (edited since, or no
  record at all): the ``.py``, with one warning naming the stale modules, so
  an edit never runs the old compiled code silently;
* otherwise the compiled module.

:func:`status` says what was loaded which way.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import json
import os
import sys
import warnings

ENV_PURE = "KATYUSHA_PURE_PYTHON"
MANIFEST = "_compiled.json"
_EXTENSION_SUFFIXES = tuple(importlib.machinery.EXTENSION_SUFFIXES)


def _pure_setting(value: str) -> bool | frozenset[str]:
    """True: every module pure; a set: those modules pure; False: none."""
    value = value.strip()
    if value.lower() in ("", "0", "false", "no", "off"):
        return False
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    return frozenset(name.strip() for name in value.split(",") if name.strip())


class StaleCompiledWarning(RuntimeWarning):
    """A compiled module's .py changed since the build: the .py runs instead."""


class CompiledFinder:
    """A meta-path finder choosing between a ``katyusha`` module's extension and its ``.py``."""

    def __init__(self, root: str, environ=os.environ):
        self.root = root
        self.pure = _pure_setting(environ.get(ENV_PURE, ""))
        self.compiled: list[str] = []  # loaded as extension modules
        self.as_python: dict[str, str] = {}  # name -> why its .py was loaded instead
        self._listings: dict[str, frozenset[str]] = {}
        self._recorded: dict[str, str] | None = None
        self._cython: str | None = None
        self._warned = False

    def _recorded_hashes(self) -> dict[str, str]:
        if self._recorded is None:
            try:
                with open(os.path.join(self.root, MANIFEST), encoding="utf-8") as file:
                    manifest = json.load(file)
                self._recorded = dict(manifest.get("modules", {}))
                self._cython = manifest.get("cython")
            except (OSError, ValueError):
                self._recorded = {}
        return self._recorded

    def _listing(self, folder: str) -> frozenset[str]:
        listing = self._listings.get(folder)
        if listing is None:
            try:
                listing = frozenset(os.listdir(folder))
            except OSError:
                listing = frozenset()
            self._listings[folder] = listing
        return listing

    def find_spec(self, fullname: str, path=None, target=None):
        if not fullname.startswith("katyusha.") or not path:
            return None
        leaf = fullname.rpartition(".")[2]
        for folder in path:
            listing = self._listing(folder)
            if leaf + ".py" not in listing:
                if leaf in listing:
                    return None  # a package: Python's own finders
                continue
            source = os.path.join(folder, leaf + ".py")
            extension = next((os.path.join(folder, leaf + suffix) for suffix in _EXTENSION_SUFFIXES
                              if leaf + suffix in listing), None)
            if extension is None:
                return None  # a plain module: Python's own finders load the same .py
            why = self._why_python(fullname, source)
            if why is None:
                self.compiled.append(fullname)
                loader = importlib.machinery.ExtensionFileLoader(fullname, extension)
                return importlib.util.spec_from_file_location(fullname, extension, loader=loader)
            self.as_python[fullname] = why
            loader = importlib.machinery.SourceFileLoader(fullname, source)
            return importlib.util.spec_from_file_location(fullname, source, loader=loader)
        return None

    def _why_python(self, fullname: str, source: str) -> str | None:
        if self.pure is True or (self.pure and fullname in self.pure):
            return f"{ENV_PURE} is set"
        recorded = self._recorded_hashes().get(fullname)
        try:
            with open(source, "rb") as file:
                current = hashlib.sha256(file.read()).hexdigest()
        except OSError:
            return None
        if recorded == current:
            return None
        self._warn_stale()
        return "its .py changed since it was compiled" if recorded else "no build record for it"

    def _warn_stale(self) -> None:
        if self._warned:
            return
        self._warned = True
        # Every stale module named at once, so there is one warning.
        stale = []
        for name, recorded in self._recorded_hashes().items():
            path = os.path.join(os.path.dirname(self.root), *name.split(".")) + ".py"
            try:
                with open(path, "rb") as file:
                    if hashlib.sha256(file.read()).hexdigest() != recorded:
                        stale.append(name)
            except OSError:
                stale.append(name)
        warnings.warn_explicit(
            "compiled modules older than their .py, the .py runs instead "
            f"({', '.join(stale) or 'modules with no build record'}); rebuild with `make compile` "
            "(KATYUSHA_COMPILE=1 python setup.py build_ext --inplace)",
            StaleCompiledWarning, "katyusha", 0)


def install(root: str) -> CompiledFinder:
    """Put the finder first on ``sys.meta_path`` (once) and return it."""
    for finder in sys.meta_path:
        if isinstance(finder, CompiledFinder):
            return finder
    finder = CompiledFinder(root)
    sys.meta_path.insert(0, finder)
    return finder


def status() -> dict:
    """What was loaded which way so far: ``compiled`` (names), ``python`` (name -> why), ``cython``."""
    for finder in sys.meta_path:
        if isinstance(finder, CompiledFinder):
            finder._recorded_hashes()
            return {"compiled": sorted(finder.compiled), "python": dict(sorted(finder.as_python.items())),
                    "cython": finder._cython}
    return {"compiled": [], "python": {}, "cython": None}


def describe() -> str:
    """One line for ``--version``: the hot path's modules compiled or not (imports them first)."""
    import katyusha.http.server  # noqa: F401 - the modules a request runs through
    import katyusha.proxy.app  # noqa: F401

    state = status()
    compiled, python = state["compiled"], state["python"]
    if compiled and not python:
        return f"compiled hot path ({len(compiled)} modules, Cython {state['cython']})"
    if compiled:
        return (f"compiled hot path in part ({len(compiled)} modules compiled, {len(python)} as Python: "
                f"{'; '.join(f'{n}: {w}' for n, w in python.items())})")
    if python:
        reasons = sorted(set(python.values()))
        return f"pure Python ({len(python)} compiled modules not used: {'; '.join(reasons)})"
    return "pure Python (nothing compiled)"
