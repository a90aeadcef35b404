"""defocus: per-pixel defocus maps from a single photo (DMENet, Lee et al. CVPR 2019)."""

__version__ = "0.1.0"
