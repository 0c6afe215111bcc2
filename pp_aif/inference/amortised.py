"""Amortised state inference: a guide of ``pp_aif.programs.pomdp`` whose parameters a network
computes from the observations and actions, trained once by SVI on sequences drawn from the
program (Kingma & Welling 2014; Krishnan et al. 2017, "Structured inference networks for
nonlinear state space models"; Cremer et al. 2018, "Inference suboptimality in variational
autoencoders").

Dimension symbols: N sequences, T steps, F factors (S_f states), K = prod_f S_f joint states,
M modalities (O_m outcomes), U_f controls of factor f.

The family is the structured guide's (``pp_aif.inference.variational``): a Markov chain over the
joint state, q(s_1) prod_t q(s_t+1 | s_t). Its logits are the model's own terms plus a message
that the network reads from the rest of the sequence:

    ln q(s_1)          = ln D(s_1)          + ln p(o_1 | s_1)       + m_1(s_1)       + const
    ln q(s_t+1 | s_t)  = ln p(s_t+1 | s_t, u_t) + ln p(o_t+1 | s_t+1) + m_t+1(s_t+1) + const

where m_t (K values per step) is computed by a GRU run backwards over (o_t+1, u_t), ...,
(o_T, u_T-1), then a small perceptron. With m_t = ln beta_t, the backward message of
forward-backward, this is the exact posterior (tested): the family holds it, so the gap between
this guide's F and -ln p(o) is the amortisation gap alone (the network's error), and the
per-sequence structured guide is its oracle. As for the per-sequence guides, the chain is kept
on the exact posterior's support: a network gives finite messages, and a chain that puts any
mass on a state with no possible future has F = +inf. The states with a possible future come
from one backward pass over the model's structural zeros (``prepare``; it also finds impossible
sequences, which the exact forward pass then names, as for every method).

On the chain, the model's terms cancel in F = E_q[ln q - ln p(o, s)], which is then a sum over
the marginals of the messages and the rows' log normalisers (``message_chain_beliefs``), with
no pass over pairs of states. ``infer_states(method="amortised")`` computes it in probability
space (``scaled_chain_beliefs``: exp over (N, T, K), one product with the transitions a step),
and recomputes in log space the sequences where that underflows. Each route is tested equal to
the general chain's F (``variational.chain_beliefs``) and to Pyro's ELBO.

Training (``train_amortised_guide``): ``pyro.infer.SVI`` with Adam on fresh batches of sequences
drawn from the program (``programs.sample_sequences``) under uniformly random actions, the loss
the free energy F (the negative ELBO) summed over the batch: in closed form (``objective=
"closed_form"``, ``message_chain_beliefs``, the default) or Pyro's enumerated
``TraceEnum_ELBO`` of this guide (``"pyro"``, the specification; equal to 1e-10, tested).

A trained guide belongs to one model: it records the model's shapes and a digest of its A, B
and D, and refuses another model (``ValueError``). ``save`` and ``load`` keep it in a file.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyro
import pyro.optim
import torch
from pyro.infer import SVI, TraceEnum_ELBO
from torch import Tensor, nn

from pp_aif.atomic import load_checkpoint, save_checkpoint
from pp_aif.inference.exact import run_forward_filter
from pp_aif.inference.inputs import Sequences, prepare_sequences
from pp_aif.inference.variational import LOG_ZERO, sample_chain
from pp_aif.ops.free_energy import chain_joint_marginals, joint_log_initial
from pp_aif.ops.hmm import factor_marginals, observation_log_likelihood
from pp_aif.programs import pomdp, sample_sequences
from pp_aif.spec import GenerativeModel
from pp_aif.validation import check_integer, check_number

__all__ = [
    "AmortisedGuide",
    "AmortisedTraining",
    "amortised_beliefs",
    "chain_logits",
    "joint_controls",
    "joint_transition_table",
    "message_chain_beliefs",
    "model_digest",
    "prepare",
    "scaled_chain_beliefs",
    "train_amortised_guide",
]

_FORMAT = "pp_aif.amortised_guide/1"


def model_digest(model: GenerativeModel) -> str:
    """12 hexadecimal digits of SHA-256 over the model's A, B and D (what the messages of a
    trained guide depend on)."""
    digest = hashlib.sha256()
    for name in ("A", "B", "D"):
        for array in getattr(model, name):
            value = array.detach().cpu().numpy()
            digest.update(f"{name}{value.dtype}{value.shape}".encode())
            digest.update(np.ascontiguousarray(value).tobytes())
    return digest.hexdigest()[:12]


def _signature(model: GenerativeModel) -> dict:
    return {
        "num_states": list(model.num_states),
        "num_outcomes": list(model.num_outcomes),
        "num_controls": list(model.num_controls),
        "digest": model_digest(model),
    }


def _check_signature(signature: dict, model: GenerativeModel) -> None:
    if not isinstance(model, GenerativeModel):
        raise TypeError(f"model: expected a GenerativeModel, got {type(model).__name__}")
    theirs = _signature(model)
    for key in ("num_states", "num_outcomes", "num_controls", "digest"):
        if theirs[key] != signature.get(key):
            what = "A, B and D (digest)" if key == "digest" else key
            raise ValueError(
                f"guide: trained for a model with {what} {signature.get(key)}, not this "
                f"model's {theirs[key]}; train a guide for this model (train_amortised_guide)"
            )


class AmortisedGuide(nn.Module):
    """The network of the amortised guide: (observations (N, T, M), actions (N, T-1, F)) ->
    messages m (N, T, K), the log-weights of each joint state from the rest of the sequence.

    Each step t is coded as the one-hot outcomes o_t and the one-hot controls u_t-1 (zeros at
    t = 0); a GRU of ``hidden`` units runs backwards over steps T-1..t+1, and a perceptron
    (``hidden`` tanh units) maps its state after step t+1 to m_t (m_T from the GRU's zero
    start). The network is in the model's dtype; it is built for ``model`` and checks the model
    it is used with (``check``).
    """

    def __init__(self, model: GenerativeModel, hidden: int = 16, seed: int = 0):
        super().__init__()
        check_integer("hidden", hidden, minimum=1)
        check_integer("seed", seed, minimum=0)
        self.signature = _signature(model)
        self.hidden = hidden
        K = math.prod(model.num_states)
        width = sum(model.num_outcomes) + sum(model.num_controls)
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        try:
            self.rnn = nn.GRU(width, hidden, batch_first=True, dtype=model.dtype)
            self.head = nn.Sequential(
                nn.Linear(hidden, hidden, dtype=model.dtype),
                nn.Tanh(),
                nn.Linear(hidden, K, dtype=model.dtype),
            )
        finally:
            torch.random.set_rng_state(generator_state)
        self.to(model.device)

    def check(self, model: GenerativeModel) -> None:
        """ValueError unless ``model`` is the model this guide was built (and trained) for."""
        _check_signature(self.signature, model)

    def _features(self, observations: Tensor, actions: Tensor) -> Tensor:
        """(N, T, sum O_m + sum U_f): one-hot outcomes of each step and controls into it."""
        N, T = observations.shape[:2]
        dtype = self.head[0].weight.dtype
        parts = [
            nn.functional.one_hot(observations[..., m], size).to(dtype)
            for m, size in enumerate(self.signature["num_outcomes"])
        ]
        for f, U in enumerate(self.signature["num_controls"]):
            into = torch.zeros(N, T, U, dtype=dtype, device=observations.device)
            if T > 1:
                into[:, 1:] = nn.functional.one_hot(actions[..., f], U).to(dtype)
            parts.append(into)
        return torch.cat(parts, -1)

    def forward(self, observations: Tensor, actions: Tensor) -> Tensor:
        N, T = observations.shape[:2]
        features = self._features(observations, actions)
        dtype, device = features.dtype, features.device
        states = torch.zeros(N, T, self.hidden, dtype=dtype, device=device)  # state after t+1
        if T > 1:
            backwards, _ = self.rnn(features[:, 1:].flip(1))  # steps T-1, ..., 1
            states[:, : T - 1] = backwards.flip(1)
        return self.head(states)

    def save(self, path: str | Path) -> Path:
        """Write the guide (its model's signature, its size and weights) to ``path``, whole or
        not at all (``pp_aif.atomic.atomic_write``, checked by reading it back)."""
        return save_checkpoint(
            path,
            {
                "signature": self.signature,
                "hidden": self.hidden,
                "state": {k: v.detach().cpu() for k, v in self.state_dict().items()},
            },
            _FORMAT,
        )

    @classmethod
    def load(cls, path: str | Path, model: GenerativeModel) -> AmortisedGuide:
        """The guide saved at ``path``, for ``model`` (ValueError for another model, or a file
        that is not a saved guide)."""
        saved = load_checkpoint(path, "amortised guide", _FORMAT)
        _check_signature(saved["signature"], model)
        built = cls(model, hidden=saved["hidden"])
        built.load_state_dict(saved["state"])
        return built


def joint_transition_table(model: GenerativeModel) -> Tensor:
    """p(s_t+1 = j | s_t = i, u) over the flattened joint state for every joint control u
    (``joint_controls``): (prod_f U_f, K, K) ``[u, i, j]``, the factors' B multiplied."""
    table = torch.ones(1, 1, 1, dtype=model.dtype, device=model.device)
    for b in model.transition_by_action:  # (U_f, S_next, S_prev)
        step = b.transpose(-1, -2)  # (U_f, S_prev, S_next)
        U, S = step.shape[:2]
        table = (table[:, None, :, None, :, None] * step[None, :, None, :, None, :]).reshape(
            table.shape[0] * U, table.shape[1] * S, table.shape[2] * S
        )
    return table


def joint_controls(model: GenerativeModel, actions: Tensor) -> Tensor:
    """The row of ``joint_transition_table`` of each step's controls: int (N, T-1)."""
    index = torch.zeros(actions.shape[:-1], dtype=torch.int64, device=actions.device)
    for f, U in enumerate(model.num_controls):
        index = index * U + actions[..., f]
    return index


def chain_logits(
    model: GenerativeModel,
    log_likelihood: Tensor,
    ahead: Tensor,
    messages: Tensor,
    log_transitions: Tensor,
) -> tuple[Tensor, Tensor]:
    """The chain's logits from messages m (N, T, K): init (N, K) and trans (N, T-1, K, K)
    ``[.., s_t, s_t+1]``, LOG_ZERO where the next state is not in ``ahead`` (N, T, K) (``prepare``:
    the states from which the rest of the sequence is possible) or the model rules the step out.
    log_likelihood : (N, T, K) ln p(o_t | s); log_transitions : (N, T-1, K, K) ``[.., i, j]``
    ln p(s_t+1 = j | s_t = i, u_t).

    The chain then reaches exactly the exact posterior's support (tested): a state gets mass
    only if a path with probability > 0 leads to it (the model's own terms) and one leads on
    from it (``ahead``)."""
    terms = log_likelihood + messages  # ln p(o_t | s) + m_t(s)
    log_initial = joint_log_initial(model.log_D)
    init = torch.where(
        ahead[:, 0] & torch.isfinite(log_initial), log_initial + terms[:, 0], LOG_ZERO
    )
    allowed = ahead[:, 1:, None, :] & torch.isfinite(log_transitions)
    trans = torch.where(allowed, log_transitions + terms[:, 1:, None, :], LOG_ZERO)
    return init, trans


class Prepared(NamedTuple):
    """What the guide needs besides its network: ``log_likelihood`` (N, T, K) ln p(o_t | s),
    ``ahead`` (N, T, K) bool, the joint states s of step t with p(o_t | s) > 0 from which the
    rest of the sequence is possible (beta_t(s) > 0), and ``transitions`` (N, T-1, K, K)
    ``[.., i, j]`` p(s_t+1 = j | s_t = i, u_t) over the joint state."""

    log_likelihood: Tensor
    ahead: Tensor
    transitions: Tensor

    def logits(self, model: GenerativeModel, messages: Tensor) -> tuple[Tensor, Tensor]:
        """``chain_logits`` of these sequences with messages (N, T, K)."""
        log_transitions = torch.log(self.transitions)
        return chain_logits(model, self.log_likelihood, self.ahead, messages, log_transitions)

    def rows(self, index: Tensor) -> Prepared:
        """The sequences at ``index`` alone."""
        return Prepared(*(part[index] for part in self))


def prepare(model: GenerativeModel, sequences: Sequences) -> Prepared:
    """One backward pass over the sequences' structural zeros: ahead_T(s) = [p(o_T | s) > 0]
    and ahead_t(s) = [p(o_t | s) > 0] and [some s' with p(s' | s, u_t) > 0 is ahead at t+1],
    in 0/1 arithmetic (no underflow: each step is thresholded). A sequence with no state
    ahead at the first step where D > 0 is impossible: then the exact forward pass is run,
    and raises the DataError that names its step and modality, as every method's does."""
    observations, actions = sequences.observations, sequences.actions
    N, T = observations.shape[:2]
    K = math.prod(model.num_states)
    with torch.no_grad():
        log_likelihood = observation_log_likelihood(model.log_A, observations).reshape(N, T, K)
        transitions = joint_transition_table(model)[joint_controls(model, actions)]
        allowed = (transitions > 0).to(model.dtype)
        steps = [torch.isfinite(log_likelihood[:, T - 1])]
        for t in range(T - 2, -1, -1):
            pulled = torch.matmul(allowed[:, t], steps[-1].to(model.dtype)[..., None])[..., 0]
            steps.append(torch.isfinite(log_likelihood[:, t]) & (pulled > 0))
        ahead = torch.stack(steps[::-1], 1)
        start = ahead[:, 0] & (joint_log_initial(model.log_D) > -math.inf)
        if not bool(start.any(-1).all()):
            run_forward_filter(model, sequences)  # raises the DataError that names the step
            raise RuntimeError(
                "prepare: a sequence with no possible path passed the exact forward pass; "
                "please report this"
            )
    return Prepared(log_likelihood, ahead, transitions)


def _logits(model, guide: AmortisedGuide, sequences: Sequences, prepared=None):
    """(Prepared, messages, init, trans): the chain's logits of the amortised guide on
    validated sequences (``prepared`` from ``prepare``, made here if not given)."""
    prepared = prepared if prepared is not None else prepare(model, sequences)
    messages = guide(sequences.observations, sequences.actions)
    return (prepared, messages, *prepared.logits(model, messages))


def message_chain_beliefs(init: Tensor, trans: Tensor, messages: Tensor) -> tuple[Tensor, Tensor]:
    """(joint marginals q(s_t) (N, T, K), F (N,)) of the chain of ``chain_logits`` with
    messages m (N, T, K), in closed form from the messages and the rows' log normalisers alone.

    On every pair with mass, ln q(s_t+1 | s_t) = ln p(s_t+1 | s_t, u_t) + ln p(o_t+1 | s_t+1)
    + m_t+1(s_t+1) - z_t(s_t), z_t the row's log normaliser (and likewise q(s_1) with ln D and
    z_0), so the model's terms cancel in E_q[ln q - ln p(o, s)]:

        F = sum_t E_q(s_t)[m_t] - z_0 - sum_t<T E_q(s_t)[z_t],

    which needs the marginals (N, T, K) only, not a pass over the pairs (N, T-1, K, K). Equal
    to ``variational.chain_beliefs`` (the general chain's F), with its gradients (tested).
    Entries at LOG_ZERO carry no mass (exp(LOG_ZERO - z) is 0 in float64 unless the messages
    reach 1e4 nats)."""
    N, T, K = messages.shape
    top = init.amax(-1, keepdim=True)
    weights = torch.exp(init - top)
    total = weights.sum(-1, keepdim=True)  # >= 1: the largest weight is exp(0)
    initial, log_z0 = weights / total, (top + torch.log(total))[:, 0]
    if T > 1:
        top = trans.amax(-1, keepdim=True)
        weights = torch.exp(trans - top)
        total = weights.sum(-1, keepdim=True)
        conditionals, log_z = weights / total, (top + torch.log(total))[..., 0]
    else:
        conditionals = trans.new_zeros(N, 0, K, K)
        log_z = trans.new_zeros(N, 0, K)
    joint = chain_joint_marginals(initial, conditionals)  # (N, T, K)
    value = (joint * messages).sum((1, 2)) - log_z0 - (joint[:, :-1] * log_z).sum((1, 2))
    return joint, value


def scaled_chain_beliefs(
    model: GenerativeModel, prepared: Prepared, messages: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """The same chain's (joint marginals (N, T, K), F (N,)) in probability space, and a (N,)
    bool marking the sequences where it underflowed (their values are not to be used).

    With w_t(s) = exp(ln p(o_t | s) + m_t(s) - c_t) on ``ahead`` (0 elsewhere), c_t its step's
    largest exponent, the rows' normalisers are S_t(i) = sum_j p(j | i, u_t) w_t+1(j) (z_t =
    c_t+1 + ln S_t) and q(s_t+1 = j) = w_t+1(j) sum_i p(j | i, u_t) q(s_t = i) / S_t(i): one
    product with the transitions a step, and exp over (N, T, K) only. Structural zeros are
    exact zeros. A row that can go on (``ahead``) has S > 0 in exact arithmetic; one below the
    smallest normal number has underflowed, and its sequence is marked (``amortised_beliefs``
    recomputes those in log space)."""
    N, T, K = messages.shape
    dtype = messages.dtype
    exponents = torch.where(prepared.ahead, prepared.log_likelihood + messages, -math.inf)
    top = exponents.amax(-1, keepdim=True)  # finite: a possible sequence has a state ahead
    weights = torch.exp(exponents - top)  # (N, T, K)
    initial = torch.exp(joint_log_initial(model.log_D)) * weights[:, 0]
    start = initial.sum(-1)
    tiny = torch.finfo(dtype).tiny
    underflow = start < tiny
    initial = initial / start[:, None]
    log_z0 = top[:, 0, 0] + torch.log(start)
    joint, log_z = [initial], weights.new_zeros(N, 0, K)
    if T > 1:
        rows = torch.matmul(prepared.transitions, weights[:, 1:, :, None])[..., 0]  # (N,T-1,K)
        underflow = underflow | (prepared.ahead[:, :-1] & (rows < tiny)).flatten(1).any(-1)
        held = rows > 0
        safe = torch.where(held, rows, 1.0)
        log_z = torch.where(held, top[:, 1:] + torch.log(safe), 0.0)
        for t in range(T - 1):
            share = torch.where(held[:, t], joint[-1] / safe[:, t], 0.0)  # q_t(i) / S_t(i)
            step = torch.matmul(share[:, None, :], prepared.transitions[:, t])[:, 0]
            joint.append(weights[:, t + 1] * step)
    joint = torch.stack(joint, 1)
    value = (joint * messages).sum((1, 2)) - log_z0 - (joint[:, :-1] * log_z).sum((1, 2))
    return joint, value, underflow


def _free_energy(model, guide: AmortisedGuide, sequences: Sequences, prepared=None):
    """(marginals F x (N, T, S_f), F (N,)) of the amortised guide on validated sequences, in
    log space (the training loss; ``pyro_guide``'s chain)."""
    _, messages, init, trans = _logits(model, guide, sequences, prepared)
    joint, value = message_chain_beliefs(init, trans, messages)
    N, T = joint.shape[:2]
    return factor_marginals(joint.reshape(N, T, *model.num_states), 2), value


def amortised_beliefs(model: GenerativeModel, guide: AmortisedGuide, sequences: Sequences):
    """``infer_states(method="amortised")``: (marginals F x (N, T, S_f), F (N,)), no gradient."""
    if not isinstance(guide, AmortisedGuide):
        raise TypeError(
            "guide: method 'amortised' needs an AmortisedGuide (train_amortised_guide or "
            f"AmortisedGuide.load), got {type(guide).__name__}"
        )
    guide.check(model)
    N, T = sequences.observations.shape[:2]
    with torch.no_grad():
        prepared = prepare(model, sequences)
        messages = guide(sequences.observations, sequences.actions)
        joint, value, underflow = scaled_chain_beliefs(model, prepared, messages)
        if bool(underflow.any()):  # those sequences again, in log space
            index = underflow.nonzero()[:, 0]
            init, trans = prepared.rows(index).logits(model, messages[index])
            joint[index], value[index] = message_chain_beliefs(init, trans, messages[index])
    return factor_marginals(joint.reshape(N, T, *model.num_states), 2), value


def pyro_guide(guide: AmortisedGuide) -> Callable:
    """The amortised guide as a Pyro guide of ``pomdp(model, observations, actions)`` (N
    sequences in a plate): the network registered by ``pyro.module``, the chain's sites drawn
    factor by factor (enumerable)."""

    def amortised(model, observations, actions, **_):
        pyro.module("amortised_guide", guide)
        _, _, init, trans = _logits(model, guide, prepare_sequences(model, observations, actions))
        sample_chain(model, init, trans, batched=True)

    return amortised


@dataclass(frozen=True)
class AmortisedTraining:
    """How the amortised guide is trained, and its record.

    steps : Adam steps, each on a fresh batch of ``batch_size`` sequences drawn from the program
    (lengths drawn uniformly from ``min_length``..``max_length``, one length per batch) under
    uniformly random actions; learning_rate : Adam's; objective : ``"closed_form"`` (F of the
    chain in closed form, the default) or ``"pyro"`` (``TraceEnum_ELBO``); validation : held-out
    sequences of ``max_length`` steps whose mean F per step is recorded every ``every`` steps;
    hidden : the GRU's units (16: as good as 64 on the two-factor task at half the time, and
    better on the T-maze's trials; docs/experiments.md).
    """

    steps: int = 2000
    batch_size: int = 64
    min_length: int = 2
    max_length: int = 20
    learning_rate: float = 3e-3
    hidden: int = 16
    objective: str = "closed_form"
    validation: int = 256
    every: int = 100
    seed: int = 0

    def __post_init__(self):
        for name in ("steps", "batch_size", "min_length", "max_length", "hidden", "every"):
            check_integer(name, getattr(self, name), minimum=1)
        check_integer("validation", self.validation, minimum=0)
        check_integer("seed", self.seed, minimum=0)
        if self.max_length < self.min_length:
            raise ValueError(f"max_length: {self.max_length} is below min_length {self.min_length}")
        check_number("learning_rate", self.learning_rate, minimum=0, exclusive_minimum=True)
        if self.objective not in ("closed_form", "pyro"):
            raise ValueError(f"objective: {self.objective!r} is not one of ('closed_form', 'pyro')")


def random_sequences(model: GenerativeModel, N: int, T: int, generator: torch.Generator):
    """N sequences of T steps drawn from the program under uniformly random actions: validated
    ``Sequences`` (the actions from ``generator``, the program's draws from Pyro's seed)."""
    columns = [
        torch.randint(U, (N, T - 1), generator=generator).to(model.device)
        for U in model.num_controls
    ]
    actions = torch.stack(columns, -1)
    observations, _ = sample_sequences(model, actions)
    return prepare_sequences(model, observations, actions)


def train_amortised_guide(
    model: GenerativeModel,
    settings: AmortisedTraining | None = None,
    *,
    progress: Callable[[str], None] | None = None,
    **overrides,
) -> tuple[AmortisedGuide, dict]:
    """Train an amortised guide for ``model`` by SVI (see the module docstring).

    settings : AmortisedTraining (keyword overrides of its fields are accepted too); progress :
    called with a line every ``every`` steps (e.g. ``print``).

    Returns (guide, record): record has ``loss`` (mean F per step of each training batch),
    ``validation`` (step, mean F per step of the held-out sequences) pairs, ``seconds`` and the
    settings.
    """
    if settings is None:
        settings = AmortisedTraining(**overrides)
    elif overrides:
        settings = AmortisedTraining(**{**asdict(settings), **overrides})
    if not isinstance(model, GenerativeModel):
        raise TypeError(f"model: expected a GenerativeModel, got {type(model).__name__}")
    start = time.perf_counter()
    guide = AmortisedGuide(model, hidden=settings.hidden, seed=settings.seed)
    generator = torch.Generator().manual_seed(settings.seed)
    pyro.set_rng_seed(settings.seed)
    held_out = None
    if settings.validation:
        held_out = random_sequences(model, settings.validation, settings.max_length, generator)
        prepared = prepare(model, held_out)
    amortised = pyro_guide(guide)
    if settings.objective == "pyro":
        loss = TraceEnum_ELBO(max_plate_nesting=1, strict_enumeration_warning=False)
    else:

        def loss(_model, _guide, model, observations, actions):
            pyro.module("amortised_guide", guide)
            sequences = prepare_sequences(model, observations, actions)
            return _free_energy(model, guide, sequences)[1].sum()

    record: dict = {"loss": [], "validation": [], "settings": asdict(settings)}
    with pyro.get_param_store().scope():
        svi = SVI(pomdp, amortised, pyro.optim.Adam({"lr": settings.learning_rate}), loss)
        lengths = torch.randint(
            settings.min_length, settings.max_length + 1, (settings.steps,), generator=generator
        ).tolist()
        for step, T in enumerate(lengths, 1):
            batch = random_sequences(model, settings.batch_size, T, generator)
            value = svi.step(model, batch.observations, batch.actions)
            if not math.isfinite(value):
                raise FloatingPointError(
                    f"train_amortised_guide: the free energy became {value} at step {step}"
                )
            record["loss"].append(value / (settings.batch_size * T))
            if held_out is not None and (step % settings.every == 0 or step == settings.steps):
                with torch.no_grad():
                    F = _free_energy(model, guide, held_out, prepared)[1]
                per_step = float(F.mean()) / settings.max_length
                record["validation"].append((step, per_step))
                if progress is not None:
                    progress(
                        f"step {step}/{settings.steps}: F {record['loss'][-1]:.4f} nats/step "
                        f"(batch), {per_step:.4f} (held out)"
                    )
    record["seconds"] = time.perf_counter() - start
    return guide.eval(), record
