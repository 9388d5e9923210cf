"""A 2-D toy of both dialects: the "pictures" are points of a 2-D mixture, one cluster per colour, and a tiny
network learns them in seconds on a CPU, once to predict the noise (ε) and once to predict a velocity (v,
flow matching). Sampling from the same noise with each draws the paths the samples take, so the geometry
that makes few steps work for flow models can be seen: its paths are straighter.

Notation (as ``diffexplain.names``): x0 a data point [n, 2], ε ~ N(0, I), t ∈ [0, 1] (1: pure noise).
- ε dialect (variance preserving, cosine ᾱ): x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε; the network predicts ε;
  x̂0 = (x_t − √(1−ᾱ_t)·ε̂)/√ᾱ_t; sampling by DDIM (η = 0).
- flow dialect (rectified flow): x_t = (1−t)·x0 + t·ε; the network predicts v = ε − x0; x̂0 = x_t − t·v̂;
  sampling by Euler steps x ← x + (t_next − t)·v̂.
Classifier-free guidance works as everywhere: ε̂ = ε_u + w·(ε_c − ε_u) (the label is dropped 10 % of the
time in training, so the same network also predicts without it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

COLOURS = ("red", "yellow", "green", "cyan", "blue", "magenta")
"""The clusters, by hue: colour k sits at angle 60°·k on a circle of radius 2."""
OBJECTIVES = ("epsilon", "flow")


def cluster_centres() -> torch.Tensor:
    """The mixture's centres [K, 2]: the colours around a circle of radius 2, by hue."""
    angles = torch.arange(len(COLOURS), dtype=torch.float32) * (2 * math.pi / len(COLOURS))
    return 2.0 * torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)


def sample_data(
    n: int, generator: torch.Generator, spread: float = 0.25
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` points x0 [n, 2] and their colour labels [n] (uniform over the colours)."""
    labels = torch.randint(len(COLOURS), (n,), generator=generator)
    points = cluster_centres()[labels] + spread * torch.randn(n, 2, generator=generator)
    return points, labels


def alpha_bar(t: torch.Tensor) -> torch.Tensor:
    """The cosine schedule's ᾱ_t for t ∈ [0, 1], kept inside [1e-4, 1 − 1e-4]."""
    return (torch.cos(t * math.pi / 2) ** 2).clamp(1e-4, 1 - 1e-4)


class ToyDenoiser(nn.Module):
    """f(x_t, t, label) → ε or v [n, 2]: an MLP on x_t, a sinusoidal t and a label embedding (the last
    index is "no label", for guidance)."""

    def __init__(self, hidden: int = 128) -> None:
        super().__init__()
        self.label_embedding = nn.Embedding(len(COLOURS) + 1, 16)
        self.net = nn.Sequential(
            nn.Linear(2 + 16 + 16, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
            nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, 2),
        )  # fmt: skip

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        freqs = torch.arange(8, dtype=x.dtype) + 1
        t_features = torch.cat(
            [torch.sin(t[:, None] * freqs * math.pi), torch.cos(t[:, None] * freqs * math.pi)], 1
        )
        return self.net(torch.cat([x, t_features, self.label_embedding(labels)], dim=1))


@dataclass
class ToyModel:
    """A trained toy denoiser and the dialect it speaks."""

    network: ToyDenoiser
    objective: str  # "epsilon" or "flow"
    losses: list[float]  # the training loss, every 100 steps


def train(
    objective: str, *, steps: int = 3000, batch: int = 512, seed: int = 0, drop_label: float = 0.1
) -> ToyModel:
    """Train a toy denoiser with ``objective`` ("epsilon": predict ε; "flow": predict v = ε − x0); a few
    seconds on a CPU. The label is dropped (replaced by "no label") with probability ``drop_label``."""
    if objective not in OBJECTIVES:
        raise ValueError(f"objective={objective!r}: expected one of {OBJECTIVES}")
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    network = ToyDenoiser()
    optimiser = torch.optim.Adam(network.parameters(), lr=2e-3)
    losses, running = [], 0.0
    for step in range(steps):
        x0, labels = sample_data(batch, generator)
        labels = torch.where(torch.rand(batch, generator=generator) < drop_label, len(COLOURS), labels)
        t = torch.rand(batch, generator=generator)
        noise = torch.randn(batch, 2, generator=generator)
        if objective == "epsilon":
            a = alpha_bar(t)[:, None]
            x_t, target = a.sqrt() * x0 + (1 - a).sqrt() * noise, noise
        else:
            x_t, target = (1 - t[:, None]) * x0 + t[:, None] * noise, noise - x0
        loss = (network(x_t, t, labels) - target).pow(2).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        running += float(loss.detach())
        if (step + 1) % 100 == 0:
            losses.append(running / 100)
            running = 0.0
    network.eval()
    return ToyModel(network, objective, losses)


@torch.no_grad()
def sample_paths(
    model: ToyModel, labels: torch.Tensor, *, num_steps: int = 25, guidance_scale: float = 1.0, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """The paths of samples of ``labels`` [n] from the same noise: (x [S+1, n, 2] from x_T to x_0, and
    x̂0 at each step [S, n, 2]); DDIM for the ε dialect, Euler for the flow one; guidance ε_u + w·Δ for w ≠ 1."""
    noise = torch.randn(len(labels), 2, generator=torch.Generator().manual_seed(seed))
    times = torch.linspace(1.0, 0.0, num_steps + 1)
    x, path, guesses = noise, [noise], []
    unlabelled = torch.full_like(labels, len(COLOURS))
    for t, t_next in zip(times[:-1], times[1:], strict=True):
        t_batch = t.expand(len(labels))
        out = model.network(x, t_batch, labels)
        if guidance_scale != 1.0:
            out_uncond = model.network(x, t_batch, unlabelled)
            out = out_uncond + guidance_scale * (out - out_uncond)
        if model.objective == "epsilon":
            a, a_next = alpha_bar(t), alpha_bar(t_next) if t_next > 0 else torch.tensor(1.0)
            pred_x0 = (x - (1 - a).sqrt() * out) / a.sqrt()
            x = a_next.sqrt() * pred_x0 + (1 - a_next).sqrt() * out
        else:
            pred_x0 = x - t * out
            x = x + (t_next - t) * out
        path.append(x)
        guesses.append(pred_x0)
    return torch.stack(path), torch.stack(guesses)


def straightness(path: torch.Tensor) -> torch.Tensor:
    """Per sample, the length travelled over the distance from start to end [n]: 1 for a straight path."""
    travelled = (path[1:] - path[:-1]).norm(dim=-1).sum(dim=0)
    return travelled / (path[-1] - path[0]).norm(dim=-1).clamp_min(1e-8)


def nearest_colour(points: torch.Tensor) -> torch.Tensor:
    """The index of the nearest cluster centre of each point [n]."""
    return torch.cdist(points, cluster_centres()).argmin(dim=1)


def in_cluster(points: torch.Tensor, labels: torch.Tensor, radius: float = 1.0) -> torch.Tensor:
    """Whether each point lies within ``radius`` of its label's centre [n] (the data sit within about 0.5)."""
    return (points - cluster_centres()[labels]).norm(dim=-1) < radius
