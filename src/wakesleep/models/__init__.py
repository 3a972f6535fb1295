"""Generative models paired with recognition models (proposals), and the protocol ALWS trains."""

from wakesleep.models.helmholtz import HelmholtzMachine
from wakesleep.models.protocol import ALWSModel, ExponentialFamilyModel

__all__ = ["ALWSModel", "ExponentialFamilyModel", "HelmholtzMachine"]
