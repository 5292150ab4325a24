class SmallUNet3D(nn.Module):
    """A two-level 3D U-Net for segmentation (one score per class and voxel) or synthesis
    (out_channels=1: one volume); GroupNorm only (DP-safe, no BatchNorm).

    Each input channel is normalised per subject (scanner gain and offset differ between
    hospitals); the encoder halves the grid once, the decoder brings it back with a
    transposed convolution and joins the skip connection. Volumes need even sides.
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
        self.up = nn.ConvTranspose3d(2 * width, width, kernel_size=2, stride=2)
        self.dec = nn.Conv3d(2 * width, width, kernel_size=3, padding=1)
        self.norm4 = nn.GroupNorm(4, width)
        self.head = nn.Conv3d(width, out_channels, kernel_size=1)

    def forward(self, x):
        x = self.inorm(x)
        skip = F.silu(self.norm1(self.enc1(x)))
        h = F.silu(self.norm2(self.down(skip)))
        h = F.silu(self.norm3(self.mid(h)))
        h = self.up(h)
        h = F.silu(self.norm4(self.dec(torch.cat([h, skip], dim=1))))
        return self.head(h)
