"""Evaluate a global model on the researcher's own validation cohort (AUC, loss).

Runs the researcher's own model code on their own data; never touches a site.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from torch import nn

from datasets.cohort import Cohort


def load_params(model: nn.Module, params: dict[str, np.ndarray]) -> nn.Module:
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.from_numpy(np.asarray(params[name])))
    return model


@torch.no_grad()
def evaluate(model: nn.Module, cohort: Cohort, inputs: list[str],
             batch: int = 32) -> tuple[float, float]:
    """(AUC, mean BCE loss) of a single-logit binary classifier."""
    model.eval()
    x = torch.from_numpy(cohort.stacked(inputs))
    y = torch.from_numpy(cohort.labels).float()
    logits = torch.cat([model(x[i:i + batch]).reshape(-1) for i in range(0, len(x), batch)])
    loss = float(F.binary_cross_entropy_with_logits(logits, y))
    labels = cohort.labels
    auc = float(roc_auc_score(labels, logits.numpy())) if 0 < labels.sum() < len(labels) else 0.5
    return auc, loss
