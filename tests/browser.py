"""Headless Chromium driven over the DevTools protocol, and the demo page as a person uses it.

Chromium talks the protocol over a pipe (`--remote-debugging-pipe`: JSON messages ending in a NUL byte on fds 3 and
4), so no WebSocket library is needed. tests/test_demo.py uses `Chromium` and `generate_in_page`; run as a script,
this file takes the README's screenshot of a running demo:

    python tests/browser.py http://127.0.0.1:7860 --pick "red sphere" --pick "cyan cube" --screenshot docs/demo.png
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import select
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")


class BrowserError(RuntimeError):
    """The browser failed, or the page did not reach the state waited for; the message says which."""


def find_chromium() -> str | None:
    return next(filter(None, map(shutil.which, CHROMIUM_NAMES)), None)


class Chromium:
    """One headless Chromium with one page; `with Chromium(path) as browser: browser.open(url)`."""

    def __init__(self, executable: str, *, width: int = 1280, height: int = 1000):
        self.profile = tempfile.mkdtemp(prefix="chromium-profile-")
        commands_read, self._commands = os.pipe()
        self._events, events_write = os.pipe()
        flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--hide-scrollbars", "--remote-debugging-pipe", f"--user-data-dir={self.profile}",
                 f"--window-size={width},{height}", "about:blank"]  # fmt: skip
        # bash puts the pipe ends on the descriptors Chromium reads (3) and writes (4); dash's redirections take only
        # one-digit descriptors.
        self.process = subprocess.Popen(
            ["bash", "-c", f'exec "$0" "$@" 3<&{commands_read} 4>&{events_write}', executable, *flags],
            pass_fds=(commands_read, events_write), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        os.close(commands_read)
        os.close(events_write)
        self._buffer = b""
        self._next_id = 0
        self.session: str | None = None
        page = next(t for t in self.send("Target.getTargets")["targetInfos"] if t["type"] == "page")
        self.session = self.send("Target.attachToTarget", targetId=page["targetId"], flatten=True)["sessionId"]

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def send(self, method: str, timeout: float = 30.0, **params: Any) -> dict[str, Any]:
        """One protocol command (to the page once attached); its result. Events in between are dropped."""
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params}
        if self.session is not None:
            message["sessionId"] = self.session
        os.write(self._commands, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read(deadline, method)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise BrowserError(f"{method}: {reply['error'].get('message')}")
                return reply["result"]

    def _read(self, deadline: float, method: str) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([self._events], [], [], remaining)[0]:
                raise BrowserError(f"Chromium did not answer {method} in time")
            chunk = os.read(self._events, 1 << 20)
            if not chunk:
                raise BrowserError(f"Chromium exited (status {self.process.poll()}) during {method}")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def open(self, url: str) -> None:
        self.send("Page.navigate", url=url)

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (promises awaited)."""
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise BrowserError(f"{expression[:80]!r} threw: {details.get('exception', {}).get('description', details)}")
        return result["result"].get("value")

    def wait_for(self, expression: str, what: str, timeout: float = 60.0) -> Any:
        """Polls a JavaScript expression until it is truthy; returns its value."""
        deadline = time.monotonic() + timeout
        problem = ""
        while time.monotonic() < deadline:
            try:
                value = self.evaluate(expression)
            except BrowserError as error:  # e.g. while the page is still loading
                problem = f" (last: {error})"
            else:
                if value:
                    return value
            time.sleep(0.2)
        raise BrowserError(f"the page never showed {what} within {timeout:.0f} s{problem}")

    def screenshot(self, path: Path) -> None:
        """The whole page, beyond the window's height, as a PNG."""
        size = self.send("Page.getLayoutMetrics")["cssContentSize"]
        clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
        data = self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True, clip=clip)["data"]
        Path(path).write_bytes(base64.b64decode(data))

    def close(self) -> None:
        try:
            self.session = None
            self.send("Browser.close", timeout=5)
        except BrowserError:
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        os.close(self._commands)
        os.close(self._events)
        shutil.rmtree(self.profile, ignore_errors=True)


# ---- the demo page (scripts/demo.py) ------------------------------------------------------------------------------

CONTROLS = """(() => {
  const groups = [...document.querySelectorAll('[id^="pick-"]')].map(
    g => [g.id, g.querySelectorAll('input[type=checkbox]').length]);
  const ready = document.querySelector('#generate') && document.querySelector('#images');
  return ready && groups.length ? Object.fromEntries(groups) : null;
})()"""


def tick(browser: Chromium, label: str) -> None:
    """Ticks an object's checkbox: the colour in its shape's row."""
    colour, _, shape = label.rpartition(" ")
    browser.evaluate(f"""(() => {{
      const row = document.querySelector({json.dumps('#pick-' + shape)});
      const box = [...row.querySelectorAll('label')].find(l => l.textContent.trim() === {json.dumps(colour)});
      box.querySelector('input').click();
    }})()""")


def images_shown(num_images: int) -> str:
    """JavaScript: true once the gallery shows `num_images` loaded images and the process strip has loaded."""
    return f"""(() => {{
      const loaded = img => img.complete && img.naturalWidth > 0;
      const images = [...document.querySelectorAll('#images img')];
      const process = document.querySelector('#process img');
      return images.length >= {num_images} && images.every(loaded) && process && loaded(process);
    }})()"""


def text_of(element_id: str) -> str:
    return f"(document.querySelector('#{element_id}') || {{}}).innerText || ''"


def generate_in_page(browser: Chromium, url: str, labels: list[str], num_images: int = 4) -> dict[str, Any]:
    """Opens the demo, ticks `labels`, presses Generate and waits for the images (the page's default count);
    returns what the page showed: the checkboxes per row, the pick message and the status line."""
    browser.open(url)
    controls = browser.wait_for(CONTROLS, "the object picker and the Generate button")
    for label in labels:
        tick(browser, label)
    pick = browser.wait_for(f"(t => {json.dumps(labels)}.every(l => t.includes(l)) && t)({text_of('pick')})",
                            "the picked objects")
    browser.evaluate("document.querySelector('#generate').click()")
    browser.wait_for(images_shown(num_images), f"{num_images} generated images and the denoising process", 120)
    return {"controls": controls, "pick": pick, "status": browser.evaluate(text_of("status"))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("url", help="The running demo, e.g. http://127.0.0.1:7860")
    parser.add_argument("--pick", action="append", required=True, help='An object to tick, e.g. "red sphere".')
    parser.add_argument("--screenshot", type=Path, required=True, help="Where to write the PNG.")
    args = parser.parse_args()
    executable = find_chromium()
    if executable is None:
        raise SystemExit(f"error: no Chromium found (looked for {', '.join(CHROMIUM_NAMES)}); apt-get install chromium")
    with Chromium(executable) as browser:
        shown = generate_in_page(browser, args.url, args.pick)
        browser.screenshot(args.screenshot)
    print(f"{shown['status']} -> {args.screenshot}")


if __name__ == "__main__":
    main()
