"""Model Analyzer as the course drives it: the config it gets, the results read back, the words
of the comparison, the hand-tuned runs it is compared with, and the variant it leaves to serve.
Its real search runs in notebook 09 (tests/test_notebooks.py)."""

from __future__ import annotations

import os
import re
import subprocess
import time

import pandas as pd
import pytest
import yaml

from tritonlab import settings
from tritonlab.measuring import analyzer, results
from tritonlab.serving import configs
from tritonlab.serving.embedded import EmbeddedTriton
from tritonlab.settings import TritonAddress


@pytest.fixture()
def results_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("TRITONLAB_RESULTS_DIR", str(tmp_path / "results"))
    return tmp_path / "results"


def test_a_missing_model_analyzer_says_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.setenv("TRITONLAB_MODEL_ANALYZER", str(tmp_path / "model-analyzer"))
    with pytest.raises(analyzer.AnalyzerError, match="make install"):
        analyzer.binary()


@pytest.mark.parametrize("where", ["here", "gpu node"])
def test_model_analyzer_reads_the_config_the_course_writes(tmp_path, where):
    """Model Analyzer's own config parser (in its venv) takes every option the course sets,
    here (CPU only) and for the GPU node (GPU instances); an option it does not know makes it
    stop with an error naming it."""
    opts = analyzer.SearchSettings.for_course(p95_budget_ms=50)
    launch = (analyzer.Launch.here(tmp_path / "backends") if where == "here"
              else analyzer.Launch.gpu_node())
    config = analyzer.profile_config(settings.model_repository(), tmp_path / "out", opts,
                                     TritonAddress.free(), launch)
    (tmp_path / "out").mkdir()
    python = analyzer.binary().parent / "python"
    # Model Analyzer keeps `cpu_only: false` only where numba finds CUDA (it turns every model
    # cpu_only otherwise): for the GPU node's config, its parser is told that it does
    gpu = "import numba.cuda; numba.cuda.is_available = lambda: True; " * (where == "gpu node")
    check = (gpu + "import sys; from model_analyzer.cli.cli import CLI; "
             "from model_analyzer.config.input.config_command_profile import "
             "ConfigCommandProfile; cfg = ConfigCommandProfile(); cli = CLI(); "
             "cli.add_subcommand(cmd='profile', help='', config=cfg); "
             "cli.parse(); print('parsed', cfg.run_config_search_mode, "
             "cfg.constraints, 'cpu_only', cfg.profile_models[0].cpu_only(), 'gpus', cfg.gpus, "
             "'server', cfg.triton_server_path)")

    def parse(conf: dict) -> subprocess.CompletedProcess:
        path = tmp_path / "profile.yaml"
        path.write_text(yaml.safe_dump(conf))
        return subprocess.run([str(python), "-c", check, "profile", "-f", str(path)],
                              capture_output=True, text=True, timeout=120)

    if where == "gpu node":  # its parser stats perf_analyzer: the image's is not on this machine
        assert config["perf_analyzer_path"] == analyzer.IMAGE_PERF_ANALYZER
        config["perf_analyzer_path"] = analyzer.Launch.here(tmp_path).perf_analyzer
    good = parse(config)
    assert good.returncode == 0, good.stdout + good.stderr
    assert "parsed quick" in good.stdout and "50" in good.stdout
    if where == "here":
        assert "cpu_only True" in good.stdout
        assert f"server {EmbeddedTriton().binary()}" in good.stdout
    else:  # every GPU the Triton container sees, its own tritonserver
        assert "cpu_only False gpus ['all']" in good.stdout
        assert f"server {analyzer.IMAGE_SERVER}" in good.stdout
    bad = parse({**config, "run_config_search_max_instances": 2})  # not an option of 1.46
    assert bad.returncode != 0
    assert "run_config_search_max_instances" in bad.stdout + bad.stderr


FAKE_DOCKER = """#!/bin/sh
# `docker exec <container> <command...>`: runs the command here, records the container
echo "$1 $2" >> "$DOCKER_CALLS"
shift 2
exec "$@"
"""


def test_on_the_gpu_node_model_analyzer_runs_in_the_triton_image(tmp_path, monkeypatch):
    """On the GPU node (TRITONLAB_MODE=docker) Model Analyzer runs in compose.yaml's Triton
    container, from the virtual environment Dockerfile.triton makes, with the perf_analyzer of
    the image's tritonclient pin; `docker exec` passes its arguments unchanged, keeps the
    image's LD_LIBRARY_PATH, and a run past its limit is stopped in the container (124)."""
    from importlib import metadata

    from tritonlab.serving import images

    monkeypatch.setenv("TRITONLAB_MODE", "docker")
    launch = analyzer.Launch.for_this_machine(tmp_path / "state")
    assert launch.gpus and launch.command[:3] == ("docker", "exec", "triton")
    compose = yaml.safe_load((settings.ROOT / "compose.yaml").read_text())["services"]
    assert compose["triton"]["container_name"] == "triton"
    # both containers see the course folder under one name (the files Model Analyzer reads
    # and writes): the Jupyter container's mount
    assert ".:/workspace" in compose["triton"]["volumes"]
    assert ".:/workspace" in compose["jupyter"]["volumes"]

    triton = images.image("triton")
    runs = [words for word, args in images.instructions(triton.path) if word == "RUN"
            for words in images._commands(args)]
    venv = next(w[-1] for w in runs if w[:3] == ["python3", "-m", "venv"])
    assert analyzer.IMAGE_ANALYZER == f"{venv}/bin/model-analyzer"
    assert any(w[0] == f"{venv}/bin/pip" and "/tmp/model-analyzer.txt" in w for w in runs)
    pins = (settings.ROOT / triton.requirements).read_text()
    assert f"tritonclient=={metadata.version('tritonclient')}" in pins  # the server's release
    # the wheel's perf_analyzer goes to <prefix>/bin: /usr/local/bin for the image's pip
    assert any(str(f) == "../../../bin/perf_analyzer" for f in metadata.files("tritonclient"))
    assert analyzer.IMAGE_PERF_ANALYZER == "/usr/local/bin/perf_analyzer"

    docker, calls = tmp_path / "docker", tmp_path / "calls"
    docker.write_text(FAKE_DOCKER)
    docker.chmod(0o755)
    monkeypatch.setenv("DOCKER_CALLS", str(calls))
    fake = tmp_path / "model-analyzer"
    fake.write_text('#!/bin/sh\necho "args:$*"\necho "libs:$LD_LIBRARY_PATH"\n'
                    'if [ "$1" = slow ]; then sleep 30; fi\n')
    fake.chmod(0o755)
    monkeypatch.setattr(analyzer, "IMAGE_ANALYZER", str(fake))
    monkeypatch.setenv("LD_LIBRARY_PATH", "/image/libs")
    launch = analyzer.Launch.gpu_node(docker=str(docker), limit_s=3)
    out = subprocess.run([*launch.command, "profile", "-f", "/a b/profile.yaml"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "args:profile -f /a b/profile.yaml" in out.stdout
    assert f"libs:/image/libs:{analyzer.IMAGE_CUDA_RUNTIME}" in out.stdout
    assert calls.read_text().splitlines() == ["exec triton"]
    late = subprocess.run([*launch.command, "slow"], capture_output=True, text=True, timeout=60)
    assert late.returncode == 124


def _points(rows):
    return pd.DataFrame([{"variant": f"{analyzer.VARIANT_PREFIX}{name} (onnxruntime)",
                          "config name": name, "runtime": "onnxruntime",
                          "instance group": group, "max batch size": mbs,
                          "dynamic batching": True, "concurrency": c,
                          results.THROUGHPUT: t, "p95 latency (ms)": p95,
                          "p99 latency (ms)": p95 * 1.2, "server queue (ms)": p95 / 4,
                          "server compute infer (ms)": p95 / 3}
                         for name, group, mbs, c, t, p95 in rows])


def _search(points, budget=50.0, max_concurrency=4):
    opts = analyzer.SearchSettings(p95_budget_ms=budget, max_concurrency=max_concurrency)
    return analyzer.Search(points=points, configs={}, settings=opts, seconds=1.0)


def test_the_best_keeps_the_budget_and_the_words_follow_the_numbers():
    points = _points([("c0", "1:CPU", 1, 4, 200.0, 20.0), ("c1", "2:CPU", 4, 4, 400.0, 80.0),
                      ("c2", "2:CPU", 2, 4, 300.0, 45.0)])
    assert analyzer.best_within(points, 50)["config name"] == "c2"  # c1 is faster, too slow
    assert analyzer.best_within(points, 10) is None
    hand = pd.DataFrame({"variant": ["a", "b"], "concurrency": [8, 1],
                         results.THROUGHPUT: [250.0, 100.0], "p95 latency (ms)": [40.0, 9.0]})
    words = analyzer.compare(_search(points), hand)
    assert "c2" in words and "300.0 infer/s at concurrency 4" in words
    assert "'a': 250.0 infer/s at concurrency 8" in words
    assert "Model Analyzer beat the hand-tuned best: 1.20x" in words
    assert "went up to concurrency 4; the hand-tuned best was measured with 8" in words
    close = hand.assign(**{results.THROUGHPUT: [290.0, 100.0]})
    assert "Neither beat the other clearly" in analyzer.compare(_search(points), close)
    ahead = hand.assign(**{results.THROUGHPUT: [600.0, 100.0]})
    assert "did not beat the hand-tuned best: 0.50x" in analyzer.compare(_search(points), ahead)
    assert "nothing to compare" in analyzer.compare(_search(points, budget=5), hand)
    table = analyzer.summary(_search(points))
    assert list(table["configuration"]) == ["c2", "c0", "c1"]
    assert table["at concurrency"].iloc[2] is None or pd.isna(table["at concurrency"].iloc[2])


def test_the_words_say_why_one_best_beat_the_other():
    """The gap explained from the rows: Model Analyzer's best came at a level the hand-tuned
    runs skipped; at the level both measured it is close; what the two configs set differently
    (threads per instance as model.py counts them on 2 cores)."""
    points = _points([("c1", "2:CPU", 1, 1, 84.0, 13.4), ("c1", "2:CPU", 1, 2, 162.0, 15.8),
                      ("c1", "2:CPU", 1, 8, 160.0, 59.2)])
    searched = configs.classifier_config(name="food_classifier_config_1", runtime="onnxruntime",
                                         instances=2, max_batch_size=1,
                                         dynamic_batching={"max_queue_delay_microseconds": 0})
    mine = configs.classifier_config(runtime="onnxruntime", instances=2, num_threads=1,
                                     dynamic_batching={"preferred_batch_size": [4, 8],
                                                       "max_queue_delay_microseconds": 5000})
    from google.protobuf import json_format
    saved = json_format.MessageToDict(mine, preserving_proto_field_name=True)  # as save_run
    hand = pd.DataFrame({"variant": ["b", "b"], "concurrency": [1, 8],
                         results.THROUGHPUT: [80.0, 170.0], "p95 latency (ms)": [21.8, 58.7],
                         "config": [saved, saved]})
    found = analyzer.Search(points=points, configs={points["variant"][0]: searched},
                            settings=analyzer.SearchSettings(p95_budget_ms=50.0,
                                                             max_concurrency=8), seconds=1.0)
    words = analyzer.compare(found, hand)
    assert "2.02x" in words
    assert "measured concurrency 1, 8; Model Analyzer's best came at 2, a level they did" in words
    assert "At concurrency 1, a level both measured" in words and "84.0 infer/s" in words
    assert ("max_batch_size 1 (Model Analyzer) against 16; dynamic batching on, "
            "max_queue_delay 0 us (Model Analyzer) against on, max_queue_delay 5000 us, "
            "preferred sizes 4, 8.") in words
    # cpu_share 1 over 2 instances against num_threads 1: the same on 2 or 3 cores only
    from tritonlab.serving import devices
    assert ("threads per instance" in words) == (devices.usable_cores() // 2 != 1)
    assert analyzer.knobs(searched, cores=2)["threads per instance"] == "1"
    assert analyzer.knobs(searched, cores=8)["threads per instance"] == "4"
    assert analyzer.knobs(saved)["instances"] == "2"
    same = hand.assign(config=[json_format.MessageToDict(searched,
                                                         preserving_proto_field_name=True)] * 2)
    assert "set the same runtime" in analyzer.compare(found, same)


def _save(variant, config=None, date="2026-11-30T10:00:00+00:00"):
    df = pd.DataFrame({"concurrency": [8], results.THROUGHPUT: [100.0],
                       results.P95: [20_000.0]})
    meta = {"variant": variant, "model": "food_classifier", "date": date, "config": config}
    return results.save_run(results.PerfRun(df=df, meta=meta, raw={}, metrics=pd.DataFrame()))


def test_the_hand_tuned_runs_leave_out_cached_and_searched_ones(results_dir):
    with pytest.raises(ValueError, match="baseline"):
        analyzer.hand_tuned()
    _save("baseline", date="2026-11-30T09:00:00+00:00")
    _save("dynamic batching")
    _save("baseline + response cache", config={"response_cache": {"enable": True}})
    _save(analyzer.VARIANT_PREFIX + "food_classifier_config_1 (onnxruntime)")
    hand = analyzer.hand_tuned()
    assert sorted(hand["variant"]) == ["baseline", "dynamic batching"]
    assert hand["config"].isna().all()  # saved without one
    assert (hand["p95 latency (ms)"] == 20.0).all()


def test_the_analyzer_variant_is_the_saved_best_renamed(results_dir):
    with pytest.raises(configs.ConfigError, match="notebook 09"):
        configs.classifier_variant("analyzer")
    searched = configs.classifier_config(name="food_classifier_config_4", instances=2,
                                         runtime="onnxruntime",
                                         dynamic_batching={"max_queue_delay_microseconds": 0})
    points = _points([("food_classifier_config_4", "2:CPU", 16, 4, 300.0, 20.0)])
    found = _search(points)
    found.configs = {points["variant"][0]: searched}
    written = analyzer.save(found)
    assert written[-1] == configs.analyzer_best_path()
    served = configs.classifier_variant("analyzer")
    assert served.name == "food_classifier" and served.instance_group[0].count == 2
    assert served.parameters["runtime"].string_value == "onnxruntime"
    table = results.table()
    assert list(table["variant"]) == [points["variant"][0]]
    assert table[results.P95].iloc[0] == 20_000.0


STOPPED_CONTAINER = """#!/bin/sh
# compose's triton container, stopped until `docker start triton`: its Triton is the test
# session's server; `docker exec` fails as Docker does for a stopped container
echo "$*" >> "$DOCKER_CALLS"
case "$1" in
  start) touch "$DOCKER_CALLS.started"; echo triton ;;
  inspect)
    if [ "$3" = "{{.State.Running}}" ]; then
      [ -e "$DOCKER_CALLS.started" ] && echo true || echo false
    fi ;;
  exec)
    [ -e "$DOCKER_CALLS.started" ] || {
      echo "Error response from daemon: Container 2434 is not running" >&2; exit 1; }
    echo "model-analyzer: stopped here by the test" >&2; exit 1 ;;
esac
"""


@pytest.mark.server
def test_on_the_gpu_node_the_search_starts_a_stopped_triton_container_first(
        triton, tmp_path, monkeypatch):
    """Notebook 08 ends by stopping the Triton container, and notebook 09's search runs inside
    it (`docker exec triton`): the search starts it first (found by `make node-check`)."""
    (tmp_path / "bin").mkdir()
    docker = tmp_path / "bin" / "docker"
    docker.write_text(STOPPED_CONTAINER)
    docker.chmod(0o755)
    calls = tmp_path / "calls"
    monkeypatch.setenv("DOCKER_CALLS", str(calls))
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    monkeypatch.setenv("TRITONLAB_MODE", "docker")
    monkeypatch.setenv("TRITON_URL", triton.address.url)
    monkeypatch.setenv("TRITONLAB_API_KEY", "k")
    opts = analyzer.SearchSettings.for_course(runtimes=["torch"])
    with pytest.raises(analyzer.AnalyzerError, match="stopped here by the test"):
        analyzer.search(opts, folder=tmp_path / "ma", progress=False)
    recorded = calls.read_text().splitlines()
    first_exec = next(i for i, line in enumerate(recorded) if line.startswith("exec triton"))
    assert "start triton" in recorded[:first_exec]


SAVED = settings.ROOT / "tests" / "data" / "model_analyzer"


def test_a_checkpoint_gives_the_rows_of_model_analyzer_s_own_csv(tmp_path):
    """A real run's checkpoint and CSV (tests/data/model_analyzer): the two readers agree, so a
    run stopped before its CSV is read as one that finished."""
    export = tmp_path / "export"
    (export / "checkpoints").mkdir(parents=True)
    (export / "results").mkdir()
    (export / "checkpoints" / "0.ckpt").write_bytes((SAVED / "0.ckpt").read_bytes())
    (export / "results" / "metrics-model-inference.csv").write_bytes(
        (SAVED / "metrics-model-inference.csv").read_bytes())
    from_checkpoint = analyzer.read_checkpoint(export, "onnxruntime", analyzer.P95_BUDGET_MS)
    from_csv = analyzer.read_results(export, "onnxruntime")
    pd.testing.assert_frame_equal(from_checkpoint, from_csv, check_dtype=False)
    assert len(from_csv) == 6 and set(from_csv["satisfies constraints"]) == {"Yes", "No"}
    with pytest.raises(analyzer.AnalyzerError, match="no checkpoint"):
        analyzer.read_checkpoint(tmp_path / "nothing", "onnxruntime", 50)


STALLING_ANALYZER = """#!/bin/sh
# Model Analyzer's quick search stuck in its back-off (TMA-871): one measurement, its
# checkpoint saved, then no new measurement; SIGINT makes it exit 1, as Model Analyzer does
export=$(sed -n 's/^export_path: //p' "$3")
mkdir -p "$export/checkpoints"
cp "$SAVED_CHECKPOINT" "$export/checkpoints/0.ckpt"
echo "[Model Analyzer] Profiling food_classifier_config_0: concurrency=2"
trap 'echo "Received SIGINT 1/3"; exit 1' INT
while :; do sleep 0.2; done
"""


def use_fake_analyzer(script: str, tmp_path, monkeypatch, stall_limit_s: int) -> None:
    """`script` as the model-analyzer command, here (not in Docker), with the saved checkpoint
    for it to copy and `stall_limit_s` for the guard."""
    fake = tmp_path / "model-analyzer"
    fake.write_text(script)
    fake.chmod(0o755)
    monkeypatch.setenv("TRITONLAB_MODEL_ANALYZER", str(fake))
    monkeypatch.setenv("SAVED_CHECKPOINT", str(SAVED / "0.ckpt"))
    monkeypatch.delenv("TRITONLAB_MODE", raising=False)
    monkeypatch.setattr(analyzer, "stall_limit_s", lambda: stall_limit_s)


def test_a_search_that_stops_measuring_is_stopped_and_read_from_its_checkpoint(
        tmp_path, monkeypatch):
    use_fake_analyzer(STALLING_ANALYZER, tmp_path, monkeypatch, stall_limit_s=2)
    monkeypatch.setattr(analyzer._StallGuard, "grace", 3)
    opts = analyzer.SearchSettings.for_course(runtimes=["torch"])
    began = time.monotonic()
    found = analyzer.search(opts, folder=tmp_path / "ma", progress=False)
    assert time.monotonic() - began < 60
    assert len(found.points) == 6 and found.points["runtime"].eq("torch").all()
    best = analyzer.best_within(found.points, analyzer.P95_BUDGET_MS)
    assert best["config name"] == "food_classifier_config_1"


LOOPING_ANALYZER = """#!/bin/sh
# Model Analyzer's quick search in its back-off loop (TMA-871) as it shows itself: one
# measurement, then "No changes made" over and over; SIGINT makes it exit 1
export=$(sed -n 's/^export_path: //p' "$3")
mkdir -p "$export/checkpoints"
cp "$SAVED_CHECKPOINT" "$export/checkpoints/0.ckpt"
echo "[Model Analyzer] Profiling food_classifier_config_0: concurrency=2"
echo "[Model Analyzer] No changes made to analyzer data, no checkpoint saved."
echo "[Model Analyzer] Creating model config: food_classifier_config_1"
trap 'echo "Received SIGINT 1/3"; exit 1' INT
while :; do
  echo "[Model Analyzer] Existing measurement found for run config. Skipping profile"
  echo "[Model Analyzer] No changes made to analyzer data, no checkpoint saved."
  sleep 0.01
done
"""


def test_a_search_in_its_back_off_loop_is_stopped_at_once_and_printed_once(
        tmp_path, monkeypatch, capsys):
    """The loop is recognised by its repeated line, without waiting out the stall limit (a
    minute in quick mode), and the notebook shows the line once with a count, not thousands of
    times."""
    use_fake_analyzer(LOOPING_ANALYZER, tmp_path, monkeypatch, stall_limit_s=600)
    opts = analyzer.SearchSettings.for_course(runtimes=["torch"])
    began = time.monotonic()
    found = analyzer.search(opts, folder=tmp_path / "ma", progress=True)
    assert time.monotonic() - began < 30
    assert len(found.points) == 6
    out = capsys.readouterr().out
    assert out.count("torch: No changes made") == 2  # after the measurement, then the loop
    assert re.search(r"\(the line above \d+ more times\)", out)


def test_a_slow_search_gets_a_stall_limit_in_proportion_to_its_measurements():
    """A model whose measurements come minutes apart is not stopped as stuck: the limit is the
    quick mode's minute or STALL_FACTOR times the longest gap seen, whichever is longer."""

    class Ended:  # a process that has exited: the guard's watch never interrupts it
        def poll(self):
            return 0

    now = [1000.0]
    guard = analyzer._StallGuard(Ended(), launch=None, seconds=analyzer.stall_limit_s(quick=True),
                                 clock=lambda: now[0])
    guard.stop()
    assert guard.limit() == 60
    now[0] += 5
    guard.progress()  # measurements 5 s apart: the minute stands
    assert guard.limit() == 60
    now[0] += 100
    guard.progress()  # then 100 s apart
    assert guard.limit() == 400
