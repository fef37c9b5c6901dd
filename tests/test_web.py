"""The browser as a device (`export --formats web`): the bundle in Debian's headless Chromium driven by
selenium, served on 127.0.0.1 with every other host resolved to nothing. The script API's outputs equal
native onnxruntime's on the same tensors; the page's preprocessing gives the very tensor the Python
runtime gives (photos, JPEG/PNG, transparency, grey, EXIF rotation, several sizes); a file picked in the
page shows `sedeploy infer`'s top-1; bad input shows a message; threads only when cross-origin isolated;
a 3-channel 48x48 model too. Skips, saying why, without chromium/chromedriver/selenium or the
onnxruntime-web files (fetched once by npm into ~/.cache/sedeploy).
"""
from __future__ import annotations

import io
import json
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import assert_one_line_error
from support.formats import export_set
from sedeploy.core.errors import UserError
from sedeploy.runtime import web
from sedeploy.runtime.web import browser

if browser.missing():
    pytest.skip(browser.missing(), allow_module_level=True)
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

BUDGET_BYTES = 16_000_000       # the runtime files and page (the model comes on top): 14.3 MB measured
BUDGET_GZIP = 4_500_000         # the runtime files gzipped: 3.7 MB measured


@pytest.fixture(scope="module")
def runtime_files():
    try:
        return web.runtime_dir()
    except UserError as e:
        pytest.skip(f"onnxruntime-web {web.ORT_WEB_VERSION} cannot be had here: {e}")


@pytest.fixture(scope="module")
def web_set(trained_fm, fmnist_dir, tmp_path_factory, runtime_files) -> Path:
    return export_set(trained_fm, fmnist_dir, tmp_path_factory.mktemp("web_set"), "web")


@pytest.fixture(scope="module")
def page(web_set):
    with browser.StaticServer(web_set / "model.web", isolate=True) as srv, browser.Browser() as b:
        assert b.open(srv.url + "index.html") == "ready", b.console()
        b.server = srv
        yield b


def _images():
    """Real photographs (scikit-learn's two samples) at several sizes as JPEG and PNG, and a grey, a
    transparent and an EXIF-rotated image: name -> file bytes."""
    try:
        from sklearn.datasets import load_sample_images
        photos = load_sample_images().images
    except Exception:  # noqa: BLE001 - without scikit-learn: generated pictures
        rng = np.random.default_rng(0)
        photos = [np.clip(rng.normal(128, 60, (120, 160, 3)), 0, 255).astype(np.uint8) for _ in range(2)]
    out = {}

    def save(name, im, fmt, **kw):
        b = io.BytesIO()
        im.save(b, fmt, **kw)
        out[name] = b.getvalue()
    for i, ph in enumerate(photos):
        for w, h in ((427, 640), (97, 61), (33, 29)):
            for fmt in ("PNG", "JPEG"):
                save(f"photo{i}-{w}x{h}.{fmt.lower()}", Image.fromarray(ph).resize((w, h)), fmt, quality=90)
    for w, h in ((50, 70), (61, 97), (200, 30)):          # both of Pillow 13's pass orders
        save(f"grey-{w}x{h}.png", Image.fromarray(photos[1]).convert("L").resize((w, h)), "PNG")
    rgba = np.array(Image.fromarray(photos[0]).resize((120, 90)).convert("RGBA"))
    rgba[..., 3] = np.linspace(0, 255, 120, dtype=np.uint8)[None]
    save("transparent.png", Image.fromarray(rgba), "PNG")
    exif = Image.Exif()
    exif[0x0112] = 6
    save("exif-rotated.jpg", Image.fromarray(photos[1]).resize((160, 100)), "JPEG", exif=exif)
    return out


def test_bundle_files_metadata_and_budget(web_set):
    d = web_set / "model.web"
    assert sorted(p.name for p in (d / "ort").iterdir()) == sorted(web.WASM_FILES)
    assert {p.name for p in d.iterdir()} >= {"index.html", "sedeploy.js", "preprocess.js", "explain.js", "style.css",
                                             "model.onnx", "model.json"}
    spec = json.loads((d / "model.json").read_text())
    assert spec["ort_web"] == web.ORT_WEB_VERSION and spec["input_size"] == [1, 32, 32] and len(spec["classes"]) == 10
    assert spec["output_names"] == ["logits", "se1", "se2", "se3", "feature_map"]
    facts = json.loads((web_set / "export.json").read_text())["formats"]["web"]
    assert facts["verified"] is True and facts["threads"] >= 1
    assert (d / "model.onnx").read_bytes() == (web_set / "model.onnx").read_bytes()
    assert facts["bytes"] - (d / "model.onnx").stat().st_size < BUDGET_BYTES
    sizes = web.sizes(d)
    assert facts["runtime_bytes"] == sizes["runtime_bytes"] < BUDGET_BYTES
    import gzip
    assert sum(len(gzip.compress((d / "ort" / n).read_bytes(), 6)) for n in web.WASM_FILES) < BUDGET_GZIP


def test_script_api_run_equals_onnxruntime_on_every_output(page, web_set):
    from sedeploy.runtime.runners import load_runner
    x = np.random.default_rng(3).normal(0, 1, (3, 1, 32, 32)).astype(np.float32)
    got, ms = page.run(x)
    ref = load_runner("onnxruntime", web_set / "model.onnx").run(x)
    assert set(got) == set(ref) and ms > 0
    for k in ref:
        assert got[k].shape == ref[k].shape
        assert float(np.abs(got[k] - ref[k]).max()) < 1e-4, k


def test_page_preprocessing_gives_the_runtimes_tensor_and_heatmap(page, web_set):
    from sedeploy.runtime import explain, unsure
    from sedeploy.runtime.runners import load_runner
    from sedeploy.runtime.preprocess import Preprocessor
    r = load_runner("onnxruntime", web_set / "model.onnx")
    info = r.info
    pp = Preprocessor(info.input_size, info.mean, info.std, (0, 0, 0))
    for name, data in _images().items():
        got = page.classify_bytes(data, topk=3)
        x = pp.to_input(pp.decode(data, name))
        assert np.array_equal(got["input"], x.ravel()), name          # bit for bit, every pixel
        out = {k: v[0] for k, v in r.run(x[None]).items()}
        assert float(np.abs(np.array(got["outputs"]["logits"]) - out["logits"]).max()) < 1e-4, name
        assert got["top"][0][0] == info.classes[int(out["logits"].argmax())], name
        ex = explain.explain(out, info)                # the default map: head-cam, from the head_linear metadata
        assert got["explanation"]["method"] == ex["method"] == "head-cam", name
        assert np.abs(np.array(got["explanation"]["attention"]) - ex["attention"].ravel()).max() < 1e-5, name
        assert [c for c, _ in got["explanation"]["ranked"]] == [c for c, _ in ex["ranked"]], name
        scores, flags = unsure.unsure({k: v[None] for k, v in out.items()}, info.meta.get("unsure"))
        assert scores is not None                      # the export calibrated it; the page says the same
        assert got["unsure"] == bool(flags[0]) and abs(got["ood_score"] - scores[0]) <= 1e-4 * max(1, abs(scores[0]))


def test_a_file_picked_in_the_page_shows_infers_top1_offline(page, web_set, fmnist_dir, tmp_path, run_cli):
    from sedeploy.core.arrays import load_arrays
    try:
        img = load_arrays("fashion-mnist", split="test", native=True)[1][0, 0]
    except Exception:  # noqa: BLE001 - no dataset on disk: a photo
        img = np.asarray(Image.open(io.BytesIO(_images()["photo0-97x61.png"])).convert("L"))
    Image.fromarray(img).save(tmp_path / "item.png")
    r = run_cli("infer", tmp_path / "item.png", "--model", web_set / "model.onnx", "--json", "--topk", "3")
    assert r.code == 0, r.err
    want = json.loads(r.out.splitlines()[0])["top"]
    d = page.driver
    d.find_element(By.ID, "file").send_keys(str(tmp_path / "item.png"))
    WebDriverWait(d, 30).until(lambda d: d.execute_script("return document.body.dataset.state") in ("done", "error"))
    assert d.execute_script("return document.body.dataset.state") == "done", d.find_element(By.ID, "error").text
    top = [(li.get_attribute("data-label"), float(li.get_attribute("data-prob")))
           for li in d.find_elements(By.CSS_SELECTOR, "#top li.cls")]
    assert top[0][0] == want[0]["label"] and abs(top[0][1] - want[0]["prob"]) < 1e-4
    assert d.execute_script("const c = document.getElementById('heatmap'); return c.width > 0 && c.height > 0")
    # the 'unsure' line shows exactly when infer flags the image: this one, uniform noise (flagged), and an image
    # like the tiny model's training data that infer accepts
    assert d.find_element(By.ID, "unsure").is_displayed() is json.loads(r.out.splitlines()[0])["unsure"]
    from sedeploy.core.datasets import fmnist_dirs, read_fmnist
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32), dtype=np.uint8)).save(tmp_path / "noise.png")
    xs = read_fmnist(fmnist_dirs(fmnist_dir), "test", None)[0]
    for i in range(20):
        Image.fromarray(xs[i, 0]).save(tmp_path / f"known{i}.png")
        rk = run_cli("infer", tmp_path / f"known{i}.png", "--model", web_set / "model.onnx", "--json")
        if json.loads(rk.out.splitlines()[0])["unsure"] is False:
            known = tmp_path / f"known{i}.png"
            break
    else:
        pytest.fail("infer flagged all 20 in-distribution images as unsure")
    rn = run_cli("infer", tmp_path / "noise.png", "--model", web_set / "model.onnx", "--json")
    assert json.loads(rn.out.splitlines()[0])["unsure"] is True
    for path, shown in ((tmp_path / "noise.png", True), (known, False)):
        d.execute_script("document.body.dataset.state = ''")
        d.find_element(By.ID, "file").send_keys(str(path))
        WebDriverWait(d, 30).until(lambda d: d.execute_script("return document.body.dataset.state") == "done")
        assert d.find_element(By.ID, "unsure").is_displayed() is shown, path.name
    # everything came from the loopback server: the page's own resource list and the server's log agree
    urls = d.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert urls and all(u.startswith(page.server.url) or u.startswith("blob:") for u in urls), urls
    assert page.offsite_requests() == []
    # and the check sees a request elsewhere: a page that fetches another host is caught
    d.execute_script("fetch('http://example.invalid/x').catch(() => {})")
    WebDriverWait(d, 10).until(lambda d: page.offsite_requests())
    assert page.server.log and all(line.startswith("127.0.0.1:") for line in page.server.log)


_SOURCES_JS = """
const [name, done] = arguments;
const arr = (r) => Array.from(r.input);
(async () => {
  const url = new URL(name, location.href).href;
  const blob = await (await fetch(url)).blob();
  const img = new Image(); img.src = url; await img.decode();
  const bmp = await createImageBitmap(blob, {premultiplyAlpha: "none", colorSpaceConversion: "none"});
  const c = new OffscreenCanvas(bmp.width, bmp.height), g = c.getContext("2d");
  g.drawImage(bmp, 0, 0);
  const data = g.getImageData(0, 0, bmp.width, bmp.height);
  const out = {};
  for (const [k, src] of [["url", url], ["blob", blob], ["img", img], ["imagedata", data]]) {
    const r = await window.sedeploy.classify(src, {tensor: true, topk: 2});
    out[k] = {input: arr(r), top: r.top, keys: Object.keys(r.outputs).sort(), ms: r.ms};
  }
  const errors = {};
  for (const [k, src] of [["missing", new URL("nowhere.png", location.href).href], ["number", 42],
                          ["text", new Blob(["not an image"])]]) {
    try { await window.sedeploy.classify(src); errors[k] = null; }
    catch (e) { errors[k] = (e instanceof Error) ? e.message : "not an Error: " + String(e); }
  }
  done({out, errors});
})().catch((e) => done({error: String(e && e.message || e)}));"""


def test_script_api_takes_a_url_blob_img_and_imagedata(page, web_set):
    """classify(source) for each source kind the API names gives the Python runtime's tensor and top-k;
    a URL that is not there, a wrong type and a non-image Blob reject with an Error saying what to do."""
    from sedeploy.runtime.preprocess import Preprocessor
    from sedeploy.runtime.runners import load_runner
    info = load_runner("onnxruntime", web_set / "model.onnx").info
    pp = Preprocessor(info.input_size, info.mean, info.std, (0, 0, 0))
    images = _images()
    folder = web_set / "model.web"
    for name in ("photo0-97x61.png", "photo1-427x640.jpeg"):
        (folder / name).write_bytes(images[name])
        try:
            r = page.driver.execute_async_script(_SOURCES_JS, name)
        finally:
            (folder / name).unlink()
        assert "error" not in r, r
        want = pp.to_input(pp.decode(images[name], name)).ravel()
        for kind, got in r["out"].items():
            assert np.array_equal(np.array(got["input"], np.float32), want), (name, kind)
            assert got["top"] == r["out"]["url"]["top"] and got["ms"] > 0, (name, kind)
            assert got["keys"] == sorted(info.output_names), (name, kind)
    assert "HTTP 404" in r["errors"]["missing"] and "check the URL" in r["errors"]["missing"]
    assert "classify takes an image URL" in r["errors"]["number"]
    assert "not an image" in r["errors"]["text"]


def _png_header(w: int, h: int) -> bytes:
    """A PNG whose header says W x H (the pixels are never reached): a decompression bomb's shape."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk))


def test_bad_input_gets_a_message_and_the_api_rejects(page, tmp_path):
    d = page.driver
    for name, data, words in (("notes.png", b"this is not an image", "not an image"),
                              ("bomb.png", _png_header(9000, 9000), "over the limit")):
        (tmp_path / name).write_bytes(data)
        d.execute_script("document.body.dataset.state = 'ready'; document.getElementById('file').value = ''")
        d.find_element(By.ID, "file").send_keys(str(tmp_path / name))
        WebDriverWait(d, 30).until(lambda d: d.execute_script("return document.body.dataset.state") == "error")
        err = d.find_element(By.ID, "error")
        assert err.is_displayed() and words in err.text, err.text
        with pytest.raises(RuntimeError, match=words):
            page.classify_bytes(data)


def test_threads_only_when_cross_origin_isolated(web_set):
    with browser.Browser() as b:
        for isolate in (False, True):
            with browser.StaticServer(web_set / "model.web", isolate=isolate) as srv:
                assert b.open(srv.url + "index.html") == "ready"
                info = b.driver.execute_script("return window.sedeploy.info")
                assert info["isolated"] is isolate
                cores = b.driver.execute_script("return navigator.hardwareConcurrency")
                assert info["threads"] == (max(1, min(4, cores // 2)) if isolate else 1)
                if isolate:                                   # asked for, threads run where the page is isolated
                    assert b.open(srv.url + "index.html?threads=2") == "ready"
                    assert b.driver.execute_script("return window.sedeploy.info.threads") == 2
                    x = np.random.default_rng(1).normal(0, 1, (2, 1, 32, 32)).astype(np.float32)
                    assert b.run(x)[0]["logits"].shape == (2, 10)
                else:
                    assert b.open(srv.url + "index.html?threads=2") == "ready"
                    assert b.driver.execute_script("return window.sedeploy.info.threads") == 1


def test_a_model_that_fails_to_load_shows_why(web_set, tmp_path):
    broken = tmp_path / "broken.web"
    shutil.copytree(web_set / "model.web", broken)
    (broken / "model.onnx").write_bytes(b"\x08\x07garbage" * 10)
    with browser.StaticServer(broken) as srv, browser.Browser() as b:
        assert b.open(srv.url + "index.html") == "error"
        assert "failed to load" in b.driver.find_element(By.ID, "error").text
        with pytest.raises(RuntimeError, match="failed to load"):
            b.run(np.zeros((1, 1, 32, 32), np.float32))


@pytest.mark.slow                # a second export and browser (~15 s); make test-slow runs it
def test_rgb_48_model_in_the_browser(tmp_path, runtime_files):
    from test_formats import write_rgb48_checkpoint
    from sedeploy.export.exporter import ExportOptions, export_checkpoint
    from sedeploy.runtime.preprocess import Preprocessor
    from sedeploy.runtime.runners import load_runner
    write_rgb48_checkpoint(tmp_path / "best.pt")
    man = export_checkpoint(str(tmp_path / "best.pt"), str(tmp_path), ExportOptions(formats=("onnx", "web")),
                            log=lambda s: None)
    assert man["formats"]["web"]["verified"] is True
    info = load_runner("onnxruntime", tmp_path / "model.onnx").info
    pp = Preprocessor(info.input_size, info.mean, info.std, (0, 0, 0))
    data = _images()["photo1-97x61.jpeg"]
    with browser.StaticServer(tmp_path / "model.web") as srv, browser.Browser() as b:
        assert b.open(srv.url + "index.html") == "ready"
        got = b.classify_bytes(data)
    assert np.array_equal(got["input"], pp.to_input(pp.decode(data, "x")).ravel())
    assert len(got["outputs"]["logits"]) == 4


def test_runtime_files_errors_are_one_line(tmp_path, monkeypatch, run_cli, web_set, runtime_files):
    with pytest.raises(UserError, match="does not exist"):
        web.runtime_dir(tmp_path / "nowhere.tgz")
    (tmp_path / "dist").mkdir()
    with pytest.raises(UserError, match="lacks ort.wasm.min.mjs"):
        web.runtime_dir(tmp_path / "dist")
    (tmp_path / "bad.tgz").write_bytes(b"not a tarball")
    with pytest.raises(UserError, match="not a readable onnxruntime-web npm tarball"):
        web.runtime_dir(tmp_path / "bad.tgz")
    # pinned by SHA-256: a folder with the right names but another build's bytes is refused
    altered = tmp_path / "altered"
    shutil.copytree(runtime_files, altered)
    with open(altered / "ort-wasm-simd-threaded.wasm", "r+b") as f:
        f.seek(1000)
        f.write(b"\0" * 8)
    with pytest.raises(UserError, match="ort-wasm-simd-threaded.wasm is not onnxruntime-web 1.30.0's"):
        web.runtime_dir(altered)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("PATH", str(tmp_path))            # no npm
    with pytest.raises(UserError, match="npm is not installed"):
        web.runtime_dir()
    with pytest.raises(UserError, match="not in"):
        web.runtime_dir(fetch=False)
    # a damaged cache is not used: it is fetched again (here: no npm, so the error says so)
    shutil.copytree(altered, web.cache_root())
    with pytest.raises(UserError, match="npm is not installed"):
        web.runtime_dir()
    with pytest.raises(UserError, match="not intact"):
        web.runtime_dir(fetch=False)
    Image.new("L", (9, 9)).save(tmp_path / "x.png")
    r = run_cli("infer", tmp_path / "x.png", "--model", web_set / "model.web")
    assert_one_line_error(r, "runs in a browser")


def test_serve_page_runs_on_the_server_or_in_the_browser_with_the_same_answer(page, web_set, tmp_path):
    """`sedeploy serve`'s page, both modes, the same image: the same top-5 (probabilities within 1e-4),
    a heatmap in each; the answers carry the cross-origin isolation headers, so the browser mode has threads."""
    import urllib.request
    from support.launch import ServerProcess
    data = _images()["photo0-97x61.jpeg"]
    (tmp_path / "photo.jpg").write_bytes(data)
    d = page.driver

    def top():
        return [(li.get_attribute("data-label"), float(li.get_attribute("data-prob")))
                for li in d.find_elements(By.CSS_SELECTOR, "#top li.cls")]
    with ServerProcess(["--model", f"fm={web_set / 'model.onnx'}"]) as srv:
        with urllib.request.urlopen(srv.url + "/") as r:
            assert r.headers["Cross-Origin-Opener-Policy"] == "same-origin"
            assert r.headers["Cross-Origin-Embedder-Policy"] == "require-corp"
        with urllib.request.urlopen(srv.url + "/web/style.css") as r:        # one style for both pages
            assert r.headers["Content-Type"].startswith("text/css") and b"#top li.cls" in r.read()
        d.get(srv.url + "/")
        WebDriverWait(d, 30).until(lambda d: d.find_element(By.ID, "status").text == "ready")
        answers = {}
        for mode in ("server", "browser"):
            d.find_element(By.CSS_SELECTOR, f'input[name="mode"][value="{mode}"]').click()
            d.execute_script("document.body.dataset.state = ''; document.getElementById('file').value = ''")
            d.find_element(By.ID, "file").send_keys(str(tmp_path / "photo.jpg"))   # a change event each time
            WebDriverWait(d, 60).until(lambda d: d.execute_script("return document.body.dataset.state") in ("done", "error"))
            assert d.execute_script("return document.body.dataset.state") == "done", d.find_element(By.ID, "error").text
            WebDriverWait(d, 10).until(lambda d: d.execute_script(
                "const i = document.getElementById('heatmap'); return i.complete && i.naturalWidth > 0"))
            answers[mode] = top()
            meta = d.find_element(By.ID, "meta").text
            assert ("in this browser" in meta) is (mode == "browser"), meta
        assert d.execute_script("return crossOriginIsolated") is True          # so the page may run wasm threads
        d.get(srv.url + "/?threads=2")                                    # and does, when asked
        WebDriverWait(d, 30).until(lambda d: d.find_element(By.ID, "status").text == "ready")
        d.find_element(By.CSS_SELECTOR, 'input[name="mode"][value="browser"]').click()
        d.execute_script("document.body.dataset.state = ''; document.getElementById('file').value = ''")
        d.find_element(By.ID, "file").send_keys(str(tmp_path / "photo.jpg"))
        WebDriverWait(d, 60).until(lambda d: d.execute_script("return document.body.dataset.state") == "done")
        assert "2 threads" in d.find_element(By.ID, "meta").text
        assert [a for a, _ in answers["server"]] == [b for b, _ in answers["browser"]]
        assert max(abs(a - b) for (_, a), (_, b) in zip(answers["server"], answers["browser"])) < 1e-4
