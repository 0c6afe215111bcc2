"""The Pyro programs of pp_aif. They are the specification; ``pp_aif.ops`` is the fast path.

Dimension symbols: N independent sequences, T time steps, F factors, M modalities.

``pomdp`` is the agent's generative model of a sequence of observations given actions:

    s_f,0 ~ Categorical(D_f)
    s_f,t ~ Categorical(B_f[:, s_f,t-1, u_f,t-1])        t = 1..T-1
    o_m,t ~ Categorical(A_m[:, s_1,t, ..., s_F,t])      t = 0..T-1

Sites: ``"s_{f}_{t}"`` (hidden, enumerable, under ``pyro.markov``; absent for a factor with a
single state, which is always 0) and ``"o_{m}_{t}"`` (observed
when observations are given). Batched sequences run inside ``pyro.plate("sequences", N, dim=-1)``;
a single sequence runs without a plate (``TraceEnum_ELBO.compute_marginals`` fails on a plate of
size 1: pyro-ppl/pyro#3102).
"""

from __future__ import annotations

from contextlib import nullcontext

import pyro
import pyro.distributions as dist
import torch
from pyro.ops.indexing import Vindex
from torch import Tensor

from pp_aif.parameters import check_parameters
from pp_aif.spec import GenerativeModel

__all__ = [
    "pomdp",
    "policy_rollout",
    "empty_guide",
    "sample_sequences",
    "state_site",
    "observation_site",
    "behaviour",
    "population_prior",
]


def state_site(factor: int, t: int) -> str:
    return f"s_{factor}_{t}"


def observation_site(modality: int, t: int) -> str:
    return f"o_{modality}_{t}"


def pomdp(
    model: GenerativeModel,
    observations: Tensor | None = None,
    actions: Tensor | None = None,
    *,
    num_steps: int | None = None,
    num_sequences: int | None = None,
) -> list[list[Tensor]]:
    """The POMDP as a Pyro model of one sequence, or of N independent sequences.

    Parameters
    ----------
    model : GenerativeModel
    observations : int (T, M) or (N, T, M), optional
        Observed outcomes; without them the program samples outcomes.
    actions : int (T-1, F) or (N, T-1, F), optional
        Controls between steps, batched like the observations; without them every control is 0.
    num_steps : int, optional
        T, when no observations are given.
    num_sequences : int, optional
        N, when no observations are given; None for one sequence without a plate.

    Returns
    -------
    list over t of lists over f of the state values (sampled or enumerated).
    """
    if observations is not None:
        num_steps = observations.shape[-2]
        num_sequences = observations.shape[0] if observations.dim() == 3 else None
    if num_steps is None:
        raise ValueError("pomdp: give observations, or num_steps")
    batch = () if num_sequences is None else (num_sequences,)
    if actions is None:
        actions = torch.zeros(
            *batch, max(num_steps - 1, 0), model.num_factors, dtype=torch.int64, device=model.device
        )
    plate = (
        nullcontext() if num_sequences is None else pyro.plate("sequences", num_sequences, dim=-1)
    )
    trajectory = []
    with plate:
        previous = None
        for t in pyro.markov(range(num_steps)):
            states = []
            for f in range(model.num_factors):
                if model.num_states[f] == 1:  # no site: Pyro cannot enumerate a support of one
                    states.append(torch.zeros((), dtype=torch.int64, device=model.device))
                    continue
                if t == 0:
                    logits = model.log_D[f]
                else:
                    logits = Vindex(model.log_transition_last[f])[
                        actions[..., t - 1, f], previous[f], :
                    ]
                states.append(
                    pyro.sample(
                        state_site(f, t),
                        dist.Categorical(logits=logits),
                        infer={"enumerate": "parallel"},
                    )
                )
            for m in range(model.num_modalities):
                logits = Vindex(model.log_likelihood_last[m])[(*states, slice(None))]
                pyro.sample(
                    observation_site(m, t),
                    dist.Categorical(logits=logits),
                    obs=None if observations is None else observations[..., t, m],
                )
            trajectory.append(states)
            previous = states
    return trajectory


def empty_guide(*args, **kwargs) -> None:
    """The guide of exact enumeration: every latent site is enumerated in the model."""


def sample_sequences(
    model: GenerativeModel, actions: Tensor, *, seed: int | None = None
) -> tuple[Tensor, list[Tensor]]:
    """Run the program forward: draw hidden states and observations under given actions.

    Parameters
    ----------
    actions : int (N, T-1, F)
        Controls between steps (give shape (N, 0, F) for one step).
    seed : int, optional
        Seeds Pyro's random number generator first.

    Returns
    -------
    observations : int64 (N, T, M)
    states : F tensors int64 (N, T)
    """
    if seed is not None:
        pyro.set_rng_seed(seed)
    N, T = actions.shape[0], actions.shape[1] + 1
    trace = pyro.poutine.trace(pomdp).get_trace(model, None, actions, num_steps=T, num_sequences=N)
    observations = torch.stack(
        [
            torch.stack(
                [trace.nodes[observation_site(m, t)]["value"] for m in range(model.num_modalities)],
                -1,
            )
            for t in range(T)
        ],
        1,
    )
    states = [
        torch.stack([trace.nodes[state_site(f, t)]["value"] for t in range(T)], 1)
        if model.num_states[f] > 1
        else torch.zeros(N, T, dtype=torch.int64, device=model.device)
        for f in range(model.num_factors)
    ]
    return observations, states


def policy_rollout(
    model: GenerativeModel,
    beliefs: list[Tensor],
    policies: Tensor,
    A: list[Tensor] | None = None,
    transition_by_action: list[Tensor] | None = None,
) -> None:
    """The generative model run forward from the current beliefs under every policy.

    Parameters
    ----------
    beliefs : F tensors (N, S_f)
        q(s_f) at the present step; ``"s_{f}_0"`` is drawn from them.
    policies : int (P, H, F)
    A : M tensors (N, O_m, S_1..S_F), optional
        One likelihood per belief (e.g. each agent's learned A); default: the model's.
    transition_by_action : F tensors (N, U_f, S_next, S_prev), optional
        One transition array per belief; default: the model's.

    Sites, inside ``pyro.plate("beliefs", N, dim=-2)`` and ``pyro.plate("policies", P, dim=-1)``:
    ``"s_{f}_{tau}"`` for tau = 0..H and ``"o_{m}_{tau}"`` for tau = 1..H. Draw them with
    ``pyro.infer.Predictive(policy_rollout, num_samples=K, parallel=True)``.
    """
    N = beliefs[0].shape[0]
    P, H, _ = policies.shape
    rows = torch.arange(N, device=model.device)[:, None]
    own_transitions = (
        None
        if transition_by_action is None
        else [torch.log(b).transpose(-1, -2) for b in transition_by_action]  # (N, U, S, S')
    )

    def transition_logits(f: int, tau: int) -> Tensor:
        """ln p(s_f,tau | s_f,tau-1, u) under each policy: (..., N, P, S_f)."""
        controls = policies[:, tau - 1, f]
        if own_transitions is None:
            return Vindex(model.log_transition_last[f])[controls, states[f], :]
        return Vindex(own_transitions[f])[rows, controls, states[f], :]

    with pyro.plate("beliefs", N, dim=-2), pyro.plate("policies", P, dim=-1):
        states = [
            pyro.sample(state_site(f, 0), dist.Categorical(logits=torch.log(q)[:, None, :]))
            for f, q in enumerate(beliefs)
        ]
        for tau in range(1, H + 1):
            states = [
                pyro.sample(state_site(f, tau), dist.Categorical(logits=transition_logits(f, tau)))
                for f in range(model.num_factors)
            ]
            for m in range(model.num_modalities):
                if A is None:
                    logits = Vindex(model.log_likelihood_last[m])[(*states, slice(None))]
                else:
                    logits = Vindex(torch.log(A[m]).movedim(1, -1))[(rows, *states, slice(None))]
                pyro.sample(observation_site(m, tau), dist.Categorical(logits=logits))


def behaviour(
    likelihood, *, priors: dict, present=None, hierarchical: bool = False, links: dict | None = None
) -> None:
    """The behavioural model: agent parameters are latent, people's actions are observed.

    likelihood : ``pp_aif.fitting.BehaviourLikelihood`` of the data (theta -> ln p(u | theta)).
    priors : {name: distribution}, the parameters to infer (``pp_aif.parameters.PARAMETERS``), one
        per subject; the others take the likelihood's defaults. Hierarchical: each prior must be
        ``link^-1(Normal(m, s))`` and becomes the prior of the population mean.
    present : bool (N, K), optional: the trials that exist. Only the action sites are masked:
        each subject's prior is scored once, whatever its number of trials.
    hierarchical : non-centred population model per parameter, on the link scale:
        mu ~ Normal(m, s), sigma ~ HalfNormal(1/2), z_n ~ Normal(0, 1),
        theta_n = link^-1(mu + sigma z_n); links : {name: torch Transform}, link^-1 per name.

    Sites: per subject ``name`` (or ``name_z``, with ``name_mu`` and ``name_sigma`` outside the
    plate) inside ``pyro.plate("subjects", N, dim=-3)``; ``"u_{f}"``, each factor's chosen
    controls (N, K, T-1), observed, as ``Categorical`` over p(u_t | theta, history) inside plates
    over subjects, trials and steps.
    """
    check_parameters("priors", priors)
    actions = likelihood.actions
    N, K, steps, _ = actions.shape
    dtype = likelihood.model.dtype
    theta = {}
    if hierarchical:
        population = {}
        for name, prior in priors.items():
            loc, scale = population_prior(name, prior, links[name])
            mu = pyro.sample(f"{name}_mu", dist.Normal(loc, scale))
            sigma = pyro.sample(f"{name}_sigma", dist.HalfNormal(torch.tensor(0.5, dtype=dtype)))
            population[name] = (mu, sigma)
    with pyro.plate("subjects", N, dim=-3):
        for name, prior in priors.items():
            if hierarchical:
                mu, sigma = population[name]
                z = pyro.sample(f"{name}_z", dist.Normal(torch.zeros((), dtype=dtype), 1.0))
                value = links[name](mu + sigma * z)  # (..., N, 1, 1)
            else:
                value = pyro.sample(name, prior)
            # where the data are (priors drawn on the CPU feed a likelihood on a GPU)
            theta[name] = value[..., 0, 0].to(actions.device)  # (..., N)
    log_probabilities = likelihood.log_probabilities(theta)
    mask = True if present is None else present[..., None]  # (N, K, 1)
    with (
        pyro.plate("subjects_", N, dim=-3),
        pyro.plate("trials", K, dim=-2),
        pyro.plate("steps", steps, dim=-1),
        pyro.poutine.mask(mask=mask),
    ):
        for f, log_p in enumerate(log_probabilities):
            if log_p is not None:
                pyro.sample(f"u_{f}", dist.Categorical(logits=log_p), obs=actions[..., f])


def population_prior(name: str, prior, link) -> tuple[Tensor, Tensor]:
    """(m, s) of a prior link^-1(Normal(m, s)), or a ValueError naming the parameter."""
    base = getattr(prior, "base_dist", None)
    transforms = getattr(prior, "transforms", [])
    if isinstance(base, dist.Normal) and len(transforms) == 1 and type(transforms[0]) is type(link):
        return base.loc, base.scale
    raise ValueError(
        f"priors[{name!r}]: a hierarchical fit needs a prior of the form "
        f"{type(link).__name__}(Normal(m, s)) (e.g. LogNormal), the prior of the population "
        f"mean on the link scale; got {prior}"
    )
