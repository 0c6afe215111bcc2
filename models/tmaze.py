"""The T-maze of SPM's ``DEM_demo_MDP_XX`` (Friston et al. 2015, Cogn. Neurosci. 6(4), fig. 2).

Factor 0, location (4): start, left arm, right arm, cue; controls: go to each of them. The arms
are absorbing: once there, every control stays.
Factor 1, context (2): reward-left, reward-right; one control (fixed within a trial).
Modality 0, where (5): start, left, right, cue-says-right, cue-says-left - the cue location
reports the context without error.
Modality 1, what (3): neutral, reward, no reward - an arm pays with probability 0.98 if it
matches the context, 0.02 if not; start and cue are neutral.
C (what) = [0, 2, -4] at every step, flat for where; T = 3 (two moves); policies of depth 2;
the context prior is learned across trials from the concentration d = [2, 2]; the agent starts
at the start. The world is the model itself: the context is drawn 50/50 each trial.
"""

from __future__ import annotations

import dataclasses

import torch

from pp_aif.agent import AgentSettings
from pp_aif.spec import GenerativeModel, construct_policies
from pp_aif.task import Labels, Task

LOCATIONS = ["start", "left", "right", "cue"]
CONTEXTS = ["reward-left", "reward-right"]
WHERE = ["start", "left", "right", "cue-says-right", "cue-says-left"]
WHAT = ["neutral", "reward", "no reward"]


def build(validity: float = 0.98) -> Task:
    dtype = torch.float64
    where = torch.zeros(5, 4, 2, dtype=dtype)
    where[0, 0, :] = 1.0
    where[1, 1, :] = 1.0
    where[2, 2, :] = 1.0
    where[4, 3, 0] = 1.0  # cue location, reward-left: the cue says left
    where[3, 3, 1] = 1.0
    what = torch.zeros(3, 4, 2, dtype=dtype)
    what[0, [0, 3], :] = 1.0
    for arm, context in ((1, 0), (2, 1)):
        what[1, arm, context], what[2, arm, context] = validity, 1 - validity
        what[1, arm, 1 - context], what[2, arm, 1 - context] = 1 - validity, validity
    location = torch.zeros(4, 4, 4, dtype=dtype)
    for previous in range(4):
        for goal in range(4):
            location[previous if previous in (1, 2) else goal, previous, goal] = 1.0
    context = torch.eye(2, dtype=dtype)[:, :, None]
    model = GenerativeModel(
        [where, what],
        [location, context],
        C=[torch.zeros(5, dtype=dtype), torch.tensor([0.0, 2.0, -4.0], dtype=dtype)],
        D=[torch.tensor([1.0, 0, 0, 0], dtype=dtype), torch.tensor([0.5, 0.5], dtype=dtype)],
        pD=[torch.tensor([1.0, 0, 0, 0], dtype=dtype), torch.tensor([2.0, 2.0], dtype=dtype)],
        policies=construct_policies([4, 1], horizon=2),
    )
    labels = Labels(
        factors=["location", "context"],
        states=[LOCATIONS, CONTEXTS],
        controls=[[f"go to {x}" for x in LOCATIONS], ["-"]],
        modalities=["where", "what"],
        outcomes=[WHERE, WHAT],
    ).check(model)
    # reward-right: go to the cue (it says right), then to the right arm (rewarded)
    observations = torch.tensor([[0, 0], [3, 0], [2, 1]])
    actions = torch.tensor([[3, 0], [2, 0]])
    return Task(
        name="tmaze",
        description="SPM's T-maze: a cue reveals which arm is rewarded",
        model=model,
        labels=labels,
        observations=observations,
        actions=actions,
        settings=AgentSettings(),
        num_steps=3,
        reward=(1, 1),
    )


def with_context_bias(task: Task, bias: float) -> Task:
    """The task in a world that puts the reward on the left in ``bias`` of the trials (the
    agent's model, and its 50/50 prior, unchanged): learning the context prior then pays."""
    if not 0.0 <= bias <= 1.0:
        raise ValueError(f"bias: a probability in [0, 1], got {bias}")
    m = task.model
    context = torch.tensor([bias, 1.0 - bias], dtype=m.dtype)
    process = GenerativeModel(m.A, m.B, m.C, [m.D[0], context], m.E, policies=m.policies)
    return dataclasses.replace(task, process=process)


def without_learning(task: Task) -> Task:
    """The task whose agents keep their context prior D (the model without pD)."""
    m = task.model
    model = GenerativeModel(m.A, m.B, m.C, m.D, m.E, policies=m.policies)
    return dataclasses.replace(task, model=model)
