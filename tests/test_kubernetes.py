"""Kubernetes manifests (serving/kubernetes.py): built from compose.yaml, valid offline for the
stated Kubernetes version, and autoscaled on a metric Triton 2.51 exports. No server, no cluster."""

from __future__ import annotations

import copy
import importlib.util
import inspect
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tritonlab import settings
from tritonlab.serving import kubernetes as k8s
from tritonlab.serving.docker import KEY_HEADER

TARGET = 3  # requests waiting per replica: any positive number serves here
KINDS = ["Namespace", "PersistentVolumeClaim", "Deployment", "Service", "ConfigMap",
         "HorizontalPodAutoscaler"]


@pytest.fixture(scope="module")
def docs() -> list[dict]:
    return k8s.manifests(target_average_value=TARGET)


def of_kind(docs: list[dict], kind: str) -> dict:
    [doc] = [doc for doc in docs if doc["kind"] == kind]
    return doc


def container(docs: list[dict]) -> dict:
    [only] = of_kind(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    return only


def compose_triton() -> dict:
    """compose.yaml's triton service, read here without the module under test."""
    return yaml.safe_load((settings.ROOT / "compose.yaml").read_text())["services"]["triton"]


def pytriton_dir() -> Path:
    return Path(importlib.util.find_spec("pytriton").submodule_search_locations[0])


def triton_library() -> bytes:
    """Server 2.51's core library, as the wheel's tritonserver binary links it: the metric names
    live there (the binary itself holds the HTTP front end)."""
    [lib] = (pytriton_dir().parent / "nvidia_pytriton.libs").glob("libtritonserver*.so*")
    return lib.read_bytes()


# --- valid, and broken ones refused -------------------------------------------------------------

@pytest.mark.parametrize("version", [k8s.KUBERNETES_VERSION, "1.33"])
def test_every_manifest_validates(docs, version):
    """Strict schemas of the stated version; 1.33 too, for clusters a few releases behind."""
    assert [doc["kind"] for doc in docs] == KINDS
    k8s.validate(docs, version)


def test_the_stated_version_is_the_newest_kubernetes_validate_ships():
    from kubernetes_validate.utils import all_versions, major_minor

    assert major_minor(all_versions()[-1]) == k8s.KUBERNETES_VERSION


def break_replicas(docs):
    of_kind(docs, "Deployment")["spec"]["replicas"] = "two"
    return "Deployment/triton: spec.replicas: 'two' is not of type 'integer'"


def break_field_name(docs):
    probe = container(docs).pop("readinessProbe")
    container(docs)["readynessProbe"] = probe
    return "Deployment/triton: spec.template.spec.containers.0: Additional properties"


def break_probe_handler(docs):
    del container(docs)["readinessProbe"]["httpGet"]
    return "Deployment/triton: spec.template.spec.containers.0.readinessProbe: needs exactly one"


def break_probe_port(docs):
    container(docs)["livenessProbe"]["httpGet"]["port"] = "htttp"
    return "containers.0.livenessProbe: port 'htttp' is not a port name"


def break_selector(docs):
    of_kind(docs, "Deployment")["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"] = "x"
    return "Deployment/triton: spec.selector.matchLabels"


def break_autoscaler(docs):
    of_kind(docs, "HorizontalPodAutoscaler")["spec"]["behavior"]["scaleDown"]["window"] = 60
    return "HorizontalPodAutoscaler/triton: spec.behavior.scaleDown: Additional properties"


def break_annotation(docs):
    annotations = of_kind(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    annotations["prometheus.io/port"] = 8002
    return "annotations.prometheus.io/port: 8002 is not of type 'string'"


@pytest.mark.parametrize("breaker", [break_replicas, break_field_name, break_probe_handler,
                                     break_probe_port, break_selector, break_autoscaler,
                                     break_annotation])
def test_a_broken_manifest_is_refused_by_name(docs, breaker):
    broken = copy.deepcopy(docs)
    expected = breaker(broken)
    with pytest.raises(k8s.ManifestError) as caught:
        k8s.validate(broken)
    message = str(caught.value)
    assert expected in message, message
    assert len(message.splitlines()) == 2, message  # the heading and this one manifest


def test_every_failing_manifest_is_listed(docs):
    broken = copy.deepcopy(docs)
    break_replicas(broken)
    of_kind(broken, "Service")["spec"]["selectr"] = {}
    with pytest.raises(k8s.ManifestError) as caught:
        k8s.validate(broken)
    assert "Deployment/triton: spec.replicas" in str(caught.value)
    assert "Service/triton: spec: Additional properties" in str(caught.value)


def test_a_version_without_schemas_is_refused(docs):
    with pytest.raises(k8s.ManifestError, match=r"no schemas for Kubernetes 1\.12; it has .*1\.37"):
        k8s.validate(docs, "1.12")


# --- built from compose.yaml --------------------------------------------------------------------

def test_args_are_the_compose_command_with_the_key_from_a_secret(docs):
    command = compose_triton()["command"]
    expected = [re.sub(r"\$\{TRITONLAB_API_KEY:\?[^}]*\}", "$(TRITONLAB_API_KEY)", arg)
                for arg in command]
    # another variable with a default gets its default, as compose gives it where it is unset
    expected = [re.sub(r"\$\{TRITONLAB_BIND_ADDRESS:-([^}]*)\}", r"\1", arg) for arg in expected]
    assert container(docs)["args"] == expected
    assert expected != command  # the key was there to substitute
    assert "--http-address=0.0.0.0" in expected
    assert f"{KEY_HEADER}=$(TRITONLAB_API_KEY)" in " ".join(expected)
    # Kubernetes expands $(NAME) only from the container's own environment
    [env] = container(docs)["env"]
    assert env == {"name": "TRITONLAB_API_KEY",
                   "valueFrom": {"secretKeyRef": {"name": k8s.SECRET, "key": k8s.SECRET_KEY}}}
    assert "Secret" not in [doc["kind"] for doc in docs]  # the key is in no file


def test_compose_variables_kubernetes_cannot_expand_and_an_open_api_are_refused(tmp_path):
    service = compose_triton()
    other = copy.deepcopy(service)
    other["command"].append("--log-verbose=${VERBOSE}")
    path = tmp_path / "compose.yaml"
    path.write_text(yaml.safe_dump({"services": {"triton": other}}))
    with pytest.raises(k8s.ManifestError, match="--log-verbose=.*Kubernetes would not expand"):
        k8s.manifests(target_average_value=TARGET, compose_file=path)
    opened = copy.deepcopy(service)
    opened["command"] = [arg for arg in opened["command"] if "restricted" not in arg]
    path.write_text(yaml.safe_dump({"services": {"triton": opened}}))
    with pytest.raises(k8s.ManifestError, match="model-repository API"):
        k8s.manifests(target_average_value=TARGET, compose_file=path)


def test_ports_shm_and_model_repository_follow_compose(docs):
    service = compose_triton()
    node = yaml.safe_load((settings.ROOT / "compose.node.yaml").read_text())  # the node's ports
    published = sorted(int(port.rsplit(":", 1)[1]) for port in node["services"]["triton"]["ports"])
    ports = container(docs)["ports"]
    assert [(p["name"], p["containerPort"]) for p in ports] == list(
        zip(["http", "grpc", "metrics"], published))
    assert [p["port"] for p in of_kind(docs, "Service")["spec"]["ports"]] == published
    assert of_kind(docs, "Service")["spec"]["type"] == "ClusterIP"

    pod = of_kind(docs, "Deployment")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in container(docs)["volumeMounts"]}
    assert service["shm_size"] == "1g"
    assert volumes[mounts["/dev/shm"]["name"]]["emptyDir"] == {"medium": "Memory",
                                                               "sizeLimit": "1Gi"}
    [repository] = [v.split(":")[1] for v in service["volumes"] if "model_repository" in v]
    assert mounts[repository]["readOnly"] is True
    claim = volumes[mounts[repository]["name"]]["persistentVolumeClaim"]
    pvc = of_kind(docs, "PersistentVolumeClaim")
    assert claim == {"claimName": pvc["metadata"]["name"], "readOnly": True}
    assert pvc["spec"]["accessModes"] == ["ReadOnlyMany"]


def test_the_default_image_is_the_course_image(docs):
    name, tag = k8s.IMAGE.split(":")
    assert name == compose_triton()["image"]
    base = re.search(r"^FROM \S+:(\S+)", (settings.ROOT / "Dockerfile.triton").read_text(), re.M)
    assert base.group(1).startswith(tag + "-")
    assert container(docs)["image"] == k8s.IMAGE
    registry = "registry.example.org/course/tritonlab-triton:24.10"
    assert container(k8s.manifests(target_average_value=1, image=registry))["image"] == registry


# --- probes, resources, metrics -----------------------------------------------------------------

def test_probes_ask_triton_health_endpoints_on_the_http_port(docs):
    binary = (pytriton_dir() / "tritonserver" / "bin" / "tritonserver").read_bytes()
    route = "/v2(?:/health/(live|ready))?"  # the HTTP front end's route, as the binary holds it
    assert route.encode() in binary
    http = {p["name"]: p["containerPort"] for p in container(docs)["ports"]}["http"]
    assert http == settings.TritonAddress().http
    paths = {}
    for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
        get = container(docs)[kind]["httpGet"]
        assert get["port"] == "http"
        assert re.fullmatch(route, get["path"])
        paths[kind] = get["path"]
    assert paths == {"startupProbe": "/v2/health/live", "livenessProbe": "/v2/health/live",
                     "readinessProbe": "/v2/health/ready"}
    startup = container(docs)["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300  # the default budget
    slow = container(k8s.manifests(target_average_value=1, startup_s=901))["startupProbe"]
    assert slow["periodSeconds"] * slow["failureThreshold"] >= 901


def test_gpu_zero_asks_for_no_gpu(docs):
    assert container(docs)["resources"]["limits"]["nvidia.com/gpu"] == 1
    cpu_only = k8s.manifests(target_average_value=TARGET, gpus=0)
    assert "nvidia.com/gpu" not in yaml.safe_dump(of_kind(cpu_only, "Deployment"))
    k8s.validate(cpu_only)
    two = k8s.manifests(target_average_value=TARGET, gpus=2, cpu="8", memory="32Gi")
    assert container(two)["resources"] == {
        "requests": {"cpu": "8", "memory": "32Gi"},
        "limits": {"cpu": "8", "memory": "32Gi", "nvidia.com/gpu": 2}}
    with pytest.raises(k8s.ManifestError, match="gpus"):
        k8s.manifests(target_average_value=TARGET, gpus=-1)


def test_pods_are_annotated_for_prometheus(docs):
    template = of_kind(docs, "Deployment")["spec"]["template"]
    assert template["metadata"]["annotations"] == {
        "prometheus.io/scrape": "true", "prometheus.io/port": "8002",
        "prometheus.io/path": "/metrics"}
    assert str(settings.TritonAddress().metrics) == "8002"
    assert template["metadata"]["labels"]["app.kubernetes.io/name"] == "triton"


def adapter_rules(docs) -> list[dict]:
    """The rules as the adapter reads them: the ConfigMap's config.yaml."""
    config = yaml.safe_load(of_kind(docs, "ConfigMap")["data"]["config.yaml"])
    assert list(config) == ["rules"]
    return config["rules"]


def hpa_metric(docs) -> dict:
    [metric] = of_kind(docs, "HorizontalPodAutoscaler")["spec"]["metrics"]
    return metric


def test_the_autoscaler_scales_on_a_series_triton_exports(docs):
    metric = hpa_metric(docs)
    assert metric["type"] == "Pods"
    assert metric["pods"]["target"] == {"type": "AverageValue", "averageValue": TARGET}
    [rule] = [r for r in adapter_rules(docs) if r["name"]["as"] == metric["pods"]["metric"]["name"]]
    series = rule["seriesQuery"].split("{")[0]
    assert re.fullmatch(rule["name"]["matches"], series)
    assert series.encode() in triton_library()
    assert rule["resources"]["overrides"] == {"namespace": {"resource": "namespace"},
                                              "pod": {"resource": "pod"}}
    # one value per pod: summed over Triton's model and version labels
    assert rule["metricsQuery"] == f"sum by (<<.GroupBy>>) ({series}{{<<.LabelMatchers>>}})"


def test_the_library_check_can_fail():
    assert b"nv_inference_pending_request_count" in triton_library()
    assert b"nv_inference_waiting_request_count" not in triton_library()


def test_the_queue_time_rule_is_the_alternative(docs):
    rules = {r["name"]["as"]: r for r in adapter_rules(docs)}
    assert list(rules) == [k8s.PENDING_REQUESTS, k8s.QUEUE_US_PER_REQUEST]
    query = rules[k8s.QUEUE_US_PER_REQUEST]["metricsQuery"]
    series = set(re.findall(r"nv_\w+", query))
    assert series == {"nv_inference_queue_duration_us", "nv_inference_request_success"}
    # the names the course's sampler reads from the live server (stored in pieces in the library)
    from tritonlab.measuring import metrics

    sampler = inspect.getsource(metrics.snapshot)
    assert all(f'"{name}"' in sampler for name in series)
    alternative = k8s.manifests(target_average_value=2000, metric=k8s.QUEUE_US_PER_REQUEST)
    assert hpa_metric(alternative)["pods"]["metric"]["name"] == k8s.QUEUE_US_PER_REQUEST
    k8s.validate(alternative)
    with pytest.raises(k8s.ManifestError, match="adapter's rules serve"):
        k8s.manifests(target_average_value=1, metric="nv_inference_pending_request_count")


def test_autoscaler_bounds_target_and_scale_down_window():
    docs = k8s.manifests(target_average_value=2.5, min_replicas=2, max_replicas=6,
                         scale_down_window_s=600)
    spec = of_kind(docs, "HorizontalPodAutoscaler")["spec"]
    assert (spec["minReplicas"], spec["maxReplicas"]) == (2, 6)
    assert spec["metrics"][0]["pods"]["target"]["averageValue"] == "2.5"
    assert spec["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 600
    assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                      "name": of_kind(docs, "Deployment")["metadata"]["name"]}
    assert "replicas" not in of_kind(docs, "Deployment")["spec"]  # the autoscaler owns it
    k8s.validate(docs)
    for bad in ({"min_replicas": 0}, {"min_replicas": 5, "max_replicas": 4}):
        with pytest.raises(k8s.ManifestError, match="min_replicas"):
            k8s.manifests(target_average_value=1, **bad)
    with pytest.raises(k8s.ManifestError, match="positive"):
        k8s.manifests(target_average_value=0)


# --- files and commands -------------------------------------------------------------------------

def test_written_files_read_back_the_same(docs, tmp_path):
    (tmp_path / "mine.yaml").write_text("kind: Mine\n")
    stale = tmp_path / "07-service-old.yaml"
    stale.write_text(k8s.BANNER + "kind: Service\n")
    paths = k8s.write(tmp_path, docs)
    assert [yaml.safe_load(path.read_text()) for path in paths] == docs
    assert [p.name for p in paths][:3] == ["01-namespace-tritonlab.yaml",
                                           "02-persistentvolumeclaim-tritonlab-model-repository.yaml",
                                           "03-deployment-triton.yaml"]
    assert all(path.read_text().startswith("# GENERATED FILE") for path in paths)
    assert not stale.exists() and (tmp_path / "mine.yaml").exists()
    k8s.validate(yaml.safe_load(path.read_text()) for path in paths)


def test_apply_commands_list_every_written_file(docs, tmp_path):
    paths = k8s.write(tmp_path, docs)
    commands = k8s.apply_commands(tmp_path)
    applied = [c.removeprefix("kubectl apply -f ") for c in commands
               if c.startswith("kubectl apply")]
    assert applied == [str(path) for path in paths]
    [secret] = [i for i, c in enumerate(commands) if "create secret generic" in c]
    assert commands[secret - 1].endswith("01-namespace-tritonlab.yaml")  # its namespace first
    assert "restart deployment/prometheus-adapter" in commands[-2]  # after its new config
    # the key comes from the shell, never from a file; without it the command stops
    fake = 'kubectl() { printf "%s\\n" "$@"; }; ' + commands[secret]
    out = subprocess.run(["bash", "-c", fake], capture_output=True, text=True,
                         env={"TRITONLAB_API_KEY": "s3cret", "PATH": "/usr/bin:/bin"})
    assert out.stdout.split() == ["--namespace", "tritonlab", "create", "secret", "generic",
                                  k8s.SECRET, "--from-literal=key=s3cret"]
    out = subprocess.run(["bash", "-c", fake], capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin"})
    assert out.returncode != 0 and "set TRITONLAB_API_KEY" in out.stderr
    with pytest.raises(k8s.ManifestError, match="no Deployment"):
        k8s.apply_commands(tmp_path / "empty")
