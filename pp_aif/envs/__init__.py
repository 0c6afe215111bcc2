"""Environments: a batched reset()/step() protocol, a generative process built from arrays, and
a process that changes across blocks of trials."""

from pp_aif.envs.process import (
    BlockedProcess,
    Environment,
    GenerativeProcess,
    accepts_trial,
    check_blocks,
    check_same_sizes,
)

__all__ = [
    "BlockedProcess",
    "Environment",
    "GenerativeProcess",
    "accepts_trial",
    "check_blocks",
    "check_same_sizes",
]
