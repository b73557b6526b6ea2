"""Options of the `flash` backend: ours, and Inductor's passed through.

``torch.compile(model, backend="flash", options=...)`` hands every option to the backend, so
one dictionary carries both kinds: keys that start with ``flash.`` are ours, every other key
is an Inductor config key and is checked the way ``backend="inductor"`` checks it (a named
backend gets no such translation from ``torch.compile``).
"""
from __future__ import annotations

import dataclasses
import typing
from typing import Any, Mapping, Optional

PREFIX = "flash."

COMPILERS = ("inductor", "aot_eager", "eager")


@dataclasses.dataclass(frozen=True)
class FlashOptions:
    # What compiles the graph after our rewrite: Inductor for speed; aot_eager (AOTAutograd,
    # no code generation) to debug a rewrite or to test on slow CPUs; eager runs the rewritten
    # Dynamo graph as is (no AOTAutograd).
    compiler: str = "inductor"
    # Rewrite attention sites at all.  False gives the plain inner compiler on the same graph,
    # which is what an A/B comparison wants.
    rewrite: bool = True
    fp8: bool = False


_TYPES = {f.name: f.type for f in dataclasses.fields(FlashOptions)}


def _check_value(name: str, value: Any) -> None:
    expected = {"str": str, "bool": bool}[_TYPES[name]]
    if not isinstance(value, expected):
        raise TypeError(
            f"fa_inductor option {name!r} must be a {expected.__name__}, got {type(value).__name__}"
        )
    if name == "compiler" and value not in COMPILERS:
        raise ValueError(
            f"fa_inductor option 'compiler' must be one of {', '.join(COMPILERS)}; got {value!r}"
        )
    if name == "fp8" and value:
        # Refuse rather than silently run bf16: a user asking for fp8 should know it is not here.
        raise NotImplementedError(
            "fa_inductor: fp8 attention is not available yet; compile with fp8=False"
        )


def make_flash_options(**values: Any) -> FlashOptions:
    """FlashOptions from keyword values, with a clear error for unknown names or bad values."""
    unknown = sorted(set(values) - set(_TYPES))
    if unknown:
        raise ValueError(
            f"unknown fa_inductor option(s) {', '.join(map(repr, unknown))}; "
            f"known: {', '.join(sorted(_TYPES))}"
        )
    for name, value in values.items():
        _check_value(name, value)
    return FlashOptions(**values)


def _check_inductor_key(key: str, value: Any) -> str:
    from torch._inductor import config

    name = key.replace("-", "_")
    known = config.get_config_copy()
    if name not in known:
        raise ValueError(
            f"unknown option {key!r}: neither an fa_inductor option ('{PREFIX}compiler', "
            f"'{PREFIX}rewrite', '{PREFIX}fp8') nor an Inductor config key"
        )
    expected = config.get_type(name)
    if typing.get_origin(expected) is None and isinstance(expected, type):
        if not isinstance(value, expected):
            raise TypeError(
                f"Inductor option {key!r} must be {expected.__name__}, got {type(value).__name__}"
            )
    return name


def split_options(
    mode: Optional[str], options: Optional[Mapping[str, Any]]
) -> tuple[FlashOptions, dict[str, Any]]:
    """(our options, Inductor config patches) from ``torch.compile``'s mode= and options=."""
    ours: dict[str, Any] = {}
    patches: dict[str, Any] = {}
    if mode and mode != "default":
        from torch._inductor import list_mode_options

        try:
            patches.update(list_mode_options(mode))
        except RuntimeError as e:
            raise ValueError(str(e)) from None
    for key, value in (options or {}).items():
        if not isinstance(key, str):
            raise TypeError(f"option names must be strings, got {key!r}")
        if key.startswith(PREFIX):
            ours[key[len(PREFIX):]] = value
        else:
            patches[_check_inductor_key(key, value)] = value
    return make_flash_options(**ours), patches


def to_compile_options(flash: FlashOptions, inductor: Optional[Mapping[str, Any]] = None) -> dict:
    """The ``options=`` dictionary that makes ``torch.compile(backend="flash")`` use ``flash``."""
    out = {PREFIX + f.name: getattr(flash, f.name) for f in dataclasses.fields(FlashOptions)}
    out.update(inductor or {})
    return out
