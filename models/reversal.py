"""Reversal learning: a two-armed bandit whose better arm switches after a given trial.

Factor 0, position (3): start, left arm, right arm; controls: pull left, pull right.
Modality 0, where (3): the position, seen without error.
Modality 1, reward (3): neutral, reward, no reward - the start is neutral. In the world, the
left arm pays with probability ``p`` and the right with ``1 - p`` in trials 0 .. reversal - 1;
from trial ``reversal`` on the two are swapped (``Task.process``: one process per block).
The agent does not know the probabilities: it learns them as Dirichlet counts pA (1 and 1 of
reward and no reward per arm to start with), after every trial, forgetting a share of its
counts between trials (``AgentSettings.forgetting``), so old evidence fades and it can follow
the switch. Novelty (the expected information gain about A) draws it to an arm it has not
tried lately; preferences (C = [0, 2, -2]) to the arm that pays. T = 2 (one pull a trial).
"""

from __future__ import annotations

import torch

from pp_aif.agent import AgentSettings
from pp_aif.spec import GenerativeModel, construct_policies
from pp_aif.task import Labels, Task

ARMS = ["left", "right"]


def build(reversal: int = 16, p: float = 0.8, forgetting: float = 0.2) -> Task:
    """The task; ``reversal`` is the first trial (0-based) of the swapped world."""
    if isinstance(reversal, bool) or not isinstance(reversal, int) or reversal < 1:
        raise ValueError(
            f"reversal: the first trial after the switch, an integer >= 1; got {reversal!r}"
        )
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p: a probability in [0, 1], got {p}")
    dtype = torch.float64
    pull = torch.zeros(3, 3, 2, dtype=dtype)  # [next, previous, control]
    pull[1, :, 0] = 1.0
    pull[2, :, 1] = 1.0
    where = torch.eye(3, dtype=dtype)

    def rewards(left: float, right: float) -> torch.Tensor:
        """p(reward outcome | position): neutral at the start, the arms pay as given."""
        return torch.tensor(
            [[1.0, 0.0, 0.0], [0.0, left, right], [0.0, 1 - left, 1 - right]], dtype=dtype
        )

    counts = rewards(0.5, 0.5) * 2  # pA: 1 reward and 1 no reward per arm; the start is known
    common = {
        "C": [torch.zeros(3, dtype=dtype), torch.tensor([0.0, 2.0, -2.0], dtype=dtype)],
        "D": [torch.tensor([1.0, 0.0, 0.0], dtype=dtype)],
        "policies": construct_policies([2], horizon=1),
    }
    model = GenerativeModel([where, rewards(0.5, 0.5)], [pull], pA=[100 * where, counts], **common)
    before = GenerativeModel([where, rewards(p, 1 - p)], [pull], **common)
    after = GenerativeModel([where, rewards(1 - p, p)], [pull], **common)
    labels = Labels(
        factors=["arm"],
        states=[["start", *ARMS]],
        controls=[[f"pull {arm}" for arm in ARMS]],
        modalities=["where", "reward"],
        outcomes=[["start", *ARMS], ["neutral", "reward", "no reward"]],
    )
    return Task(
        name="reversal",
        description=f"two arms paying {p:g} and {1 - p:g}, swapped from trial {reversal}",
        model=model,
        labels=labels,
        observations=torch.tensor([[0, 0], [1, 1]]),  # pull left, rewarded
        actions=torch.tensor([[0]]),
        process={0: before, reversal: after},
        settings=AgentSettings(forgetting=forgetting),
        num_steps=2,
        reward=(1, 1),
    )
