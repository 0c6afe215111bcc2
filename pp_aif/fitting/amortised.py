"""Amortised fitting: a neural posterior estimator of an agent's parameters from one subject's
observations and choices, trained once on simulations of the batched agent (neural posterior
estimation; Papamakarios & Murray 2016, Greenberg et al. 2019; Radev et al. 2020, BayesFlow).

Dimension symbols: N subjects, K trials, T steps, M modalities (O_m outcomes), F factors (U_f
controls), d fitted parameters, H hidden units.

The estimator q(theta | x) is a conditional normalising flow over the fitted parameters on their
unconstrained scale (u = link(theta), ``pp_aif.parameters.LINKS``; standardised by the training
simulations' mean and sd), conditioned on a summary of the subject's data:

- each trial is coded as the one-hot outcomes of its T steps and the one-hot controls of its
  T-1 moves, mapped by a linear layer and a ReLU to H features;
- a GRU runs over the subject's present trials in order (absent trials are left out, as the
  likelihood lets them teach nothing, so a subject with trials missing is a subject who did
  fewer trials), and its last state with ln(number of trials) is the summary.

The flow is zuko's neural spline flow (``zuko.flows.NSF``) or Pyro's conditional spline
autoregressive flow (``flow="pyro"``); docs/benchmarks.md records the measurement that chose the
default. Training draws ``simulations`` subjects from the priors (``fit``'s, the same
``default_priors``), simulates each with its own parameters for a number of trials drawn
between ``min_trials`` and ``trials`` (``fitting.simulate_subjects``), and maximises
ln q(theta | x) by Adam, keeping the state of the best validation loss
(``pp_aif.fitting.training.train_estimator``, apart so that this module, which ``fit`` reads
estimators with, imports nothing that imports ``fit``).

A saved estimator records the task (its name and a digest of its model and settings), the
priors (a digest and their description), the parameters and the most trials it was trained on;
``fit(method="amortised", estimator=...)`` refuses it for anything else.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from pp_aif.agent import AgentSettings
from pp_aif.atomic import load_checkpoint, save_checkpoint
from pp_aif.errors import DataError
from pp_aif.jobs import content_digest
from pp_aif.parameters import LINKS, chosen_priors, log_prior_on_link_scale
from pp_aif.validation import check_integer, check_number

__all__ = [
    "FLOWS",
    "SCHEDULES",
    "EstimatorSettings",
    "PosteriorEstimator",
    "estimator_draws",
    "importance_resample",
    "task_signature",
]

FLOWS = ("zuko", "pyro")
#: the fraction of importance sampling's proposals drawn from the priors (``proposals``)
DEFENSIVE = 0.1
SCHEDULES = ("constant", "cosine")
_FORMAT = "pp_aif.posterior_estimator/1"


def task_signature(task, settings: AgentSettings | None, params, priors: dict | None) -> dict:
    """What an estimator is trained for: the task's name, digests of its model and of the
    agent's settings, the parameters, and the priors (digest and description)."""
    settings = settings or task.settings or AgentSettings()
    chosen = chosen_priors(params, priors)
    return {
        "task": task.name,
        "model": content_digest(task.model),
        "settings": content_digest(settings),
        "params": list(params),
        "priors": content_digest(chosen),
        "prior_description": {name: repr(prior) for name, prior in chosen.items()},
    }


class _Encoder(nn.Module):
    """(observations (B, K, T, M), actions (B, K, T-1, F), present (B, K)) -> (B, H + 1)."""

    def __init__(self, num_outcomes, num_controls, T: int, hidden: int):
        super().__init__()
        self.num_outcomes, self.num_controls = list(num_outcomes), list(num_controls)
        width = T * sum(self.num_outcomes) + (T - 1) * sum(self.num_controls)
        self.trial = nn.Sequential(nn.Linear(width, hidden), nn.ReLU())
        self.rnn = nn.GRU(hidden, hidden, batch_first=True)
        self.hidden = hidden

    def forward(self, observations: Tensor, actions: Tensor, present: Tensor) -> Tensor:
        B, K = present.shape
        parts = [
            nn.functional.one_hot(observations[..., m].long(), size).float().flatten(-2)
            for m, size in enumerate(self.num_outcomes)
        ]
        parts += [
            nn.functional.one_hot(actions[..., f].long(), U).float().flatten(-2)
            for f, U in enumerate(self.num_controls)
        ]
        features = self.trial(torch.cat(parts, -1))  # (B, K, H)
        # the present trials first, in their order: absent ones are left out
        order = torch.sort((~present).to(torch.int8), dim=1, stable=True).indices
        features = torch.gather(features, 1, order[..., None].expand(-1, -1, self.hidden))
        lengths = present.sum(1)
        packed = nn.utils.rnn.pack_padded_sequence(
            features, lengths.cpu(), batch_first=True, enforce_sorted=False
        )
        _, last = self.rnn(packed)  # (1, B, H)
        return torch.cat([last[0], torch.log(lengths.float())[:, None]], -1)


class PosteriorEstimator(nn.Module):
    """The trained estimator: ``draws(observations, actions, present, n)`` -> {name: (n, B)}
    parameter draws on their natural scale (float64). See the module docstring."""

    def __init__(self, signature: dict, shapes: dict, settings: EstimatorSettings):
        super().__init__()
        self.signature, self.shapes, self.settings = signature, shapes, settings
        d = len(signature["params"])
        self.encoder = _Encoder(
            shapes["num_outcomes"], shapes["num_controls"], shapes["trial_length"],
            settings.hidden,
        )  # fmt: skip
        context = settings.hidden + 1
        if settings.flow == "zuko":
            import zuko

            self.flow = zuko.flows.NSF(
                features=d, context=context, transforms=settings.transforms,
                hidden_features=(settings.hidden, settings.hidden),
            )  # fmt: skip
        else:
            import pyro.distributions.transforms as T

            self.transforms = nn.ModuleList(
                [
                    T.conditional_spline_autoregressive(
                        max(d, 2),  # Pyro's autoregressive networks need 2 dimensions
                        context,
                        hidden_dims=[settings.hidden, settings.hidden],
                    )  # fmt: skip
                    for _ in range(settings.transforms)
                ]
            )
        self.register_buffer("shift", torch.zeros(d))
        self.register_buffer("scale", torch.ones(d))

    def _distribution(self, context: Tensor):
        if self.settings.flow == "zuko":
            return self.flow(context)
        import pyro.distributions as dist

        d = len(self.signature["params"])
        width = max(d, 2)  # as the transforms were built
        shape = (*context.shape[:-1], width)  # one base per subject, as the context
        base = dist.Normal(torch.zeros(shape), torch.ones(shape)).to_event(1)
        flow = dist.ConditionalTransformedDistribution(base, list(self.transforms))
        return _Padded(flow.condition(context), d, width)

    def log_prob(self, u: Tensor, observations, actions, present) -> Tensor:
        """ln q(u | x) of standardised unconstrained parameters u (B, d): (B,)."""
        context = self.encoder(observations, actions, present)
        return self._distribution(context).log_prob(u)

    def draws(self, observations, actions, present, n: int) -> dict[str, Tensor]:
        """n draws of each subject's parameters: {name: (n, B)} float64."""
        with torch.no_grad():
            context = self.encoder(observations, actions, present)
            u = self._distribution(context).sample((n,))  # (n, B, d)
            u = u.double() * self.scale.double() + self.shift.double()
        return {name: LINKS[name](u[..., i]) for i, name in enumerate(self.signature["params"])}

    def proposals(
        self, observations, actions, present, n: int, priors: dict | None = None,
        defensive: float = 0.0,
    ) -> tuple[Tensor, Tensor]:  # fmt: skip
        """n draws of each subject's unconstrained parameters u = link(theta) and their log
        density: (u (n, B, d), ln q(u | x) (n, B)), float64, for importance sampling
        (``importance_resample``).

        defensive : a fraction eps of the draws comes from the priors ({name: distribution} of
        the estimator's parameters, ``priors``), and every draw's density is the mixture's,
        (1 - eps) q(u | x) + eps p(u) (defensive importance sampling, Hesterberg 1995): the
        weights p(u | data) / that are then at most max_u p(data | u) / (eps p(data)), so a
        subject whose posterior the estimator misses is still weighed right, given proposals
        enough. With Pyro's flow padded to 2 dimensions (d = 1) the proposal is over (u, v),
        the prior's part drawing v from N(0, 1), and the density returned is the mixture's at
        (u, v) divided by N(v; 0, 1): the weights are exact for the target p(u) N(v; 0, 1),
        whose u-marginal is p(u)."""
        d = len(self.signature["params"])
        shift, scale = self.shift.double(), self.scale.double()
        with torch.no_grad():
            context = self.encoder(observations, actions, present)
            flow = self._distribution(context)
            padded = isinstance(flow, _Padded)
            full_flow = flow.flow if padded else flow  # over (u, v) where padded
            from_prior = int(round(defensive * n))
            full = full_flow.sample((n - from_prior,)).double()  # standardised (u, v)
            if from_prior:
                B = context.shape[0]
                u = torch.stack(
                    [
                        LINKS[name].inv(priors[name].sample((from_prior, B)))
                        for name in self.signature["params"]
                    ],
                    -1,
                ).double()
                extra = torch.randn(from_prior, B, full.shape[-1] - d, dtype=torch.float64)
                full = torch.cat([full, torch.cat([(u - shift) / scale, extra], -1)], 0)
            # the flow's density of every draw (float32 as it was trained), on u's scale
            log_q = full_flow.log_prob(full.float()).double() - torch.log(scale).sum()
            u = full[..., :d] * scale + shift
            normal = torch.distributions.Normal(0.0, 1.0)
            padding = normal.log_prob(full[..., d:]).sum(-1)  # 0 without padding
            if from_prior:
                log_prior = log_prior_on_link_scale(priors, self.signature["params"], u)
                log_q = torch.logaddexp(
                    math.log1p(-defensive) + log_q, math.log(defensive) + log_prior + padding
                )
        return u, log_q - padding

    def check(self, signature: dict, num_trials: int) -> None:
        """ValueError naming what differs where the estimator was trained for another task,
        agent, parameters or priors, or for fewer trials than ``num_trials``."""
        for key, what in (
            ("task", "task"),
            ("params", "parameters"),
            ("model", "task model (A, B, C, D, E, counts, policies)"),
            ("settings", "agent settings"),
            ("priors", "priors"),
        ):
            if signature[key] != self.signature[key]:
                theirs = self.signature.get(
                    "prior_description" if key == "priors" else key, self.signature[key]
                )
                raise ValueError(
                    f"estimator: trained for {what} {theirs}, not "
                    f"{signature.get('prior_description' if key == 'priors' else key)}; train "
                    "one for this fit (pp-aif train, or train_estimator)"
                )
        if num_trials > self.shapes["max_trials"]:
            raise ValueError(
                f"estimator: trained on at most {self.shapes['max_trials']} trials a subject, "
                f"but the data have {num_trials}; train it with --trials {num_trials} or more"
            )

    def save(self, path: str | Path) -> Path:
        """Write the estimator to ``path``, whole or not at all (checked by reading it back)."""
        return save_checkpoint(
            path,
            {
                "signature": self.signature,
                "shapes": self.shapes,
                "settings": asdict(self.settings),
                "state": {k: v.detach().cpu() for k, v in self.state_dict().items()},
            },
            _FORMAT,
        )

    @classmethod
    def load(cls, path: str | Path) -> PosteriorEstimator:
        saved = load_checkpoint(path, "estimator", _FORMAT)
        estimator = cls(saved["signature"], saved["shapes"], EstimatorSettings(**saved["settings"]))
        estimator.load_state_dict(saved["state"])
        return estimator.eval()


class _Padded:
    """A d-dimensional view of a flow over max(d, 2) dimensions (the extra one a standard
    normal the data never inform): for Pyro's autoregressive flows with d = 1."""

    def __init__(self, flow, d: int, width: int):
        self.flow, self.d, self.width = flow, d, width

    def log_prob(self, u: Tensor) -> Tensor:
        if self.width == self.d:
            return self.flow.log_prob(u)
        padded = torch.cat([u, torch.zeros(*u.shape[:-1], self.width - self.d)], -1)
        return self.flow.log_prob(padded)

    def sample(self, shape):
        return self.flow.sample(shape)[..., : self.d]


@dataclass(frozen=True)
class EstimatorSettings:
    """How an estimator is trained.

    simulations : subjects simulated from the priors; trials : the most trials a subject
    (each simulated subject does between ``min_trials`` and ``trials``); hidden : H, the units
    of the trial coder, the GRU and the flow's networks; transforms : the flow's layers; flow :
    ``"zuko"`` or ``"pyro"``; epochs, batch_size, learning_rate : Adam's; schedule : Adam's
    step size over training, ``"constant"`` or ``"cosine"`` (from ``learning_rate`` down to 0
    over ``epochs``, each batch a step; Loshchilov & Hutter 2017); patience : epochs without a
    better validation loss before stopping; validation : the fraction held out.
    """

    simulations: int = 20_000
    trials: int = 60
    min_trials: int = 20
    hidden: int = 64
    transforms: int = 3
    flow: str = "zuko"
    epochs: int = 60
    batch_size: int = 256
    learning_rate: float = 1e-3
    schedule: str = "constant"
    patience: int = 8
    validation: float = 0.1
    seed: int = 0

    def __post_init__(self):
        positive = ("simulations", "trials", "min_trials", "hidden", "transforms", "epochs")
        for name in (*positive, "batch_size", "patience"):
            check_integer(name, getattr(self, name), minimum=1)
        check_integer("seed", self.seed, minimum=0)
        if self.min_trials > self.trials:
            raise ValueError(f"min_trials: {self.min_trials} is more than trials {self.trials}")
        if self.flow not in FLOWS:
            raise ValueError(f"flow: {self.flow!r} is not one of {FLOWS}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule: {self.schedule!r} is not one of {SCHEDULES}")
        check_number("learning_rate", self.learning_rate, minimum=0, exclusive_minimum=True)
        check_number("validation", self.validation, minimum=0, exclusive_minimum=True)
        if self.validation >= 1 or self.simulations * self.validation < 1:
            raise ValueError(
                f"validation: {self.validation} of {self.simulations} simulations leaves none "
                "to train on or none to validate"
            )


def importance_resample(u: Tensor, log_weights: Tensor, draws: int, generator=None) -> dict:
    """Pareto-smoothed importance sampling (PSIS; Vehtari et al. 2024) of each subject's
    proposals, then ``draws`` of them resampled by weight (with replacement).

    u : (M, N, d) proposals; log_weights : (M, N), ln p(u, data) - ln q(u) (-inf where the
    target has no mass). Returns {"u": (draws, N, d), "pareto_k": (N,), "ess": (N,)}: the
    resampled proposals, the fitted Pareto shape of each subject's largest weights (below 0.7
    the estimate is reliable, above it the proposal misses the posterior's tail) and the
    effective sample size of the smoothed weights, 1 / sum w^2. ``generator``: the
    resampling's (default torch's global one)."""
    import arviz as az

    log_weights = log_weights.double()
    M, N = log_weights.shape
    if M < 2:
        raise ValueError(f"importance: {M} proposal a subject cannot be weighed; give 2 or more")
    if bool(torch.isnan(log_weights).any()):
        index = int(torch.isnan(log_weights).any(0).nonzero()[0])
        raise FloatingPointError(
            f"importance: the target density of subject {index} is NaN at "
            f"{int(torch.isnan(log_weights[:, index]).sum())} of its {M} proposals"
        )
    finite = torch.isfinite(log_weights).any(0)
    if not bool(finite.all()):
        index = int((~finite).nonzero()[0])
        raise FloatingPointError(
            f"importance: every proposal of subject {index} has zero target density (or a "
            "non-finite one); the estimator does not cover this subject's posterior"
        )
    smoothed, pareto_k = az.psislw(log_weights.T.numpy().copy())  # (N, M) normalised
    weights = torch.as_tensor(np.exp(smoothed))  # (N, M)
    ess = 1.0 / (weights**2).sum(1)
    chosen = torch.multinomial(weights, draws, replacement=True, generator=generator)  # (N, D)
    resampled = u[chosen.T, torch.arange(N)[None, :]]  # (D, N, d)
    return {"u": resampled, "pareto_k": torch.as_tensor(pareto_k), "ess": ess}


def estimator_draws(
    estimator: PosteriorEstimator,
    task,
    data,
    params,
    priors,
    settings,
    draws,
    importance: int | None = None,
    log_target=None,
):
    """``fit(method="amortised")``'s draws, after the checks: ({name: (1, draws, N)} float64,
    attributes). With ``importance`` proposals a subject and ``log_target`` (u (M, N, d) ->
    ln p(u, data) (M, N)), the draws are resampled from the proposals by their Pareto-smoothed
    importance weights (``importance_resample``), and the attributes hold each subject's Pareto
    k and effective sample size. A tenth of the proposals (``DEFENSIVE``) come from the priors
    (``PosteriorEstimator.proposals``), so that the weights stay bounded where the estimator
    misses a posterior."""
    # (the data fit the task, checked by fit; the task is the estimator's, checked here)
    estimator.check(task_signature(task, settings, params, priors), data.present.shape[1])
    empty = ~data.present.any(1)
    if empty.any():
        raise DataError(
            f"data: subject {data.subjects[int(empty.nonzero()[0])]!r} has no present trial"
        )
    x = (data.observations.cpu(), data.actions.cpu(), data.present.cpu())
    if importance is None:
        values = estimator.draws(*x, draws)
        return {name: value[None] for name, value in values.items()}, {}
    u, log_q = estimator.proposals(
        *x, importance, chosen_priors(params, priors), defensive=DEFENSIVE
    )
    found = importance_resample(u, log_target(u) - log_q, draws)
    sites = {
        name: LINKS[name](found["u"][..., i])[None]
        for i, name in enumerate(estimator.signature["params"])
    }
    return sites, {
        "importance_proposals": importance,
        "importance_pareto_k": found["pareto_k"].tolist(),
        "importance_ess": found["ess"].tolist(),
    }
