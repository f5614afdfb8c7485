"""Export the classifier to ONNX (dynamic batch axis) and check it against PyTorch.

The config of Triton's own onnxruntime backend for the export is built in
`tritonlab.serving.configs.onnxruntime_backend_config`.
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
