"""The model folder Triton's own onnxruntime backend loads on the GPU node: `config.pbtxt`
beside `1/model.onnx` (the classifier's ONNX export, in FP32 or FP16), written and checked
against each other. The embedded Triton has no onnxruntime backend, so here the folder is
written and checked, and the tests serve it through a Python-backend twin of that backend.
"""

from __future__ import annotations

from pathlib import Path

from tritonclient.grpc import model_config_pb2 as mc

from ..assets import onnx_export
from ..assets.onnx_export import BACKEND_MODEL_FILE
from ..assets.repository import model_dir, network
from ..common import atomic_write
from . import configs


def write_backend_model(cfg, repository: Path | None = None, fp16: bool = False,
                        source: Path | None = None) -> Path:
    """The model folder Triton's onnxruntime backend loads: `<repository>/<cfg.name>/config.pbtxt`
    and `1/model.onnx` (the export of `export_onnx`, or with `fp16` its FP16 conversion); returns
    the folder, checked with `check_backend_model`. Raises FileNotFoundError when there is no
    export yet (run `export_onnx` first) and ConfigError when the files disagree."""
    source = Path(source or model_dir("food_classifier") / network().ONNX_FILE)
    if not source.exists():
        raise FileNotFoundError(f"{source} does not exist: export the network first "
                                "(onnx_export.export_onnx(), notebook 05 section 1)")
    folder = Path(repository or model_dir("food_classifier").parent.parent) / cfg.name
    (folder / "1").mkdir(parents=True, exist_ok=True)
    if fp16:
        onnx_export.to_fp16(source, folder / "1" / BACKEND_MODEL_FILE)
    else:
        atomic_write(folder / "1" / BACKEND_MODEL_FILE, source.read_bytes())
    configs.write_config(cfg, folder.parent, source="tritonlab.serving.onnx_backend",
                         regenerate="rerun notebook 05's cell that wrote it",
                         notes=("model.onnx: the classifier's ONNX export"
                                + (", converted to FP16" if fp16 else "")
                                + ": preprocessed float tensors in, logits out"))
    check_backend_model(folder)
    return folder


_ONNX_TYPES = {1: "TYPE_FP32", 10: "TYPE_FP16", 7: "TYPE_INT64", 6: "TYPE_INT32"}


def check_backend_model(folder: Path) -> str:
    """Check that `folder/config.pbtxt` and `folder/1/model.onnx` agree as Triton's onnxruntime
    backend needs: the same input and output names, data types, and dims after a dynamic batch
    axis (with max_batch_size > 0). Returns a one-line summary; raises ConfigError listing every
    mismatch (read from the ONNX graph with the `onnx` package, the config with Triton's own
    schema)."""
    import onnx

    folder = Path(folder)
    cfg = configs.read_config(folder / "config.pbtxt")
    graph = onnx.load(str(folder / "1" / BACKEND_MODEL_FILE), load_external_data=False).graph
    problems, seen = [], []
    for kind, declared, found in (("input", cfg.input, graph.input),
                                  ("output", cfg.output, graph.output)):
        tensors = {t.name: t for t in found}
        for t in declared:
            g = tensors.get(t.name)
            if g is None:
                problems.append(f"{kind} '{t.name}' is not in model.onnx (it has "
                                f"{sorted(tensors)})")
                continue
            ttype = g.type.tensor_type
            dims = [d.dim_value if d.HasField("dim_value") else -1 for d in ttype.shape.dim]
            want = ([-1] if cfg.max_batch_size > 0 else []) + list(t.dims)
            dtype = _ONNX_TYPES.get(ttype.elem_type, f"ONNX type {ttype.elem_type}")
            if dtype != mc.DataType.Name(t.data_type):
                problems.append(f"{kind} '{t.name}': config says "
                                f"{mc.DataType.Name(t.data_type)}, model.onnx {dtype}")
            if dims != want:
                problems.append(f"{kind} '{t.name}': config means dims {want} (batch axis first "
                                f"when max_batch_size > 0), model.onnx has {dims}")
            seen.append(f"{kind} '{t.name}' {dtype.removeprefix('TYPE_')} {dims}")
    if problems:
        raise configs.ConfigError(f"{folder}: config.pbtxt and model.onnx disagree: "
                                  + "; ".join(problems))
    return f"{folder.name}: config.pbtxt and 1/{BACKEND_MODEL_FILE} agree: " + ", ".join(seen)
