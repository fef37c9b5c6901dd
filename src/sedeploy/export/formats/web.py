"""The `web` format: <stem>.web/, a static folder any file server can host that runs the model in the
page with onnxruntime-web (wasm, fp32) and draws its heatmap there: index.html, the page's modules
(preprocess.js: the runtime's decode/resize/normalize ported from Pillow; explain.js: runtime.explain),
model.onnx, model.json and ort/ with the pinned runtime files (sedeploy.runtime.web).

Verified in its own runtime: the bundle is served on 127.0.0.1 with cross-origin isolation, opened in
headless Chromium (every other host resolves to nothing) and the exporter's batch is run through the
page's script API (`sedeploy.run`); without chromium, chromedriver or selenium it is built and
recorded "not verified" with the reason.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List

import numpy as np

from . import BuildContext


def build(ctx: BuildContext) -> List[Path]:
    from ...runtime import web
    from ...runtime.runners import load_runner
    onnx_file = ctx.built["onnx"][0]
    runtime = web.runtime_dir(ctx.web_runtime, webgpu=ctx.web_webgpu)
    info = load_runner("onnxruntime", onnx_file).info
    out = ctx.tmp / f"{ctx.stem}.web"
    web.write_bundle(out, onnx_file, info, runtime, webgpu=ctx.web_webgpu)
    ctx.facts["web"] = {"onnxruntime_web": web.ORT_WEB_VERSION, "runtime_files": list(web.WASM_FILES) +
                        (list(web.WEBGPU_FILES) if ctx.web_webgpu else []), **web.sizes(out)}
    return [out]


def outputs(ctx: BuildContext, paths: List[Path], x: np.ndarray) -> Dict[str, Dict[str, np.ndarray]]:
    from ...runtime.web import browser
    why = browser.missing()
    if why:
        ctx.facts["web"]["not_verified"] = f"no browser here: {why}"
        return {}
    from selenium.common.exceptions import WebDriverException
    from ...core.errors import UserError
    try:
        with browser.StaticServer(paths[0], isolate=True) as srv, browser.Browser() as b:
            state = b.open(srv.url + "index.html")
            if state != "ready":
                err = b.driver.execute_script("return document.getElementById('error').textContent")
                raise UserError(f"the web bundle did not load in Chromium: {err}")
            out, _ = b.run(x)
            ctx.facts["web"]["threads"] = b.driver.execute_script("return window.sedeploy.info.threads")
            foreign = b.offsite_requests() + [line for line in srv.log if not line.startswith("127.0.0.1")]
            if foreign:
                raise UserError(f"the web bundle asked for other hosts ({foreign[0][:120]}); it must be self-contained")
    except WebDriverException as e:     # chromium or chromedriver broken, a timeout: not the bundle's fault
        raise UserError(f"Chromium could not verify the web bundle ({str(e).strip().splitlines()[0][:160]}); "
                        f"check `chromium --version` and `chromedriver --version` (make browser)") from None
    return {"web (chromium)": out}
