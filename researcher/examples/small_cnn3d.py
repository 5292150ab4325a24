class SmallCNN3D(nn.Module):
    """A small 3D CNN for paired MRI/PET volumes; GroupNorm only (DP-safe, no BatchNorm).

    Each input channel is normalised per subject first (scanner gain and offset
    differ between hospitals), then two strided conv blocks and a linear head
    over a coarse 3x3x3 map, which keeps where in the brain a feature was seen.
    """

    def __init__(self, in_channels=2, width=8):
        super().__init__()
        self.inorm = nn.GroupNorm(in_channels, in_channels, affine=False)
        self.conv1 = nn.Conv3d(in_channels, width, kernel_size=3, stride=2, padding=1)
        self.norm1 = nn.GroupNorm(4, width)
        self.conv2 = nn.Conv3d(width, 2 * width, kernel_size=3, stride=2, padding=1)
        self.norm2 = nn.GroupNorm(4, 2 * width)
        self.pool = nn.AdaptiveAvgPool3d(3)
        self.head = nn.Linear(2 * width * 27, 1)

    def forward(self, x):
        x = self.inorm(x)
        x = F.relu(self.norm1(self.conv1(x)))
        x = F.relu(self.norm2(self.conv2(x)))
        x = self.pool(x).flatten(1)
        return self.head(x)
