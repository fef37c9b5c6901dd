"""Export: TorchScript and simplified ONNX with SE weights as outputs, verified against PyTorch."""
