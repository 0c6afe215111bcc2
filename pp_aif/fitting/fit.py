"""``fit``: agents fitted to people's behaviour (NUTS, SVI or MAP), as ``arviz.InferenceData``.

Dimension symbols: N subjects, K trials, C chains, D draws.

The posterior of the agent's parameters (``pp_aif.fitting.PARAMETERS``), one value per subject,
under the behavioural program ``pp_aif.programs.behaviour``, optionally hierarchical
(population mean and scale per parameter, non-centred). The InferenceData holds ``posterior``
(chain, draw, subject; and chain, draw for the population sites ``{name}_mu``,
``{name}_sigma``, on the link scale), ``sample_stats`` (``diverging``, NUTS's tree depth,
acceptance, step size and leapfrog steps; with a subject axis where each subject has its own
chains), ``observed_data`` (the
actions) and a pointwise ``log_likelihood`` per subject and trial ("actions", (chain, draw,
subject, trial)), ready for ``arviz.loo``. Divergences, R-hat > 1.01 and effective sample sizes
below 100 per chain are warned about (``ConvergenceWarning``) with their numbers.

Methods: "nuts" (Stan's NUTS with all chains as one tensor axis, ``pp_aif.fitting.nuts``, on
the behavioural program's potential, computed directly by ``BehaviourPotential``; seeded from
``seed``; without a population model the subjects' posteriors are independent, and each subject
has its own ``chains`` chains, all run as one batch), "svi" (a Gaussian guide on the
unconstrained scale, ``AutoNormal``, fitted by Adam; ``draws`` samples from it in one chain),
"map" (the posterior mode by Adam on an ``AutoDelta`` guide; one draw) and "grid" (the exact
posterior of 1-2 parameters per subject by quadrature).
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable

import arviz as az
import numpy as np
import pyro
import pyro.distributions as dist
import torch
from torch import Tensor

from pp_aif.agent import AgentSettings
from pp_aif.data import BehaviourData
from pp_aif.errors import ConvergenceWarning, LongFitWarning
from pp_aif.fitting.nuts import ProgramPotential, nuts
from pp_aif.fitting.plan_likelihood import QUIET
from pp_aif.fitting.replay import likelihood_for
from pp_aif.parameters import LINKS, PARAMETERS, chosen_priors, default_priors
from pp_aif.programs import behaviour, population_prior
from pp_aif.simulation import settings_attributes
from pp_aif.validation import check_flag, check_integer

__all__ = [
    "fit",
    "default_priors",
    "chosen_priors",
    "prior_draws",
    "LINKS",
    "METHODS",
    "parameter_draws",
    "BehaviourPotential",
    "LongFitWarning",
]

METHODS = ("nuts", "svi", "map", "grid", "amortised")


def prior_draws(
    params, num_subjects: int, generator: torch.Generator, priors: dict | None = None
) -> dict[str, torch.Tensor]:
    """One draw per subject of each parameter from its prior (default ``default_priors()``):
    {name: (N,)} float64, reproducible from the generator."""
    chosen = chosen_priors(params, priors)
    draws = {}
    for name in params:
        uniform = torch.rand(num_subjects, generator=generator, dtype=torch.float64)
        draws[name] = chosen[name].icdf(uniform.clamp(1e-12, 1 - 1e-12))
    return draws


def fit(
    task,
    data: BehaviourData,
    params=("gamma", "alpha"),
    priors: dict | None = None,
    *,
    method: str = "nuts",
    hierarchical: bool = False,
    chains: int = 4,
    draws: int = 500,
    warmup: int = 500,
    seed: int = 0,
    settings: AgentSettings | None = None,
    steps: int = 2000,
    learning_rate: float = 0.02,
    progress: Callable[[str, int, int], None] | None = None,
    grid_points: int = 81,
    width: float = 8.0,
    device=None,
    estimator=None,
    importance: int | None = None,
    pointwise: bool = True,
) -> az.InferenceData:
    """Fit the agent's parameters to each subject's actions.

    task : the Task the data come from (its model and settings define the agent); data :
    BehaviourData (``BehaviourData.read``); params : which of ``PARAMETERS`` to infer (the others
    stay at ``parameter_defaults(settings)``); priors : {name: distribution}, defaults
    ``default_priors()``; method : "nuts", "svi" or "map"; hierarchical : population model per
    parameter (not with "map": the joint mode is at sigma -> 0); chains, draws, warmup : NUTS
    (draws also for the SVI guide's samples); steps, learning_rate : Adam steps and step size of
    "svi" and "map"; progress : callable(stage, done, total), optional ("warmup" and
    "sampling" for NUTS, "optimisation" for SVI and MAP);
    grid_points, width : method "grid", the exact posterior of 1 or 2 parameters per subject by
    quadrature (``pp_aif.fitting.quadrature``: ``grid_points`` per axis over +-``width``
    Laplace standard deviations around each subject's mode), from which ``draws`` draws are
    taken (a grid cell by its posterior mass, then a uniform point within the cell); device :
    compute the likelihood there (e.g. "cuda"; default: where the task's model is; NUTS's own
    bookkeeping stays on the CPU, and the InferenceData holds numpy arrays either way);
    estimator : method "amortised", a trained ``PosteriorEstimator`` or the path of one
    (``pp_aif.fitting.amortised.train_estimator``, ``pp-aif train``): ``draws`` draws per
    subject from its q(theta | the subject's data), one "chain"; refused for another task,
    agent, parameters or priors, or more trials than it was trained on; importance : method
    "amortised", correct the estimator's draws by importance sampling with the agent's exact
    likelihood: this many proposals per subject, nine in ten from the estimator and one in
    ten from the priors (defensive importance sampling: bounded weights where the estimator
    misses a posterior), weighed by prior x likelihood / the mixture's density,
    Pareto-smoothed (PSIS), of which ``draws`` are resampled by weight; the
    attributes ``importance_pareto_k`` and ``importance_ess`` give each subject's Pareto shape
    (above 0.7 the draws are unreliable, and are warned about by name) and effective sample
    size; it costs one likelihood evaluation per proposal (default None: the estimator's
    draws as they are); pointwise : compute
    the log-likelihood of every subject's trials at every draw (the ``log_likelihood`` group,
    which LOO and ``pp-aif compare`` need; for many subjects and draws it costs more than an
    amortised fit itself), or leave the group out.
    """
    _check_arguments(task, data, params, method, hierarchical, chains, draws, warmup, steps)
    check_flag("pointwise", pointwise)
    if (estimator is None) != (method != "amortised"):
        raise ValueError(
            "estimator: method 'amortised' needs a trained estimator (estimator=...)"
            if estimator is None
            else f"estimator: only method 'amortised' takes an estimator, not {method!r}"
        )
    if importance is not None:
        if method != "amortised":
            raise ValueError(
                f"importance: only method 'amortised' reweighs its draws, not {method!r}"
            )
        check_integer("importance", importance, minimum=2)
    settings = settings or task.settings or AgentSettings()
    if device is not None:
        if method == "grid":
            raise ValueError("device: the grid method runs on the CPU; leave device unset")
        task, data = task.to(device), data.to(device)
    likelihood, program = behavioural_program(task, data, params, priors, settings, hierarchical)
    start = time.perf_counter()
    with pyro.get_param_store().scope():
        pyro.clear_param_store()
        if method == "nuts":
            pyro.set_rng_seed(seed)
            potential = BehaviourPotential(
                program,
                likelihood,
                priors=chosen_priors(params, priors, task.model.dtype),
                present=data.present,
                hierarchical=hierarchical,
                links=LINKS,
                subjects=_potential_of_subjects(task, data, params, priors, settings),
            )
            if hierarchical:
                # a dense mass matrix where it can be estimated from the warm-up (few dimensions)
                dense = data.num_subjects * len(params) <= 12
                sites, stats, extra = _run_nuts(
                    potential, chains, draws, warmup, seed, progress, dense
                )
            else:
                sites, stats, extra = _run_nuts_per_subject(
                    potential, data.num_subjects, chains, draws, warmup, seed, progress
                )
        elif method == "svi":
            sites, extra = _run_svi(program, draws, steps, learning_rate, seed, progress)
            stats = {"diverging": np.zeros((1, draws), dtype=bool)}
        elif method == "map":
            sites, extra = _run_svi(
                program, 1, steps, learning_rate, seed, progress, pyro.infer.autoguide.AutoDelta
            )
            stats = {"diverging": np.zeros((1, 1), dtype=bool)}
        elif method == "amortised":
            sites, extra = _run_amortised(
                estimator, task, data, params, priors, settings, draws, seed, importance,
                likelihood, program,
            )  # fmt: skip
            stats = {"diverging": np.zeros((1, draws), dtype=bool)}
        else:
            sites, extra = _run_grid(likelihood, priors, draws, grid_points, width, seed)
            stats = {"diverging": np.zeros((1, draws), dtype=bool)}
    seconds = time.perf_counter() - start
    posterior = _posterior(sites, params, hierarchical, data.num_subjects)
    device_ = task.model.device
    theta = {name: torch.as_tensor(posterior[name], device=device_) for name in params}  # (C, D, N)
    log_likelihood = (
        {"actions": _pointwise(likelihood, theta, data.present).cpu().numpy()}
        if pointwise
        else None
    )
    subjects = list(data.subjects)
    actions = data.actions.cpu().numpy()
    population = [f"{name}_{part}" for name in params for part in ("mu", "sigma")]
    inference = az.from_dict(
        posterior=posterior,
        sample_stats=stats,
        log_likelihood=log_likelihood,
        observed_data={"actions": actions},
        constant_data={"present": data.present.cpu().numpy()},
        coords={
            "subject": subjects,
            "trial": np.arange(data.present.shape[1]),
            "step": np.arange(actions.shape[2]),
            "factor": list(data.factors),
        },
        dims={
            **{name: ["subject"] for name in params},
            # NUTS without a population model: each subject's chains have their own stats
            **{name: ["subject"] for name, value in stats.items() if value.ndim == 3},
            "actions": ["subject", "trial"],
            "present": ["subject", "trial"],
        },
        attrs={
            "method": method,
            "hierarchical": int(hierarchical),
            "seconds": seconds,
            "params": list(params),
            "population": population if hierarchical else [],
            "task": task.name,
            # the route to the agent's likelihood (all give the same number): BehaviourLikelihood
            # (closed form), CountsLikelihood (learners that see their states), ReplayLikelihood
            "likelihood": type(likelihood).__name__,
            # the agent fitted: its settings as a simulation records them (the parameters
            # fitted are in the posterior); pp_aif.simulation.recorded_settings reads them
            **settings_attributes(settings),
            **extra,
        },
    )
    if method == "nuts":
        names = list(params) + (population if hierarchical else [])
        _warn_about(inference, names, chains, draws)
    return inference


def behavioural_program(task, data, params, priors, settings, hierarchical=False):
    """(the data's likelihood, the behavioural Pyro program without arguments). The likelihood
    is ``BehaviourLikelihood`` (closed form) where it applies, else the agent replaying the
    data (``ReplayLikelihood``): the same number, see ``pp_aif.fitting.replay``."""
    starts = task.game_starts(data.observations.shape[1])  # where the counts start again
    likelihood = likelihood_for(
        task.model, settings, data.observations, data.actions, params, data.present, starts
    )
    chosen = chosen_priors(params, priors, task.model.dtype)

    def program():
        behaviour(
            likelihood, priors=chosen, present=data.present, hierarchical=hierarchical, links=LINKS
        )

    return likelihood, program


class BehaviourPotential(ProgramPotential):
    """The potential of the behavioural program (``pp_aif.programs.behaviour``), computed
    without tracing it: (C, d) -> (C,).

    The same sites, layout and number as ``ProgramPotential(program)`` (tested to 1e-10 with
    gradients): each site's prior log density at its constrained value, + log |Jacobian| of
    its transform, + the masked log-likelihood of the actions. Tracing the program costs about
    1.5 ms a call (poutine messengers, distributions, ``compute_log_prob``), more than the
    likelihood's own arithmetic for a small data set, and NUTS calls it thousands of times.

    ``per_subject(z)``, without a population model: the potential of each subject's own sites
    and actions, (C, N), summing to ``__call__``'s (the subjects' posteriors are independent).
    ``for_subjects(index)``: the same potential for some of the subjects (``subjects``, given,
    builds it), so that NUTS can leave out the subjects whose chains have finished.
    """

    def __init__(
        self, program, likelihood, *, priors: dict, present, hierarchical, links, subjects=None
    ):
        super().__init__(program)
        self.likelihood, self.present, self.hierarchical = likelihood, present, hierarchical
        self._subjects = subjects
        self.names, self.links = tuple(priors), links
        dtype = likelihood.model.dtype
        self.priors = {}  # each site's distribution, as ``behaviour`` draws it
        for name, prior in priors.items():
            if not hierarchical:
                self.priors[name] = prior
                continue
            loc, scale = population_prior(name, prior, links[name])
            self.priors[f"{name}_mu"] = dist.Normal(loc, scale)
            self.priors[f"{name}_sigma"] = dist.HalfNormal(torch.tensor(0.5, dtype=dtype))
            self.priors[f"{name}_z"] = dist.Normal(torch.zeros((), dtype=dtype), 1.0)
        self._normal = _unconstrained_normal(self.sites, self.priors, self.dimension, dtype)
        # each site's transform without biject_to's identity parts (exactly the same values)
        self._transforms = [_without_identity(transform) for *_, transform in self.sites]
        known = [_NUMPY_TRANSFORMS.get(type(t)) for t in self._transforms]
        self._bounds = [(-np.inf, np.inf) if k is None else k[2:] for k in known]
        # the potential and its gradient in numpy (``value_and_gradient``), where it applies
        self._numpy = None
        if self._normal is not None and not hierarchical and None not in known:
            self._numpy = (
                [k[:2] for k in known],
                [x.numpy() for x in self._normal],
                None if present is None else present.numpy().astype(np.float64),
            )

    def _flat_terms(self, z: Tensor) -> tuple[list[Tensor], Tensor]:
        """``_terms`` where every prior is a Normal on its site's unconstrained scale (the
        default priors; ``_unconstrained_normal``): one expression for the priors, each site's
        transform applied to its columns, and a value that left its support in floating point
        (e^-1000 = 0) given the density its prior would give it there, -inf."""
        C, n = z.shape[0], len(self.sites)
        loc, precision, offset = self._normal
        density = (offset - precision * (z - loc) ** 2).reshape(C, n, -1).sum(1)  # (C, N)
        u = z.reshape(C, n, -1)
        theta, outside = {}, None
        for i, ((name, *_), transform) in enumerate(zip(self.sites, self._transforms, strict=True)):
            theta[name] = value = transform(u[:, i])  # (C, N)
            with torch.no_grad():
                low, high = self._bounds[i]
                left = (value <= low) | (value >= high) | torch.isnan(value)
            outside = left if outside is None else outside | left
        density = torch.where(outside, -torch.inf, density)
        return [density], self._log_likelihood(theta, z)

    def per_subject_value_and_gradient(self, z: np.ndarray, gradient: bool = True):
        """``per_subject(z)`` (C, N) and the gradient of its sum (C, d), in numpy without
        torch, where the likelihood has a numpy route (``BehaviourLikelihood``'s fused plan)
        and every prior is a Normal on its site's scale; else, or where that route declines a
        point (a filter leaving probability space), None. gradient : False for the value alone
        (the gradient None, about half the time). Equal to ``per_subject`` and its
        autograd gradient to 1e-10 (tested): NUTS calls this instead, a few hundred
        microseconds less a call than torch's operations and autograd."""
        if self._numpy is None:
            return None
        route = getattr(self.likelihood, "numpy_value_and_gradient", None)
        if route is None:
            return None
        transforms, (loc, precision, offset), present = self._numpy
        C, n = z.shape[0], len(self.sites)
        difference = z - loc
        density = (offset - precision * difference**2).reshape(C, n, -1).sum(1)  # (C, N)
        u = z.reshape(C, n, -1)
        theta, slopes, outside = {}, [], np.zeros(density.shape, dtype=bool)
        with np.errstate(**QUIET):  # a wild point: non-finite values, as torch gives them
            for i, ((name, *_), (forward, slope)) in enumerate(
                zip(self.sites, transforms, strict=True)
            ):
                theta[name] = value = forward(u[:, i])
                slopes.append(slope(u[:, i], value))
                low, high = self._bounds[i]
                outside |= (value <= low) | (value >= high) | np.isnan(value)
        found = route(theta, present, gradient)
        if found is None:
            return None
        log_likelihood, gradients = found
        with np.errstate(**QUIET):
            value = -(density + log_likelihood)
            if not gradient:
                return np.where(outside, np.inf, value), None
            gradient = 2.0 * precision * difference  # of -density
            per_site = gradient.reshape(C, n, -1)
            for i, (name, *_) in enumerate(self.sites):
                per_site[:, i] -= gradients[name] * slopes[i]
        return np.where(outside, np.inf, value), gradient

    def _log_likelihood(self, theta: dict, z: Tensor) -> Tensor:
        """ln p(u | theta) (C, N) of each subject's present actions."""
        log_likelihood = self.likelihood.chosen_log_likelihood(theta)  # (C, N, K, T-1)
        if self.present is not None:
            keep = self.present[..., None]  # (N, K, 1)
            log_likelihood = torch.where(keep, log_likelihood, torch.zeros((), dtype=z.dtype))
        return log_likelihood.sum((-1, -2)).to(z.device)

    def _terms(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """(prior log density + log |Jacobian| of each site, (C, N) per subject or (C,);
        ln p(u | theta) (C, N) of each subject's present actions)."""
        if self._normal is not None and not self.hierarchical:
            return self._flat_terms(z)
        C = z.shape[0]
        values, log_prior = {}, []
        for (name, shape, where, _), transform in zip(self.sites, self._transforms, strict=True):
            pad = (1,) * (self.depth - len(shape))
            u = z[:, where].reshape(C, *pad, *shape)
            value = transform(u)
            values[name] = value
            log_p = self.priors[name].log_prob(value)
            log_p = log_p + transform.log_abs_det_jacobian(u, value)
            log_prior.append(log_p.reshape(C, -1))
        device = self.likelihood.actions.device
        theta = {}
        for name in self.names:
            if self.hierarchical:
                mu, sigma = values[f"{name}_mu"], values[f"{name}_sigma"]
                value = self.links[name](mu + sigma * values[f"{name}_z"])
            else:
                value = values[name]
            theta[name] = value[..., 0, 0].to(device)  # (C, N)
        return log_prior, self._log_likelihood(theta, z)

    def __call__(self, z: Tensor) -> Tensor:
        with pyro.validation_enabled(False):  # a wild point: a non-finite value, not an error
            log_prior, log_likelihood = self._terms(z)
        return -(sum(term.sum(-1) for term in log_prior) + log_likelihood.sum(-1))

    def per_subject(self, z: Tensor) -> Tensor:
        """(C, N) from (C, d): each subject's potential (no population model)."""
        if self.hierarchical:
            raise ValueError(
                "per_subject: the subjects of a hierarchical model are not independent"
            )
        with pyro.validation_enabled(False):
            log_prior, log_likelihood = self._terms(z)
        return -(sum(log_prior) + log_likelihood)

    def for_subjects(self, index) -> BehaviourPotential:
        """The potential of the subjects ``index`` (a sequence of subject positions, repeats
        allowed), in that order: ``for_subjects(index).per_subject(z)[:, i]`` is subject
        ``index[i]``'s ``per_subject`` at the same values."""
        if self._subjects is None:
            raise ValueError("for_subjects: this potential was built without its data's subjects")
        if self.hierarchical:
            raise ValueError(
                "for_subjects: the subjects of a hierarchical model are not independent"
            )
        return self._subjects(index)


def _unconstrained_normal(sites, priors: dict, dimension: int, dtype):
    """(loc, 1 / (2 scale^2), -ln scale - ln sqrt(2 pi)), each (d,), where every site's prior is
    ``TransformedDistribution(Normal(loc, scale), [t])`` with t its site's own transform
    (the default priors): then ln p(t(u)) + ln |dt/du| = ln Normal(u; loc, scale) exactly, a
    few operations for all sites instead of each prior's and transform's own. Else None (and
    when the sites differ in size, so that one reshape cannot sum them per subject)."""
    if len({where.stop - where.start for _, _, where, _ in sites}) != 1:
        return None
    loc, scale = torch.zeros(dimension, dtype=dtype), torch.ones(dimension, dtype=dtype)
    for name, _, where, transform in sites:
        prior = priors.get(name)
        if isinstance(prior, dist.Normal) and transform == dist.transforms.identity_transform:
            base = prior
        elif (
            isinstance(prior, torch.distributions.TransformedDistribution)
            and isinstance(prior.base_dist, dist.Normal)
            and len(prior.transforms) == 1
            and prior.transforms[0] == _without_identity(transform)
        ):
            base = prior.base_dist
        else:
            return None
        if base.batch_shape != () or prior.event_shape != ():
            return None
        loc[where], scale[where] = base.loc, base.scale
    return loc, 0.5 / scale**2, -torch.log(scale) - 0.5 * math.log(2 * math.pi)


#: the site transforms with a numpy form: value, d value / du, and the open interval the value
#: must lie in (a value on its edge left its support in floating point: e^-1000 = 0)
_NUMPY_TRANSFORMS = {
    dist.transforms.ExpTransform: (np.exp, lambda u, v: v, 0.0, np.inf),
    dist.transforms.SigmoidTransform: (
        lambda u: 1.0 / (1.0 + np.exp(-u)),
        lambda u, v: v * (1.0 - v),
        0.0,
        1.0,
    ),
}


def _without_identity(transform):
    """A transform without the identity parts ``biject_to`` composes in (``greater_than(0)`` is
    exp followed by x -> 0 + 1 x; ``interval(0, 1)`` is the sigmoid followed by one too)."""
    if not isinstance(transform, dist.transforms.ComposeTransform):
        return transform
    parts = [
        part
        for part in transform.parts
        if not (
            isinstance(part, dist.transforms.AffineTransform)
            and isinstance(part.loc, (int, float)) and isinstance(part.scale, (int, float))
            and part.loc == 0 and part.scale == 1
        )
    ]  # fmt: skip
    return parts[0] if len(parts) == 1 else transform


def _potential_of_subjects(task, data, params, priors, settings):
    """index -> the BehaviourPotential (without a population model) of the subjects ``index``
    of ``data``, in that order (``BehaviourPotential.for_subjects``)."""

    def of(index) -> BehaviourPotential:
        subset = data.subjects_at(index)
        likelihood, program = behavioural_program(task, subset, params, priors, settings)
        return BehaviourPotential(
            program, likelihood, priors=chosen_priors(params, priors, task.model.dtype),
            present=subset.present, hierarchical=False, links=LINKS, subjects=of,
        )  # fmt: skip

    return of


def _check_arguments(task, data, params, method, hierarchical, chains, draws, warmup, steps):
    if method not in METHODS:
        raise ValueError(f"method: {method!r} is not one of {METHODS}")
    unknown = sorted(set(params) - set(PARAMETERS))
    if unknown or not params:
        raise ValueError(f"params: {unknown or 'none'}; choose from {PARAMETERS}")
    if len(set(params)) != len(params):
        raise ValueError(f"params: {list(params)} names a parameter twice")
    if method == "amortised" and hierarchical:
        raise ValueError(
            "method: 'amortised' estimates each subject's posterior on its own; a population "
            "model needs 'nuts' or 'svi'"
        )
    if method == "map" and hierarchical:
        raise ValueError(
            "method: 'map' with hierarchical=True has no useful mode (the joint density grows "
            "without bound as the population scales shrink to 0); use 'nuts' or 'svi'"
        )
    if method == "grid" and (hierarchical or len(params) > 2):
        raise ValueError(
            "method: 'grid' (the exact posterior by quadrature) is for 1 or 2 parameters per "
            f"subject without a population model; got {len(params)} parameter(s)"
            + (", hierarchical" if hierarchical else "")
        )
    if chains < 1 or draws < 1 or warmup < 0 or steps < 1:
        raise ValueError(
            "chains, draws and steps must be >= 1, warmup >= 0; got "
            f"{chains}, {draws}, {steps}, {warmup}"
        )
    names = (tuple(task.labels.modalities), tuple(task.labels.factors))
    if (data.modalities, data.factors) != names or data.observations.shape[2] != task.trial_length:
        raise ValueError(
            f"data: modalities {list(data.modalities)}, factors {list(data.factors)} and "
            f"{data.observations.shape[2]} steps per trial do not fit task {task.name!r} "
            f"({list(names[0])}, {list(names[1])}, {task.trial_length} steps); read the data "
            "with BehaviourData.read(source, task)"
        )


#: warn when NUTS is expected to take longer than this many seconds
LONG_FIT_SECONDS = 120.0
#: leapfrog steps a NUTS iteration takes, about (trees of depth 2-3 on these posteriors)
_STEPS_PER_ITERATION = 7


def _warn_if_long(potential, initial: Tensor, iterations: int, subjects: int) -> None:
    """Time one batched gradient of the potential at the initial points (the best of three)
    and warn, in words, when the whole run is expected to exceed ``LONG_FIT_SECONDS``."""
    seconds = math.inf
    for _ in range(3):
        start = time.perf_counter()
        z = initial.clone().requires_grad_(True)
        torch.autograd.grad(potential(z).sum(), z)
        seconds = min(seconds, time.perf_counter() - start)
    expected = seconds * iterations * _STEPS_PER_ITERATION
    if expected <= LONG_FIT_SECONDS:
        return
    warnings.warn(
        f"fit: this NUTS run will take about {expected / 60:.0f} minutes ({iterations} "
        f"iterations of about {_STEPS_PER_ITERATION} gradient evaluations, each "
        f"{1e3 * seconds:.0f} ms for {subjects} subject(s) and {initial.shape[0]} chain(s)); "
        "fewer warm-up or draws, fewer subjects per fit (they are independent without a "
        "population model), or method='map' or 'svi' are faster",
        LongFitWarning,
        stacklevel=4,
    )


def _run_nuts(potential, chains, draws, warmup, seed, progress, dense):
    """All chains at once (``pp_aif.fitting.nuts``): the sites {name: (C, D, *shape)}, the
    sample stats (diverging, tree depth, acceptance, step size, leapfrog steps) and the
    gradient count."""
    initial = potential.initial(chains, torch.Generator().manual_seed(seed))
    _warn_if_long(potential, initial, warmup + draws, potential.likelihood.actions.shape[0])
    result = nuts(potential, initial, draws, warmup, seed=seed, dense=dense, progress=progress)
    C, D, d = result.samples.shape
    with torch.no_grad():
        flat = potential.constrained(result.samples.reshape(C * D, d))  # on the CPU
    sites = {name: value.reshape(C, D, *value.shape[1:]) for name, value in flat.items()}
    stats = {
        "diverging": result.diverging.numpy(),
        "tree_depth": result.tree_depth.numpy(),
        "acceptance_rate": result.accept.numpy(),
        "step_size": result.step_size[:, None].expand(C, D).numpy(),
        "n_steps": result.leapfrogs.numpy(),
    }
    return sites, stats, {"gradients": result.gradients}


class _SubjectRows:
    """A potential without a population model as one row per (chain, subject): (C N, P) ->
    (C N,), row c * N + n chain c of subject n (with ``chains=1``: R rows, one chain of R
    subjects), with the numpy ``value_and_gradient`` of the potential where it has one."""

    def __init__(self, potential: BehaviourPotential, N: int, P: int, chains: int | None = None):
        self.potential, self.N, self.P, self.one_chain = potential, N, P, chains == 1

    def _joint(self, rows):  # (C N, P) -> (C, P N); one chain: (R, P) -> (1, P R)
        N, P = self.N, self.P
        return (
            rows.reshape(-1, N, P).transpose(0, 2, 1).reshape(-1, P * N)
            if isinstance(rows, np.ndarray)
            else rows.reshape(-1, N, P).transpose(1, 2).reshape(-1, P * N)
        )

    def __call__(self, rows: Tensor) -> Tensor:
        return self.potential.per_subject(self._joint(rows)).reshape(-1)

    def value_and_gradient(self, rows: np.ndarray):
        found = self.potential.per_subject_value_and_gradient(self._joint(rows))
        if found is None:
            return None
        value, gradient = found  # (C, N), (C, P N)
        N, P = self.N, self.P
        return value.reshape(-1), gradient.reshape(-1, P, N).transpose(0, 2, 1).reshape(-1, P)


def _run_nuts_per_subject(potential, N, chains, draws, warmup, seed, progress):
    """Each subject's own chains, all C * N at once (row c * N + n: chain c of subject n), on
    its own potential (``BehaviourPotential.per_subject``): without a population model the
    posterior is a product over subjects, and each factor gets its own step size and dense
    metric. One NUTS over all N P dimensions must take the step size of the narrowest subject
    and the trajectory length of the widest, so its trees grow with N. The sites and stats as
    ``_run_nuts``, the stats with a subject axis (C, D, N)."""
    P = potential.dimension // N  # each site is one value per subject: (N, 1, 1)

    def joint(rows: Tensor) -> Tensor:  # (C N, P) -> (C, P N), the potential's layout
        return rows.reshape(-1, N, P).transpose(1, 2).reshape(-1, P * N)

    per_subject = _SubjectRows(potential, N, P)

    def restrict(running: np.ndarray):  # rows c * N + n -> their subjects' potential
        subset = potential.for_subjects((running % N).tolist())
        return _SubjectRows(subset, len(running), P, chains=1)

    initial = potential.initial(chains, torch.Generator().manual_seed(seed))  # (C, P N)
    _warn_if_long(potential, initial, warmup + draws, N)
    initial = initial.reshape(chains, P, N).transpose(1, 2).reshape(chains * N, P)
    result = nuts(
        per_subject, initial, draws, warmup, seed=seed, dense=P <= 12, progress=progress,
        restrict=restrict,
    )  # fmt: skip
    C, D = chains, draws
    samples = result.samples.reshape(C, N, D, P).transpose(1, 2).reshape(C * D * N, P)
    with torch.no_grad():
        flat = potential.constrained(joint(samples))  # on the CPU
    sites = {name: value.reshape(C, D, *value.shape[1:]) for name, value in flat.items()}

    def by_subject(value: Tensor) -> np.ndarray:  # (C N, D) -> (C, D, N)
        return value.reshape(C, N, D).transpose(1, 2).numpy()

    stats = {
        "diverging": by_subject(result.diverging),
        "tree_depth": by_subject(result.tree_depth),
        "acceptance_rate": by_subject(result.accept),
        "step_size": by_subject(result.step_size[:, None].expand(C * N, D)),
        "n_steps": by_subject(result.leapfrogs),
    }
    return sites, stats, {"gradients": result.gradients}


def _run_svi(program, draws, steps, learning_rate, seed, progress, guide_class=None):
    """Adam on the negative ELBO of a guide (AutoNormal, or AutoDelta for the MAP); ``draws``
    samples of the fitted guide."""
    pyro.set_rng_seed(seed)
    autoguide = pyro.infer.autoguide
    if guide_class is autoguide.AutoDelta:
        guide = guide_class(program, init_loc_fn=autoguide.init_to_median)
    else:
        guide = autoguide.AutoNormal(program, init_scale=0.1)
    svi = pyro.infer.SVI(
        program, guide, pyro.optim.Adam({"lr": learning_rate}), pyro.infer.Trace_ELBO()
    )
    losses = []
    for i in range(steps):
        losses.append(svi.step())
        if progress is not None and (i + 1) % max(1, steps // 20) == 0:
            progress("optimisation", i + 1, steps)
    if not np.isfinite(losses[-1]):
        raise FloatingPointError(f"fit: the loss became {losses[-1]} after {steps} steps")
    window = max(1, steps // 10)
    final = float(np.mean(losses[-window:]))
    drift = abs(final - np.mean(losses[-2 * window : -window])) if steps >= 2 * window else 0.0
    if steps >= 20 and drift > 0.01 * max(1.0, abs(final)):
        warnings.warn(
            f"fit: the loss still moved by {drift:.3g} over the last {window} of {steps} steps; "
            "raise steps",
            ConvergenceWarning,
            stacklevel=3,
        )
    with torch.no_grad():
        samples = [guide() for _ in range(draws)]
    sites = {name: torch.stack([s[name] for s in samples], 0)[None].cpu() for name in samples[0]}
    key = "log_density" if guide_class is autoguide.AutoDelta else "elbo"
    return sites, {key: -final}


def _run_amortised(
    estimator, task, data, params, priors, settings, draws, seed, importance, likelihood, program
):
    """Draws from a trained posterior estimator, reweighed by importance sampling where
    ``importance`` proposals are asked for: ({name: (1, draws, N)}, attrs)."""
    from pp_aif.fitting.amortised import PosteriorEstimator, estimator_draws

    source = ""
    if not isinstance(estimator, PosteriorEstimator):
        source = str(estimator)
        estimator = PosteriorEstimator.load(estimator)
    log_target = None
    if importance is not None:
        potential = BehaviourPotential(
            program, likelihood, priors=chosen_priors(params, priors, task.model.dtype),
            present=data.present, hierarchical=False, links=LINKS,
        )  # fmt: skip
        log_target = _log_target(potential, params, data.num_subjects)
    with torch.random.fork_rng():  # seeded, leaving the caller's generator as it was
        torch.manual_seed(seed)
        sites, extra = estimator_draws(
            estimator, task, data, params, priors, settings, draws, importance, log_target
        )
    if importance is not None:
        _warn_about_weights(extra["importance_pareto_k"], data.subjects, importance)
    return sites, {
        "estimator": source,
        "estimator_max_trials": estimator.shapes["max_trials"],
        "estimator_flow": estimator.settings.flow,
        **extra,
    }


def _log_target(potential: BehaviourPotential, params, N: int, evaluations: int = 20_000):
    """u (M, N, d) on the unconstrained scale -> ln p(u, actions) (M, N): each subject's prior
    density (with the links' Jacobians) and likelihood, the negative of the potential, in
    chunks of at most ``evaluations`` subject-draws."""
    columns = [(where, params.index(name)) for name, _, where, _ in potential.sites]

    def log_target(u: Tensor) -> Tensor:
        M = u.shape[0]
        z = torch.empty(M, potential.dimension, dtype=u.dtype)
        for where, i in columns:
            z[:, where] = u[..., i]
        chunk, parts = max(1, evaluations // N), []
        for start in range(0, M, chunk):
            part = z[start : start + chunk]
            found = potential.per_subject_value_and_gradient(part.numpy(), gradient=False)
            if found is not None:
                parts.append(-torch.as_tensor(found[0]))
                continue
            with torch.no_grad():
                device = potential.likelihood.model.device
                parts.append(-potential.per_subject(part.to(device)).cpu())
        return torch.cat(parts, 0)

    return log_target


#: above this Pareto shape, importance-sampled draws are unreliable (Vehtari et al. 2024)
PARETO_K_LIMIT = 0.7


def _warn_about_weights(pareto_k, subjects, proposals: int) -> None:
    bad = [subject for subject, k in zip(subjects, pareto_k, strict=True) if k > PARETO_K_LIMIT]
    if bad:
        named = ", ".join(repr(s) for s in bad[:5]) + (" ..." if len(bad) > 5 else "")
        warnings.warn(
            f"fit: the importance weights of {len(bad)} subject(s) have Pareto k > "
            f"{PARETO_K_LIMIT} ({named}; importance_pareto_k): the estimator misses their "
            f"posterior's tail, so their draws are unreliable; raise importance= (now "
            f"{proposals}) or fit them by NUTS",
            ConvergenceWarning,
            stacklevel=4,
        )


def _run_grid(likelihood, priors, draws, points, width, seed):
    """Draws from each subject's posterior on a quadrature grid: a cell by its mass, then a
    uniform point within it; sites {name: (1, D, N)} and the log evidence per subject."""
    from pp_aif.fitting.quadrature import LinkScaleDensity, grid_log_mass

    params = likelihood.params
    u, log_mass, spacing = grid_log_mass(LinkScaleDensity(likelihood, priors), points, width)
    generator = torch.Generator().manual_seed(seed)
    cells = torch.multinomial(torch.softmax(log_mass, 0).T, draws, True, generator=generator)
    N, d = spacing.shape
    chosen = u[cells, torch.arange(N)[:, None]]  # (N, D, d)
    jitter = torch.rand(N, draws, d, generator=generator, dtype=torch.float64) - 0.5
    chosen = chosen + jitter * spacing[:, None, :]
    sites = {
        name: LINKS[name](chosen[..., i]).T[None]  # (1, D, N)
        for i, name in enumerate(params)
    }
    evidence = torch.logsumexp(log_mass, 0)
    return sites, {"log_evidence": evidence.tolist()}


def _posterior(sites: dict, params, hierarchical: bool, N: int) -> dict[str, np.ndarray]:
    """Each parameter per subject (C, D, N), and the population sites (C, D)."""
    posterior = {}
    for name in params:
        if not hierarchical:
            value = sites[name]
            posterior[name] = value.reshape(*value.shape[:2], N).numpy()
            continue
        mu, sigma, z = (sites[f"{name}_{part}"] for part in ("mu", "sigma", "z"))
        C, D = z.shape[:2]
        mu, sigma = mu.reshape(C, D, 1), sigma.reshape(C, D, 1)
        posterior[name] = LINKS[name](mu + sigma * z.reshape(C, D, N)).numpy()
        posterior[f"{name}_mu"] = mu[..., 0].numpy()
        posterior[f"{name}_sigma"] = sigma[..., 0].numpy()
    return posterior


def parameter_draws(inference: az.InferenceData) -> dict[str, torch.Tensor]:
    """The fitted parameters of every draw: {name: (C * D, N)} float64 tensors."""
    posterior = inference.posterior
    return {
        name: torch.as_tensor(posterior[name].values).reshape(-1, posterior.sizes["subject"])
        for name in inference.attrs["params"]
    }


def _pointwise(likelihood, theta: dict, present, sequences: int = 50_000) -> torch.Tensor:
    """ln p(actions of trial k | theta) for every draw: (C, D, N, K), 0 on absent trials.
    Draws go in chunks of at most ``sequences`` trials in all, to bound memory."""
    C, D, N = next(iter(theta.values())).shape
    chunk = max(1, sequences // (N * present.shape[1]))
    flat = {name: value.reshape(C * D, N) for name, value in theta.items()}
    parts = []
    with torch.no_grad():
        for start in range(0, C * D, chunk):
            part = {name: value[start : start + chunk] for name, value in flat.items()}
            parts.append(likelihood(part).sum(-1))
    pointwise = torch.cat(parts, 0).reshape(C, D, N, -1)
    return torch.where(present, pointwise, torch.zeros((), dtype=pointwise.dtype))


def _warn_about(inference: az.InferenceData, names, chains: int, draws: int) -> None:
    divergent = int(inference.sample_stats["diverging"].values.sum())
    if divergent:
        warnings.warn(
            f"fit: {divergent} divergent transitions of {chains * draws}; raise warmup or "
            "reparameterise",
            ConvergenceWarning,
            stacklevel=3,
        )
    # a chain whose draws are all equal (it never moved) has no variance: ArviZ divides by 0
    with np.errstate(divide="ignore", invalid="ignore"):
        rhat = az.rhat(inference, var_names=list(names)) if chains > 1 else None
        ess = az.ess(inference, var_names=list(names))
    stuck = sorted(
        name
        for name in names
        if not np.isfinite(ess[name].values).all()
        or (rhat is not None and not np.isfinite(rhat[name].values).all())
    )
    if stuck:
        warnings.warn(
            f"fit: the diagnostics of {', '.join(stuck)} are not finite: a chain never moved "
            "(all its draws equal); raise warmup and draws",
            ConvergenceWarning,
            stacklevel=3,
        )
    if rhat is not None:
        worst = max(  # over the finite values: the others are named above
            float(np.max(rhat[name].values, initial=-np.inf, where=np.isfinite(rhat[name].values)))
            for name in names
        )
        if worst > 1.01:
            warnings.warn(
                f"fit: R-hat up to {worst:.3f} (> 1.01)", ConvergenceWarning, stacklevel=3
            )
    lowest = min(
        float(np.min(ess[name].values, initial=np.inf, where=np.isfinite(ess[name].values)))
        for name in names
    )
    if lowest < 100 * chains:
        warnings.warn(
            f"fit: effective sample size down to {lowest:.0f} over {chains} chain(s) "
            "(< 100 per chain); draw more",
            ConvergenceWarning,
            stacklevel=3,
        )
