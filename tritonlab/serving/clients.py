"""Clients for the served models: tritonclient over HTTP or gRPC, one image or many per request."""

from __future__ import annotations

import base64
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

#: Triton's words when a queue policy refuses a request under load (server 2.51): the queue is
#: full, or the request waited past its queue timeout (gRPC UNAVAILABLE, HTTP 503).
REFUSED_UNDER_LOAD = re.compile(r"Exceeds maximum queue size|Request timeout expired")


class EmptyAnswer(RuntimeError):
    """Triton answered a request as a success but without the outputs asked for.

    Seen on server 2.51 with the response cache on: a request the Python backend failed (a
    corrupt image, answered with an error the first time) is stored as an empty answer, and the
    same bytes sent again get it, with HTTP 200, instead of the error (notebook 08, section 6;
    Triton's guide says failed requests are not cached)."""


def outputs(result, names: Sequence[str]) -> dict[str, np.ndarray]:
    """The named outputs of an infer result as arrays. Raises EmptyAnswer, saying why that can
    happen, when one is missing."""
    found = {name: result.as_numpy(name) for name in names}
    missing = [name for name, value in found.items() if value is None]
    if missing:
        raise EmptyAnswer(
            f"Triton answered without {', '.join(missing)}. With the response cache on, server "
            "2.51 keeps a failed request as an empty answer: these exact bytes failed before "
            "(see the first answer they got). Send a valid image, or turn the model's "
            "response_cache off.")
    return found


@dataclass
class Prediction:
    """One image's answer from food_classifier."""

    label: str
    probability: float


def _as_bytes(image: bytes | str | Path) -> bytes:
    return Path(image).read_bytes() if isinstance(image, (str, Path)) else bytes(image)


def image_batch(images: Sequence[bytes | str | Path], encoding: str = "raw") -> np.ndarray:
    """An (N, 1) BYTES array of encoded images: raw bytes, or base64 text with encoding='base64'."""
    items = [_as_bytes(im) for im in images]
    if encoding == "base64":
        items = [base64.b64encode(b) for b in items]
    elif encoding != "raw":
        raise ValueError("encoding must be 'raw' or 'base64'")
    return np.array(items, dtype=object).reshape(-1, 1)


def make_client(url: str, protocol: str = "http"):
    """A tritonclient InferenceServerClient for `url` ('host:port') over 'http' or 'grpc'."""
    if protocol == "http":
        return httpclient.InferenceServerClient(url)
    if protocol == "grpc":
        return grpcclient.InferenceServerClient(url)
    raise ValueError("protocol must be 'http' or 'grpc'")


def classify(url: str, images: Sequence[bytes | str | Path], protocol: str = "http",
             model: str = "food_classifier", encoding: str = "raw") -> list[Prediction]:
    """Classify all `images` in one request; one Prediction per image, in order."""
    lib = httpclient if protocol == "http" else grpcclient
    batch = image_batch(images, encoding)
    inp = lib.InferInput("INPUT_IMAGE", list(batch.shape), "BYTES")
    inp.set_data_from_numpy(batch)
    wanted = [lib.InferRequestedOutput("FOOD_LABEL"), lib.InferRequestedOutput("PROBABILITY")]
    client = make_client(url, protocol)
    try:
        result = client.infer(model, [inp], outputs=wanted)
    finally:
        client.close()
    found = outputs(result, ["FOOD_LABEL", "PROBABILITY"])
    labels, probs = found["FOOD_LABEL"].reshape(-1), found["PROBABILITY"].reshape(-1)
    return [Prediction(lb.decode() if isinstance(lb, bytes) else str(lb), float(p))
            for lb, p in zip(labels, probs)]


def model_stats(url: str, model: str) -> dict:
    """Triton's statistics for one model (HTTP): counts, cumulative times, batch sizes."""
    client = httpclient.InferenceServerClient(url)
    try:
        return client.get_inference_statistics(model)["model_stats"][0]
    finally:
        client.close()


def batch_size_counts(stats: dict) -> dict[int, int]:
    """How many executions Triton ran at each batch size, from `model_stats()`."""
    return {int(b["batch_size"]): int(b["compute_infer"]["count"])
            for b in stats.get("batch_stats", [])}


@dataclass
class Captioned:
    """One image's answer from the food_captioning ensemble."""

    label: str
    probability: float
    caption: str


def caption(url: str, images: Sequence[bytes | str | Path], protocol: str = "http",
            model: str = "food_captioning") -> list[Captioned]:
    """Label, probability and caption for every image, in one request to the ensemble."""
    lib = httpclient if protocol == "http" else grpcclient
    batch = image_batch(images)
    inp = lib.InferInput("INPUT_IMAGE", list(batch.shape), "BYTES")
    inp.set_data_from_numpy(batch)
    client = make_client(url, protocol)
    try:
        result = client.infer(model, [inp])
    finally:
        client.close()
    text = lambda v: v.decode() if isinstance(v, bytes) else str(v)  # noqa: E731
    found = outputs(result, ["FOOD_LABEL", "PROBABILITY", "CAPTION"])
    return [Captioned(text(lb), float(p), text(c)) for lb, p, c in zip(
        found["FOOD_LABEL"].reshape(-1), found["PROBABILITY"].reshape(-1),
        found["CAPTION"].reshape(-1))]
