"""Several Triton replicas on one machine, behind nginx: scaling out, served.

`Replicas` starts N embedded Triton servers (serving/embedded.py) on one model repository, each
with its own state folder and its own free ports on 127.0.0.1. `LoadBalancer` runs nginx (the
Debian package `nginx`, installed by `make system-deps`) in front of them, with two listeners:
one passes Triton's HTTP API to the replicas' HTTP ports (`proxy_pass`), the other its gRPC API
(HTTP/2) to their gRPC ports (`grpc_pass`). A client, or perf_analyzer, talks to nginx's two
ports as to one Triton; nginx's access log says which replica answered each request.

Cores: every replica is a whole Triton with its own model instances, and on one machine they
all run on the same cores. `share_cores` gives each of N replicas 1/N of the threads its config
would get alone: `cpu_share` divided by N, or an explicit `num_threads` divided by N. One thread
per instance is the least an instance can have, so a config of 2 single-thread instances (the
fastest classifier) runs 4 threads on a 2-core machine with two replicas: the operating system
then takes turns between them (`Replicas.plan` says how many threads run on how many cores).

On the GPU node, `serving.docker_replicas.DockerReplicas` offers the same interface with one
Triton container per GPU on the Docker network; `LoadBalancer` works in front of either.
"""

from __future__ import annotations

import atexit
import ipaddress
import os
import pwd
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
from tritonclient.grpc import model_config_pb2 as mc

from .. import settings
from ..common import log, poll_until
from ..settings import TritonAddress, free_ports
from . import configs, devices
from .embedded import (
    EmbeddedTriton,
    _kill_tree,
    _set_parent_death_signal,
    describe_exit,
    port_owner,
    stop_child,
)
from .server import PortInUseError, ServerError, TritonQueries


class NginxError(ServerError):
    """nginx could not be found, started or reached; the message says what to do."""


class NginxMissing(NginxError):
    """There is no nginx binary on this machine."""


class NginxConfigError(NginxError):
    """`nginx -t` refused the config; the message carries nginx's own words."""


# --- cores ---------------------------------------------------------------------------------------
def share_cores(cfg: mc.ModelConfig, replicas: int) -> mc.ModelConfig:
    """A copy of `cfg` for one of `replicas` servers sharing this machine: `cpu_share` divided
    by `replicas`, or an explicit `num_threads` divided by `replicas` (at least 1 per instance:
    more instances than cores then oversubscribe them). Raises ValueError if `replicas` < 1."""
    if replicas < 1:
        raise ValueError(f"replicas must be 1 or more, not {replicas}")
    shared = mc.ModelConfig()
    shared.CopyFrom(cfg)
    params = shared.parameters
    threads = int(params["num_threads"].string_value or 0) if "num_threads" in params else 0
    share = float(params["cpu_share"].string_value or 1) if "cpu_share" in params else 1.0
    configs.set_threads(shared, num_threads=max(1, threads // replicas) if threads > 0 else 0,
                        cpu_share=share / replicas)
    return shared


def threads_per_instance(cfg: mc.ModelConfig, cores: int | None = None,
                         repository: Path | None = None) -> int:
    """Threads each instance of `cfg` runs, computed by the served model's own code
    (`cpu_threads` in food_classifier's backend_helpers.py, from `repository`, default the
    served one) for `cores` (default: this process's usable cores)."""
    from ..assets.repository import classifier_module

    helpers = classifier_module(repository).backend_helpers
    return helpers.cpu_threads({"model_config": configs.to_json(cfg)},
                               cores or devices.usable_cores())


def instance_count(cfg: mc.ModelConfig) -> int:
    """How many instances of `cfg` one CPU-only Triton runs (every group's count, at least 1)."""
    return max(1, sum(group.count or 1 for group in cfg.instance_group))


def thread_plan(replicas: int, cfg: mc.ModelConfig, cores: int | None = None,
                repository: Path | None = None) -> str:
    """One sentence: `replicas` servers each running `cfg` (as each loads it), how many threads
    on how many `cores` (default: this process's usable cores), e.g. '2 replica(s) x 2
    instance(s) x 1 thread(s) = 4 threads on 2 cores: more threads than cores, ...'."""
    cores = cores or devices.usable_cores()
    instances = instance_count(cfg)
    threads = threads_per_instance(cfg, cores, repository)
    total = replicas * instances * threads
    text = (f"{replicas} replica(s) x {instances} instance(s) x {threads} thread(s) = "
            f"{total} threads on {cores} cores")
    return text + (": more threads than cores, so the operating system takes turns"
                   if total > cores else "")


# --- the replicas ------------------------------------------------------------------------------
class ServerGroup:
    """What every set of Triton replicas offers, whatever runs them: `servers` (TritonServer
    objects, in replica order), len, iteration and indexing over them, `http_urls`,
    `grpc_urls`, `metrics_urls`, `stop()` of every one (even after a failed start), and a
    context manager that starts them on entry (`start`, defined by the subclass) and stops them
    on exit. `Replicas` (embedded servers) and `docker_replicas.DockerReplicas` (containers)."""

    servers: list
    served: mc.ModelConfig | None = None

    def start(self, models: Sequence[str] | None = None, timeout: float = 120.0) -> float:
        raise NotImplementedError

    def plan(self, cfg: mc.ModelConfig | None = None, cores: int | None = None) -> str:
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.servers)

    def __iter__(self) -> Iterator:
        return iter(self.servers)

    def __getitem__(self, index: int):
        return self.servers[index]

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop every replica (those that never started too), all at once: each takes a few
        seconds to unload its models. Raises the first error met only after trying them all."""
        def stop_one(server) -> Exception | None:
            try:
                server.stop(timeout)
            except Exception as exc:  # stop the others anyway
                return exc
            return None

        with ThreadPoolExecutor(max_workers=len(self.servers)) as pool:
            errors = [e for e in pool.map(stop_one, self.servers) if e is not None]
        if errors:
            raise errors[0]

    def _load_everywhere(self, runnable: mc.ModelConfig, timeout: float) -> float:
        """Load `runnable` (as each replica gets it) on every replica, one after the other;
        remembered as `served`. Returns the seconds until every one has it READY."""
        began = time.monotonic()
        for server in self.servers:
            server.reload_model(runnable.name, config=runnable, timeout=timeout)
        self.served = runnable
        log.info(f"'{runnable.name}' ready on {len(self)} replica(s): {self.plan()}")
        return time.monotonic() - began

    @property
    def http_urls(self) -> list[str]:
        return [s.http_url for s in self.servers]

    @property
    def grpc_urls(self) -> list[str]:
        return [s.grpc_url for s in self.servers]

    @property
    def metrics_urls(self) -> list[str]:
        return [s.metrics_url for s in self.servers]


class Replicas(ServerGroup):
    """N embedded Triton servers on one model repository, each with its own state folder
    (`<state_dir>/replica-<i>`) and free ports on 127.0.0.1.

    `start()` starts them one after the other (each from this thread: Linux stops a server when
    the thread that started it ends, see embedded.py) and `stop()` stops every one of them, even
    when one failed to start. As a context manager it starts on entry and stops on exit.
    `models` are loaded from the config.pbtxt files on disk at start; `serve(cfg)` loads one
    config on every replica with its share of the cores (`share_cores`).
    """

    def __init__(self, count: int = 2, model_repository: Path | str | None = None,
                 state_dir: Path | str | None = None, models: Sequence[str] = ("*",),
                 exit_timeout: int = 10) -> None:
        if count < 1:
            raise ValueError(f"count must be 1 or more, not {count}")
        self.state_dir = Path(state_dir) if state_dir else settings.state_dir() / "replicas"
        self.models = list(models)
        ports = free_ports(3 * count)  # all at once, so that no two replicas get the same port
        self.servers = [
            EmbeddedTriton(model_repository=model_repository,
                           address=TritonAddress("127.0.0.1", *ports[3 * i:3 * i + 3]),
                           state_dir=self.state_dir / f"replica-{i}", exit_timeout=exit_timeout)
            for i in range(count)]
        self.model_repository = self.servers[0].model_repository
        self.served: mc.ModelConfig | None = None  # the config `serve` loaded, as each got it

    def start(self, models: Sequence[str] | None = None, timeout: float = 120.0) -> float:
        """Start every replica with `models` loaded (default: the constructor's); returns the
        seconds taken. On failure every replica is stopped again and the error (ServerError,
        saying which replica and why) is raised."""
        models = list(self.models if models is None else models)
        began = time.monotonic()
        try:
            for i, server in enumerate(self.servers):
                try:
                    server.start(models, timeout=timeout)
                except ServerError as exc:
                    raise type(exc)(f"replica {i} ({server.state_dir}): {exc}") from None
        except BaseException:
            self.stop()
            raise
        log.info(f"{len(self)} Triton replicas ready in {time.monotonic() - began:.1f} s: "
                 + ", ".join(f"http://{s.http_url}" for s in self.servers))
        return time.monotonic() - began

    def serve(self, cfg: mc.ModelConfig, timeout: float = 180.0) -> float:
        """Load `cfg` on every replica, each with its share of the cores (`share_cores`); the
        file on disk is not changed (Triton's load API takes the config itself). Returns the
        seconds until every replica has it READY; ModelLoadError with Triton's reason."""
        configs.validate(cfg)
        runnable, note = configs.for_this_machine(share_cores(cfg, len(self)),
                                                  devices.gpu_count())
        if note:
            log.info(note)
        return self._load_everywhere(runnable, timeout)

    def plan(self, cfg: mc.ModelConfig | None = None, cores: int | None = None) -> str:
        """How many threads run on how many cores, over all replicas, as one sentence: for
        `cfg` as `serve` would load it (its share of the cores), default the config `serve`
        loaded."""
        cfg = share_cores(cfg, len(self)) if cfg is not None else self.served
        if cfg is None:
            return "no config served yet (call serve(cfg))"
        return thread_plan(len(self), cfg, cores, self.model_repository)


# --- nginx ---------------------------------------------------------------------------------------
#: Where nginx is looked for besides PATH (Debian installs it in /usr/sbin, which a normal
#: user's PATH often lacks).
NGINX_PLACES = ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx")

#: nginx's balancing methods offered: round robin (nginx's default: each replica in turn) and
#: least_conn (the replica with the fewest requests in flight).
METHODS = ("round_robin", "least_conn")

#: The access log's format, one line per request: which listener, which replica answered
#: ($upstream_addr, 'host:port'; several, comma-separated, if nginx tried more than one) and
#: its status. The replica's port tells HTTP from gRPC and one replica from another.
LOG_FORMAT = ('$time_iso8601 listener=$server_port "$request" $status '
              'upstream="$upstream_addr" upstream_status="$upstream_status" '
              'request_time=$request_time')
_LOG_LINE = re.compile(r'^(?P<time>\S+) listener=(?P<listener>\d+) "(?P<method>\S+) '
                       r'(?P<uri>\S+)[^"]*" (?P<status>\d+) upstream="(?P<upstream>[^"]*)" '
                       r'upstream_status="(?P<upstream_status>[^"]*)" '
                       r'request_time=(?P<request_time>\S+)$')


def parse_access_line(line: str) -> dict | None:
    """One access-log line (LOG_FORMAT) as a dict: time, listener (port), method, uri, status,
    upstream (the replica that answered, 'host:port', or '' when none did), upstream_status,
    request_time (seconds); None for a line in another format."""
    found = _LOG_LINE.match(line.strip())
    if not found:
        return None
    entry = found.groupdict()
    # "a, b" when nginx tried a before b: b answered. "-" when no replica was asked.
    last = entry["upstream"].split(",")[-1].strip()
    entry["upstream"] = "" if last == "-" else last
    entry["listener"], entry["status"] = int(entry["listener"]), int(entry["status"])
    entry["request_time"] = float(entry["request_time"])
    return entry


def nginx_binary(path: str | Path | None = None) -> Path:
    """The nginx binary: `path` if given, else `nginx` on PATH or in NGINX_PLACES. Raises
    NginxMissing saying how to install it."""
    if path is not None:
        if Path(path).is_file() and os.access(path, os.X_OK):
            return Path(path)
        raise NginxMissing(f"There is no nginx at {path}. Install it with `make system-deps` "
                           "(the Debian package nginx), or pass the path of an nginx binary.")
    found = shutil.which("nginx") or next((p for p in NGINX_PLACES if os.access(p, os.X_OK)),
                                          None)
    if not found:
        raise NginxMissing("nginx is not installed (no `nginx` on PATH, nor in "
                           f"{', '.join(NGINX_PLACES)}). Install it with `make system-deps` "
                           "(the Debian package nginx; `sudo apt-get install nginx` does the "
                           "same), then try again.")
    return Path(found)


def nginx_version(binary: str | Path | None = None) -> str:
    """nginx's version line, as `nginx -v` prints it (e.g. 'nginx/1.22.1')."""
    out = subprocess.run([str(nginx_binary(binary)), "-v"], capture_output=True, text=True)
    return (out.stderr or out.stdout).strip().removeprefix("nginx version: ")


def is_loopback(host: str) -> bool:
    """Whether `host` (a name or an IP address) is this machine's loopback: 'localhost',
    127.0.0.0/8 or ::1. Any other name (a container's, such as triton-replica-0) is taken as
    another host."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


def loopback_ports(replicas) -> set[int]:
    """The ports the replicas listen on (HTTP, gRPC, metrics) on this machine's loopback, where
    nginx's listeners must not take them; a replica on another host (a container on the Docker
    network) holds none of this machine's ports."""
    return {port for server in replicas if is_loopback(server.address.host)
            for port in (server.address.http, server.address.grpc, server.address.metrics)}


class LoadBalancer(TritonQueries):
    """nginx in front of `replicas`: one HTTP and one gRPC listener on free ports of 127.0.0.1.

    `replicas` is a `Replicas` (embedded servers on this machine's loopback) or a
    `serving.docker_replicas.DockerReplicas` (containers on the Docker network, which nginx
    reaches by name): anything with their interface (len, iteration, `http_urls`,
    `metrics_urls`, `model_repository`, servers with `address` and `api_headers`).

    Everything nginx needs or writes lives in `folder` (its prefix, `-p`): nginx.conf, its pid
    file, error.log, access.log (LOG_FORMAT), temporary files. `method` is 'round_robin' or
    'least_conn' (METHODS). `start()` checks the config with `nginx -t`, starts nginx in the
    foreground as a child of this process (stopped by Linux if this process dies) and waits
    until Triton answers through both listeners; `stop()` stops nginx and its worker for sure.

    For measuring, it offers what perf_analyzer and `measuring.perf.run` use of a server:
    `http_url` and `grpc_url` (nginx's), `is_ready()`, `model_config()`, `version()`,
    `logs()`. It has no metrics endpoint of its own (`metrics_url` is None): each replica keeps
    its own (`replicas.metrics_urls`).
    """

    metrics_url = None  # nginx does not merge the replicas' metrics; each has its own

    @property
    def statistics_urls(self) -> list[str]:
        """Where the statistics of what nginx passed on are: every replica's HTTP endpoint
        (through nginx, a statistics request would reach one replica only)."""
        return self.replicas.http_urls

    def __init__(self, replicas: Replicas, folder: Path | str | None = None,
                 method: str = "round_robin", binary: str | Path | None = None,
                 keepalive: int = 32, timeout_s: int = 300) -> None:
        if method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, not {method!r}")
        self.replicas = replicas
        self.folder = (Path(folder) if folder else settings.state_dir() / "nginx").resolve()
        self.method = method
        self.binary = binary  # None: look for it (nginx_binary) when starting
        self.keepalive = keepalive  # idle connections to the replicas kept open, per upstream
        self.timeout_s = timeout_s  # longest wait for a replica's answer
        taken = loopback_ports(replicas)
        ports = free_ports(2)
        while taken & set(ports):  # a replica here not started yet may not hold its ports yet
            ports = free_ports(2)
        self.http_port, self.grpc_port = ports
        self.model_repository = replicas.model_repository
        self._proc: subprocess.Popen | None = None
        self._out = None
        self._exit_hook = False
        self._upstreams: dict[str, int] | None = None  # 'IP:port' -> replica (resolve_upstreams)

    # --- where things are ---------------------------------------------------------------------
    @property
    def http_url(self) -> str:
        """`host:port` of the HTTP listener, as tritonclient.http and perf_analyzer take it."""
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        """`host:port` of the gRPC listener."""
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def mode(self) -> str:
        return (f"nginx ({self.method}) over {len(self.replicas)} {self.replicas[0].mode} "
                "Triton replicas")

    @property
    def config_file(self) -> Path:
        return self.folder / "nginx.conf"

    @property
    def pid_file(self) -> Path:
        return self.folder / "nginx.pid"

    @property
    def error_log(self) -> Path:
        return self.folder / "error.log"

    @property
    def access_log(self) -> Path:
        """One line per request, in LOG_FORMAT (read it with `access_entries`)."""
        return self.folder / "access.log"

    def describe(self) -> str:
        return (f"nginx HTTP http://{self.http_url}  gRPC {self.grpc_url}  -> "
                f"{len(self.replicas)} replicas ({self.method})")

    def resolve_upstreams(self) -> dict[str, int]:
        """Every 'host:port' nginx may write in $upstream_addr for a replica's HTTP or gRPC
        port, with the replica's index. nginx resolves a replica's name when it reads its
        config and logs the address it connected to ('172.18.0.3:8000' for
        triton-replica-0:8000; '[::1]:8000' for IPv6): the names are resolved here the same
        way (socket.getaddrinfo), once, at `start`. The names themselves are kept too; a name
        that does not resolve maps by name only."""
        found: dict[str, int] = {}
        for i, server in enumerate(self.replicas):
            for url in (server.http_url, server.grpc_url):
                found[url] = i
                host, port = url.rsplit(":", 1)
                try:
                    infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
                except OSError:
                    continue
                for *_, sockaddr in infos:
                    ip = sockaddr[0]
                    found[f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"] = i
        self._upstreams = found
        return found

    def replica_of(self, upstream: str) -> int | None:
        """Which replica (its index) listens at `upstream` ('host:port' or 'IP:port' as nginx
        logs it, HTTP or gRPC; see `resolve_upstreams`), or None."""
        if self._upstreams is None:
            self.resolve_upstreams()
        return self._upstreams.get(upstream)

    # --- the config ---------------------------------------------------------------------------
    def config_text(self) -> str:
        """nginx.conf for these replicas (relative paths are inside `folder`)."""
        balance = "" if self.method == "round_robin" else f"        {self.method};\n"
        http_servers = "".join(f"        server {s.http_url};\n" for s in self.replicas)
        grpc_servers = "".join(f"        server {s.grpc_url};\n" for s in self.replicas)
        user = ("# Started by root, nginx would hand its worker to the user 'nobody', who cannot\n"
                "# read a private folder (pytest's temporary folders are): keep this user.\n"
                f"user {pwd.getpwuid(os.geteuid()).pw_name};\n" if os.geteuid() == 0 else "")
        return f"""\
# GENERATED FILE: written by tritonlab.serving.replicas.LoadBalancer at every start, for
# {len(self.replicas)} Triton replicas. Change the LoadBalancer's arguments, not this file.

# One worker process: this machine has few cores (2 in the course), and the Triton replicas and
# perf_analyzer need them; one worker serves thousands of connections (epoll), more would only
# compete with them.
worker_processes 1;
# Stay in the foreground: Python started nginx and stops it (with a parent-death signal).
daemon off;
pid nginx.pid;
error_log error.log warn;
{user}
events {{
    worker_connections 1024;
}}

http {{
    log_format upstreams '{LOG_FORMAT}';
    access_log access.log upstreams;

    # Temporary files in this folder (the package's own, under /var/lib/nginx, need root).
    client_body_temp_path temp/client_body;
    proxy_temp_path temp/proxy;
    fastcgi_temp_path temp/fastcgi;
    uwsgi_temp_path temp/uwsgi;
    scgi_temp_path temp/scgi;
    # A request may carry a batch of JPEGs: nginx's default limit is 1 MB. Up to 1 MB stays in
    # memory instead of a temporary file.
    client_max_body_size 64m;
    client_body_buffer_size 1m;

    # Triton's HTTP API on every replica.
    upstream triton_http {{
{balance}{http_servers}        keepalive {self.keepalive};
    }}

    # Triton's gRPC API on every replica.
    upstream triton_grpc {{
{balance}{grpc_servers}        keepalive {self.keepalive};
    }}

    server {{
        listen {self.http_url};
        location / {{
            proxy_pass http://triton_http;
            # Keep connections to the replicas open between requests: that needs HTTP/1.1 and
            # no "Connection: close" passed on from the client.
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_read_timeout {self.timeout_s}s;
        }}
    }}

    server {{
        # gRPC is HTTP/2 (nginx 1.22 turns it on in the listen line).
        listen {self.grpc_url} http2;
        location / {{
            grpc_pass grpc://triton_grpc;
            grpc_read_timeout {self.timeout_s}s;
            grpc_send_timeout {self.timeout_s}s;
        }}
    }}
}}
"""

    def _nginx(self, *args: str) -> list[str]:
        """An nginx command line on this folder: prefix, config, and the error log used before
        the config is read (`-e`)."""
        return [str(nginx_binary(self.binary)), "-p", f"{self.folder}/", "-c", "nginx.conf",
                "-e", "error.log", *args]

    def write_config(self, text: str | None = None) -> Path:
        """Write `text` (default: `config_text()`) as nginx.conf in `folder`; returns its path."""
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "temp").mkdir(exist_ok=True)
        self.config_file.write_text(self.config_text() if text is None else text)
        return self.config_file

    def check_config(self) -> None:
        """`nginx -t` on the written config; NginxConfigError with nginx's message if refused."""
        out = subprocess.run(self._nginx("-t", "-q"), capture_output=True, text=True,
                             timeout=30)
        if out.returncode != 0:
            message = (out.stderr + out.stdout).strip()
            raise NginxConfigError(f"nginx refused its config {self.config_file}:\n{message}\n"
                                   "Fix the LoadBalancer's arguments (the file is written again "
                                   "at every start).")

    # --- start and stop -----------------------------------------------------------------------
    def recorded_pid(self) -> int | None:
        """The pid in nginx's pid file, if it names an nginx started on this folder."""
        try:
            pid = int(self.pid_file.read_text().strip())
            cmd = " ".join(psutil.Process(pid).cmdline())
        except (OSError, ValueError, psutil.Error):
            return None
        return pid if "nginx" in cmd and str(self.folder) in cmd else None

    def processes(self) -> list[psutil.Process]:
        """nginx's running processes on this folder: the master and its worker."""
        pid = self._proc.pid if self._proc and self._proc.poll() is None else self.recorded_pid()
        if pid is None:
            return []
        try:
            master = psutil.Process(pid)
            return [master] + master.children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def start(self, timeout: float = 30.0) -> float:
        """Write and check the config, start nginx, wait until Triton answers through both
        listeners; returns the seconds taken. Raises NginxMissing (no binary: run `make
        system-deps`), NginxConfigError (`nginx -t` refused the config), PortInUseError, or
        NginxError (nginx exited or did not answer in `timeout` s, with its error log)."""
        began = time.monotonic()
        if self.is_running():
            raise NginxError("This nginx is already running; call stop() first.")
        self._stop_recorded()  # one left by an earlier session on this folder
        self.write_config()
        self.check_config()
        self.resolve_upstreams()  # the addresses nginx has just resolved the names to
        for label, port in (("HTTP", self.http_port), ("gRPC", self.grpc_port)):
            owner = port_owner(port)
            if owner:
                raise PortInUseError(f"Port {port} (nginx's {label} listener) is already in use "
                                     f"by {owner}; make a new LoadBalancer (it picks free ports).")
        self._out = open(self.folder / "nginx.out", "wb")
        self._proc = subprocess.Popen(
            self._nginx(), stdout=self._out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            cwd=self.folder, start_new_session=True, preexec_fn=_set_parent_death_signal)
        if not self._exit_hook:
            atexit.register(self._atexit_stop)
            self._exit_hook = True
        try:
            poll_until(self._answers, timeout, 0.1, "nginx answering")
        except TimeoutError:
            self.stop()
            raise NginxError(f"Triton did not answer through nginx within {timeout:.0f} s.\n"
                             f"nginx's error log:\n{self.logs(15)}\n"
                             "Check that the replicas are ready (replicas.start()).") from None
        except BaseException:
            self.stop()
            raise
        seconds = time.monotonic() - began
        log.info(f"nginx ready in {seconds:.1f} s: {self.describe()}")
        return seconds

    def _answers(self) -> bool:
        """True once Triton answers ready through both listeners; raises if nginx exited."""
        if self._proc is not None and self._proc.poll() is not None:
            raise NginxError(f"{self.exit_description()} before it answered.\n"
                             f"nginx's error log:\n{self.logs(15)}")
        return self.is_ready()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop nginx (SIGTERM: nginx's fast shutdown) and its worker, killing what is left
        after `timeout` s; also one an earlier session left on this folder."""
        if self._proc is not None:
            stop_child(self._proc, timeout)
            self._proc = None
        self._stop_recorded(timeout)
        if self._out is not None:
            self._out.close()
            self._out = None

    def _stop_recorded(self, timeout: float = 10.0) -> None:
        pid = self.recorded_pid()
        if pid is not None:
            _kill_tree(pid, timeout)
        self.pid_file.unlink(missing_ok=True)

    def _atexit_stop(self) -> None:
        try:
            self.stop()
        except Exception:  # interpreter shutdown: never raise from here
            pass

    def __enter__(self) -> LoadBalancer:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- what measuring asks of a server --------------------------------------------------------
    def is_running(self) -> bool:
        if self._proc is not None:
            return self._proc.poll() is None
        return self.recorded_pid() is not None

    @property
    def api_headers(self) -> dict[str, str]:
        """The replicas' key header, sent through nginx where their APIs are restricted."""
        return self.replicas[0].api_headers

    def is_ready(self) -> bool:
        """True when a replica answers ready through the HTTP listener and one through the gRPC
        listener (Triton's /v2/health/ready and ServerReady)."""
        import tritonclient.grpc as grpcclient
        from tritonclient.utils import InferenceServerException

        if not super().is_ready():
            return False
        try:
            client = grpcclient.InferenceServerClient(self.grpc_url)
            try:
                return bool(client.is_server_ready(client_timeout=2))
            finally:
                client.close()
        except InferenceServerException:
            return False

    def exit_description(self) -> str:
        return describe_exit(self._proc, "nginx") or (
            "nginx is running" if self.is_running() else "nginx is not running")

    def logs(self, lines: int = 40, **_) -> str:
        """The last `lines` of nginx's error log and of what it printed (each replica keeps its
        own Triton log: `replicas[i].logs()`)."""
        text = ""
        for path in (self.error_log, self.folder / "nginx.out"):
            try:
                text += path.read_text(errors="replace")
            except OSError:
                pass
        return "\n".join(text.splitlines()[-lines:])

    # --- the access log -----------------------------------------------------------------------
    def access_log_size(self) -> int:
        """Bytes in the access log now: pass it to `access_entries` to read what comes after."""
        try:
            return self.access_log.stat().st_size
        except OSError:
            return 0

    def access_entries(self, since: int = 0) -> list[dict]:
        """The access log's requests from byte `since` on, each as `parse_access_line` reads
        it, with `replica`: the index of the replica that answered (None if none did)."""
        try:
            with open(self.access_log, "rb") as f:
                f.seek(since)
                text = f.read().decode(errors="replace")
        except OSError:
            return []
        entries = []
        for line in text.splitlines():
            entry = parse_access_line(line)
            if entry is not None:
                entry["replica"] = self.replica_of(entry["upstream"])
                entries.append(entry)
        return entries


__all__ = ["METHODS", "LoadBalancer", "NginxConfigError", "NginxError", "NginxMissing",
           "Replicas", "ServerGroup", "is_loopback", "loopback_ports", "nginx_binary",
           "nginx_version", "parse_access_line", "share_cores", "thread_plan"]
