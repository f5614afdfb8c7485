"""Make Triton use a config variant: write config.pbtxt, show the diff, reload or restart."""

from __future__ import annotations

from pathlib import Path

from tritonclient.grpc import model_config_pb2 as mc

from ..common import atomic_write, log
from . import configs, devices
from .server import ServerError


def deploy(server, cfg: mc.ModelConfig, how: str = "reload", source: str = "a course notebook",
           gpu_count: int | None = None,
           regenerate: str = "rerun the notebook cell that wrote it (`make configs` restores the "
                             "baseline)", notes: str = "") -> float:
    """Write `cfg` into the served repository, show the diff, apply it; returns seconds to ready.

    `how` is 'reload' (explicit model control: only this model is reloaded) or 'restart' (the
    whole server, as after editing config.pbtxt by hand). A GPU config on a machine without
    the GPUs it names is written as is and loaded with CPU instances, with a note saying so.
    A reload while Triton is stopped only writes the file (returns 0.0, and says so): Triton
    reads it when it next starts, so putting a config back after `server.stop()` costs no load.

    What is on disk stays what Triton serves: ConfigError, before anything is written, when
    the repository has no model folder named `cfg.name` (a config names its own folder); when
    Triton refuses the config (ModelLoadError, ServerNotReady), the previous config.pbtxt is
    put back before the error is raised, and after a refused restart Triton is brought back
    with it (a refused reload leaves Triton serving what it served: it keeps a loaded model
    whose new config fails).
    """
    if how not in ("reload", "restart"):
        raise ValueError("how must be 'reload' or 'restart'")
    server.check_held()  # another session's Triton: nothing written, nothing reloaded
    gpu_count = devices.gpu_count() if gpu_count is None else gpu_count
    folder = server.model_repository / cfg.name
    if not folder.is_dir():
        models = sorted(d.name for d in server.model_repository.iterdir()
                        if (d / "config.pbtxt").is_file())
        raise configs.ConfigError(
            f"The repository has no model folder '{cfg.name}' (its models: {', '.join(models)}):"
            " the name in config.pbtxt must be the folder's, the model being changed. Nothing "
            "was written.")
    path = folder / "config.pbtxt"
    before = configs.read_config(path) if path.exists() else None
    previous = path.read_bytes() if path.exists() else None
    configs.validate(cfg, folder=folder)
    changes = configs.diff(before, cfg)
    log.info(f"{path.relative_to(server.model_repository.parent)}: "
             + ("\n" + changes if changes else "unchanged"))
    configs.write_config(cfg, server.model_repository, source=source, regenerate=regenerate,
                         notes=notes)
    runnable, note = configs.for_this_machine(cfg, gpu_count)
    if note:
        log.info(note)
    try:
        seconds, kept = _apply(server, cfg.name, runnable, note, how, before, gpu_count)
    except ServerError as exc:
        raise type(exc)(f"{exc}\n{_put_back(server, path, previous, cfg.name, how)}") from None
    if kept:  # the same config as before: nothing reloaded
        return seconds
    for ensemble in configs.fitted_ensembles(server.model_repository, cfg.name):
        log.info(f"'{ensemble.name}' uses '{cfg.name}' as a step: its max_batch_size becomes "
                 f"{ensemble.max_batch_size} so that Triton keeps serving it")
        seconds += deploy(server, ensemble, how="reload", source=configs.course_source(
            ensemble.name), regenerate="make configs", notes=configs.COURSE_NOTES[ensemble.name])
    return seconds


def expected_config(server, model: str) -> mc.ModelConfig | None:
    """What `model` on `server` should serve: the config this object last loaded for it
    (`TritonServer.loaded_configs`: every reload, `deploy`'s included), else its config.pbtxt
    as this machine runs it (`configs.for_this_machine`: what a start loads); None when
    neither exists, or `server` is not a Triton this process drives (a load balancer)."""
    loaded = getattr(server, "loaded_configs", None)
    if loaded is None:
        return None
    if model in loaded:
        return loaded[model]
    path = Path(server.model_repository) / model / "config.pbtxt"
    if not path.exists():
        return None
    return configs.for_this_machine(configs.read_config(path), devices.gpu_count())[0]


def _what_the_course_changes(cfg: mc.ModelConfig) -> dict:
    """The settings the course's variants differ in, in a form Triton's own copy of the config
    (with its defaults filled in) shares."""
    batching = cfg.dynamic_batching
    policy = batching.default_queue_policy
    return {
        "max_batch_size": cfg.max_batch_size,
        # kinds and counts: Triton fills in the GPUs of a KIND_GPU group that names none
        "instance_group": sorted((mc.ModelInstanceGroup.Kind.Name(g.kind), g.count or 1)
                                 for g in cfg.instance_group),
        # with none given, Triton fills in max_batch_size as the preferred batch size
        "dynamic_batching": (
            (list(batching.preferred_batch_size) or [cfg.max_batch_size],
             batching.max_queue_delay_microseconds,
             policy.max_queue_size, policy.default_timeout_microseconds)
            if cfg.HasField("dynamic_batching") else None),
        "response_cache": cfg.response_cache.enable,
        "parameters": {k: v.string_value for k, v in sorted(cfg.parameters.items())},
    }


def served_mismatch(server, model: str, expected: mc.ModelConfig | None) -> str | None:
    """How the config Triton serves for `model` (asked of Triton itself) differs from
    `expected` in what the course changes (`_what_the_course_changes`): '' when it agrees,
    None when either cannot be read (then nothing can be checked)."""
    from google.protobuf import json_format

    served_json = server.model_config(model)
    if expected is None or not served_json:
        return None
    try:
        served = json_format.ParseDict(served_json, mc.ModelConfig(), ignore_unknown_fields=True)
    except json_format.ParseError:
        return None
    want, got = _what_the_course_changes(expected), _what_the_course_changes(served)
    if any(kind == "KIND_AUTO" for kind, _ in want["instance_group"]):  # Triton chose the kind
        want["instance_group"] = sum(n for _, n in want["instance_group"])
        got["instance_group"] = sum(n for _, n in got["instance_group"])
    return "; ".join(f"{key}: served {got[key]}, deployed {want[key]}"
                     for key in want if want[key] != got[key])


def _apply(server, name: str, runnable: mc.ModelConfig, note: str, how: str,
           before: mc.ModelConfig | None, gpu_count: int) -> tuple[float, bool]:
    """Make Triton serve the config just written: (seconds to ready, whether Triton kept the
    model it served because the config is the same as before on this machine)."""
    if how == "reload" and not server.is_running():
        log.info(f"Triton is not running: '{name}' is served with this file when it starts")
        return 0.0, False
    if how == "reload":
        seconds = server.reload_model(name, config=runnable)
        # What this machine ran from the file before (a GPU config runs as its CPU copy here).
        unchanged_here = (before is not None
                          and configs.for_this_machine(before, gpu_count)[0] == runnable)
        if unchanged_here and seconds < 0.5:  # Triton reloads only a config that changed
            log.info(f"'{name}': the same config as before on this machine, so Triton kept "
                     f"the model it serves (answered in {seconds:.1f} s, nothing reloaded)")
            return seconds, True
    elif note:
        # The file names GPUs this machine lacks: restart without it, then load the CPU copy.
        others = sorted(d.name for d in server.model_repository.iterdir()
                        if (d / "config.pbtxt").exists() and d.name != name)
        seconds = server.restart(models=others, timeout=180)
        seconds += server.reload_model(name, config=runnable)
    else:
        seconds = server.restart(timeout=180)
    log.info(f"'{name}' ready after {how}: {seconds:.1f} s")
    return seconds, False


def _put_back(server, path: Path, previous: bytes | None, name: str, how: str) -> str:
    """After Triton refused the config just written: the previous file back (or none, as
    before), Triton serving it again; returns what was done, for the error message."""
    if previous is None:
        path.unlink(missing_ok=True)
        done = f"{path} was removed again: there was none before"
    else:
        atomic_write(path, previous)
        done = f"The previous {path.name} of '{name}' was put back"
    if how == "reload" and server.is_ready():
        return done + ", the config Triton still serves."
    try:  # a refused restart: Triton down, or up without this model
        if server.is_running() and server.is_live():
            seconds = server.reload_model(name)
        else:
            seconds = server.restart(timeout=180)
        return done + f", and Triton serves it again ({seconds:.0f} s)."
    except ServerError as again:
        return done + f"; Triton did not come back with it either:\n{again}"


def edit(server, text: str, how: str = "reload", gpu_count: int | None = None) -> float:
    """Serve a config written by hand: `text` is config.pbtxt as a student types it.

    Parsed as Triton parses the file (`configs.parse`: a typo raises ConfigError with its line,
    column and the names the schema allows there), checked like the course's own configs
    (`configs.validate`), then written, diffed against the file on disk and applied as `deploy`
    does; returns seconds to ready. Nothing is written when the text is refused."""
    cfg = configs.parse(text)
    if not cfg.name:
        raise configs.ConfigError("config.pbtxt needs a name: the model's folder name, e.g. "
                                  'name: "food_classifier"')
    return deploy(server, cfg, how=how, source="text edited in a notebook", gpu_count=gpu_count,
                  regenerate="edit the text in the notebook again, or `make configs` for the "
                             "course's own")


def restore_baseline(server, name: str = "food_classifier") -> float:
    """Put a model's committed config back (end of each notebook) and reload it."""
    return deploy(server, configs.course_configs()[name], how="reload",
                  source=configs.course_source(name), regenerate="make configs",
                  notes=configs.COURSE_NOTES[name])


def prepare_variant(name: str, repository) -> tuple[mc.ModelConfig, dict]:
    """food_classifier's config for the named variant (configs.CLASSIFIER_VARIANTS), with what it
    needs in its model folder made first (the ONNX export for an ONNX Runtime variant, written
    again from the weights: half a second), and the banner its config.pbtxt gets (`source`,
    `regenerate`). Raises ConfigError for an unknown name."""
    from ..assets import onnx_export

    cfg = configs.classifier_variant(name)
    runtime = cfg.parameters["runtime"].string_value if "runtime" in cfg.parameters else ""
    if runtime == "onnxruntime":
        onnx_export.export_onnx(Path(repository) / cfg.name / "1")
    return cfg, {"source": f"the classifier variant '{name}'",
                 "regenerate": "`make configs` puts the committed baseline back"}


def serve_variant(server, name: str, how: str = "reload") -> float:
    """Serve food_classifier as the named variant (`prepare_variant`); returns seconds to
    ready. The ensemble and the API use whatever food_classifier serves. Raises ConfigError
    for an unknown name."""
    cfg, banner = prepare_variant(name, server.model_repository)
    log.info(f"serving food_classifier as variant '{name}'")
    return deploy(server, cfg, how=how, **banner)
