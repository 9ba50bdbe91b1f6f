"""Encoders behind one interface: `build(name, weights=None) -> Encoder` with `.taps`, `.dim`, `.spec`,
`.transform`; `table()` lists the registry."""

from maga_core.encoders.base import Encoder, Normalize
from maga_core.encoders.registry import REGISTRY, EncoderSpec, build, spec, table, weights_dir
from maga_core.encoders import mobilenet as _mobilenet  # noqa: E402,F401  (registers the G2L students)

__all__ = ["REGISTRY", "Encoder", "EncoderSpec", "Normalize", "build", "spec", "table", "weights_dir"]
