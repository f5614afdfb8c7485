"""ONNX export: dynamic batch axis, same answers as PyTorch, served by ONNX Runtime in Triton."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from tritonlab.assets import onnx_export, weights
from tritonlab.serving import clients, configs, onnx_backend


@pytest.fixture(scope="module")
def exported(repository):
    folder = repository / "food_classifier" / "1"
    onnx_export.export_onnx(folder)
    return folder


def test_export_has_a_dynamic_batch_axis(exported, classifier_code):
    import onnxruntime as ort

    session = ort.InferenceSession(str(exported / "food11.onnx"),
                                   providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[0] == "batch"
    for n in (1, 5):
        out = session.run(None, {"input": np.zeros((n, 3, 224, 224), np.float32)})[0]
        assert out.shape == (n, 11)


def test_onnx_matches_pytorch_on_the_samples(exported, images):
    """Labels equal and probabilities within 1e-4 on the samples and on any real Food-11
    photos in data/food11/ (none in CI)."""
    from tritonlab.assets import samples

    check = onnx_export.compare(images + samples.food11_images(), exported)
    assert (check["PyTorch label"] == check["ONNX Runtime label"]).all()
    assert check["abs difference"].max() < 1e-4


def test_stale_export_is_refused(tmp_path, exported, network):
    weights.copy_weights(exported, tmp_path)
    for name in ("food11.onnx", "food11.onnx.json"):
        (tmp_path / name).write_bytes((exported / name).read_bytes())
    torch.manual_seed(3)
    weights.save_weights(network.build_network().state_dict(), tmp_path, "other",
                         stand_in=True)
    with pytest.raises(ValueError, match="not exported from the current weights"):
        network.Food11Classifier(str(tmp_path), runtime="onnxruntime")


@pytest.mark.server
def test_served_with_onnxruntime_inside_the_python_backend(triton, exported, images, reference):
    cfg = configs.classifier_config(runtime="onnxruntime", num_threads=1)
    try:
        triton.reload_model("food_classifier", config=cfg)
        assert "onnxruntime on cpu" in triton.logs(200, model="food_classifier")
        preds = clients.classify(triton.grpc_url, images, protocol="grpc")
        want = reference.classify([p.read_bytes() for p in images])
        for pred, (label, prob) in zip(preds, want):
            assert pred.label == label and pred.probability == pytest.approx(prob, abs=1e-4)
    finally:
        triton.reload_model("food_classifier")


def test_onnxruntime_backend_config_for_the_gpu_node():
    cfg = configs.onnxruntime_backend_config(
        instance_groups=[{"count": 1, "kind": "KIND_GPU", "gpus": [0]},
                         {"count": 1, "kind": "KIND_GPU", "gpus": [1]}], tensorrt=True, fp16=True)
    configs.validate(cfg, gpu_count=2)
    text = configs.to_text(cfg)
    assert 'platform: "onnxruntime_onnx"' in text and 'name: "tensorrt"' in text
    assert 'value: "FP16"' in text
    with pytest.raises(configs.ConfigError, match="no GPU"):
        configs.validate(cfg, gpu_count=0)


def test_onnxruntime_path_does_not_import_torch(exported):
    """The ONNX Runtime variant's model process must not pay for importing PyTorch."""
    code = textwrap.dedent(f"""
        import sys
        from tritonlab.assets.repository import load_model_module
        mod = load_model_module("food_classifier")
        net = mod.food11_network
        model = net.Food11Classifier({str(exported)!r}, runtime="onnxruntime", num_threads=1)
        idx, prob = model.predict(net.np.zeros((2, 224, 224, 3), dtype=net.np.uint8))
        assert len(idx) == 2 and (prob > 0).all()
        print("torch" in sys.modules)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_stage_times_cover_both_runtimes(exported):
    from tritonlab.measuring import stages

    df = stages.measure(["torch", "onnxruntime"], batch=2, repeats=1, folder=exported)
    assert list(df["runtime"].unique()) == ["torch", "onnxruntime"]
    assert (df.groupby("runtime")["stage"].apply(tuple) == stages.STAGES).all()
    assert (df["ms per image"] > 0).all()
    text = stages.summary(df)
    assert text.count("images/s in-process") == 2


def _gpu_node_cfg(name: str = "food_classifier_onnx"):
    return configs.onnxruntime_backend_config(
        name=name, instance_groups=[{"count": 1, "kind": "KIND_GPU", "gpus": [0]},
                                    {"count": 1, "kind": "KIND_GPU", "gpus": [1]}],
        dynamic_batching={"preferred_batch_size": [4, 8], "max_queue_delay_microseconds": 5000})


def _logits(model_path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"input": x})[0]


def test_the_onnxruntime_backend_folder_agrees_with_its_graph(exported, tmp_path, images):
    """What the GPU node's onnxruntime backend loads: config.pbtxt and 1/model.onnx, checked
    against each other; the FP16 file keeps FP32 inputs and outputs and the same labels."""
    source = exported / "food11.onnx"
    fp32 = onnx_backend.write_backend_model(_gpu_node_cfg(), tmp_path, source=source)
    fp16 = onnx_backend.write_backend_model(_gpu_node_cfg("food_classifier_onnx_fp16"), tmp_path,
                                           fp16=True, source=source)
    assert "input 'input' FP32 [-1, 3, 224, 224]" in onnx_backend.check_backend_model(fp16)
    assert (fp16 / "1" / "model.onnx").stat().st_size < 0.6 * (fp32 / "1" / "model.onnx"
                                                               ).stat().st_size
    inputs = onnx_export.write_tensor_inputs(images, tmp_path / "tensor.json")
    import base64
    import json

    data = json.loads(inputs.read_text())["data"]
    x = np.stack([np.frombuffer(base64.b64decode(d["input"]["content"]["b64"]), dtype="<f4")
                  .reshape(d["input"]["shape"]) for d in data])
    a, b = _logits(fp32 / "1" / "model.onnx", x), _logits(fp16 / "1" / "model.onnx", x)
    assert a.shape == (len(images), 11) and b.dtype == np.float32
    assert (a.argmax(1) == b.argmax(1)).all()
    # A config that does not fit the graph is refused, naming what differs.
    cfg = _gpu_node_cfg()
    cfg.input[0].dims[2] = 225
    configs.write_config(cfg, tmp_path)
    with pytest.raises(configs.ConfigError, match=r"input 'input'.*\[-1, 3, 224, 225\].*"
                                                  r"\[-1, 3, 224, 224\]"):
        onnx_backend.check_backend_model(fp32)


TWIN_MODEL = '''
import os

import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    """The onnxruntime backend's contract (tensor 'input' in, 'logits' out), in Python."""

    def initialize(self, args):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        here = os.path.dirname(__file__)
        self.session = ort.InferenceSession(os.path.join(here, "model.onnx"), opts,
                                            providers=["CPUExecutionProvider"])

    def execute(self, requests):
        out = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "input").as_numpy()
            y = self.session.run(["logits"], {"input": x})[0]
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("logits", y)]))
        return out
'''


@pytest.mark.server
def test_the_gpu_node_files_and_tensor_inputs_work_through_triton_and_perf_analyzer(
        exported, triton, tmp_path, images):
    """Up to the boundary of the onnxruntime backend, which the embedded server lacks: the very
    folder the GPU node loads, served by a Python-backend twin that keeps its config's inputs,
    outputs and batching (only the backend and the device differ), measured by perf_analyzer
    with the tensor input file notebook 05 uses there."""
    import shutil

    import tritonclient.http as httpclient

    from tritonlab.measuring import perf, results

    folder = onnx_backend.write_backend_model(_gpu_node_cfg(), triton.model_repository,
                                              source=exported / "food11.onnx")
    twin = configs.read_config(folder / "config.pbtxt")
    twin.ClearField("platform")
    twin.backend = "python"
    twin.ClearField("instance_group")
    twin.instance_group.add(count=1, kind=configs.mc.ModelInstanceGroup.KIND_CPU)
    configs.write_config(twin, triton.model_repository)
    (folder / "1" / "model.py").write_text(TWIN_MODEL)
    inputs = onnx_export.write_tensor_inputs(images, tmp_path / "tensor.json")
    try:
        triton.reload_model("food_classifier_onnx")
        x = np.zeros((2, 3, 224, 224), dtype=np.float32)
        client = httpclient.InferenceServerClient(triton.http_url)
        tensor = httpclient.InferInput("input", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        got = client.infer("food_classifier_onnx", [tensor]).as_numpy("logits")
        np.testing.assert_allclose(got, _logits(folder / "1" / "model.onnx", x), rtol=1e-5,
                                   atol=1e-6)
        opts = perf.PerfSettings(concurrency=[2], measurement_ms=1000, min_requests=10,
                                 max_trials=6, input_data=str(inputs))
        run = perf.run(triton, "food_classifier_onnx", "twin of the onnxruntime backend", opts,
                       save=False, sample_metrics=False)
        assert len(run.df) == 1 and run.df[results.THROUGHPUT].iloc[0] > 0
    finally:
        triton.unload_model("food_classifier_onnx")
        shutil.rmtree(folder, ignore_errors=True)
