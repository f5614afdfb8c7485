"""Weights: stand-in, conversion of the course checkpoint formats, checks, and the served loader."""

from __future__ import annotations

import pytest
import torch

from tritonlab.assets import weights


def equal_states(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_stand_in_is_seeded():
    assert equal_states(weights.build_stand_in(), weights.build_stand_in())
    assert not equal_states(weights.build_stand_in(1), weights.build_stand_in(2))


def test_round_trip_through_the_served_loader(tmp_path, network):
    state = weights.build_stand_in()
    meta = weights.save_weights(state, tmp_path, "stand-in", stand_in=True)
    loaded, loaded_meta = network.load_weights(str(tmp_path))
    assert equal_states(state, loaded)
    assert loaded_meta == meta and meta["stand_in"] is True
    assert meta["sha256"] == weights.sha256_file(tmp_path / "food11.pt")


def test_tampered_weights_are_refused(tmp_path, network):
    weights.save_weights(weights.build_stand_in(), tmp_path, "stand-in", stand_in=True)
    with open(tmp_path / "food11.pt", "r+b") as f:
        f.seek(-100, 2)
        f.write(b"\x00" * 10)
    with pytest.raises(ValueError, match="SHA-256"):
        network.load_weights(str(tmp_path))
    assert weights.current(tmp_path) is None


def test_whole_pickled_model_is_converted_without_unsafe_unpickling(tmp_path, network):
    net = network.build_network()
    torch.save(net, tmp_path / "food11.pth")  # as the public course ships it
    meta = weights.ensure_weights(tmp_path / "served", source=str(tmp_path / "food11.pth"))
    assert meta["stand_in"] is False
    assert meta["source_sha256"] == weights.sha256_file(tmp_path / "food11.pth")
    loaded, _ = network.load_weights(str(tmp_path / "served"))
    assert equal_states(net.state_dict(), loaded)


def test_state_dict_checkpoints_are_accepted(tmp_path, network):
    state = network.build_network().state_dict()
    torch.save({"model_state_dict": {f"module.{k}": v for k, v in state.items()}},
               tmp_path / "ckpt.pt")
    assert equal_states(weights.read_checkpoint(tmp_path / "ckpt.pt"), state)


class Payload:
    """Stands for any class a malicious checkpoint could name."""


def test_foreign_classes_are_never_unpickled(tmp_path):
    torch.save({"weights": Payload()}, tmp_path / "odd.pt")
    with pytest.raises(weights.WeightsError, match="refusing to unpickle"):
        weights.read_checkpoint(tmp_path / "odd.pt")


def test_wrong_architecture_is_refused(tmp_path):
    torch.save(torch.nn.Linear(3, 2).state_dict(), tmp_path / "lin.pt")
    with pytest.raises(weights.WeightsError, match="does not fit MobileNetV2"):
        weights.read_checkpoint(tmp_path / "lin.pt")


def test_expected_sha256_mismatch_stops(tmp_path, network):
    torch.save(network.build_network().state_dict(), tmp_path / "w.pt")
    with pytest.raises(weights.WeightsError, match="expected 00"):
        weights.ensure_weights(tmp_path / "served", source=str(tmp_path / "w.pt"),
                               expected_sha256="00" * 32)


def test_unreachable_url_falls_back_to_a_loud_stand_in(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(weights.settings, "DATA", tmp_path / "data")
    # a closed port on this machine: fails at once, and no traffic leaves the machine
    meta = weights.ensure_weights(tmp_path / "served", source="http://127.0.0.1:9/food11.pth")
    assert meta["stand_in"] is True
    out = capsys.readouterr().out
    assert "Could not fetch" in out and "MEANINGLESS" in out


def test_existing_weights_are_kept(tmp_path):
    first = weights.ensure_weights(tmp_path, source="stand-in")
    again = weights.ensure_weights(tmp_path, source="http://127.0.0.1:9/never-fetched")
    assert again == first


@pytest.fixture
def weights_url(tmp_path, network):
    """A real HTTP server on loopback serving a whole pickled MobileNetV2, as the course URL."""
    import functools
    import http.server
    import threading

    served = tmp_path / "www"
    served.mkdir()
    torch.save(network.build_network(), served / "food11.pth")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/food11.pth"
    httpd.shutdown()
    httpd.server_close()


def test_downloaded_weights_are_pinned_on_first_use(tmp_path, monkeypatch, weights_url, capsys,
                                                     network):
    monkeypatch.setattr(weights.settings, "DATA", tmp_path / "data")
    meta = weights.ensure_weights(tmp_path / "served", source=weights_url)
    assert meta["stand_in"] is False and meta["source"] == weights_url
    cached = tmp_path / "data" / "cache" / "food11.pth"
    pin = weights.pin_file(cached)
    assert pin.read_text().split() == [meta["source_sha256"], weights_url]
    assert "Recorded SHA-256" in capsys.readouterr().out

    # the same file again: accepted
    again = weights.ensure_weights(tmp_path / "served", source=weights_url, force=True)
    assert again["source_sha256"] == meta["source_sha256"]

    # the downloaded file changed afterwards: refused with the recorded digest, nothing served
    with open(cached, "r+b") as f:
        f.seek(-64, 2)
        f.write(b"\xff" * 8)
    before = (tmp_path / "served" / "food11.pt").read_bytes()
    with pytest.raises(weights.WeightsError, match="first download recorded"):
        weights.ensure_weights(tmp_path / "served", source=weights_url, force=True)
    assert (tmp_path / "served" / "food11.pt").read_bytes() == before

    # a corrupt file with an explicit digest: a clear error, not torch's own
    with pytest.raises(weights.WeightsError, match="cannot read"):
        weights.ensure_weights(tmp_path / "served", source=weights_url, force=True,
                               expected_sha256=weights.sha256_file(cached))

    # the message's way out: a digest given explicitly is trusted over the recorded one
    torch.manual_seed(5)
    torch.save(network.build_network(), cached)  # a different, valid file
    changed = weights.sha256_file(cached)
    with pytest.raises(weights.WeightsError, match="first download recorded"):
        weights.ensure_weights(tmp_path / "served", source=weights_url, force=True)
    meta = weights.ensure_weights(tmp_path / "served", source=weights_url, force=True,
                                  expected_sha256=changed)
    assert meta["source_sha256"] == changed


def blob_id_by_definition(data: bytes) -> str:
    """A git blob id computed here from its definition: SHA-1 of b"blob <size>\\0" + bytes."""
    import hashlib

    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def test_git_blob_id_is_what_git_computes(tmp_path):
    import shutil
    import subprocess

    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    # git's well-known id of the empty blob
    assert weights.git_blob_id(empty) == "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391"
    data = bytes(range(256)) * 9000 + b"\0 tail"  # more than one 1 MiB read, NUL bytes inside
    sample = tmp_path / "sample.bin"
    sample.write_bytes(data)
    assert weights.git_blob_id(sample) == blob_id_by_definition(data)
    if shutil.which("git") is None:
        pytest.skip("git is not installed: the cross-check with `git hash-object` was not run")
    for path in (empty, sample):
        out = subprocess.run(["git", "hash-object", "--no-filters", str(path)],
                             capture_output=True, text=True, check=True, cwd=tmp_path)
        assert weights.git_blob_id(path) == out.stdout.strip()


def test_the_course_urls_are_pinned_to_the_published_blob():
    assert weights.PUBLISHED_BLOBS[weights.DEFAULT_URL] == \
        "b550214474f469ca65c2eb6c30f383ef4e7e8c7a"
    assert weights.PUBLISHED_BLOBS[weights.FASTAPI_URL] == \
        weights.PUBLISHED_BLOBS[weights.DEFAULT_URL]


def test_a_download_with_the_published_blob_is_accepted(tmp_path, monkeypatch, weights_url,
                                                         capsys):
    served = (tmp_path / "www" / "food11.pth").read_bytes()
    blob = blob_id_by_definition(served)
    monkeypatch.setattr(weights, "PUBLISHED_BLOBS", {weights_url: blob})
    monkeypatch.setattr(weights.settings, "DATA", tmp_path / "data")
    meta = weights.ensure_weights(tmp_path / "served", source=weights_url)
    assert meta["stand_in"] is False and meta["source_git_blob"] == blob
    cached = tmp_path / "data" / "cache" / "food11.pth"
    assert weights.pin_file(cached).read_text().split()[0] == meta["source_sha256"]
    out = capsys.readouterr().out
    assert f"published file (git blob {blob})" in out
    assert "git blob" in weights.describe(meta)


def test_a_download_with_another_blob_is_refused_and_deleted(tmp_path, monkeypatch, weights_url):
    served = (tmp_path / "www" / "food11.pth").read_bytes()
    actual = blob_id_by_definition(served)
    published = blob_id_by_definition(served + b"\0")  # what the repository would list instead
    monkeypatch.setattr(weights, "PUBLISHED_BLOBS", {weights_url: published})
    monkeypatch.setattr(weights.settings, "DATA", tmp_path / "data")
    cached = tmp_path / "data" / "cache" / "food11.pth"
    with pytest.raises(weights.WeightsError) as info:
        weights.ensure_weights(tmp_path / "served", source=weights_url)
    message = str(info.value)
    assert actual in message and published in message
    # no bad file behind: not the download, not a SHA-256 record of it, nothing served
    assert not cached.exists() and not weights.pin_file(cached).exists()
    assert not (tmp_path / "served" / "food11.pt").exists()

    # a SHA-256 recorded earlier for that same bad file goes with it
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_bytes(served)
    digest = weights.sha256_file(cached)
    weights.pin_file(cached).write_text(f"{digest}  {weights_url}\n")
    with pytest.raises(weights.WeightsError, match=published):
        weights.ensure_weights(tmp_path / "served", source=weights_url)
    assert not cached.exists() and not weights.pin_file(cached).exists()

    # the message's way out: the SHA-256 it names, given explicitly, accepts the new file
    assert f"FOOD11_SHA256={digest}" in message
    meta = weights.ensure_weights(tmp_path / "served", source=weights_url,
                                  expected_sha256=digest)
    assert meta["stand_in"] is False and meta["source_sha256"] == digest
    assert meta["source_git_blob"] is None  # not checked against the published id
