"""`make gpu-check` and its bundle, as far as a machine without a GPU or network reaches.

The no-GPU path runs for real (a subprocess, as `make gpu-check` runs it). The GPU path's parts
are checked against what they will meet: nvidia-smi's output format (a stand-in `nvidia-smi`
script), the notebooks' configs on Triton's schema, the flags the installed perf_analyzer and
pip accept, and the bundle built from small wheels made here and installed offline. The end to
end run on CPU instances (`--run-without-gpu`) starts an extra Triton and is marked slow.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from tritonlab import gpu_bundle, gpu_check, settings

GPU_UUID = "GPU-5f0c2f63-1d7e-4c3a-9b1e-0a1b2c3d4e5f"


def run_check(tmp_path: Path, *args: str, path: str | None = None, env: dict | None = None,
              timeout: float = 120) -> subprocess.CompletedProcess:
    """`python -m tritonlab gpu-check ...` as `make gpu-check` runs it, in a fresh process."""
    environ = {**os.environ, **(env or {})}
    environ.pop("OUT", None)
    if env and "OUT" in env:
        environ["OUT"] = env["OUT"]
    if path is not None:
        environ["PATH"] = path
    return subprocess.run([sys.executable, "-m", "tritonlab", "gpu-check", *args],
                          cwd=settings.ROOT, env=environ, capture_output=True, text=True,
                          timeout=timeout)


def fake_nvidia_smi(folder: Path, script: str) -> str:
    """A stand-in `nvidia-smi` in `folder`; returns a PATH that finds it first."""
    folder.mkdir(parents=True, exist_ok=True)
    exe = folder / "nvidia-smi"
    exe.write_text("#!/bin/sh\n" + script)
    exe.chmod(0o755)
    return f"{folder}{os.pathsep}{os.environ['PATH']}"


# --- the path a machine without a GPU takes, for real ------------------------------------------
def test_without_a_gpu_it_says_so_writes_the_report_and_exits_0(tmp_path):
    broken = fake_nvidia_smi(tmp_path / "bin", 'echo "NVIDIA-SMI has failed because it couldn\'t '
                             'communicate with the NVIDIA driver."; exit 9\n')
    proc = run_check(tmp_path, "--out", str(tmp_path / "report"), "--bundle",
                     str(tmp_path / "no-bundle"), path=broken)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "no GPU" in proc.stdout
    report = json.loads((tmp_path / "report" / gpu_check.REPORT_JSON).read_text())
    assert report["gpu"]["present"] is False
    assert "NVIDIA-SMI has failed" in report["gpu"]["reason"]
    assert report["verdict"] == "no GPU here, nothing was measured"
    assert report["errors"] == [] and report["variants"] == []
    assert report["bundle"]["present"] is False and "make gpu-check-bundle" in \
        report["bundle"]["summary"]
    text = (tmp_path / "report" / gpu_check.REPORT_MD).read_text()
    assert text.startswith("# GPU check: no GPU here, nothing was measured")
    assert "**No GPU**: NVIDIA-SMI has failed" in text


def test_without_nvidia_smi_the_report_goes_to_OUT(tmp_path):
    proc = run_check(tmp_path, path="/usr/bin:/bin", env={"OUT": str(tmp_path / "out")})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads((tmp_path / "out" / gpu_check.REPORT_JSON).read_text())
    assert report["gpu"] == {"present": False, "gpus": [], "reason": "nvidia-smi is not on PATH"}
    assert (tmp_path / "out" / gpu_check.REPORT_MD).exists()


def test_the_no_gpu_path_needs_only_the_standard_library(tmp_path):
    """It must run on a Python that has none of the course's packages yet."""
    code = ("import sys\nfrom tritonlab import gpu_check\n"
            f"status = gpu_check.main(['--out', {str(tmp_path)!r}])\n"
            "heavy = [m for m in ('torch', 'numpy', 'tritonclient', 'pandas', 'google.protobuf')"
            " if m in sys.modules]\nprint(status, heavy)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=settings.ROOT, capture_output=True,
                         text=True, timeout=60, env={**os.environ, "PATH": "/usr/bin:/bin"})
    assert out.stdout.strip().splitlines()[-1] == "0 []", out.stdout + out.stderr


# --- nvidia-smi, as the GPU path reads it ------------------------------------------------------
SMI = f"""case "$*" in
  -L) echo "GPU 0: NVIDIA H200 (UUID: {GPU_UUID})" ;;
  *compute_cap*) echo 'Field "compute_cap" is not a valid field to query.'; exit 2 ;;
  --query-gpu=index,name,uuid,driver_version,memory.total*)
     echo "0, NVIDIA H200, {GPU_UUID}, 580.159.03, 143771" ;;
  --query-gpu=uuid,utilization.gpu,memory.used*) echo "{GPU_UUID}, 87, 5120" ;;
  --query-compute-apps*) echo "4242, /x/triton_python_backend_stub, 812, {GPU_UUID}"
                         echo "4000, /x/tritonserver, 420, {GPU_UUID}" ;;
  *) exit 3 ;;
esac
"""


def test_gpus_processes_and_use_are_read_from_nvidia_smi(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", fake_nvidia_smi(tmp_path, SMI))
    found = gpu_check.query_gpus()
    assert found["present"] is True
    # this stand-in rejects compute_cap, as drivers before it existed do: asked again without it
    assert found["gpus"] == [{"index": "0", "name": "NVIDIA H200", "uuid": GPU_UUID,
                              "driver_version": "580.159.03", "memory.total": "143771"}]
    assert gpu_check.gpu_use() == [{"uuid": GPU_UUID, "utilization.gpu": "87",
                                    "memory.used": "5120"}]
    apps = gpu_check.gpu_processes()
    assert [a["pid"] for a in apps] == ["4242", "4000"]
    entry = {"instances": [{"instance": "food_classifier_0_0", "model_device": "cuda:0"}]}
    gpu_check.attach_gpu_processes(entry, apps, {4242: "food_classifier_0_0"}, 4000,
                                   found["gpus"])
    assert entry["instances"][0] == {"instance": "food_classifier_0_0", "model_device": "cuda:0",
                                     "pid": 4242, "gpu": "0", "gpu_memory_mib": 812.0}
    assert entry["other_gpu_processes"] == ["pid 4000 (tritonserver): 420 MiB on GPU 0"]


def test_no_running_processes_is_an_empty_list():
    assert gpu_check.csv_rows("No running processes found\n", gpu_check.APP_FIELDS) == []


def test_instance_placement_is_read_from_tritons_log():
    log = (
        'I1129 python_be.cc:2249] "TRITONBACKEND_ModelInstanceInitialize: food_classifier_0_0 '
        '(GPU device 0)"\n'
        'I1129 python_be.cc:2249] "TRITONBACKEND_ModelInstanceInitialize: food_classifier_1_0 '
        '(CPU device 0)"\n'
        "[food_classifier_0_0] Food-11 classifier on torch on cuda:0, 16 threads; weights from "
        "stand-in\n"
        "[food_classifier_1_0] Food-11 classifier on onnxruntime on cpu, 16 threads; weights "
        "from stand-in\n")
    assert gpu_check.placements(log) == [
        {"instance": "food_classifier_0_0", "triton_device": "GPU device 0",
         "model_device": "cuda:0", "model_says": "torch on cuda:0"},
        {"instance": "food_classifier_1_0", "triton_device": "CPU device 0",
         "model_device": "cpu", "model_says": "onnxruntime on cpu"}]


# --- what the GPU path loads and runs ----------------------------------------------------------
def notebook_code(name: str) -> str:
    cells = json.loads((settings.NOTEBOOKS / name).read_text())["cells"]
    return "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")


def test_the_variants_are_the_notebooks_gpu_configs_and_stay_on_the_gpu():
    from tritonclient.grpc import model_config_pb2 as mc

    from tritonlab.serving import configs

    batching = re.sub(r"\s+", "", json.dumps(gpu_check.BATCHING))
    for notebook in ("03_dynamic_batching.ipynb", "05_onnx.ipynb"):
        assert batching in re.sub(r"\s+", "", notebook_code(notebook))
    assert 'kind="KIND_GPU", gpus=[0]' in notebook_code("02_baseline.ipynb")
    assert '{"count": 2, "kind": "KIND_GPU", "gpus": [1]}' in notebook_code("04_scaling.ipynb")

    one_gpu = {v.key: v for v in gpu_check.variants(1)}
    assert list(one_gpu) == ["cpu", "gpu", "gpu_batching", "gpu_instances", "gpu_onnxruntime"]
    for key, variant in one_gpu.items():
        cfg = variant.config
        configs.validate(cfg, gpu_count=1)  # Triton's schema, and the GPUs named exist
        kinds = {g.kind for g in cfg.instance_group}
        if key == "cpu":
            assert kinds == {mc.ModelInstanceGroup.KIND_CPU}
        else:
            assert kinds == {mc.ModelInstanceGroup.KIND_GPU}
            assert {g for grp in cfg.instance_group for g in grp.gpus} == {0}
            assert configs.for_this_machine(cfg, 1) == (cfg, "")  # runs as written on one GPU
            assert configs.for_this_machine(cfg, 0)[1].startswith("NOTE: this machine has no GPU")
    assert one_gpu["gpu_onnxruntime"].config.parameters["runtime"].string_value == "onnxruntime"
    two = next(v for v in gpu_check.variants(2) if v.key == "gpu_instances").config
    assert [list(g.gpus) for g in two.instance_group] == [[0], [1]]
    assert gpu_check.instances_config(two) == "GPU [0] x2 + GPU [1] x2 (torch)"


def test_the_perf_command_uses_only_flags_the_installed_perf_analyzer_accepts(tmp_path):
    from tritonlab.measuring import perf

    try:
        binary = perf.binary()
    except perf.PerfError as exc:
        pytest.skip(str(exc))
    opts = gpu_check.perf_settings(8, 2000, tmp_path / "input.json")
    window = perf.plan_window(opts, rate=1.0)  # a slow model: the longest window the check uses
    assert window.ms == 6000
    cmd = perf.command("127.0.0.1:8000", "food_classifier", 8, Path("c8.csv"), opts,
                       "http://127.0.0.1:8002/metrics", window)
    help_text = subprocess.run([str(binary), "--help"], capture_output=True, text=True,
                               env=perf.environment(), timeout=60)
    usage = help_text.stdout + help_text.stderr
    flags = [a for a in cmd[1:] if a.startswith("-")]
    assert flags and all(re.search(rf"(^|\s){re.escape(f)}[\s=<]", usage) for f in flags), \
        [f for f in flags if f not in usage]


def test_the_pip_commands_use_only_flags_pip_accepts(tmp_path):
    for sub, cmd in (
            ("download", gpu_bundle.download_command("numpy==1.26.4", tmp_path, "3.12")),
            ("install", gpu_bundle.install_command([tmp_path / "x.whl"], tmp_path / "site"))):
        usage = subprocess.run([sys.executable, "-m", "pip", sub, "--help"], capture_output=True,
                               text=True, timeout=60).stdout
        flags = {a.split("=")[0] for a in cmd if a.startswith("--")}
        assert flags <= set(re.findall(r"--[a-z-]+", usage)), flags - set(
            re.findall(r"--[a-z-]+", usage))
    cmd = gpu_bundle.download_command("numpy==1.26.4", tmp_path, "3.12")
    assert cmd[cmd.index("--python-version") + 1] == "3.12"
    assert "cp312" in cmd and "manylinux2014_x86_64" in cmd and "--no-deps" in cmd


def test_problems_in_the_model_processes_python_are_named():
    fine = {"numpy": {"version": "1.26.4"}, "torch": {"version": "2.11.0", "cuda": "13.0",
                                                      "cuda_available": True}}
    assert gpu_check.environment_problems(fine, gpu_count=1) == []
    numpy2 = {**fine, "numpy": {"version": "2.5.2"}}
    assert "python_backend#384" in gpu_check.environment_problems(numpy2, 1)[0]
    cpu_torch = {**fine, "torch": {"version": "2.11.0+cpu", "cuda": None,
                                   "cuda_available": False}}
    assert "KIND_GPU instances would run on the CPU" in \
        gpu_check.environment_problems(cpu_torch, 1)[0]
    assert gpu_check.environment_problems(cpu_torch, 0) == []


# --- the report -------------------------------------------------------------------------------
def synthetic_report() -> dict:
    gpu = {"index": "0", "name": "NVIDIA H200", "uuid": GPU_UUID, "driver_version": "580.159",
           "memory.total": "143771", "compute_cap": "9.0"}
    report = {"report": "tritonlab GPU check", "started": "2026-11-29T12:00:00+00:00",
              "seconds": 201.4, "command": "python -m tritonlab gpu-check",
              "machine": {"python": "3.12.3", "executable": "/usr/bin/python3", "cores": 16,
                          "cpu": "x", "memory_gib": 128.0},
              "gpu": {"present": True, "list": f"GPU 0: NVIDIA H200 (UUID: {GPU_UUID})",
                      "gpus": [gpu]},
              "server": {"version": "2.51.0", "start_s": 3.2, "sees_cuda": True,
                         "gpu_metrics": [GPU_UUID],
                         "cuda_lines": ['"CUDA memory pool is created on device 0"']},
              "variants": [
                  {"key": "cpu", "label": "CPU baseline", "notebook": "02",
                   "instances_config": "CPU x1 (torch)", "ran_as": "as written",
                   "instances": [{"instance": "food_classifier_0_0", "model_device": "cpu",
                                  "triton_device": "CPU device 0"}],
                   "perf": {"concurrency": 8, "throughput": 100.0, "p50_us": 80000,
                            "p99_us": 90000, "queue_us": 60000, "compute_us": 15000}},
                  {"key": "gpu", "label": "GPU: 1 instance", "notebook": "02",
                   "instances_config": "GPU [0] x1 (torch)", "ran_as": "as written",
                   "instances": [{"instance": "food_classifier_0_0", "model_device": "cuda:0",
                                  "triton_device": "GPU device 0", "pid": 7,
                                  "gpu_memory_mib": 812.0, "gpu": "0",
                                  "model_says": "torch on cuda:0"}],
                   "gpu_use": {"max_utilization_percent": 35.0, "max_memory_used_mib": 1300},
                   "perf": {"concurrency": 8, "throughput": 500.0, "p50_us": 16000,
                            "p99_us": 20000, "queue_us": 9000, "compute_us": 3000}},
                  {"key": "gpu_batching", "label": "GPU + batching", "notebook": "03",
                   "error": "PerfError: unstable"},
                  {"key": "gpu_instances", "label": "GPU: 2 instances", "notebook": "04",
                   "warning": "no stable window",
                   "perf": {"concurrency": 8, "throughput": 250.0, "rough": "160 requests"}}],
              "not_run": ["notebook 05's onnxruntime-backend config"],
              "errors": [{"step": "variant 'GPU + batching'", "error": "PerfError: unstable\n"
                          "command: perf_analyzer ..."}]}
    report["verdict"] = gpu_check.verdict(report, run_without_gpu=False)
    return report


def test_the_report_is_written_as_json_and_in_words(tmp_path):
    report = synthetic_report()
    assert report["verdict"] == "1 error(s) on NVIDIA H200"
    json_path, md_path = gpu_check.write_report(report, tmp_path)
    assert json.loads(json_path.read_text()) == report
    text = md_path.read_text()
    assert text.startswith("# GPU check: 1 error(s) on NVIDIA H200")
    row = next(ln for ln in text.splitlines() if ln.startswith("| GPU: 1 instance |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[3:8] == ["cuda:0 x1", "500.0", "5.00", "16.0", "20.0"]
    assert "food_classifier_0_0: Triton: GPU device 0; model.py: torch on cuda:0; nvidia-smi: " \
           "pid 7, 812.0 MiB on GPU 0" in text
    assert "sees CUDA: yes; GPU metrics: 1 GPU(s)" in text
    assert "- **variant 'GPU + batching'**: PerfError: unstable" in text
    assert "notebook 05's onnxruntime-backend config" in text
    rough = next(ln for ln in text.splitlines() if ln.startswith("| GPU: 2 instances |"))
    assert [c.strip() for c in rough.strip("|").split("|")][4:6] == ["~250.0", "2.50"]
    assert "~: a rough figure" in text

    report["errors"] = []
    del report["variants"][2:]
    assert gpu_check.verdict(report, False) == ("passed on NVIDIA H200: best GPU variant "
                                                "'GPU: 1 instance' at 500 infer/s, 5.0x the "
                                                "CPU baseline")


# --- the bundle ---------------------------------------------------------------------------------
def make_wheel(folder: Path, name: str, version: str, files: dict[str, tuple[bytes, int]],
               tag: str = "py3-none-any") -> Path:
    """A minimal valid wheel (METADATA, WHEEL, RECORD) holding `files` ({name: (data, mode)})."""
    folder.mkdir(parents=True, exist_ok=True)
    dist = re.sub(r"[-.]", "_", name)
    info = f"{dist}-{version}.dist-info"
    entries = dict(files)
    entries[f"{info}/METADATA"] = (f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
                                   .encode(), 0o644)
    entries[f"{info}/WHEEL"] = (f"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                f"Tag: {tag}\n".encode(), 0o644)
    record = "".join(f"{n},,\n" for n in entries) + f"{info}/RECORD,,\n"
    entries[f"{info}/RECORD"] = (record.encode(), 0o644)
    path = folder / f"{dist}-{version}-{tag}.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for entry_name, (data, mode) in entries.items():
            info_ = zipfile.ZipInfo(entry_name, date_time=(2025, 8, 13, 7, 30, 0))
            info_.external_attr = (stat.S_IFREG | mode) << 16
            zf.writestr(info_, data)
    return path


def fake_source_wheels(folder: Path) -> dict[str, Path]:
    """Stand-ins for the nvidia-pytriton and tritonclient wheels, laid out as the real ones."""
    exe, lib = 0o755, 0o644
    stubs = {f"pytriton/tritonserver/python_backend_stubs/{v}/triton_python_backend_stub":
             (f"stub {v}".encode(), exe) for v in ("3.10", "3.11", "3.12", "3.13")}
    server = make_wheel(folder, "nvidia-pytriton", "0.7.0", {
        "pytriton/__init__.py": (b"", lib), "pytriton/triton.py": (b"", lib),
        "pytriton/tritonserver/bin/tritonserver": (b"server", exe),
        "pytriton/tritonserver/backends/python/libtriton_python.so": (b"backend", lib),
        "pytriton/tritonserver/backends/python/triton_python_backend_utils.py": (b"", lib),
        "pytriton/tritonserver/caches/local/libtritoncache_local.so": (b"cache", lib),
        "nvidia_pytriton.libs/libtritonserver-717102f0.so": (b"core", lib),
        "nvidia_pytriton.libs/libpython3-419a3a08.13.so.1.0": (b"py313", lib),
        "nvidia_pytriton-0.7.0.dist-info/licenses/LICENSE": (b"licence", lib), **stubs},
        tag="py3-none-manylinux_2_35_x86_64")
    data = "tritonclient-2.51.0.data"
    client = make_wheel(folder, "tritonclient", "2.51.0", {
        f"{data}/purelib/tritonclient/__init__.py": (b"", lib),
        f"{data}/purelib/tritonclient/http/__init__.py": (b"", lib),
        f"{data}/data/bin/perf_analyzer": (b"perf", exe),
        f"{data}/data/bin/perf_client": (b"perf", exe),
        f"{data}/data/LICENSE.txt": (b"licence", lib)}, tag="py3-none-manylinux1_x86_64")
    return {"nvidia-pytriton": server, "tritonclient": client}


@pytest.fixture
def bundle(tmp_path):
    """A bundle prepared from stand-in wheels for this Python, without network."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    sources = fake_source_wheels(tmp_path / "sources")

    def download(requirement: str, dest: Path, python_version: str | None) -> Path:
        name, wanted = requirement.split("==")
        if name in sources:
            return sources[name]
        module = "fake_" + re.sub(r"[-.]", "_", name).lower()
        return make_wheel(dest, name, wanted, {f"{module}.py": (b"X = 1\n", 0o644)})

    libs = {"libb64.so.0d": tmp_path / "libb64.so.0d", "libcudart.so.12": tmp_path / "libcudart"}
    for path in libs.values():
        path.write_bytes(b"\x7fELF")
    manifest = gpu_bundle.prepare(tmp_path / "bundle", [version], tmp_path / "downloads",
                                  download=download, libraries=libs, tree=1000)
    return tmp_path / "bundle", manifest, version, download, libs


def test_the_bundle_holds_what_the_server_and_perf_analyzer_need(bundle):
    import tarfile

    folder, manifest, version, _, _ = bundle
    assert manifest["python_versions"] == [version]
    with tarfile.open(folder / gpu_bundle.SERVER_ARCHIVE) as tar:
        server = {m.name: m.mode for m in tar.getmembers()}
    stub = f"site/pytriton/tritonserver/python_backend_stubs/{version}/triton_python_backend_stub"
    assert server[stub] & 0o111 and server["site/pytriton/tritonserver/bin/tritonserver"] & 0o111
    assert "site/nvidia_pytriton.libs/libtritonserver-717102f0.so" in server
    assert not [n for n in server if "libpython3" in n or n.endswith("pytriton/__init__.py")]
    assert sum("python_backend_stubs" in n for n in server) == 1
    with tarfile.open(folder / gpu_bundle.CLIENT_ARCHIVE) as tar:
        client = sorted(tar.getnames())
    assert client == ["bin/perf_analyzer", "lib/libb64.so.0d", "lib/libcudart.so.12",
                      "licenses/tritonclient.LICENSE.txt", "site/tritonclient-2.51.0.dist-info/"
                      "METADATA", "site/tritonclient-2.51.0.dist-info/WHEEL",
                      "site/tritonclient/__init__.py", "site/tritonclient/http/__init__.py"]
    tag = gpu_bundle.python_tag(version)
    assert [w["requirement"] for w in manifest["wheels"][tag]] == \
        [w.requirement for w in gpu_bundle.WHEELS]
    assert "of 64.0 MiB" in manifest["budget"]
    assert "perf_analyzer.tar.xz" in gpu_bundle.describe(manifest)


def test_an_unchanged_bundle_is_not_rebuilt(bundle):
    folder, manifest, version, download, libs = bundle
    before = {a["file"]: (folder / a["file"]).stat().st_mtime_ns for a in manifest["archives"]}
    again = gpu_bundle.prepare(folder, [version], folder.parent / "downloads", download=download,
                               libraries=libs, tree=1000)
    assert {a["file"]: (folder / a["file"]).stat().st_mtime_ns
            for a in again["archives"]} == before


def test_install_offline_takes_what_the_machine_has_and_is_idempotent(bundle, tmp_path,
                                                                      monkeypatch):
    folder, manifest, version, _, _ = bundle
    real = gpu_bundle.installed_version
    monkeypatch.setattr(gpu_bundle, "installed_version",  # NumPy 2, as on the GPU machine
                        lambda name: "2.5.2" if name == "numpy" else real(name))
    env = tmp_path / "env"
    done = gpu_bundle.install(folder, env, version, present=lambda module: module == "psutil")
    assert done["reused"] is False
    assert "psutil" in done["from_machine"]
    assert "psutil==7.2.2" not in done["installed"] and "gevent==26.9.0" in done["installed"]
    assert done["stub_site"] == ["numpy==1.26.4"]
    assert (env / "stub-site" / "fake_numpy.py").exists()
    assert not (env / "site" / "fake_numpy.py").exists()
    assert (env / "site" / "fake_gevent.py").exists() and not (env / "site" / "fake_psutil.py"
                                                               ).exists()
    server = env / "site" / "pytriton" / "tritonserver" / "bin" / "tritonserver"
    assert os.access(server, os.X_OK) and os.access(env / "bin" / "perf_analyzer", os.X_OK)
    assert (env / "lib" / "libcudart.so.12").exists() and not (env / "bin" / "perf_client"
                                                               ).exists()
    variables = gpu_bundle.process_environment(env, base={"PATH": "/usr/bin"})
    assert variables["PATH"] == f"{env / 'bin'}{os.pathsep}/usr/bin"
    assert variables["PYTHONPATH"] == str(env / "site")
    assert variables["LD_LIBRARY_PATH"] == str(env / "lib")
    assert variables["TRITONLAB_STUB_PYTHON"] == str(env / "stub-python" / "bin")
    # The model processes' interpreter ignores PYTHONPATH and takes the first python3 on PATH:
    # found that way, the bundle's stub-site comes before this Python's own packages.
    found = subprocess.run(
        ["bash", "-c", 'exec python3 -c "import sys, fake_numpy; print(fake_numpy.__file__); '
         'print(sys.path.index(sys.argv[1]) < sys.path.index(sys.argv[2]))" "$@"', "-",
         str(env / "stub-site"), sysconfig.get_paths()["purelib"]],
        env={**variables, "PATH": variables["TRITONLAB_STUB_PYTHON"] + os.pathsep
             + os.environ["PATH"], "PYTHONPATH": ""},
        capture_output=True, text=True, check=True).stdout.split()
    assert found == [str(env / "stub-site" / "fake_numpy.py"), "True"]

    marker = env / "site" / "left-by-the-first-install"
    marker.write_text("")
    again = gpu_bundle.install(folder, env, version, present=lambda module: module == "psutil")
    assert again["reused"] is True and marker.exists()


def test_install_refuses_a_changed_bundle_or_another_python(bundle, tmp_path):
    folder, manifest, version, _, _ = bundle
    with pytest.raises(gpu_bundle.BundleError, match=r"prepared for Python .*and this is Python "
                                                     r"3\.1"):
        gpu_bundle.install(folder, tmp_path / "env", "3.1")
    wheel = folder / manifest["wheels"][gpu_bundle.python_tag(version)][0]["file"]
    wheel.write_bytes(wheel.read_bytes() + b"x")
    with pytest.raises(gpu_bundle.BundleError, match="incomplete or changed"):
        gpu_bundle.install(folder, tmp_path / "env", version)
    with pytest.raises(gpu_bundle.BundleError, match="make gpu-check-bundle"):
        gpu_bundle.install(tmp_path / "nothing-here", tmp_path / "env", version)


def test_a_bundle_too_large_to_travel_is_refused():
    mib = 2**20
    assert gpu_bundle.check_budget(50 * mib, 1 * mib).endswith("(13.0 MiB left)")
    with pytest.raises(gpu_bundle.BundleError, match="over the 64.0 MiB"):
        gpu_bundle.check_budget(60 * mib, 5 * mib)


def test_the_prepared_bundle_fits_with_the_working_tree():
    """The real bundle (`make gpu-check-bundle`), where it has been prepared on this machine."""
    manifest = gpu_bundle.read_manifest(gpu_bundle.DEFAULT_BUNDLE, missing_ok=True)
    if manifest is None:
        pytest.skip(f"no bundle at {gpu_bundle.DEFAULT_BUNDLE}: `make gpu-check-bundle` "
                    "prepares it (needs the package index)")
    on_disk = sum(p.stat().st_size for p in gpu_bundle.DEFAULT_BUNDLE.rglob("*") if p.is_file())
    tree = gpu_bundle.tree_bytes()
    assert on_disk + (tree or 0) <= gpu_bundle.BUDGET_BYTES, gpu_bundle.describe(manifest)
    for version in manifest["python_versions"]:
        gpu_bundle.verify(gpu_bundle.DEFAULT_BUNDLE, manifest, version)
        names = [w["requirement"] for w in manifest["wheels"][gpu_bundle.python_tag(version)]]
        assert names == [w.requirement for w in gpu_bundle.WHEELS]


# --- the whole check on CPU instances ------------------------------------------------------------
@pytest.mark.slow
def test_the_whole_check_runs_on_cpu_instances(tmp_path):
    """Every step of the GPU path on this machine's CPU (`--run-without-gpu`): the real server,
    the variants' loads and one short level each. Where other work on a shared machine keeps
    perf_analyzer's windows from agreeing, the level is measured roughly and said so."""
    proc = run_check(tmp_path, "--run-without-gpu", "--out", str(tmp_path / "out"),
                     "--concurrency", "2", "--window-ms", "1000", "--budget-s", "400",
                     "--variants", "cpu,gpu,gpu_onnxruntime",  # the other two load alike
                     path="/usr/bin:/bin", timeout=600)
    report = json.loads((tmp_path / "out" / gpu_check.REPORT_JSON).read_text())
    assert proc.returncode in (0, 1), proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.returncode == 0, proc.stdout[-3000:]  # no error: an unstable level is a warning
    assert "--variants cpu,gpu,gpu_onnxruntime" in report["command"]
    assert report["verdict"].startswith("no GPU: every variant ran as CPU instances")
    assert report["server"]["version"] == "2.51.0" and report["server"]["sees_cuda"] is False
    assert report["model_environment"]["torch"]["cuda_available"] is False
    keys = [v["key"] for v in report["variants"]]
    assert keys == ["cpu", "gpu", "gpu_onnxruntime"] and len(keys) + len(report["not_run"]) == 6
    assert sum("not asked for (--variants)" in line for line in report["not_run"]) == 2
    for variant in report["variants"]:
        assert variant["instances"] and {i["model_device"] for i in variant["instances"]} == \
            {"cpu"}
    assert report["errors"] == [], report["errors"]  # an unstable level is a warning, measured
    assert all(v["perf"]["throughput"] > 0 for v in report["variants"])  # roughly, without windows
    assert (tmp_path / "out" / gpu_check.SERVER_LOG).stat().st_size > 0
