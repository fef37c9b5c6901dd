"""The one version-dict builder: what produced a checkpoint, an export or a bench table.

Reads installed distributions through importlib.metadata, so it imports none of them (no torch on
the runtime side) and reports the same spelling everywhere.
"""
from __future__ import annotations

import platform
from importlib import metadata
from typing import Dict

from . import __version__


def versions(*packages: str) -> Dict[str, str]:
    """{"sedeploy": ..., "python": ..., <package>: <version> for each installed one (others omitted)}."""
    out = {"sedeploy": __version__, "python": platform.python_version()}
    for name in packages:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out
