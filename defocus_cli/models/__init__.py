"""Networks (B, D, S, C) and the registry of named weights.

Kept free of torch imports so the CLI can name the default model without loading torch.
"""

#: the registry name `defocus` uses when neither --model nor --weights is given: the estimator
#: that measured best on the validation splits of dfd-real and the synthetic set together
#: (weights/README.md)
DEFAULT_MODEL = "fused"
#: estimators that combine weights files: name -> (edge weights, fusion). "edge" is paper 002's
#: edge-based map alone; "fused" blends it with network B's map (pipelines.edge_estimate). Both
#: use network B (BASE_MODEL) for photos with too few edges.
COMPOSITE_ESTIMATORS = {"edge": ("edge", "edge"), "fused": ("edge", "blend")}
BASE_MODEL = "dmenet-lite"
