"""fcslstm-jax: Fully Convolutional Structured LSTM networks (Gao et al., ISBI 2018) in JAX/Flax.

Arrays are channels-last throughout: images ``[batch, time, H, W, C]``, labels
``[batch, time, H, W]``.
"""

__version__ = "0.2.0"  # the one place (pyproject.toml reads it)
