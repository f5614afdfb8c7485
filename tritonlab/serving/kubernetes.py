"""Triton on Kubernetes: manifests built from the GPU node's compose.yaml, checked offline.

On the GPU node, Docker Compose runs the `triton` service of compose.yaml; that file is the one home
of the server's flags. This module builds what the same server needs on a cluster, as plain dicts
(one per manifest, as `kubectl apply` reads them):

* a Namespace holding the rest;
* a PersistentVolumeClaim for the model repository, mounted read-only by every replica;
* a Deployment of Triton replicas: compose's `triton` command as the container's args, the key of
  the restricted APIs from a Secret, the ports 8000/8001/8002, compose's shm_size as /dev/shm,
  probes on Triton's health endpoints, CPU, memory and GPUs per replica;
* a ClusterIP Service for HTTP, gRPC and metrics;
* a HorizontalPodAutoscaler that adds replicas while requests wait in Triton's queues;
* the Prometheus Adapter's rules (a ConfigMap) that make that per-pod metric out of Triton's.

Nothing here talks to a cluster: `validate` checks the manifests against the Kubernetes API's JSON
schemas (kubernetes-validate, offline), `write` saves them as YAML files, and `apply_commands`
lists the `kubectl` commands to run on a machine that has the cluster's credentials.

The autoscaler needs three things this module does not install: Prometheus scraping each pod's
:8002 (the `prometheus.io/*` pod annotations are the convention of Prometheus' example Kubernetes
config and of the prometheus-community `prometheus` chart, whose relabelling adds the `namespace`
and `pod` labels the adapter's rules use); the Prometheus Adapter (kubernetes-sigs), serving the
custom metrics API; and the NVIDIA device plugin, which makes `nvidia.com/gpu` schedulable.
"""

from __future__ import annotations

import math
import re
import shlex
from collections.abc import Iterable
from pathlib import Path

import yaml

from .. import settings
from ..common import atomic_write
from ..settings import TritonAddress
from .docker import restriction_flags

#: The Kubernetes version the manifests are checked against: the newest that kubernetes-validate
#: 1.37.0 ships JSON schemas for (its package data, `kubernetes-json-schema/v1.25.0-local` to
#: `v1.37.0-local`, each also `-strict`). Every API used here (apps/v1, autoscaling/v2, v1) is
#: stable since Kubernetes 1.23; the tests also check them against 1.33.
KUBERNETES_VERSION = "1.37"

#: The image Dockerfile.triton builds (compose.yaml names it `tritonlab-triton`), tagged with its
#: base image's release. A cluster pulls images from a registry, not from the GPU node's Docker:
#: push it there first and pass its full name (see `deployment`).
IMAGE = "tritonlab-triton:24.10"

COMPOSE_FILE = settings.ROOT / "compose.yaml"
COMPOSE_SERVICE = "triton"

NAME = "triton"                 # the Deployment, its Service and its autoscaler
NAMESPACE = "tritonlab"
MODEL_CLAIM = "tritonlab-model-repository"
SHM_VOLUME = "dshm"

#: Where the restricted APIs' key comes from: an environment variable filled from a Secret, which
#: Kubernetes expands in the container's args, written `$(NAME)`.
KEY_VARIABLE = "TRITONLAB_API_KEY"
KEY_REFERENCE = f"$({KEY_VARIABLE})"
SECRET = "tritonlab-api-key"
SECRET_KEY = "key"

#: Triton's own ports (its defaults; compose publishes the same three).
PORTS = {"http": TritonAddress().http, "grpc": TritonAddress().grpc,
         "metrics": TritonAddress().metrics}
#: Triton's health endpoints (KServe v2 protocol), on the `http` port.
READY_PATH = "/v2/health/ready"
LIVE_PATH = "/v2/health/live"

#: The Prometheus Adapter, as kubernetes-sigs/prometheus-adapter's deploy/manifests install it:
#: a Deployment reading its rules from this ConfigMap's `config.yaml`, at start only.
ADAPTER_NAMESPACE = "monitoring"
ADAPTER_CONFIG = "adapter-config"
ADAPTER_DEPLOYMENT = "prometheus-adapter"

#: Triton's gauge of requests waiting for a model instance, one series per model and version.
#: Found whole in server 2.51's library (nvidia-pytriton's `libtritonserver*.so`; a test greps it).
PENDING_SERIES = "nv_inference_pending_request_count"
#: Triton's cumulative counters of queue time and of successful requests, per model and version.
#: Registered by Triton core's src/metrics.cc and read from the live server by the course's own
#: sampler (measuring/metrics.py); the compiler stored them in pieces in the 2.51 library
#: ("nv_inference_que" + "ue_durat"...), so a grep of its bytes does not find them whole.
QUEUE_SERIES = "nv_inference_queue_duration_us"
SUCCESS_SERIES = "nv_inference_request_success"

#: The custom metrics the adapter serves per pod: the HPA scales on the first by default.
PENDING_REQUESTS = "triton_pending_requests"
QUEUE_US_PER_REQUEST = "triton_queue_us_per_request"

BANNER = """\
# GENERATED FILE: do not edit by hand.
# Built from compose.yaml by tritonlab.serving.kubernetes; regenerate with its write().
"""


class ManifestError(ValueError):
    """A manifest Kubernetes would refuse, or a source it cannot be built from; the message
    lists each failing manifest (kind/name) and what is wrong with it."""


# --- what compose.yaml says ---------------------------------------------------------------------

def compose_service(compose_file: Path | str = COMPOSE_FILE) -> dict:
    """The `triton` service of compose.yaml, as PyYAML reads it; ManifestError if it is missing."""
    try:
        compose = yaml.safe_load(Path(compose_file).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ManifestError(f"{compose_file} cannot be read ({exc}); the manifests are "
                            "built from its `triton` service.") from None
    service = ((compose or {}).get("services") or {}).get(COMPOSE_SERVICE)
    if not service or not service.get("command"):
        raise ManifestError(f"{compose_file} has no services.{COMPOSE_SERVICE}.command: the "
                            "server's flags are read from there.")
    return service


# compose's forms of the key: ${TRITONLAB_API_KEY}, ${TRITONLAB_API_KEY:?message}, :-default...
_COMPOSE_KEY = re.compile(r"\$\{" + KEY_VARIABLE + r"(?:[:?+-][^}]*)?\}")
#: Any other compose variable with a default, `${NAME:-default}`: a pod gets the default (the
#: variable is for machines where compose runs, such as TRITONLAB_BIND_ADDRESS for make node-check).
_COMPOSE_DEFAULT = re.compile(r"\$\{(\w+):-([^}]*)\}")


def server_args(compose_file: Path | str = COMPOSE_FILE) -> list[str]:
    """compose's `triton` command with the key written `$(TRITONLAB_API_KEY)`, as Kubernetes
    expands it from the container's environment, and every other `${NAME:-default}` replaced by
    its default (what compose uses where NAME is unset).

    Both compose's `command` and Kubernetes' `args` replace the image's CMD and keep its
    ENTRYPOINT (NGC's nvidia_entrypoint.sh), so the list is used as it is, `tritonserver` first.
    ManifestError when compose uses another variable (Kubernetes would pass it on unexpanded) or
    when the restricted-API flags are missing (the model-repository API would be open).
    """
    args = []
    for arg in compose_service(compose_file)["command"]:
        arg = _COMPOSE_KEY.sub(lambda _: KEY_REFERENCE, str(arg))
        arg = _COMPOSE_DEFAULT.sub(lambda m: m.group(2), arg)
        if "$" in arg.replace(KEY_REFERENCE, ""):
            raise ManifestError(f"{compose_file}: the flag {arg!r} uses a compose variable other "
                                f"than {KEY_VARIABLE}; Kubernetes would not expand it.")
        args.append(arg)
    missing = [flag for flag in restriction_flags(KEY_REFERENCE) if flag not in args]
    if missing:
        raise ManifestError(f"{compose_file}: the triton command lacks {missing}: without them "
                            "Triton's model-repository API, which can load code, takes no key.")
    return args


def shm_size(compose_file: Path | str = COMPOSE_FILE) -> str:
    """compose's `shm_size` as a Kubernetes quantity: '1g' becomes '1Gi' (Docker's k, m and g
    are powers of 1024). The Python backend passes tensors through /dev/shm, which a container
    gets at 64 MiB otherwise."""
    text = str(compose_service(compose_file).get("shm_size", "")).strip().lower()
    match = re.fullmatch(r"(\d+)([kmg]?)b?", text)
    if not match:
        raise ManifestError(f"{compose_file}: shm_size {text!r} is not of the form 1g, 512m...")
    number, unit = match.groups()
    return number + {"": "", "k": "Ki", "m": "Mi", "g": "Gi"}[unit]


def _flag_value(args: list[str], flag: str) -> str:
    values = [arg.split("=", 1)[1] for arg in args if arg.startswith(f"{flag}=")]
    if len(values) != 1:
        raise ManifestError(f"The triton command should pass {flag}= once; found {values}.")
    return values[0]


# --- the manifests ------------------------------------------------------------------------------

def _labels(component: str) -> dict[str, str]:
    """Kubernetes' recommended labels (app.kubernetes.io/*)."""
    return {"app.kubernetes.io/name": NAME, "app.kubernetes.io/instance": "tritonlab",
            "app.kubernetes.io/component": component, "app.kubernetes.io/part-of": "tritonlab"}


#: What the Deployment selects its pods by, and the Service its endpoints: never changed later
#: (a Deployment's selector cannot be edited once created).
SELECTOR = {"app.kubernetes.io/name": NAME, "app.kubernetes.io/instance": "tritonlab"}


def _quantity(value: int | float | str, what: str) -> int | str:
    """A number as a Kubernetes quantity: integers stay integers, fractions become strings
    ('2.5': the API takes numbers with a fraction only as text), strings ('500m') pass as is."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or not value > 0:
        raise ManifestError(f"{what} must be a positive number; got {value!r}.")
    return int(value) if float(value).is_integer() else repr(float(value))


def _probe(path: str, period_s: int, failures: int) -> dict:
    # A busy server answers its health endpoint late: 5 s, not Kubernetes' 1 s, before a miss.
    return {"httpGet": {"path": path, "port": "http"}, "periodSeconds": period_s,
            "timeoutSeconds": 5, "failureThreshold": failures}


def deployment(*, image: str = IMAGE, namespace: str = NAMESPACE, gpus: int = 1,
               cpu: str = "4", memory: str = "16Gi", startup_s: int = 300,
               compose_file: Path | str = COMPOSE_FILE) -> dict:
    """The Deployment of Triton replicas (apps/v1).

    `image`: the course image in a registry the cluster pulls from; build it on a machine with
    Docker (`docker build -f Dockerfile.triton -t tritonlab-triton .`), then `docker tag` and
    `docker push` it as, for example, registry.example.org/course/tritonlab-triton:24.10. With a
    tag other than `latest`, Kubernetes pulls it only when the node lacks it.
    `gpus`: `nvidia.com/gpu` per replica; 0 asks for none (the key is left out: CPU instances).
    `cpu`, `memory`: requested and limited alike, so each replica gets what the autoscaler's
    arithmetic assumes and is the last evicted (Kubernetes' Guaranteed class); /dev/shm counts
    against `memory`. `startup_s`: how long Triton may take to load every model before Kubernetes
    restarts it; Triton opens its HTTP port only once the models are loaded (BLIP takes tens of
    seconds, plus each model's warm-up).
    ManifestError for a negative GPU count; see `server_args` for compose.yaml.
    """
    if isinstance(gpus, bool) or not isinstance(gpus, int) or gpus < 0:
        raise ManifestError(f"gpus must be a whole number, 0 or more; got {gpus!r}.")
    args = server_args(compose_file)
    limits = {"cpu": str(cpu), "memory": str(memory)}
    if gpus:
        # The device plugin's resource: GPUs are limits only (requests default to them).
        limits["nvidia.com/gpu"] = gpus
    container = {
        "name": NAME,
        "image": image,
        "args": args,
        "env": [{"name": KEY_VARIABLE,
                 "valueFrom": {"secretKeyRef": {"name": SECRET, "key": SECRET_KEY}}}],
        "ports": [{"name": name, "containerPort": port, "protocol": "TCP"}
                  for name, port in PORTS.items()],
        "volumeMounts": [
            {"name": "model-repository", "mountPath": _flag_value(args, "--model-repository"),
             "readOnly": True},
            {"name": SHM_VOLUME, "mountPath": "/dev/shm"},
        ],
        # Liveness and readiness start once the startup probe has passed.
        "startupProbe": _probe(LIVE_PATH, 10, max(1, math.ceil(startup_s / 10))),
        "livenessProbe": _probe(LIVE_PATH, 10, 3),
        # Ready: every loaded model is ready (Triton's strict readiness, its default).
        "readinessProbe": _probe(READY_PATH, 5, 2),
        "resources": {"requests": {"cpu": str(cpu), "memory": str(memory)}, "limits": limits},
    }
    pod = {
        "metadata": {
            "labels": _labels("inference-server"),
            "annotations": {"prometheus.io/scrape": "true",
                            "prometheus.io/port": str(PORTS["metrics"]),
                            "prometheus.io/path": "/metrics"},
        },
        "spec": {
            "containers": [container],
            "volumes": [
                {"name": "model-repository",
                 "persistentVolumeClaim": {"claimName": MODEL_CLAIM, "readOnly": True}},
                {"name": SHM_VOLUME,
                 "emptyDir": {"medium": "Memory", "sizeLimit": shm_size(compose_file)}},
            ],
        },
    }
    # No `replicas`: the autoscaler owns the count, and re-applying this file must not reset it.
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": NAME, "namespace": namespace,
                         "labels": _labels("inference-server")},
            "spec": {"selector": {"matchLabels": dict(SELECTOR)}, "template": pod}}


def model_volume_claim(*, namespace: str = NAMESPACE, storage: str = "10Gi",
                       storage_class: str | None = None) -> dict:
    """The PersistentVolumeClaim holding the model repository (v1).

    ReadOnlyMany lets every replica, on any node, mount the same copy; it needs a storage class
    that offers it (NFS, CephFS, a cloud file store; `storage_class`, else the cluster's default).
    Fill it once with model_repository/ (weights and generated configs included) before Triton
    starts, from a pod that mounts it read-write."""
    spec: dict = {"accessModes": ["ReadOnlyMany"],
                  "resources": {"requests": {"storage": storage}}}
    if storage_class:
        spec["storageClassName"] = storage_class
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": MODEL_CLAIM, "namespace": namespace,
                         "labels": _labels("model-repository")},
            "spec": spec}


def service(*, namespace: str = NAMESPACE) -> dict:
    """The ClusterIP Service in front of the replicas: HTTP, gRPC and metrics, by port name."""
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": NAME, "namespace": namespace,
                         "labels": _labels("inference-server")},
            "spec": {"type": "ClusterIP", "selector": dict(SELECTOR),
                     "ports": [{"name": name, "port": port, "targetPort": name,
                                "protocol": "TCP"} for name, port in PORTS.items()]}}


def adapter_rules() -> list[dict]:
    """The Prometheus Adapter's custom-metric rules: Triton's per-model series summed per pod.

    `triton_pending_requests` (the autoscaler's default): requests waiting for a model instance
    in that pod, all models together (`nv_inference_pending_request_count`, a gauge: it reads
    the queue as it is now). `triton_queue_us_per_request`, the alternative: microseconds each
    request spent queued over the last minute (`rate` of the queue-time counter over the `rate`
    of successful requests; an idle pod reads 0). A request to the `food_captioning` ensemble is
    queued, and counted, in each of its steps.
    """
    def rule(series: str, metric: str, query: str) -> dict:
        return {"seriesQuery": f'{series}{{namespace!="",pod!=""}}',
                # the pod's own labels, as Prometheus' Kubernetes discovery adds them
                "resources": {"overrides": {"namespace": {"resource": "namespace"},
                                            "pod": {"resource": "pod"}}},
                "name": {"matches": f"^{series}$", "as": metric},
                "metricsQuery": query}

    per_pod = "sum by (<<.GroupBy>>) ({})"     # sums over the model and version labels
    matched = "{<<.LabelMatchers>>}"
    queue = per_pod.format(f"rate({QUEUE_SERIES}{matched}[1m])")
    done = per_pod.format(f"rate({SUCCESS_SERIES}{matched}[1m])")
    return [rule(PENDING_SERIES, PENDING_REQUESTS, per_pod.format(PENDING_SERIES + matched)),
            rule(QUEUE_SERIES, QUEUE_US_PER_REQUEST, f"{queue} / clamp_min({done}, 0.001)")]


def adapter_config(*, namespace: str = ADAPTER_NAMESPACE, name: str = ADAPTER_CONFIG) -> dict:
    """The Prometheus Adapter's config (v1 ConfigMap, key `config.yaml`) holding `adapter_rules`.

    It replaces the adapter's whole config: if yours also serves resource metrics
    (`resourceRules`), merge the two. With the prometheus-community Helm chart, put the rules
    under its values' `rules.custom` instead. The adapter reads its config at start only
    (`apply_commands` restarts it)."""
    config = to_yaml({"rules": adapter_rules()})
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": namespace,
                         "labels": {"app.kubernetes.io/name": ADAPTER_DEPLOYMENT,
                                    "app.kubernetes.io/part-of": "tritonlab"}},
            "data": {"config.yaml": config}}


def autoscaler(*, target_average_value: int | float | str, namespace: str = NAMESPACE,
               min_replicas: int = 1, max_replicas: int = 4,
               metric: str = PENDING_REQUESTS, scale_down_window_s: int = 300) -> dict:
    """The HorizontalPodAutoscaler (autoscaling/v2) of the Deployment, on a per-pod custom metric.

    It keeps the metric's average over the pods near `target_average_value`: for the default
    metric, requests waiting per replica (a notebook computes it from measurements); for
    `triton_queue_us_per_request`, microseconds. Replicas are removed only after the metric has
    stayed low for `scale_down_window_s`, one at a time: a new replica costs a GPU and a full
    model load. ManifestError for replica bounds Kubernetes refuses or an unknown metric.
    """
    if not 1 <= min_replicas <= max_replicas:
        raise ManifestError(f"Need 1 <= min_replicas <= max_replicas; got {min_replicas} and "
                            f"{max_replicas}.")
    metrics = [rule["name"]["as"] for rule in adapter_rules()]
    if metric not in metrics:
        raise ManifestError(f"metric {metric!r}: the adapter's rules serve {metrics}.")
    target = _quantity(target_average_value, "target_average_value")
    return {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": NAME, "namespace": namespace,
                         "labels": _labels("autoscaler")},
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": NAME},
                "minReplicas": min_replicas,
                "maxReplicas": max_replicas,
                "metrics": [{"type": "Pods",
                             "pods": {"metric": {"name": metric},
                                      "target": {"type": "AverageValue",
                                                 "averageValue": target}}}],
                "behavior": {"scaleDown": {
                    "stabilizationWindowSeconds": scale_down_window_s,
                    "policies": [{"type": "Pods", "value": 1, "periodSeconds": 60}]}},
            }}


def manifests(*, target_average_value: int | float | str, image: str = IMAGE,
              namespace: str = NAMESPACE, gpus: int = 1, cpu: str = "4", memory: str = "16Gi",
              startup_s: int = 300, model_storage: str = "10Gi",
              storage_class: str | None = None, min_replicas: int = 1, max_replicas: int = 4,
              metric: str = PENDING_REQUESTS, scale_down_window_s: int = 300,
              adapter_namespace: str = ADAPTER_NAMESPACE,
              compose_file: Path | str = COMPOSE_FILE) -> list[dict]:
    """Every manifest, in the order to apply them: Namespace, PersistentVolumeClaim, Deployment,
    Service, the adapter's ConfigMap, HorizontalPodAutoscaler (each a dict, as its YAML reads).

    The parameters are those of `deployment`, `model_volume_claim` (`model_storage`,
    `storage_class`), `autoscaler` and `adapter_config`; `target_average_value` has no default
    because it comes from a measurement. No Secret: its value is the key, which belongs in no
    file (see `apply_commands`). ManifestError as those functions raise it.
    """
    return [
        {"apiVersion": "v1", "kind": "Namespace",
         "metadata": {"name": namespace, "labels": {"app.kubernetes.io/part-of": "tritonlab"}}},
        model_volume_claim(namespace=namespace, storage=model_storage,
                           storage_class=storage_class),
        deployment(image=image, namespace=namespace, gpus=gpus, cpu=cpu, memory=memory,
                   startup_s=startup_s, compose_file=compose_file),
        service(namespace=namespace),
        adapter_config(namespace=adapter_namespace),
        autoscaler(target_average_value=target_average_value, namespace=namespace,
                   min_replicas=min_replicas, max_replicas=max_replicas, metric=metric,
                   scale_down_window_s=scale_down_window_s),
    ]


# --- checking, writing, applying ----------------------------------------------------------------

def describe(doc: dict) -> str:
    """A manifest's `Kind/name`, as error messages name it."""
    name = (doc.get("metadata") or {}).get("name", "?") if isinstance(doc, dict) else "?"
    return f"{doc.get('kind', '?') if isinstance(doc, dict) else '?'}/{name}"


def _api_server_problems(doc: dict) -> list[str]:
    """What the API server refuses although the JSON schema allows it (the schema has no
    'exactly one of' and does not relate fields): probes without exactly one handler, probes on a
    port name the container does not declare, a selector the pod template does not match."""
    problems = []
    spec = doc.get("spec") or {}
    template = spec.get("template") or {}
    for i, container in enumerate((template.get("spec") or {}).get("containers") or []):
        port_names = {port.get("name") for port in container.get("ports") or []}
        for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
            probe = container.get(kind)
            if probe is None:
                continue
            where = f"spec.template.spec.containers.{i}.{kind}"
            handlers = [h for h in ("exec", "httpGet", "tcpSocket", "grpc") if h in probe]
            if len(handlers) != 1:
                problems.append(f"{where}: needs exactly one handler (exec, httpGet, tcpSocket "
                                f"or grpc); has {handlers or 'none'}")
            port = (probe.get("httpGet") or probe.get("tcpSocket") or {}).get("port")
            if isinstance(port, str) and port not in port_names:
                problems.append(f"{where}: port {port!r} is not a port name of the container "
                                f"({sorted(n for n in port_names if n)})")
    wanted = (spec.get("selector") or {}).get("matchLabels") or {}
    labels = (template.get("metadata") or {}).get("labels") or {}
    if template and any(labels.get(k) != v for k, v in wanted.items()):
        problems.append(f"spec.selector.matchLabels {wanted} does not match the pod template's "
                        f"labels {labels}")
    return problems


def validate(docs: Iterable[dict], version: str = KUBERNETES_VERSION) -> None:
    """Check each manifest against Kubernetes `version`'s API schema, offline, in strict mode (an
    unknown or misspelt field fails too), plus the API server's rules in `_api_server_problems`.

    Uses kubernetes-validate's bundled JSON schemas. ManifestError lists every failing manifest
    as `Kind/name: field path: error`; also for a version it has no schemas for.
    """
    import kubernetes_validate
    from kubernetes_validate.utils import all_versions, major_minor

    shipped = sorted({major_minor(v) for v in all_versions()},
                     key=lambda v: tuple(map(int, v.split("."))))
    if major_minor(version.removeprefix("v")) not in shipped:
        raise ManifestError(f"kubernetes-validate {kubernetes_validate.__version__} has no "
                            f"schemas for Kubernetes {version}; it has {', '.join(shipped)}.")
    failures = []
    for doc in docs:
        where = describe(doc)
        if not isinstance(doc, dict) or "apiVersion" not in doc or "kind" not in doc:
            failures.append(f"{where}: a manifest needs apiVersion and kind")
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(part) for part in exc.path) or "(top level)"
            failures.append(f"{where}: {path}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            failures.append(f"{where}: {exc.message}")
        failures += [f"{where}: {problem}" for problem in _api_server_problems(doc)]
    if failures:
        raise ManifestError(f"Kubernetes {version} would refuse these manifests:\n"
                            + "\n".join(f"  {line}" for line in failures))


class _Dumper(yaml.SafeDumper):
    """PyYAML's safe dumper, writing text of several lines as a block (`|`), as people write it."""


def _text(dumper: yaml.SafeDumper, text: str) -> yaml.ScalarNode:
    style = "|" if "\n" in text else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)


_Dumper.add_representer(str, _text)


def to_yaml(doc: dict) -> str:
    """A manifest as YAML, keys in the order built, long lines kept whole (PromQL reads better)."""
    return yaml.dump(doc, Dumper=_Dumper, sort_keys=False, width=200)


def write(folder: Path | str, docs: Iterable[dict]) -> list[Path]:
    """One YAML file per manifest in `folder`, numbered in the order given (the order to apply
    them): `01-namespace-tritonlab.yaml`... Files an earlier `write` left there (they start with
    `BANNER`) are removed first, so the folder holds exactly these; other files are kept."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.yaml"):
        if old.read_text().startswith(BANNER):
            old.unlink()
    paths = []
    for i, doc in enumerate(docs, start=1):
        path = folder / f"{i:02d}-{doc['kind'].lower()}-{doc['metadata']['name']}.yaml"
        paths.append(atomic_write(path, BANNER + to_yaml(doc)))
    return paths


def apply_commands(folder: Path | str) -> list[str]:
    """The commands that put the manifests of `folder` on a cluster, in order, for a person to run
    where `kubectl` reaches it: `kubectl apply -f` for each file, the Secret right after the
    Namespace, and a restart of the Prometheus Adapter after its config changes.

    The Secret is created from the shell's TRITONLAB_API_KEY (the GPU node keeps it in .env)
    rather than written as a manifest: a file would put the key where files go (a repository, a
    hand-in), and a placeholder Secret, once applied, would replace the real key at every later
    `kubectl apply`. Until the Secret exists, Triton's pods wait (CreateContainerConfigError).
    Only the files `write` made are listed. ManifestError if `folder` holds no Deployment naming
    its Secret.
    """
    paths = sorted(p for p in Path(folder).glob("*.yaml") if p.read_text().startswith(BANNER))
    docs = [(path, yaml.safe_load(path.read_text())) for path in paths]
    deployments = [doc for _, doc in docs if doc.get("kind") == "Deployment"]
    if not deployments:
        raise ManifestError(f"{folder} holds no Deployment: write the manifests there first.")
    namespace = deployments[0]["metadata"]["namespace"]
    container = deployments[0]["spec"]["template"]["spec"]["containers"][0]
    ref = next((env["valueFrom"]["secretKeyRef"] for env in container.get("env", [])
                if env["name"] == KEY_VARIABLE), None)
    if ref is None:
        raise ManifestError(f"{folder}: the Deployment takes {KEY_VARIABLE} from no Secret.")
    secret = (f"kubectl --namespace {shlex.quote(namespace)} create secret generic "
              f"{shlex.quote(ref['name'])} --from-literal={shlex.quote(ref['key'])}="
              f'"${{{KEY_VARIABLE}:?set {KEY_VARIABLE} to the key first}}"')
    commands = [] if any(doc.get("kind") == "Namespace" for _, doc in docs) else [secret]
    for path, doc in docs:
        commands.append(f"kubectl apply -f {shlex.quote(str(path))}")
        if doc.get("kind") == "Namespace":
            commands.append(secret)
        elif doc.get("kind") == "ConfigMap" and doc["metadata"]["name"] == ADAPTER_CONFIG:
            commands.append(f"kubectl --namespace {shlex.quote(doc['metadata']['namespace'])} "
                            f"rollout restart deployment/{ADAPTER_DEPLOYMENT}")
    return commands
