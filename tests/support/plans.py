"""Small plans and the test policy (a tiny GroupNorm CNN on 2-channel volumes)."""

from __future__ import annotations

from pathlib import Path

#: The policy every integration site starts with.
TEST_POLICY = Path(__file__).resolve().parents[1] / "policies" / "integration.yaml"


def small_model_source() -> str:
    return '''
class Tiny(nn.Module):
    def __init__(self, in_channels=2):
        super().__init__()
        self.conv = nn.Conv3d(in_channels, 4, 3, stride=2, padding=1)
        self.norm = nn.GroupNorm(2, 4)
        self.head = nn.Linear(4, 1)

    def forward(self, x):
        x = F.relu(self.norm(self.conv(x)))
        return self.head(x.mean(dim=(2, 3, 4)))
'''


def make_plan(name: str = "tiny", rounds: int = 2, source: str | None = None,
              class_name: str = "Tiny", researcher: str = "", version: int = 1,
              epsilon: float = 8.0, dataset: str = "brain-mri-pet"):
    from policies.contract.plan import TrainingPlan

    return TrainingPlan.model_validate({
        "name": name, "version": version, "dataset": dataset, "researcher": researcher,
        "model": {"source": source or small_model_source(), "class_name": class_name,
                  "kwargs": {"in_channels": 2}},
        "inputs": ["mri", "pet"], "loss": "bce_with_logits", "optimizer": "sgd",
        "learning_rate": 0.1, "batch_size": 8, "local_epochs": 1, "rounds": rounds,
        "dp": {"target_epsilon": epsilon, "delta": 1e-5, "max_grad_norm": 1.0},
    })
