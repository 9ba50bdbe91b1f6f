"""MIL aggregators behind one interface: `build(name, in_dim, n_classes)` -> model whose
`model(features [N, D] or [1, N, D], coords=None)` gives a `MILOutput`; `from_reference` loads
state dicts trained with the upstream CLAM, TransMIL and GLTrans code."""

from maga_core.mil import abmil, clam, gltrans, transmil  # noqa: F401  (register the models)
from maga_core.mil.base import MODELS, MILOutput, build
from maga_core.mil.reference import from_reference

__all__ = ["MODELS", "MILOutput", "build", "from_reference"]
