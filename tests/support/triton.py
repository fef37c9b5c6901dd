"""The real Triton Inference Server for tests, from the PyPI wheel `nvidia-pytriton` (tritonserver 2.51 with
its Python backend; EDGE.md): a virtual environment of its own under ~/.cache/sedeploy-triton (numpy < 2, which
the backend stub needs, and onnxruntime, which sedeploy's model.py uses), built once; a private backend
directory linking the wheel's Python backend and the stub for this Python; the server on 127.0.0.1 only
(no gRPC, no metrics port), a unique shared-memory prefix, a bounded wait for readiness, always killed.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import List, Optional

HOME = Path.home() / ".cache" / "sedeploy-triton"
VENV = HOME / "venv"
REQUIREMENTS = ["nvidia-pytriton==0.7.0", "numpy<2", "onnxruntime"]
PY = f"{sys.version_info.major}.{sys.version_info.minor}"


def triton_root() -> Path:
    return VENV / "lib" / f"python{PY}" / "site-packages" / "pytriton" / "tritonserver"


def ensure_venv() -> Optional[str]:
    """None when the server can run here, else why not (the test skips with it)."""
    if not (triton_root() / "bin" / "tritonserver").is_file():
        HOME.mkdir(parents=True, exist_ok=True)
        try:
            subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True, capture_output=True,
                           timeout=120)
            r = subprocess.run([str(VENV / "bin" / "pip"), "install", "-qq", *REQUIREMENTS], capture_output=True,
                               text=True, timeout=900)
        except (subprocess.SubprocessError, OSError) as e:
            return f"the Triton environment could not be made: {e}"
        if r.returncode != 0:
            return f"nvidia-pytriton could not be installed: {r.stderr.strip()[-300:]}"
    stub = triton_root() / "python_backend_stubs" / PY / "triton_python_backend_stub"
    if not stub.is_file():
        return f"the wheel has no Python backend stub for Python {PY}"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Triton:
    """tritonserver on REPO; `url` host:port for tritonclient; `log()` its output."""

    def __init__(self, repo: Path, wait_ready: bool = True, timeout: float = 60, threads: int = 1) -> None:
        self.repo, self.wait_ready, self.timeout, self.threads = Path(repo), wait_ready, timeout, threads
        self.tmp = Path(tempfile.mkdtemp(prefix="sedeploy-triton-"))
        self.port = free_port()
        self.url = f"127.0.0.1:{self.port}"
        self.proc: Optional[subprocess.Popen] = None

    def __enter__(self) -> "Triton":
        root = triton_root()
        backend = self.tmp / "backends" / "python"
        backend.mkdir(parents=True)
        for f in (root / "backends" / "python" / "libtriton_python.so",
                  root / "backends" / "python" / "triton_python_backend_utils.py",
                  root / "python_backend_stubs" / PY / "triton_python_backend_stub"):
            os.symlink(f, backend / f.name)
        env = dict(os.environ, PATH=f"{VENV / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
                   LD_LIBRARY_PATH=sysconfig.get_config_var("LIBDIR") or "", SEDEPLOY_TRITON_THREADS=str(self.threads))
        env.pop("PYTHONPATH", None)
        args: List[str] = [str(root / "bin" / "tritonserver"), "--model-repository", str(self.repo),
                           "--backend-directory", str(self.tmp / "backends"), "--http-address", "127.0.0.1",
                           "--http-port", str(self.port), "--allow-grpc=false", "--allow-metrics=false",
                           f"--backend-config=python,shm-region-prefix-name=sedeploy{self.port}",
                           "--disable-auto-complete-config", "--exit-on-error=false"]
        self.logfile = open(self.tmp / "triton.log", "w")
        self.proc = subprocess.Popen(args, stdout=self.logfile, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                log = self.log()[-2000:]
                self.__exit__()
                raise RuntimeError("tritonserver exited:\n" + log)
            try:
                path = "/v2/health/ready" if self.wait_ready else "/v2/health/live"
                with urllib.request.urlopen(f"http://{self.url}{path}", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.2)
        self.__exit__()
        raise RuntimeError("tritonserver did not become ready:\n" + self.log()[-2000:])

    def log(self) -> str:
        return (self.tmp / "triton.log").read_text(errors="replace")

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.logfile.close()
        shutil.rmtree(self.tmp, ignore_errors=True)
