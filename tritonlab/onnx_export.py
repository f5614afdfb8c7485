"""Export the classifier to ONNX (dynamic batch axis), check it against PyTorch, configure it."""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tritonclient.grpc import model_config_pb2 as mc

from . import configs
from .models import classifier_module, model_dir


def export_onnx(folder: Path | None = None, opset: int = 17) -> Path:
    """Write `food11.onnx` beside the weights it is made from (one file, batch axis dynamic).

    The TorchScript exporter (`dynamo=False`) writes a single file with the weights inside; the
    newer dynamo exporter would write them to a separate .onnx.data file and needs onnxscript.
    """
    mod = classifier_module()
    folder = Path(folder or model_dir("food_classifier"))
    state, meta = mod.load_weights(str(folder))
    net = mod.build_network()
    net.load_state_dict(state)
    net.eval()
    dummy = torch.zeros(1, 3, mod.CROP, mod.CROP)
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".onnx.tmp")
    os.close(fd)
    with warnings.catch_warnings():  # the TorchScript exporter is deprecated, chosen on purpose
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(net, dummy, tmp, dynamo=False, opset_version=opset,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    os.chmod(tmp, 0o644)
    path = folder / mod.ONNX_FILE
    os.replace(tmp, path)
    info = {"sha256": mod.sha256_of(str(path)), "weights_sha256": meta["sha256"],
            "stand_in": meta.get("stand_in", False), "opset": opset, "torch": torch.__version__}
    (folder / mod.ONNX_META).write_text(json.dumps(info, indent=2) + "\n")
    return path


def compare(images: list[Path], folder: Path | None = None) -> pd.DataFrame:
    """PyTorch and ONNX Runtime on the same images: labels, probabilities and their difference."""
    mod = classifier_module()
    folder = str(folder or model_dir("food_classifier"))
    batch = np.stack([mod.decode_image(Path(p).read_bytes()) for p in images])
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


def onnxruntime_backend_config(name: str = "food_classifier_onnx", max_batch_size: int = 16,
                               instance_groups: list[dict] | None = None,
                               tensorrt: bool = False, fp16: bool = False,
                               dynamic_batching: dict | None = None) -> mc.ModelConfig:
    """The config for Triton's own onnxruntime backend (GPU node): preprocessed tensors in.

    This backend takes the network's float input (N, 3, 224, 224) and returns logits; with
    `tensorrt` ONNX Runtime hands the graph to TensorRT (FP16 with `fp16`).
    """
    cfg = mc.ModelConfig(name=name, platform="onnxruntime_onnx", max_batch_size=max_batch_size)
    cfg.input.add(name="input", data_type=mc.TYPE_FP32, dims=[3, 224, 224])
    cfg.output.add(name="logits", data_type=mc.TYPE_FP32, dims=[11])
    configs.add_instance_groups(cfg, instance_groups or [{"count": 1, "kind": "KIND_GPU"}])
    configs.set_dynamic_batching(cfg, dynamic_batching)
    if tensorrt:
        accel = cfg.optimization.execution_accelerators.gpu_execution_accelerator.add(
            name="tensorrt")
        accel.parameters["precision_mode"] = "FP16" if fp16 else "FP32"
        accel.parameters["max_workspace_size_bytes"] = str(1 << 30)
    return cfg
