"""The serve app in-process (starlette's TestClient), ready: one model named fm, batch 4, 1 MiB bodies."""
from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def app_client(model: Path, max_batch: int = 4, max_body: int = 1 << 20, **app_options) -> Iterator:
    """A TestClient on create_app([fm]) once /v2/health/ready says 200 (bounded wait); `c.app_state` is the
    server state, `c.model` the served model."""
    import starlette.testclient as stc
    from sedeploy.serve.app import create_app
    from sedeploy.serve.model import ModelSpec, ServedModel
    m = ServedModel(ModelSpec("fm", model, max_batch=max_batch), "cpu")
    app = create_app([m], max_body=max_body, **app_options)
    with stc.TestClient(app, raise_server_exceptions=False) as c:
        for _ in range(200):
            if c.get("/v2/health/ready").status_code == 200:
                break
            time.sleep(0.05)
        c.app_state, c.model = app.state.serve, m
        yield c
