"""LPIPS on plain torch modules: the public weight layouts load, bad layouts are named, and the distance behaves."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from icg_rl.evaluation.lpips import (
    LPIPS,
    MIN_SIDE,
    lpips_available,
    random_backbone_state_dict,
    random_linear_state_dict,
)

BACKBONE_KEYS = {
    "alex": [0, 3, 6, 8, 10],
    "vgg": [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28],
}


def _save(tmp_path, backbone, state_b=None, state_l=None):
    b, lin = tmp_path / f"{backbone}-backbone.pth", tmp_path / f"{backbone}-lin.pth"
    torch.save(random_backbone_state_dict(backbone, 0) if state_b is None else state_b, b)
    torch.save(random_linear_state_dict(backbone, 1) if state_l is None else state_l, lin)
    return b, lin


@pytest.fixture(scope="module")
def alex(tmp_path_factory):
    return LPIPS.from_files(*_save(tmp_path_factory.mktemp("alex"), "alex"), backbone="alex")


def _images(n=4, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    # A smooth image plus texture, so it resembles a picture more than white noise does.
    base = F.interpolate(torch.rand(n, 3, size // 8, size // 8, generator=g), size=(size, size), mode="bilinear")
    return (0.8 * base + 0.2 * torch.rand(n, 3, size, size, generator=g)).clamp(0, 1)


@pytest.mark.parametrize("backbone", ["alex", "vgg"])
def test_public_layouts_load_and_distance_is_a_distance(tmp_path, backbone):
    b, lin = _save(tmp_path, backbone)
    model = LPIPS.from_files(b, lin, backbone=backbone)
    # The file's values, not the constructor's random init, are what the model holds.
    state_b, state_l = random_backbone_state_dict(backbone, 0), random_linear_state_dict(backbone, 1)
    for i in BACKBONE_KEYS[backbone]:
        assert torch.equal(model.state_dict()[f"features.{i}.weight"], state_b[f"features.{i}.weight"])
        assert torch.equal(model.state_dict()[f"features.{i}.bias"], state_b[f"features.{i}.bias"])
    for k, v in state_l.items():
        assert torch.equal(model.state_dict()[k], v)
    assert not any(p.requires_grad for p in model.parameters()) and not model.training

    x, y = _images(3, seed=1), _images(3, seed=2)
    with torch.no_grad():
        d_xx, d_xy, d_yx = model(x, x), model(x, y), model(y, x)
    assert d_xy.shape == (3,) and d_xy.dtype == torch.float32
    assert torch.allclose(d_xx, torch.zeros(3), atol=1e-6)
    assert (d_xy > 1e-4).all()
    assert torch.allclose(d_xy, d_yx, rtol=1e-5, atol=1e-7)


def test_public_key_layout():
    alex = random_backbone_state_dict("alex", 0)
    assert alex["features.0.weight"].shape == (64, 3, 11, 11) and alex["features.10.weight"].shape == (256, 256, 3, 3)
    vgg = random_backbone_state_dict("vgg", 0)
    assert vgg["features.28.weight"].shape == (512, 512, 3, 3)
    assert {k for k in vgg if k.startswith("features.")} == {
        f"features.{i}.{p}" for i in BACKBONE_KEYS["vgg"] for p in ("weight", "bias")}
    for backbone, channels in (("alex", (64, 192, 384, 256, 256)), ("vgg", (64, 128, 256, 512, 512))):
        heads = random_linear_state_dict(backbone, 0)
        assert sorted(heads) == [f"lin{i}.model.1.weight" for i in range(5)]
        assert [tuple(heads[f"lin{i}.model.1.weight"].shape) for i in range(5)] == [(1, c, 1, 1) for c in channels]
        assert all((v >= 0).all() for v in heads.values())
        assert {k for k in LPIPS(backbone).state_dict()} == {
            k for k in random_backbone_state_dict(backbone, 0) if k.startswith("features.")} | set(heads)


def test_distance_grows_with_noise(alex):
    x = _images(8, seed=3)
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        means = [alex(x, (x + s * torch.randn(x.shape, generator=g)).clamp(0, 1)).mean().item()
                 for s in (0.01, 0.03, 0.1, 0.2, 0.4)]
    assert all(a < b for a, b in zip(means, means[1:])), means


def test_classifier_keys_in_backbone_file_are_ignored(tmp_path):
    state = random_backbone_state_dict("alex", 0)
    assert any(k.startswith("classifier.") for k in state)  # like torchvision's file
    state["classifier.1.weight"] = torch.zeros(8, 8)  # any shape: never checked
    state["avgpool.dummy"] = torch.zeros(1)
    model = LPIPS.from_files(*_save(tmp_path, "alex", state_b=state))
    assert not any(k.startswith(("classifier.", "avgpool.")) for k in model.state_dict())


def test_renamed_key_is_named(tmp_path):
    state = random_backbone_state_dict("alex", 0)
    state["features.3.weights"] = state.pop("features.3.weight")
    b, lin = _save(tmp_path, "alex", state_b=state)
    with pytest.raises(ValueError) as err:
        LPIPS.from_files(b, lin)
    msg = str(err.value)
    assert str(b) in msg and "missing keys ['features.3.weight']" in msg
    assert "unexpected keys ['features.3.weights']" in msg


def test_extra_key_in_linear_file_is_named(tmp_path):
    heads = random_linear_state_dict("alex", 1)
    heads["lin5.model.1.weight"] = torch.rand(1, 256, 1, 1)
    b, lin = _save(tmp_path, "alex", state_l=heads)
    with pytest.raises(ValueError, match=r"unexpected keys \['lin5\.model\.1\.weight'\]") as err:
        LPIPS.from_files(b, lin)
    assert str(lin) in str(err.value) and "missing" not in str(err.value)


def test_wrong_shape_is_named(tmp_path):
    heads = random_linear_state_dict("alex", 1)
    heads["lin2.model.1.weight"] = torch.rand(1, 100, 1, 1)
    b, lin = _save(tmp_path, "alex", state_l=heads)
    with pytest.raises(ValueError, match=r"lin2\.model\.1\.weight: expected \(1, 384, 1, 1\), got \(1, 100, 1, 1\)"):
        LPIPS.from_files(b, lin)


def test_wrong_backbone_for_file_is_rejected(tmp_path):
    b, _ = _save(tmp_path, "alex")
    _, lin = _save(tmp_path, "vgg")
    with pytest.raises(ValueError, match="features.28.weight"):  # an AlexNet file offered as VGG16
        LPIPS.from_files(b, lin, backbone="vgg")


def test_non_state_dict_file_is_rejected(tmp_path):
    b, lin = _save(tmp_path, "alex", state_l=[torch.zeros(1)])
    with pytest.raises(ValueError, match="state dict"):
        LPIPS.from_files(b, lin)


def test_unknown_backbone_is_rejected():
    with pytest.raises(ValueError, match="'resnet'"):
        LPIPS("resnet")


def test_small_images_are_upsampled_large_ones_are_not(alex):
    def up(t):
        return F.interpolate(t, size=(MIN_SIDE, MIN_SIDE), mode="bilinear", align_corners=False)

    x, y = _images(2, size=32, seed=5), _images(2, size=32, seed=6)
    with torch.no_grad():
        d = alex(x, y)
        assert d.shape == (2,) and torch.isfinite(d).all() and (d > 0).all()
        assert torch.allclose(d, alex(up(x), up(y)), rtol=1e-5)
        # Non-square small input keeps its aspect ratio and works too.
        assert alex(x[..., :16, :], y[..., :16, :]).shape == (2,)
        # At MIN_SIDE and above no resize happens: the input reaches the backbone unchanged.
        big = _images(1, size=MIN_SIDE, seed=7)
        assert torch.equal(alex._prepare(big), (big * 2 - 1 - alex.shift) / alex.scale)


def test_mismatched_inputs_are_rejected(alex):
    with pytest.raises(ValueError, match="one shape"):
        alex(_images(2), _images(3))


def test_stays_in_eval_mode(alex):
    alex.train()
    assert not alex.training and not alex.lin0.model[0].training


def test_lpips_available(tmp_path):
    ok, reason = lpips_available(None, None)
    assert not ok and "not configured" in reason
    b, lin = _save(tmp_path, "alex")
    ok, reason = lpips_available(b, tmp_path / "missing.pth")
    assert not ok and "not found" in reason and "missing.pth" in reason
    assert lpips_available(b, lin) == (True, "")
