"""A k-armed bandit with given reward probabilities, learned by the agent across trials.

Factor 0, position (k + 1): start, arm 1 .. arm k; controls: pull arm 1 .. arm k (every trial
pulls an arm: staying at the start is no option).
Modality 0, where (k + 1): the position, seen without error.
Modality 1, reward (3): neutral, reward, no reward - the start is neutral; arm i pays with the
given probability p_i in the world (the generative process).
The agent does not know the p_i: its A for the arms is 0.5 / 0.5 from Dirichlet counts
pA = [0, 1, 1] per arm, which it updates after every trial; novelty (the expected information gain
about A) draws it to arms it knows little about, preferences (C = [0, 2, -2]) to arms that pay.
T = 2 (one pull a trial), policies of depth 1.
"""

from __future__ import annotations

import torch

from pp_aif.agent import AgentSettings
from pp_aif.spec import GenerativeModel, construct_policies
from pp_aif.task import Labels, Task


def build(reward_probabilities: tuple[float, ...] = (0.8, 0.5, 0.2)) -> Task:
    dtype = torch.float64
    k = len(reward_probabilities)
    if k < 1 or not all(0 <= p <= 1 for p in reward_probabilities):
        raise ValueError(f"reward_probabilities: {reward_probabilities} must lie in [0, 1]")
    S = k + 1
    position = torch.zeros(S, S, k, dtype=dtype)
    for arm in range(k):
        position[arm + 1, :, arm] = 1.0
    where = torch.eye(S, dtype=dtype)

    def rewards(probabilities):
        array = torch.zeros(3, S, dtype=dtype)
        array[0, 0] = 1.0
        for arm, p in enumerate(probabilities, start=1):
            array[1, arm], array[2, arm] = p, 1 - p
        return array

    counts = torch.zeros(3, S, dtype=dtype)
    counts[0, 0] = 1.0
    counts[1:, 1:] = 1.0
    common = {
        "C": [torch.zeros(S, dtype=dtype), torch.tensor([0.0, 2.0, -2.0], dtype=dtype)],
        "D": [torch.eye(S, dtype=dtype)[0]],
        "policies": construct_policies([k], horizon=1),
    }
    model = GenerativeModel(
        [where, counts / counts.sum(0)], [position], pA=[100 * where, counts], **common
    )
    process = GenerativeModel([where, rewards(reward_probabilities)], [position], **common)
    arms = [f"arm {i + 1}" for i in range(k)]
    labels = Labels(
        factors=["position"],
        states=[["start", *arms]],
        controls=[[f"pull {x}" for x in arms]],
        modalities=["where", "reward"],
        outcomes=[["start", *arms], ["neutral", "reward", "no reward"]],
    ).check(model)
    return Task(
        name="bandit",
        description=f"{k} arms paying with probabilities {tuple(reward_probabilities)}, "
        "unknown to the agent",
        model=model,
        labels=labels,
        observations=torch.tensor([[0, 0], [1, 1]]),
        actions=torch.tensor([[0]]),
        process=process,
        settings=AgentSettings(),
        num_steps=2,
        reward=(1, 1),
    )
