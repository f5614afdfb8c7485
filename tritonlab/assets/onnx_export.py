"""Export the classifier to ONNX (dynamic batch axis) and check it against PyTorch; its FP16
conversion and the tensor input file for Triton's own onnxruntime backend (GPU node).

That backend's config is built in `tritonlab.serving.configs.onnxruntime_backend_config`, and
its model folder written and checked in `tritonlab.serving.onnx_backend`.
"""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..common import atomic_write
from .repository import decoding, model_dir, network

#: The file Triton's onnxruntime backend loads from a version folder (its default_model_filename).
BACKEND_MODEL_FILE = "model.onnx"


def export_onnx(folder: Path | None = None, opset: int = 17) -> Path:
    """Write `food11.onnx` beside the weights it is made from (one file, batch axis dynamic).

    The TorchScript exporter (`dynamo=False`) writes a single file with the weights inside; the
    newer dynamo exporter would write them to a separate .onnx.data file and needs onnxscript.
    """
    mod = network()
    folder = Path(folder or model_dir("food_classifier"))
    state, meta = mod.load_weights(str(folder))
    net = mod.build_network()
    net.load_state_dict(state)
    net.eval()
    crop = decoding().CROP
    dummy = torch.zeros(1, 3, crop, crop)
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # the TorchScript exporter is deprecated, chosen on purpose
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(net, dummy, buffer, dynamo=False, opset_version=opset,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    path = atomic_write(folder / mod.ONNX_FILE, buffer.getvalue())
    info = {"sha256": mod.sha256_of(str(path)), "weights_sha256": meta["sha256"],
            "stand_in": meta.get("stand_in", False), "opset": opset, "torch": torch.__version__}
    atomic_write(folder / mod.ONNX_META, json.dumps(info, indent=2) + "\n")
    return path


def compare(images: list[Path], folder: Path | None = None) -> pd.DataFrame:
    """PyTorch and ONNX Runtime on the same images: labels, probabilities and their difference."""
    mod = network()
    folder = str(folder or model_dir("food_classifier"))
    batch = np.stack([decoding().decode_image(Path(p).read_bytes()) for p in images])
    torch_idx, torch_prob = mod.Food11Classifier(folder, runtime="torch").predict(batch)
    ort_idx, ort_prob = mod.Food11Classifier(folder, runtime="onnxruntime").predict(batch)
    return pd.DataFrame({
        "image": [Path(p).name for p in images],
        "PyTorch label": [mod.LABELS[i] for i in torch_idx],
        "ONNX Runtime label": [mod.LABELS[i] for i in ort_idx],
        "PyTorch probability": torch_prob,
        "ONNX Runtime probability": ort_prob,
        "abs difference": np.abs(torch_prob - ort_prob),
    })


def to_fp16(source: Path, target: Path) -> Path:
    """Write `source` with FP16 weights and arithmetic to `target`, FP32 inputs and outputs kept
    (`keep_io_types`), so the same config.pbtxt and clients serve it. Converted by ONNX Runtime's
    own converter (`onnxruntime.transformers.float16`)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(source)), keep_io_types=True)
    return atomic_write(Path(target), model.SerializeToString())


def write_tensor_inputs(images: list[Path], path: Path | None = None) -> Path:
    """perf_analyzer's input file for the onnxruntime backend's model: each image decoded and
    normalised exactly as `model.py` does, sent as the FP32 tensor `input` (3, 224, 224), its
    bytes in `b64` (perf_analyzer sends them as they are). About 0.6 MB per image, against a
    few kB of JPEG: that backend receives pixels, not files."""
    import base64

    from .. import settings

    mod, dec = network(), decoding()
    batch = mod.normalise(np.stack([dec.decode_image(Path(p).read_bytes()) for p in images]))
    data = [{"input": {"content": {"b64": base64.b64encode(x.astype("<f4").tobytes()).decode()},
                       "shape": list(x.shape)}} for x in batch]
    path = Path(path or settings.PERF_INPUTS / "food_classifier_tensor.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, json.dumps({"data": data}))
