class PatchDiscriminator3D(nn.Module):
    """A small 3D PatchGAN discriminator (Isola et al. 2017, in 3D): it sees the MRI and a
    PET (the subject's real one or the generator's) stacked as channels and gives one logit
    per patch, a map a quarter of the grid on each side. GroupNorm only (DP-safe), and only
    the layers the strictest demo hospital's policy allows (Conv3d, GroupNorm, relu).

    Each site keeps its own copy of this network between rounds; it is trained there with
    DP-SGD and never released.
    """

    def __init__(self, in_channels=2, width=8):
        super().__init__()
        self.inorm = nn.GroupNorm(in_channels, in_channels, affine=False)
        self.conv1 = nn.Conv3d(in_channels, width, kernel_size=3, stride=2, padding=1)
        self.norm1 = nn.GroupNorm(4, width)
        self.conv2 = nn.Conv3d(width, 2 * width, kernel_size=3, stride=2, padding=1)
        self.norm2 = nn.GroupNorm(4, 2 * width)
        self.head = nn.Conv3d(2 * width, 1, kernel_size=3, padding=1)

    def forward(self, x):
        h = F.relu(self.norm1(self.conv1(self.inorm(x))))
        h = F.relu(self.norm2(self.conv2(h)))
        return self.head(h)
