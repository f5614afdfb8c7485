"""Model configs as code: build config.pbtxt on Triton's own protobuf schema, check it, write it.

Triton parses config.pbtxt as a text-format `inference.ModelConfig` message; building it with
the same message class (`tritonclient.grpc.model_config_pb2`) means a misspelt field fails here,
in the cell, rather than in the server log.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from pathlib import Path

from google.protobuf import descriptor_pool, json_format, text_format
from tritonclient.grpc import model_config_pb2 as mc

from .. import settings
from ..common import atomic_write

BANNER = """\
# GENERATED FILE: do not edit by hand; Triton reads it, the course rewrites it.
# Built by {source}.
# Regenerate with: {regenerate}
"""

#: Folder (inside a model's folder) that Triton reads `model_warmup` data files from.
WARMUP_DIR = "warmup"
#: The sample photo every course model is warmed up with (data/samples/).
WARMUP_IMAGE = "pasta.jpg"
WARMUP_LABEL = "Noodles/Pasta"


class ConfigError(ValueError):
    """A model config that Triton would refuse or misread; the message lists every problem."""


def classifier_config(name: str = "food_classifier", max_batch_size: int = 16,
                      instances: int = 1, kind: str = "KIND_CPU", gpus: list[int] | None = None,
                      num_threads: int = 0, cpu_share: float = 1.0,
                      dynamic_batching: dict | None = None,
                      instance_groups: list[dict] | None = None, runtime: str = "torch",
                      backend: str = "python", warmup: bool = True) -> mc.ModelConfig:
    """The Food-11 classifier's config: an encoded image in, a label and its probability out.

    One instance group of `instances` x `kind` (on `gpus`), or several: `instance_groups` is a
    list of dicts with count, kind and gpus. Threads per instance: `num_threads` if > 0, else
    the instance's part of `cpu_share` (the fraction of the machine's cores all instances of the
    model share; `model.py` divides it, see its `cpu_threads`). `dynamic_batching` takes
    `preferred_batch_size` (list) and `max_queue_delay_microseconds`. `runtime` is 'torch'
    (eager PyTorch) or 'onnxruntime' (the exported .onnx file run by ONNX Runtime inside the
    same Python model). `warmup` adds a `model_warmup` block: Triton runs a sample photo through
    each instance before it marks the model READY.
    """
    cfg = mc.ModelConfig(name=name, backend=backend, max_batch_size=max_batch_size)
    cfg.input.add(name="INPUT_IMAGE", data_type=mc.TYPE_STRING, dims=[1])
    cfg.output.add(name="FOOD_LABEL", data_type=mc.TYPE_STRING, dims=[1])
    cfg.output.add(name="PROBABILITY", data_type=mc.TYPE_FP32, dims=[1])
    add_instance_groups(cfg, instance_groups or [{"count": instances, "kind": kind,
                                                  "gpus": gpus or []}])
    set_threads(cfg, num_threads, cpu_share)
    if runtime != "torch":
        cfg.parameters["runtime"].string_value = runtime
    set_dynamic_batching(cfg, dynamic_batching)
    if warmup:
        add_warmup(cfg, ["INPUT_IMAGE"])
    return cfg


def captioning_config(name: str = "conditional_captioning", max_batch_size: int = 8,
                      instances: int = 1, kind: str = "KIND_CPU", gpus: list[int] | None = None,
                      num_threads: int = 0, cpu_share: float = 1.0, max_new_tokens: int = 20,
                      num_beams: int = 1, dynamic_batching: dict | None = None,
                      strategy: str = "encode_then_decode", vision_batch: int = 4,
                      attention: str = "sdpa", dtype: str = "float32",
                      warmup: bool = True) -> mc.ModelConfig:
    """BLIP conditional captioning: an encoded image and its food label in, a caption out.

    Threads as in `classifier_config`; `warmup` captions the sample photo at load time.
    `strategy`, `vision_batch`, `attention` and `dtype` choose how `blip_captioner.py` runs a
    batch (its docstring explains each); CAPTIONING_VARIANTS names the combinations the course
    measures.
    """
    cfg = mc.ModelConfig(name=name, backend="python", max_batch_size=max_batch_size)
    cfg.input.add(name="INPUT_IMAGE", data_type=mc.TYPE_STRING, dims=[1])
    cfg.input.add(name="FOOD_LABEL", data_type=mc.TYPE_STRING, dims=[1])
    cfg.output.add(name="CAPTION", data_type=mc.TYPE_STRING, dims=[1])
    add_instance_groups(cfg, [{"count": instances, "kind": kind, "gpus": gpus or []}])
    set_threads(cfg, num_threads, cpu_share)
    for key, value in (("max_new_tokens", max_new_tokens), ("num_beams", num_beams),
                       ("strategy", strategy), ("vision_batch", vision_batch),
                       ("attention", attention), ("dtype", dtype)):
        cfg.parameters[key].string_value = str(value)
    set_dynamic_batching(cfg, dynamic_batching)
    if warmup:
        add_warmup(cfg, ["INPUT_IMAGE", "FOOD_LABEL"])
    return cfg


def set_threads(cfg: mc.ModelConfig, num_threads: int = 0, cpu_share: float = 1.0) -> None:
    """The `num_threads` and `cpu_share` parameters `model.py` reads (see `classifier_config`)."""
    if num_threads < 0:
        raise ConfigError("num_threads must be 0 (use cpu_share) or more")
    if not 0 < cpu_share <= 1:
        raise ConfigError(f"cpu_share must be in (0, 1], not {cpu_share}")
    cfg.parameters["num_threads"].string_value = str(num_threads)
    cfg.parameters["cpu_share"].string_value = f"{cpu_share:g}"


def add_warmup(cfg: mc.ModelConfig, inputs: list[str]) -> None:
    """A warm-up sample of batch 1: each input read from `warmup/<input name>` in the model's
    folder (written by `write_warmup_files`), sent to every instance before the model is READY."""
    sample = cfg.model_warmup.add(name="sample photo, batch 1", batch_size=1)
    for name in inputs:
        tensor = next(t for t in cfg.input if t.name == name)
        sample.inputs[name].data_type = tensor.data_type
        sample.inputs[name].dims.extend(tensor.dims)
        sample.inputs[name].input_data_file = name


def warmup_data() -> dict[str, bytes]:
    """The contents of the warm-up data files, by input name: one BYTES element each, as Triton
    reads it (see `samples.serialized_bytes`)."""
    from ..assets.samples import serialized_bytes

    return {"INPUT_IMAGE": serialized_bytes((settings.SAMPLES / WARMUP_IMAGE).read_bytes()),
            "FOOD_LABEL": serialized_bytes(WARMUP_LABEL.encode())}


def write_warmup_files(cfg: mc.ModelConfig, repository: Path | str | None = None) -> list[Path]:
    """Write the data files `cfg`'s `model_warmup` samples name, into its model folder."""
    folder = Path(repository or settings.model_repository()) / cfg.name / WARMUP_DIR
    data = warmup_data()
    names = sorted({i.input_data_file for w in cfg.model_warmup for i in w.inputs.values()
                    if i.input_data_file})
    paths = []
    for name in names:
        path = folder / name
        if not path.exists() or path.read_bytes() != data[name]:
            atomic_write(path, data[name])
        paths.append(path)
    return paths


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


def set_queue_policy(cfg: mc.ModelConfig, max_queue_size: int, timeout_microseconds: int,
                     priority_levels: int = 0) -> None:
    """Bound the dynamic batcher's queue so that overload is refused instead of waited out.

    At most `max_queue_size` requests wait; more are refused at once (gRPC UNAVAILABLE, HTTP
    503, "Exceeds maximum queue size"), and a request that has waited `timeout_microseconds` is
    refused ("Request timeout expired"; `timeout_action: REJECT`). Triton checks the timeout
    when it schedules, so a refusal can come somewhat later than the timeout (server#7512).
    With `priority_levels` (e.g. 2) a request sent with priority 1 is scheduled before those at
    the default, lowest level; each level's queue has this policy. Raises ConfigError without
    dynamic batching (the policy belongs to its queue)."""
    if not cfg.HasField("dynamic_batching"):
        raise ConfigError("a queue policy belongs to the dynamic batcher's queue: turn on "
                          "dynamic batching first (set_dynamic_batching)")
    if max_queue_size < 1 or timeout_microseconds < 1:
        raise ConfigError("max_queue_size and timeout_microseconds must be at least 1")
    policy = cfg.dynamic_batching.default_queue_policy
    policy.max_queue_size = max_queue_size
    policy.timeout_action = mc.ModelQueuePolicy.REJECT
    policy.default_timeout_microseconds = timeout_microseconds
    if priority_levels:
        cfg.dynamic_batching.priority_levels = priority_levels
        cfg.dynamic_batching.default_priority_level = priority_levels


def set_response_cache(cfg: mc.ModelConfig, enable: bool = True) -> None:
    """Let (or stop letting) this model answer from Triton's response cache: `response_cache
    { enable: true }`. A request whose model, version and input tensors (names, shapes, types,
    bytes) hash like an earlier successful one gets that one's outputs without running the
    model (Triton's "Response Cache" guide). The server must have a cache too: the course starts
    every Triton with one (settings.RESPONSE_CACHE_BYTES). `validate` refuses it where Triton
    cannot cache: decoupled models and the sequence batcher."""
    if enable:
        cfg.response_cache.enable = True
    else:
        cfg.ClearField("response_cache")


#: The queue policy notebook 07 and `make bench` overload the fastest variant with: at most 16
#: requests wait, none longer than 200 ms, two priority levels (set_queue_policy's arguments).
OVERLOAD_QUEUE_POLICY = dict(max_queue_size=16, timeout_microseconds=200_000, priority_levels=2)


#: The fastest classifier variant on the course's 2-core CPU: ONNX Runtime in the Python
#: backend, two instances with one thread each (one decodes JPEGs while the other runs the
#: network), and dynamic batching. One instance with two threads measured about 130-150 infer/s
#: at concurrency 8 here, two single-thread instances about 175 (`make bench`).
FASTEST_CLASSIFIER = dict(runtime="onnxruntime", instances=2, num_threads=1,
                          dynamic_batching={"preferred_batch_size": [4, 8],
                                            "max_queue_delay_microseconds": 5000})


def fastest_classifier_config() -> mc.ModelConfig:
    """food_classifier as FASTEST_CLASSIFIER (needs the ONNX export: onnx_export.export_onnx)."""
    return classifier_config(**FASTEST_CLASSIFIER)


#: The classifier variants that can be served by name (`make serve VARIANT=...`,
#: `deploy.serve_variant`): the committed baseline, FASTEST_CLASSIFIER, and the best
#: configuration of the last Model Analyzer search (notebook 09).
CLASSIFIER_VARIANTS = ("baseline", "fastest", "analyzer")


def analyzer_best_path() -> Path:
    """Where notebook 09 (measuring.analyzer.save) keeps Model Analyzer's best configuration,
    renamed food_classifier: under the results folder, since a search is a measurement."""
    return settings.results_dir() / "model_analyzer" / "best.pbtxt"


def classifier_variant(name: str) -> mc.ModelConfig:
    """food_classifier's config for a named variant of CLASSIFIER_VARIANTS: 'baseline' is the
    committed config (its half of the cores beside the captioner), 'fastest' is
    FASTEST_CLASSIFIER, 'analyzer' the best configuration of the last Model Analyzer search.
    Raises ConfigError naming the variants there are, or, for 'analyzer', saying that no
    search was saved yet."""
    if name == "baseline":
        return course_configs()["food_classifier"]
    if name == "fastest":
        return fastest_classifier_config()
    if name == "analyzer":
        path = analyzer_best_path()
        if not path.exists():
            raise ConfigError(f"no Model Analyzer search saved ({path} is missing): run "
                              "notebook 09 first, which searches and saves its best config.")
        return read_config(path)
    raise ConfigError(f"no classifier variant '{name}': use one of "
                      f"{', '.join(CLASSIFIER_VARIANTS)}")


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
    inputs = {t.name: t for t in cfg.input}
    for sample in cfg.model_warmup:
        if not 0 < sample.batch_size <= max(cfg.max_batch_size, 1):
            problems.append(f"warm-up sample '{sample.name}' has batch_size {sample.batch_size}:"
                            f" use 1..{max(cfg.max_batch_size, 1)}")
        for name, spec in sample.inputs.items():
            if name not in inputs:
                problems.append(f"warm-up sample '{sample.name}' feeds '{name}', which is not "
                                "an input")
            elif spec.data_type != inputs[name].data_type:
                problems.append(f"warm-up sample '{sample.name}' sends '{name}' as "
                                f"{mc.DataType.Name(spec.data_type)}, the input is "
                                f"{mc.DataType.Name(inputs[name].data_type)}")
        missing = set(inputs) - set(sample.inputs)
        if missing:
            problems.append(f"warm-up sample '{sample.name}' lacks inputs {sorted(missing)}")
    if cfg.model_warmup and cfg.platform == "ensemble":
        problems.append("ensembles take no model_warmup: warm up their steps instead")
    for group in cfg.instance_group:
        if group.count < 1:
            problems.append(f"instance group with count {group.count}: use 1 or more")
        if group.kind == mc.ModelInstanceGroup.KIND_GPU and gpu_count is not None:
            missing = [g for g in group.gpus if g >= gpu_count]
            if gpu_count == 0:
                problems.append("a KIND_GPU instance group, but this machine has no GPU")
            elif missing:
                problems.append(f"GPUs {missing} requested, but only {gpu_count} present")
    if cfg.response_cache.enable:
        # Triton's "Response Cache" guide, Known Limitations (server 2.51)
        if cfg.model_transaction_policy.decoupled:
            problems.append("response_cache is on, but the response cache does not support "
                            "decoupled models")
        if cfg.HasField("sequence_batching"):
            problems.append("response_cache is on, but the sequence batcher does not support "
                            "the response cache (only the default and dynamic batchers do)")
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


def on_gpus(cfg: mc.ModelConfig, gpus: Sequence[int]) -> mc.ModelConfig:
    """A copy of `cfg` whose instances run on `gpus`, as notebook 04's two-GPU config places
    them: every instance group that names no GPU (a KIND_CPU or KIND_AUTO group, or a KIND_GPU
    group without `gpus`) becomes one KIND_GPU group per GPU, each of the group's count (2 CPU
    instances -> 2 on GPU 0 and 2 on GPU 1). A KIND_GPU group that already names its GPUs is
    kept as it is; threads, batching and the rest are unchanged. Raises ValueError when `gpus`
    is empty."""
    if not gpus:
        raise ValueError("on_gpus needs at least one GPU index, such as [0, 1]")
    placed = mc.ModelConfig()
    placed.CopyFrom(cfg)
    placed.ClearField("instance_group")
    for group in cfg.instance_group or [mc.ModelInstanceGroup(count=1)]:
        if group.kind == mc.ModelInstanceGroup.KIND_GPU and group.gpus:
            placed.instance_group.add().CopyFrom(group)
            continue
        for gpu in gpus:
            spread = placed.instance_group.add()
            spread.CopyFrom(group)
            spread.ClearField("name")  # Triton names each group after the model and its index
            spread.kind = mc.ModelInstanceGroup.KIND_GPU
            spread.count = group.count or 1
            spread.gpus[:] = [gpu]
    return placed


def to_text(cfg: mc.ModelConfig) -> str:
    """The config in text format, exactly as Triton parses config.pbtxt."""
    return text_format.MessageToString(cfg)


def to_json(cfg: mc.ModelConfig) -> str:
    """The config as JSON, the form Triton's load API takes for a config override."""
    return json_format.MessageToJson(cfg, preserving_proto_field_name=True)


def render(cfg: mc.ModelConfig, source: str, regenerate: str, notes: str = "") -> str:
    """The file's text: the generated-file banner, `notes` as comments, then the config."""
    comments = "".join(f"# {line}\n" if line else "#\n" for line in notes.splitlines())
    return BANNER.format(source=source, regenerate=regenerate) + comments + to_text(cfg)


def parse(text: str, where: str = "config.pbtxt") -> mc.ModelConfig:
    """config.pbtxt text -> ModelConfig, parsed exactly as Triton parses the file.

    Raises ConfigError naming the line and column, what the text-format parser said, and for
    a misspelt field the closest field names the schema has at that place (from the
    message's descriptor, e.g. 'instance_groups' -> 'instance_group')."""
    try:
        return text_format.Parse(text, mc.ModelConfig())
    except text_format.ParseError as exc:
        said = re.sub(r"^\d+:\d+ : ", "", str(exc)).rstrip(".")
        pool = descriptor_pool.Default()
        names: list[str] = []
        unknown = re.search(r'Message type "([\w.]+)" has no field named "(\w+)"', said)
        bad_value = re.search(r'Enum type "([\w.]+)" has no value named (\w+)', said)
        try:
            if unknown:
                names = [f.name for f in pool.FindMessageTypeByName(unknown[1]).fields]
            elif bad_value:
                names = [v.name for v in pool.FindEnumTypeByName(bad_value[1]).values]
        except KeyError:
            names = []
        typed = (unknown or bad_value)[2] if (unknown or bad_value) else ""
        close = difflib.get_close_matches(typed, names, n=3) if typed else []
        hint = (f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else
                f" Allowed there: {', '.join(sorted(names))}." if names else "")
        raise ConfigError(f"{where}, line {exc.GetLine()} column {exc.GetColumn()}: "
                          f"{said}.{hint}") from None


def read_config(path: Path | str) -> mc.ModelConfig:
    """Parse a config.pbtxt (or a model folder holding one) as Triton does."""
    path = Path(path)
    if path.is_dir():
        path = path / "config.pbtxt"
    return parse(path.read_text(), where=str(path))


def write_config(cfg: mc.ModelConfig, repository: Path | str | None = None,
                 source: str = "tritonlab.serving.configs", regenerate: str = "make configs",
                 gpu_count: int | None = None, notes: str = "") -> Path:
    """Validate `cfg`, write `<repository>/<name>/config.pbtxt` atomically (and the warm-up
    data files it names); returns the config's path."""
    folder = Path(repository or settings.model_repository()) / cfg.name
    validate(cfg, folder=folder, gpu_count=gpu_count)
    folder.mkdir(parents=True, exist_ok=True)
    write_warmup_files(cfg, repository)
    path = folder / "config.pbtxt"
    atomic_write(path, render(cfg, source, regenerate, notes))
    return path


def diff(old: mc.ModelConfig | None, new: mc.ModelConfig) -> str:
    """A unified diff between two configs' text forms ('' when they are equal)."""
    before = to_text(old).splitlines() if old is not None else []
    return "\n".join(difflib.unified_diff(before, to_text(new).splitlines(), "before", "after",
                                          lineterm=""))


#: The share of the machine's cores each step of the ensemble gets in the served repository,
#: weighted by the work each does: a caption costs BLIP-base far more than a label costs
#: MobileNetV2 (notebook 10 prints both steps' compute times), so the captioner gets every core
#: and the classifier half of them (one thread on 2 cores). `make bench` measures this against
#: halves each at concurrency 8 (on 2 cores, 2026-11-29: 1.19 against 0.64 infer/s).
ENSEMBLE_CPU_SHARE = {"food_classifier": 0.5, "conditional_captioning": 1.0}

#: Dynamic batching on the captioning step. A batch of 8 captions takes seconds on 2 CPU cores,
#: so waiting up to 500 ms for a full batch costs little there, and each generated token then
#: reads the text decoder's weights once for 8 images. A short delay lets a batch start before
#: the requests of the previous one are back from the classifier, so batches come out smaller
#: than 8 when the delay is short. With fewer requests in flight than 8, each batch waits the
#: whole 500 ms (notebook 10 prints the cost at concurrency 1).
CAPTIONING_BATCHING = {"preferred_batch_size": [8], "max_queue_delay_microseconds": 500000}

#: How the captioning step can run, from the first model a user writes to the course's fastest
#: (notebook 10 and `make bench` measure them; `captioning_config` takes each dict):
CAPTIONING_VARIANTS = {
    # one model.generate() per image, transformers' eager attention, no dynamic batching
    "naive": dict(strategy="generate_per_image", attention="eager"),
    # Triton batches requests; one generate() per prompt length (each caption as alone)
    "batched": dict(strategy="generate_per_prompt_length", attention="eager",
                    dynamic_batching=CAPTIONING_BATCHING),
    # the vision encoder with fused attention, then one text-decoder generate() per batch
    "fastest": dict(strategy="encode_then_decode", attention="sdpa",
                    dynamic_batching=CAPTIONING_BATCHING),
    # opt-in, reduced precision: captions may differ from float32's (reported, never served)
    "fastest_bfloat16": dict(strategy="encode_then_decode", attention="sdpa",
                             dtype="bfloat16", dynamic_batching=CAPTIONING_BATCHING),
}
#: Variants whose captions must equal eager float32 PyTorch's (the tests check it).
EXACT_VARIANTS = ("naive", "batched", "fastest")
SERVED_CAPTIONING = "fastest"

#: Why the committed configs are as they are, written into each file as comments.
COURSE_NOTES = {
    "food_classifier": (
        "Threads: cpu_share 0.5. The served repository also runs conditional_captioning, and\n"
        "the food_captioning ensemble runs both models at the same time. A caption costs far\n"
        "more than a label, so the captioner gets every core and this model half of them (see\n"
        "ENSEMBLE_CPU_SHARE in tritonlab/serving/configs.py for what was measured). Measuring\n"
        "the classifier alone, notebooks 02-06 give it every core (cpu_share 1)."),
    "conditional_captioning": (
        "Threads: cpu_share 1, every core: a caption costs far more than a label, so the\n"
        "classifier beside it in the food_captioning ensemble gets half the cores (see\n"
        "that model's config; notebook 10 prints both steps' compute times).\n"
        "Variant: 'fastest' of tritonlab.serving.configs.CAPTIONING_VARIANTS, with dynamic\n"
        "batching that waits up to 500 ms for a batch of 8 (notebook 10 measures it against\n"
        "the naive variant; CAPTIONING_BATCHING says why 500 ms)."),
    "food_captioning": (
        "The two steps run at the same time on different requests: their configs share the\n"
        "machine's cores by the work each does (cpu_share 1 for captioning, 0.5 for the\n"
        "classifier). Ensembles take no model_warmup: their steps are warmed up by their own\n"
        "configs."),
}


def ensemble_steps(split: bool = True, captioning: str = SERVED_CAPTIONING,
                   shares: dict[str, float] | None = None) -> dict[str, mc.ModelConfig]:
    """The configs of the food_captioning ensemble's two steps, keyed by model name.

    `split`: the machine's cores shared between the steps as served (ENSEMBLE_CPU_SHARE, or
    `shares`); otherwise each step's runtime takes every core, as PyTorch does by default, and
    the two pools, running at once, claim twice the cores there are. `captioning` names the
    captioning step's variant in CAPTIONING_VARIANTS.
    """
    share = (shares or ENSEMBLE_CPU_SHARE) if split else {n: 1.0 for n in ENSEMBLE_CPU_SHARE}
    return {
        "food_classifier": classifier_config(cpu_share=share["food_classifier"]),
        "conditional_captioning": captioning_config(
            cpu_share=share["conditional_captioning"], **CAPTIONING_VARIANTS[captioning])}


def course_configs() -> dict[str, mc.ModelConfig]:
    """The configs committed in model_repository/, keyed by model name: what `make serve`
    serves, all models at once (see COURSE_NOTES for the thread split)."""
    configs = {**ensemble_steps(split=True), "food_captioning": ensemble_config()}
    check_ensemble(configs["food_captioning"], configs)
    return configs


def fitted_ensembles(repository: Path | str, changed: str) -> list[mc.ModelConfig]:
    """The course's ensembles in `repository` that use model `changed` as a step and whose
    config on disk no longer fits their steps' configs on disk: each returned with its
    committed config and a max_batch_size of at most every step's (the committed one again
    when all steps allow it). Triton unloads an ensemble whose max_batch_size exceeds a step's
    and does not load it again (server 2.51: "ensemble food_captioning allows maximum batch size
    8, but it contains model food_classifier which only allows maximum batch size to be 1"), so
    whatever writes a step's config writes these too (`deploy.deploy`, `make serve`)."""
    repository = Path(repository)
    fitted = []
    for name, committed in course_configs().items():
        steps = [s.model_name for s in committed.ensemble_scheduling.step]
        path = repository / name / "config.pbtxt"
        if committed.platform != "ensemble" or changed not in steps or not path.exists():
            continue
        step_sizes = [read_config(repository / s / "config.pbtxt").max_batch_size
                      for s in steps if (repository / s / "config.pbtxt").exists()]
        wanted = min([committed.max_batch_size, *[m for m in step_sizes if m > 0]])
        if read_config(path).max_batch_size != wanted:
            cfg = mc.ModelConfig()
            cfg.CopyFrom(committed)
            cfg.max_batch_size = wanted
            fitted.append(cfg)
    return fitted


def course_source(name: str) -> str:
    """How the committed config of `name` is built, for its banner."""
    return f"tritonlab.serving.configs.course_configs()['{name}']"


def write_course_configs(repository: Path | str | None = None) -> list[Path]:
    """Regenerate every committed config.pbtxt, its warm-up files, and the copies of shared
    model code (`make configs`); returns the configs' and the copies' paths."""
    from ..assets.repository import write_shared_code

    paths = [write_config(cfg, repository, source=course_source(name), notes=COURSE_NOTES[name])
             for name, cfg in course_configs().items()]
    return paths + write_shared_code(Path(repository) if repository else None)


def remove_stray_models(repository: Path | str | None = None) -> list[tuple[str, Path]]:
    """Move out of the repository every folder that is not one of the course's models (a
    config saved under another name, the onnxruntime-backend folders notebook 05 writes on the
    GPU node), so that Triton sees the committed repository again: into
    `build/removed-models/` beside the repository, nothing deleted. Returns (folder, where it
    went) for each (`make configs` prints them)."""
    import shutil
    import time

    repo = Path(repository or settings.model_repository())
    keep = set(course_configs())
    moved = []
    for folder in sorted(p for p in repo.iterdir() if p.is_dir() and p.name not in keep
                         and not p.name.startswith(".")):
        target = (repo.parent / "build" / "removed-models"
                  / f"{folder.name}-{time.strftime('%Y%m%d-%H%M%S')}")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(folder), target)
        moved.append((folder.name, target))
    return moved


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
    add_instance_groups(cfg, instance_groups or [{"count": 1, "kind": "KIND_GPU"}])
    set_dynamic_batching(cfg, dynamic_batching)
    if tensorrt:
        accel = cfg.optimization.execution_accelerators.gpu_execution_accelerator.add(
            name="tensorrt")
        accel.parameters["precision_mode"] = "FP16" if fp16 else "FP32"
        accel.parameters["max_workspace_size_bytes"] = str(1 << 30)
    return cfg
