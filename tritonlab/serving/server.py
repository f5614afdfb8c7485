"""What every way of running Triton offers the notebooks: lifecycle, model control, logs.

`TritonServer` holds what the modes share: readiness, loading and unloading models, and the
server's statistics, all through Triton's HTTP API with tritonclient; and the log, with the
lines every machine without a GPU prints hidden. `EmbeddedTriton` (serving/embedded.py) runs
the `tritonserver` binary of the nvidia-pytriton wheel on this machine; `DockerTriton`
(serving/docker.py) drives the Triton container of the GPU node.
"""

from __future__ import annotations

import re
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from pathlib import Path

import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from .. import settings
from ..settings import TritonAddress

#: Lines Triton prints on every machine without a GPU; harmless, so `logs()` hides them.
GPU_NOISE = re.compile(
    r"Failed to initialize NVML|DCGM|Unable to get device count|GPU metrics|"
    r"CUDA driver version is insufficient|cudaGetDeviceCount|Failed to get CUDA device count|"
    r"Unable to allocate pinned system memory|Unable to get CUDA device count|"
    r"CudaDriverHelper has not been initialized|CUDA memory pool disabled"
)


class ServerError(RuntimeError):
    """Triton could not be started, reached or controlled; the message says what to do."""


class PortInUseError(ServerError):
    """A port Triton needs is held by another process."""


class ServerBusyError(ServerError):
    """This checkout's Triton is another session's (a second notebook's, or `make serve`'s):
    the message names who holds it and what frees it."""


#: The longest a start or a model load may take in all, however steadily Triton's log grows
#: (`TritonServer.wait_ready`); a start with BLIP on a busy 2-core machine took over 120 s here.
READY_LIMIT_S = 900


#: How long Triton may say it is not ready while every model asked for is READY and none is
#: loading, before `wait_ready` reports why (`TritonServer.not_ready_reason`): a model that
#: just became READY makes the server ready within a check or two.
NOT_READY_GRACE_S = 5.0


class ServerNotReady(ServerError):
    """Triton exited or did not become ready in time."""


class ModelLoadError(ServerError):
    """Triton refused to load a model; the message carries Triton's reason and log lines."""


def _tail(text: str, lines: int) -> str:
    return "\n".join(text.splitlines()[-lines:])


class TritonQueries:
    """What the course asks of Triton's HTTP API at `http_url`, sending `api_headers` where an
    API is restricted: health, version, a model's config. Answered by a Triton server, or by
    nginx in front of replicas (serving.replicas.LoadBalancer), which passes each question to
    one of them."""

    http_url: str
    api_headers: dict[str, str]

    def client(self, timeout: float = 5.0) -> httpclient.InferenceServerClient:
        """A tritonclient HTTP client for this server (close it when done)."""
        return httpclient.InferenceServerClient(self.http_url, connection_timeout=timeout,
                                                network_timeout=timeout)

    def _ask(self, call, default=False, timeout: float = 2.0):
        """`call(client)` on a fresh client; `default` when Triton does not answer."""
        try:
            client = self.client(timeout)
        except (InferenceServerException, OSError):
            return default
        try:
            return call(client)
        except (InferenceServerException, OSError):
            return default
        finally:
            client.close()

    def check_held(self) -> None:
        """Raise ServerBusyError when the server here is another session's, so that this one
        neither controls nor measures it; the embedded Triton knows (its pid file), the others
        are shared by design (the GPU node's container, a load balancer's replicas)."""

    def is_live(self) -> bool:
        return self._ask(lambda c: c.is_server_live())

    def is_ready(self) -> bool:
        return self._ask(lambda c: c.is_server_ready())

    def version(self) -> str | None:
        """Triton's version, from its server metadata (None if it does not answer)."""
        return self._ask(lambda c: c.get_server_metadata().get("version"), default=None)

    def model_config(self, name: str) -> dict | None:
        """The config Triton uses for `name`, as JSON (None if it does not answer)."""
        return self._ask(lambda c: c.get_model_config(name, headers=self.api_headers or None),
                         default=None)


class TritonServer(TritonQueries, ABC):
    """What every Triton deployment offers the notebooks: lifecycle, model control and logs."""

    mode: str = "abstract"

    def __init__(self, model_repository: Path | str | None = None,
                 address: TritonAddress | None = None,
                 api_headers: dict[str, str] | None = None) -> None:
        # The repository as this machine sees it (a container may mount it elsewhere).
        self.model_repository = Path(model_repository or settings.model_repository()).resolve()
        self.address = address or TritonAddress.from_env()
        # Headers sent with model-control calls (the Docker setup restricts that API by a key).
        self.api_headers = dict(api_headers or {})
        self._loaded: list[str] = ["*"]  # the models the last start loaded
        #: The config each model was last loaded with through this object (`reload_model`,
        #: so `deploy` too) since it last started; a start loads config.pbtxt instead.
        self.loaded_configs: dict = {}

    # --- addresses ---------------------------------------------------------------------------
    @property
    def http_url(self) -> str:
        """`host:port` as tritonclient.http and perf_analyzer take it."""
        return self.address.http_url

    @property
    def grpc_url(self) -> str:
        return self.address.grpc_url

    @property
    def metrics_url(self) -> str:
        return self.address.metrics_url

    @property
    def statistics_urls(self) -> list[str]:
        """The HTTP endpoints whose model statistics together count what this server answered:
        its own (a load balancer in front of replicas gives theirs)."""
        return [self.http_url]

    def describe(self) -> str:
        return (f"Triton ({self.mode}) HTTP http://{self.http_url}  gRPC {self.grpc_url}  "
                f"metrics {self.metrics_url}")

    # --- what an implementation provides -----------------------------------------------------
    @abstractmethod
    def _launch(self, models: Sequence[str]) -> None:
        """Start the server process or container, loading `models` ("*" for all)."""

    @abstractmethod
    def _terminate(self, timeout: float) -> None:
        """Stop the server and everything it started; no process may be left behind."""

    @abstractmethod
    def is_running(self) -> bool:
        """True while the server process or container exists."""

    @abstractmethod
    def log_text(self) -> str:
        """The server's whole log of the current run."""

    def exit_description(self) -> str:
        return "Triton is not running"

    # --- lifecycle -----------------------------------------------------------------------------
    def start(self, models: Sequence[str] = ("*",), timeout: float = 120.0) -> float:
        """Start Triton with `models` loaded, wait until ready; returns the seconds taken."""
        began = time.monotonic()
        self.loaded_configs = {}
        self._launch(list(models))
        self.wait_ready(models, timeout=timeout)
        self._loaded = list(models)
        return time.monotonic() - began

    def stop(self, timeout: float = 30.0) -> None:
        """Stop Triton; waits for it to exit and kills it (and its model processes) if it hangs."""
        self._terminate(timeout)

    def restart(self, models: Sequence[str] | None = None, timeout: float = 120.0) -> float:
        """Full restart, as after editing config.pbtxt; returns the seconds until ready again."""
        models = list(models or self._loaded)
        began = time.monotonic()
        self.stop()
        self.start(models, timeout=timeout)
        return time.monotonic() - began

    def model_states(self) -> list[dict]:
        """The repository index: each model with its state and, if it failed, the reason."""
        client = self.client()
        try:
            return client.get_model_repository_index(headers=self.api_headers or None)
        finally:
            client.close()

    def _ready_or_why(self, wanted: set[str]) -> bool | None:
        """True once every model in `wanted` is READY and Triton says it is ready; None while
        those models are READY but Triton says it is not; raises when waiting cannot help."""
        if not self.is_running():
            raise ServerNotReady(
                f"{self.exit_description()} before it became ready.\n"
                f"Last log lines:\n{self.logs(25)}\n"
                "Check the lines above; fix the model or config they name, then start again.")
        if not self.is_live():
            return False
        states = self.model_states()
        named = {m["name"]: m for m in states}
        if "*" in wanted:  # every model Triton tried to load
            targets = [m for m in states if m.get("state")]
        else:
            targets = [named.get(n, {"name": n}) for n in wanted]
        failed = [m for m in targets if m.get("state") == "UNAVAILABLE" and m.get("reason")]
        if failed:
            m = failed[0]
            raise ModelLoadError(
                f"Triton could not load model '{m['name']}': {m['reason']}\n"
                f"Log lines for this model:\n{self.logs(20, model=m['name'])}")
        if not all(m.get("state") == "READY" for m in targets):
            return False
        loading = any(m.get("state") in ("LOADING", "UNLOADING") for m in states)
        return True if self.is_ready() else (False if loading else None)

    def not_ready_reason(self) -> str:
        """Why Triton says it is not ready while every model asked for is READY, from its log:
        under strict readiness (Triton's default) a model that failed to load in this run keeps
        the whole server not ready, even once it is unloaded or its folder removed (seen with
        server 2.51 after loading a folder whose config named another model)."""
        failed = [ln for ln in self.log_text().splitlines() if "failed to load" in ln]
        return (
            "Triton says it is not ready although every model asked for is READY and none is "
            "loading. A model that failed to load keeps it so for the rest of this run (strict "
            "readiness), even once unloaded or removed"
            + (": its log says\n" + "\n".join(failed[-3:]) if failed else
               " (its log names no model that failed to load)")
            + "\nFix or remove that model (`make configs` puts the course's repository back), "
            "then restart Triton (server.restart(), or `make stop` and start again).")

    def wait_ready(self, models: Iterable[str] = ("*",), timeout: float = 120.0) -> None:
        """Block until Triton answers and every model in `models` is READY, or raise saying why:
        ServerNotReady (the server exited; or `timeout` seconds passed with no new line in
        Triton's log, or READY_LIMIT_S in all; or the models are READY and Triton still says
        it is not, `not_ready_reason`) or ModelLoadError.

        A slow machine gets the time its models take while Triton's log keeps growing: here on
        2 cores, under a test run beside it, a start with BLIP went on loading for over 120 s."""
        wanted = set(models)
        began = time.monotonic()
        size, grew, read = -1, began, 0.0  # the log's length, when it last grew, last read
        not_ready_since = None  # since when the models were READY and the server not
        while not (ready := self._ready_or_why(wanted)):
            now = time.monotonic()
            if ready is None:
                not_ready_since = not_ready_since or now
                if now - not_ready_since > NOT_READY_GRACE_S:
                    raise ServerNotReady(self.not_ready_reason())
            else:
                not_ready_since = None
            if now - read >= 2:  # the log, every 2 s (in Docker mode: `docker logs`)
                read = now
                length = len(self.log_text())
                if length != size:
                    size, grew = length, now
            if now - grew > timeout:
                why = f"nothing new in its log for {timeout:.0f} s"
            elif now - began > READY_LIMIT_S:
                why = f"still loading after {READY_LIMIT_S} s"
            else:
                time.sleep(0.25)
                continue
            raise ServerNotReady(
                f"Triton did not become ready: {why} ({now - began:.0f} s after the wait began).\n"
                f"Last log lines:\n{self.logs(25)}\n"
                "Check the lines above: a model that loads without end names itself there.")

    # --- model control -------------------------------------------------------------------------
    def reload_model(self, name: str, config=None, timeout: float = 120.0) -> float:
        """Load (or reload) one model, optionally with a new config; returns seconds until READY.

        `config` may be a `model_config_pb2.ModelConfig`, its JSON text, or None for the
        config.pbtxt on disk. (The file is sent along explicitly: Triton reloads nothing when the
        repository is unchanged, so an earlier override would otherwise stay in force.) Triton's
        own message is raised if it refuses the model.
        """
        from google.protobuf import json_format
        from tritonclient.grpc import model_config_pb2 as mc

        from .configs import read_config, to_json

        on_disk = self.model_repository / name / "config.pbtxt"
        if config is None and on_disk.exists():
            config = read_config(on_disk)
        if config is not None and not isinstance(config, str):
            config = to_json(config)
        self.loaded_configs.pop(name, None)
        client = self.client(READY_LIMIT_S)  # Triton answers once the model has loaded
        began = time.monotonic()
        try:
            client.load_model(name, headers=self.api_headers or None, config=config)
        except InferenceServerException as exc:
            raise ModelLoadError(
                f"Triton refused model '{name}': {exc.message()}\n"
                f"Log lines for this model:\n{self.logs(20, model=name)}") from None
        finally:
            client.close()
        self.wait_ready([name], timeout=timeout)
        if config is not None:
            self.loaded_configs[name] = json_format.Parse(config, mc.ModelConfig(),
                                                          ignore_unknown_fields=True)
        return time.monotonic() - began

    def unload_model(self, name: str) -> None:
        """Unload one model (explicit model control); ServerError with Triton's reason."""
        client = self.client(30)
        try:
            client.unload_model(name, headers=self.api_headers or None)
        except InferenceServerException as exc:
            raise ServerError(f"Triton did not unload '{name}': {exc.message()}") from None
        finally:
            client.close()

    # --- logs --------------------------------------------------------------------------------
    def logs(self, lines: int = 40, model: str | None = None, gpu_noise: bool = False) -> str:
        """The last `lines` of the log, optionally only those naming `model`.

        Warnings that every machine without a GPU prints (NVML, DCGM) are hidden unless
        `gpu_noise` is True: they are harmless here.
        """
        kept = [ln for ln in self.log_text().splitlines()
                if (gpu_noise or not GPU_NOISE.search(ln)) and (model is None or model in ln)]
        return "\n".join(kept[-lines:])

    def show_logs(self, lines: int = 40, model: str | None = None) -> None:
        """Print the last `lines` of the log (see `logs`)."""
        print(self.logs(lines, model=model) or "(the log is empty)")
