"""pp_aif: active inference on discrete state spaces, formulated as Pyro probabilistic programs.

The curated public API. Layout conventions (SPM/pymdp): ``A[m]`` (O_m, S_1..S_F),
``B[f]`` (S_f, S_f, U_f) indexed ``[s_next, s_prev, u]``, ``C[m]`` (O_m,) or (O_m, T),
``D[f]`` (S_f,), ``E`` (P,).
"""

from pp_aif.comparison import bms, compare, log_evidence
from pp_aif.data import BehaviourData
from pp_aif.errors import DataError, ModelError
from pp_aif.fitting import fit
from pp_aif.inference import Beliefs, ChainBeliefs, free_energy, infer_states, posterior_chain
from pp_aif.learning import learn
from pp_aif.planning import PolicyScores, expected_free_energy
from pp_aif.simulation import simulate
from pp_aif.spec import NORMALISATION_TOLERANCE, GenerativeModel, construct_policies
from pp_aif.task import Task, load_task

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
