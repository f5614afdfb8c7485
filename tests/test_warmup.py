"""model_warmup on the real server: Triton runs the sample through every model before READY."""

from __future__ import annotations

import struct

import pytest

from tritonlab.serving import ModelLoadError, configs, deploy

pytestmark = pytest.mark.server


@pytest.mark.parametrize("model", ["food_classifier", "conditional_captioning"])
def test_warmup_runs_before_the_model_is_ready(triton, model):
    """A broken warm-up image makes the load fail with the model's own message: the sample is
    really sent through the model before Triton calls it READY. The good file loads again."""
    path = triton.model_repository / model / configs.WARMUP_DIR / "INPUT_IMAGE"
    good = path.read_bytes()
    path.write_bytes(struct.pack("<I", 12) + b"not an image")
    try:
        with pytest.raises(ModelLoadError, match="failed to run warmup sample.*not an image"):
            triton.reload_model(model)
    finally:
        path.write_bytes(good)
        deploy.restore_baseline(triton, model)
    assert triton.is_ready()
