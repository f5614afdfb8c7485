"""`make gpu-check`: the course's GPU variants served and measured on this machine's GPU, in one
report.

For the day a machine with an NVIDIA GPU is at hand for a few minutes, with no network and no
Docker. One command (`python -m tritonlab gpu-check`), idempotent, meant to end within 8 minutes:

1. `nvidia-smi` says which GPUs there are. With none, the report says so and the command exits
   0 (`--run-without-gpu` measures anyway, every variant on CPU instances: a test of the check
   itself).
2. What this Python lacks (the server, perf_analyzer, tritonclient, a few small packages, and
   NumPy 1.26 for the model processes) is installed without network from the bundle that
   `make gpu-check-bundle` prepared (tritonlab.gpu_bundle) into build/gpu-check/env/. A Python
   that has them all already (the course's .venv) uses its own.
3. A second process, on that environment, starts the embedded Triton 2.51 on a private copy of
   the model repository (stand-in weights where the trained ones are absent: the speed is the
   same) and, for the CPU baseline of notebook 02 and each GPU variant of notebooks 02 to 05,
   loads it, records where each instance landed (Triton's log, the model's own line, nvidia-smi's
   process list) and measures one perf_analyzer level while sampling each GPU's utilization and
   memory (Triton's metrics and nvidia-smi).
4. One report, `gpu-check.json` and the same in words as `gpu-check.md`, goes to $OUT when that
   is set, else to build/gpu-check/, beside Triton's log: the GPU seen, whether the server and
   the model processes see CUDA, where each instance ran, throughput against the CPU baseline,
   and every error. A failed step is recorded and the steps after it still run.

Exit status: 0 without a GPU or when every step passed; 1 when the report lists errors. Only the
standard library is imported at the top, so steps 1, 2 and 4 run on any Python 3.10+.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from . import gpu_bundle, settings

REPORT_JSON = "gpu-check.json"
REPORT_MD = "gpu-check.md"
MEASURE_LOG = "gpu-check-measure.log"
SERVER_LOG = "tritonserver.log"
#: Bytes of each log copied beside the report (the end of it).
LOG_LIMIT = 2 * 2**20
#: Seconds the measuring stage may take; installing and the report add well under a minute.
DEFAULT_BUDGET_S = 360
#: A variant is not started with less time than this left (loading plus one level).
VARIANT_MIN_S = 50
MODEL = "food_classifier"
DEFAULT_WORK = settings.ROOT / "build" / "gpu-check"
#: Notebook 03's (and 05's) dynamic batching.
BATCHING = {"preferred_batch_size": [4, 8], "max_queue_delay_microseconds": 5000}
#: Lines of Triton's log that tell whether it found CUDA and GPU metrics.
CUDA_LINES = re.compile(r"CUDA|GPU|NVML|DCGM|[Pp]inned memory")
SEES_CUDA = re.compile(r"CUDA memory pool is created on device|Collecting metrics for GPU")


def log(message: str) -> None:
    print(f"[gpu-check] {message}", flush=True)


# --- nvidia-smi ---------------------------------------------------------------------------------
GPU_FIELDS = ("index", "name", "uuid", "driver_version", "memory.total", "compute_cap")
UTIL_FIELDS = ("uuid", "utilization.gpu", "memory.used")
APP_FIELDS = ("pid", "process_name", "used_memory", "gpu_uuid")


def nvidia_smi(args: Sequence[str], timeout: float = 20) -> tuple[int, str]:
    """Run nvidia-smi with `args`: (exit status, output); (127, why) where it is not on PATH."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return 127, "nvidia-smi is not on PATH"
    try:
        proc = subprocess.run([exe, *args], capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return 1, f"nvidia-smi failed: {exc}"
    return proc.returncode, (proc.stdout + proc.stderr).strip()


def csv_rows(text: str, fields: Sequence[str]) -> list[dict[str, str]]:
    """nvidia-smi's `--format=csv,noheader,nounits` output as dicts; other lines are skipped."""
    rows = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.split(",")]
        if len(cells) == len(fields):
            rows.append(dict(zip(fields, cells)))
    return rows


def query_gpus() -> dict:
    """The GPUs nvidia-smi sees: {'present', 'reason' (when none), 'list' (`nvidia-smi -L`),
    'gpus': [{index, name, uuid, driver_version, memory.total (MiB), compute_cap}]}."""
    code, listing = nvidia_smi(["-L"])
    if code != 0 or not re.search(r"^GPU \d+:", listing, re.M):
        return {"present": False, "gpus": [],
                "reason": listing or f"`nvidia-smi -L` exited with {code} and printed nothing"}
    fields = list(GPU_FIELDS)
    code, out = nvidia_smi([f"--query-gpu={','.join(fields)}", "--format=csv,noheader,nounits"])
    if code != 0:  # drivers before compute_cap was a field
        fields.remove("compute_cap")
        code, out = nvidia_smi([f"--query-gpu={','.join(fields)}",
                                "--format=csv,noheader,nounits"])
    return {"present": True, "list": listing, "gpus": csv_rows(out, fields) if code == 0 else [],
            **({} if code == 0 else {"query_error": out})}


def gpu_processes() -> list[dict[str, str]]:
    """Processes holding GPU memory: pid, process_name, used_memory (MiB), gpu_uuid."""
    code, out = nvidia_smi([f"--query-compute-apps={','.join(APP_FIELDS)}",
                            "--format=csv,noheader,nounits"])
    return csv_rows(out, APP_FIELDS) if code == 0 else []


def gpu_use() -> list[dict[str, str]]:
    """Each GPU's utilization (%) and memory used (MiB) now, by uuid."""
    code, out = nvidia_smi([f"--query-gpu={','.join(UTIL_FIELDS)}",
                            "--format=csv,noheader,nounits"])
    return csv_rows(out, UTIL_FIELDS) if code == 0 else []


# --- the report ---------------------------------------------------------------------------------
def report_dir(out: Path | None = None) -> Path:
    """Where the report goes: `out`, else $OUT when set, else build/gpu-check/."""
    if out:
        return Path(out)
    if os.environ.get("OUT"):
        return Path(os.environ["OUT"])
    return DEFAULT_WORK


def _machine() -> dict:
    try:
        memory = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        memory = None
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")),
                       cpu)
    except OSError:
        pass
    return {"hostname": platform.node(), "python": platform.python_version(),
            "executable": sys.executable, "cores": os.cpu_count(), "cpu": cpu,
            "memory_gib": memory, "platform": platform.platform()}


def _commit() -> str | None:
    """The checkout's commit, with how many tracked files differ from it (a copied tree can
    carry an older `.git` than its files)."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=settings.ROOT,
                             capture_output=True, text=True, timeout=10)
        changed = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                 cwd=settings.ROOT, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip() if out.returncode == 0 else ""
    if not commit:
        return None
    n = len(changed.stdout.splitlines()) if changed.returncode == 0 else 0
    return f"{commit} (+{n} changed file{'s' if n != 1 else ''})" if n else commit


def command_line(args: argparse.Namespace) -> str:
    """The check's command as a user would type it (options that differ from the defaults)."""
    parts = ["python -m tritonlab gpu-check"]
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    for action in parser._actions:
        if action.help == argparse.SUPPRESS or action.dest in ("help", "prepare", "pythons"):
            continue
        value = getattr(args, action.dest, action.default)
        if value is None or str(value) == str(action.default):
            continue
        flag = action.option_strings[-1]
        parts.append(flag if isinstance(action, argparse._StoreTrueAction) else f"{flag} {value}")
    return " ".join(parts)


def new_report(args: argparse.Namespace) -> dict:
    return {"report": "tritonlab GPU check", "format": 1,
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": command_line(args),
            "commit": _commit(), "machine": _machine(), "errors": [], "variants": [],
            "not_run": []}


#: The course's errors, whose messages say what happened and what to do: no traceback needed.
EXPLAINED = {"BundleError", "PerfError", "ServerError", "ServerNotReady", "ModelLoadError",
             "PortInUseError", "ConfigError", "WeightsError"}


def add_error(report: dict, step: str, error: BaseException | str) -> None:
    """Record a failed step (the check goes on with the others)."""
    text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    entry = {"step": step, "error": text[:4000]}
    if isinstance(error, BaseException) and type(error).__name__ not in EXPLAINED:
        entry["traceback"] = "".join(traceback.format_exception(
            type(error), error, error.__traceback__)[-4:])[-3000:]
    report["errors"].append(entry)
    log(f"{step}: FAILED: {text.splitlines()[0] if text else ''}")


def _ms(us: Any) -> float | None:
    return None if us is None else round(float(us) / 1000, 2)


def baseline_throughput(report: dict) -> float | None:
    cpu = next((v for v in report.get("variants", []) if v.get("key") == "cpu"), None)
    return ((cpu or {}).get("perf") or {}).get("throughput")


def summary_rows(report: dict) -> list[dict]:
    """One row per measured variant: throughput, latency, against the CPU baseline, GPU use."""
    base = baseline_throughput(report)
    rows = []
    for v in report.get("variants", []):
        perf = v.get("perf") or {}
        use = v.get("gpu_use") or {}
        rate = perf.get("throughput")
        rows.append({
            "variant": v.get("label", v.get("key")), "notebook": v.get("notebook", ""),
            "instances": v.get("instances_config", ""), "ran on": where_it_ran(v),
            "infer/s": f"~{rate:.1f}" if rate and perf.get("rough") else rate,
            "vs CPU": round(rate / base, 2) if rate and base else None,
            "p50 ms": _ms(perf.get("p50_us")), "p99 ms": _ms(perf.get("p99_us")),
            "queue ms": _ms(perf.get("queue_us")), "compute ms": _ms(perf.get("compute_us")),
            "GPU util max %": use.get("max_utilization_percent"),
            "GPU memory max MiB": use.get("max_memory_used_mib"),
            "error": v.get("error", ""),
        })
    return rows


def where_it_ran(variant: dict) -> str:
    """'cuda:0 x2' etc., from the model's own start-up lines (what `model.py` chose)."""
    found: dict[str, int] = {}
    for inst in variant.get("instances", []):
        where = inst.get("model_device") or inst.get("triton_device") or "?"
        found[where] = found.get(where, 0) + 1
    placed = ", ".join(f"{k} x{n}" for k, n in sorted(found.items())) or "?"
    return f"{placed}, computing on {variant['computes_on']}" if variant.get("computes_on") \
        else placed


def _cell(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}"
    return str(value).replace("|", "/").replace("\n", " ")


def _table(rows: list[dict], columns: list[str]) -> list[str]:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(r.get(c)) for c in columns) + " |" for r in rows]
    return lines


def render_markdown(report: dict) -> str:
    """The report in words and tables (the JSON file holds the same and more)."""
    machine = report.get("machine", {})
    gpu = report.get("gpu", {})
    out = [f"# GPU check: {report.get('verdict', '?')}", "",
           f"{report.get('started', '')}, {report.get('seconds', 0):.0f} s, "
           f"`{report.get('command', '')}`"
           + (f" at commit {report['commit']}" if report.get("commit") else ""), "",
           "## Machine", "",
           f"- Python {machine.get('python')} ({machine.get('executable')}); "
           f"{machine.get('cores')} cores ({machine.get('cpu')}); "
           f"{machine.get('memory_gib')} GiB memory"]
    if gpu.get("present"):
        out.append("- GPUs (`nvidia-smi`):")
        out += [f"  - {g.get('index')}: {g.get('name')}, {g.get('memory.total')} MiB, driver "
                f"{g.get('driver_version')}, compute capability {g.get('compute_cap', '?')}, "
                f"{g.get('uuid')}" for g in gpu.get("gpus", [])] or [f"  - {gpu.get('list')}"]
    else:
        out.append(f"- **No GPU**: {gpu.get('reason', '?')}")
    bundle = report.get("bundle")
    if bundle:
        out += ["", "## The bundle (what travels to a GPU machine without network)", "",
                f"- {bundle.get('summary', '')}"]
        install = bundle.get("install") or {}
        if install:
            stub = ", ".join(install.get("stub_site", [])) or "the machine's own"
            out.append(f"- installed into {install.get('env')}"
                       + (" (kept from an earlier run)" if install.get("reused") else "")
                       + f": {', '.join(install.get('installed', [])) or 'nothing'}; NumPy for "
                       f"the model processes: {stub}")
            if install.get("from_machine"):
                out.append("- taken from the machine: " + ", ".join(
                    f"{k} {v}" for k, v in sorted(install["from_machine"].items())))
    env = report.get("model_environment")
    if env:
        torch = env.get("torch") or {}
        ort = env.get("onnxruntime") or {}
        numpy = env.get("numpy") or {}
        out += ["", "## The model processes' Python", "",
                f"- torch {torch.get('version', torch.get('error', '?'))}, CUDA "
                f"{torch.get('cuda')}, sees {len(torch.get('devices') or [])} GPU(s) "
                f"{', '.join(torch.get('devices') or [])}".rstrip(),
                f"- NumPy {numpy.get('version')} ({numpy.get('where')})",
                f"- ONNX Runtime {ort.get('version')}, providers: "
                f"{', '.join(ort.get('providers') or []) or '-'}",
                f"- torchvision {(env.get('torchvision') or {}).get('version')}, Pillow "
                f"{(env.get('PIL') or {}).get('version')}"]
    server = report.get("server")
    if server:
        out += ["", "## Triton", "",
                f"- {server.get('version', '?')} (embedded, from nvidia-pytriton), ready in "
                f"{_cell(server.get('start_s'))} s; sees CUDA: "
                f"{'yes' if server.get('sees_cuda') else 'no'}; GPU metrics: "
                + (f"{len(server['gpu_metrics'])} GPU(s)" if server.get("gpu_metrics") else "none")]
        if server.get("cuda_lines"):
            out += ["", "```", *server["cuda_lines"], "```"]
    repo = report.get("repository")
    if repo:
        out += ["", f"Weights: {repo.get('weights')}."]
    rows = summary_rows(report)
    if rows:
        level = next((v["perf"].get("concurrency") for v in report["variants"]
                      if v.get("perf")), "?")
        out += ["", f"## Throughput at concurrency {level} (one perf_analyzer level each)", ""]
        out += _table(rows, ["variant", "notebook", "instances", "ran on", "infer/s", "vs CPU",
                             "p50 ms", "p99 ms", "queue ms", "compute ms", "GPU util max %",
                             "GPU memory max MiB"])
        out += ["", "## Where each instance landed", ""]
        for v in report["variants"]:
            out.append(f"- **{v.get('label')}**: {v.get('ran_as', '')}")
            for inst in v.get("instances", []):
                mem = inst.get("gpu_memory_mib")
                out.append(f"  - {inst.get('instance')}: Triton: {inst.get('triton_device')}; "
                           f"model.py: {inst.get('model_says', '?')}"
                           + (f"; nvidia-smi: pid {inst.get('pid')}, {mem} MiB on GPU "
                              f"{inst.get('gpu')}" if mem is not None else ""))
            for proc in v.get("other_gpu_processes", []):
                out.append(f"  - {proc}")
            if v.get("note"):
                out.append(f"  - note: {v['note']}")
    if any((v.get("perf") or {}).get("rough") for v in report.get("variants", [])):
        out += ["", "~: a rough figure, from requests sent without stability windows (see "
                "Warnings)."]
    if report.get("not_run"):
        out += ["", "## Not run", ""] + [f"- {n}" for n in report["not_run"]]
    if report.get("warnings"):
        out += ["", "## Warnings", ""] + [f"- **{w['step']}**: {w['warning']}"
                                           for w in report["warnings"]]
    out += ["", "## Errors", ""]
    if report.get("errors"):
        for err in report["errors"]:
            out += [f"- **{err['step']}**: {err['error'].splitlines()[0] if err['error'] else ''}"]
            rest = err["error"].splitlines()[1:] + err.get("traceback", "").splitlines()
            if rest:
                out += ["", "  ```", *[f"  {ln}" for ln in rest[-25:]], "  ```"]
    else:
        out.append("none")
    return "\n".join(out) + "\n"


def write_report(report: dict, folder: Path) -> tuple[Path, Path]:
    """Write `gpu-check.json` and `gpu-check.md` into `folder`; returns both paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = (folder / REPORT_JSON, folder / REPORT_MD)
    for path, text in zip(paths, (json.dumps(report, indent=1, default=str) + "\n",
                                  render_markdown(report))):
        tmp = path.with_name(path.name + ".partial")
        tmp.write_text(text)
        os.replace(tmp, path)
    return paths


def verdict(report: dict, run_without_gpu: bool) -> str:
    gpu = report.get("gpu", {})
    names = ", ".join(sorted({g.get("name", "?") for g in gpu.get("gpus", [])})) or "the GPU"
    if not gpu.get("present"):
        if run_without_gpu:
            return ("no GPU: every variant ran as CPU instances (--run-without-gpu)"
                    + (f", {len(report['errors'])} error(s)" if report.get("errors") else ""))
        return "no GPU here, nothing was measured"
    if report.get("errors"):
        return f"{len(report['errors'])} error(s) on {names}"
    base = baseline_throughput(report)
    best = max((v for v in report.get("variants", []) if v.get("key") != "cpu"
                and (v.get("perf") or {}).get("throughput")),
               key=lambda v: v["perf"]["throughput"], default=None)
    if best is None:
        return f"nothing measured on {names}"
    ratio = f", {best['perf']['throughput'] / base:.1f}x the CPU baseline" if base else ""
    warned = f" ({len(report['warnings'])} warning(s))" if report.get("warnings") else ""
    return (f"passed on {names}: best GPU variant '{best['label']}' at "
            f"{best['perf']['throughput']:.0f} infer/s{ratio}{warned}")


# --- the check (any Python) -----------------------------------------------------------------
def bundle_status(bundle: Path) -> dict:
    """What the bundle folder holds, in one line (the CPU path reports it without using it)."""
    manifest = gpu_bundle.read_manifest(bundle, missing_ok=True)
    if manifest is None:
        return {"path": str(bundle), "present": False,
                "summary": f"no bundle at {bundle}: a GPU machine without network needs "
                           "`make gpu-check-bundle` run beforehand on a machine with the index"}
    return {"path": str(bundle), "present": True, "python_versions": manifest["python_versions"],
            "bytes": manifest["bundle_bytes"],
            "summary": f"bundle at {bundle} for Python {', '.join(manifest['python_versions'])}, "
                       f"{gpu_bundle.mib(manifest['bundle_bytes'])}, prepared "
                       f"{manifest['created']}; {manifest.get('budget', '')}"}


def own_environment_suffices() -> tuple[bool, str]:
    """Whether this Python runs the check as it is (the course's .venv does): the server,
    perf_analyzer, tritonclient and every package the bundle carries, and NumPy below 2."""
    missing = [w.name for w in gpu_bundle.WHEELS if not w.stub
               and not gpu_bundle.has_module(w.module)]
    if not gpu_bundle.has_module("tritonclient"):
        missing.append("tritonclient")
    try:
        spec = importlib.util.find_spec("pytriton")
    except (ImportError, ValueError):
        spec = None
    server = [Path(p) / "tritonserver" / "bin" / "tritonserver"
              for p in (spec.submodule_search_locations if spec else [])]
    if not any(p.exists() for p in server):
        missing.append("the tritonserver of nvidia-pytriton")
    if not ((Path(sys.executable).parent / "perf_analyzer").exists()
            or shutil.which("perf_analyzer")):
        missing.append("perf_analyzer")
    numpy = gpu_bundle.installed_version("numpy")
    if numpy is None or int(numpy.split(".")[0]) >= 2:
        missing.append(f"NumPy below 2 for the model processes (this Python has {numpy})")
    if missing:
        return False, "this Python lacks " + ", ".join(missing)
    return True, f"this Python ({sys.executable}) has everything the check needs"


def prepare_environment(bundle: Path, env_dir: Path, report: dict) -> dict[str, str] | None:
    """The environment variables the measuring stage runs under, installing the bundle where
    this Python lacks something; None (with the error recorded) when that cannot be done."""
    lacking = [f"{what} (`import {module}`)" for module, what in gpu_bundle.MACHINE_MODULES.items()
               if not gpu_bundle.has_module(module)]
    if lacking:
        add_error(report, "environment",
                  f"this Python ({sys.executable}) lacks {', '.join(lacking)}. The check uses the "
                  "machine's own (too large to travel): run it with a Python that has them, "
                  "e.g. `make gpu-check GPU_PYTHON=/path/to/python3`.")
        return None
    suffices, why = own_environment_suffices()
    if suffices:
        report["bundle"] = {"used": False, "summary": f"not needed: {why}"}
        return dict(os.environ)
    status = bundle_status(bundle)
    report["bundle"] = {"used": True, **status, "why": why}
    try:
        began = time.monotonic()
        log(f"{why}: installing the bundle from {bundle} into {env_dir} ...")
        done = gpu_bundle.install(bundle, env_dir)
        report["bundle"]["install"] = done
        report["bundle"]["install_s"] = round(time.monotonic() - began, 1)
        stub = ", ".join(done["stub_site"]) or "the machine's own"
        log("kept the environment installed earlier" if done.get("reused") else
            f"installed in {time.monotonic() - began:.0f} s: {len(done['installed'])} wheel(s), "
            f"NumPy for the model processes: {stub}")
    except (gpu_bundle.BundleError, OSError) as exc:
        add_error(report, "install the bundle", exc)
        return None
    return gpu_bundle.process_environment(env_dir)


def _pump(stream, sink, echo: bool) -> None:
    for line in iter(stream.readline, ""):
        sink.write(line)
        sink.flush()
        if echo:
            sys.stdout.write(line)
            sys.stdout.flush()


def _tail_copy(source: Path, target: Path, limit: int = LOG_LIMIT) -> None:
    try:
        size = source.stat().st_size
        with open(source, "rb") as f:
            f.seek(max(0, size - limit))
            target.write_bytes(f.read())
    except OSError:
        pass


def run_measure_stage(args: argparse.Namespace, env: dict[str, str], work: Path, out: Path,
                      report: dict, gpu_count: int) -> None:
    """Run the measuring stage as a process of its own (its output is shown and kept beside the
    report) and merge what it recorded, even when it failed or ran out of time."""
    work.mkdir(parents=True, exist_ok=True)
    env = {**env, "PYTHONUNBUFFERED": "1",
           "TRITONLAB_STATE_DIR": str(work / "state"),
           "TRITONLAB_RESULTS_DIR": str(work / "results"),
           "TRITONLAB_MODEL_REPOSITORY": str(work / "repository"),
           "TRITONLAB_OUTPUT_DIR": str(work / "output")}
    result_path = work / "measure.json"
    result_path.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "tritonlab.gpu_check", "--stage", "measure",
           "--workdir", str(work), "--gpus", str(gpu_count), "--budget-s", str(args.budget_s),
           "--concurrency", str(args.concurrency), "--window-ms", str(args.window_ms)]
    if args.variants:
        cmd += ["--variants", args.variants]
    limit = args.budget_s + 60
    log(f"measuring (at most {args.budget_s:.0f} s): {' '.join(cmd)}")
    out.mkdir(parents=True, exist_ok=True)
    with open(out / MEASURE_LOG, "w") as sink:
        proc = subprocess.Popen(cmd, cwd=settings.ROOT, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
        pump = threading.Thread(target=_pump, args=(proc.stdout, sink, True), daemon=True)
        pump.start()
        try:
            code = proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            code = None
            add_error(report, "measure", f"the measuring stage ran past {limit:.0f} s and was "
                      "stopped; what it recorded until then is below. Give it more time with "
                      "--budget-s, or look at its log for the step that hung.")
            _stop_group(proc)
        pump.join(10)
    try:
        result = json.loads(result_path.read_text())
    except (OSError, ValueError):
        result = {}
        add_error(report, "measure", f"the measuring stage (exit status {code}) recorded "
                  f"nothing; its output is in {out / MEASURE_LOG}.")
    for key in ("model_environment", "repository", "server", "not_run"):
        if key in result:
            report[key] = result[key]
    report["variants"] = result.get("variants", [])
    report["errors"] += result.get("errors", [])
    report["warnings"] = result.get("warnings", [])
    if code not in (0, None) and result:
        add_error(report, "measure", f"the measuring stage exited with status {code}; its "
                  f"output is in {out / MEASURE_LOG}.")
    _tail_copy(work / "state" / "tritonserver.log", out / SERVER_LOG)


def _stop_group(proc: subprocess.Popen) -> None:
    """Stop the measuring stage this check started, and its process group (its Triton gets
    SIGTERM from the kernel when it dies: EmbeddedTriton sets a parent-death signal)."""
    import signal

    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def check(args: argparse.Namespace) -> int:
    """The whole check (see the module's text); returns the exit status."""
    began = time.monotonic()
    out = report_dir(args.out)
    work = Path(args.workdir or DEFAULT_WORK / "work")
    report = new_report(args)
    gpu = report["gpu"] = query_gpus()
    if gpu["present"]:
        log("GPU(s): " + "; ".join(ln for ln in gpu["list"].splitlines() if ln.strip()))
    else:
        log(f"no GPU: {gpu['reason']}")
    if gpu["present"] or args.run_without_gpu:
        env = prepare_environment(Path(args.bundle), DEFAULT_WORK / "env", report)
        if env is not None:
            run_measure_stage(args, env, work, out, report, len(gpu["gpus"]))
    else:
        report["bundle"] = bundle_status(Path(args.bundle))
    report["seconds"] = round(time.monotonic() - began, 1)
    report["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    report["verdict"] = verdict(report, args.run_without_gpu)
    json_path, md_path = write_report(report, out)
    for row in summary_rows(report):
        log(f"{row['variant']}: {_cell(row['infer/s'])} infer/s on {row['ran on']}"
            + (f" ({row['vs CPU']}x CPU)" if row["vs CPU"] else ""))
    log(f"{report['verdict']} ({report['seconds']:.0f} s). Report: {md_path} and {json_path}")
    if not gpu["present"]:
        return 0 if not (args.run_without_gpu and report["errors"]) else 1
    return 1 if report["errors"] else 0


# --- the measuring stage (a process of its own, on the check's environment) ---------------------
@dataclass(frozen=True)
class Variant:
    """One config the check loads and measures: `key`, what the report calls it, the notebook it
    comes from, and the config."""

    key: str
    label: str
    notebook: str
    config: Any  # model_config_pb2.ModelConfig


def variants(gpu_count: int) -> list[Variant]:
    """The CPU baseline of notebook 02 and the GPU variants of notebooks 02 to 05, as those
    notebooks build them. Notebook 04's puts two instances on each of GPUs 0 and 1; with one GPU
    here, both pairs go to GPU 0 (four instances, as on the node)."""
    from .serving import configs

    second = 1 if gpu_count >= 2 else 0
    return [
        Variant("cpu", "CPU baseline: 1 instance, every core", "02",
                configs.classifier_config()),
        Variant("gpu", "GPU: 1 instance", "02 (section 6)",
                configs.classifier_config(kind="KIND_GPU", gpus=[0])),
        Variant("gpu_batching", "GPU: 1 instance + dynamic batching", "03",
                configs.classifier_config(kind="KIND_GPU", gpus=[0], dynamic_batching=BATCHING)),
        Variant("gpu_instances", "GPU: 2 instances per GPU group"
                + (" (both groups on GPU 0)" if second == 0 else ""), "04 (section 3)",
                configs.classifier_config(
                    instance_groups=[{"count": 2, "kind": "KIND_GPU", "gpus": [0]},
                                     {"count": 2, "kind": "KIND_GPU", "gpus": [second]}],
                    num_threads=1)),
        Variant("gpu_onnxruntime", "GPU: ONNX Runtime in the Python backend + batching", "05",
                configs.classifier_config(runtime="onnxruntime", kind="KIND_GPU", gpus=[0],
                                          dynamic_batching=BATCHING)),
    ]


NOT_RUN = ("notebook 05's configs for Triton's own onnxruntime backend: the embedded server of "
           "nvidia-pytriton holds only the Python backend; those run in the GPU node's container")


def instances_config(cfg) -> str:
    """'GPU [0] x2 + GPU [1] x2', 'CPU x1' from a config's instance groups."""
    from tritonclient.grpc import model_config_pb2 as mc

    parts = []
    for group in cfg.instance_group:
        kind = "GPU" if group.kind == mc.ModelInstanceGroup.KIND_GPU else "CPU"
        gpus = f" {list(group.gpus)}" if kind == "GPU" and group.gpus else ""
        parts.append(f"{kind}{gpus} x{group.count}")
    extra = []
    if cfg.HasField("dynamic_batching"):
        extra.append("batching " + "/".join(map(str, cfg.dynamic_batching.preferred_batch_size)))
    runtime = cfg.parameters["runtime"].string_value if "runtime" in cfg.parameters else "torch"
    extra.append(runtime)
    return " + ".join(parts) + f" ({', '.join(extra)})"


INSTANCE_LINE = re.compile(r"TRITONBACKEND_ModelInstanceInitialize: (\S+) \((\w+) device (\d+)\)")
MODEL_LINE = re.compile(r"^\[(\S+)\] Food-11 classifier on (\S+) on ([^,\s]+)", re.M)


def placements(log_text: str) -> list[dict]:
    """Each instance a load started, from Triton's log: the device Triton gave it and the one
    `model.py` says it chose (its start-up line)."""
    found: dict[str, dict] = {}
    for name, kind, device in INSTANCE_LINE.findall(log_text):
        found.setdefault(name, {"instance": name})["triton_device"] = f"{kind} device {device}"
    for name, runtime, device in MODEL_LINE.findall(log_text):
        entry = found.setdefault(name, {"instance": name})
        entry["model_device"] = device
        entry["model_says"] = f"{runtime} on {device}"
    return [found[k] for k in sorted(found)]


#: Run in the model processes' environment: what they will import, and what torch sees.
PROBE = r"""
import json, sys
out = {"python": sys.version.split()[0], "executable": sys.executable, "sys_path": sys.path[:6]}
for name in ("numpy", "PIL", "torchvision", "onnxruntime"):
    try:
        mod = __import__(name)
        out[name] = {"version": getattr(mod, "__version__", "?"), "where": mod.__file__}
    except Exception as exc:
        out[name] = {"error": f"{type(exc).__name__}: {exc}"}
try:
    import onnxruntime
    out["onnxruntime"]["providers"] = onnxruntime.get_available_providers()
except Exception:
    pass
try:
    import torch
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    out["torch"] = {"version": torch.__version__, "cuda": torch.version.cuda,
                    "cuda_available": torch.cuda.is_available(),
                    "devices": [torch.cuda.get_device_name(i) for i in range(n)],
                    "capabilities": [".".join(map(str, torch.cuda.get_device_capability(i)))
                                     for i in range(n)]}
except Exception as exc:
    out["torch"] = {"error": f"{type(exc).__name__}: {exc}"}
print("PROBE " + json.dumps(out))
"""


def probe_model_environment(env: dict[str, str]) -> dict:
    """What the model processes' Python imports and sees, found as a model process finds it.

    The Python backend starts each model process through `bash -c "exec <stub> ..."`
    (python_backend's stub_launcher.cc), and the stub's embedded interpreter, given no program
    name, takes the first `python3` on PATH as its own (CPython's getpath) and ignores
    PYTHONPATH (seen: none of it was on a model process's `sys.path`). The probe goes the same
    way, with `-E` to ignore PYTHONPATH too, in the environment the server passes on."""
    proc = subprocess.run(["bash", "-c", 'exec python3 -E -c "$0"', PROBE], env=env,
                          capture_output=True, text=True, timeout=300)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("PROBE ")), None)
    if line is None:
        raise RuntimeError(f"the probe of the model processes' Python failed (exit status "
                           f"{proc.returncode}): {(proc.stdout + proc.stderr).strip()[-2000:]}")
    return json.loads(line.removeprefix("PROBE "))


def environment_problems(probe: dict, gpu_count: int) -> list[str]:
    """What in the model processes' Python would make the GPU variants fail or mislead."""
    problems = []
    numpy = probe.get("numpy", {})
    if "error" in numpy:
        problems.append(f"NumPy cannot be imported there: {numpy['error']}")
    elif int(str(numpy.get("version", "0")).split(".")[0]) >= 2:
        problems.append(f"NumPy {numpy['version']} there: Triton 2.51's Python backend misreads "
                        "BYTES tensors under NumPy 2 (python_backend#384); the bundle's NumPy "
                        "1.26 should come first (its stub-python, TRITONLAB_STUB_PYTHON)")
    torch = probe.get("torch", {})
    if "error" in torch:
        problems.append(f"torch cannot be imported there: {torch['error']}")
    elif gpu_count and not torch.get("cuda_available"):
        problems.append(f"torch {torch.get('version')} there sees no GPU (CUDA "
                        f"{torch.get('cuda')}): KIND_GPU instances would run on the CPU "
                        "(backend_helpers.instance_device falls back to it)")
    return problems


def _server(repository: Path, state_dir: Path, stub_bin: str):
    """The embedded Triton on free ports, whose model processes run the `python3` in `stub_bin`
    (the bundle's stub-python: NumPy 1.26 ahead of the machine's packages) when it is given."""
    from .serving.embedded import EmbeddedTriton
    from .settings import TritonAddress

    class CheckTriton(EmbeddedTriton):
        def _environment(self) -> dict[str, str]:
            env = super()._environment()
            # Model processes start through `bash -c` (see probe_model_environment): a script
            # named by BASH_ENV would run first and could put another NumPy ahead of ours.
            env.pop("BASH_ENV", None)
            if stub_bin:  # first on PATH: the stub's interpreter takes the first python3 there
                env["PATH"] = os.pathsep.join(filter(None, [stub_bin, env.get("PATH")]))
            return env

        def model_environment(self) -> dict[str, str]:
            """The environment Triton's model processes get."""
            return self._environment()

    return CheckTriton(model_repository=repository, address=TritonAddress.free(),
                       state_dir=state_dir, exit_timeout=5)


class GpuSampler:
    """Each GPU's utilization and memory, sampled in a thread while a level is measured: from
    Triton's metrics (`nv_gpu_utilization`, `nv_gpu_memory_used_bytes`, by gpu_uuid) and from
    nvidia-smi, the highest value of each kept."""

    def __init__(self, metrics_url: str, use_smi: bool, interval: float = 0.5) -> None:
        self.metrics_url, self.use_smi, self.interval = metrics_url, use_smi, interval
        self.triton: dict[str, dict[str, float]] = {}
        self.smi: dict[str, dict[str, float]] = {}
        self.samples = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @staticmethod
    def _keep(table: dict, uuid: str, key: str, value: float) -> None:
        slot = table.setdefault(uuid, {})
        slot[key] = max(slot.get(key, value), value)

    def sample(self) -> None:
        import requests

        from .measuring.metrics import parse

        try:
            text = requests.get(self.metrics_url, timeout=2).text
            for name, labels, value in parse(text):
                uuid = labels.get("gpu_uuid")
                if uuid and name == "nv_gpu_utilization":
                    self._keep(self.triton, uuid, "utilization_percent", value * 100)
                elif uuid and name == "nv_gpu_memory_used_bytes":
                    self._keep(self.triton, uuid, "memory_used_mib", value / 2**20)
        except requests.RequestException:
            pass
        if self.use_smi and self.samples % 2 == 0:
            for row in gpu_use():
                try:
                    self._keep(self.smi, row["uuid"], "utilization_percent",
                               float(row["utilization.gpu"]))
                    self._keep(self.smi, row["uuid"], "memory_used_mib", float(row["memory.used"]))
                except ValueError:
                    pass
        self.samples += 1

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> GpuSampler:
        self._thread = threading.Thread(target=self._loop, daemon=True, name="gpu-sampler")
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(10)

    def summary(self) -> dict:
        util = [v.get("utilization_percent", 0) for v in (*self.smi.values(),
                                                           *self.triton.values())]
        mem = [v.get("memory_used_mib", 0) for v in (*self.smi.values(), *self.triton.values())]
        return {"samples": self.samples, "triton": self.triton, "nvidia_smi": self.smi,
                "max_utilization_percent": round(max(util), 1) if util else None,
                "max_memory_used_mib": round(max(mem)) if mem else None}


def instance_processes(server_pid: int | None) -> dict[int, str]:
    """Triton's model processes by pid: {pid: instance name} (the stub's arguments name it)."""
    import psutil

    found = {}
    try:
        children = psutil.Process(server_pid).children(recursive=True) if server_pid else []
    except psutil.Error:
        return found
    for child in children:
        try:
            cmd = child.cmdline()
        except psutil.Error:
            continue
        if cmd and cmd[0].endswith("triton_python_backend_stub"):
            name = next((a for a in cmd if re.fullmatch(rf"{MODEL}_\d+_\d+", a)), None)
            if name:
                found[child.pid] = name
    return found


def attach_gpu_processes(entry: dict, apps: list[dict], stubs: dict[int, str],
                         server_pid: int | None, gpus: list[dict]) -> None:
    """Add nvidia-smi's process list to a variant: memory per instance, and other holders."""
    index = {g.get("uuid"): g.get("index") for g in gpus}
    by_name = {inst["instance"]: inst for inst in entry.get("instances", [])}
    others = []
    for app in apps:
        try:
            pid = int(app["pid"])
        except (KeyError, ValueError):
            continue
        gpu = index.get(app.get("gpu_uuid"), app.get("gpu_uuid"))
        name = stubs.get(pid)
        if name:
            inst = by_name.setdefault(name, {"instance": name})
            inst.update(pid=pid, gpu=gpu, gpu_memory_mib=_number(app.get("used_memory")))
        else:
            who = "tritonserver" if pid == server_pid else app.get("process_name", "?")
            others.append(f"pid {pid} ({who}): {app.get('used_memory')} MiB on GPU {gpu}")
    entry["instances"] = [by_name[k] for k in sorted(by_name)]
    entry["other_gpu_processes"] = others


def _number(text: Any) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def perf_summary(run) -> dict:
    """The measured level as plain numbers (perf_analyzer's microseconds)."""
    from .measuring.results import BREAKDOWN, P50, P99, REQUESTS, THROUGHPUT

    row = run.df.iloc[0].to_dict()
    metrics = run.metrics
    cpu = (round(float(metrics["cpu utilization (%)"].mean()), 1)
           if "cpu utilization (%)" in metrics else None)
    return {"concurrency": int(row["concurrency"]), "throughput": round(float(row[THROUGHPUT]), 1),
            "p50_us": row.get(P50), "p99_us": row.get(P99), "queue_us": row.get(BREAKDOWN[0]),
            "compute_us": row.get(BREAKDOWN[2]), "requests": row.get(REQUESTS),
            "window_ms": row.get("measurement_ms"),
            "stability_percent": row.get("stability_percent"),
            "cpu_utilization_percent": cpu, "saved": str(run.path),
            "command": (run.meta.get("commands") or [""])[-1]}


def perf_settings(concurrency: int, window_ms: int, input_data: Path):
    """How each variant is measured: one level, with the course's own windows (fitted to the
    model's speed by a short probe, measured again looser, then longer, when a window was too
    short or unstable), none longer than 6 s so one level ends within about two minutes."""
    from .measuring.perf import PerfSettings

    return PerfSettings(concurrency=[concurrency], measurement_ms=window_ms, max_trials=6,
                        min_requests=10, max_attempts=3, max_window_ms=max(6000, window_ms),
                        input_data=str(input_data))


def rough_level(server, level: int, opts, requests: int = 0) -> dict:
    """One level measured without stability windows, where perf_analyzer's windows never
    agreed (other work on the machine): `requests` requests (default 20 per client) sent with
    `--request-count`, throughput by Little's law from their median latency, as the course's
    probe does (perf_analyzer's own figure counts whole seconds)."""
    import tempfile

    from .measuring import perf
    from .measuring.results import BREAKDOWN, P50, P99

    requests = requests or 20 * level
    with tempfile.TemporaryDirectory(prefix="rough_") as folder:
        csv = Path(folder) / "rough.csv"
        cmd = perf.command(server.http_url, MODEL, level, csv, opts, request_count=requests)
        proc = subprocess.run(cmd, capture_output=True, text=True, env=perf.environment(),
                              cwd=folder, timeout=300)
        if proc.returncode != 0 or not csv.exists():
            raise perf.PerfError(f"perf_analyzer failed even without windows:\n"
                                 f"{(proc.stdout + proc.stderr).strip()[-1500:]}")
        row = perf.parse_csv(csv).iloc[0].to_dict()
    latency_s = float(row[P50]) / 1e6
    return {"concurrency": level, "throughput": round(level * opts.batch_size / latency_s, 1),
            "p50_us": row.get(P50), "p99_us": row.get(P99), "queue_us": row.get(BREAKDOWN[0]),
            "compute_us": row.get(BREAKDOWN[2]), "requests": requests,
            "rough": f"{requests} requests, no stability windows", "command": " ".join(cmd)}


def measure_variant(server, variant: Variant, entry: dict, gpu_count: int, gpus: list[dict],
                    opts, probe: dict) -> dict:
    """Load one variant, record where its instances landed, and measure one level; fills and
    returns `entry` (what was recorded stays there when a step fails)."""
    from .measuring import perf
    from .serving import configs, deploy

    cfg = variant.config
    entry.update(key=variant.key, label=variant.label, notebook=variant.notebook,
                 instances_config=instances_config(cfg), config=configs.to_text(cfg))
    _, note = configs.for_this_machine(cfg, gpu_count)
    entry["ran_as"] = ("as CPU instances: " + note.split(". ", 1)[0].removeprefix("NOTE: ")
                       if note else "as written")
    if variant.key == "gpu_onnxruntime":
        providers = (probe.get("onnxruntime") or {}).get("providers") or []
        if "CUDAExecutionProvider" not in providers:
            entry["note"] = ("ONNX Runtime in the model processes has no CUDAExecutionProvider "
                             f"(providers: {', '.join(providers) or 'none'}): each GPU "
                             "instance's session runs on ONNX Runtime's CPU provider")
            entry["computes_on"] = "the CPU (ONNX Runtime's CPU provider)"
    log_start = len(server.log_text())
    entry["load_s"] = round(deploy.deploy(
        server, cfg, how="reload", source=f"tritonlab.gpu_check ({variant.label})",
        regenerate="python -m tritonlab gpu-check", gpu_count=gpu_count), 1)
    entry["instances"] = placements(server.log_text()[log_start:])
    with GpuSampler(server.metrics_url, use_smi=gpu_count > 0) as sampler:
        try:
            run = perf.run(server, MODEL, f"gpu-check {variant.label}", opts,
                           notes=f"python -m tritonlab gpu-check: notebook {variant.notebook}")
            entry["perf"] = perf_summary(run)
        except perf.PerfError as exc:
            if perf.UNSTABLE not in str(exc) and "kept changing" not in str(exc):
                raise
            why = str(exc).splitlines()[0].split(" Try ")[0]
            entry["warning"] = f"{why} The figures are a rough measurement, without windows."
            entry["perf"] = rough_level(server, opts.concurrency[0], opts)
    entry["gpu_use"] = sampler.summary()
    record = server.recorded() or {}
    attach_gpu_processes(entry, gpu_processes() if gpu_count else [],
                         instance_processes(record.get("pid")), record.get("pid"), gpus)
    return entry


def measure(args: argparse.Namespace) -> int:
    """The measuring stage: writes `<workdir>/measure.json` after every step (see `check`)."""
    deadline = time.monotonic() + args.budget_s
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    result: dict = {"errors": [], "warnings": [], "variants": [], "not_run": [NOT_RUN]}
    path = work / "measure.json"

    def save() -> None:
        tmp = path.with_name(path.name + ".partial")
        tmp.write_text(json.dumps(result, indent=1, default=str))
        os.replace(tmp, path)

    def attempt(step: str, fn: Callable[[], Any]) -> tuple[bool, Any]:
        log(f"{step} ...")
        try:
            return True, fn()
        except Exception as exc:  # recorded; the steps after it still run
            add_error(result, step, exc)
            return False, None
        finally:
            save()

    gpus = query_gpus()["gpus"] if args.gpus else []
    repository = Path(os.environ.get("TRITONLAB_MODEL_REPOSITORY", work / "repository"))
    server = _server(repository, Path(os.environ.get("TRITONLAB_STATE_DIR", work / "state")),
                     os.environ.get("TRITONLAB_STUB_PYTHON", ""))
    ok, probe = attempt("the model processes' Python",
                        lambda: probe_model_environment(server.model_environment()))
    if ok:
        result["model_environment"] = probe
        for problem in environment_problems(probe, args.gpus):
            add_error(result, "the model processes' Python", problem)
        save()
    ok, inputs = attempt("model repository", lambda: _repository(repository, work, result))
    if not ok:
        return 0
    started, _ = attempt("start Triton", lambda: _start(server, result))
    try:
        if not started:
            return 0
        opts = perf_settings(args.concurrency, args.window_ms, inputs)
        chosen = set(args.variants.split(",")) if args.variants else None
        for variant in variants(args.gpus):
            if chosen is not None and variant.key not in chosen:
                result["not_run"].append(f"{variant.label} (notebook {variant.notebook}): "
                                         "not asked for (--variants)")
                continue
            left = deadline - time.monotonic()
            if left < VARIANT_MIN_S:
                result["not_run"].append(f"{variant.label} (notebook {variant.notebook}): "
                                         f"{left:.0f} s of the time budget left")
                save()
                continue
            entry: dict = {}
            result["variants"].append(entry)
            ok, _ = attempt(f"variant '{variant.label}'", lambda v=variant, e=entry:
                            measure_variant(server, v, e, args.gpus, gpus, opts, probe or {}))
            if not ok:
                entry.setdefault("key", variant.key)
                entry.setdefault("label", variant.label)
                entry["error"] = result["errors"][-1]["error"]
            elif entry.get("warning"):
                result["warnings"].append({"step": f"variant '{variant.label}'",
                                           "warning": entry["warning"]})
                log(f"variant '{variant.label}': {entry['warning']}")
            save()
            if not server.is_live():
                add_error(result, "server", "Triton went away: " + server.exit_description())
                break
    finally:
        log_text = server.log_text()
        result.setdefault("server", {})["cuda_lines"] = [
            ln.strip()[:300] for ln in log_text.splitlines()[:400] if CUDA_LINES.search(ln)][:20]
        result["server"]["sees_cuda"] = bool(SEES_CUDA.search(log_text))
        server.stop()
        save()
    return 0


def _repository(repository: Path, work: Path, result: dict) -> Path:
    """A fresh private copy of food_classifier with weights (the checkout's, else a seeded
    stand-in, built offline) and their ONNX export; returns perf_analyzer's input file."""
    from .assets import onnx_export, samples, weights
    from .assets.repository import copy_repository

    shutil.rmtree(repository, ignore_errors=True)
    repository.mkdir(parents=True)
    copy_repository(repository, names=(MODEL,))
    folder = repository / MODEL / "1"
    meta = weights.ensure_weights(folder, source=weights.STAND_IN)
    onnx_export.export_onnx(folder)
    result["repository"] = {
        "path": str(repository),
        "weights": ("a seeded stand-in (random weights: labels meaningless, speed as the "
                    "trained model's)" if meta.get("stand_in") else
                    f"the trained model from {meta.get('source')}")}
    return samples.write_perf_inputs(work / "perf")["raw"]


def _start(server, result: dict) -> None:
    """Start Triton with no model loaded; record its version and what it says about CUDA."""
    import requests

    from .measuring.metrics import parse

    seconds = server.start(models=[], timeout=180)
    info = result.setdefault("server", {})
    info.update(version=server.version(), start_s=round(seconds, 1), url=server.address.url)
    try:
        samples = parse(requests.get(server.metrics_url, timeout=5).text)
        info["gpu_metrics"] = sorted({labels["gpu_uuid"] for name, labels, _ in samples
                                      if name.startswith("nv_gpu_") and "gpu_uuid" in labels})
    except requests.RequestException as exc:
        info["gpu_metrics"] = []
        info["metrics_error"] = str(exc)


# --- entry point --------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prepare", action="store_true",
                        help="fill the bundle a GPU machine without network needs (here, with "
                             "the package index), then stop")
    parser.add_argument("--python", action="append", dest="pythons", metavar="X.Y",
                        help="with --prepare: a Python version the GPU machine runs; repeat for "
                             f"several (default {', '.join(gpu_bundle.DEFAULT_PYTHONS)})")
    parser.add_argument("--bundle", type=Path, default=gpu_bundle.DEFAULT_BUNDLE,
                        help="the bundle's folder (default build/gpu-bundle)")
    parser.add_argument("--out", type=Path,
                        help="the report's folder (default: $OUT if set, else build/gpu-check)")
    parser.add_argument("--budget-s", type=float, default=DEFAULT_BUDGET_S,
                        help="seconds the measuring may take (default %(default)s)")
    parser.add_argument("--concurrency", type=int, default=8,
                        help="the one perf_analyzer level measured (default %(default)s)")
    parser.add_argument("--window-ms", type=int, default=2000,
                        help="perf_analyzer's window (default %(default)s ms)")
    parser.add_argument("--variants", default="",
                        help="comma-separated keys of the variants to measure (default: all: "
                             "cpu, gpu, gpu_batching, gpu_instances, gpu_onnxruntime)")
    parser.add_argument("--run-without-gpu", action="store_true",
                        help="without a GPU, measure anyway with every variant on CPU "
                             "instances (tests the check itself)")
    parser.add_argument("--stage", choices=("check", "measure"), default="check",
                        help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--gpus", type=int, default=0, help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    """Run what the arguments ask for: prepare the bundle, the check, or its measuring stage."""
    if args.prepare:
        try:
            manifest = gpu_bundle.prepare(Path(args.bundle),
                                          args.pythons or gpu_bundle.DEFAULT_PYTHONS)
        except gpu_bundle.BundleError as exc:
            print(f"gpu-check bundle: {exc}", file=sys.stderr)
            return 1
        print(gpu_bundle.describe(manifest))
        print(f"Carry {args.bundle} to the GPU machine (it is git-ignored) and run "
              "`make gpu-check` there.")
        return 0
    if args.stage == "measure":
        return measure(args)
    return check(args)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tritonlab gpu-check",
                                     description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
