"""Functional drop-ins, as torch.nn.functional: `scaled_dot_product_attention`."""
from .attention import scaled_dot_product_attention

__all__ = ["scaled_dot_product_attention"]
