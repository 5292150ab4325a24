"""The MONAI networks a plan's model source may build (`monai.networks.nets.NAME`).

A name here is only permission to call it in the sealed tracer: what it builds must still
trace into a graph the site validates (operators, parameters, memory), so a network that
uses a refused operator (BatchNorm, attention's softmax over samples, ...) is refused
there. Holds names only; must never import torch or MONAI.
"""

from __future__ import annotations

MONAI_NETS = frozenset({"UNet", "BasicUNet", "BasicUnet", "DynUNet", "SegResNet",
                        "AttentionUnet", "VNet", "AutoEncoder", "Discriminator",
                        "PatchDiscriminator"})
