"""`sedeploy serve`: exported models behind the Open Inference Protocol (KServe v2 REST, as Triton speaks it).

protocol.py   request/response bodies, binary tensor extension      (plain functions)
batcher.py    Triton-style dynamic batching, bounded queue            (plain asyncio)
model.py      one served model: Predictor + batcher + metadata/config views
repository.py Triton model repository layout -> what to serve
app.py        the starlette app: routes, errors, lifespan;  images.py  the image endpoint;  static/ the page
server.py     uvicorn on a bound socket, graceful drain on SIGTERM / Ctrl-C
Like the runtime it ships to edge devices: starlette, uvicorn, onnxruntime, numpy, Pillow; never torch.
"""
