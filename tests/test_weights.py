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
