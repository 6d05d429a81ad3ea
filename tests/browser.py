"""Headless Chromium driven over its DevTools protocol (CDP), for the page tests.

Why not a browser-automation library: Debian's ``chromium`` and aiohttp's websocket client (a
dependency already) are all it takes: start the browser with ``--remote-debugging-port=0``,
read the websocket address it prints, open a page target, send CDP commands. Console messages,
uncaught exceptions and failed loads are collected as they arrive, so a test can assert that
there were none.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

CHROMIUM = os.environ.get("TOWERSTREAM_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"


class Page:
    """One tab: ``call`` sends a CDP command; ``errors`` holds every console error, exception and failed load."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self._next = 0
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.errors: list[str] = []
        self.console: list[str] = []
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            data = json.loads(msg.data)
            if "id" in data:
                fut = self._waiting.pop(data["id"], None)
                if fut is not None and not fut.done():
                    fut.set_result(data)
                continue
            method, params = data.get("method"), data.get("params", {})
            if method == "Runtime.consoleAPICalled":
                text = " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
                self.console.append(f"{params.get('type')}: {text}")
                if params.get("type") in ("error", "assert"):
                    self.errors.append(f"console.{params.get('type')}: {text}")
            elif method == "Runtime.exceptionThrown":
                det = params.get("exceptionDetails", {})
                self.errors.append("exception: " + str(det.get("exception", {}).get("description") or det.get("text")))
            elif method == "Log.entryAdded":
                entry = params.get("entry", {})
                if entry.get("level") == "error":
                    self.errors.append(f"log ({entry.get('source')}): {entry.get('text')} {entry.get('url', '')}")

    async def call(self, method: str, timeout: float = 30, **params: Any) -> dict[str, Any]:
        self._next += 1
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[self._next] = fut
        await self.ws.send_str(json.dumps({"id": self._next, "method": method, "params": params}))
        reply = await asyncio.wait_for(fut, timeout)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        result: dict[str, Any] = reply.get("result", {})
        return result

    async def evaluate(self, expression: str) -> Any:
        """The expression's value (JSON-able), awaited if it is a promise."""
        got = await self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in got:
            raise RuntimeError(f"{expression}: {got['exceptionDetails']}")
        return got.get("result", {}).get("value")

    async def wait_for(self, expression: str, timeout: float = 30) -> Any:
        """Poll until the expression is truthy; its value."""
        deadline = time.monotonic() + timeout
        value: Any = None
        while time.monotonic() < deadline:
            value = await self.evaluate(expression)
            if value:
                return value
            await asyncio.sleep(0.2)
        raise AssertionError(f"not true in {timeout} s: {expression} (last {value!r}; console {self.console[-5:]})")

    async def goto(self, url: str) -> None:
        await self.call("Page.navigate", url=url)
        await self.wait_for("document.readyState === 'complete'")

    async def screenshot(self, path: Path, width: int = 1280, height: int = 1000) -> None:
        await self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1,
                        mobile=False)
        got = await self.call("Page.captureScreenshot", format="png")
        path.write_bytes(base64.b64decode(got["data"]))


@contextlib.asynccontextmanager
async def chromium_page() -> AsyncIterator[Page]:
    """A headless Chromium with one blank tab (Runtime, Log and Page events on); stopped after."""
    profile = tempfile.mkdtemp(prefix="towerstream-chromium-")
    proc = subprocess.Popen(  # noqa: ASYNC220 - started once per test; the reads below go to a thread
        [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--no-default-browser-check",
         "--disable-extensions", "--disable-background-networking", "--disable-component-update",
         "--disable-dev-shm-usage", "--remote-debugging-port=0", f"--user-data-dir={profile}", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        port = await asyncio.to_thread(_devtools_port, proc)
        async with aiohttp.ClientSession() as http:
            url = ""
            for _ in range(50):  # the first tab appears shortly after the browser listens
                async with http.get(f"http://127.0.0.1:{port}/json/list") as r:
                    pages = [t for t in await r.json() if t.get("type") == "page"]
                if pages:
                    url = pages[0]["webSocketDebuggerUrl"]
                    break
                await asyncio.sleep(0.1)
            assert url, "chromium opened no tab"
            async with http.ws_connect(url, max_msg_size=0) as ws:
                page = Page(ws)
                for domain in ("Runtime.enable", "Log.enable", "Page.enable"):
                    await page.call(domain)
                try:
                    yield page
                finally:
                    page._reader.cancel()
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        shutil.rmtree(profile, ignore_errors=True)


def _devtools_port(proc: subprocess.Popen[str], timeout: float = 60) -> int:
    """The port chromium prints (``DevTools listening on ws://127.0.0.1:PORT/...``) on stderr."""
    assert proc.stderr is not None
    deadline = time.monotonic() + timeout
    seen: list[str] = []
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            if proc.poll() is not None:
                break
            continue
        seen.append(line)
        m = re.search(r"DevTools listening on ws://[^:]+:(\d+)/", line)
        if m:
            # Keep reading its stderr so that chromium never blocks on a full pipe.
            threading.Thread(target=_drain, args=(proc,), daemon=True, name="chromium-stderr").start()
            return int(m.group(1))
    raise AssertionError(f"chromium did not start ({CHROMIUM}): {''.join(seen)[-2000:]}")


def _drain(proc: subprocess.Popen[str]) -> None:
    assert proc.stderr is not None
    for _ in proc.stderr:
        pass
