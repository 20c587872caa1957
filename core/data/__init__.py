"""Data sets and images: discovery, class order, decoding, and the pixels a model is fed."""
