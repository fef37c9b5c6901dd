"""Start `sedeploy serve` as a child process and wait until it is ready (tests, load and fault scripts).

    with ServerProcess(["--model", "fm=model.onnx"]) as srv:
        tritonclient.http.InferenceServerClient(srv.address) ...
    srv.returncode   # 0 after a graceful stop

The child listens on --port 0 and prints the port it got in its `ready: http://host:port` line, so
concurrent runs never race for a port. `block_torch` starts it with torch made unimportable: proof
that the serving path needs none.
"""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import List, Optional, Sequence

READY = re.compile(r"^ready: (http://\S+)")


class ServerProcess:
    def __init__(self, args: Sequence[str], timeout: float = 60.0, block_torch: bool = True,
                 env: Optional[dict] = None) -> None:
        self.args, self.timeout, self.block_torch = list(args), timeout, block_torch
        self.env = env
        self.proc: Optional[subprocess.Popen] = None
        self.url = ""
        self.lines: List[str] = []          # everything the server printed (stderr)
        self._ready = threading.Event()
        self._reader: Optional[threading.Thread] = None

    @property
    def address(self) -> str:
        """host:port, as tritonclient takes it."""
        return self.url.split("://", 1)[1]

    def start(self) -> "ServerProcess":
        prelude = "import sys; sys.modules['torch'] = None; sys.modules['torchvision'] = None\n" if self.block_torch else ""
        code = prelude + "from sedeploy.cli import main; main(sys.argv[1:])"
        args = self.args if "--port" in self.args else [*self.args, "--port", "0"]
        env = dict(os.environ if self.env is None else self.env)
        env["PYTHONUNBUFFERED"] = "1"
        # the child imports this very sedeploy (a checkout's src/, not another install)
        src = str(Path(__file__).resolve().parents[2] / "src")
        env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
        self.proc = subprocess.Popen([sys.executable, "-c", code, "serve", *args], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True, env=env)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + self.timeout
        while not self._ready.wait(0.05):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop(kill=True)
                raise RuntimeError("sedeploy serve did not become ready:\n" + "\n".join(self.lines[-20:]))
        return self

    def _read(self) -> None:
        for line in self.proc.stderr:
            line = line.rstrip("\n")
            self.lines.append(line)
            m = READY.match(line)
            if m:
                self.url = m.group(1)
                self._ready.set()

    def terminate(self) -> None:
        """SIGTERM: the graceful drain."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def stop(self, kill: bool = False, timeout: float = 30.0) -> Optional[int]:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(5)        # every line the server printed is in self.lines
        return self.proc.returncode

    @property
    def returncode(self) -> Optional[int]:
        return None if self.proc is None else self.proc.poll()

    def __enter__(self) -> "ServerProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def post_bytes(path: str, body: bytes, headers: Sequence[str] = ()) -> bytes:
    """A complete HTTP/1.1 POST as bytes (Connection: close), for raw-socket fault tests."""
    head = "".join(f"{h}\r\n" for h in headers)
    return (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\nConnection: close\r\n{head}\r\n"
            ).encode() + body


def read_reply(sock: socket.socket) -> bytes:
    """Everything the server sends on `sock` until it closes the connection or the declared body is in."""
    out = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return out
        out += chunk
        head, sep, rest = out.partition(b"\r\n\r\n")
        if sep:
            n = [int(ln.split(b":")[1]) for ln in head.split(b"\r\n") if ln.lower().startswith(b"content-length")]
            if n and len(rest) >= n[0]:
                return out


def exchange(address: str, data: bytes, read: bool = True, timeout: float = 10.0) -> bytes:
    """Send raw bytes to host:port; return the reply (b"" when read is False: the client just leaves)."""
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.sendall(data)
        return read_reply(s) if read else b""


def reply_status(reply: bytes) -> int:
    parts = reply.split(b" ", 2)
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0


def reply_json(reply: bytes):
    import json
    return json.loads(reply.partition(b"\r\n\r\n")[2])


def infer_body(x, outputs: Sequence[str] = (), binary_outputs: bool = True, input_name: str = "input"):
    """-> (body, JSON header length) of a binary-tensor infer request for one FP32 input, as tritonclient
    builds it: the JSON header, then the tensor's raw bytes; `outputs` named (all when empty)."""
    import json
    req = {"inputs": [{"name": input_name, "shape": list(x.shape), "datatype": "FP32",
                       "parameters": {"binary_data_size": x.nbytes}}]}
    if outputs:
        req["outputs"] = [{"name": o, "parameters": {"binary_data": binary_outputs}} for o in outputs]
    else:
        req["parameters"] = {"binary_data_output": binary_outputs}
    head = json.dumps(req).encode()
    return head + x.astype("<f4").tobytes(), len(head)


def infer_request(model: str, x, outputs: Sequence[str] = (), binary_outputs: bool = True) -> bytes:
    """A whole raw HTTP request carrying infer_body(...) for `model`."""
    body, n = infer_body(x, outputs, binary_outputs)
    return post_bytes(f"/v2/models/{model}/infer", body, [f"Inference-Header-Content-Length: {n}"])
