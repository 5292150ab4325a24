class SmallCNN3D(nn.Module):
    """A small 3D CNN for paired MRI/PET volumes; GroupNorm, no BatchNorm (DP-safe)."""

    def __init__(self, in_channels=2, width=8):
        super().__init__()
        self.conv1 = nn.Conv3d(in_channels, width, kernel_size=3, padding=1)
        self.norm1 = nn.GroupNorm(4, width)
        self.conv2 = nn.Conv3d(width, 2 * width, kernel_size=3, padding=1)
        self.norm2 = nn.GroupNorm(4, 2 * width)
        self.head = nn.Linear(2 * width, 1)

    def forward(self, x):
        x = F.max_pool3d(F.relu(self.norm1(self.conv1(x))), 2)
        x = F.max_pool3d(F.relu(self.norm2(self.conv2(x))), 2)
        x = x.mean(dim=(2, 3, 4))
        return self.head(x)
