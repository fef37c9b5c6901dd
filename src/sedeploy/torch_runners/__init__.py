"""Runners whose runtime needs torch, kept out of what ships to a device.

`sedeploy.runtime` (with core and serve) runs on onnxruntime, numpy and Pillow, and on runtimes that
bring no torch (NCNN, OpenVINO, LiteRT); import-linter forbids torch there without exception. A runtime
whose Python binding is built on libtorch (ExecuTorch: executorch.runtime imports torch and takes torch
tensors) has its runner here, above the runtime: it implements runtime.runners.Runner and is found by
the runner registry by its full module name, imported only when such a file is loaded.
"""
