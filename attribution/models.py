"""Attribution models: how each conversion's value is split, to the fen, over the touchpoints
that led to it. Pure computation without a database: the rule-based models look at one
conversion at a time; the data-driven Markov and Shapley models are fitted on all paths at once.

Money is integer fen. Every model splits a conversion's value over its touches in proportion
to per-touch weights, in whole fen that add up exactly to the value (see `split_value`), so
each conversion reconciles on its own and every credit traces back to one touch. A conversion
without touches credits nobody: its whole value is unattributed.

Rules on the edges of the rule-based models:
- last non-direct touch: the last touch whose channel is not `direct`; if every touch is
  direct, the last touch.
- position-based: 40% first, 40% last, 20% shared by the touches between. One touch gets
  100%; two touches get 50% each.
- W-shaped: the first touch, the lead-creation touch and the opportunity-creation touch (the
  last touch when not given) weigh 30 each, added up where they fall on the same touch; the
  other touches share 10; then the weights are scaled to the whole value. So three touches
  that are all milestones get a third each, one touch gets everything, two touches with the
  lead created at the first get 2/3 and 1/3, and with no lead touch in the window the first
  and opportunity touches get 3/7 each and the rest share 1/7.

The data-driven models weigh each channel (or campaign: whatever key the caller picks):
- Markov: an order-k chain over the paths (converting and not), states being the last k keys,
  absorbing in conversion or in no conversion. A key's removal effect is the relative drop in
  the conversion probability from the start when every state containing the key is removed;
  both probabilities are solved exactly from the absorbing chain's linear system. A
  conversion's value is split over its keys in proportion to their removal effects.
- Shapley: the simplified Shapley value of Zhao et al. (2018), where a coalition of keys is
  worth the value of the conversions whose set of keys lies inside it. It reduces exactly to
  splitting each conversion's value equally over the distinct keys on its path.
In both, a key's share in a path is split equally over the touches that carry it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from functools import cached_property
from typing import Any

import numpy as np
from scipy import sparse
from scipy.sparse.linalg import spsolve

DIRECT_CHANNEL = "direct"
DEFAULT_HALF_LIFE = timedelta(days=7)
# Ties in the largest-remainder rule are broken on fractional parts rounded to 2^-30 fen.
_REMAINDER_RESOLUTION = 2**30


class Model(StrEnum):
    first_touch = "first_touch"
    last_touch = "last_touch"
    last_non_direct = "last_non_direct"
    linear = "linear"
    time_decay = "time_decay"
    position_based = "position_based"
    w_shaped = "w_shaped"
    markov = "markov"
    shapley = "shapley"


@dataclass(frozen=True, slots=True)
class Touch:
    channel: str
    campaign: str | None
    at: datetime


@dataclass(frozen=True, slots=True)
class ConversionPath:
    """One conversion and the touches before it, oldest first; the indexes point into touches."""

    touches: tuple[Touch, ...]
    converted_at: datetime
    value: int
    lead_index: int | None = None
    opportunity_index: int | None = None

    def __post_init__(self) -> None:
        if self.value < 0:
            raise ValueError("a conversion's value cannot be negative")
        times = [touch.at for touch in self.touches]
        if times != sorted(times):
            raise ValueError("touches must be ordered oldest first")
        if times and times[-1] > self.converted_at:
            raise ValueError("a touch cannot come after its conversion")
        for name in ("lead_index", "opportunity_index"):
            index = getattr(self, name)
            if index is not None and not 0 <= index < len(self.touches):
                raise ValueError(f"{name} {index} is not the index of a touch")


def split_value(values: np.ndarray, lengths: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Splits each path's value (fen) over its touches in proportion to their weights.

    `values` and `lengths` have one entry per path, `weights` one per touch, path after path;
    a path worth nothing may weigh nothing.
    Returns whole fen per touch that add up exactly to each path's value: every touch gets the
    floor of its exact share and the fen left over go one each to the touches with the largest
    fractional parts, the earlier touch first on a tie (largest-remainder rule).
    """
    values = np.asarray(values, dtype=np.int64)
    lengths = np.asarray(lengths, dtype=np.int64)
    weights = np.asarray(weights, dtype=np.float64)
    if lengths.sum() != len(weights):
        raise ValueError("there must be one weight per touch")
    if np.any(weights < 0):
        raise ValueError("weights cannot be negative")
    path_of_touch = np.repeat(np.arange(len(lengths)), lengths)
    totals = np.bincount(path_of_touch, weights=weights, minlength=len(lengths))
    if np.any((totals <= 0) & (lengths > 0) & (values != 0)):
        raise ValueError("every path with a value to split needs a positive total weight")
    totals[totals <= 0] = 1.0
    quotas = values[path_of_touch] * (weights / totals[path_of_touch])
    floors = np.floor(quotas).astype(np.int64)
    left_over = values - np.bincount(path_of_touch, weights=floors, minlength=len(lengths)).astype(
        np.int64
    )
    left_over[lengths == 0] = 0
    shortfall = np.rint((1.0 - (quotas - floors)) * _REMAINDER_RESOLUTION).astype(np.int64)
    order = np.argsort(path_of_touch * (_REMAINDER_RESOLUTION + 1) + shortfall, kind="stable")
    offsets = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    rank = np.arange(len(order)) - offsets[path_of_touch[order]]
    credits = floors
    credits[order] += rank < left_over[path_of_touch[order]]
    return credits


@dataclass(frozen=True)
class PathSet:
    """Many paths as flat arrays: the key id of every touch, path after path, the number of
    touches of each path, and how often each path ended in a conversion or without one."""

    names: tuple[str, ...]
    keys: np.ndarray
    lengths: np.ndarray
    conversions: np.ndarray
    nulls: np.ndarray

    def __post_init__(self) -> None:
        if not (len(self.lengths) == len(self.conversions) == len(self.nulls)):
            raise ValueError("lengths, conversions and nulls need one entry per path")
        if self.lengths.sum() != len(self.keys):
            raise ValueError("the lengths must add up to the number of touches")
        if len(self.keys) and (self.keys.min() < 0 or self.keys.max() >= len(self.names)):
            raise ValueError("every key id must name a key")
        if np.any(self.conversions < 0) or np.any(self.nulls < 0):
            raise ValueError("conversions and nulls cannot be negative")
        if np.any(self.conversions + self.nulls <= 0):
            raise ValueError("every path must have been seen at least once")

    @classmethod
    def from_sequences(
        cls, sequences: Sequence[Sequence[str]], converted: Sequence[bool]
    ) -> PathSet:
        ids: dict[str, int] = {}
        keys = [ids.setdefault(key, len(ids)) for sequence in sequences for key in sequence]
        conversions = np.asarray(converted, dtype=np.float64)
        return cls(
            names=tuple(ids),
            keys=np.asarray(keys, dtype=np.int64),
            lengths=np.asarray([len(sequence) for sequence in sequences], dtype=np.int64),
            conversions=conversions,
            nulls=1.0 - conversions,
        )

    @cached_property
    def path_of_touch(self) -> np.ndarray:
        return np.repeat(np.arange(len(self.lengths)), self.lengths)

    @cached_property
    def offsets(self) -> np.ndarray:
        """Where each path's touches start in `keys`, plus the total at the end."""
        return np.concatenate(([0], np.cumsum(self.lengths)))

    @cached_property
    def key_counts(self) -> tuple[np.ndarray, np.ndarray]:
        """For each touch, how many touches of its path carry its key; for each path, how many
        distinct keys it has."""
        codes = self.path_of_touch * len(self.names) + self.keys
        unique, inverse, counts = np.unique(codes, return_inverse=True, return_counts=True)
        distinct = np.bincount(unique // max(len(self.names), 1), minlength=len(self.lengths))
        return counts[inverse], distinct


def markov_removal_effects(paths: PathSet, order: int = 1) -> np.ndarray:
    """The removal effect of every key (indexed like `paths.names`), between 0 and 1."""
    states, contains = _chain_states(paths, order)
    transitions, to_conversion = _transition_probabilities(paths, states, len(contains))
    everything = np.ones(len(contains) + 1, dtype=bool)
    baseline = _conversion_probability(transitions, to_conversion, everything)
    if baseline <= 0:
        return np.zeros(len(paths.names))
    effects = np.empty(len(paths.names))
    for key in range(len(paths.names)):
        kept = np.append(~contains[:, key], True)
        effects[key] = 1.0 - _conversion_probability(transitions, to_conversion, kept) / baseline
    # Solving can land a hair outside [0, 1]; the exact value cannot.
    return np.clip(effects, 0.0, 1.0)


def markov_weights(paths: PathSet, order: int = 1) -> np.ndarray:
    """Per touch: its key's removal effect, shared by the touches of its path with that key."""
    occurrences, _ = paths.key_counts
    return markov_removal_effects(paths, order)[paths.keys] / occurrences


def markov_credits(paths: PathSet, values: np.ndarray, order: int = 1) -> np.ndarray:
    """Fen per touch: each path's value split over its keys by their Markov removal effects."""
    return split_value(values, paths.lengths, markov_weights(paths, order))


def shapley_values(paths: PathSet, values: np.ndarray) -> np.ndarray:
    """Each key's simplified Shapley value: the sum over paths of value / distinct keys."""
    _, distinct = paths.key_counts
    share = np.asarray(values, dtype=np.float64)[paths.path_of_touch] * shapley_weights(paths)
    return np.bincount(
        paths.keys, weights=share / distinct[paths.path_of_touch], minlength=len(paths.names)
    )


def shapley_weights(paths: PathSet) -> np.ndarray:
    """Per touch: one share per distinct key of its path, split over the touches with that key."""
    occurrences, _ = paths.key_counts
    return 1.0 / occurrences


def shapley_credits(paths: PathSet, values: np.ndarray) -> np.ndarray:
    """Fen per touch: each path's value split equally over its distinct keys."""
    return split_value(values, paths.lengths, shapley_weights(paths))


def _chain_states(paths: PathSet, order: int) -> tuple[np.ndarray, np.ndarray]:
    """The chain state of every touch (the last `order` keys up to it, as a state id) and, per
    state, which keys it contains."""
    if order < 1:
        raise ValueError("the Markov order must be at least 1")
    base = len(paths.names) + 1  # digit len(names) stands for 'before the first touch'
    if base**order >= 2**62:
        raise ValueError("too many keys for a Markov chain of this order")
    position = np.arange(len(paths.keys)) - paths.offsets[paths.path_of_touch]
    codes = paths.keys.copy()
    for back in range(1, order):
        earlier = paths.keys[np.maximum(np.arange(len(paths.keys)) - back, 0)]
        codes += np.where(position >= back, earlier, base - 1) * base**back
    unique, states = np.unique(codes, return_inverse=True)
    contains = np.zeros((len(unique), len(paths.names)), dtype=bool)
    for back in range(order):
        digits = unique // base**back % base
        real = digits < base - 1
        contains[np.flatnonzero(real), digits[real]] = True
    return states, contains


def _transition_probabilities(
    paths: PathSet, states: np.ndarray, state_count: int
) -> tuple[sparse.csr_array, np.ndarray]:
    """Transition probabilities between transient states (the chain's states, then the start)
    and each transient state's probability of converting next."""
    start = state_count
    seen = paths.conversions + paths.nulls
    has_touches = paths.lengths > 0
    firsts = paths.offsets[:-1][has_touches]
    lasts = paths.offsets[1:][has_touches] - 1
    is_last = np.zeros(len(paths.keys), dtype=bool)
    is_last[lasts] = True
    inner = np.flatnonzero(~is_last)
    sources = np.concatenate((np.full(len(firsts), start), states[inner]))
    targets = np.concatenate((states[firsts], states[inner + 1]))
    counts = np.concatenate((seen[has_touches], seen[paths.path_of_touch[inner]]))
    moves = sparse.coo_array((counts, (sources, targets)), shape=(start + 1, start + 1)).tocsr()

    ends = np.append(states[lasts], np.full(int((~has_touches).sum()), start))
    end_order = np.concatenate((np.flatnonzero(has_touches), np.flatnonzero(~has_touches)))
    to_conversion = np.bincount(ends, weights=paths.conversions[end_order], minlength=start + 1)
    to_nothing = np.bincount(ends, weights=paths.nulls[end_order], minlength=start + 1)
    leaving = moves.sum(axis=1) + to_conversion + to_nothing
    leaving[leaving == 0] = 1.0  # the start when there are no paths at all
    scale = sparse.diags_array(1.0 / leaving)
    return (scale @ moves).tocsr(), to_conversion / leaving


def _conversion_probability(
    transitions: sparse.csr_array, to_conversion: np.ndarray, kept: np.ndarray
) -> float:
    """Probability of reaching conversion from the start (the last state) when only the kept
    states exist: x = Qx + r solved as (I - Q)x = r over the kept states."""
    kept_ids = np.flatnonzero(kept)
    among_kept = transitions[kept_ids][:, kept_ids].tocsc()
    system = sparse.identity(len(kept_ids), format="csc") - among_kept
    solution = np.atleast_1d(spsolve(system, to_conversion[kept_ids]))
    return float(solution[-1])


KeyOf = Callable[[Touch], str]


def channel_key(touch: Touch) -> str:
    return touch.channel


def _rule_weights(path: ConversionPath, model: Model, half_life: timedelta) -> list[float]:
    touches = path.touches
    n = len(touches)
    if n == 0:
        return []
    if model is Model.linear:
        return [1.0] * n
    if model is Model.time_decay:
        ages = [(path.converted_at - touch.at).total_seconds() for touch in touches]
        youngest = min(ages)
        # Relative to the youngest touch so that long gaps cannot underflow every weight.
        return [2.0 ** (-(age - youngest) / half_life.total_seconds()) for age in ages]
    if model is Model.position_based:
        if n <= 2:
            return [1.0] * n
        return [0.4, *([0.2 / (n - 2)] * (n - 2)), 0.4]
    if model is Model.w_shaped:
        return _w_shaped_weights(path)
    weights = [0.0] * n
    if model is Model.first_touch:
        weights[0] = 1.0
    elif model is Model.last_touch:
        weights[-1] = 1.0
    elif model is Model.last_non_direct:
        non_direct = [i for i, touch in enumerate(touches) if touch.channel != DIRECT_CHANNEL]
        weights[non_direct[-1] if non_direct else -1] = 1.0
    else:
        raise ValueError(f"{model} is not a rule-based model")
    return weights


def _w_shaped_weights(path: ConversionPath) -> list[float]:
    n = len(path.touches)
    milestones = [0, n - 1 if path.opportunity_index is None else path.opportunity_index]
    if path.lead_index is not None:
        milestones.append(path.lead_index)
    weights = [0.0] * n
    for index in milestones:
        weights[index] += 30.0
    others = [i for i in range(n) if weights[i] == 0]
    for index in others:
        weights[index] = 10.0 / len(others)
    return weights


def touch_weights(
    conversions: Sequence[ConversionPath],
    model: Model,
    *,
    key: KeyOf = channel_key,
    non_converting: Sequence[Sequence[Touch]] = (),
    half_life: timedelta = DEFAULT_HALF_LIFE,
    order: int = 1,
) -> np.ndarray:
    """The model's weight of every touch of every conversion, flat, path after path; a
    conversion's share of a touch is its weight over the path's total.

    `key` groups touches for the data-driven models (channel by default, or campaign);
    `non_converting` are paths that ended without a conversion, which only Markov learns from.
    """
    if half_life <= timedelta(0):
        raise ValueError("the half-life must be positive")
    if model not in (Model.markov, Model.shapley):
        rule = [w for path in conversions for w in _rule_weights(path, model, half_life)]
        return np.asarray(rule, dtype=np.float64)
    sequences = [[key(touch) for touch in path.touches] for path in conversions]
    sequences += [[key(touch) for touch in touches] for touches in non_converting]
    converted = [True] * len(conversions) + [False] * len(non_converting)
    paths = PathSet.from_sequences(sequences, converted)
    weights = markov_weights(paths, order) if model is Model.markov else shapley_weights(paths)
    return weights[: sum(len(path.touches) for path in conversions)]


def attribute(
    conversions: Sequence[ConversionPath],
    model: Model,
    **options: Any,
) -> list[list[int]]:
    """Fen per touch of every conversion under the model (options as for `touch_weights`);
    each list sums to the conversion's value, or is empty when it has no touches."""
    weights = touch_weights(conversions, model, **options)
    lengths = np.asarray([len(path.touches) for path in conversions], dtype=np.int64)
    values = np.asarray([path.value for path in conversions], dtype=np.int64)
    flat = split_value(values, lengths, weights)
    starts = np.concatenate(([0], np.cumsum(lengths)))
    return [flat[starts[i] : starts[i + 1]].tolist() for i in range(len(conversions))]
