"""An aarch64 (linux/arm64) Python with sedeploy's torch-free runtime, run on an x86 host under qemu
user-mode emulation: nothing is executed emulated while it is built.

    root = ensure_sysroot()                         # cached; ArmUnavailable says why it cannot be built
    site = install_sedeploy(tmp)                     # this checkout as a wheel (pure Python)
    proc = run_emulated(root, [site], ["-m", "sedeploy", "infer", ...], home=tmp)

The sysroot is Debian bookworm's python3.11 unpacked by `mmdebstrap --variant=extract` from the
mirror the host's apt sources name (none is written here), plus the stock aarch64 wheels of
onnxruntime and of sedeploy's install_requires, pinned to the versions this host runs, so that the
two sides differ by the CPU alone. Facts it follows (../shared/EDGE.md, issue 15):
- with the manylinux2014 tag alone pip silently picks onnxruntime 1.16: pass the 2_28 and 2_27 tags too;
- qemu < 8.2 passes the host's x86 /proc/cpuinfo through and `import onnxruntime` segfaults in its
  CPU detection; an ARM cpuinfo at SYSROOT/proc/cpuinfo (qemu -L serves it) avoids that.
The cache: $SEDEPLOY_ARM64_SYSROOT, else ~/.cache/sedeploy-arm64/bookworm-py311; a stamp file records
what it holds and a mismatch rebuilds it. Built in a sibling folder and renamed into place.
"""
from __future__ import annotations

import glob
import json
import os
import re
import shutil
import subprocess
import sys
from email.parser import Parser
from importlib import metadata
from pathlib import Path
from typing import Dict, List, Optional, Sequence
from zipfile import ZipFile

SUITE = "bookworm"                 # Debian release whose python3 is 3.11, the wheels' cp311
PYTHON = "usr/bin/python3.11"
QEMU = "qemu-aarch64-static"
CPU = "cortex-a72"                 # Armv8.0-A, no fp16 arithmetic (fp16 results then equal x86's)
WHEEL_TAGS = ["--only-binary=:all:", "--python-version", "3.11", "--implementation", "cp", "--abi", "cp311",
              "--platform", "manylinux_2_28_aarch64", "--platform", "manylinux_2_27_aarch64",
              "--platform", "manylinux2014_aarch64"]
RUNTIME = ["onnxruntime"]          # besides sedeploy's install_requires
OPTIONAL = ["ai-edge-litert"]      # the LiteRT runtime: installed where an aarch64 wheel exists
LAYOUT = 1                         # bump when what a sysroot holds changes
# What an Arm Cortex-A72 reports (implementer 0x41 = Arm, part 0xd08 = Cortex-A72).
CPUINFO = ("processor\t: 0\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\n"
           "CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd08\n"
           "CPU revision\t: 3\n\n")
REPO = Path(__file__).resolve().parents[2]


class ArmUnavailable(RuntimeError):
    """Why the emulated aarch64 runtime cannot be had here (a test skips with this)."""


def cache_dir() -> Path:
    env = os.environ.get("SEDEPLOY_ARM64_SYSROOT")
    return Path(env) if env else Path.home() / ".cache" / "sedeploy-arm64" / f"{SUITE}-py311"


def qemu_version() -> Optional[str]:
    """'7.2.22', or None without qemu-aarch64-static."""
    if not shutil.which(QEMU):
        return None
    out = subprocess.run([QEMU, "--version"], capture_output=True, text=True).stdout
    m = re.search(r"version (\d+(?:\.\d+)+)", out)
    return m.group(1) if m else None


def needs_cpuinfo(version: str) -> bool:
    return tuple(int(p) for p in version.split(".")[:2]) < (8, 2)


# ---------------------------------------------------------------- the mirror, from the host's apt sources
def _deb822(text: str) -> List[Dict[str, str]]:
    stanzas, cur = [], {}
    for line in text.splitlines() + [""]:
        if line.startswith("#"):
            continue
        if not line.strip():
            if cur:
                stanzas.append(cur)
            cur = {}
        elif ":" in line and not line[0].isspace():
            k, v = line.split(":", 1)
            cur[k.strip().lower()] = v.strip()
    return stanzas


def _one_line(text: str) -> List[Dict[str, str]]:
    entries = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        m = re.match(r"deb\s+(?:\[(?P<opts>[^\]]*)\]\s+)?(?P<uri>\S+)\s+(?P<suite>\S+)\s*(?P<comps>.*)", line)
        if not m:
            continue
        opts = dict(o.split("=", 1) for o in (m["opts"] or "").split() if "=" in o)
        entries.append({"types": "deb", "uris": m["uri"], "suites": m["suite"], "components": m["comps"],
                        "architectures": opts.get("arch", ""), "signed-by": opts.get("signed-by", "")})
    return entries


def mirror_lines(suite: str = SUITE, etc: Path = Path("/etc/apt")) -> List[str]:
    """mmdebstrap's one-line sources for `suite` and its -updates/-security, from the host's apt sources
    (both formats); entries limited to other architectures are left out."""
    entries = []
    for f in [etc / "sources.list", *sorted(glob.glob(str(etc / "sources.list.d" / "*")))]:
        f = Path(f)
        if f.suffix == ".sources":
            entries += _deb822(f.read_text(errors="replace"))
        elif f.suffix == ".list" or f.name == "sources.list":
            entries += _one_line(f.read_text(errors="replace")) if f.exists() else []
    lines = []
    for e in entries:
        archs = e.get("architectures", "").replace(",", " ").split()
        if "deb" not in e.get("types", "").split() or (archs and "arm64" not in archs):
            continue
        signed = e.get("signed-by", "")
        opts = f"[signed-by={signed}] " if signed and not signed.startswith("-") and "\n" not in signed else ""
        for uri in e.get("uris", "").split():
            for s in e.get("suites", "").split():
                if s == suite or s.startswith(suite + "-"):
                    lines.append(f"deb {opts}{uri} {s} {e.get('components', 'main')}")
    return lines


# ---------------------------------------------------------------- the wheels
def _pip(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    return subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True, env=env)


def build_wheel(out: Path) -> Path:
    """This checkout as a wheel, built from a copy (the checkout gets no build/ or egg-info)."""
    src = out / "src-copy"
    shutil.copytree(REPO / "src", src / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for f in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(REPO / f, src / f)
    r = _pip("wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out / "dist"), str(src))
    wheels = sorted((out / "dist").glob("sedeploy-*.whl"))
    if r.returncode or not wheels:
        raise ArmUnavailable(f"pip wheel of this checkout failed: {r.stderr.strip()[-300:]}")
    return wheels[0]


def base_requirements(wheel: Path) -> List[str]:
    """The wheel's unconditional Requires-Dist names (its install_requires: click, numpy, Pillow)."""
    with ZipFile(wheel) as z:
        name = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        meta = Parser().parsestr(z.read(name).decode())
    reqs = [r for r in meta.get_all("Requires-Dist") or [] if ";" not in r]
    return [re.split(r"[\s<>=!~\[(]", r, maxsplit=1)[0] for r in reqs]


def host_pins(names: Sequence[str]) -> Dict[str, str]:
    """name -> the version installed on this host ('' where it is not installed: pip then takes the newest)."""
    pins = {}
    for n in names:
        try:
            pins[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            pins[n] = ""
    return pins


def _spec(pins: Dict[str, str]) -> List[str]:
    return [f"{n}=={v}" if v else n for n, v in pins.items()]


# ---------------------------------------------------------------- the sysroot
def wanted(wheel: Path) -> dict:
    """What a valid sysroot holds; compared with its stamp."""
    return {"layout": LAYOUT, "suite": SUITE, "pins": host_pins(base_requirements(wheel) + RUNTIME),
            "optional": host_pins(OPTIONAL)}


def _stamp(root: Path) -> Optional[dict]:
    try:
        return json.loads((root / ".sedeploy-arm64.json").read_text())
    except (OSError, ValueError):
        return None


def build_sysroot(root: Path, want: dict, log=print) -> dict:
    """Debian's python3.11 for arm64 + the pinned aarch64 wheels in root/opt/py; returns the stamp."""
    if not shutil.which("mmdebstrap"):
        raise ArmUnavailable("mmdebstrap is not installed (`make arm64` installs it)")
    version = qemu_version()
    if version is None:
        raise ArmUnavailable(f"{QEMU} is not installed (`make arm64` installs qemu-user-static)")
    mirrors = mirror_lines()
    if not mirrors:
        raise ArmUnavailable(f"the host's apt sources name no Debian {SUITE} mirror to unpack an arm64 Python from")
    tmp = root.with_name(root.name + f".building-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    try:
        log(f"arm64: unpacking {SUITE} python3.11 into {tmp}")
        r = subprocess.run(["mmdebstrap", "--quiet", "--variant=extract", "--architectures=arm64",
                            "--include=python3.11,libstdc++6", SUITE, str(tmp), *mirrors],
                           capture_output=True, text=True)
        if r.returncode or not (tmp / PYTHON).exists():
            raise ArmUnavailable(f"mmdebstrap could not build the arm64 sysroot (no network?): "
                                 f"{r.stderr.strip()[-300:]}")
        if needs_cpuinfo(version):
            (tmp / "proc").mkdir(exist_ok=True)
            (tmp / "proc" / "cpuinfo").write_text(CPUINFO)
        log("arm64: installing the aarch64 wheels " + " ".join(_spec(want["pins"])))
        r = _pip("install", "-q", "--target", str(tmp / "opt" / "py"), *WHEEL_TAGS, *_spec(want["pins"]))
        if r.returncode:
            raise ArmUnavailable(f"pip could not install the aarch64 wheels: {r.stderr.strip()[-300:]}")
        optional = {}
        for name, v in want["optional"].items():
            r = _pip("install", "-q", "--target", str(tmp / "opt" / "py"), *WHEEL_TAGS, *_spec({name: v}))
            optional[name] = "installed" if r.returncode == 0 else "no aarch64 wheel"
        # the emulated interpreter would compile every module it imports on the first run, slowly
        subprocess.run([sys.executable, "-m", "compileall", "-q", "-j0", str(tmp / "usr" / "lib" / "python3.11"),
                        str(tmp / "opt" / "py")], capture_output=True)
        stamp = {**want, "qemu": version, "optional_status": optional}
        (tmp / ".sedeploy-arm64.json").write_text(json.dumps(stamp, indent=1))
        shutil.rmtree(root, ignore_errors=True)
        tmp.rename(root)
        return stamp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def ensure_sysroot(wheel: Path, root: Optional[Path] = None, log=print) -> Path:
    """The cached sysroot when its stamp matches what is wanted now, else a fresh one."""
    version = qemu_version()
    if version is None:
        raise ArmUnavailable(f"{QEMU} is not installed (`make arm64` installs qemu-user-static)")
    root = root or cache_dir()
    want = wanted(wheel)
    stamp = _stamp(root)
    if not (stamp and {k: stamp.get(k) for k in want} == want and (root / PYTHON).exists()):
        build_sysroot(root, want, log)
    elif needs_cpuinfo(version) and not (root / "proc" / "cpuinfo").exists():   # built under a newer qemu
        (root / "proc").mkdir(exist_ok=True)
        (root / "proc" / "cpuinfo").write_text(CPUINFO)
    return root


def install_sedeploy(wheel: Path, target: Path) -> Path:
    """sedeploy alone (its dependencies are in the sysroot) into `target`; returns it."""
    r = _pip("install", "-q", "--no-deps", "--target", str(target), str(wheel))
    if r.returncode:
        raise ArmUnavailable(f"pip could not install {wheel.name}: {r.stderr.strip()[-300:]}")
    return target


def run_emulated(root: Path, paths: Sequence[Path], args: Sequence[str], home: Path,
                 timeout: float = 300) -> subprocess.CompletedProcess:
    """root's python3.11 under qemu (cpu: CPU) with `paths` + root/opt/py on PYTHONPATH and HOME=home."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "LANG": "C.UTF-8",
           "PYTHONPATH": os.pathsep.join([*map(str, paths), str(root / "opt" / "py")])}
    return subprocess.run([QEMU, "-L", str(root), "-cpu", CPU, str(root / PYTHON), *args],
                          capture_output=True, text=True, env=env, timeout=timeout)


def run_native(paths: Sequence[Path], args: Sequence[str], home: Path,
               timeout: float = 300) -> subprocess.CompletedProcess:
    """The host's Python with `paths` first on PYTHONPATH (the same sedeploy wheel) and HOME=home."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEDEPLOY_")}
    env.update(HOME=str(home), PYTHONPATH=os.pathsep.join(map(str, paths)))
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=timeout)
