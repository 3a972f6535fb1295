"""Models: the model contract every estimator, the trainer and evaluation use, the Helmholtz
machines, and :func:`from_distributions`, which builds a model from ``torch.distributions`` objects.

The contract (shapes, optional members, the checks) is documented once, in
:mod:`wakesleep.models.contract`; ``docs/your-own-model.md`` walks through four models.
"""

from wakesleep.models.contract import (
    ExponentialFamilyModel,
    LatentVariableModel,
    ModelContractError,
    ModelShapeError,
    ProposalModel,
    check_model,
    check_shapes,
    hybrid_propose,
)
from wakesleep.models.distributions import DistributionsModel, from_distributions
from wakesleep.models.helmholtz import HelmholtzMachine
from wakesleep.models.probes import ModelCheckError, check_learning

__all__ = [
    "DistributionsModel",
    "ExponentialFamilyModel",
    "HelmholtzMachine",
    "LatentVariableModel",
    "ModelCheckError",
    "ModelContractError",
    "ModelShapeError",
    "ProposalModel",
    "check_learning",
    "check_model",
    "check_shapes",
    "from_distributions",
    "hybrid_propose",
]
