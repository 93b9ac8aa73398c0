"""Screenshots of the live dashboard for the docs, from a real autoscaled fleet under load.

Run as ``python -m benchmarks.dashboard_screenshot [--out docs/images/dashboard-autoscaled.png]``.
Starts ``katyusha fleet up --autoscale`` (4 pods from zero, target 5 in flight
per pod), sends an open-loop load (benchmarks.loadgen) for ``--seconds``, and
has Debian's chromium (Playwright, ``make system-deps``) photograph the
fleet page while the autoscaler works. Prints the page's own numbers beside
the load generator's, as a check that the page tells the truth.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchmarks.loadgen import run_open_loop
from katyusha.procs import script

FLEET = """
nodes: 2
pods: 4
katyusha: {port: 0, admin_port: 0}
autoscaler:
  enabled: true
  stable-window: 12s
  panic-window-percentage: 25
  scale-to-zero-grace-period: 10s
  tick-interval: 1s
  container-concurrency-target-default: 5
runner: {poll_interval_s: 0.2}
defaults: {service_time: exp:40ms, concurrency: 4, image_size_mb: 50, pull_mbps: 100, start_s: 0.5}
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.dashboard_screenshot", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="docs/images/dashboard-autoscaled.png")
    parser.add_argument("--rate", type=float, default=150.0, help="requests per second (150)")
    parser.add_argument("--seconds", type=float, default=20.0, help="seconds of load before the shot (20)")
    args = parser.parse_args(argv)
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium")
    if chromium is None:
        sys.exit("chromium is missing: make system-deps")
    with tempfile.TemporaryDirectory() as tmp:
        fleet_file, state = Path(tmp) / "fleet.yaml", Path(tmp) / "state.json"
        fleet_file.write_text(FLEET)
        runner = subprocess.Popen([script("katyusha"), "fleet", "up", "--fleet", str(fleet_file),
                                   "--state-file", str(state)], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
        try:
            deadline = time.monotonic() + 60
            while not state.exists() and time.monotonic() < deadline:
                time.sleep(0.2)
            doc = json.loads(state.read_text())
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=chromium,
                                            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])  # fmt: skip
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                page.goto(doc["control"]["admin"] + "/dashboard")
                results = []
                load = threading.Thread(target=lambda: results.append(asyncio.run(run_open_loop(
                    doc["url"], rate=args.rate, duration_s=args.seconds, timeout_s=30, seed=1))))
                load.start()
                page.wait_for_timeout((args.seconds - 1.5) * 1000)  # the shot while the load still runs
                shown = page.inner_text("[data-testid=rps]")
                Path(args.out).parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=args.out, full_page=True)
                browser.close()
                load.join()
                result = results[0]
            print(f"loadgen: {args.rate:g} req/s asked, {result.sent} sent, p50 {result.quantile_ms(0.5):.1f} ms, "
                  f"p99 {result.quantile_ms(0.99):.1f} ms; the page showed {shown} req/s at the end")
            print(f"wrote {args.out}")
        finally:
            runner.terminate()
            runner.wait(60)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
