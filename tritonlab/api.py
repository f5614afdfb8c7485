"""The course's HTTP API: upload a food photo, get its label, probability and caption.

FastAPI in front of Triton's `food_captioning` ensemble. Swagger UI at /docs. Run it with
`make api` (127.0.0.1:8080); it finds Triton at TRITON_URL (default http://127.0.0.1:8000).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass

import numpy as np
import requests
from fastapi import FastAPI, File, HTTPException, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from .common import poll_until
from .serving.clients import REFUSED_UNDER_LOAD, EmptyAnswer, outputs
from .settings import TritonAddress

MODEL = "food_captioning"
MAX_UPLOAD_BYTES = int(os.environ.get("TRITONLAB_API_MAX_UPLOAD", 10 * 1024 * 1024))


def triton_url() -> str:
    """Triton's HTTP endpoint as host:port, from TRITON_URL (see `settings.TritonAddress`)."""
    return TritonAddress.from_env().http_url


class Prediction(BaseModel):
    """What /predict answers for one image."""

    label: str = Field(description="Food-11 class of the image")
    probability: float = Field(description="softmax probability of that class, in (0, 1]")
    caption: str = Field(description="BLIP's caption, continuing 'a photo of <label>,'")
    model: str = Field(description="the Triton model that answered")


class Problem(BaseModel):
    detail: str


class TritonUnavailable(RuntimeError):
    pass


class TritonOverloaded(RuntimeError):
    """Triton refused the request under load (its queue policy: queue full, or queue timeout)."""


#: Seconds a client refused under load is told to wait (`Retry-After`): the course's queue
#: policies time requests out after well under a second, so by then the queue has turned over.
RETRY_AFTER_S = 1


def _image_code():
    from .assets.repository import decoding

    return decoding()


def check_image(data: bytes) -> None:
    """Refuse what the served models would refuse (415, naming the format when it is one the
    decoders lack, and how to convert it), before it travels to Triton."""
    code = _image_code()
    try:
        code.open_image(code.to_image_bytes(data), min_side=1)
    except code.BadImage as exc:
        raise HTTPException(415, f"The upload is not a usable image: {exc}. "
                                 "Send a JPEG, PNG, HEIC, AVIF, WebP, GIF, BMP or TIFF file."
                            ) from None


def infer(url: str, data: bytes, model: str = MODEL) -> Prediction:
    """One image through the ensemble; Triton's own refusal becomes a 422."""
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    try:
        client = httpclient.InferenceServerClient(url, connection_timeout=5, network_timeout=120)
    except Exception as exc:
        raise TritonUnavailable(str(exc)) from None
    try:
        inp = httpclient.InferInput("INPUT_IMAGE", [1, 1], "BYTES")
        inp.set_data_from_numpy(np.array([[data]], dtype=object))
        result = client.infer(model, [inp])
    except InferenceServerException as exc:
        status = str(exc.status() or "")
        if REFUSED_UNDER_LOAD.search(exc.message() or ""):
            raise TritonOverloaded(exc.message()) from None
        if status.startswith("4") and "unknown model" not in exc.message().lower():
            raise HTTPException(422, f"Triton could not process the image: {exc.message()}"
                                ) from None
        raise TritonUnavailable(exc.message()) from None
    except (OSError, ConnectionError) as exc:
        raise TritonUnavailable(str(exc) or type(exc).__name__) from None
    finally:
        client.close()
    try:
        found = outputs(result, ["FOOD_LABEL", "PROBABILITY", "CAPTION"])
    except EmptyAnswer as exc:
        raise HTTPException(422, f"Triton could not process the image: {exc}") from None
    label = found["FOOD_LABEL"].reshape(-1)[0]
    caption = found["CAPTION"].reshape(-1)[0]
    return Prediction(label=label.decode() if isinstance(label, bytes) else str(label),
                      probability=float(found["PROBABILITY"].reshape(-1)[0]),
                      caption=caption.decode() if isinstance(caption, bytes) else str(caption),
                      model=model)


def triton_health(url: str, model: str = MODEL) -> dict:
    """Triton's readiness and the model's, as /health reports them."""
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    state = {"triton_url": url, "model": model, "live": False, "ready": False,
             "model_ready": False}
    client = None
    try:
        client = httpclient.InferenceServerClient(url, connection_timeout=3, network_timeout=3)
        state["live"] = client.is_server_live()
        state["ready"] = client.is_server_ready()
        state["model_ready"] = client.is_model_ready(model)
    except (InferenceServerException, OSError) as exc:
        state["error"] = f"Triton is not reachable: {type(exc).__name__}"
    finally:
        if client is not None:
            client.close()
    return state


def create_app(url: str | None = None, model: str = MODEL) -> FastAPI:
    """The FastAPI app; `url` defaults to TRITON_URL, read at each request. The models' image
    decoder (their own code) is imported here, once, before any upload arrives."""
    _image_code()
    app = FastAPI(title="Food-11 captioning",
                  description="Upload a food photo: Triton's `food_captioning` ensemble "
                              "classifies it (Food-11) and captions it, conditioned on the label.",
                  version="1.0")

    def target() -> str:
        return url or triton_url()

    @app.get("/health", responses={503: {"description": "Triton or the model is not ready"}})
    def health():
        state = triton_health(target(), model)
        ok = state["ready"] and state["model_ready"]
        return JSONResponse(dict(state, status="ok" if ok else "unavailable"),
                            status_code=200 if ok else 503)

    @app.post("/predict", response_model=Prediction,
              responses={400: {"model": Problem}, 413: {"model": Problem},
                         415: {"model": Problem}, 422: {"model": Problem},
                         503: {"model": Problem}})
    async def predict(file: UploadFile = File(..., description="a photo of food: JPEG, PNG, "
                                                            "HEIC, AVIF, WebP, ...")):
        data = await file.read(MAX_UPLOAD_BYTES + 1)
        if not data:
            raise HTTPException(400, "The upload is empty: send an image file in the field "
                                     "'file'.")
        if len(data) > MAX_UPLOAD_BYTES:
            raise HTTPException(413, f"The upload is larger than {MAX_UPLOAD_BYTES} bytes.")
        await run_in_threadpool(check_image, data)
        try:
            return await run_in_threadpool(infer, target(), data, model)
        except TritonOverloaded as exc:
            raise HTTPException(503, f"Triton is overloaded and refused this request ({exc}): "
                                     f"try again in {RETRY_AFTER_S} s.",
                                headers={"Retry-After": str(RETRY_AFTER_S)}) from None
        except TritonUnavailable as exc:
            raise HTTPException(503, f"Triton at {target()} is not available or not ready "
                                     f"({exc}); start it (`make serve`) and try again.") from None

    @app.exception_handler(Exception)
    async def unexpected(request, exc):  # never a stack trace to the client
        return JSONResponse({"detail": f"internal error: {type(exc).__name__}"}, status_code=500)

    return app


app = create_app()


# --- running it beside a notebook ---------------------------------------------------------------

@dataclass
class RunningAPI:
    """A uvicorn process serving the API; stop() ends it. `process` is None for an API this
    notebook found running and uses (`serve_in_background`): stop() leaves that one alone."""

    process: subprocess.Popen | None
    url: str

    def stop(self) -> None:
        if self.process is None:
            print(f"The API at {self.url} was running before this notebook: left running.")
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def course_api_at(url: str, triton: str | None) -> bool:
    """True when `url` answers as this course's API and talks to the Triton at `triton` (its
    /health names the Triton it asks; None: TRITON_URL's)."""
    try:
        title = requests.get(url + "/openapi.json", timeout=5).json()["info"]["title"]
        asked = requests.get(url + "/health", timeout=10).json().get("triton_url")
    except (requests.RequestException, ValueError, KeyError, TypeError):
        return False
    return title == app.title and asked == TritonAddress.parse(
        triton or TritonAddress.from_env().url).http_url


def serve_in_background(port: int = 8080, host: str = "127.0.0.1",
                        triton: str | None = None, timeout: float = 60) -> RunningAPI:
    """Start `uvicorn tritonlab.api:app` and wait until it answers; it dies with this process.

    Where the port already answers as this course's API in front of the same Triton, that API
    is used instead (and left running by stop()): on the GPU node the Jupyter container runs
    one from the start (Dockerfile.jupyter's CMD, published on the node's port 8080), and `make
    api` runs one here. RuntimeError naming the process when anything else holds the port."""
    from .serving.embedded import _set_parent_death_signal, port_owner

    owner = port_owner(port)
    if owner:
        url = f"http://{host}:{port}"
        if course_api_at(url, triton):
            print(f"The course's API already answers at {url} in front of this Triton ({owner}): "
                  "using it.")
            return RunningAPI(None, url)
        raise RuntimeError(f"Port {port} is already in use by {owner}: stop it or pick another "
                           "port.")
    env = dict(os.environ)
    if triton:
        env["TRITON_URL"] = triton
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "tritonlab.api:app", "--host", host,
                             "--port", str(port), "--log-level", "warning"], env=env,
                            preexec_fn=_set_parent_death_signal)
    url = f"http://{host}:{port}"

    def answers() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"the API exited with code {proc.returncode}; see its output above")
        try:
            return requests.get(url + "/openapi.json", timeout=1).ok
        except requests.RequestException:
            return False

    try:
        poll_until(answers, timeout, 0.2, f"the API answering on {url}")
    except TimeoutError as exc:
        proc.kill()
        raise RuntimeError(str(exc)) from None
    return RunningAPI(proc, url)
