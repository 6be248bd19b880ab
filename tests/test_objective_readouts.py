"""Objectives over many outputs: weighted sums, contrasts, set means, population patterns."""
import numpy as np
import pytest

from stimopt.errors import StimoptError
from stimopt.objective import Objective

R = np.array([[3.0, 1.0, 5.0], [2.0, 4.0, 0.0]])


def test_a_minus_b_really_subtracts_b():
    obj = Objective("max", weights=[1, -1])
    base, _ = obj(np.array([[3.0, 1.0]]))
    more_b, _ = obj(np.array([[3.0, 2.5]]))
    assert base[0] == pytest.approx(2.0)
    assert more_b[0] - base[0] == pytest.approx(-1.5)  # raising b by 1.5 lowers the response by 1.5


def test_contrast_drives_a_and_suppresses_b_with_direction_applied_once():
    obj = Objective("max", maximize=[0], suppress=[1, 2], suppress_weight=0.5)
    response, score = obj(R)
    np.testing.assert_allclose(response, [3 - 0.5 * 3, 2 - 0.5 * 2])
    np.testing.assert_allclose(score, response)
    rmin, smin = Objective("min", maximize=[0], suppress=[1, 2], suppress_weight=0.5)(R)
    np.testing.assert_allclose(rmin, response)  # the response is the same read-out...
    np.testing.assert_allclose(smin, -response)  # ...the direction flips the score, once


def test_mean_over_a_set_and_general_terms():
    np.testing.assert_allclose(Objective(select=[0, 2]).combine(R), [4.0, 1.0])
    terms = Objective(terms=[{"outputs": [0], "weight": 2.0}, {"outputs": [1, 2], "weight": -1.0}])
    np.testing.assert_allclose(terms.combine(R), [2 * 3 - 3, 2 * 2 - 2])
    np.testing.assert_allclose(Objective().combine(R), R.mean(1))
    np.testing.assert_allclose(Objective(select=[0]).combine(np.array([7.0, 8.0])), [7.0, 8.0])


def test_pattern_closeness_peaks_at_the_pattern():
    obj = Objective("max", pattern=[3.0, 1.0, 5.0])
    resp, score = obj(np.vstack([R, [[3.0, 1.0, 5.0]]]))
    assert resp[2] == pytest.approx(0.0) and resp[0] == pytest.approx(0.0)
    assert resp[1] < 0 and score.argmax() in (0, 2)
    sub = Objective(pattern=[2.0, 4.0], pattern_outputs=[0, 1]).combine(R)
    assert sub[1] == pytest.approx(0.0) and sub[0] < 0
    corr = Objective(pattern=[6.0, 2.0, 10.0], pattern_metric="correlation").combine(R)
    assert corr[0] == pytest.approx(1.0)


def test_missing_outputs_stay_missing():
    r = np.array([[1.0, np.nan], [1.0, 2.0]])
    resp, score = Objective(maximize=[0], suppress=[1])(r)
    assert np.isnan(resp[0]) and np.isnan(score[0]) and resp[1] == pytest.approx(-1.0)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"weights": [1, -1], "select": [0]}, "choose one read-out"),
        ({"select": [0, 5]}, "reads output 5"),
        ({"suppress": [1]}, "suppress needs maximize"),
        ({"select": ["a"]}, "output indices"),
        ({"pattern": [1, 2], "pattern_metric": "l1"}, "pattern_metric"),
        ({"pattern": [1.0, 2.0]}, "pattern has 2 values"),
    ],
)
def test_bad_objectives_fail_with_one_line(kwargs, message):
    with pytest.raises(StimoptError, match=message):
        Objective(**kwargs).combine(R)


@pytest.mark.parametrize("name", ["single", "weighted", "mean", "contrast", "terms", "pattern"])
def test_every_objective_config_composes_and_builds(compose, name):
    from omegaconf import OmegaConf

    cfg = compose([f"objective={name}"])
    obj = Objective(cfg.direction, **OmegaConf.to_container(cfg.objective, resolve=True))
    out = obj.combine(R if name not in ("pattern", "weighted") else R[:, :2])
    assert out.shape == (2,) and np.isfinite(out).all()


def test_contrast_from_the_command_line_overrides(compose):
    from omegaconf import OmegaConf

    cfg = compose(["objective=contrast", "objective.maximize=[2]", "objective.suppress=[0]", "direction=min"])
    obj = Objective(cfg.direction, **OmegaConf.to_container(cfg.objective, resolve=True))
    resp, score = obj(R)
    np.testing.assert_allclose(resp, [5 - 3, 0 - 2])
    np.testing.assert_allclose(score, [-2, 2])
