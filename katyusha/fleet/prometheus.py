"""``katyusha fleet up --prometheus``: a real Prometheus (Debian's package) scraping the local fleet.

The scrape config is written from the running fleet's state document (every
katyusha replica, the control plane, every nonna and sim-backend by its admin
URL, labelled with pod and node) into a folder of its own, beside the rules
shipped in the package (prometheus-rules.yml, also deploy/prometheus/rules.yml).
When a child comes back on another port the config is rewritten and
Prometheus reloaded (``POST /-/reload``).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import tempfile
import urllib.request
from importlib.resources import files
from pathlib import Path
from urllib.parse import urlsplit

import yaml

SCRAPE_INTERVAL = "1s"
MISSING = ("--prometheus needs Prometheus's server, `prometheus` on PATH: install Debian's package "
           "(apt-get install prometheus, or `make system-deps`)")  # fmt: skip


def find_binary() -> str | None:
    """The ``prometheus`` executable on PATH, or None."""
    return shutil.which("prometheus")


def rules_text() -> str:
    """The recording and alert rules shipped with katyusha."""
    return files("katyusha.fleet").joinpath("prometheus-rules.yml").read_text()


def _target(url: str | None) -> str | None:
    return urlsplit(url).netloc if url else None


def scrape_document(document: dict, rules: str = "rules.yml") -> dict:
    """The scrape config of a running fleet from its state document (katyusha.fleet.runner)."""
    def group(url, **labels):
        return {"targets": [_target(url)], **({"labels": labels} if labels else {})}

    pods = document["pods"]
    jobs = [
        {"job_name": "katyusha", "static_configs": [group(r["admin"]) for r in document["katyusha"] if r.get("admin")]},
        {"job_name": "control", "static_configs": [group((document.get("control") or {}).get("admin"))]},
        {"job_name": "nonna", "static_configs": [group(p["nonna"]["admin"], pod=p["name"], node=p["node"])
                                                 for p in pods if p["nonna"].get("admin")]},
        {"job_name": "sim-backend", "honor_labels": True,
         "static_configs": [group(p["sim"]["admin"], pod=p["name"], node=p["node"]) for p in pods if p["sim"].get("admin")]},
    ]  # fmt: skip
    jobs = [job for job in jobs if all(g["targets"][0] for g in job["static_configs"]) and job["static_configs"]]
    return {"global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": SCRAPE_INTERVAL},
            "rule_files": [rules], "scrape_configs": jobs}  # fmt: skip


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class PrometheusServer:
    """One prometheus process for the fleet: :meth:`start`, :meth:`update`, :meth:`stop`."""

    def __init__(self, binary: str, host: str = "127.0.0.1", port: int = 0):
        self.binary = binary
        self.host = host
        self.port = port or free_port(host)
        self.dir = Path(tempfile.mkdtemp(prefix="katyusha-prometheus-"))
        self.config = self.dir / "prometheus.yml"
        self.proc: asyncio.subprocess.Process | None = None
        self._written = ""

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def _write(self, document: dict) -> bool:
        text = yaml.safe_dump(scrape_document(document), sort_keys=False)
        if text == self._written:
            return False
        (self.dir / "rules.yml").write_text(rules_text())
        self.config.write_text(text)
        self._written = text
        return True

    async def start(self, document: dict, timeout: float = 30.0) -> None:
        """Write the config and start Prometheus; returns once it answers ``/-/ready``. Raises OSError."""
        self._write(document)
        self.log = open(self.dir / "prometheus.log", "wb")  # noqa: SIM115 - kept open while it runs
        self.proc = await asyncio.create_subprocess_exec(
            self.binary, f"--config.file={self.config}", f"--storage.tsdb.path={self.dir / 'data'}",
            f"--web.listen-address={self.host}:{self.port}", "--web.enable-lifecycle",
            "--storage.tsdb.retention.time=1d", stdout=self.log, stderr=self.log, start_new_session=True,
        )  # fmt: skip
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            if self.proc.returncode is not None:
                raise OSError(f"prometheus exited with {self.proc.returncode}; see {self.dir / 'prometheus.log'}")
            if await asyncio.to_thread(self._ready):
                return
            await asyncio.sleep(0.2)
        raise OSError(f"prometheus did not answer {self.url}/-/ready within {timeout:g}s")

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/-/ready", timeout=1) as response:
                return response.status == 200
        except OSError:
            return False

    async def update(self, document: dict) -> None:
        """Rewrite the config from ``document`` and reload Prometheus when it changed."""
        if self.proc is None or not self._write(document):
            return

        def reload() -> None:
            request = urllib.request.Request(self.url + "/-/reload", method="POST")
            with contextlib.suppress(OSError), urllib.request.urlopen(request, timeout=5):
                pass

        await asyncio.to_thread(reload)

    async def stop(self, timeout: float = 10.0) -> None:
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), timeout)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                await self.proc.wait()
        if getattr(self, "log", None) is not None:
            self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)
