"""Networks (B, D, S, C) and the registry of named weights.

Kept free of torch imports so the CLI can name the default model without loading torch.
"""

#: the registry name `defocus` uses when neither --model nor --weights is given
DEFAULT_MODEL = "dmenet-lite"
