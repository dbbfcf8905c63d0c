"""FERPlus label schemes against vote rows computed by hand from Microsoft's reference rules."""

from __future__ import annotations

import numpy as np
import pytest

from ferflow.config import CLASS_SETS, FERPLUS_VOTE_COLUMNS, LabelScheme
from ferflow.labels import drop_single_votes, scheme_distribution, targets_for_votes, to_class_set

M, P, C, T = LabelScheme.MAJORITY, LabelScheme.PROBABILITY, LabelScheme.CROSSENTROPY, LabelScheme.MULTI_TARGET


def votes(**counts: int) -> np.ndarray:
    row = np.zeros(10)
    for name, n in counts.items():
        row[FERPLUS_VOTE_COLUMNS.index(name)] = n
    return row


def dist(**shares: float) -> np.ndarray:
    return votes(**shares)  # same layout, fractional values


def test_single_votes_are_outliers() -> None:
    assert drop_single_votes(votes(neutral=7, anger=1, fear=2)).tolist() == votes(neutral=7, fear=2).tolist()


def test_majority_clear_winner() -> None:
    np.testing.assert_allclose(scheme_distribution(votes(neutral=6, happiness=4), M), dist(neutral=1.0))


def test_majority_counts_only_after_outlier_removal() -> None:
    # 5 of 10 is no majority, but after dropping the three single votes it is 5 of 7
    row = votes(sadness=5, anger=2, fear=1, disgust=1, contempt=1)
    np.testing.assert_allclose(scheme_distribution(row, M), dist(sadness=1.0))


def test_majority_tie_is_dropped() -> None:
    assert scheme_distribution(votes(neutral=5, happiness=5), M) is None


def test_majority_unknown_or_not_face_winner_is_dropped() -> None:
    assert scheme_distribution(votes(unknown=6, neutral=4), M) is None
    assert scheme_distribution(votes(NF=10), M) is None


def test_probability_takes_top_emotions_until_75_percent() -> None:
    # 6 + 3 = 9 of 10 >= 75 % after two emotions; the single vote was already dropped
    np.testing.assert_allclose(
        scheme_distribution(votes(neutral=6, sadness=3, anger=1), P), dist(neutral=6 / 9, sadness=3 / 9)
    )


def test_crossentropy_equals_probability_targets() -> None:
    # 4 + 4 = 8 of 10 covers 75 % after the tie, so neutral's 2 votes are not taken
    row = votes(happiness=4, surprise=4, neutral=2)
    np.testing.assert_allclose(scheme_distribution(row, C), scheme_distribution(row, P))
    np.testing.assert_allclose(scheme_distribution(row, P), dist(happiness=0.5, surprise=0.5))


def test_probability_tie_takes_every_tied_emotion() -> None:
    # 4 covers 40 %; the next peak 3 is tied: both taken (count 3), covering 100 %
    got = scheme_distribution(votes(neutral=4, sadness=3, anger=3), P)
    np.testing.assert_allclose(got, dist(neutral=0.4, sadness=0.3, anger=0.3))


def test_probability_stops_at_unknown_after_an_emotion() -> None:
    # neutral 4 first; next peak 3 is shared by sadness and unknown: sadness taken, unknown
    # reached -> unknown zeroed (emotions came first) and the loop stops at 7 of 10 covered
    got = scheme_distribution(votes(neutral=4, sadness=3, unknown=3), P)
    np.testing.assert_allclose(got, dist(neutral=4 / 7, sadness=3 / 7))


def test_probability_unknown_first_is_dropped() -> None:
    assert scheme_distribution(votes(unknown=5, neutral=3, sadness=2), P) is None


def test_probability_too_many_tied_emotions_dropped() -> None:
    # four emotions tied at 2: count reaches 4 > 3 -> discard
    assert scheme_distribution(votes(neutral=2, sadness=2, anger=2, fear=2, disgust=2), P) is None


def test_multi_target_keeps_emotions_above_30_percent() -> None:
    got = scheme_distribution(votes(anger=4, disgust=4, sadness=2), T)
    np.testing.assert_allclose(got, dist(anger=0.5, disgust=0.5))


def test_multi_target_under_half_covered_is_dropped() -> None:
    # after outliers: 3,2,2,2 of 9 -> only anger (3 >= 2.7) is a target, covering 3/9 < 50 %
    assert scheme_distribution(votes(anger=3, disgust=2, sadness=2, fear=2, neutral=1), T) is None


def test_all_single_votes_leave_nothing() -> None:
    row = votes(
        neutral=1, happiness=1, surprise=1, sadness=1, anger=1, disgust=1, fear=1, contempt=1, unknown=1, NF=1
    )
    for scheme in LabelScheme:
        assert scheme_distribution(row, scheme) is None


def test_class_subset_drops_outside_emotions_and_renormalises() -> None:
    clinical = CLASS_SETS["clinical4"]  # neutral, happiness, sadness, anger
    assert to_class_set(dist(surprise=1.0), clinical) is None
    np.testing.assert_allclose(to_class_set(dist(sadness=0.6, fear=0.4), clinical), [0, 0, 1.0, 0])


def test_grouped_class_set_sums_mapped_emotions() -> None:
    valence = CLASS_SETS["valence3"]  # negative, neutral, positive
    np.testing.assert_allclose(
        to_class_set(dist(happiness=0.5, surprise=0.3, sadness=0.2), valence), [0.2, 0, 0.8]
    )


def test_fer2013_set_has_no_contempt() -> None:
    assert to_class_set(dist(contempt=1.0), CLASS_SETS["fer2013"]) is None


@pytest.mark.parametrize("scheme", list(LabelScheme))
def test_targets_are_distributions(scheme: LabelScheme) -> None:
    rows = np.array([votes(neutral=6, happiness=4), votes(unknown=9, neutral=1), votes(anger=5, disgust=5)])
    targets, keep = targets_for_votes(rows, scheme, CLASS_SETS["ferplus8"])
    assert keep[0] and not keep[1]
    np.testing.assert_allclose(targets.sum(axis=1), 1.0, rtol=1e-6)
