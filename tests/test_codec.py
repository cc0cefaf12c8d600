import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from tinyvla.core.codec import ActionCodec, ActionStats
from tinyvla.errors import UserError

LO = [-1.0, -0.5, 0.0, -2.0, 0.3, -1.0, -1.0]
HI = [1.0, 0.5, 0.0, 2.0, 0.3, 1.0, 1.0]  # dims 2 and 4 are constant in the data


def codec(horizon=8, bins=1000, **kw):
    return ActionCodec(ActionStats(min=LO, max=HI), horizon=horizon, bins=bins, **kw)


floats = st.floats(-1.0, 1.0, allow_nan=False)


@settings(max_examples=200, deadline=None)
@given(unit=hnp.arrays(np.float64, (8, 7), elements=st.floats(0, 1)), bins=st.sampled_from([250, 1000, 4000]))
def test_round_trip_error_is_at_most_half_a_bin(unit, bins):
    c = codec(bins=bins)
    lo, hi = np.array(LO), np.array(HI)
    actions = lo + unit * (hi - lo)
    codes = c.encode(actions)
    assert codes.min() >= 0 and codes.max() <= bins
    back = c.decode(codes)
    # float32 output adds at most ~1e-7 relative error on top of half a bin
    assert np.all(np.abs(back - actions) <= c.max_error() + 1e-6)


def test_constant_dimension_encodes_to_middle_and_decodes_exactly():
    c = codec()
    a = np.zeros((8, 7))
    a[:, 4] = 0.3
    codes = c.encode(a)
    assert np.all(codes[:, 2] == 500) and np.all(codes[:, 4] == 500)
    back = c.decode(codes)
    assert np.all(back[:, 2] == 0.0)
    assert np.all(back[:, 4] == np.float32(0.3))


def test_out_of_range_values_are_clipped():
    c = codec()
    a = np.full((8, 7), 10.0)
    codes = c.encode(a)
    assert codes[0, 0] == 1000 and codes[0, 1] == 1000
    assert c.encode(np.full((8, 7), -10.0))[0, 0] == 0


def test_text_round_trip():
    c = codec(horizon=2)
    codes = np.arange(14).reshape(2, 7) * 70
    text = c.to_text(codes)
    assert text == " ".join(str(x) for x in range(0, 14 * 70, 70))
    assert np.array_equal(c.parse(text), codes)


def test_parse_rules():
    c = codec(horizon=3)
    mid = np.full((3, 7), 500)
    assert np.array_equal(c.parse(""), mid)
    assert np.array_equal(c.parse("hello world"), mid)
    one_step = " ".join(["7"] * 7)
    assert np.array_equal(c.parse(one_step), np.full((3, 7), 7))  # missing steps repeat the last one
    partial = one_step + " 1 2 3"  # a trailing partial step is dropped
    assert np.array_equal(c.parse(partial), np.full((3, 7), 7))
    assert c.parse(" ".join(["5000"] * 7))[0, 0] == 1000  # clipped into range
    assert c.parse(" ".join(["?"] + ["9"] * 7))[0, 0] == 9  # junk skipped
    too_many = " ".join(["1"] * 7 * 5)
    assert c.parse(too_many).shape == (3, 7)


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_parse_never_raises_and_is_in_range(text):
    c = codec(horizon=4)
    out = c.parse(text)
    assert out.shape == (4, 7)
    assert out.min() >= 0 and out.max() <= 1000


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(-5, 2000), max_size=80).map(lambda xs: " ".join(map(str, xs))))
def test_parse_of_int_lists_is_in_range(text):
    out = codec(horizon=8).parse(text)
    assert out.shape == (8, 7) and out.min() >= 0 and out.max() <= 1000


def test_per_task_bounds():
    stats = ActionStats(min=[-1.0] * 7, max=[1.0] * 7, per_task={"small": {"min": [-0.1] * 7, "max": [0.1] * 7}})
    c = ActionCodec(stats, horizon=1, per_task_bounds=True)
    a = np.full((1, 7), 0.05)
    assert c.encode(a, task="small")[0, 0] == 750
    assert c.encode(a, task="unknown")[0, 0] == 525  # falls back to the global bounds
    assert c.encode(a)[0, 0] == 525
    assert np.allclose(c.decode(c.encode(a, "small"), "small"), 0.05, atol=1e-4)


def test_stats_from_actions_and_json_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    acts = rng.normal(size=(500, 7))
    tasks = ["a"] * 250 + ["b"] * 250
    s = ActionStats.from_actions(acts, tasks)
    assert np.allclose(s.min, acts.min(0)) and np.allclose(s.q99, np.quantile(acts, 0.99, axis=0))
    assert np.allclose(s.per_task["b"]["max"], acts[250:].max(0))
    s.save(tmp_path / "stats.json")
    t = ActionStats.load(tmp_path / "stats.json")
    assert t.to_dict() == s.to_dict()


def test_bad_stats_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="min has 2"):
        ActionStats(min=[0, 0], max=[1])
    with pytest.raises(UserError, match="min <= max"):
        ActionStats(min=[1.0], max=[0.0])
    with pytest.raises(UserError, match="not found"):
        ActionStats.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{nope")
    with pytest.raises(UserError, match="not valid JSON"):
        ActionStats.load(tmp_path / "bad.json")
    with pytest.raises(UserError, match="dimensions"):
        codec().encode(np.zeros((8, 6)))
