"""Aggregation strategies: how the researcher combines the sites' parameters.

A strategy is a small interface (`aggregate`) so others (FedProx, trimmed
mean, ...) can be swapped in. FedAvg weighs each site by its sample count:

    w = Σ_k n_k · w_k / Σ_k n_k

accumulated in float64 and returned in the parameters' own dtype.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np


class Strategy(Protocol):
    def aggregate(self, results: list[tuple[int, dict[str, np.ndarray]]]) -> dict[str, np.ndarray]:
        """Combine (n_k, parameters) of the sites that answered this round."""
        ...


class FedAvg:
    def aggregate(self, results: list[tuple[int, dict[str, np.ndarray]]]) -> dict[str, np.ndarray]:
        if not results:
            raise ValueError("nothing to aggregate")
        total = float(sum(n for n, _ in results))
        if total <= 0:
            raise ValueError("sample counts must be positive")
        names = results[0][1].keys()
        out: dict[str, np.ndarray] = {}
        for name in names:
            acc = np.zeros(results[0][1][name].shape, dtype=np.float64)
            for n, params in results:
                acc += (n / total) * params[name].astype(np.float64)
            out[name] = acc.astype(results[0][1][name].dtype)
        return out
