"""Signed behaviours: opinions from ratings and texts, item-level polarity, sequence features."""

import numpy as np
import pytest

from bert_rec.config import ScoringConfig
from bert_rec.data import Behavior
from bert_rec.units import (NEGATIVE, NEUTRAL, POSITIVE, TEXT_KIND, behavior_weights,
                            opinions, pad_units, polarities, user_units)

DAY = 86400.0
SCORING = ScoringConfig(half_life_days=0)  # no recency: weights are type x rating x opinion


def _b(item, behavior, day=0.0, rating=None, text=""):
    return Behavior("u", item, behavior, day * DAY, rating, text)


def test_opinions_from_ratings_and_texts():
    history = [_b("a", "rate", rating=1), _b("a", "rate", rating=5), _b("b", "rate", rating=2.5),
               _b("c", "comment", text="太无聊了"), _b("c", "view")]
    said = opinions(history, SCORING, {"太无聊了": -0.8})
    np.testing.assert_allclose(said[:4], [-0.6, 1.0, 0.0, -0.8])
    assert np.isnan(said[4])  # a view states nothing
    assert np.isnan(opinions(history, SCORING)[3])  # no sentiment head: texts state nothing
    midpoint = ScoringConfig(rating_midpoint=3.0)
    np.testing.assert_allclose(opinions([_b("a", "rate", rating=2)], midpoint), [-0.5])


def test_a_low_rating_turns_the_items_view_and_click_into_dislikes():
    history = [_b("a", "view"), _b("a", "click"), _b("a", "rate", rating=1), _b("b", "view"),
               _b("b", "rate", rating=5)]
    weights, labels = behavior_weights(history, SCORING)
    assert labels == [NEGATIVE] * 3 + [POSITIVE] * 2
    # dislikes weigh -type x |opinion| (0.6); likes type x rating factor as before
    np.testing.assert_allclose(weights, [-0.6, -1.2, -1.8, 1.0, 3.0])
    off, off_labels = behavior_weights(history, ScoringConfig(half_life_days=0, polarity="off"))
    np.testing.assert_allclose(off, [1.0, 2.0, 3.0 * 0.2, 1.0, 3.0])  # the sentiment-blind way
    assert off_labels == [NEUTRAL] * 5


def test_a_complaint_needs_the_sentiment_head_and_mixed_opinions_average():
    history = [_b("a", "view"), _b("a", "comment", text="不好看"), _b("b", "comment", text="还行"),
               _b("c", "rate", rating=4), _b("c", "comment", text="一般")]
    labels, strength = polarities(history, SCORING, {"不好看": -0.9, "还行": 0.05, "一般": -0.7})
    assert labels[:2] == [NEGATIVE, NEGATIVE]
    assert labels[2] == NEUTRAL  # inside the neutral margin (0.1)
    np.testing.assert_allclose(strength[3:], [(0.6 - 0.7) / 2] * 2)  # mean of 0.6 and -0.7
    assert labels[3:] == [NEUTRAL, NEUTRAL]
    assert polarities(history, SCORING)[0] == [NEUTRAL] * 3 + [POSITIVE] * 2  # ratings only


def test_units_carry_signed_weights_owners_and_sequence_features():
    history = [_b("a", "view", 0), _b("a", "comment", 0.5, text="不好看"),
               _b("b", "click", 3), _b("c", "other-name", 10)]
    units = user_units(history, SCORING, {"a": 0, "b": 1, "c": 2}, {"不好看": 3},
                       {"不好看": -0.9})
    assert units.rows.tolist() == [0, 0, 3, 1, 2]
    assert units.owners.tolist() == [0, 1, 1, 2, 3]
    assert (units.weights[:3] < 0).all() and (units.weights[3:] > 0).all()
    assert units.polarity == [NEGATIVE, NEGATIVE, NEUTRAL, NEUTRAL]
    kinds, ages, gaps = units.features.T
    assert kinds.tolist() == [1, 4, TEXT_KIND, 2, 5]
    assert ages.tolist() == [4, 4, 4, 4, 1]  # 1 + floor(log2(1 + days)): 10, 9.5, 9.5, 7, 0
    assert gaps.tolist() == [1, 1, 1, 2, 4]  # days since the previous behaviour: 0, .5, 2.5, 7
    rows, weights, features = pad_units([units, user_units(history[:1], SCORING, {"a": 0}, {})])
    assert rows.shape == weights.shape == (2, 5) and features.shape == (2, 5, 3)
    assert (weights[1, 1:] == 0).all() and (features[1, 1:] == 0).all()


def test_config_refuses_bad_polarity_settings():
    with pytest.raises(ValueError, match="polarity must be one of signed, off"):
        ScoringConfig(polarity="maybe")
    with pytest.raises(ValueError, match="dislike_weight"):
        ScoringConfig(dislike_weight=-1)
    with pytest.raises(ValueError, match="rating_midpoint"):
        ScoringConfig(rating_midpoint=7)
