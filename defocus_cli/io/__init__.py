"""Image, map and depth file I/O."""
