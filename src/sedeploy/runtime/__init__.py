"""The edge runtime: onnxruntime (or the artifact's own runtime) + numpy + Pillow, never torch.

Everything it needs (class names, mean/std, input size, output names) comes from the model file's
own metadata (see sedeploy.core.contract). Parts: runners/ (load an artifact, run a batch, named
outputs), model, preprocess, pipeline, explain, render, precision, options, infer; predictor
composes them.
"""
