"""Deterministic synthetic benchmarks, each written to disk in a real dataset's format.

:data:`GENERATORS` registers each benchmark once: ``trustmed data synth <name>`` has one sub-command
per entry, and :func:`generate` writes one from Python. Adding a benchmark is one entry: a function
``write(out_dir, *, seed=0, **knobs) -> Path`` whose keyword-only parameters, typed and with their
defaults, are its knobs (or, with ``config``, a :class:`~trustmed.config.Config` that holds them).
The knobs are validated before anything is written; the same knobs and seed give the same files.

>>> sorted(GENERATORS)
['cxr', 'digits', 'skin']
>>> GENERATORS["digits"].knobs()().spurious_correlation
0.95
"""

from __future__ import annotations

import inspect
import typing
from pathlib import Path
from typing import Any, NamedTuple

from pydantic import ValidationError, create_model

from trustmed.config import Config, explain_error
from trustmed.errors import InputError
from trustmed.utils import import_object

__all__ = ["GENERATORS", "Generator", "generate"]


class Generator(NamedTuple):
    """A registered synthetic benchmark."""

    write: str  # "module:function": ``write(out_dir, *, seed=0, **knobs) -> Path``
    summary: str  # one line: what it writes and in which format (the command's help)
    out: str  # default output folder
    config: str | None = None  # "module:Config" of the knobs; default: the writer's keyword-only parameters

    def writer(self) -> Any:
        """The writing function."""
        return import_object(self.write)

    def knobs(self) -> type[Config]:
        """The config class of the knobs (``seed`` included), with their defaults."""
        if self.config is not None:
            return import_object(self.config)
        write = self.writer()
        hints = typing.get_type_hints(write)
        fields = {
            name: (hints.get(name, Any), ... if param.default is inspect.Parameter.empty else param.default)
            for name, param in inspect.signature(write).parameters.items()
            if param.kind is inspect.Parameter.KEYWORD_ONLY
        }
        return create_model(f"{write.__name__}_knobs", __base__=Config, **fields)

    def run(self, out_dir: str | Path, **knobs: Any) -> Path:
        """Validate ``knobs`` (an unknown or bad one is an :class:`~trustmed.errors.InputError`); write."""
        config = self.knobs()
        try:
            values = config.model_validate(knobs)
        except ValidationError as err:
            raise InputError(explain_error(config, err, "of a synthetic benchmark")) from None
        self.writer()(Path(out_dir), **values.model_dump())
        return Path(out_dir)


GENERATORS: dict[str, Generator] = {
    "skin": Generator(
        "trustmed.data.synth.skin:generate_synthskin",
        "SynthSkin: biased skin-lesion images in the Fitzpatrick17k format (see docs/data.md).",
        "runs/synthskin",
        config="trustmed.data.synth.skin:SynthSkinConfig",
    ),
    "digits": Generator(
        "trustmed.data.synth.digits:make_colored_digits",
        "ColoredDigits: real handwritten digits with a spurious background colour, Waterbirds format.",
        "runs/digits",
    ),
    "cxr": Generator(
        "trustmed.data.synth.cxr:generate_synthcxr",
        "SynthCXR: chest phantoms with findings, report sentences and boxes (MS-CXR or VinDr format).",
        "runs/synthcxr",
    ),
}


def generate(name: str, out_dir: str | Path, **knobs: Any) -> Path:
    """Write synthetic benchmark ``name`` (a :data:`GENERATORS` key) into ``out_dir``; return the folder.

    >>> import tempfile
    >>> out = generate("cxr", tempfile.mkdtemp(), n_images=3, image_size=32)
    >>> sorted(p.name for p in out.iterdir())[:2]
    ['MS_CXR_Local_Alignment_v1.1.0.csv', 'anatomy']
    """
    if name not in GENERATORS:
        raise InputError(
            f"unknown synthetic benchmark {name!r}; choose one of {', '.join(sorted(GENERATORS))}"
        )
    return GENERATORS[name].run(out_dir, **knobs)
