"""ONNX export: dynamic batch axis, same answers as PyTorch, served by ONNX Runtime in Triton."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from tritonlab.assets import onnx_export, weights
from tritonlab.serving import clients, configs


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
