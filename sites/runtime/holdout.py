"""Which subjects of a published cohort train and which the privacy audit holds out.

The split is fixed at publish (`site publish`, from the policy's
`audit.holdout_fraction`) and recorded as a seed and a fraction in the governance
database; `datasets.cohort.holdout_split` recomputes it from them. Training only ever
sees the training part; the held-out subjects are the audit's non-members.

Must never hand the held-out part to anything but the data owner's audit.
"""

from __future__ import annotations

from datasets.cohort import Cohort, holdout_split
from policies.contract.errors import MedsyftError


class SplitMismatch(MedsyftError, RuntimeError):
    """The private asset does not split into the sizes recorded at publish."""


def parts(dataset: dict, cohort: Cohort) -> tuple[Cohort, Cohort | None]:
    """(training part, held-out part or None) of the published `dataset`'s private cohort.

    Raises:
        SplitMismatch: the training part's size differs from the recorded N (the asset
            is not the one published).
    """
    seed, fraction = dataset.get("holdout_seed"), dataset.get("holdout_fraction")
    if seed is None or not fraction:
        training, held = cohort, None
    else:
        train_idx, held_idx = holdout_split(cohort.labels, float(fraction), int(seed))
        training, held = cohort.subset(train_idx), cohort.subset(held_idx)
    if training.n != int(dataset["n"]):
        raise SplitMismatch(f"dataset {dataset['name']}: the private asset's training part "
                            f"has a size other than recorded at publish")
    return training, held
