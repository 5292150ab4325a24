"""Where DP-SGD's randomness comes from: the Poisson batch draws and the Gaussian noise.

The privacy of a release rests on the researcher not knowing the noise that was added
nor which subjects each step drew. A seeded pseudo-random generator is not enough: torch's
CPU generator (mt19937) keeps only the low 32 bits of its seed, so from the released
weights and the start weights a researcher could try every seed offline, find the one
whose noise explains the update, and subtract it (red team, issue 17: 2³² guesses in
about 14 core-hours). So the site draws every value from the operating system's
cryptographically secure generator (`os.urandom`, the kernel's ChaCha20 CSPRNG):

    u = (64 random bits >> 11) · 2⁻⁵³                      uniform on [0, 1), 53 bits
    z = √(−2 ln(1 − u₁)) · cos(2π u₂), √(−2 ln(1 − u₁)) · sin(2π u₂)   Box-Muller
    noise = std · (z₁ + z₂ + z₃ + z₄) / 2                  N(0, std²)

The last line is Opacus' secure mode (after Holohan and Braghin, "Secure random sampling
in differential privacy", 2021): a sum of four independent normals blurs the
floating-point artefacts of a single Box-Muller draw that an attacker could otherwise use
to tell which value the noise was added to. Computed in float64, returned as float32.

There is deliberately no seed and no seeded implementation here: nothing at a site can
make DP-SGD's draws reproducible. Tests that compare two runs pass their own generator
through the `Randomness` protocol. This module must never log or return its draws.
"""

from __future__ import annotations

import math
import os
from typing import Protocol

import numpy as np
import torch

#: the kernel hands out at most this many bytes per getrandom call without blocking
_CHUNK = 1 << 25


class Randomness(Protocol):
    """The draws DP-SGD makes: uniforms for the Poisson batch, normals for the noise."""

    def uniform(self, n: int) -> torch.Tensor:
        """`n` independent draws, uniform on [0, 1), float64 on the CPU."""
        ...

    def normal(self, shape: tuple[int, ...], std: float, device: torch.device
               ) -> torch.Tensor:
        """A float32 tensor of `shape` on `device`, each value independent N(0, std²)."""
        ...


def _random_u64(n: int) -> np.ndarray:
    parts = [np.frombuffer(os.urandom(min(_CHUNK, 8 * (n - i))), dtype=np.uint64)
             for i in range(0, n, _CHUNK // 8)]
    return np.concatenate(parts) if len(parts) != 1 else parts[0]


class SecureRandomness:
    """`Randomness` from `os.urandom`: the only implementation a site uses."""

    def uniform(self, n: int) -> torch.Tensor:
        if n <= 0:
            return torch.zeros(0, dtype=torch.float64)
        bits = _random_u64(n) >> np.uint64(11)
        return torch.from_numpy(bits.astype(np.float64) * (1.0 / (1 << 53)))

    def _standard_normal(self, n: int) -> np.ndarray:
        pairs = (n + 1) // 2
        u = self.uniform(2 * pairs).numpy()
        radius = np.sqrt(-2.0 * np.log1p(-u[:pairs]))  # 1 − u in (0, 1]: finite
        angle = (2.0 * math.pi) * u[pairs:]
        return np.concatenate([radius * np.cos(angle), radius * np.sin(angle)])[:n]

    def normal(self, shape: tuple[int, ...], std: float, device: torch.device
               ) -> torch.Tensor:
        n = math.prod(shape)
        if n == 0 or std == 0.0:
            return torch.zeros(shape, dtype=torch.float32, device=device)
        z = sum(self._standard_normal(n) for _ in range(4)) / 2.0
        return torch.from_numpy((std * z).astype(np.float32)).reshape(shape).to(device)
