"""The researcher's side of medsyft: plans, federation client, aggregation, reports.

`TrainingPlan` and `Federation` are the public API. Importing this package does
not import syft (that costs seconds); the client connects lazily.
"""

from policies.contract.plan import DPSpec, ModelSpec, TrainingPlan, load_plan

__all__ = ["DPSpec", "ModelSpec", "TrainingPlan", "load_plan", "Federation"]


def __getattr__(name: str):  # lazy: Federation pulls in syft only when used
    if name == "Federation":
        from researcher.federation import Federation

        return Federation
    raise AttributeError(name)
