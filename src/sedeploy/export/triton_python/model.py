"""sedeploy's model for Triton's Python backend (written by `sedeploy triton-repo --backend python`).

Runs <version>/model.onnx with onnxruntime on the CPU (fp32: the execution provider's default
precision, no graph rewrites that change it) and batches the requests Triton hands to one execute()
call into one session run: the inputs are concatenated on the batch axis, the outputs split back per
request, and each request gets only the outputs it asked for (all when it named none). It needs
numpy < 2 and onnxruntime in the Python environment of Triton's Python backend stub.
Not imported by sedeploy itself: Triton loads it.
"""
import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(os.environ.get("SEDEPLOY_TRITON_THREADS", "0"))
        self.session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        self.input = config["input"][0]["name"]
        self.names = [o.name for o in self.session.get_outputs()]
        self.types = {o["name"]: pb_utils.triton_string_to_numpy(o["data_type"]) for o in config["output"]}

    def execute(self, requests):
        xs = [pb_utils.get_input_tensor_by_name(r, self.input).as_numpy() for r in requests]
        outs = self.session.run(None, {self.input: np.concatenate(xs) if len(xs) > 1 else xs[0]})
        responses, start = [], 0
        for r, x in zip(requests, xs):
            n = len(x)
            wanted = set(r.requested_output_names() or self.names)
            tensors = [pb_utils.Tensor(k, np.ascontiguousarray(v[start:start + n], dtype=self.types.get(k, v.dtype)))
                       for k, v in zip(self.names, outs) if k in wanted]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            start += n
        return responses
