"""The torch-free core every side shares, a leaf: it imports nothing of sedeploy above it, and never
torch, torchvision or onnx (tests/test_layers.py runs the import contracts in setup.cfg).

- contract: the graph contract (input/output names, shapes, metadata keys) export and runtime agree on
- errors: UserError and the exit codes; io: atomic, umask-respecting writes, writable folders, sha256
- decode: image decoding (EXIF, modes, transparency, resize) for the runtime, the server and folders
- datasets: dataset descriptions and the built-in readers; folder: your own images (index, split, cache)
- tritonconfig: the Triton model configuration (pbtxt write/parse); parity: the one parity helper
- timing: warm-up, percentiles, interleaved rounds; hardware: CPU name, ISA features, fp32 peak
- versions: the one version-dict builder
"""
