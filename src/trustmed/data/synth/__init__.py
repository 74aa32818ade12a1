"""Deterministic synthetic benchmarks, each written to disk in a real dataset's format.

``GENERATORS`` maps a benchmark name to ``"module:function"``; each function is
``generate(out_dir, *, seed=0, **knobs) -> Path``. Adding a benchmark is one line there.
"""

__all__ = ["GENERATORS"]

GENERATORS: dict[str, str] = {
    "skin": "trustmed.data.synth.skin:generate_synthskin",
    "digits": "trustmed.data.synth.digits:make_colored_digits",
    "cxr": "trustmed.data.synth.cxr:make_synthcxr",
    "cxr_vindr": "trustmed.data.synth.cxr:make_synthcxr_vindr",
}
