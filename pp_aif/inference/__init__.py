"""State inference: exact (closed form and Pyro enumeration)."""

from pp_aif.inference.states import Beliefs, infer_states

__all__ = ["Beliefs", "infer_states"]
