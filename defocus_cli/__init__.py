"""defocus: per-pixel defocus maps from a single photo (DMENet, Lee et al. CVPR 2019).

The library, without the command line (importing it loads neither typer nor rich):

    from defocus_cli import load_estimator, read_image

    est = load_estimator()                        # shipped weights; device, precision chosen once
    sigma = est.estimate(read_image("photo.jpg").pixels).sigma   # (H, W) float32 sigma, px

- ``defocus_cli.estimator``: Estimator, load_estimator, LazyEstimator
- ``defocus_cli.maps``: where a map comes from (given or estimated) and its policies
- ``defocus_cli.photos``: one photo on disk in, output files out (what each command does)
- ``defocus_cli.pipelines``: arrays + frozen configs in, results out
- ``defocus_cli.models``, ``defocus_cli.ops``, ``defocus_cli.io``: networks, image operations, files

Names are imported on first use, so ``import defocus_cli`` stays cheap.
"""

__version__ = "0.1.0"

_LAZY = {
    "Estimator": "defocus_cli.estimator",
    "LazyEstimator": "defocus_cli.estimator",
    "load_estimator": "defocus_cli.estimator",
    "obtain_map": "defocus_cli.maps",
    "read_image": "defocus_cli.io.images",
    "load_map": "defocus_cli.io.images",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'defocus_cli' has no attribute {name!r}")
