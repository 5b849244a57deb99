"""normlab: the normalization study (BatchNorm, GroupNorm, LayerNorm) as software."""

__version__ = "0.1.0"
