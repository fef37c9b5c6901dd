"""The edge runtime: onnxruntime + numpy + Pillow, never torch.

Everything it needs (class names, mean/std, input size, output names) comes from the ONNX
file's own metadata (see sedeploy.core.contract).
"""
