"""A two-factor POMDP for the demo of exact state inference: where am I, and where is the reward?

Factor 0, location (3 states): left, centre, right; controls: go left, stay, go right.
Factor 1, context (2 states): reward-left, reward-right; one control (the context never changes).
Modality 0, where (3 outcomes): the location, seen correctly with probability 0.8.
The agent does not know where it starts (D is uniform over locations and contexts).
Modality 1, cue (3 outcomes): none, says-left, says-right. At the centre a cue reports the context
with validity 0.95; elsewhere the cue is "none".

The example sequence starts on the left, walks to the centre (where the cue says "right"), then
to the right and stays. Filtering learns the context only when the cue is seen; smoothing carries
that knowledge back to the start.
"""

from __future__ import annotations

import torch

from pp_aif.spec import GenerativeModel
from pp_aif.task import Labels, Task

LOCATIONS = ["left", "centre", "right"]
CONTEXTS = ["reward-left", "reward-right"]
MOVES = ["go left", "stay", "go right"]
CUES = ["none", "says-left", "says-right"]


def build(location_accuracy: float = 0.8, cue_validity: float = 0.95) -> Task:
    dtype = torch.float64
    # where: p(o | location), independent of the context
    confusion = torch.full((3, 3), (1 - location_accuracy) / 2, dtype=dtype)
    confusion.fill_diagonal_(location_accuracy)
    A_where = confusion[:, :, None].expand(3, 3, 2).clone()
    # cue: informative at the centre only
    A_cue = torch.zeros(3, 3, 2, dtype=dtype)
    A_cue[0, [0, 2], :] = 1.0
    A_cue[1, 1, 0], A_cue[2, 1, 0] = cue_validity, 1 - cue_validity
    A_cue[1, 1, 1], A_cue[2, 1, 1] = 1 - cue_validity, cue_validity
    # location moves deterministically, clamped at the ends
    B_location = torch.zeros(3, 3, 3, dtype=dtype)
    for previous in range(3):
        for move, step in enumerate((-1, 0, 1)):
            B_location[min(max(previous + step, 0), 2), previous, move] = 1.0
    B_context = torch.eye(2, dtype=dtype)[:, :, None]
    model = GenerativeModel(
        [A_where, A_cue],
        [B_location, B_context],
        D=[torch.full((3,), 1 / 3, dtype=dtype), torch.tensor([0.5, 0.5], dtype=dtype)],
    )
    labels = Labels(
        factors=["location", "context"],
        states=[LOCATIONS, CONTEXTS],
        controls=[MOVES, ["-"]],
        modalities=["where", "cue"],
        outcomes=[LOCATIONS, CUES],
    ).check(model)
    # where, cue
    observations = torch.tensor([[0, 0], [0, 0], [1, 2], [2, 0], [2, 0], [1, 0]])
    moves = torch.tensor(
        [1, 2, 2, 1, 1]
    )  # stay, right, right, stay, stay (the last where is noisy)
    actions = torch.stack([moves, torch.zeros_like(moves)], -1)
    return Task(
        name="two_factor",
        description="location x context; a cue at the centre reveals the context",
        model=model,
        labels=labels,
        observations=observations,
        actions=actions,
    )
