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
        # a slow load: `load_seconds` of sleep, with a line in Triton's log each second when
        # `load_talks` is "1" (as a model does that reports its progress), else in silence
        talks = params.get("load_talks", {}).get("string_value", "0") == "1"
        for second in range(int(params.get("load_seconds", {}).get("string_value", "0"))):
            time.sleep(1)
            if talks:
                print(f"[slow_model] loading: {second + 1} s", flush=True)

    def execute(self, requests):
        time.sleep(self.seconds)
        responses = []
        for request in requests:
            count = pb_utils.get_input_tensor_by_name(request, "INPUT_IMAGE").as_numpy().shape[0]
            done = np.ones((count, 1), dtype=np.float32)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("DONE", done)]))
        return responses
