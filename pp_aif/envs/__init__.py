"""Environments: a batched reset()/step() protocol and a generative process built from arrays."""

from pp_aif.envs.process import Environment, GenerativeProcess

__all__ = ["Environment", "GenerativeProcess"]
