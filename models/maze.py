"""A grid maze whose goal is reachable only through a corridor (inductive planning, Friston et
al. 2023).

Factor 0, location: the open cells of ``layout`` (read row by row); controls: stay, up, down,
left, right (a move into a wall or off the grid stays put).
Modality 0, where: the location, seen without error. The agent prefers the goal cell G
(C = ``preference`` there, 0 elsewhere) and intends it (``GenerativeModel(H=...)``: the
intended state of inductive planning). It starts at S (D).
A trial lasts the shortest path from S to G plus ``slack`` moves. Policies are one move deep
(``horizon``), so an agent that looks one step ahead sees no difference between moves until
it stands next to the goal: without inductive planning it wanders; with it
(``AgentSettings(inductive_epsilon=1e-3)``), each move that does not bring the goal nearer
costs ln(1/epsilon) nats, and it walks the corridor.
"""

from __future__ import annotations

from collections import deque

import torch

from pp_aif.agent import AgentSettings
from pp_aif.spec import GenerativeModel, construct_policies
from pp_aif.task import Labels, Task

#: S start, G goal, . open, # wall: one corridor of 14 moves from S to G
CORRIDOR = (
    "S...#",
    "###..",
    "G..#.",
    "##.#.",
    "##...",
)
MOVES = {"stay": (0, 0), "up": (-1, 0), "down": (1, 0), "left": (0, -1), "right": (0, 1)}


def _cells(layout):
    if not layout or len({len(row) for row in layout}) != 1:
        raise ValueError("layout: rows of equal length expected")
    cells = [(r, c) for r, row in enumerate(layout) for c, x in enumerate(row) if x != "#"]
    bad = {x for row in layout for x in row} - set("SG.#")
    if bad:
        raise ValueError(f"layout: unknown cell marks {sorted(bad)}; use S, G, . and #")
    marks = {x: [(r, c) for r, row in enumerate(layout) for c, y in enumerate(row) if y == x]
             for x in "SG"}  # fmt: skip
    if len(marks["S"]) != 1 or len(marks["G"]) != 1:
        raise ValueError("layout: exactly one start S and one goal G expected")
    return cells, marks["S"][0], marks["G"][0]


def shortest_path(layout=CORRIDOR) -> int:
    """The fewest moves from S to G (ValueError if G cannot be reached)."""
    cells, start, goal = _cells(layout)
    open_cells, seen, queue = set(cells), {start: 0}, deque([start])
    while queue:
        cell = queue.popleft()
        for dr, dc in MOVES.values():
            nxt = (cell[0] + dr, cell[1] + dc)
            if nxt in open_cells and nxt not in seen:
                seen[nxt] = seen[cell] + 1
                queue.append(nxt)
    if goal not in seen:
        raise ValueError("layout: the goal G cannot be reached from S")
    return seen[goal]


def build(layout=CORRIDOR, slack: int = 2, preference: float = 3.0, horizon: int = 1) -> Task:
    cells, start, goal = _cells(layout)
    index = {cell: i for i, cell in enumerate(cells)}
    S, U = len(cells), len(MOVES)
    dtype = torch.float64
    B = torch.zeros(S, S, U, dtype=dtype)
    for i, (r, c) in enumerate(cells):
        for u, (dr, dc) in enumerate(MOVES.values()):
            B[index.get((r + dr, c + dc), i), i, u] = 1.0
    A = torch.eye(S, dtype=dtype)
    C = torch.zeros(S, dtype=dtype)
    C[index[goal]] = preference
    D = torch.zeros(S, dtype=dtype)
    D[index[start]] = 1.0
    H = torch.zeros(S, dtype=dtype)
    H[index[goal]] = 1.0
    model = GenerativeModel(
        [A], [B], C=[C], D=[D], policies=construct_policies([U], horizon=horizon), H=[H]
    )
    names = [f"row {r} col {c}" + (" (goal)" if (r, c) == goal else "") for r, c in cells]
    labels = Labels(
        factors=["location"],
        states=[names],
        controls=[list(MOVES)],
        modalities=["where"],
        outcomes=[names],
    ).check(model)
    T = shortest_path(layout) + slack + 1
    return Task(
        name="maze",
        description=f"a {len(layout)}x{len(layout[0])} maze, its goal {shortest_path(layout)} "
        "moves away through a corridor",
        model=model,
        labels=labels,
        observations=torch.tensor([[index[start]], [index[start]]]),
        actions=torch.tensor([[0]]),
        process=None,
        settings=AgentSettings(),
        num_steps=T,
        reward=(0, index[goal]),
    )
