class SmallUNet3D(nn.Module):
    """A two-level 3D U-Net for segmentation (one score per class and voxel) or synthesis
    (out_channels=1: one volume); GroupNorm only (DP-safe, no BatchNorm).

    Each input channel is normalised per subject (scanner gain and offset differ between
    hospitals); the encoder halves the grid once, the decoder brings it back (nearest-
    neighbour upsampling written with cat and reshape, then a convolution) and joins the
    skip connection. Only Conv3d, GroupNorm, relu and cat: the layers the strictest demo
    hospital's policy allows. Volumes need even sides.
    """

    def __init__(self, in_channels=1, out_channels=3, width=8):
        super().__init__()
        self.inorm = nn.GroupNorm(in_channels, in_channels, affine=False)
        self.enc1 = nn.Conv3d(in_channels, width, kernel_size=3, padding=1)
        self.norm1 = nn.GroupNorm(4, width)
        self.down = nn.Conv3d(width, 2 * width, kernel_size=3, stride=2, padding=1)
        self.norm2 = nn.GroupNorm(4, 2 * width)
        self.mid = nn.Conv3d(2 * width, 2 * width, kernel_size=3, padding=1)
        self.norm3 = nn.GroupNorm(4, 2 * width)
        self.up = nn.Conv3d(2 * width, width, kernel_size=3, padding=1)
        self.dec = nn.Conv3d(2 * width, width, kernel_size=3, padding=1)
        self.norm4 = nn.GroupNorm(4, width)
        self.head = nn.Conv3d(width, out_channels, kernel_size=1)

    def upsample2(self, h):
        """Nearest-neighbour upsampling by 2 along each spatial axis: each voxel twice
        (cat of two copies on a new last axis, read back as one axis twice as long)."""
        for axis in (4, 3, 2):
            h = h.unsqueeze(axis + 1)
            h = torch.cat([h, h], dim=axis + 1)
            shape = list(h.shape)
            h = h.reshape(shape[:axis] + [2 * shape[axis]] + shape[axis + 2:])
        return h

    def forward(self, x):
        x = self.inorm(x)
        skip = F.relu(self.norm1(self.enc1(x)))
        h = F.relu(self.norm2(self.down(skip)))
        h = F.relu(self.norm3(self.mid(h)))
        h = self.up(self.upsample2(h))
        h = F.relu(self.norm4(self.dec(torch.cat([h, skip], dim=1))))
        return self.head(h)
