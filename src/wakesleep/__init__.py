"""wakesleep: maximum-likelihood learning of latent-variable models by the wake-sleep family."""

__version__ = "0.1.0"
