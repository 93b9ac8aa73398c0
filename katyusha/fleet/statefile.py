"""Where a running fleet records its processes, so other commands can find them.

The runner writes a small JSON document (every process, its role, URLs and
pid) to ``$XDG_RUNTIME_DIR/katyusha-fleet-<port>.json`` when that directory
exists, else ``<tmp>/katyusha-fleet-<port>.json``; ``<port>`` is katyusha's
``--port`` (the first replica's real port when that is 0). ``--state-file``
picks another path. The file is replaced atomically and removed on a clean stop.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

PREFIX = "katyusha-fleet-"


class NoFleet(Exception):
    """No running fleet could be found, or several match; the message says which files were seen."""


def state_dir() -> Path:
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime) and os.access(runtime, os.W_OK):
        return Path(runtime)
    return Path(tempfile.gettempdir())


def default_path(port: int) -> Path:
    return state_dir() / f"{PREFIX}{port}.json"


def write(path: Path, document: dict[str, Any]) -> None:
    """Replace ``path`` with ``document`` atomically (readers never see half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name, dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(document, handle, indent=2)
            handle.write("\n")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def read(path: Path) -> dict[str, Any]:
    """The document at ``path``. Raises NoFleet when it is missing, unreadable or not a fleet's."""
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        raise NoFleet(f"no fleet state file at {path} (is `katyusha fleet up` running?)") from None
    except (OSError, ValueError) as exc:
        raise NoFleet(f"cannot read fleet state file {path}: {exc}") from None
    if not isinstance(document, dict) or "pods" not in document or "katyusha" not in document:
        raise NoFleet(f"{path} is not a fleet state file")
    return document


def runner_alive(document: dict[str, Any]) -> bool:
    pid = document.get("runner_pid")
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def find(path: str | None, port: int | None) -> tuple[Path, dict[str, Any]]:
    """Locate the running fleet: an explicit path, the path for ``port``, or the only live one.

    Raises NoFleet when nothing (or more than one fleet) matches.
    """
    if path:
        chosen = Path(path)
        return chosen, read(chosen)
    if port is not None:
        chosen = default_path(port)
        return chosen, read(chosen)
    live = []
    for candidate in sorted(state_dir().glob(f"{PREFIX}*.json")):
        with contextlib.suppress(NoFleet):
            document = read(candidate)
            if runner_alive(document):
                live.append((candidate, document))
    if len(live) == 1:
        return live[0]
    if not live:
        raise NoFleet(f"no running fleet found in {state_dir()} (start one with `katyusha fleet up`)")
    names = ", ".join(str(p) for p, _ in live)
    raise NoFleet(f"several fleets are running ({names}); choose one with --state-file or --port")
