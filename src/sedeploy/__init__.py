"""sedeploy: train, export, verify, explain and measure small SE-attention image classifiers.

The top-level package imports nothing heavy: `sedeploy.runtime` runs on onnxruntime, numpy and
Pillow alone; `sedeploy.models`, `.training` and `.export` need torch.
"""
__version__ = "0.1.0"
