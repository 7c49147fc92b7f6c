import jax

# Strict numpy promotion, as in equinox's conftest: silent broadcasting bugs become errors.
jax.config.update("jax_numpy_rank_promotion", "raise")
