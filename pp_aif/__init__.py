"""pp_aif: active inference on discrete state spaces, formulated as Pyro probabilistic programs.

The curated public API. Layout conventions (SPM/pymdp): ``A[m]`` (O_m, S_1..S_F),
``B[f]`` (S_f, S_f, U_f) indexed ``[s_next, s_prev, u]``, ``C[m]`` (O_m,) or (O_m, T),
``D[f]`` (S_f,), ``E`` (P,).
"""

import importlib

#: each public name and the module that defines it, imported on first use (PEP 562), so that
#: ``import pp_aif`` (and ``pp-aif --help``) does not import torch
_EXPORTS = {
    "bms": "pp_aif.comparison",
    "compare": "pp_aif.comparison",
    "log_evidence": "pp_aif.comparison",
    "BehaviourData": "pp_aif.data",
    "DataError": "pp_aif.errors",
    "ModelError": "pp_aif.errors",
    "fit": "pp_aif.fitting",
    "Beliefs": "pp_aif.inference",
    "ChainBeliefs": "pp_aif.inference",
    "free_energy": "pp_aif.inference",
    "infer_states": "pp_aif.inference",
    "posterior_chain": "pp_aif.inference",
    "learn": "pp_aif.learning",
    "PolicyScores": "pp_aif.planning",
    "expected_free_energy": "pp_aif.planning",
    "simulate": "pp_aif.simulation",
    "NORMALISATION_TOLERANCE": "pp_aif.spec",
    "GenerativeModel": "pp_aif.spec",
    "construct_policies": "pp_aif.spec",
    "Task": "pp_aif.task",
    "load_task": "pp_aif.task",
}


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:  # a subpackage or module (``pp_aif.errors``, ``pp_aif.fitting``, ...)
        try:
            return importlib.import_module(f"pp_aif.{name}")
        except ModuleNotFoundError as error:
            if error.name != f"pp_aif.{name}":
                raise
            raise AttributeError(f"module 'pp_aif' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted({*globals(), *_EXPORTS})


__version__ = "0.1.0"

__all__ = [
    "GenerativeModel",
    "ModelError",
    "DataError",
    "NORMALISATION_TOLERANCE",
    "construct_policies",
    "infer_states",
    "Beliefs",
    "ChainBeliefs",
    "free_energy",
    "posterior_chain",
    "expected_free_energy",
    "PolicyScores",
    "learn",
    "load_task",
    "Task",
    "simulate",
    "BehaviourData",
    "fit",
    "compare",
    "bms",
    "log_evidence",
]
