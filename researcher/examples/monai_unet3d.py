class MonaiUNet3D(nn.Module):
    """MONAI's residual 3D U-Net for lesion segmentation, with GroupNorm (DP-safe: no
    BatchNorm, nothing mixes samples). The site traces it in its sealed tracer and
    validates the graph like any other: convolutions, transposed convolutions, GroupNorm,
    PReLU, addition and concatenation.

    Each input channel is normalised per subject first (scanner gain and offset differ
    between hospitals). Volumes need sides divisible by 4.
    """

    def __init__(self, in_channels=1, out_channels=3, channels=(8, 16, 32)):
        super().__init__()
        self.inorm = nn.GroupNorm(in_channels, in_channels, affine=False)
        self.net = monai.networks.nets.UNet(
            spatial_dims=3, in_channels=in_channels, out_channels=out_channels,
            channels=tuple(channels), strides=(2,) * (len(channels) - 1), num_res_units=1,
            norm=("group", {"num_groups": 1}))

    def forward(self, x):
        return self.net(self.inorm(x))
