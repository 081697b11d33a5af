"""LSGM: score-based generative modeling in latent space -- a reproducibility harness."""

__version__ = "0.1.0"
