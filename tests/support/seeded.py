"""A seeded `Randomness` for tests that compare two DP-SGD runs draw for draw (micro-
batching, padding, λ = 0): the site itself has no seeded source (see
`sites.sandbox.randomness`), so reproducibility lives here, in the tests, only."""

from __future__ import annotations

import torch


class SeededRandomness:
    """`Randomness` from torch generators seeded with `seed`: reproducible, not secret."""

    def __init__(self, seed: int) -> None:
        self._gen = torch.Generator().manual_seed(seed)

    def uniform(self, n: int) -> torch.Tensor:
        return torch.rand(n, generator=self._gen, dtype=torch.float64)

    def normal(self, shape: tuple[int, ...], std: float, device: torch.device
               ) -> torch.Tensor:
        return torch.normal(0.0, std, shape, generator=self._gen).to(device)
