"""The attribution models on hand-computed cases, and the properties every model keeps."""

from __future__ import annotations

import itertools
import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attribution.models import (
    ConversionPath,
    Model,
    PathSet,
    Touch,
    attribute,
    markov_credits,
    markov_removal_effects,
    shapley_credits,
    shapley_values,
    split_value,
)

T0 = datetime(2026, 3, 1, tzinfo=UTC)


def touch(channel: str, day: float = 0, campaign: str | None = None) -> Touch:
    return Touch(channel, campaign, T0 + timedelta(days=day))


def conversion(
    channels: Sequence[str],
    value: int,
    *,
    lead: int | None = None,
    opportunity: int | None = None,
) -> ConversionPath:
    """Touches one day apart, the conversion a day after the last."""
    touches = tuple(touch(channel, day) for day, channel in enumerate(channels))
    return ConversionPath(touches, T0 + timedelta(days=len(channels)), value, lead, opportunity)


def credits(model: Model, path: ConversionPath, **options: object) -> list[int]:
    return attribute([path], model, **options)[0]


# Single-touch models


def test_first_and_last_touch_take_everything() -> None:
    path = conversion(["paid_search", "email", "direct"], 1000)
    assert credits(Model.first_touch, path) == [1000, 0, 0]
    assert credits(Model.last_touch, path) == [0, 0, 1000]


def test_last_non_direct_skips_direct_touches_at_the_end() -> None:
    path = conversion(["paid_search", "email", "direct", "direct"], 1000)
    assert credits(Model.last_non_direct, path) == [0, 1000, 0, 0]


def test_last_non_direct_falls_back_to_the_last_touch_when_all_are_direct() -> None:
    path = conversion(["direct", "direct"], 1000)
    assert credits(Model.last_non_direct, path) == [0, 1000]


# Multi-touch rule-based models


def test_linear_splits_equally_and_gives_left_over_fen_to_the_earliest() -> None:
    assert credits(Model.linear, conversion(["a", "b", "c"], 10000)) == [3334, 3333, 3333]
    assert credits(Model.linear, conversion(["a", "b", "c"], 2)) == [1, 1, 0]


def test_time_decay_halves_the_weight_every_half_life() -> None:
    """Touches 14, 7 and 0 days before the conversion weigh 1/4, 1/2 and 1: shares 1/7, 2/7,
    4/7 of 700 fen."""
    touches = (touch("a", 0), touch("b", 7), touch("c", 14))
    path = ConversionPath(touches, T0 + timedelta(days=14), 700)
    assert credits(Model.time_decay, path) == [100, 200, 400]


def test_time_decay_half_life_is_configurable() -> None:
    """With a one-day half-life, touches 2 days and 0 days old weigh 1/4 and 1: 1/5 and 4/5."""
    path = ConversionPath((touch("a", 0), touch("b", 2)), T0 + timedelta(days=2), 500)
    assert credits(Model.time_decay, path, half_life=timedelta(days=1)) == [100, 400]


def test_time_decay_keeps_all_credit_on_a_recent_touch_after_a_very_long_gap() -> None:
    path = ConversionPath((touch("a", 0), touch("b", 90)), T0 + timedelta(days=90), 500)
    assert credits(Model.time_decay, path, half_life=timedelta(minutes=1)) == [0, 500]


def test_position_based_is_40_20_40() -> None:
    assert credits(Model.position_based, conversion(["a", "b", "c"], 1000)) == [400, 200, 400]
    # The middle 20% is shared: 66.67 each, the 2 left-over fen to the earliest middle touches.
    assert credits(Model.position_based, conversion(list("abcde"), 1000)) == [
        400,
        67,
        67,
        66,
        400,
    ]


def test_position_based_with_one_and_two_touches() -> None:
    assert credits(Model.position_based, conversion(["a"], 999)) == [999]
    assert credits(Model.position_based, conversion(["a", "b"], 1000)) == [500, 500]


def test_w_shaped_gives_30_to_each_milestone_and_10_to_the_rest() -> None:
    path = conversion(list("abcde"), 1000, lead=2, opportunity=4)
    assert credits(Model.w_shaped, path) == [300, 50, 300, 50, 300]


def test_w_shaped_opportunity_defaults_to_the_last_touch() -> None:
    path = conversion(list("abcd"), 1000, lead=1)
    assert credits(Model.w_shaped, path) == [300, 300, 100, 300]


def test_w_shaped_degenerate_cases() -> None:
    assert credits(Model.w_shaped, conversion(["a"], 700, lead=0, opportunity=0)) == [700]
    # Three milestones and no other touch: the 10% has no one to go to, a third each.
    assert credits(Model.w_shaped, conversion(list("abc"), 900, lead=1, opportunity=2)) == [
        300,
        300,
        300,
    ]
    # The lead created at the first touch: that touch weighs 60, the opportunity touch 30.
    assert credits(Model.w_shaped, conversion(["a", "b"], 300, lead=0, opportunity=1)) == [200, 100]
    # No lead touch in the window: 30, 10, 30 scaled to the whole value.
    assert credits(Model.w_shaped, conversion(list("abc"), 700)) == [300, 100, 300]


# Markov


def test_markov_removal_effects_of_a_three_channel_example_worked_by_hand() -> None:
    """Paths: A→B→conv, A→C→conv, B→C→null, C→conv.

    Transition probabilities: start→A 2/4, start→B 1/4, start→C 1/4; A→B 1/2, A→C 1/2;
    B→conv 1/2, B→C 1/2; C→conv 2/3, C→null 1/3.
    Conversion probabilities p(state): p(C) = 2/3, p(B) = 1/2 + 1/2·2/3 = 5/6,
    p(A) = 1/2·5/6 + 1/2·2/3 = 3/4, p(start) = 1/2·3/4 + 1/4·5/6 + 1/4·2/3 = 3/4.
    Without A (start→A leads nowhere): p(start) = 1/4·5/6 + 1/4·2/3 = 3/8,
    removal effect 1 - (3/8)/(3/4) = 1/2.
    Without B: p(A) = 1/2·2/3 = 1/3, p(start) = 1/2·1/3 + 1/4·2/3 = 1/3, effect 1 - 4/9 = 5/9.
    Without C: p(B) = 1/2, p(A) = 1/4, p(start) = 1/2·1/4 + 1/4·1/2 = 1/4, effect 1 - 1/3 = 2/3.
    """
    paths = PathSet.from_sequences(
        [["A", "B"], ["A", "C"], ["B", "C"], ["C"]], [True, True, False, True]
    )
    assert paths.names == ("A", "B", "C")
    effects = markov_removal_effects(paths)
    assert effects == pytest.approx([1 / 2, 5 / 9, 2 / 3], abs=1e-12)


def test_markov_credits_split_each_conversion_by_removal_effects() -> None:
    """With the effects above: A→B splits 1/2 : 5/9 = 9 : 10, A→C splits 1/2 : 2/3 = 3 : 4."""
    conversions = [conversion(["A", "B"], 1900), conversion(["A", "C"], 700), conversion(["C"], 5)]
    assert attribute(conversions, Model.markov, non_converting=[[touch("B"), touch("C")]]) == [
        [900, 1000],
        [300, 400],
        [5],
    ]


def test_markov_order_two_is_exact_on_paths_no_longer_than_the_order() -> None:
    """When every path fits in a state, the chain reproduces the paths: P = 3/4 converting, and
    removing a key keeps only the paths without it: without A 1/4 (effect 2/3), without B 2/4
    (effect 1/3), without C 1/4 (effect 2/3)."""
    paths = PathSet.from_sequences(
        [["A", "B"], ["A", "C"], ["B", "C"], ["C"]], [True, True, False, True]
    )
    assert markov_removal_effects(paths, order=2) == pytest.approx([2 / 3, 1 / 3, 2 / 3])


def test_markov_splits_a_key_share_over_its_repeated_touches() -> None:
    """Paths A→B→A→conv and B→null: start→A 1/2, start→B 1/2, A→B 1/2, A→conv 1/2, B→A 1/2,
    B→null 1/2. p(A) = 1/2·p(B) + 1/2 and p(B) = 1/2·p(A) give p(A) = 2/3, p(B) = 1/3 and
    p(start) = 1/2. Without A nothing converts (effect 1); without B p(start) = 1/4 (effect 1/2).
    A's weight 1 is shared by its two touches, so the three touches weigh 1/2 each."""
    paths = PathSet.from_sequences([["A", "B", "A"], ["B"]], [True, False])
    assert markov_removal_effects(paths) == pytest.approx([1.0, 0.5])
    assert markov_credits(paths, np.array([900, 0])).tolist() == [300, 300, 300, 0]


def test_markov_without_conversions_has_no_removal_effect() -> None:
    paths = PathSet.from_sequences([["A"], ["B"]], [False, False])
    assert markov_removal_effects(paths).tolist() == [0.0, 0.0]


def test_markov_counts_conversions_without_touches_in_the_baseline() -> None:
    """A converts 1 of 2 times and a touchless path converts: P = 2/3, without A 1/3."""
    paths = PathSet.from_sequences([["A"], ["A"], []], [True, False, True])
    assert markov_removal_effects(paths) == pytest.approx([0.5])


def test_markov_rejects_order_zero() -> None:
    with pytest.raises(ValueError, match="order"):
        markov_removal_effects(PathSet.from_sequences([["A"]], [True]), order=0)


def _reference_removal_effects(
    sequences: list[list[str]], converted: list[bool], order: int
) -> dict[str, float]:
    """The same chain written plainly with dicts and solved exactly with fractions."""
    start: tuple[str, ...] = ()
    conv, null = "<conversion>", "<null>"
    moves: dict[tuple[str, ...], Counter[object]] = defaultdict(Counter)
    for sequence, did_convert in zip(sequences, converted, strict=True):
        state = start
        for i in range(len(sequence)):
            following = tuple(sequence[max(0, i - order + 1) : i + 1])
            moves[state][following] += 1
            state = following
        moves[state][conv if did_convert else null] += 1

    def probability(removed: str | None) -> Fraction:
        """p(s) = Σ P(s→t)·p(t), solved exactly by Gauss-Jordan elimination over fractions."""
        states = [state for state in moves if removed not in state]
        column = {state: i for i, state in enumerate(states)}
        rows = []
        for state in states:
            outs = moves[state]
            total = sum(outs.values())
            row = [Fraction(0)] * (len(states) + 1)
            row[column[state]] += 1
            for target, n in outs.items():
                if target == conv:
                    row[-1] += Fraction(n, total)
                elif target in column:
                    row[column[target]] -= Fraction(n, total)
            rows.append(row)
        for i in range(len(rows)):
            pivot = next(r for r in range(i, len(rows)) if rows[r][i] != 0)
            rows[i], rows[pivot] = rows[pivot], rows[i]
            rows[i] = [x / rows[i][i] for x in rows[i]]
            for r in range(len(rows)):
                if r != i and rows[r][i] != 0:
                    rows[r] = [a - rows[r][i] * b for a, b in zip(rows[r], rows[i], strict=True)]
        return rows[column[start]][-1]

    baseline = probability(None)
    keys = {key for sequence in sequences for key in sequence}
    return {key: float(1 - probability(key) / baseline) for key in keys}


path_lists = st.lists(
    st.tuples(st.lists(st.sampled_from("ABCD"), max_size=5), st.booleans()),
    min_size=1,
    max_size=12,
).filter(lambda rows: any(converted for _, converted in rows))


@settings(max_examples=60, deadline=None)
@given(rows=path_lists, order=st.integers(1, 3))
def test_markov_removal_effects_match_a_plain_reference_chain(
    rows: list[tuple[list[str], bool]], order: int
) -> None:
    sequences = [sequence for sequence, _ in rows]
    converted = [did for _, did in rows]
    paths = PathSet.from_sequences(sequences, converted)
    effects = dict(zip(paths.names, markov_removal_effects(paths, order), strict=True))
    expected = _reference_removal_effects(sequences, converted, order)
    assert effects == pytest.approx(expected, abs=1e-9)


# Shapley


def _brute_force_shapley(paths: list[tuple[frozenset[str], int]]) -> dict[str, Fraction]:
    """Shapley values by definition: average marginal worth over every order of the keys,
    a coalition being worth the value of the paths whose key set lies inside it."""
    keys = sorted(set().union(*(keys for keys, _ in paths)))

    def worth(coalition: set[str]) -> int:
        return sum(value for path_keys, value in paths if path_keys <= coalition)

    totals = dict.fromkeys(keys, Fraction(0))
    orders = list(itertools.permutations(keys))
    for ordering in orders:
        coalition: set[str] = set()
        for key in ordering:
            before = worth(coalition)
            coalition.add(key)
            totals[key] += worth(coalition) - before
    return {key: total / len(orders) for key, total in totals.items()}


def test_shapley_values_of_a_hand_computed_example() -> None:
    """{A,B} worth 600, {A} 300, {B,C} 900: A = 600/2 + 300 = 600, B = 300 + 450, C = 450."""
    paths = PathSet.from_sequences([["A", "B"], ["A"], ["B", "C", "B"]], [True, True, True])
    values = np.array([600, 300, 900])
    assert shapley_values(paths, values).tolist() == [600, 750, 450]
    assert shapley_credits(paths, values).tolist() == [300, 300, 300, 225, 450, 225]


@settings(max_examples=60, deadline=None)
@given(
    rows=st.lists(
        st.tuples(st.lists(st.sampled_from("ABCD"), min_size=1, max_size=5), st.integers(0, 10**6)),
        min_size=1,
        max_size=10,
    )
)
def test_shapley_values_equal_the_definition(rows: list[tuple[list[str], int]]) -> None:
    paths = PathSet.from_sequences([sequence for sequence, _ in rows], [True] * len(rows))
    values = np.array([value for _, value in rows])
    expected = _brute_force_shapley([(frozenset(sequence), value) for sequence, value in rows])
    got = dict(zip(paths.names, shapley_values(paths, values), strict=True))
    assert got == pytest.approx({key: float(value) for key, value in expected.items()})


# Splitting money


def test_split_value_gives_nothing_to_paths_without_touches() -> None:
    assert split_value(np.array([500, 7]), np.array([0, 1]), np.array([1.0])).tolist() == [7]


def test_split_value_rejects_bad_weights() -> None:
    with pytest.raises(ValueError, match="negative"):
        split_value(np.array([1]), np.array([2]), np.array([1.0, -1.0]))
    with pytest.raises(ValueError, match="positive total weight"):
        split_value(np.array([1]), np.array([2]), np.array([0.0, 0.0]))
    assert split_value(np.array([0]), np.array([2]), np.array([0.0, 0.0])).tolist() == [0, 0]
    with pytest.raises(ValueError, match="one weight per touch"):
        split_value(np.array([1]), np.array([2]), np.array([1.0]))


@settings(max_examples=200, deadline=None)
@given(
    paths=st.lists(
        st.tuples(
            st.integers(0, 10**12),
            st.lists(st.floats(0.001, 1000, allow_nan=False), min_size=1, max_size=8),
        ),
        min_size=1,
        max_size=10,
    )
)
def test_split_value_sums_exactly_and_rounds_each_share_by_less_than_a_fen(
    paths: list[tuple[int, list[float]]],
) -> None:
    values = np.array([value for value, _ in paths])
    lengths = np.array([len(weights) for _, weights in paths])
    flat = split_value(values, lengths, np.array([w for _, weights in paths for w in weights]))
    start = 0
    for value, weights in paths:
        share = flat[start : start + len(weights)].tolist()
        start += len(weights)
        assert sum(share) == value
        for fen, weight in zip(share, weights, strict=True):
            exact = Fraction(value) * Fraction(weight) / sum(map(Fraction, weights))
            assert math.floor(exact) - 1 <= fen <= math.ceil(exact) + 1
            assert abs(fen - exact) < 1 + Fraction(1, 10**6)


# Every model


@st.composite
def conversion_paths(draw: st.DrawFn) -> ConversionPath:
    channels = draw(
        st.lists(st.sampled_from(["direct", "email", "paid_search", "sms"]), max_size=6)
    )
    gaps = draw(st.lists(st.integers(0, 40 * 24), min_size=len(channels), max_size=len(channels)))
    hours = list(itertools.accumulate(gaps))
    touches = tuple(
        Touch(channel, None, T0 + timedelta(hours=h))
        for channel, h in zip(channels, hours, strict=True)
    )
    end = T0 + timedelta(hours=(hours[-1] if hours else 0) + draw(st.integers(0, 100)))
    index = st.none() | st.integers(0, len(touches) - 1) if touches else st.none()
    return ConversionPath(touches, end, draw(st.integers(0, 10**10)), draw(index), draw(index))


@settings(max_examples=80, deadline=None)
@given(paths=st.lists(conversion_paths(), min_size=1, max_size=8), model=st.sampled_from(Model))
def test_every_model_credits_each_conversion_exactly_its_value(
    paths: list[ConversionPath], model: Model
) -> None:
    result = attribute(paths, model, non_converting=[[touch("email")]])
    assert len(result) == len(paths)
    for path, fen in zip(paths, result, strict=True):
        assert len(fen) == len(path.touches)
        assert all(credit >= 0 for credit in fen)
        assert sum(fen) == (path.value if path.touches else 0)


def test_data_driven_models_group_touches_by_the_key_given() -> None:
    """By channel the path has two keys (email twice, paid_search): 1/4, 1/4, 1/2. By campaign
    it has three: a third each."""
    touches = (touch("email", 0, "spring"), touch("email", 1, "autumn"), touch("paid_search", 2))
    paths = [ConversionPath(touches, T0 + timedelta(days=3), 100)]
    by_campaign = attribute(paths, Model.shapley, key=lambda t: t.campaign or t.channel)
    assert attribute(paths, Model.shapley) == [[25, 25, 50]]
    assert by_campaign == [[34, 33, 33]]


def test_conversion_paths_are_validated() -> None:
    with pytest.raises(ValueError, match="negative"):
        conversion(["a"], -1)
    with pytest.raises(ValueError, match="oldest first"):
        ConversionPath((touch("a", 2), touch("b", 1)), T0 + timedelta(days=3), 1)
    with pytest.raises(ValueError, match="after its conversion"):
        ConversionPath((touch("a", 2),), T0, 1)
    with pytest.raises(ValueError, match="lead_index 3"):
        conversion(["a"], 1, lead=3)
    with pytest.raises(ValueError, match="half-life"):
        attribute([conversion(["a"], 1)], Model.time_decay, half_life=timedelta(0))


def test_no_conversions_give_no_credits() -> None:
    assert attribute([], Model.markov) == []
    assert attribute([], Model.linear) == []
