"""The one version-dict builder: what produced a checkpoint, an export or a bench table.

Reads installed distributions through importlib.metadata, so it imports none of them (no torch on
the runtime side) and reports the same spelling everywhere.
"""
from __future__ import annotations

import importlib.util
import platform
import sys
from importlib import metadata
from typing import Dict, Optional

from .. import __version__


# One import name, several distributions: onnxruntime ships as onnxruntime, onnxruntime-gpu, ...
ALIASES = {"onnxruntime": ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino", "onnxruntime-directml")}


def versions(*packages: str) -> Dict[str, str]:
    """{"sedeploy": ..., "python": ..., <package>: <version> for each installed one (others omitted)}."""
    out = {"sedeploy": __version__, "python": platform.python_version()}
    for name in packages:
        v = _version(name)
        if v is not None:
            out[name] = v
    return out


def _version(name: str) -> Optional[str]:
    for dist in ALIASES.get(name, (name,)):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    mod = sys.modules.get(name)                 # imported from elsewhere (a source build, a vendored copy)
    if mod is None or not getattr(mod, "__version__", None):
        return None
    return str(mod.__version__)


def installed(package: str) -> bool:
    """Whether an import name is installed, found without importing it (torch takes seconds to import;
    openvino must be imported with its telemetry off)."""
    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):
        return False
