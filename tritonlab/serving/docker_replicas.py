"""Triton replicas on the GPU node: one container per GPU, run as compose's `triton` container is.

`DockerReplicas` offers what `serving.replicas.Replicas` offers, so that `LoadBalancer` and
`measuring.replicas` (`compare`, `split`) work with either; its replicas are containers instead
of embedded servers. Replica i is the container `triton-replica-<i>`, run with the docker CLI
through the Docker socket (as `DockerTriton` drives compose's container) from what `docker
inspect triton` says of compose's `triton` container: the same image, mounts, shared-memory
size and tritonserver command (its restricted-API key flags included, as compose expanded
them), on the same Docker network, with the node's GPU i alone (`--gpus device=<i>`; inside its
container that GPU is device 0). No host port is published: on the network, the Jupyter
container (and nginx in it) reaches replica i by name, at http://triton-replica-<i>:8000, gRPC
triton-replica-<i>:8001, metrics :8002. Where compose's container shares the host's network
instead (compose.host-network.yaml: `make node-check`), so do the replicas, each on free ports
of 127.0.0.1 (added to its tritonserver command), and where it has no GPU (no device request:
no compose.node.yaml) they get none either and run the GPU groups as CPU instances, as every
course notebook does on a machine without GPUs (configs.for_this_machine, with its note).
Each container carries the label
`tritonlab.replica=<i>`: `leftovers()` lists the ones a killed kernel left behind and
`remove_leftovers()` removes them; starting a replica removes a leftover of its own name first.

Cores: compose gives the containers no CPU limit, so each replica's container sees every core of
the node, and they all share them (with nginx and perf_analyzer in the Jupyter container).
`serve` therefore splits the threads as `Replicas.serve` does (`share_cores`), so that the
replicas together run the threads one Triton would; the instances each replica runs on its GPU
are the config's instances for one GPU (`replica_config`).
"""

from __future__ import annotations

import json
import re
import shlex
import time
from collections.abc import Sequence
from pathlib import Path

from tritonclient.grpc import model_config_pb2 as mc

from .. import settings
from ..common import atomic_write, log
from ..settings import TritonAddress
from . import configs
from .docker import KEY_HEADER, DockerTriton, api_key, docker_command
from .replicas import ServerGroup, share_cores, thread_plan
from .server import ServerError

#: The label every replica container carries (value: its index), to find leftovers by.
REPLICA_LABEL = "tritonlab.replica"
#: Compose's Triton container (compose.yaml: container_name), which the replicas copy.
SOURCE = "triton"
#: Triton's own ports, used unless the command sets --http-port, --grpc-port, --metrics-port.
TRITON_PORTS = {"http": 8000, "grpc": 8001, "metrics": 8002}
#: Networks on which containers do not reach each other by name. ("host" is not among them:
#: there replicas are reached at 127.0.0.1, each on ports of its own.)
_UNNAMED_NETWORKS = {"", "default", "bridge", "none"}
HOST_NETWORK = "host"
_KEY_FLAG = re.compile(r"^--http-restricted-api=[^:]*:(?P<header>[^=]+)=(?P<key>.+)$")

KIND_GPU = mc.ModelInstanceGroup.KIND_GPU


def replica_name(index: int) -> str:
    """The container name (and host name on the Docker network) of replica `index`."""
    return f"triton-replica-{index}"


# --- from `docker inspect` to `docker run` -------------------------------------------------------
def inspect_container(name: str = SOURCE, docker: str = "docker") -> dict:
    """What Docker says of container `name`: the one object of `docker inspect <name>`'s JSON
    list. Raises ServerError (no docker CLI here; no such container, with how to create it)."""
    proc = docker_command(docker, "inspect", name, container=name)
    found = json.loads(proc.stdout or "[]")
    if not found:
        raise ServerError(f"`docker inspect {name}` answered nothing: is '{name}' a container?")
    return found[0]


def container_command(container: dict) -> list[str]:
    """The command a container runs, from `docker inspect`: Config.Cmd (for compose's triton:
    tritonserver and its flags, with ${TRITONLAB_API_KEY} already expanded), else Args. Raises
    ServerError when it has neither."""
    command = list((container.get("Config") or {}).get("Cmd") or container.get("Args") or [])
    if not command:
        raise ServerError(f"Docker reports no command for the container "
                          f"{container.get('Name', '?').lstrip('/')} (Config.Cmd and Args empty)")
    return command


def _network(container: dict) -> str:
    """The container's Docker network (HostConfig.NetworkMode, if it is one of
    NetworkSettings.Networks, else the first of those): a named network, or "host" (the host's
    own). ServerError if containers on it cannot reach each other by name."""
    networks = list((container.get("NetworkSettings") or {}).get("Networks") or {})
    mode = (container.get("HostConfig") or {}).get("NetworkMode") or ""
    network = mode if mode in networks or not networks else networks[0]
    if network in _UNNAMED_NETWORKS or network.startswith("container:"):
        raise ServerError(
            f"The container {container.get('Name', '?').lstrip('/')} is on the network "
            f"'{network or 'none'}', where replicas could not be reached by name (or would "
            "share its ports). compose.yaml puts it on the network 'tritonlab': recreate it with "
            "`bash tritonlab/gpu_node_setup.sh containers`.")
    return network


def _mount_args(container: dict) -> list[str]:
    """`--volume SOURCE:TARGET[:ro]` for each of the container's mounts: from Mounts (Docker's
    resolved list: bind mounts by host path, volumes by name), else HostConfig.Binds."""
    args = []
    mounts = container.get("Mounts")
    if mounts:
        for mount in mounts:
            source = mount.get("Name") if mount.get("Type") == "volume" else mount.get("Source")
            if mount.get("Type") not in ("bind", "volume") or not source:
                continue  # tmpfs and the like hold nothing to share
            args += ["--volume", f"{source}:{mount['Destination']}"
                     + ("" if mount.get("RW", True) else ":ro")]
        return args
    for bind in (container.get("HostConfig") or {}).get("Binds") or []:
        source, target, *options = bind.split(":")
        flags = options[0].split(",") if options else []
        args += ["--volume", f"{source}:{target}" + (":ro" if "ro" in flags else "")]
    return args


def has_gpus(container: dict) -> bool:
    """True when the container was given GPUs (a device request for the `gpu` capability in
    HostConfig.DeviceRequests: compose.node.yaml's reservation, or `--gpus`)."""
    requests = (container.get("HostConfig") or {}).get("DeviceRequests") or []
    return any("gpu" in cap for req in requests for cap in (req.get("Capabilities") or []))


def run_args(container: dict, index: int, ports: dict[str, int] | None = None) -> list[str]:
    """The arguments of `docker run` (after `docker` itself) that start replica `index`, from
    `container`: what `docker inspect` says of compose's triton container (`inspect_container`).

    Kept from it: the shared-memory size (HostConfig.ShmSize, in bytes), the network, every
    mount (host path or volume -> path inside, read-only kept), the image (Config.Image) and
    the command (`container_command`), in this order after the options below. Added:
    `--detach`, the name `triton-replica-<index>`, the label `tritonlab.replica=<index>` and GPU
    `index` alone (`--gpus device=<index>`, only when the container has GPUs: `has_gpus`); in
    the host's network, `ports` ({"http", "grpc", "metrics": port}) as tritonserver's
    --http-port, --grpc-port and --metrics-port at the end of the command. Left out: published
    ports (the replica is reached by name on the network), the GPU reservation (all GPUs,
    replaced by one), the environment (the image's own applies; compose sets none for triton,
    and the image's NVIDIA_VISIBLE_DEVICES=all must not widen the one GPU). Raises ServerError
    when the container has no image or command, is on a network without names (`_network`), or
    is in the host's network and `ports` is missing.
    """
    config = container.get("Config") or {}
    image = config.get("Image")
    if not image:
        raise ServerError(f"Docker reports no image for the container "
                          f"{container.get('Name', '?').lstrip('/')} (Config.Image)")
    shm = int((container.get("HostConfig") or {}).get("ShmSize") or 0)
    network = _network(container)
    command = container_command(container)
    if network == HOST_NETWORK:
        if not ports:
            raise ServerError("In the host's network each replica needs ports of its own: "
                              "pass `ports`.")
        command = [*command, *(f"--{name}-port={ports[name]}" for name in TRITON_PORTS)]
    return ["run", "--detach", "--name", replica_name(index),
            "--label", f"{REPLICA_LABEL}={index}",
            "--network", network,
            *(["--gpus", f"device={index}"] if has_gpus(container) else []),
            *(["--shm-size", str(shm)] if shm > 0 else []),
            *_mount_args(container),
            image, *command]


def restricted_key(command: Sequence[str]) -> tuple[str, str] | None:
    """The header and key tritonserver's `--http-restricted-api` flag in `command` asks for
    (compose.yaml: X-Tritonlab-Key and the key of the node's .env), or None without one."""
    for arg in command:
        found = _KEY_FLAG.match(arg)
        if found:
            return found["header"], found["key"]
    return None


def command_ports(command: Sequence[str]) -> dict[str, int]:
    """The HTTP, gRPC and metrics ports tritonserver listens on with `command` (its
    --http-port, --grpc-port, --metrics-port, as `--flag=N` or `--flag N`; Triton's 8000, 8001
    and 8002 by default)."""
    ports = dict(TRITON_PORTS)
    args = list(command)
    for i, arg in enumerate(args):
        for name in ports:
            flag = f"--{name}-port"
            if arg.startswith(flag + "="):
                ports[name] = int(arg.split("=", 1)[1])
            elif arg == flag and i + 1 < len(args):
                ports[name] = int(args[i + 1])
    return ports


def redact(text: str, key: str) -> str:
    """`text` with the API key replaced by <TRITONLAB_API_KEY>, fit to print in a notebook."""
    return text.replace(key, "<TRITONLAB_API_KEY>") if key else text


# --- what each replica serves --------------------------------------------------------------------
def gpu_share(cfg: mc.ModelConfig, gpu: int) -> mc.ModelConfig:
    """The instances `cfg` places on the node's GPU `gpu`, as a container given that GPU alone
    runs them (it sees it as device 0): each KIND_GPU group that names `gpu`, or names no GPU
    (Triton then places its count on every GPU), becomes a group of the same count on
    `gpus: [0]` (a group's count is per GPU); KIND_GPU groups that name only other GPUs are
    left out; KIND_CPU and KIND_AUTO groups are kept as they are."""
    share = mc.ModelConfig()
    share.CopyFrom(cfg)
    share.ClearField("instance_group")
    for group in cfg.instance_group:
        if group.kind != KIND_GPU:
            share.instance_group.add().CopyFrom(group)
        elif not group.gpus or gpu in group.gpus:
            kept = share.instance_group.add()
            kept.CopyFrom(group)
            kept.ClearField("name")  # Triton names each group after the model and its index
            kept.gpus[:] = [0]
    return share


def replica_config(cfg: mc.ModelConfig, replicas: int) -> mc.ModelConfig:
    """The config each of `replicas` replicas loads, replica i having the node's GPU i:
    `gpu_share(cfg, i)`, which must be the same for every i, so that the replicas together run
    the instances one Triton would run with `cfg` on GPUs 0 to replicas-1. Notebook 04's
    two-GPU config (2 instances on GPU 0, 2 on GPU 1) gives each replica 2 instances on its
    GPU; a CPU-only config is returned unchanged. Raises ValueError when `cfg` places different
    instances on those GPUs, or places some on a GPU no replica has."""
    shares = [gpu_share(cfg, i) for i in range(replicas)]
    named = sorted({g for group in cfg.instance_group if group.kind == KIND_GPU
                    for g in group.gpus})
    beyond = [g for g in named if g >= replicas]
    if beyond:
        raise ValueError(f"'{cfg.name}' places instances on GPU(s) {beyond}, but the "
                         f"{replicas} replica(s) have the node's GPUs 0 to {replicas - 1}")
    if any(share != shares[0] for share in shares[1:]):
        counts = [sum(g.count for g in s.instance_group if g.kind == KIND_GPU) for s in shares]
        raise ValueError(f"'{cfg.name}' places different instances on GPUs 0 to {replicas - 1} "
                         f"({', '.join(map(str, counts))} instance(s)): each replica serves the "
                         "same config, so give every GPU the same groups (or name no GPU).")
    return shares[0]


def gpu_instances(cfg: mc.ModelConfig) -> dict[int, int]:
    """{GPU index: instances} for the KIND_GPU groups of `cfg` that name their GPUs (a group's
    count is per GPU it names), in GPU order."""
    counts: dict[int, int] = {}
    for group in cfg.instance_group:
        if group.kind == KIND_GPU:
            for gpu in group.gpus:
                counts[gpu] = counts.get(gpu, 0) + (group.count or 1)
    return dict(sorted(counts.items()))


# --- one replica ---------------------------------------------------------------------------------
class DockerTritonReplica(DockerTriton):
    """Replica `index`: the container `triton-replica-<index>`, run with `run_args` (the
    arguments of `docker run`) and removed by `stop` (`docker rm -f`), its log kept in
    `log_dir`/triton.log first. Readiness, model control and statistics are TritonServer's,
    over HTTP at `address`, with the key header the command restricts model control by."""

    def __init__(self, index: int, run_args: Sequence[str], address: TritonAddress,
                 model_repository: Path | str | None = None, key: str | None = None,
                 header: str = KEY_HEADER, docker: str = "docker",
                 log_dir: Path | str | None = None) -> None:
        super().__init__(model_repository=model_repository, address=address,
                         container=replica_name(index), key=key, docker=docker)
        self.api_headers = {header: self.key}
        self.index = index
        self.run_args = list(run_args)
        self.log_dir = Path(log_dir) if log_dir else None

    def command_line(self) -> str:
        """The `docker run` command line of this replica, the API key hidden."""
        return redact(shlex.join([self.docker, *self.run_args]), self.key)

    def launch(self, models: Sequence[str] = ("*",)) -> None:
        """Remove a leftover container of this name (a killed kernel's), then run this one;
        does not wait for Triton (see `start`). The container loads the models its command
        names (compose's: all of them), whatever `models` says. Raises ServerError with
        Docker's message (the key hidden)."""
        if list(models) not in (["*"], []):
            log.info(f"{self.container} loads the models its command names (as compose's triton "
                     f"container does); asked for {', '.join(models)}.")
        self._docker("rm", "-f", self.container, check=False)
        try:
            self._docker(*self.run_args)
        except ServerError as exc:
            raise ServerError(
                redact(str(exc), self.key)
                + f"\nReplica {self.index} needs the node's GPU {self.index} (one GPU per "
                  "replica: `nvidia-smi` on the node lists them).") from None

    def _launch(self, models: Sequence[str]) -> None:
        self.launch(models)

    def keep_log(self) -> Path | None:
        """Write the container's whole log to `log_dir`/triton.log (it goes with the
        container); returns the path, or None without a container or a `log_dir`."""
        if self.log_dir is None:
            return None
        proc = self._docker("logs", self.container, check=False)
        if proc.returncode != 0:
            return None
        self.log_dir.mkdir(parents=True, exist_ok=True)
        return atomic_write(self.log_dir / "triton.log", proc.stdout + proc.stderr)

    def _terminate(self, timeout: float) -> None:
        self.keep_log()
        proc = self._docker("rm", "-f", self.container, check=False)
        if proc.returncode != 0 and "No such container" not in proc.stderr:
            raise ServerError(f"`docker rm -f {self.container}` failed: {proc.stderr.strip()}\n"
                              f"Remove it on the node with `docker rm -f {self.container}`.")


# --- the replicas --------------------------------------------------------------------------------
class DockerReplicas(ServerGroup):
    """`count` Triton containers on the GPU node, replica i with the node's GPU i, each run as
    compose's `source` container is (see the module's text and `run_args`), on the model
    repository it mounts (`model_repository`: that repository as this machine sees it, default
    the served one; config.pbtxt files are read there).

    The same interface as `serving.replicas.Replicas`: len, iteration and indexing over the
    replicas (DockerTritonReplica), `start` and `stop` (every replica, even after a failed
    start), a context manager, `serve(cfg)`, `plan()`, `http_urls`, `grpc_urls`,
    `metrics_urls`, `model_repository`, `served`, `state_dir` (each replica's kept log:
    `<state_dir>/replica-<i>/triton.log`). The source container is inspected here, once; the
    key header sent is the one its command restricts model control by (else `key`, else
    docker.api_key()). Raises ServerError when the docker CLI or the source container is
    missing, ValueError when `count` < 1.
    """

    def __init__(self, count: int = 2, model_repository: Path | str | None = None,
                 state_dir: Path | str | None = None, models: Sequence[str] = ("*",),
                 source: str = SOURCE, docker: str = "docker", key: str | None = None) -> None:
        if count < 1:
            raise ValueError(f"count must be 1 or more, not {count}")
        self.state_dir = (Path(state_dir) if state_dir
                          else settings.state_dir() / "docker-replicas")
        self.models = list(models)
        self.source, self.docker = source, docker
        self.inspected = inspect_container(source, docker)
        command = container_command(self.inspected)
        header, key = restricted_key(command) or (KEY_HEADER, key or api_key())
        self.gpus = has_gpus(self.inspected)
        host_network = _network(self.inspected) == HOST_NETWORK
        self.servers = []
        for i in range(count):
            if host_network:  # this container shares that network: free ports of 127.0.0.1
                ports = dict(zip(TRITON_PORTS, settings.free_ports(3)))
                address = TritonAddress("127.0.0.1", ports["http"], ports["grpc"],
                                        ports["metrics"])
            else:
                ports = command_ports(command)
                address = TritonAddress(replica_name(i), ports["http"], ports["grpc"],
                                        ports["metrics"])
            self.servers.append(DockerTritonReplica(
                i, run_args(self.inspected, i, ports if host_network else None), address,
                model_repository, key=key, header=header, docker=docker,
                log_dir=self.state_dir / f"replica-{i}"))
        self.model_repository = self.servers[0].model_repository
        self.served: mc.ModelConfig | None = None  # the config `serve` loaded, as each got it

    def command_lines(self) -> list[str]:
        """Each replica's `docker run` command line, the API key hidden."""
        return [server.command_line() for server in self.servers]

    def _each(self, step: str, call) -> None:
        """`call(server)` for every replica, each error saying which replica it was."""
        for server in self.servers:
            try:
                call(server)
            except ServerError as exc:
                raise type(exc)(f"replica {server.index} ({server.container}, GPU "
                                f"{server.index}) {step}: {exc}") from None

    def launch(self, models: Sequence[str] | None = None) -> None:
        """Run every replica's container, one after the other, without waiting for Triton; on
        failure every replica is removed again and the error (ServerError, naming the replica)
        raised."""
        models = list(self.models if models is None else models)
        try:
            self._each("could not start", lambda server: server.launch(models))
        except BaseException:
            self.stop()
            raise

    def start(self, models: Sequence[str] | None = None, timeout: float = 300.0) -> float:
        """Run every replica's container (`launch`: they load their models side by side), then
        wait until each is ready with `models` READY (default: the constructor's); returns the
        seconds taken. On failure every replica is removed again and the error (ServerError,
        naming the replica and saying why) is raised."""
        models = list(self.models if models is None else models)
        began = time.monotonic()
        self.launch(models)
        try:
            self._each("did not become ready", lambda server: server.wait_ready(
                models, timeout=max(1.0, timeout - (time.monotonic() - began))))
        except BaseException:
            self.stop()
            raise
        log.info(f"{len(self)} Triton replica containers ready in "
                 f"{time.monotonic() - began:.1f} s: "
                 + ", ".join(f"http://{s.http_url}" for s in self.servers))
        return time.monotonic() - began

    def serve(self, cfg: mc.ModelConfig, timeout: float = 180.0) -> float:
        """Load `cfg` on every replica: its instances for one GPU (`replica_config`: each
        replica's own GPU is its device 0) and its share of the node's cores (`share_cores`: the
        containers share them); the file on disk is not changed. Returns the seconds until
        every replica has it READY. Raises ValueError (`replica_config`) or ModelLoadError with
        Triton's reason."""
        configs.validate(cfg)
        runnable = share_cores(replica_config(cfg, len(self)), len(self))
        if not self.gpus:  # containers without GPUs: the GPU groups run as CPU instances
            runnable, note = configs.for_this_machine(runnable, 0)
            if note:
                log.info(note)
        return self._load_everywhere(runnable, timeout)

    def plan(self, cfg: mc.ModelConfig | None = None, cores: int | None = None) -> str:
        """What runs where, over all replicas, as one sentence, for `cfg` as `serve` would
        load it (default: the config `serve` loaded). With KIND_GPU instances, the GPUs: '2
        replica(s) x 2 instance(s) on a GPU of its own = 4 instances on 2 GPUs (replica i has
        the node's GPU i)'; without, the threads on the node's cores, which the containers
        share (as `Replicas.plan`, for `cores`, default this process's usable cores)."""
        if cfg is not None:
            cfg = share_cores(replica_config(cfg, len(self)), len(self))
        cfg = cfg if cfg is not None else self.served
        if cfg is None:
            return "no config served yet (call serve(cfg))"
        gpu = sum(g.count or 1 for g in cfg.instance_group if g.kind == KIND_GPU)
        if not gpu:
            return (thread_plan(len(self), cfg, cores, self.model_repository)
                    + ", which the replicas' containers share")
        text = (f"{len(self)} replica(s) x {gpu} instance(s) on a GPU of its own = "
                f"{len(self) * gpu} instances on {len(self)} GPU(s) (replica i has the node's "
                "GPU i)")
        cpu = sum(g.count or 1 for g in cfg.instance_group
                  if g.kind == mc.ModelInstanceGroup.KIND_CPU)
        return text + (f", and {cpu} CPU instance(s) each on the node's shared cores"
                       if cpu else "")


# --- leftovers -----------------------------------------------------------------------------------
def leftovers(docker: str = "docker") -> list[str]:
    """Names of the replica containers on this Docker engine, running or not (those carrying
    the label tritonlab.replica): a running DockerReplicas' own, or those a killed kernel left
    behind. Raises ServerError (no docker CLI, Docker's message)."""
    proc = docker_command(docker, "ps", "--all", "--filter", f"label={REPLICA_LABEL}",
                          "--format", "{{.Names}}")
    return proc.stdout.split()


def remove_leftovers(docker: str = "docker") -> list[str]:
    """Remove every replica container (`leftovers`); returns their names."""
    names = leftovers(docker)
    if names:
        docker_command(docker, "rm", "-f", *names)
    return names


__all__ = ["REPLICA_LABEL", "DockerReplicas", "DockerTritonReplica", "command_ports",
           "container_command", "gpu_instances", "gpu_share", "inspect_container", "leftovers",
           "remove_leftovers", "replica_config", "replica_name", "restricted_key", "run_args"]
