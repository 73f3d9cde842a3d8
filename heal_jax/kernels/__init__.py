"""Pallas kernels (GPU through the Triton lowering; interpret mode on CPU for tests).

- `flash_attention`: causal, segment-masked, grouped-query flash attention with a
  recomputing backward pass (`flash_attention.flash_attention` is the entry point).
"""
