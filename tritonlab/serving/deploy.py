"""Make Triton use a config variant: write config.pbtxt, show the diff, reload or restart."""

from __future__ import annotations

from pathlib import Path

from tritonclient.grpc import model_config_pb2 as mc

from ..common import log
from . import configs, devices


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
    """
    if how not in ("reload", "restart"):
        raise ValueError("how must be 'reload' or 'restart'")
    gpu_count = devices.gpu_count() if gpu_count is None else gpu_count
    path = server.model_repository / cfg.name / "config.pbtxt"
    before = configs.read_config(path) if path.exists() else None
    configs.validate(cfg, folder=path.parent)
    changes = configs.diff(before, cfg)
    log.info(f"{path.relative_to(server.model_repository.parent)}: "
             + ("\n" + changes if changes else "unchanged"))
    configs.write_config(cfg, server.model_repository, source=source, regenerate=regenerate,
                         notes=notes)
    runnable, note = configs.for_this_machine(cfg, gpu_count)
    if note:
        log.info(note)
    stopped = how == "reload" and not server.is_running()
    if stopped:
        log.info(f"Triton is not running: '{cfg.name}' is served with this file when it starts")
        seconds = 0.0
    elif how == "reload":
        seconds = server.reload_model(cfg.name, config=runnable)
        # What this machine ran from the file before (a GPU config runs as its CPU copy here).
        unchanged_here = (before is not None
                          and configs.for_this_machine(before, gpu_count)[0] == runnable)
        if unchanged_here and seconds < 0.5:  # Triton reloads only a config that changed
            log.info(f"'{cfg.name}': the same config as before on this machine, so Triton kept "
                     f"the model it serves (answered in {seconds:.1f} s, nothing reloaded)")
            return seconds
    elif note:
        # The file names GPUs this machine lacks: restart without it, then load the CPU copy.
        others = sorted(d.name for d in server.model_repository.iterdir()
                        if (d / "config.pbtxt").exists() and d.name != cfg.name)
        seconds = server.restart(models=others, timeout=180)
        seconds += server.reload_model(cfg.name, config=runnable)
    else:
        seconds = server.restart(timeout=180)
    if not stopped:
        log.info(f"'{cfg.name}' ready after {how}: {seconds:.1f} s")
    for ensemble in configs.fitted_ensembles(server.model_repository, cfg.name):
        log.info(f"'{ensemble.name}' uses '{cfg.name}' as a step: its max_batch_size becomes "
                 f"{ensemble.max_batch_size} so that Triton keeps serving it")
        seconds += deploy(server, ensemble, how="reload", source=configs.course_source(
            ensemble.name), regenerate="make configs", notes=configs.COURSE_NOTES[ensemble.name])
    return seconds


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
