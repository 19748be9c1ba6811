"""Export targets behind one registry: standalone source for numpy, torch and jax."""

from ..errors import EinderivError

__all__ = ["to_source", "TARGETS"]

TARGETS = ("numpy", "torch", "jax")


def to_source(program, target="numpy", name="derivative", shapes=None) -> str:
    from .source import generate
    if target not in TARGETS:
        raise EinderivError(f"unknown export target '{target}'; the targets are: {', '.join(TARGETS)}")
    return generate(program, target, name, shapes)
