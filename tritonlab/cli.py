"""Command line behind the Makefile: `python -m tritonlab <command>`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import settings


def _prepare(args) -> int:
    from .assets import blip, samples, weights
    from .serving import configs

    samples.sample_images()
    inputs = samples.write_perf_inputs()
    print(f"perf_analyzer inputs: {', '.join(str(p) for p in inputs.values())}")
    weights.ensure_weights(source=args.source)
    blip.ensure_blip(source=args.source)
    for path in configs.write_course_configs():
        print(f"config: {path}")
    return 0


def _weights(args) -> int:
    import os

    from .assets import weights

    meta = weights.current()
    force = meta is None or meta.get("stand_in") or "FOOD11_WEIGHTS" in os.environ
    weights.ensure_weights(force=bool(force))
    return 0


def _configs(args) -> int:
    from .serving import configs

    for path in configs.write_course_configs():
        print(f"wrote {path}")
    for name, where in configs.remove_stray_models():
        print(f"moved {name}/ out of the model repository (not one of the course's models), "
              f"to {where}")
    return 0


def _serve(args) -> int:
    from .assets import weights
    from .serving import ServerError, configs, deploy
    from .serving.embedded import EmbeddedTriton

    try:  # a wrong name is said before anything else is looked at
        configs.classifier_variant(args.variant)
    except configs.ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    meta = weights.current()
    if meta is None:
        print("No Food-11 weights yet: run `make weights` first.", file=sys.stderr)
        return 1
    server = EmbeddedTriton(attach=False)
    server.started_by = "`make serve`"
    held = server.holder()  # a notebook's Triton is left alone, before any config is written
    if held is not None and held.get("attached", True):  # (an earlier `make serve`'s is replaced)
        print(server.busy_message(held), file=sys.stderr)
        return 1
    cfg, banner = deploy.prepare_variant(args.variant, server.model_repository)
    path = configs.write_config(cfg, server.model_repository, **banner)
    for ensemble in configs.fitted_ensembles(server.model_repository, cfg.name):
        configs.write_config(ensemble, server.model_repository,
                             source=configs.course_source(ensemble.name),
                             regenerate="make configs", notes=configs.COURSE_NOTES[ensemble.name])
        print(f"{ensemble.name}: max_batch_size {ensemble.max_batch_size}, to fit '{cfg.name}'")
    print(f"food_classifier: variant '{args.variant}' ({path})"
          + ("" if args.variant == "baseline" else
             "; `make configs` puts the committed baseline back"))
    try:
        seconds = server.start(timeout=args.timeout)
    except ServerError as exc:  # no server left in the background when it failed to start
        server.stop()
        print(f"Triton did not start, and nothing is left running:\n{exc}", file=sys.stderr)
        return 1
    print(f"Triton is ready ({seconds:.1f} s), running in the background (pid "
          f"{server.recorded()['pid']}).")
    print(f"  HTTP     http://{server.http_url}   (e.g. curl http://{server.http_url}/v2/health/ready)")
    print(f"  gRPC     {server.grpc_url}")
    print(f"  metrics  {server.metrics_url}")
    print(f"  log      {server.log_file}")
    print("Stop it with `make stop`.")
    if meta.get("stand_in"):
        print(weights.BANNER)
    return 0


def _stop(args) -> int:
    from .serving.embedded import EmbeddedTriton

    record = EmbeddedTriton().stop_any()
    print(f"Stopped Triton (pid {record['pid']}, started by {record.get('by') or '?'})."
          if record else "No Triton was running.")
    return 0


def _status(args) -> int:
    from .serving.embedded import EmbeddedTriton

    server = EmbeddedTriton()
    record = server.recorded()
    if not record:
        print("No Triton is running from this checkout.")
        return 1
    print(f"Triton pid {record['pid']}, started {record['started']} by "
          f"{record.get('by') or '?'}; ready: {server.is_ready()}\n{server.describe()}")
    return 0


def _logs(args) -> int:
    from .serving.embedded import EmbeddedTriton

    EmbeddedTriton().show_logs(args.lines)
    return 0


def _lab(args) -> int:
    from .lab import NotebookFailed, run_course

    try:
        run_course(args.notebooks or None, quick=not args.full)
    except NotebookFailed as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


def _handin(args) -> int:
    from .handin import HandinError, build

    try:
        bundle = build(out_dir=args.out)
    except HandinError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(bundle.summary())
    return 0


def _bench(args) -> int:
    from .measuring import bench

    bench.run(repeats=args.repeats, window_ms=args.window_ms, load_seconds=args.load_seconds)
    return 0


def _gpu_check(args) -> int:
    from . import gpu_check

    return gpu_check.run(args)


def _node_check(args) -> int:
    from .node.check import NodeCheck

    check = NodeCheck(short=args.short, images_only=args.images_only,
                      notebooks=args.notebooks or None)
    return 1 if check.run() else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tritonlab", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="sample images, perf inputs, weights, configs")
    p.add_argument("--source", help="'stand-in' builds offline stand-ins for missing weights "
                                    "(default: FOOD11_WEIGHTS / BLIP_WEIGHTS, else the real ones)")
    p.set_defaults(func=_prepare)
    sub.add_parser("weights", help="fetch the Food-11 weights again (a stand-in is replaced)"
                   ).set_defaults(func=_weights)
    sub.add_parser("configs", help="regenerate the committed config.pbtxt files"
                   ).set_defaults(func=_configs)
    p = sub.add_parser("serve", help="start Triton in the background on 127.0.0.1")
    p.add_argument("--timeout", type=float, default=180)
    p.add_argument("--variant", default="baseline",
                   help="the classifier variant to serve: baseline (committed), fastest, or "
                        "analyzer (the best configuration of the last Model Analyzer search)")
    p.set_defaults(func=_serve)
    sub.add_parser("stop", help="stop the background Triton").set_defaults(func=_stop)
    sub.add_parser("status", help="is Triton running?").set_defaults(func=_status)
    p = sub.add_parser("logs", help="the last lines of Triton's log")
    p.add_argument("-n", "--lines", type=int, default=40)
    p.set_defaults(func=_logs)
    p = sub.add_parser("lab", help="execute the notebooks headless")
    p.add_argument("notebooks", nargs="*", help=f"default: every notebook in {settings.NOTEBOOKS}")
    p.add_argument("--full", action="store_true", help="full measurement windows, not quick mode")
    p.set_defaults(func=_lab)
    p = sub.add_parser("handin", help="one zip to hand in: executed notebooks, figures, results "
                                      "table, answers, and the machine and mode they ran on")
    p.add_argument("--out", type=Path, default=None,
                   help="folder for the archive (default: build/handin/, beside the lab output)")
    p.set_defaults(func=_handin)
    p = sub.add_parser("bench", help="speed and memory figures against the course's targets")
    p.add_argument("--repeats", type=int, default=3, help="runs per figure (median reported)")
    p.add_argument("--window-ms", type=int, default=3000, help="perf_analyzer window")
    p.add_argument("--load-seconds", type=int, default=60,
                   help="length of each load run (concurrency 32 and 8)")
    p.set_defaults(func=_bench)
    p = sub.add_parser("gpu-check", help="on a machine with an NVIDIA GPU: the GPU variants "
                       "served and measured, one report (--prepare: what it needs there)")
    from . import gpu_check  # standard library only at import: runs on any Python

    gpu_check.add_arguments(p)
    p.set_defaults(func=_gpu_check)
    p = sub.add_parser("node-check", help="the GPU node's container path for real, without a GPU: "
                       "both images built, compose up, the notebooks in Docker mode, one report")
    p.add_argument("--short", action="store_true",
                   help="CI's slice: notebook 01 and a restart instead of every notebook")
    p.add_argument("--images-only", action="store_true",
                   help="only the engine, the base images and both images (standard library "
                        "only: runs before the course's environment exists)")
    p.add_argument("--notebooks", nargs="*", help="only these notebooks (file names)")
    p.set_defaults(func=_node_check)
    args = parser.parse_args(argv)
    return args.func(args)
