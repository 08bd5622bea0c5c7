"""LPIPS (Zhang et al. 2018, "The Unreasonable Effectiveness of Deep Features as a Perceptual Metric") on plain torch
modules, so evaluation needs neither torchvision nor the lpips package.

Weights come from local files in the public layouts: the backbone is torchvision's ImageNet state dict
(`alexnet-owt-7be5be79.pth`, `vgg16-397923af.pth`; keys `features.N.weight|bias`, `classifier.*` ignored) and the
linear heads are the lpips package's `weights/v0.1/{alex,vgg}.pth` (keys `linK.model.1.weight`, shape [1, C, 1, 1]).
Nothing is ever downloaded: without both files the metric is reported unavailable (`lpips_available`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

Backbone = Literal["alex", "vgg"]
PathLike = str | os.PathLike

# Inputs with a shorter side are upsampled (bilinear, aspect kept) to this side. 64 px is the patch size of BAPPS, on
# which the linear heads were calibrated; below it AlexNet's conv3-5 maps shrink to 1x1 (at 32 px) and under 31 px
# AlexNet fails outright. Images at least this large are never resized.
MIN_SIDE = 64

# LPIPS' ScalingLayer: per-channel shift and scale applied to images in [-1, 1].
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)
_EPS = 1e-10  # the lpips package's eps in the unit normalisation


def _alexnet_features() -> nn.Sequential:
    """torchvision `alexnet().features`, index for index (the state-dict keys depend on the indices)."""
    return nn.Sequential(
        nn.Conv2d(3, 64, 11, stride=4, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
        nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
        nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2),
    )


def _vgg16_features() -> nn.Sequential:
    """torchvision `vgg16().features` (configuration "D", no batch norm), index for index."""
    layers: list[nn.Module] = []
    c_in = 3
    for v in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"):
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(c_in, v, 3, padding=1), nn.ReLU()]
            c_in = v
    return nn.Sequential(*layers)


# backbone -> (features builder, indices of the tapped ReLUs, their channels, classifier bias keys of the real file)
_SPECS = {
    "alex": (_alexnet_features, (1, 4, 7, 9, 11), (64, 192, 384, 256, 256),
             {"classifier.1.bias": 4096, "classifier.4.bias": 4096, "classifier.6.bias": 1000}),
    "vgg": (_vgg16_features, (3, 8, 15, 22, 29), (64, 128, 256, 512, 512),
            {"classifier.0.bias": 4096, "classifier.3.bias": 4096, "classifier.6.bias": 1000}),
}


def _spec(backbone: str):
    if backbone not in _SPECS:
        raise ValueError(f"LPIPS backbone must be one of {sorted(_SPECS)}, got {backbone!r}")
    return _SPECS[backbone]


class _LinearHead(nn.Module):
    """One lpips head: `model.0` dropout (no parameters, kept for the key layout), `model.1` a bias-free 1x1 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(channels, 1, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class LPIPS(nn.Module):
    """LPIPS distance between image batches. The constructor gives random weights (layout only); use `from_files`.

    The module's own state-dict keys are exactly those of the two public files (`features.*` and `lin0..4.*`), so
    loading is a strict `load_state_dict`. It is frozen: always in eval mode, no parameter requires grad.
    """

    def __init__(self, backbone: Backbone = "alex"):
        super().__init__()
        build, self.taps, self.channels, _ = _spec(backbone)
        self.backbone = backbone
        self.features = build()
        for i, c in enumerate(self.channels):
            setattr(self, f"lin{i}", _LinearHead(c))
        # Non-persistent: the constants are not in either file and must not be expected there.
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> LPIPS:
        # A metric stays in eval even inside a parent put in train mode: dropout in the heads would make it random.
        return super().train(False)

    @classmethod
    def from_files(cls, backbone_weights: PathLike, linear_weights: PathLike, backbone: Backbone = "alex") -> LPIPS:
        """Load a torchvision backbone state dict and an lpips linear-head state dict; raises ValueError naming the
        file, missing/unexpected keys and shape mismatches when a file does not have the expected layout."""
        model = cls(backbone)
        expected = model.state_dict()
        feats = {k: v for k, v in expected.items() if k.startswith("features.")}
        heads = {k: v for k, v in expected.items() if k.startswith("lin")}
        ignore = ("classifier.", "avgpool.")  # the ImageNet head of the torchvision file; LPIPS uses only features
        state = _load_checked(backbone_weights, feats, ignore=ignore, what=f"torchvision {backbone}")
        state.update(_load_checked(linear_weights, heads, ignore=(), what=f"lpips v0.1 {backbone} linear heads"))
        model.load_state_dict(state, strict=True)
        return model

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        """[0, 1] images -> upsampled if small -> [-1, 1] -> ScalingLayer."""
        x = x.to(self.shift.dtype)
        h, w = x.shape[-2:]
        if min(h, w) < MIN_SIDE:
            s = MIN_SIDE / min(h, w)
            x = F.interpolate(x, size=(max(MIN_SIDE, round(h * s)), max(MIN_SIDE, round(w * s))), mode="bilinear",
                              align_corners=False)
        return (x * 2 - 1 - self.shift) / self.scale

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Distance per pair: x, y float [B, 3, H, W] in [0, 1] -> [B]."""
        if x.shape != y.shape or x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"LPIPS needs two [B, 3, H, W] batches of one shape, got {tuple(x.shape)}, "
                             f"{tuple(y.shape)}")
        b = x.shape[0]
        h = self._prepare(torch.cat([x, y]))  # one backbone pass for both batches
        total = h.new_zeros(b)
        tap = 0
        for i, layer in enumerate(self.features[: self.taps[-1] + 1]):  # later layers feed no tap
            h = layer(h)
            if i == self.taps[tap]:
                unit = h / (h.pow(2).sum(dim=1, keepdim=True).sqrt() + _EPS)  # unit length over channels
                diff = (unit[:b] - unit[b:]) ** 2
                total = total + getattr(self, f"lin{tap}")(diff).mean(dim=(1, 2, 3))  # spatial mean, 1 channel
                tap += 1
        return total


def _load_checked(path: PathLike, expected: dict[str, torch.Tensor], ignore: tuple[str, ...],
                  what: str) -> dict[str, torch.Tensor]:
    """The file's tensors for `expected`'s keys, after checking keys and shapes (keys under `ignore` dropped)."""
    try:
        raw = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as e:  # a pickle with objects, a truncated file: report which file, not just a pickle error
        raise ValueError(f"LPIPS: cannot load {what} weights from {path}: {e}") from e
    if not isinstance(raw, dict):
        raise ValueError(f"LPIPS: {path} holds a {type(raw).__name__}, expected a {what} state dict")
    got = {k: v for k, v in raw.items() if not str(k).startswith(ignore)}
    problems = []
    if missing := sorted(set(expected) - set(got)):
        problems.append(f"missing keys {missing}")
    if unexpected := sorted(map(str, set(got) - set(expected))):
        problems.append(f"unexpected keys {unexpected}")
    for k in sorted(set(expected) & set(got)):
        v = got[k]
        if not isinstance(v, torch.Tensor) or v.shape != expected[k].shape:
            shape = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
            problems.append(f"shape mismatch for {k}: expected {tuple(expected[k].shape)}, got {shape}")
    if problems:
        raise ValueError(f"LPIPS: {path} does not have the {what} layout: " + "; ".join(problems))
    return {k: got[k] for k in expected}


def lpips_available(backbone_weights: PathLike | None, linear_weights: PathLike | None) -> tuple[bool, str]:
    """(True, "") when both weight files exist, else (False, why) for reporting the metric as unavailable."""
    for name, path in (("backbone", backbone_weights), ("linear-head", linear_weights)):
        if path is None:
            return False, f"LPIPS not configured: no {name} weights path given"
        if not Path(path).is_file():
            return False, f"LPIPS {name} weights not found: {path}"
    return True, ""


def random_backbone_state_dict(backbone: Backbone, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights in torchvision's layout for tests, He-scaled so activations stay finite through the stack.
    Carries the real file's classifier bias keys (real shapes; the big classifier weights are left out to keep test
    files small) to prove `classifier.*` is ignored."""
    build, _, _, classifier = _spec(backbone)
    g = torch.Generator().manual_seed(seed)
    state = {}
    for k, v in build().state_dict().items():
        fan_in = v[0].numel() if v.dim() > 1 else 1
        scale = (2.0 / fan_in) ** 0.5 if v.dim() > 1 else 0.01
        state[f"features.{k}"] = torch.randn(v.shape, generator=g) * scale
    state.update({k: torch.randn(n, generator=g) for k, n in classifier.items()})
    return state


def random_linear_state_dict(backbone: Backbone, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random non-negative heads (as the trained ones are) in the lpips layout, for tests."""
    g = torch.Generator().manual_seed(seed)
    channels = _spec(backbone)[2]
    return {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1, generator=g) * 0.2 for i, c in enumerate(channels)}
