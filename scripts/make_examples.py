"""Generate the example photos in examples/ (the project's own renders; no third-party pixels).

    python scripts/make_examples.py [--out examples]

Each example is a procedural scene (built-in textures, exact depth) rendered with the same
layered thin-lens renderer as `defocus synth`, focused on its nearest object (`scene`: a sharp subject before a
blurred background, as in a portrait) or inside the scene (`scene-wide`: blur on both sides). Beside each photo it writes the ground-truth
sigma map (NAME.truth.png: 16-bit, sigma x 1000, read with defocus_cli.io.images.load_map) so anyone can check an estimate against it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from defocus_cli.io.images import save_png16, write_image  # noqa: E402
from defocus_cli.ops.layered import layers_from_signed_sigma, render_layers, signed_sigma_from_depth  # noqa: E402
from defocus_cli.pipelines.synth import make_procedural_scene  # noqa: E402

#: name -> (seed, width, height, largest sigma in px (within the network's range at the default
#: working size: 7 px / scale), focus depth percentile: 1 = the nearest object is sharp and the
#: blur grows with depth, as in a portrait; 30 = objects on both sides of the focus plane)
EXAMPLES = {"scene": (31, 1200, 800, 6.0, 1.0), "scene-wide": (11, 1600, 900, 8.0, 30.0)}


def render(seed: int, width: int, height: int, sigma_max: float, focus_percentile: float):
    rng = np.random.default_rng(seed)
    rgb, depth, info = make_procedural_scene(rng, width, height, None)
    focus = float(np.percentile(depth, focus_percentile))
    # Eq. 1 solved for alpha so that the largest blur in the scene is sigma_max
    alpha = 4.0 * sigma_max / float(np.max(np.abs(depth - focus) / depth))
    signed = signed_sigma_from_depth(depth, focus, alpha)
    out = render_layers(rgb, layers_from_signed_sigma(signed))
    return out, np.abs(signed), {"focus_distance": focus, "alpha_px": alpha, "seed": seed, **info}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("examples"))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for name, (seed, w, h, smax, pct) in EXAMPLES.items():
        photo, sigma, info = render(seed, w, h, smax, pct)
        write_image(args.out / f"{name}.jpg", photo, quality=92)
        save_png16(args.out / f"{name}.truth.png", sigma)
        (args.out / f"{name}.truth.json").write_text(json.dumps(
            {"units": "ground-truth Gaussian sigma in px of the photo; NAME.truth.png holds sigma x 1000", **info}, indent=2) + "\n")
        print(f"{name}: {w}x{h}, sigma 0..{sigma.max():.2f} px (mean {sigma.mean():.2f})")


if __name__ == "__main__":
    main()
