"""The page at GET / in a real headless browser: Debian's chromium driven by its chromedriver through
selenium, offline. Pick a file, drop a file, see the top classes, the heatmap overlay and the SE
profile; a bad file shows the server's error. Skips, saying why, without chromium/chromedriver/selenium
(`make test` installs them through .ci/run and the Makefile).

SEDEPLOY_SCREENSHOT=docs/serve_page.png also keeps the screenshot there; SEDEPLOY_SCREENSHOT_MODEL=model.onnx
serves that model instead of the test's tiny one (a real model for the picture in docs/).
"""
from __future__ import annotations

import base64
import io
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from support.launch import ServerProcess

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
if not (CHROMIUM and CHROMEDRIVER):
    pytest.skip("chromium and chromedriver are not installed (apt-get install chromium chromium-driver)",
                allow_module_level=True)
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
pytest.importorskip("uvicorn", reason="the serve extra is not installed")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=900,1000",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        opts.add_argument(flag)
    os.environ.setdefault("SE_OFFLINE", "true")     # selenium-manager must not look for drivers online
    driver = webdriver.Chrome(options=opts, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def _image(path: Path) -> Path:
    """A real Fashion-MNIST test image when the dataset is on disk, else a synthetic one."""
    try:
        from sedeploy.core.arrays import load_arrays
        x = load_arrays("fashion-mnist", split="test", native=True)[1][0, 0]
    except Exception:  # noqa: BLE001 - no dataset here: any image does for the page
        x = (np.random.default_rng(0).random((28, 28)) * 255).astype(np.uint8)
        x[8:20, 6:22] = 255
    Image.fromarray(x).save(path)
    return path


def _wait(driver, cond, timeout: float = 30):
    return WebDriverWait(driver, timeout).until(lambda d: cond(d))


def _top(driver):
    return [(li.get_attribute("data-label"), float(li.get_attribute("data-prob")))
            for li in driver.find_elements(By.CSS_SELECTOR, "#top li.cls")]


def _loaded(driver, elem_id: str) -> bool:
    return driver.execute_script(f"const i = document.getElementById('{elem_id}');"
                                 "return i.complete && i.naturalWidth > 0 && !i.hidden;")


def test_page_classifies_picked_and_dropped_images(browser, fm_onnx, fmnist_dir, tmp_path):
    from sedeploy.core.datasets import fmnist_dirs, read_fmnist
    from sedeploy.runtime.predictor import Predictor
    model = Path(os.environ.get("SEDEPLOY_SCREENSHOT_MODEL") or fm_onnx)
    img = _image(tmp_path / "sample.png")
    pred = Predictor(model, "cpu")
    want = [(t.label, t.prob) for t in pred.predict([img], topk=5)[0].top]

    with ServerProcess(["--model", f"fm={model}"]) as srv:
        browser.get(srv.url + "/")
        assert browser.title == "sedeploy serve"
        _wait(browser, lambda d: d.find_element(By.ID, "status").text == "ready")
        assert browser.find_element(By.ID, "model").get_attribute("value") == "fm"
        # pick a file
        browser.find_element(By.ID, "file").send_keys(str(img))
        _wait(browser, lambda d: len(_top(d)) == 5 and _loaded(d, "heatmap") and _loaded(d, "se"))
        got = _top(browser)
        assert [g[0] for g in got] == [w[0] for w in want]
        np.testing.assert_allclose([g[1] for g in got], [w[1] for w in want], atol=1e-5)
        assert "sample.png" in browser.find_element(By.ID, "meta").text
        assert browser.execute_script("return document.getElementById('heatmap').naturalWidth") > 200
        shot = browser.get_screenshot_as_png()
        # drop a file (the drop event a person's drag produces, with the file in its DataTransfer)
        flipped = Image.open(img).transpose(Image.FLIP_TOP_BOTTOM)
        buf = io.BytesIO()
        flipped.save(buf, "PNG")
        browser.execute_script("""
            const bytes = Uint8Array.from(atob(arguments[0]), c => c.charCodeAt(0));
            const dt = new DataTransfer();
            dt.items.add(new File([bytes], 'dropped.png', {type: 'image/png'}));
            document.getElementById('drop').dispatchEvent(new DragEvent('drop', {dataTransfer: dt, bubbles: true}));
        """, base64.b64encode(buf.getvalue()).decode())
        _wait(browser, lambda d: "dropped.png" in d.find_element(By.ID, "meta").text and _loaded(d, "heatmap"))
        flipped.save(tmp_path / "dropped.png")
        want2 = Predictor(model, "cpu").predict([tmp_path / "dropped.png"], topk=5)[0].top
        assert [g[0] for g in _top(browser)] == [t.label for t in want2]
        # a file that is no image: the server's one-line error on the page
        (tmp_path / "notes.txt").write_text("not an image")
        browser.find_element(By.ID, "file").send_keys(str(tmp_path / "notes.txt"))
        _wait(browser, lambda d: d.find_element(By.ID, "error").is_displayed())
        assert "not an image" in browser.find_element(By.ID, "error").text
        # the calibrated 'unsure' flag: shown exactly when the runtime flags the image
        if model == fm_onnx:      # uniform noise (unsure) and an image like the tiny model's training data (not)
            Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32), dtype=np.uint8)).save(tmp_path / "noise.png")
            xs = read_fmnist(fmnist_dirs(fmnist_dir), "test", None)[0]
            known = next(p for i in range(20) for p in [tmp_path / f"known{i}.png"]
                         if not Image.fromarray(xs[i, 0]).save(p) and pred.predict([p])[0].unsure is False)
            for path, flagged in ((tmp_path / "noise.png", True), (known, False)):
                assert pred.predict([path])[0].unsure is flagged
                browser.find_element(By.ID, "file").send_keys(str(path))
                _wait(browser, lambda d: path.name in d.find_element(By.ID, "meta").text and len(_top(d)) == 5)
                assert browser.find_element(By.ID, "unsure").is_displayed() is flagged, path.name
    Image.open(io.BytesIO(shot)).verify()
    keep = os.environ.get("SEDEPLOY_SCREENSHOT")
    if keep:       # a small palette PNG for docs/
        im = Image.open(io.BytesIO(shot)).convert("RGB")
        im.quantize(64).save(keep, optimize=True)
