"""Run the app under uvicorn on a socket bound up front; drain gracefully on SIGTERM / Ctrl-C.

The socket is bound before anything loads, so a port in use is a one-line error and `--port 0`
can print the port it got. Models load in the background (readiness 503 meanwhile); a model that
fails to load stops the server with exit status 2, as Triton's --exit-on-error does. On SIGTERM or
the first Ctrl-C the server reports not-ready, stops accepting, answers every request it has taken
(uvicorn waits for open connections, then the batchers drain their queues) and returns 0 instead of
re-raising the signal as uvicorn otherwise does; a second Ctrl-C forces the exit.

The signals are ours, through uvicorn's public API only: uvicorn runs in a worker thread, where no
version of it installs signal handlers, and the main thread's handlers set `should_exit` /
`force_exit` (the attributes uvicorn documents for stopping a server from code).
"""
from __future__ import annotations

import errno
import signal
import socket
import threading
from typing import Callable, List, Optional

import uvicorn

from ..core.errors import UserError
from .app import create_app
from .model import ServedModel
from .state import ServerState

GRACE_S = 30  # longest wait for in-flight requests after SIGTERM (Kubernetes' default grace period)


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (IPv4 or IPv6), or a UserError naming the fix."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise UserError(f"--host {host!r} does not resolve ({e.strerror}); use an address such as 127.0.0.1") from None
    family, kind, proto, _, addr = infos[0]
    # proto must be IPPROTO_TCP (not 0): asyncio sets TCP_NODELAY only on such sockets, and without it
    # Nagle + delayed ACKs add ~40 ms to every request/response exchange
    sock = socket.socket(family, kind, proto or socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise UserError(f"port {port} on {host} is in use; choose another with --port (0: any free port)") from None
        raise UserError(f"cannot listen on {host}:{port} ({e.strerror}); choose another --host/--port") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, state: ServerState) -> None:
        super().__init__(config)
        self.state = state

    def request_exit(self, sig: int) -> None:
        """SIGTERM / Ctrl-C: readiness goes false before the listener closes, then a graceful stop; a
        second Ctrl-C forces it."""
        self.state.draining = True
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True
        self.should_exit = True


def run_server(server: _Server, sock: socket.socket) -> None:
    """server.run in a worker thread while this (main) thread takes SIGTERM and SIGINT; the process
    then ends normally (status 0) after the drain instead of dying by the signal."""
    errors: List[BaseException] = []

    def target() -> None:
        try:
            server.run(sockets=[sock])
        except BaseException as e:  # noqa: BLE001 - re-raised in the calling thread
            errors.append(e)
    worker = threading.Thread(target=target, name="uvicorn")
    main = threading.current_thread() is threading.main_thread()
    old = {s: signal.signal(s, lambda n, f: server.request_exit(n)) for s in (signal.SIGTERM, signal.SIGINT)} \
        if main else {}
    try:
        worker.start()
        while worker.is_alive():
            worker.join(0.2)
    except KeyboardInterrupt:          # a Ctrl-C between the handlers' install and the loop: the same as one
        server.request_exit(signal.SIGINT)
        worker.join()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    if errors:
        raise errors[0]


def serve(models: List[ServedModel], host: str, port: int, max_body: int, say: Callable[[str], None],
          access_log: bool = False, web_runtime: Optional[str] = None, max_inflight: int = 0,
          max_decodes: int = 0) -> int:
    """Serve until SIGTERM / Ctrl-C; returns the exit status (0, or 2 when a model failed to load)."""
    sock = bind(host, port)
    bound = sock.getsockname()[1]
    app = create_app(models, max_body, web_runtime, max_inflight, max_decodes)
    st: ServerState = app.state.serve
    config = uvicorn.Config(app, log_level="warning", access_log=access_log, lifespan="on",
                            timeout_graceful_shutdown=GRACE_S, timeout_keep_alive=30)
    server = _Server(config, st)
    status = {"code": 0}
    url = f"http://{'[' + host + ']' if ':' in host else host}:{bound}"

    def failed(message: str) -> None:
        say(f"error: {message}")
        status["code"] = 2
        server.should_exit = True

    def ready() -> None:
        names = ", ".join(f"{m.name} (v{m.version}, max batch {m.max_batch_size}, "
                          f"{'dynamic batching' if m.batcher and m.batcher.batching else 'no batching'})"
                          for m in models)
        say(f"ready: {url}  models: {names}")
        for m in models:
            choice, backend = getattr(m.predictor, "choice", None), getattr(m.predictor, "backend", None)
            if backend is not None:
                say(f"  {m.name}: backend {backend.kind} ({backend.precision}; {backend.reason}), file {backend.path}")
            elif choice is not None:
                say(f"  {m.name}: {choice.precision} ({choice.reason})")
        say(f"  page {url}/   protocol {url}/v2/models/<name>/infer   Ctrl-C or SIGTERM drains and stops")

    st.on_load_error, st.on_ready = failed, ready
    say(f"listening on {url}; loading {len(models)} model(s)")
    try:
        run_server(server, sock)
    finally:
        sock.close()
    if status["code"] == 0:
        say("stopped: every accepted request was answered")
    return status["code"]
