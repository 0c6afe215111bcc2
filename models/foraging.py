"""The seed document's 2x2 foraging grid, done right.

Factor 0, location (4 cells of a 2x2 grid: top-left, top-right, bottom-left, bottom-right);
controls: stay, up, down, left, right (a move off the grid stays put).
Factor 1, food (4): the cell where the food is; one control (it does not move). Unknown: D is
uniform over the four cells.
Modality 0, where (4): the agent's cell, seen without error.
Modality 1, smell (2): nothing, food - food is sensed only in the cell that holds it.
C (smell) = [0, 3]: the agent prefers to find food; flat over where.
T = 4 (three moves), policies of depth 2, the agent starts top-left.

In SPM/pymdp layout A is the likelihood p(o | s) and B the transition p(s' | s, u); C holds one
log-preference vector per modality (not a matrix over states). The seed document had these the
other way round; see notebooks/foraging.py.
"""

from __future__ import annotations

import torch

from pp_aif.agent import AgentSettings
from pp_aif.spec import GenerativeModel, construct_policies
from pp_aif.task import Labels, Task

CELLS = ["top-left", "top-right", "bottom-left", "bottom-right"]
MOVES = ["stay", "up", "down", "left", "right"]
STEPS = {"stay": (0, 0), "up": (-1, 0), "down": (1, 0), "left": (0, -1), "right": (0, 1)}


def build() -> Task:
    dtype = torch.float64
    location = torch.zeros(4, 4, 5, dtype=dtype)
    for cell in range(4):
        row, column = divmod(cell, 2)
        for u, move in enumerate(MOVES):
            dr, dc = STEPS[move]
            r, c = row + dr, column + dc
            target = r * 2 + c if 0 <= r < 2 and 0 <= c < 2 else cell
            location[target, cell, u] = 1.0
    food = torch.eye(4, dtype=dtype)[:, :, None]
    where = torch.eye(4, dtype=dtype)[:, :, None].expand(4, 4, 4).clone()
    smell = torch.zeros(2, 4, 4, dtype=dtype)
    for cell in range(4):
        for food_cell in range(4):
            smell[1 if cell == food_cell else 0, cell, food_cell] = 1.0
    model = GenerativeModel(
        [where, smell],
        [location, food],
        C=[torch.zeros(4, dtype=dtype), torch.tensor([0.0, 3.0], dtype=dtype)],
        D=[torch.tensor([1.0, 0, 0, 0], dtype=dtype), torch.full((4,), 0.25, dtype=dtype)],
        policies=construct_policies([5, 1], horizon=2),
    )
    labels = Labels(
        factors=["location", "food"],
        states=[CELLS, CELLS],
        controls=[MOVES, ["-"]],
        modalities=["where", "smell"],
        outcomes=[CELLS, ["nothing", "food"]],
    ).check(model)
    # food bottom-right: right (nothing), down (food), stay (food)
    observations = torch.tensor([[0, 0], [1, 0], [3, 1], [3, 1]])
    actions = torch.tensor([[4, 0], [2, 0], [0, 0]])
    return Task(
        name="foraging",
        description="a 2x2 grid; the food's cell is unknown until the agent stands on it",
        model=model,
        labels=labels,
        observations=observations,
        actions=actions,
        settings=AgentSettings(),
        num_steps=4,
        reward=(1, 1),
    )
