"""The patch networks of the edge-based, depth-edge-aware estimator (Karaali et al., paper 002).

Two networks look at an edge point of a photo through multi-scale windows centred on it:

- **B-NET** (blur at a pattern edge) = f1-NET (multi-scale low-level features) + b-NET (deep
  features fB, 64) + classification network I (300, 150, one output per quantised blur level);
- **E-NET** (pattern edge vs depth edge) = f1-NET (B-NET's, frozen while E-NET trains) + f2-NET
  (its own features over a 41 px window) + e-NET (fused deep features fE, 64) + classification
  network II (300, 150, 2).

The efficient form. The paper feeds 41/27/15 px patches to each network, 123 + 149 MFLOP per
edge point; a 12 MP photo has 10^5-10^6 edge points. Here f1-NET and f2-NET are stacks of
*unpadded, stride-1, dilated* 3x3 convolutions, so running them on a patch gives exactly the
values that running them once densely over the whole (reflect-padded) photo gives at the same
positions. A window of the paper is then read off the dense feature maps at a few offsets around
the point (a 3x3 grid whose extent is the window's size):

    f1 trunk (RF 17: conv3, conv3, conv3 d2, conv3 d4; ``channels`` each)
        15 px window: the trunk's output at the point (its receptive field, 17 px)
        27 px window: the output on a 3x3 grid of stride 5   (10 + 17 = 27 px)
        41 px window: the output on a 3x3 grid of stride 12  (24 + 17 = 41 px)
        fine detail:  the second layer (RF 5) on a 3x3 grid of stride 2
    f2 trunk (RF 31: conv3, conv3 d2, conv3 d4, conv3 d8)
        41 px window: the output on a 3x3 grid of stride 5   (10 + 31 = 41 px)

Only the multi-layer perceptrons run per edge point (~0.3 MFLOP each); the trunks cost
~15 kFLOP per pixel each, once per photo.

Invariance to the photo's brightness and contrast, which say nothing about blur: the first
convolution of each trunk has zero-sum kernels (a constant added to all channels cancels) and no
trunk layer has a bias, so the gathered feature vector v scales with the local contrast; the
heads see v / |v| and log |v| (contrast is still known, e.g. to tell texture from noise). This
is exact in the dense form too, which a per-patch normalisation of the input would not be.

Blur levels (B-NET's classes): Gaussian sigma in px of the image the network sees, 0 to 6 in
steps of 0.25 (25 levels; the paper's 23 disk radii 0.5-6 px are sigma ~0.3-3.3 px by the RTF
authors' sigma-to-radius table, a range too narrow for the working resolutions used here). A
sigma between two levels is a two-hot target (linear interpolation); the estimate is the
expectation of the softmax over the levels, so it is not quantised.

Input of both networks: RGB in [0, 1], (N, 3, H, W); in patch form H = W = 41 (``PATCH``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

#: px; side of the training patches, and the reach (PATCH // 2) of the windows around a point
PATCH = 41
HALF = PATCH // 2
#: (dilations of f1's 3x3 convolutions, of f2's)
F1_DILATIONS = (1, 1, 2, 4)
F2_DILATIONS = (1, 2, 4, 8)
#: grid offsets (px) of each window, read from the trunk output ("out") or f1's second layer ("fine")
F1_WINDOWS = {"fine": 2, "w15": 0, "w27": 5, "w41": 12}
F2_WINDOWS = {"w41": 5}
PATTERN, DEPTH = 0, 1


@dataclass(frozen=True)
class EdgeNetConfig:
    """Architecture of EdgeNets."""

    #: channels of every trunk convolution
    channels: int = 16
    #: width of the deep features fB and fE (the paper: 64)
    features: int = 64
    #: first hidden layer from the gathered vector to fB / fE
    hidden: int = 128
    #: the classification networks' hidden layers (the paper: 300, 150)
    classifier: tuple[int, int] = (300, 150)
    #: px; B-NET's blur levels 0, step, ..., sigma_max (Gaussian sigma of the network's input)
    sigma_step: float = 0.25
    sigma_max: float = 6.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "classifier", tuple(self.classifier))
        if self.channels < 1 or self.features < 1 or self.hidden < 1 or min(self.classifier) < 1:
            raise ValueError(f"EdgeNetConfig: every width must be >= 1, got {self}")
        if not 0 < self.sigma_step <= self.sigma_max:
            raise ValueError(f"EdgeNetConfig: need 0 < sigma_step <= sigma_max, got {self.sigma_step}, "
                             f"{self.sigma_max}")

    @property
    def levels(self) -> int:
        return int(round(self.sigma_max / self.sigma_step)) + 1

    def to_dict(self) -> dict:
        d = asdict(self)
        d["classifier"] = list(self.classifier)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> EdgeNetConfig:
        d = dict(d)
        d["classifier"] = tuple(d.get("classifier", (300, 150)))
        return cls(**d)


class Trunk(nn.Module):
    """Bias-free 3x3 convolutions with ReLU, unpadded, stride 1; the first has zero-sum kernels.

    forward(x) -> the output of every layer; layer i's map is smaller than x by ``shrink[i]`` px
    on each side, so input pixel (y, x) is at (y - shrink[i], x - shrink[i]) in it.
    """

    def __init__(self, channels: int, dilations: tuple[int, ...]) -> None:
        super().__init__()
        self.dilations = dilations
        ins = (3,) + (channels,) * (len(dilations) - 1)
        self.convs = nn.ModuleList(nn.Conv2d(i, channels, 3, dilation=d, bias=False)
                                   for i, d in zip(ins, dilations))
        self.shrink = tuple(sum(dilations[: i + 1]) for i in range(len(dilations)))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for i, (conv, d) in enumerate(zip(self.convs, self.dilations)):
            w = conv.weight
            if i == 0:
                w = w - w.mean(dim=(1, 2, 3), keepdim=True)
            x = F.conv2d(x, w, dilation=d).relu_()  # in place: one pass less over the map
            outs.append(x)
        return outs


def _grid(stride: int) -> list[tuple[int, int]]:
    if stride == 0:
        return [(0, 0)]
    return [(dy * stride, dx * stride) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]


def gather(fmap: torch.Tensor, shrink: int, batch: torch.Tensor, ys: torch.Tensor, xs: torch.Tensor,
           stride: int) -> torch.Tensor:
    """Features of ``fmap`` (B, C, h, w) on a 3x3 grid of ``stride`` around input pixels
    (batch, ys, xs) (coordinates in the trunk's input) -> (N, positions * C), position-major.

    One index_select on the map viewed as (B * h * w, C) rows: a view, no copy, when the map
    is channels-last (as the dense form makes it)."""
    b, c, h, w = fmap.shape
    rows = fmap.permute(0, 2, 3, 1).reshape(b * h * w, c)
    base = (batch * h + ys - shrink) * w + xs - shrink
    offsets = torch.tensor([dy * w + dx for dy, dx in _grid(stride)], device=fmap.device)
    idx = (base[:, None] + offsets[None, :]).reshape(-1)
    return rows.index_select(0, idx).reshape(len(ys), len(offsets) * c)


def _normalised(v: torch.Tensor) -> torch.Tensor:
    """[v / |v|, log |v|]: the direction of the feature vector and its (contrast) magnitude."""
    norm = v.norm(dim=1, keepdim=True)
    return torch.cat([v / (norm + 1e-6), torch.log(norm + 1e-4)], dim=1)


def _mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


@dataclass
class DenseFeatures:
    """The trunks' maps over one reflect-padded photo (pad = HALF): input pixel (y, x) of the
    photo is (y + HALF, x + HALF) in the padded input."""

    f1: list[torch.Tensor]
    f2: list[torch.Tensor] | None


class EdgeNets(nn.Module):
    """B-NET and E-NET with their shared f1-NET (see the module docstring)."""

    def __init__(self, config: EdgeNetConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or EdgeNetConfig()
        c = config.channels
        self.f1 = Trunk(c, F1_DILATIONS)
        self.f2 = Trunk(c, F2_DILATIONS)
        n1 = c * (9 + 1 + 9 + 9) + 1
        n2 = c * 9 + 1
        k1, k2 = config.classifier
        self.b_net = _mlp([n1, config.hidden, config.features])
        self.b_classifier = _mlp([config.features, k1, k2, config.levels])
        self.e_net = _mlp([n1 + n2, config.hidden, config.features])
        self.e_classifier = _mlp([config.features, k1, k2, 2])
        self.register_buffer("levels", torch.arange(config.levels, dtype=torch.float32) * config.sigma_step,
                             persistent=False)

    # -- features ---------------------------------------------------------------------------

    def f1_vector(self, maps: list[torch.Tensor], batch, ys, xs) -> torch.Tensor:
        fine, out = maps[1], maps[-1]
        s_fine, s_out = self.f1.shrink[1], self.f1.shrink[-1]
        v = torch.cat([gather(fine, s_fine, batch, ys, xs, F1_WINDOWS["fine"]),
                       gather(out, s_out, batch, ys, xs, F1_WINDOWS["w15"]),
                       gather(out, s_out, batch, ys, xs, F1_WINDOWS["w27"]),
                       gather(out, s_out, batch, ys, xs, F1_WINDOWS["w41"])], dim=1)
        return _normalised(v)

    def f2_vector(self, maps: list[torch.Tensor], batch, ys, xs) -> torch.Tensor:
        return _normalised(gather(maps[-1], self.f2.shrink[-1], batch, ys, xs, F2_WINDOWS["w41"]))

    # -- heads ------------------------------------------------------------------------------

    def blur_logits(self, v1: torch.Tensor) -> torch.Tensor:
        return self.b_classifier(F.relu(self.b_net(v1)))

    def edge_logits(self, v1: torch.Tensor, v2: torch.Tensor) -> torch.Tensor:
        return self.e_classifier(F.relu(self.e_net(torch.cat([v1, v2], dim=1))))

    def sigma_of(self, logits: torch.Tensor) -> torch.Tensor:
        """The expectation of the blur level under the softmax: sigma px, (N,)."""
        return (logits.float().softmax(dim=1) * self.levels).sum(dim=1)

    # -- patch form (training) --------------------------------------------------------------

    def _centre(self, patches: torch.Tensor):
        n = patches.shape[0]
        batch = torch.arange(n, device=patches.device)
        centre = torch.full((n,), HALF, device=patches.device, dtype=torch.long)
        return batch, centre, centre

    def forward_blur(self, patches: torch.Tensor) -> torch.Tensor:
        """(N, 3, 41, 41) patches centred on pattern edges -> blur-level logits (N, levels)."""
        return self.blur_logits(self.f1_vector(self.f1(patches), *self._centre(patches)))

    def forward_edge(self, patches: torch.Tensor, freeze_f1: bool = True) -> torch.Tensor:
        """(N, 3, 41, 41) patches centred on edges -> logits (N, 2) of (pattern, depth)."""
        idx = self._centre(patches)
        if freeze_f1:
            with torch.no_grad():
                v1 = self.f1_vector(self.f1(patches), *idx)
        else:
            v1 = self.f1_vector(self.f1(patches), *idx)
        return self.edge_logits(v1, self.f2_vector(self.f2(patches), *idx))

    def forward(self, patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Both heads on patches: (blur logits, edge logits)."""
        idx = self._centre(patches)
        v1 = self.f1_vector(self.f1(patches), *idx)
        v2 = self.f2_vector(self.f2(patches), *idx)
        return self.blur_logits(v1), self.edge_logits(v1, v2)

    # -- dense form (inference) -------------------------------------------------------------

    def dense(self, rgb: torch.Tensor, with_f2: bool = True) -> DenseFeatures:
        """Both trunks once over a (1, 3, H, W) photo (reflect-padded by HALF px)."""
        x = F.pad(rgb, (HALF, HALF, HALF, HALF), mode="reflect").contiguous(memory_format=torch.channels_last)
        return DenseFeatures(self.f1(x), self.f2(x) if with_f2 else None)

    def at_points(self, feats: DenseFeatures, ys: torch.Tensor, xs: torch.Tensor, depth_threshold: float = 1.0,
                  chunk: int = 32768) -> tuple[torch.Tensor, torch.Tensor]:
        """E-NET's depth-edge probability and B-NET's sigma (px) at photo pixels (ys, xs) -> (N,), (N,).

        B-NET runs only where the depth probability is below ``depth_threshold`` (pattern
        edges; everywhere by default); sigma is NaN at the other points. Without f2 maps
        (``dense(..., with_f2=False)``) every point is taken for a pattern edge (probability 0).
        """
        sigmas, p_depth = [], []
        for s in range(0, len(ys), chunk):
            y, x = ys[s:s + chunk] + HALF, xs[s:s + chunk] + HALF
            batch = torch.zeros_like(y)
            v1 = self.f1_vector(feats.f1, batch, y, x)
            if feats.f2 is not None:
                v2 = self.f2_vector(feats.f2, batch, y, x)
                p = self.edge_logits(v1, v2).float().softmax(dim=1)[:, DEPTH]
            else:
                p = torch.zeros(len(y), device=v1.device)
            sigma = torch.full((len(y),), float("nan"), device=v1.device)
            keep = p < depth_threshold
            if bool(keep.any()):
                sigma[keep] = self.sigma_of(self.blur_logits(v1[keep]))
            sigmas.append(sigma)
            p_depth.append(p)
        empty = ys.new_zeros(0, dtype=torch.float32)
        return (torch.cat(p_depth) if p_depth else empty,
                torch.cat(sigmas) if sigmas else empty)


def soft_targets(sigma: torch.Tensor, config: EdgeNetConfig) -> torch.Tensor:
    """Two-hot targets over the blur levels: sigma between levels k and k+1 splits its weight
    linearly between them (sigma is clipped to [0, sigma_max]) -> (N, levels)."""
    t = (sigma.clamp(0, config.sigma_max) / config.sigma_step)
    lo = t.floor().long().clamp(max=config.levels - 1)
    hi = (lo + 1).clamp(max=config.levels - 1)
    w_hi = (t - lo.float()).clamp(0, 1)
    out = torch.zeros(len(sigma), config.levels, device=sigma.device)
    out.scatter_add_(1, lo[:, None], (1 - w_hi)[:, None])
    out.scatter_add_(1, hi[:, None], w_hi[:, None])
    return out


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
