"""The web bundle's speed and size: milliseconds per image at batch 1 in headless Chromium (onnxruntime-web
wasm, with threads when served cross-origin isolated, one thread without) next to native onnxruntime
(1 and 2 threads) on the same inputs, rounds alternated in one run; and the bundle's bytes (raw, gzipped).

    python scripts/web_bench.py demo/edge/model.web --rounds 5 --n 200 [--json] [--screenshot docs/web_page.png IMAGE]

Median and p90 of per-image times over all rounds; the model's own inference time in the page
(session.run, as `sedeploy.run` reports it).
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

from sedeploy.core.hardware import cpu_name
from sedeploy.runtime import web
from sedeploy.runtime.runners import load_runner
from sedeploy.runtime.web import browser


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle", type=Path, help="a model.web folder (sedeploy export --formats web)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--n", type=int, default=200, help="images per round and configuration")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--screenshot", nargs=2, metavar=("PNG", "IMAGE"), help="also save the page classifying IMAGE")
    a = ap.parse_args()
    if browser.missing():
        print(f"error: {browser.missing()}", file=sys.stderr)
        return 2
    spec = json.loads((a.bundle / "model.json").read_text())
    x = np.random.default_rng(0).normal(0, 1, (a.n, *spec["input_size"])).astype(np.float32)
    times = {k: [] for k in ("browser, threads (isolated)", "browser, 1 thread", "onnxruntime native, 1 thread",
                             "onnxruntime native, 2 threads")}
    threads = {"onnxruntime native, 1 thread": 1, "onnxruntime native, 2 threads": 2}
    ort1 = load_runner("onnxruntime", a.bundle / spec["model"], threads=1)
    ort2 = load_runner("onnxruntime", a.bundle / spec["model"], threads=2)
    with browser.Browser() as b, browser.StaticServer(a.bundle, isolate=True) as iso, \
            browser.StaticServer(a.bundle, isolate=False) as plain:
        pages = {"browser, threads (isolated)": iso.url + "index.html?threads=2", "browser, 1 thread": plain.url + "index.html"}
        for r in range(a.rounds + 1):                                   # round 0: warm-up, not counted
            for name, url in pages.items():
                assert b.open(url) == "ready"
                threads[name] = b.driver.execute_script("return window.sedeploy.info.threads")
                ms = b.driver.execute_async_script("""
                    const [n, shape, done] = arguments; const per = shape[1] * shape[2] * shape[3], out = [];
                    const x = new Float32Array(per).map(() => Math.random());
                    (async () => { for (let i = 0; i < n; i++) out.push((await window.sedeploy.run(x, [1, ...shape.slice(1)])).ms);
                                   done(out); })();""", a.n, [1, *spec["input_size"]])
                if r:
                    times[name] += ms
            for name, runner in (("onnxruntime native, 1 thread", ort1), ("onnxruntime native, 2 threads", ort2)):
                for i in range(a.n):
                    t = time.perf_counter()
                    runner.run(x[i:i + 1])
                    if r:
                        times[name].append(1000 * (time.perf_counter() - t))
        if a.screenshot:
            png, image = a.screenshot
            assert b.open(iso.url + "index.html") == "ready"
            from selenium.webdriver.common.by import By
            from selenium.webdriver.support.ui import WebDriverWait
            b.driver.find_element(By.ID, "file").send_keys(str(Path(image).resolve()))
            WebDriverWait(b.driver, 30).until(lambda d: d.execute_script("return document.body.dataset.state") == "done")
            from io import BytesIO
            from PIL import Image
            Image.open(BytesIO(b.driver.get_screenshot_as_png())).convert("RGB").quantize(64).save(png, optimize=True)
    base = float(np.median(times["onnxruntime native, 1 thread"]))
    rows = [{"config": k, "threads": threads[k], "ms_median": float(np.median(v)),
             "ms_p90": float(np.percentile(v, 90)), "vs_native_1_thread": float(np.median(v)) / base, "n": len(v)}
            for k, v in times.items()]
    out = {"cpu": cpu_name(), "platform": platform.platform(), "ort_web": spec["ort_web"], "rows": rows,
           **web.sizes(a.bundle), "model_bytes": (a.bundle / spec["model"]).stat().st_size}
    if a.json:
        print(json.dumps(out, indent=1))
        return 0
    print(f"{out['cpu']}; onnxruntime-web {out['ort_web']}; {a.rounds} rounds x {a.n} images, batch 1")
    print(f"{'configuration':<32} {'threads':>7} {'median ms':>10} {'p90 ms':>8} {'x native 1 thread':>18}")
    for r in rows:
        print(f"{r['config']:<32} {r['threads']:>7} {r['ms_median']:>10.3f} {r['ms_p90']:>8.3f} {r['vs_native_1_thread']:>18.2f}")
    print(f"bundle {out['bytes'] / 1e6:.2f} MB (runtime files {out['runtime_bytes'] / 1e6:.2f} MB, model "
          f"{out['model_bytes'] / 1e6:.2f} MB), gzipped {out['gzip_bytes'] / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
