"""Model packages, the model store, importing weights safely, and the network registry."""

from __future__ import annotations

import builtins
import json
import os
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from lsm_core.classes import TASKS
from lsm_core.errors import LsmError
from lsm_core.ml import nets
from lsm_core.ml.models import (
    MANIFEST_NAME,
    WEIGHTS_NAME,
    Manifest,
    ModelStore,
    read_package,
    read_state_dict,
    write_package,
)

LSM_CLASSES = list(TASKS["lsm"])


def _net(seed: int = 0, arch: str = "tiny_cnn", n_classes: int = 3) -> torch.nn.Module:
    """A tiny network with random weights and non-trivial BatchNorm statistics, in eval mode."""
    torch.manual_seed(seed)
    net = nets.create(arch, n_classes)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
    return net.eval()


def _batch(n: int = 4, size: int = 64, seed: int = 123) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, size, size, generator=g)


def _out(net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return net.eval()(x)


def _manifest(name: str = "tiny-lsm", **kw) -> Manifest:
    values = dict(task="lsm", name=name, classes=list(LSM_CLASSES), architecture="tiny_cnn")
    values.update(kw)
    return Manifest(**values)


def _manifest_json(path: Path, **kw) -> Path:
    values = dict(task="lsm", name="imported", classes=list(LSM_CLASSES), architecture="tiny_cnn")
    values.update(kw)
    path.write_text(json.dumps(values), encoding="utf-8")
    return path


@pytest.fixture
def store(tmp_path) -> ModelStore:
    return ModelStore(tmp_path / "store")


# ---------------------------------------------------------------------------------------------- round trip


def test_add_then_load_gives_identical_outputs(store):
    net = _net(1)
    x = _batch()
    expected = _out(net, x)
    assert not torch.allclose(expected, _out(_net(2), x))  # another net answers differently

    package = store.add(net, _manifest())
    assert package.path == store.root / "tiny-lsm" / "1"
    assert sorted(p.name for p in package.path.iterdir()) == [MANIFEST_NAME, WEIGHTS_NAME]
    on_disk = json.loads((package.path / MANIFEST_NAME).read_text())
    assert on_disk["version"] == 1 and len(on_disk["weights_sha256"]) == 64 and on_disk["created"]

    loaded = store.get("tiny-lsm").load()
    assert not loaded.training
    torch.testing.assert_close(_out(loaded, x), expected, rtol=0, atol=0)
    assert store.get("tiny-lsm").manifest.classes == LSM_CLASSES


def test_versions_increment_and_resolve(store):
    net1, net2 = _net(1), _net(2)
    x = _batch()
    p1 = store.add(net1, _manifest())
    p2 = store.add(net2, _manifest())
    assert store.versions("tiny-lsm") == [1, 2]
    assert (p1.manifest.version, p2.manifest.version) == (1, 2)
    assert [p.manifest.label for p in store.packages()] == ["tiny-lsm v1", "tiny-lsm v2"]

    first = store.resolve("tiny-lsm:1")
    latest = store.resolve("tiny-lsm")
    by_path = store.resolve(str(p1.path))
    assert first.manifest.version == 1 and latest.manifest.version == 2 and by_path.manifest.version == 1
    assert latest.path == store.root / "tiny-lsm" / "2"
    torch.testing.assert_close(_out(first.load(), x), _out(net1, x), rtol=0, atol=0)
    torch.testing.assert_close(_out(by_path.load(), x), _out(net1, x), rtol=0, atol=0)
    torch.testing.assert_close(_out(latest.load(), x), _out(net2, x), rtol=0, atol=0)
    torch.testing.assert_close(_out(store.get("tiny-lsm", 2).load(), x), _out(net2, x), rtol=0, atol=0)


def test_resolve_and_get_refuse_unknown(store):
    store.add(_net(), _manifest())
    with pytest.raises(LsmError, match="no version 7"):
        store.resolve("tiny-lsm:7")
    with pytest.raises(LsmError, match="must be a number"):
        store.resolve("tiny-lsm:latest")
    with pytest.raises(LsmError, match="no model named 'other'.*tiny-lsm"):
        store.get("other")
    with pytest.raises(LsmError, match="not allowed"):
        store.resolve("../store")


def test_adding_again_with_the_same_manifest_leaves_the_first_package_intact(store):
    """``add`` fills in version and sha256: the package it returned before must still describe version 1."""
    manifest = _manifest()
    x = _batch()
    net1, net2 = _net(1), _net(2)
    p1 = store.add(net1, manifest)
    p2 = store.add(net2, manifest)
    assert store.versions("tiny-lsm") == [1, 2]
    assert p2.manifest.version == 2
    assert p1.manifest.version == 1, "the first package now claims to be version 2"
    torch.testing.assert_close(_out(p1.load(), x), _out(net1, x), rtol=0, atol=0)


def test_write_and_read_package(tmp_path):
    net = _net(3)
    folder = tmp_path / "pkg"
    written = write_package(net, _manifest(name="loose"), folder)
    assert written.path == folder and folder.is_dir()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".partial-")]  # no leftovers

    package = read_package(folder)
    assert package.manifest.name == "loose"
    assert package.manifest.weights_sha256 == written.manifest.weights_sha256
    x = _batch(2)
    torch.testing.assert_close(_out(package.load(), x), _out(net, x), rtol=0, atol=0)

    state = read_state_dict(folder / WEIGHTS_NAME)
    assert state.keys() == net.state_dict().keys()
    for key, value in net.state_dict().items():
        assert torch.equal(state[key], value)

    with pytest.raises(LsmError, match="already exists"):
        write_package(net, _manifest(name="loose"), folder)
    with pytest.raises(LsmError, match="not a model package"):
        read_package(tmp_path / "nothing")


def test_read_package_refuses_bad_manifest(tmp_path):
    folder = tmp_path / "pkg"
    write_package(_net(), _manifest(), folder)
    (folder / MANIFEST_NAME).write_text("{not json", encoding="utf-8")
    with pytest.raises(LsmError, match="not valid JSON"):
        read_package(folder)
    (folder / MANIFEST_NAME).write_text(json.dumps({"task": "lsm"}), encoding="utf-8")
    with pytest.raises(LsmError, match="missing name, classes, architecture"):
        read_package(folder)


# ---------------------------------------------------------------------------------------------- integrity


def test_changed_weights_refused_on_load(store):
    package = store.add(_net(), _manifest())
    package.load()  # fine before the change
    data = bytearray(package.weights_path.read_bytes())
    data[-5] ^= 0x01  # one bit of one weight
    package.weights_path.write_bytes(bytes(data))
    again = store.get("tiny-lsm")  # the manifest itself is still valid
    with pytest.raises(LsmError, match="sha256"):
        again.load()


# ---------------------------------------------------------------------------------------------- importing


class _RunsCode:
    """Unpickling this runs ``func(*args)``: what a malicious checkpoint does."""

    def __init__(self, func, args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _payload(kind: str, marker: Path) -> _RunsCode:
    if kind == "os.system":
        return _RunsCode(os.system, (f"touch '{marker}'",))
    return _RunsCode(builtins.open, (str(marker), "w"))


def _dump(obj, path: Path, how: str) -> Path:
    if how == "torch.save":
        torch.save(obj, path)
    else:
        with open(path, "wb") as fh:
            pickle.dump(obj, fh, protocol=2)
    return path


@pytest.mark.parametrize("how", ["torch.save", "pickle.dump"])
@pytest.mark.parametrize("kind", ["os.system", "builtins.open"])
def test_pickle_with_code_payload_refused(tmp_path, store, kind, how):
    state = {k: v for k, v in _net().state_dict().items()}
    marker = tmp_path / "pwned"
    evil = _dump({**state, "extra": _payload(kind, marker)}, tmp_path / "evil.pt", how)
    manifest = _manifest_json(tmp_path / "manifest.json")

    with pytest.raises(LsmError, match="refused"):
        store.import_weights(evil, manifest)
    assert not marker.exists(), "the payload ran"
    with pytest.raises(LsmError, match="refused"):
        read_state_dict(evil)
    assert not marker.exists(), "the payload ran"
    assert store.versions("imported") == []

    # control: the same payload, opened the unsafe way, really does run
    control_marker = tmp_path / "control"
    control = _dump({"extra": _payload(kind, control_marker)}, tmp_path / "control.pt", how)
    if how == "torch.save":
        torch.load(control, weights_only=False)
    else:
        with open(control, "rb") as fh:
            pickle.load(fh)
    assert control_marker.exists()


@pytest.mark.parametrize("wrap", ["plain", "nested", "safetensors"])
def test_import_state_dict(tmp_path, store, wrap):
    net = _net(7)
    state = net.state_dict()
    if wrap == "plain":
        weights = tmp_path / "weights.pt"
        torch.save(state, weights)
    elif wrap == "nested":
        weights = tmp_path / "checkpoint.pth"
        torch.save({"state_dict": state, "epoch": 3}, weights)
    else:
        weights = tmp_path / "w.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(weights))
    manifest = _manifest_json(tmp_path / "m.json", version=9, weights_sha256="0" * 64, created="long ago")

    package = store.import_weights(weights, manifest)
    assert package.manifest.name == "imported" and package.manifest.version == 1  # the store picks the version
    assert package.manifest.weights_sha256 != "0" * 64
    x = _batch()
    expected = _out(net, x)
    assert not torch.allclose(expected, _out(_net(8), x))
    torch.testing.assert_close(_out(store.get("imported").load(), x), expected, rtol=0, atol=0)


def test_import_state_dict_with_wrong_keys_refused(tmp_path, store):
    state = dict(_net().state_dict())
    state.pop("backbone.head.2.weight")
    state["backbone.extra.weight"] = torch.zeros(3)
    weights = tmp_path / "w.pt"
    torch.save(state, weights)
    with pytest.raises(LsmError, match="do not fit the architecture"):
        store.import_weights(weights, _manifest_json(tmp_path / "m.json"))
    assert store.versions("imported") == []


def test_import_state_dict_with_wrong_shapes_refused(tmp_path, store):
    """Weights of a 2-class (aging) tiny_cnn imported as a 3-class LSM model: same names, other shapes."""
    weights = tmp_path / "aging.pt"
    torch.save(_net(n_classes=2).state_dict(), weights)
    with pytest.raises(LsmError, match="do not fit"):
        store.import_weights(weights, _manifest_json(tmp_path / "m.json"))
    assert store.versions("imported") == []


def test_package_whose_weights_no_longer_fit_its_manifest(tmp_path):
    """A 2-class (aging) package whose manifest was edited to the 3-class LSM task: refused on load."""
    folder = tmp_path / "pkg"
    write_package(_net(n_classes=2), _manifest(task="aging", classes=list(TASKS["aging"])), folder)
    data = json.loads((folder / MANIFEST_NAME).read_text())
    data.update(task="lsm", classes=list(LSM_CLASSES))
    (folder / MANIFEST_NAME).write_text(json.dumps(data))
    package = read_package(folder)  # the sha256 still matches: only the manifest changed
    with pytest.raises(LsmError, match="do not fit"):
        package.load()


def test_import_weights_of_another_architecture_refused(tmp_path, store):
    weights = tmp_path / "small.pt"
    torch.save(_net(arch="small_cnn").state_dict(), weights)
    with pytest.raises(LsmError, match="do not fit"):
        store.import_weights(weights, _manifest_json(tmp_path / "m.json"))
    assert store.versions("imported") == []


@pytest.mark.parametrize(
    "content, words",
    [
        ({"not": "tensors"}, "state_dict"),
        ({}, "state_dict"),
        ([torch.zeros(2)], "state_dict"),
    ],
)
def test_import_non_state_dict_refused(tmp_path, store, content, words):
    weights = tmp_path / "w.pt"
    torch.save(content, weights)
    with pytest.raises(LsmError, match=words):
        store.import_weights(weights, _manifest_json(tmp_path / "m.json"))


def test_import_damaged_or_missing_files(tmp_path, store):
    manifest = _manifest_json(tmp_path / "m.json")
    cut = tmp_path / "cut.pt"
    torch.save(_net().state_dict(), cut)
    cut.write_bytes(cut.read_bytes()[:200])
    with pytest.raises(LsmError, match="refused|damaged"):
        store.import_weights(cut, manifest)
    with pytest.raises(LsmError, match="no such file"):
        store.import_weights(tmp_path / "absent.pt", manifest)
    weights = tmp_path / "w.pt"
    torch.save(_net().state_dict(), weights)
    with pytest.raises(LsmError, match="no such file"):
        store.import_weights(weights, tmp_path / "absent.json")
    (tmp_path / "bad.json").write_text("{", encoding="utf-8")
    with pytest.raises(LsmError, match="not valid JSON"):
        store.import_weights(weights, tmp_path / "bad.json")


@pytest.mark.parametrize(
    "change, words",
    [
        ({"name": "../evil"}, "not allowed"),
        ({"name": "a/b"}, "not allowed"),
        ({"name": ""}, "not allowed"),
        ({"name": "x" * 65}, "not allowed"),
        ({"task": "nope"}, "unknown task"),
        ({"task": "aging"}, "do not match task"),
        ({"classes": ["LT-HSC", "ST-HSC"]}, "do not match task"),
        ({"classes": ["LT-HSC", "ST-HSC", "MPP", "CLP"]}, "do not match task"),
        ({"classes": "LT-HSC,ST-HSC,MPP"}, "do not match task"),
        ({"architecture": "nope"}, "unknown architecture"),
        ({"input_size": 4}, "input size"),
        ({"input_size": "big"}, "wrong type"),
        ({"temperature": 0}, "positive"),
        ({"task": ["lsm"]}, "task"),
        ({"architecture": ["tiny_cnn"]}, "architecture"),
    ],
)
def test_bad_manifest_refused(tmp_path, store, change, words):
    weights = tmp_path / "w.pt"
    torch.save(_net().state_dict(), weights)
    manifest = _manifest_json(tmp_path / "m.json", **change)
    with pytest.raises(LsmError, match=words):
        store.import_weights(weights, manifest)
    assert not (tmp_path / "evil").exists() and not (store.root.parent / "evil").exists()
    assert not any(store.root.iterdir())
    data = json.loads(manifest.read_text())
    with pytest.raises(LsmError):
        Manifest.from_dict(data)


@pytest.mark.parametrize("name", ["../evil", "a/b", "/abs", ".hidden"])
def test_store_add_refuses_bad_names(tmp_path, store, name):
    with pytest.raises(LsmError, match="not allowed"):
        store.add(_net(), _manifest(name=name))
    assert not any(store.root.iterdir())
    assert not (tmp_path / "evil").exists()


def test_manifest_round_trip_through_dict():
    manifest = _manifest(metrics={"accuracy": 0.9}, demo=True)
    again = Manifest.from_dict(json.loads(json.dumps(manifest.to_dict())))
    assert again == manifest
    assert again.label == "tiny-lsm v1 (synthetic demo)"
    # classes in another order are allowed (the order is the network's output order)
    Manifest.from_dict({**manifest.to_dict(), "classes": ["MPP", "LT-HSC", "ST-HSC"]})
    with pytest.raises(LsmError, match="JSON object"):
        Manifest.from_dict(["lsm"])


# ---------------------------------------------------------------------------------------------- nets


def test_resnet50_paper_forward_shape():
    net = nets.create("resnet50_paper", 3).eval()
    with torch.no_grad():
        out = net(_batch(2, 64))
    assert out.shape == (2, 3)
    assert torch.isfinite(out).all()
    head = net.backbone.fc
    assert [m.__class__.__name__ for m in head] == ["Linear", "ReLU", "Dropout", "Linear"]
    assert (head[0].in_features, head[0].out_features, head[3].out_features) == (2048, 512, 3)
    assert head[2].p == pytest.approx(0.3)
    assert net.backbone.conv1.in_channels == 1


@pytest.mark.parametrize("name", sorted(nets.REGISTRY))
def test_every_architecture_builds_and_forwards(name):
    net = nets.create(name, 2).eval()
    x = _batch(2, 64)
    with torch.no_grad():
        out = net(x)
    assert out.shape == (2, 2)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert isinstance(net.standardise, nets.CropStandardise)
    assert isinstance(nets.target_layer(net, name), torch.nn.Module)


def test_create_unknown_architecture():
    with pytest.raises(LsmError, match="unknown architecture 'nope'"):
        nets.create("nope", 3)
    with pytest.raises(LsmError, match="at least 2 classes"):
        nets.create("tiny_cnn", 1)


def test_crop_standardise_zero_mean_unit_std():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(5, 1, 32, 32, generator=g) * torch.tensor([1, 10, 0.01, 3, 2]).view(-1, 1, 1, 1) + 0.5
    out = nets.CropStandardise()(x)
    assert out.shape == x.shape
    flat = out.flatten(1)
    torch.testing.assert_close(flat.mean(1), torch.zeros(5), atol=1e-4, rtol=0)
    torch.testing.assert_close(flat.std(1, unbiased=False), torch.ones(5), atol=1e-4, rtol=0)


@pytest.mark.parametrize("value", [0.0, 0.4, 0.9])
def test_crop_standardise_flat_crop_becomes_zeros(value):
    """As documented: a flat crop (e.g. a saturated or empty region) becomes all zeros."""
    flat_crop = torch.full((2, 1, 64, 64), value)
    out = nets.CropStandardise()(flat_crop)
    torch.testing.assert_close(out, torch.zeros_like(flat_crop), atol=1e-6, rtol=0)


def test_affine_change_of_input_leaves_predictions_unchanged():
    net = _net(5)
    x = _batch(4, 64)
    base = _out(net, x)
    torch.testing.assert_close(_out(net, x * 3 + 0.2), base, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(_out(net, x * (4095 / 65535)), base, atol=1e-5, rtol=1e-4)  # 12-bit in 16
    assert not torch.allclose(_out(net, x.flip(-1)), base, atol=1e-5)  # other content, other answer
