"""Model configs as code: build config.pbtxt on Triton's own protobuf schema, check it, write it.

Triton parses config.pbtxt as a text-format `inference.ModelConfig` message; building it with
the same message class (`tritonclient.grpc.model_config_pb2`) means a misspelt field fails here,
in the cell, rather than in the server log.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2 as mc

from . import settings

BANNER = """\
# GENERATED FILE: do not edit by hand; Triton reads it, the course rewrites it.
# Built by {source}.
# Regenerate with: {regenerate}
"""


class ConfigError(ValueError):
    """A model config that Triton would refuse or misread; the message lists every problem."""


def classifier_config(name: str = "food_classifier", max_batch_size: int = 16,
                      instances: int = 1, kind: str = "KIND_CPU", gpus: list[int] | None = None,
                      num_threads: int = 0, dynamic_batching: dict | None = None,
                      instance_groups: list[dict] | None = None, runtime: str = "torch",
                      backend: str = "python") -> mc.ModelConfig:
    """The Food-11 classifier's config: an encoded image in, a label and its probability out.

    One instance group of `instances` x `kind` (on `gpus`), or several: `instance_groups` is a
    list of dicts with count, kind and gpus. `num_threads` 0 leaves the runtime's default (one
    thread per core). `dynamic_batching` takes `preferred_batch_size` (list) and
    `max_queue_delay_microseconds`. `runtime` is 'torch' (eager PyTorch) or 'onnxruntime'
    (the exported .onnx file run by ONNX Runtime inside the same Python model).
    """
    cfg = mc.ModelConfig(name=name, backend=backend, max_batch_size=max_batch_size)
    cfg.input.add(name="INPUT_IMAGE", data_type=mc.TYPE_STRING, dims=[1])
    cfg.output.add(name="FOOD_LABEL", data_type=mc.TYPE_STRING, dims=[1])
    cfg.output.add(name="PROBABILITY", data_type=mc.TYPE_FP32, dims=[1])
    add_instance_groups(cfg, instance_groups or [{"count": instances, "kind": kind,
                                                  "gpus": gpus or []}])
    cfg.parameters["num_threads"].string_value = str(num_threads)
    if runtime != "torch":
        cfg.parameters["runtime"].string_value = runtime
    set_dynamic_batching(cfg, dynamic_batching)
    return cfg


def captioning_config(name: str = "conditional_captioning", max_batch_size: int = 8,
                      instances: int = 1, kind: str = "KIND_CPU", gpus: list[int] | None = None,
                      num_threads: int = 0, max_new_tokens: int = 20, num_beams: int = 1,
                      dynamic_batching: dict | None = None) -> mc.ModelConfig:
    """BLIP conditional captioning: an encoded image and its food label in, a caption out."""
    cfg = mc.ModelConfig(name=name, backend="python", max_batch_size=max_batch_size)
    cfg.input.add(name="INPUT_IMAGE", data_type=mc.TYPE_STRING, dims=[1])
    cfg.input.add(name="FOOD_LABEL", data_type=mc.TYPE_STRING, dims=[1])
    cfg.output.add(name="CAPTION", data_type=mc.TYPE_STRING, dims=[1])
    add_instance_groups(cfg, [{"count": instances, "kind": kind, "gpus": gpus or []}])
    for key, value in (("num_threads", num_threads), ("max_new_tokens", max_new_tokens),
                       ("num_beams", num_beams)):
        cfg.parameters[key].string_value = str(value)
    set_dynamic_batching(cfg, dynamic_batching)
    return cfg


def ensemble_config(name: str = "food_captioning", max_batch_size: int = 8,
                    classifier: str = "food_classifier",
                    captioner: str = "conditional_captioning") -> mc.ModelConfig:
    """The ensemble: classify the image, then caption it conditioned on the label."""
    cfg = mc.ModelConfig(name=name, platform="ensemble", max_batch_size=max_batch_size)
    cfg.input.add(name="INPUT_IMAGE", data_type=mc.TYPE_STRING, dims=[1])
    cfg.output.add(name="FOOD_LABEL", data_type=mc.TYPE_STRING, dims=[1])
    cfg.output.add(name="PROBABILITY", data_type=mc.TYPE_FP32, dims=[1])
    cfg.output.add(name="CAPTION", data_type=mc.TYPE_STRING, dims=[1])
    classify = cfg.ensemble_scheduling.step.add(model_name=classifier, model_version=-1)
    classify.input_map["INPUT_IMAGE"] = "INPUT_IMAGE"
    classify.output_map["FOOD_LABEL"] = "FOOD_LABEL"
    classify.output_map["PROBABILITY"] = "PROBABILITY"
    caption = cfg.ensemble_scheduling.step.add(model_name=captioner, model_version=-1)
    caption.input_map["INPUT_IMAGE"] = "INPUT_IMAGE"
    caption.input_map["FOOD_LABEL"] = "FOOD_LABEL"
    caption.output_map["CAPTION"] = "CAPTION"
    return cfg


def check_ensemble(ensemble: mc.ModelConfig, steps: dict[str, mc.ModelConfig]) -> None:
    """Raise ConfigError if an ensemble's steps disagree on names, data types or batch sizes."""
    problems = []
    tensors = {t.name: t.data_type for t in ensemble.input}
    for step in ensemble.ensemble_scheduling.step:
        model = steps.get(step.model_name)
        if model is None:
            problems.append(f"step '{step.model_name}' is not a known model")
            continue
        if ensemble.max_batch_size > model.max_batch_size:
            problems.append(f"max_batch_size {ensemble.max_batch_size} exceeds "
                            f"'{step.model_name}' ({model.max_batch_size})")
        inputs = {t.name: t.data_type for t in model.input}
        outputs = {t.name: t.data_type for t in model.output}
        for model_input, tensor in step.input_map.items():
            if model_input not in inputs:
                problems.append(f"'{step.model_name}' has no input '{model_input}'")
            elif tensor not in tensors:
                problems.append(f"'{tensor}' feeds '{step.model_name}' before any step makes it")
            elif tensors[tensor] != inputs[model_input]:
                want = mc.DataType.Name(inputs[model_input])
                problems.append(f"'{tensor}' is {mc.DataType.Name(tensors[tensor])} but "
                                f"'{step.model_name}' expects {want}")
        for model_output, tensor in step.output_map.items():
            if model_output not in outputs:
                problems.append(f"'{step.model_name}' has no output '{model_output}'")
            else:
                tensors[tensor] = outputs[model_output]
    for out in ensemble.output:
        if out.name not in tensors:
            problems.append(f"ensemble output '{out.name}' is made by no step")
        elif tensors[out.name] != out.data_type:
            problems.append(f"ensemble output '{out.name}' is declared "
                            f"{mc.DataType.Name(out.data_type)} but its step makes "
                            f"{mc.DataType.Name(tensors[out.name])}")
    if problems:
        raise ConfigError(f"ensemble '{ensemble.name}' is not valid:\n- " + "\n- ".join(problems))


def add_instance_groups(cfg: mc.ModelConfig, groups: list[dict]) -> None:
    """Append instance groups given as dicts: count, kind ('KIND_CPU'/'KIND_GPU'), gpus."""
    for spec in groups:
        group = cfg.instance_group.add(count=spec.get("count", 1),
                                       kind=mc.ModelInstanceGroup.Kind.Value(
                                           spec.get("kind", "KIND_CPU")))
        group.gpus.extend(spec.get("gpus") or [])


def set_dynamic_batching(cfg: mc.ModelConfig, spec: dict | None) -> None:
    """Turn on dynamic batching (`preferred_batch_size`, `max_queue_delay_microseconds`)."""
    if spec is None:
        return
    cfg.dynamic_batching.SetInParent()
    cfg.dynamic_batching.preferred_batch_size.extend(spec.get("preferred_batch_size", []))
    cfg.dynamic_batching.max_queue_delay_microseconds = int(
        spec.get("max_queue_delay_microseconds", 0))


def validate(cfg: mc.ModelConfig, folder: Path | None = None, gpu_count: int | None = None) -> None:
    """Raise ConfigError listing every problem Triton would refuse or silently misread."""
    problems = []
    if not cfg.name:
        problems.append("the model has no name")
    if folder is not None and cfg.name and Path(folder).name != cfg.name:
        problems.append(f"name '{cfg.name}' differs from its folder '{Path(folder).name}'")
    if not (cfg.backend or cfg.platform):
        problems.append("set a backend (e.g. 'python') or a platform (e.g. 'ensemble')")
    if cfg.max_batch_size < 0:
        problems.append("max_batch_size must be 0 (no batching) or more")
    for kind, tensors in (("input", cfg.input), ("output", cfg.output)):
        names = [t.name for t in tensors]
        if not names and cfg.platform != "ensemble":
            problems.append(f"no {kind}s")
        for dup in {n for n in names if names.count(n) > 1}:
            problems.append(f"{kind} '{dup}' is declared twice")
        for t in tensors:
            if not t.dims:
                problems.append(f"{kind} '{t.name}' has no dims")
            if any(d == 0 or d < -1 for d in t.dims):
                problems.append(f"{kind} '{t.name}' has dims {list(t.dims)}: use sizes > 0 or -1")
            if t.data_type == mc.TYPE_INVALID:
                problems.append(f"{kind} '{t.name}' has no data_type")
    if cfg.HasField("dynamic_batching"):
        if cfg.max_batch_size == 0:
            problems.append("dynamic batching needs max_batch_size > 0")
        for size in cfg.dynamic_batching.preferred_batch_size:
            if not 0 < size <= cfg.max_batch_size:
                problems.append(f"preferred batch size {size} is outside 1..max_batch_size "
                                f"({cfg.max_batch_size})")
    for group in cfg.instance_group:
        if group.count < 1:
            problems.append(f"instance group with count {group.count}: use 1 or more")
        if group.kind == mc.ModelInstanceGroup.KIND_GPU and gpu_count is not None:
            missing = [g for g in group.gpus if g >= gpu_count]
            if gpu_count == 0:
                problems.append("a KIND_GPU instance group, but this machine has no GPU")
            elif missing:
                problems.append(f"GPUs {missing} requested, but only {gpu_count} present")
    if problems:
        raise ConfigError(f"config '{cfg.name}' is not valid:\n- " + "\n- ".join(problems))


def for_this_machine(cfg: mc.ModelConfig, gpu_count: int) -> tuple[mc.ModelConfig, str]:
    """`cfg` as this machine can run it, and a note if it had to change.

    Without enough GPUs, each KIND_GPU group runs as a KIND_CPU group of the same count: the
    file on disk stays exactly as written for the GPU node; only the loaded copy differs.
    """
    needs = [g for g in cfg.instance_group if g.kind == mc.ModelInstanceGroup.KIND_GPU and
             (gpu_count == 0 or any(i >= gpu_count for i in g.gpus))]
    if not needs:
        return cfg, ""
    runnable = mc.ModelConfig()
    runnable.CopyFrom(cfg)
    for group in runnable.instance_group:
        if group.kind == mc.ModelInstanceGroup.KIND_GPU:
            group.kind = mc.ModelInstanceGroup.KIND_CPU
            group.ClearField("gpus")
    where = "no GPU" if gpu_count == 0 else f"only {gpu_count} GPU(s)"
    note = (f"NOTE: this machine has {where}. config.pbtxt is written for the GPU node exactly as "
            f"shown; here its {len(needs)} KIND_GPU instance group(s) run as KIND_CPU groups of "
            "the same count, so the numbers below are CPU numbers.")
    return runnable, note


def to_text(cfg: mc.ModelConfig) -> str:
    """The config in text format, exactly as Triton parses config.pbtxt."""
    return text_format.MessageToString(cfg)


def to_json(cfg: mc.ModelConfig) -> str:
    """The config as JSON, the form Triton's load API takes for a config override."""
    return json_format.MessageToJson(cfg, preserving_proto_field_name=True)


def render(cfg: mc.ModelConfig, source: str, regenerate: str) -> str:
    return BANNER.format(source=source, regenerate=regenerate) + to_text(cfg)


def read_config(path: Path | str) -> mc.ModelConfig:
    """Parse a config.pbtxt (or a model folder holding one) as Triton does."""
    path = Path(path)
    if path.is_dir():
        path = path / "config.pbtxt"
    return text_format.Parse(path.read_text(), mc.ModelConfig())


def write_config(cfg: mc.ModelConfig, repository: Path | str | None = None,
                 source: str = "tritonlab.configs", regenerate: str = "make configs",
                 gpu_count: int | None = None) -> Path:
    """Validate `cfg`, write `<repository>/<name>/config.pbtxt` atomically; returns its path."""
    folder = Path(repository or settings.model_repository()) / cfg.name
    validate(cfg, folder=folder, gpu_count=gpu_count)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.pbtxt"
    tmp = path.with_suffix(".pbtxt.tmp")
    tmp.write_text(render(cfg, source, regenerate))
    os.replace(tmp, path)
    return path


def diff(old: mc.ModelConfig | None, new: mc.ModelConfig) -> str:
    """A unified diff between two configs' text forms ('' when they are equal)."""
    before = to_text(old).splitlines() if old is not None else []
    return "\n".join(difflib.unified_diff(before, to_text(new).splitlines(), "before", "after",
                                          lineterm=""))


def course_configs() -> dict[str, mc.ModelConfig]:
    """The configs committed in model_repository/, keyed by model name."""
    configs = {"food_classifier": classifier_config(),
               "conditional_captioning": captioning_config(),
               "food_captioning": ensemble_config()}
    check_ensemble(configs["food_captioning"], configs)
    return configs


def write_course_configs(repository: Path | str | None = None) -> list[Path]:
    """Regenerate every committed config.pbtxt (`make configs`)."""
    return [write_config(cfg, repository, source=f"tritonlab.configs.course_configs()['{name}']")
            for name, cfg in course_configs().items()]
