"""A web bundle in a real browser, on this machine only: a loopback static server (optionally sending
the cross-origin isolation headers that wasm threads need) and headless Chromium driven by selenium,
with every host name but 127.0.0.1 resolved to nothing. Used by `export --formats web` to verify the
bundle on every output, by scripts/web_bench.py and by the tests.
"""
from __future__ import annotations

import base64
import functools
import os
import shutil
import tempfile
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from . import ISOLATION_HEADERS, MIME


def chromium() -> Tuple[Optional[str], Optional[str]]:
    return (shutil.which("chromium") or shutil.which("chromium-browser"), shutil.which("chromedriver"))


def missing() -> Optional[str]:
    """Why a browser cannot run here (None: it can)."""
    browser, driver = chromium()
    if not (browser and driver):
        return "chromium and chromedriver are not installed (apt-get install chromium chromium-driver, or make browser)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install 'sedeploy[dev]')"
    return None


class _Handler(SimpleHTTPRequestHandler):
    isolate = False
    log: List[str] = []

    def end_headers(self) -> None:
        if self.isolate:
            for k, v in ISOLATION_HEADERS.items():
                self.send_header(k, v)
        self.send_header("Cache-Control", "no-store")
        super().end_headers()

    def guess_type(self, path):  # noqa: ANN001 - http.server's signature
        return MIME.get(os.path.splitext(str(path))[1].lower(), "application/octet-stream")

    def log_message(self, fmt, *args) -> None:  # noqa: ANN001
        self.log.append(f"{self.headers.get('Host', '')} {self.path}")


class StaticServer:
    """Serve FOLDER on 127.0.0.1 (a free port) in a thread; `log` lists 'host path' per request."""

    def __init__(self, folder: Path, isolate: bool = True) -> None:
        self.log: List[str] = []
        handler = type("Handler", (_Handler,), {"isolate": isolate, "log": self.log})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(folder)))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "StaticServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


class Browser:
    """Headless Chromium (selenium) that reaches 127.0.0.1 only. Use as a context manager."""

    def __init__(self, width: int = 900, height: int = 1000) -> None:
        from selenium import webdriver
        browser, driver = chromium()
        self.profile = tempfile.mkdtemp(prefix="sedeploy-chromium-")
        opts = webdriver.ChromeOptions()
        opts.binary_location = browser
        for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     "--disable-dev-shm-usage", "--disable-default-apps", "--disable-extensions",
                     f"--window-size={width},{height}", f"--user-data-dir={self.profile}",
                     "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"):
            opts.add_argument(flag)
        opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        os.environ.setdefault("SE_OFFLINE", "true")   # selenium-manager must not look for drivers online
        try:
            self.driver = webdriver.Chrome(options=opts, service=webdriver.ChromeService(executable_path=driver))
        except BaseException:
            shutil.rmtree(self.profile, ignore_errors=True)
            raise
        self.driver.set_page_load_timeout(60)
        self.driver.set_script_timeout(120)

    def __enter__(self) -> "Browser":
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.driver.quit()
        finally:
            shutil.rmtree(self.profile, ignore_errors=True)

    def open(self, url: str, timeout: float = 60) -> str:
        """Load the page and wait until the model is loaded (or failed): body[data-state]."""
        from selenium.webdriver.support.ui import WebDriverWait
        self.driver.get(url)
        return WebDriverWait(self.driver, timeout).until(
            lambda d: d.execute_script("const s = document.body && document.body.dataset.state;"
                                       "return s === 'ready' || s === 'error' ? s : null;"))

    def console(self) -> List[str]:
        return [e["message"] for e in self.driver.get_log("browser")]

    def offsite_requests(self) -> List[str]:
        """What the page tried to fetch from anywhere but 127.0.0.1: its resource list, and the console's
        failed lookups (every other host resolves to nothing here, so such a request fails and says so)."""
        urls = self.driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
        bad = [u for u in urls if not (u.startswith("http://127.0.0.1") or u.startswith("blob:")
                                       or u.startswith("data:"))]
        return bad + [m for m in self.console() if "ERR_NAME_NOT_RESOLVED" in m or "ERR_NAME_RESOLUTION" in m]

    def run(self, x: np.ndarray) -> Tuple[Dict[str, np.ndarray], float]:
        """window.sedeploy.run on a float32 (N, C, H, W) batch -> ({output: array}, milliseconds)."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        r = self.driver.execute_async_script(_RUN_JS, base64.b64encode(x.tobytes()).decode(), list(x.shape))
        if "error" in r:
            raise RuntimeError(r["error"])
        return ({k: np.frombuffer(base64.b64decode(v["b64"]), np.float32).reshape(v["dims"])
                 for k, v in r["outputs"].items()}, float(r["ms"]))

    def classify_bytes(self, data: bytes, topk: int = 5) -> dict:
        """window.sedeploy.classify on an image file's bytes (as a Blob) -> its result, with the input
        tensor as a float32 array under "input"."""
        r = self.driver.execute_async_script(_CLASSIFY_JS, base64.b64encode(data).decode(), topk)
        if "error" in r:
            raise RuntimeError(r["error"])
        r["input"] = np.frombuffer(base64.b64decode(r["input"]), np.float32)
        return r


_B64 = """const b64 = (a) => { const u = new Uint8Array(a.buffer, a.byteOffset, a.byteLength); let s = '';
  for (let i = 0; i < u.length; i += 0x8000) s += String.fromCharCode.apply(null, u.subarray(i, i + 0x8000));
  return btoa(s); };
const unb64 = (s) => Uint8Array.from(atob(s), (c) => c.charCodeAt(0));"""
_RUN_JS = _B64 + """
const [data, shape, done] = arguments;
const x = new Float32Array(unb64(data).buffer);
window.sedeploy.run(x, shape).then((r) => {
  const outputs = {};
  for (const [k, v] of Object.entries(r.outputs)) outputs[k] = {b64: b64(v.data), dims: v.dims};
  done({outputs, ms: r.ms});
}, (e) => done({error: String(e && e.message || e)}));"""
_CLASSIFY_JS = _B64 + """
const [data, topk, done] = arguments;
window.sedeploy.classify(new Blob([unb64(data)]), {topk, tensor: true}).then((r) => {
  done({top: r.top, outputs: r.outputs, ms: r.ms, input: b64(r.input), unsure: r.unsure, ood_score: r.ood_score,
        explanation: r.explanation && {method: r.explanation.method, ranked: r.explanation.ranked,
                                       attention: Array.from(r.explanation.attention)}});
}, (e) => done({error: String(e && e.message || e)}));"""
