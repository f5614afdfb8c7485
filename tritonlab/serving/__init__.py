"""Running Triton and changing what it serves: the server in either mode, configs as code,
deploying a config variant, the devices present, and clients of the served models.

Layer: uses `tritonlab.assets` and `tritonlab.settings`; never imports `tritonlab.measuring`.
"""

from __future__ import annotations

import os

from ..common import log
from .server import (
    ModelLoadError,
    PortInUseError,
    ServerBusyError,
    ServerError,
    ServerNotReady,
    TritonServer,
)


def choose_mode() -> tuple[str, str]:
    """Which Triton this machine uses, and why: TRITONLAB_MODE forces 'embedded' or 'docker'.

    The Jupyter container on the GPU node sets TRITONLAB_MODE=docker (see compose.yaml);
    everywhere else the embedded server is the default.
    """
    forced = os.environ.get("TRITONLAB_MODE", "").strip().lower()
    if forced in ("embedded", "docker"):
        return forced, f"TRITONLAB_MODE={forced}"
    if forced:
        raise ServerError(f"TRITONLAB_MODE={forced!r}: use 'embedded' or 'docker'.")
    return "embedded", "the default off the GPU node; TRITONLAB_MODE=docker selects Docker"


def get_server(**kwargs) -> TritonServer:
    """The Triton for this machine (embedded here, Docker on the GPU node); says which and why."""
    mode, why = choose_mode()
    log.info(f"Triton mode: {mode} ({why})")
    if mode == "docker":
        from .docker import DockerTriton

        return DockerTriton(**kwargs)
    from .embedded import EmbeddedTriton

    return EmbeddedTriton(**kwargs)


__all__ = ["ModelLoadError", "PortInUseError", "ServerBusyError", "ServerError", "ServerNotReady",
           "TritonServer", "choose_mode", "get_server"]
