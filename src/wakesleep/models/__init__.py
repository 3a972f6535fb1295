"""Generative models paired with recognition models (proposals)."""

from wakesleep.models.helmholtz import HelmholtzMachine

__all__ = ["HelmholtzMachine"]
