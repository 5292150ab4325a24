"""Evaluate a global model on the researcher's own validation cohort, per task.

classify: AUC and mean BCE; segment: Dice per foreground class and their mean (MONAI's
`DiceMetric` over the arg-max prediction); synthesize: MAE, PSNR and SSIM of the
synthesised modality (MONAI's metrics, the data range of each target volume).

Runs the researcher's own model code on their own data; never touches a site.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from torch import nn

from datasets.cohort import Cohort
from policies.contract.plan import TrainingPlan


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


def _outputs(model: nn.Module, x: torch.Tensor, batch: int) -> torch.Tensor:
    return torch.cat([model(x[i:i + batch]) for i in range(0, len(x), batch)])


@torch.no_grad()
def evaluate_task(model: nn.Module, cohort: Cohort, plan: TrainingPlan,
                  batch: int = 8) -> dict[str, float]:
    """The task's metrics of `model` on `cohort` (see the module docstring)."""
    model.eval()
    if plan.task == "classify":
        auc, loss = evaluate(model, cohort, list(plan.inputs))
        return {"auc": auc, "loss": loss}
    x = torch.from_numpy(cohort.stacked(list(plan.inputs)))
    target = torch.from_numpy(cohort.target(plan.target))
    out = _outputs(model, x, batch)
    if plan.task == "segment":
        from monai.metrics import DiceMetric

        classes = out.shape[1]
        pred = F.one_hot(out.argmax(1), classes).movedim(-1, 1)
        truth = F.one_hot(target.clamp(0, classes - 1), classes).movedim(-1, 1)
        metric = DiceMetric(include_background=False, reduction="mean_batch",
                            ignore_empty=True)
        metric(pred, truth)  # per subject and class; a class absent from a subject: skipped
        per_class = torch.nan_to_num(metric.aggregate().reshape(-1), nan=0.0)
        metrics = {f"dice_{k + 1}": float(v) for k, v in enumerate(per_class)}
        metrics["dice"] = float(per_class.mean())
        return metrics
    from monai.metrics import PSNRMetric, SSIMMetric

    t = target.unsqueeze(1)
    o = out.reshape(t.shape)
    mae = float((o - t).abs().mean())
    psnr, ssim = [], []
    for i in range(len(t)):
        value_range = float(t[i].max() - t[i].min()) or 1.0
        psnr.append(float(PSNRMetric(max_val=value_range)(o[i:i + 1], t[i:i + 1]).mean()))
        win = min(7, *t.shape[2:])
        win -= 1 - win % 2
        ssim.append(float(SSIMMetric(spatial_dims=3, data_range=value_range, win_size=win,
                                     kernel_sigma=1.5)(o[i:i + 1], t[i:i + 1]).mean()))
    return {"mae": mae, "psnr": float(np.mean(psnr)), "ssim": float(np.mean(ssim))}
