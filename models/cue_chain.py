"""A chain of cues: the first cue tells which of several second cues holds the answer, and that
cue tells which arm pays (issue 18 (b); after the cue-chaining mazes of Friston et al. 2021).

Factor 0, location (n + 4): start, first cue, cue 1 .. cue n, left arm, right arm; controls:
go to each of them (the arms are absorbing: every control stays there).
Factor 1, context (2 n): the informative second cue (1 .. n) and the paying arm (left or
right); one control (it does not change within a trial).
Modality 0, where: the location, seen without error.
Modality 1, cue (n + 3): none, "see cue 1" .. "see cue n", "left", "right". The first cue shows
which second cue is informative; the informative one shows the paying arm; the others show
nothing.
Modality 2, reward (3): neutral, reward, no reward. The paying arm rewards with probability
``reliability``, the other with 1 - reliability.
C: at the last step only (the reward counts at the end of the trial), reward ``preference`` and
no reward -``preference`` (a gamble on an arm is worth nothing); D: the start, contexts equal.
T = 4: three moves, just enough for first cue -> second cue -> arm. Policies: every sequence
of three moves ((n + 4)^3).

Without the epistemic term, the cues have value only for the arm they let the agent choose
later, two moves after the first cue: an agent that plans open loop (fixed sequences) or
sophisticated to depth 2 sees none (at depth 2 it tries second cues directly: one of n is
informative), and one that plans sophisticated to depth 3 sees it.
"""

from __future__ import annotations

import torch

from pp_aif.agent import AgentSettings
from pp_aif.spec import GenerativeModel, construct_policies
from pp_aif.task import Labels, Task


def build(second_cues: int = 4, reliability: float = 0.98, preference: float = 3.0) -> Task:
    """The task with ``second_cues`` second cues (at least 2)."""
    if isinstance(second_cues, bool) or not isinstance(second_cues, int) or second_cues < 2:
        raise ValueError(f"second_cues: an integer >= 2, got {second_cues!r}")
    if not 0.5 < reliability <= 1.0:
        raise ValueError(f"reliability: a probability in (0.5, 1], got {reliability}")
    dtype = torch.float64
    n = second_cues
    locations = ["start", "first cue", *[f"cue {i + 1}" for i in range(n)], "left arm", "right arm"]
    contexts = [f"cue {i + 1}, {side} pays" for i in range(n) for side in ("left", "right")]
    cues = ["none", *[f"see cue {i + 1}" for i in range(n)], "left", "right"]
    START, FIRST, LEFT, RIGHT = 0, 1, n + 2, n + 3
    L, K = len(locations), len(contexts)
    move = torch.zeros(L, L, L, dtype=dtype)  # [next, previous, control]
    for previous in range(L):
        for control in range(L):
            arrived = previous if previous in (LEFT, RIGHT) else control
            move[arrived, previous, control] = 1.0
    stay = torch.eye(K, dtype=dtype)[:, :, None]
    where = torch.zeros(L, L, K, dtype=dtype)
    cue = torch.zeros(len(cues), L, K, dtype=dtype)
    reward = torch.zeros(3, L, K, dtype=dtype)
    for k in range(K):
        informative, side = 2 + k // 2, k % 2  # its location; side 0: left pays
        for loc in range(L):
            where[loc, loc, k] = 1.0
            shown = 0
            if loc == FIRST:
                shown = informative - 1  # "see cue i"
            elif loc == informative:
                shown = n + 1 + side
            cue[shown, loc, k] = 1.0
            if loc in (LEFT, RIGHT):
                pays = (loc == LEFT) == (side == 0)
                p = reliability if pays else 1 - reliability
                reward[1, loc, k], reward[2, loc, k] = p, 1 - p
            else:
                reward[0, loc, k] = 1.0
    T = 4
    final = torch.zeros(3, T, dtype=dtype)  # the reward matters at the end of the trial
    final[:, T - 1] = torch.tensor([0.0, preference, -preference], dtype=dtype)
    C = [torch.zeros(L, dtype=dtype), torch.zeros(len(cues), dtype=dtype), final]
    D = [torch.eye(L, dtype=dtype)[START], torch.full((K,), 1 / K, dtype=dtype)]
    arms = torch.zeros(L, dtype=dtype)
    arms[[LEFT, RIGHT]] = 1.0
    model = GenerativeModel(
        [where, cue, reward],
        [move, stay],
        C=C,
        D=D,
        policies=construct_policies([L, 1], horizon=3),
        H=[arms, None],  # the arms: the intended locations of inductive planning
    )
    labels = Labels(
        factors=["location", "context"],
        states=[locations, contexts],
        controls=[[f"go to {x}" for x in locations], ["stay"]],
        modalities=["where", "cue", "reward"],
        outcomes=[locations, cues, ["neutral", "reward", "no reward"]],
    ).check(model)
    return Task(
        name="cue_chain",
        description=f"a first cue tells which of {n} second cues shows the paying arm",
        model=model,
        labels=labels,
        observations=torch.tensor([[START, 0, 0], [FIRST, 1, 0]]),
        actions=torch.tensor([[FIRST, 0]]),
        process=None,
        settings=AgentSettings(),
        num_steps=T,
        reward=(2, 1),
    )
