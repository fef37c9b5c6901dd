"""The browser as a device: a static bundle (page + model + onnxruntime-web) that runs the model and its
heatmap inside the page, with the Python runtime's preprocessing ported to JavaScript.

- `runtime_dir()`: the onnxruntime-web files, pinned to ORT_WEB_VERSION, from a local folder or npm
  tarball (`--web-runtime PATH`), else from the cache ($XDG_CACHE_HOME/sedeploy/onnxruntime-web/<version>),
  filled once by `npm pack` (npm checks the tarball's integrity against the registry). Only the files
  this model needs are kept: the wasm build's loader and its SIMD + threads binary (it also runs on one
  thread); WebGPU's files come with `webgpu=True`. Every file, from whatever source, must have the SHA-256
  pinned in SHA256 (the pinned version's own files): a cache file that does not is fetched again, a
  --web-runtime file that does not is refused.
- `write_bundle()`: the folder any static file server can host (index.html, the page's modules and
  style, model.onnx, model.json with what the page needs, ort/ with the runtime files).
- static/: the page. preprocess.js is Pillow's decode-to-tensor path (mode conversion, alpha
  compositing, the separable resampling with its fixed-point rounding), explain.js is runtime.explain,
  sedeploy.js the script API `window.sedeploy` and the page.
Serve hosts the same page and files (`sedeploy serve`: "run in this browser").
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

from ...core.errors import UserError

ORT_WEB_VERSION = "1.30.0"
PACKAGE = "onnxruntime-web"
# the wasm build: the loader and the SIMD + threads binary (one thread without cross-origin isolation)
WASM_FILES = ("ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")
# WebGPU (where a real GPU exists): its loader and the JSEP binary
WEBGPU_FILES = ("ort.webgpu.min.mjs", "ort-wasm-simd-threaded.jsep.mjs", "ort-wasm-simd-threaded.jsep.wasm")
# the pinned version's files, as `npm pack onnxruntime-web@1.30.0` gave them (tarball sha512 checked by npm)
SHA256 = {
    "ort.wasm.min.mjs": "219e6a1fc8a9938268d18efca3c91d310bd2f4a59bbd13744df5b2b7fc6cee3b",
    "ort-wasm-simd-threaded.mjs": "e13f7f94fc51b4ca72b12faeb1ee95f4ace6dfbc8939bc718aabdc0a27c4299b",
    "ort-wasm-simd-threaded.wasm": "3398c10d07d229bd91b364548e130e0e51a8e5704b88c7c083ebbeb78842dee2",
    "ort.webgpu.min.mjs": "3dffff71811bc13a3a3d9591c57ca5ee5735b8f5f3eaf789510b02bb040ae3a0",
    "ort-wasm-simd-threaded.jsep.mjs": "709853412fd1ffc34247af1e73569227b5b79629c5ca3f59cc39cf7e500e4947",
    "ort-wasm-simd-threaded.jsep.wasm": "3ad23231b5bd6d9dda55a7f84606315e0bf35b6750c28ee993c987c54cacab0f",
}
STATIC = Path(__file__).with_name("static")
PAGE_FILES = ("index.html", "sedeploy.js", "preprocess.js", "explain.js", "unsure.js", "style.css")
MODEL_JSON = "model.json"
# what a static server must send: .mjs as JavaScript, .wasm as application/wasm (EDGE.md)
MIME = {".html": "text/html; charset=utf-8", ".js": "text/javascript", ".mjs": "text/javascript",
        ".css": "text/css", ".wasm": "application/wasm", ".json": "application/json", ".onnx": "application/octet-stream",
        ".png": "image/png", ".jpg": "image/jpeg"}
# cross-origin isolation: what makes SharedArrayBuffer, hence wasm threads, available to the page
ISOLATION_HEADERS = {"Cross-Origin-Opener-Policy": "same-origin", "Cross-Origin-Embedder-Policy": "require-corp"}


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "sedeploy" / PACKAGE / ORT_WEB_VERSION


def _good(f: Path) -> bool:
    """F is the pinned version's file of that name (its SHA-256 matches)."""
    if not f.is_file():
        return False
    h = hashlib.sha256()
    with open(f, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest() == SHA256[f.name]


def _complete(d: Path, names) -> bool:
    return all(_good(d / n) for n in names)


def _check(dest: Path, names, source: str) -> None:
    """The files just put in DEST from SOURCE are the pinned version's, else a UserError naming the first."""
    bad = [n for n in names if not _good(dest / n)]
    if bad:
        raise UserError(f"{source}: {bad[0]} is not {PACKAGE} {ORT_WEB_VERSION}'s (SHA-256 differs); pass the "
                        f"{PACKAGE}@{ORT_WEB_VERSION} npm tarball or its dist/ folder")


def _extract(tgz: Path, dest: Path, names) -> None:
    """The named dist/ files of an npm tarball into DEST (nothing else is read out of it)."""
    try:
        with tarfile.open(tgz, "r:gz") as tar:
            members = {m.name: m for m in tar.getmembers() if m.isfile()}
            version = json.load(tar.extractfile(members["package/package.json"])).get("version")
            if version != ORT_WEB_VERSION:
                raise UserError(f"{tgz} is {PACKAGE} {version}; sedeploy pins {ORT_WEB_VERSION}: "
                                f"npm pack {PACKAGE}@{ORT_WEB_VERSION}")
            for n in names:
                m = members.get(f"package/dist/{n}")
                if m is None:
                    raise UserError(f"{tgz} has no dist/{n}; pass the {PACKAGE}@{ORT_WEB_VERSION} tarball")
                data = tar.extractfile(m).read()
                (dest / n).write_bytes(data)
    except (tarfile.TarError, OSError, KeyError, ValueError) as e:
        raise UserError(f"{tgz}: not a readable {PACKAGE} npm tarball ({e}); "
                        f"download it with `npm pack {PACKAGE}@{ORT_WEB_VERSION}`") from None


def _fill(dest: Path, names, source: Optional[Path]) -> None:
    """Put the runtime files in DEST from SOURCE (a folder or an npm tarball) or by `npm pack`."""
    dest.mkdir(parents=True, exist_ok=True)
    if source is not None and source.is_dir():
        missing = [n for n in names if not (source / n).is_file() and not (source / "dist" / n).is_file()]
        if missing:
            raise UserError(f"--web-runtime {source} lacks {', '.join(missing)}; pass the dist/ folder of "
                            f"{PACKAGE}@{ORT_WEB_VERSION} or its npm tarball")
        for n in names:
            src = source / n if (source / n).is_file() else source / "dist" / n
            shutil.copyfile(src, dest / n)
        _check(dest, names, f"--web-runtime {source}")
        return
    if source is not None:
        if not source.is_file():
            raise UserError(f"--web-runtime {source} does not exist; pass a folder or the npm tarball of "
                            f"{PACKAGE}@{ORT_WEB_VERSION}")
        _extract(source, dest, names)
        _check(dest, names, f"--web-runtime {source}")
        return
    npm = shutil.which("npm")
    if npm is None:
        raise UserError(f"the web bundle needs {PACKAGE} {ORT_WEB_VERSION} and npm is not installed to fetch it: "
                        f"apt-get install npm (or make browser), or pass --web-runtime with its tarball or dist/ folder")
    with tempfile.TemporaryDirectory(prefix="sedeploy-npm-") as tmp:
        try:
            r = subprocess.run([npm, "pack", f"{PACKAGE}@{ORT_WEB_VERSION}", "--json", "--pack-destination", tmp],
                               capture_output=True, text=True, timeout=600, cwd=tmp)
        except subprocess.TimeoutExpired:
            r = None
        tgz = Path(tmp) / f"{PACKAGE}-{ORT_WEB_VERSION}.tgz"
        if r is None or r.returncode != 0 or not tgz.is_file():
            why = "timed out" if r is None else ((r.stderr or r.stdout).strip().splitlines() or ["failed"])[-1]
            raise UserError(f"could not fetch {PACKAGE}@{ORT_WEB_VERSION} with npm ({why}); check that the npm "
                            f"registry is reachable, or pass --web-runtime with its tarball or dist/ folder")
        _extract(tgz, dest, names)
        _check(dest, names, f"npm pack {PACKAGE}@{ORT_WEB_VERSION}")


def runtime_dir(source: Union[str, os.PathLike, None] = None, webgpu: bool = False,
                fetch: bool = True) -> Path:
    """The folder holding the onnxruntime-web files the bundle ships (see the module doc). With
    fetch=False a missing cache is a UserError instead of an npm download (serve never downloads)."""
    names = WASM_FILES + (WEBGPU_FILES if webgpu else ())
    if source is not None:
        src = Path(source)
        if src.is_dir() and _complete(src, names):
            return src
        if not src.exists():
            raise UserError(f"--web-runtime {src} does not exist; pass a folder or the npm tarball of "
                            f"{PACKAGE}@{ORT_WEB_VERSION}")
        # a tarball or a package folder: its files extracted once into the cache, keyed by where they came from
        key = hashlib.sha256(f"{src.resolve()}:{src.stat().st_mtime_ns}:{src.stat().st_size}".encode()).hexdigest()[:16]
        d = cache_root().parent / f"{ORT_WEB_VERSION}-from-{key}"
        if _complete(d, names):
            return d
        return _fill_cache(d, names, src)
    d = cache_root()
    if _complete(d, names):
        return d
    if not fetch:
        raise UserError(f"the {PACKAGE} {ORT_WEB_VERSION} files are not in {d} (or not intact); run "
                        f"`sedeploy export --formats web` once (it fetches them with npm) or pass --web-runtime "
                        f"with its tarball or dist/ folder")
    return _fill_cache(d, names, None)


def _fill_cache(d: Path, names, source: Optional[Path]) -> Path:
    """Fill the cache folder D from SOURCE (None: npm) through a staging folder beside it, file by file
    renamed in (same filesystem); files already complete there are kept."""
    d.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix="fill-", dir=d.parent))
    try:
        for n in names:               # files already cached (and intact) stay; the rest are fetched
            if _good(d / n):
                shutil.copyfile(d / n, stage / n)
        missing = [n for n in names if not (stage / n).is_file()]
        if missing:
            _fill(stage, missing, source)
        d.mkdir(parents=True, exist_ok=True)
        for n in names:
            os.replace(stage / n, d / n)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return d


def model_json(info: Any, model_file: str) -> Dict[str, Any]:
    """What the page needs to run and explain the model, from runtime.model.ModelInfo."""
    return {"format": "sedeploy-web", "version": 1, "model": model_file, "ort_web": ORT_WEB_VERSION,
            "classes": list(info.classes), "input_size": list(info.input_size), "mean": list(info.mean),
            "std": list(info.std), "input_name": info.input_name, "output_names": list(info.output_names),
            "se_outputs": list(info.se_outputs), "feature_map": info.feature_map, "background": [0, 0, 0],
            "max_pixels": _max_pixels(), "fixed_batch": info.fixed_batch, "resize": resize_rule(),
            "meta": {k: v for k, v in info.meta.items() if isinstance(v, (str, int, float, bool, list, dict))}}


def resize_rule() -> Dict[str, Any]:
    """How this machine's Pillow resizes (the page repeats it): BILINEAR, and from Pillow 13 on the vertical
    pass first when the height shrinks by more than twice as many pixels as the width."""
    import PIL
    major = int(PIL.__version__.split(".")[0])
    return {"filter": "bilinear", "pillow": PIL.__version__, "vertical_first_rule": major >= 13}


def _max_pixels() -> int:
    from ...core.decode import MAX_PIXELS
    return MAX_PIXELS


def write_bundle(out: Path, model: Path, info: Any, runtime: Path, webgpu: bool = False) -> List[Path]:
    """Write the static bundle into the (new, empty) folder OUT; returns the files written."""
    out.mkdir(parents=True, exist_ok=False)
    (out / "ort").mkdir()
    written = []
    for n in PAGE_FILES:
        shutil.copyfile(STATIC / n, out / n)
        written.append(out / n)
    shutil.copyfile(model, out / model.name)
    written.append(out / model.name)
    spec = model_json(info, model.name)
    spec["runtime_files"] = list(WASM_FILES + (WEBGPU_FILES if webgpu else ()))
    (out / MODEL_JSON).write_text(json.dumps(spec, indent=1) + "\n")
    written.append(out / MODEL_JSON)
    for n in spec["runtime_files"]:
        shutil.copyfile(runtime / n, out / "ort" / n)
        written.append(out / "ort" / n)
    return written


def sizes(folder: Path) -> Dict[str, int]:
    """Bytes of the bundle: all files, the runtime files, and all files gzipped (what a server
    compressing its answers sends)."""
    import gzip
    total = rt = gz = 0
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            b = p.read_bytes()
            total += len(b)
            gz += len(gzip.compress(b, 6))
            if p.parent.name == "ort":
                rt += len(b)
    return {"bytes": total, "runtime_bytes": rt, "gzip_bytes": gz}

