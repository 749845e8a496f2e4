"""Start TensorBoard on a run directory and take a headless-Chromium screenshot of what it shows.

    python scripts/tensorboard_screenshot.py runs --out docs/tensorboard_dashboard.png
    python scripts/tensorboard_screenshot.py runs --tab "" --out docs/tensorboard_first_screen.png

``--tab custom_scalars`` (default) is the Dashboard callback's layout; ``--tab ""`` is the page a user
opens at http://localhost:6006 (the Time Series tab). Needs Chromium (Debian: ``apt-get install
chromium``). ``serve`` is also what the dashboard test starts TensorBoard with.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get_json(url: str, body: dict | None = None) -> Any:
    """GET ``url`` (POST ``body`` as JSON when given) and decode the JSON answer."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


@contextlib.contextmanager
def serve(logdir: str, port: int | None = None, timeout: float = 120.0) -> Iterator[str]:
    """TensorBoard on ``logdir`` at a loopback port, yielded as its base URL once its scalars are
    loaded; the server is stopped on exit, whatever happened."""
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir)]
    command += ["--host", "127.0.0.1", "--port", str(port), "--load_fast", "false"]
    with tempfile.TemporaryFile("w+") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for_scalars(url, server, timeout, log)
            yield url
        finally:
            server.terminate()
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


def wait_for_scalars(url: str, server: subprocess.Popen, timeout: float, log) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            log.seek(0)
            raise RuntimeError(f"tensorboard exited with status {server.returncode}:\n{log.read()[-2000:]}")
        with contextlib.suppress(OSError):  # not listening yet
            if get_json(f"{url}/data/plugin/scalars/tags"):
                return
        time.sleep(0.5)
    raise TimeoutError(f"tensorboard at {url} loaded no scalars within {timeout:.0f} s")


def screenshot(url: str, out: str, chromium: str, size: tuple[int, int], budget_ms: int) -> None:
    """Render ``url`` in a fresh headless Chromium profile; TensorBoard is a JavaScript app, so the
    page gets ``budget_ms`` of virtual time to fetch and draw its charts first."""
    with tempfile.TemporaryDirectory() as profile:
        command = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--screenshot={out}"]
        command += ["--window-size={},{}".format(*size), f"--virtual-time-budget={budget_ms}", url]
        subprocess.run(command, check=True, capture_output=True, timeout=300)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("logdir", help="a run directory or a folder of runs (TensorBoard's --logdir)")
    parser.add_argument("--out", default="docs/tensorboard_dashboard.png")
    parser.add_argument("--tab", default="custom_scalars", help="URL fragment ('' for the first page)")
    parser.add_argument("--size", type=int, nargs=2, default=(1400, 1000), metavar=("WIDTH", "HEIGHT"))
    parser.add_argument("--budget-ms", type=int, default=15000, help="virtual time the page gets to render")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "chromium")
    args = parser.parse_args(argv)
    with serve(args.logdir) as url:
        page = f"{url}/#{args.tab}" if args.tab else f"{url}/"
        screenshot(page, args.out, args.chromium, tuple(args.size), args.budget_ms)
    print(f"wrote {args.out} ({page})")


if __name__ == "__main__":
    main()
