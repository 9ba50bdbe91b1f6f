"""Encoders behind one interface: `build(name, weights=None) -> Encoder` with `.taps`, `.dim`, `.spec`,
`.transform`; `table()` lists the registry."""

from maga_core.encoders.base import Encoder, Normalize
from maga_core.encoders.registry import REGISTRY, EncoderSpec, build, spec, table, weights_dir

__all__ = ["REGISTRY", "Encoder", "EncoderSpec", "Normalize", "build", "spec", "table", "weights_dir"]
