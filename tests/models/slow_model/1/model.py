"""A deliberately slow Python-backend model for the measurement tests: every execution sleeps.

It takes the course's INPUT_IMAGE (so perf_analyzer's sample input file fits), ignores its
content, and answers each request after `seconds` (a config parameter) per execution, however
many requests dynamic batching put into it. Sleeping uses no CPU, so the tests stay cheap.
"""

import json
import time

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        params = json.loads(args["model_config"]).get("parameters", {})
        self.seconds = float(params.get("seconds", {}).get("string_value", "1"))

    def execute(self, requests):
        time.sleep(self.seconds)
        responses = []
        for request in requests:
            count = pb_utils.get_input_tensor_by_name(request, "INPUT_IMAGE").as_numpy().shape[0]
            done = np.ones((count, 1), dtype=np.float32)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("DONE", done)]))
        return responses
