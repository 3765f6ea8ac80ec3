"""A real headless Chromium for tests, driven over its DevTools protocol (CDP) by aiohttp's websocket client.

    path = ensure_chromium()                  # Debian's `chromium`; apt-get installs it when it is missing
    with Chromium.start(path, tmp_dir) as browser:
        page = browser.new_page()
        page.navigate("http://127.0.0.1:6066/ui")
        page.evaluate("document.title")

No Node, no Playwright, no driver download: Chromium itself listens on a DevTools port, and each call is one
JSON message over the page's websocket. It asserts nothing itself.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

CHROMIUM = Path("/usr/bin/chromium")
# Flags that work in a container running as root with no GPU and no network beyond the machine.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0"]
START_TIMEOUT_S = 60


class ChromiumError(RuntimeError):
    """Chromium could not be installed, started or driven; the message says what to do."""


class NavigatingError(ChromiumError):
    """The page was between two documents when asked (the old one's context is gone, the new one not yet
    there); asking again after a moment answers."""


_NAVIGATING = ("Inspected target navigated or closed", "Execution context was destroyed")


def ensure_chromium(path: Path = CHROMIUM) -> Path:
    """`path` when Chromium is installed; otherwise `apt-get update && apt-get install -y chromium` (as root)
    and then `path`. Raises ChromiumError with the fix when that is impossible: never a silent skip."""
    if path.exists():
        return path
    if shutil.which("apt-get") is None:
        raise ChromiumError(f"{path} is missing and there is no apt-get: install Debian's chromium package "
                            "(or a Chromium at that path) to run the browser tests")
    if os.geteuid() != 0:
        raise ChromiumError(f"{path} is missing and installing it needs root: run "
                            "`sudo apt-get update && sudo apt-get install -y chromium`")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", "chromium"]
    for command in (["apt-get", "update"], install):
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
            raise ChromiumError(f"`{' '.join(command)}` failed with {done.returncode}:\n{tail}")
    if not path.exists():
        raise ChromiumError(f"apt-get installed chromium but {path} is still missing")
    return path


class Chromium:
    """One headless Chromium process (its own process group and empty profile folder)."""

    def __init__(self, proc: subprocess.Popen, port: int) -> None:
        self.proc = proc
        self.port = port
        self.pages: list[Page] = []

    @classmethod
    def start(cls, path: Path, profile_dir: Path) -> Chromium:
        profile_dir.mkdir(parents=True, exist_ok=False)  # a new empty profile: no state from another run
        log = (profile_dir.parent / f"{profile_dir.name}.log").open("wb")
        proc = subprocess.Popen([str(path), *FLAGS, f"--user-data-dir={profile_dir}", "about:blank"],
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        # With port 0 Chromium picks a free port and writes it into DevToolsActivePort (first line).
        active = profile_dir / "DevToolsActivePort"
        deadline = time.monotonic() + START_TIMEOUT_S
        while not (active.exists() and active.read_text().strip()):
            if proc.poll() is not None or time.monotonic() > deadline:
                browser = cls(proc, 0)
                browser.close()
                raise ChromiumError(f"chromium did not start (exit {proc.returncode}); see {log.name}")
            time.sleep(0.1)
        return cls(proc, int(active.read_text().splitlines()[0]))

    def new_page(self, width: int = 1280, height: int = 900) -> Page:
        """A new tab with a fixed viewport, connected over its own websocket."""
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}/json/new?about:blank", method="PUT")
        with urllib.request.urlopen(request, timeout=10) as response:
            target = json.loads(response.read())
        page = Page(target["webSocketDebuggerUrl"])
        page.send("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1,
                  mobile=False)
        self.pages.append(page)
        return page

    def close(self) -> None:
        for page in self.pages:
            page.close()
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # the group this class started: Chromium and its helpers
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Page:
    """One tab: synchronous CDP calls (each runs on this page's own event loop)."""

    def __init__(self, websocket_url: str) -> None:
        self._loop = asyncio.new_event_loop()
        self._next_id = 0
        self._session, self._ws = self._loop.run_until_complete(self._connect(websocket_url))

    async def _connect(self, url: str) -> tuple[Any, Any]:
        import aiohttp

        session = aiohttp.ClientSession()
        return session, await session.ws_connect(url, max_msg_size=0)

    def send(self, method: str, timeout_s: float = 30.0, **params: Any) -> dict:
        """One CDP command; its result (events arriving meanwhile are dropped). Raises ChromiumError."""
        self._next_id += 1
        call = self._call(self._next_id, method, params)
        return self._loop.run_until_complete(asyncio.wait_for(call, timeout_s))

    async def _call(self, call_id: int, method: str, params: dict) -> dict:
        await self._ws.send_json({"id": call_id, "method": method, "params": params})
        while True:
            message = json.loads((await self._ws.receive()).data)
            if message.get("id") == call_id:
                if "error" in message:
                    error = NavigatingError if any(text in str(message["error"]) for text in _NAVIGATING) \
                        else ChromiumError
                    raise error(f"{method}: {message['error']}")
                return message.get("result", {})

    def navigate(self, url: str) -> None:
        """Load `url` and wait until the document (and its deferred scripts) has loaded."""
        self.send("Page.navigate", url=url)
        deadline = time.monotonic() + 30
        while self.loaded("location.href") != url:
            if time.monotonic() > deadline:
                raise ChromiumError(f"{url} did not finish loading within 30 s")
            time.sleep(0.1)

    def loaded(self, expression: str) -> Any:
        """`expression`'s value once the page's document has loaded; None while it loads or navigates."""
        try:
            return self.evaluate(f"document.readyState === 'complete' ? ({expression}) : null")
        except NavigatingError:
            return None

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (promises awaited, returned as JSON)."""
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            thrown = details.get("exception", {}).get("description", details)
            raise ChromiumError(f"{expression[:80]!r} threw: {thrown}")
        return result["result"].get("value")

    def screenshot(self, path: Path, full_page: bool = False, colours: int | None = None) -> None:
        """The viewport (or the whole page) as a PNG at `path`; with `colours`, a palette PNG of that many
        colours (Pillow, from the train extra): a page of flat colours loses nothing visible, and a third
        of the bytes."""
        shot = self.send("Page.captureScreenshot", format="png", captureBeyondViewport=full_page)
        data = base64.b64decode(shot["data"])
        if colours is None:
            path.write_bytes(data)
            return
        import io

        from PIL import Image

        image = Image.open(io.BytesIO(data)).convert("RGB")
        image.quantize(colors=colours, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)

    def close(self) -> None:
        if self._loop.is_closed():
            return
        self._loop.run_until_complete(self._ws.close())
        self._loop.run_until_complete(self._session.close())
        self._loop.close()
