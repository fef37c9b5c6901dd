"""Read a Triton model repository (or plain --model files) into the specs the server loads.

Follows Triton's "Model Repository" layout and its defaults:
    <repo>/<name>/config.pbtxt            optional for ONNX (Triton auto-completes it from the model)
    <repo>/<name>/<version>/model.onnx    integer versions; the default policy serves the latest one
The config must name the onnxruntime platform/backend, and its `name` (if set) must be the folder's.
Anything else in the folder (labels.txt, README) is ignored; hidden folders are skipped.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence

from ..core import tritonconfig as tc
from ..core.errors import UserError
from .model import ModelSpec


def read_model_dir(d: Path) -> ModelSpec:
    """One <repo>/<name>/ folder -> ModelSpec (UserError naming the file and the fix)."""
    cfg_path = d / tc.CONFIG_FILE
    cfg: Optional[Dict] = None
    if cfg_path.is_file():
        try:
            cfg = tc.parse_pbtxt(cfg_path.read_text())
        except (ValueError, UnicodeDecodeError) as e:
            raise UserError(f"{cfg_path}: not a readable model config ({e}); rewrite it with "
                            f"`sedeploy triton-repo`") from None
        if cfg.get("name") and cfg["name"] != d.name:
            raise UserError(f"{cfg_path}: name '{cfg['name']}' differs from its folder '{d.name}'; Triton "
                            f"requires them to match")
        platform, backend = cfg.get("platform"), cfg.get("backend")
        python = backend == tc.PYTHON_BACKEND and platform is None   # triton-repo --backend python: the ONNX beside
        if not python and (platform not in (None, tc.PLATFORM) or backend not in (None, tc.BACKEND)):
            raise UserError(f"{cfg_path}: platform {platform!r} / backend {backend!r}; sedeploy serves ONNX "
                            f"models only (platform '{tc.PLATFORM}', backend '{tc.BACKEND}', or backend "
                            f"'{tc.PYTHON_BACKEND}' as `sedeploy triton-repo --backend python` writes it)")
        cfg["name"] = d.name
    filename = (cfg or {}).get("default_model_filename") or tc.MODEL_FILE
    versions = sorted((int(v.name) for v in d.iterdir() if v.is_dir() and v.name.isdigit()
                       and (v / filename).is_file()), reverse=True)
    if not versions:
        raise UserError(f"{d}: no version folder with {filename} (expected {d}/1/{filename}); write one with "
                        f"`sedeploy triton-repo model.onnx --out {d.parent}`")
    v = str(versions[0])
    return ModelSpec(name=d.name, path=d / v / filename, version=v, config=cfg)


def read_repository(repo: Path) -> List[ModelSpec]:
    """Every model folder of a Triton repository, sorted by name."""
    repo = Path(repo)
    if not repo.is_dir():
        raise UserError(f"model repository {repo} is not a directory; write one with "
                        f"`sedeploy triton-repo model.onnx --out {repo}`")
    dirs = sorted(d for d in repo.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not dirs:
        raise UserError(f"model repository {repo} has no model folders; add one with "
                        f"`sedeploy triton-repo model.onnx --out {repo}`")
    return [read_model_dir(d) for d in dirs]


def model_specs(models: Sequence[str], max_batch: int, max_delay_us: int, max_queue: int,
                batching: bool, sets: bool = False) -> List[ModelSpec]:
    """--model PATH or NAME=PATH (repeatable) -> specs; the name defaults to the file name without .onnx.
    sets: PATH may also be an export folder (serve --backend picks a file of it)."""
    specs: List[ModelSpec] = []
    for item in models:
        name, sep, path = item.partition("=")
        p = Path(path if sep else item)
        if not (p.is_file() or (sets and p.is_dir())):
            raise UserError(f"model {p} does not exist; export one with `sedeploy export --ckpt best.pt`")
        if not sep:
            name = tc.default_name(p)
        if not tc.NAME_RE.match(name):
            raise UserError(f"model name {name!r} is not usable in a URL; use letters, digits, _ . - "
                            f"(--model NAME=PATH)")
        if any(s.name == name for s in specs):
            raise UserError(f"two models are named {name!r}; name them apart with --model NAME=PATH")
        specs.append(ModelSpec(name=name, path=p, max_batch=max_batch, max_delay_us=max_delay_us,
                               max_queue=max_queue, batching=batching))
    return specs

