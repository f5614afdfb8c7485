"""Configs as code: Triton's schema, validation, and the committed files."""

from __future__ import annotations

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from tritonlab import configs, settings


def test_committed_configs_are_what_the_code_builds():
    for name, cfg in configs.course_configs().items():
        path = settings.MODEL_REPOSITORY / name / "config.pbtxt"
        expected = configs.render(cfg, f"tritonlab.configs.course_configs()['{name}']",
                                  "make configs")
        assert path.read_text() == expected, f"{path} is stale: run `make configs`"


def test_text_round_trip_as_triton_parses_it(tmp_path):
    cfg = configs.classifier_config(instances=2, num_threads=1,
                                    dynamic_batching={"preferred_batch_size": [4, 8],
                                                      "max_queue_delay_microseconds": 500})
    path = configs.write_config(cfg, tmp_path)
    text = path.read_text()
    assert text.startswith("# GENERATED FILE")
    parsed = text_format.Parse(text, mc.ModelConfig())  # comments are legal in text format
    assert parsed == cfg == configs.read_config(tmp_path / "food_classifier")
    assert "preferred_batch_size: 4" in text and "count: 2" in text


@pytest.mark.parametrize("change,problem", [
    (lambda c: setattr(c, "max_batch_size", 0), "dynamic batching needs max_batch_size"),
    (lambda c: c.dynamic_batching.preferred_batch_size.append(99), "outside 1..max_batch_size"),
    (lambda c: c.input.add(name="INPUT_IMAGE", data_type=mc.TYPE_STRING, dims=[1]),
     "declared twice"),
    (lambda c: c.output[0].ClearField("dims"), "has no dims"),
    (lambda c: setattr(c.instance_group[0], "count", 0), "count 0"),
])
def test_validation_names_the_problem(change, problem):
    cfg = configs.classifier_config(dynamic_batching={"preferred_batch_size": [4]})
    change(cfg)
    with pytest.raises(configs.ConfigError, match=problem):
        configs.validate(cfg)


def test_gpu_group_checked_against_devices():
    cfg = configs.classifier_config(kind="KIND_GPU", gpus=[1])
    configs.validate(cfg)  # device count unknown: not checked
    with pytest.raises(configs.ConfigError, match="no GPU"):
        configs.validate(cfg, gpu_count=0)
    with pytest.raises(configs.ConfigError, match=r"GPUs \[1\]"):
        configs.validate(cfg, gpu_count=1)
    configs.validate(cfg, gpu_count=2)


def test_folder_name_must_match(tmp_path):
    with pytest.raises(configs.ConfigError, match="differs from its folder"):
        configs.validate(configs.classifier_config(), folder=tmp_path / "other")


def test_diff_shows_one_field():
    before = configs.classifier_config()
    after = configs.classifier_config(max_batch_size=8)
    assert "-max_batch_size: 16" in configs.diff(before, after)
    assert "+max_batch_size: 8" in configs.diff(before, after)
    assert configs.diff(before, configs.classifier_config()) == ""
