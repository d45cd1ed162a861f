"""portgrad's benchmark suite: ``python -m bench`` (see bench/README.md).

Imports nothing heavy: ``bench/__main__.py`` sets the thread-count environment before numpy,
torch or jax is loaded.
"""
