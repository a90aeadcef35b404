"""Shipped network weights (fp16 state dicts + JSON metadata); see README.md here."""
