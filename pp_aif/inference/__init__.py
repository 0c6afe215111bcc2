"""State inference: exact (closed form and Pyro enumeration) and variational free energy."""

from pp_aif.inference.free_energy import ChainBeliefs, free_energy, posterior_chain
from pp_aif.inference.states import Beliefs, infer_states

__all__ = ["Beliefs", "infer_states", "ChainBeliefs", "free_energy", "posterior_chain"]
