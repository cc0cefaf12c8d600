"""Temporal ensembling: every execute horizon and weighting against a hand computation."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinyvla.core.ensemble import BatchEnsembler, ChunkEnsembler
from tinyvla.errors import UserError


def hand_action(queries, t, horizon, weighting, max_chunks, exp_w):
    """Straightforward reference: queries is [(step, chunk)] in the order they were made."""
    cover = [(s, c) for s, c in queries if s <= t < s + horizon]
    cover = sorted(cover, key=lambda sc: -sc[0])[:max_chunks]  # newest first, capped
    total = np.zeros(cover[0][1].shape[1])
    wsum = 0.0
    for age, (s, c) in enumerate(cover):
        if weighting == "vla0":
            w = 1.0 if age == 0 else 0.5
        elif weighting == "exp":
            w = exp_w**age
        elif weighting == "uniform":
            w = 1.0
        else:  # none
            w = 1.0 if age == 0 else 0.0
        total = total + w * c[t - s]
        wsum += w
    return total / wsum, len(cover)


def rollout(h, d, e, weighting, max_chunks, exp_w, steps, seed):
    rng = np.random.default_rng(seed)
    ens = ChunkEnsembler(h, d, weighting=weighting, max_chunks=max_chunks, exp_w=exp_w, execute_horizon=e)
    queries = []
    for t in range(steps):
        q = ens.needs_query(t)
        assert q == (t % e == 0), (t, e)  # query exactly every e steps
        if q:
            chunk = rng.normal(size=(h, d))
            ens.add(chunk, t)
            queries.append((t, chunk))
        got = ens.action(t)
        # Stale chunks (predicted H or more steps ago) are gone and the cap holds.
        assert all(s > t - h for s, _ in ens.chunks) and len(ens.chunks) <= max_chunks
        want, n_cover = hand_action(queries, t, h, weighting, max_chunks, exp_w)
        assert got.shape == (d,) and got.dtype == np.float32
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        # The documented count: 1 + floor((H - 1 - o) / e), fewer at the start, at most max_chunks.
        o = t % e
        assert ens.covering(t) == n_cover == min(1 + (h - 1 - o) // e, t // e + 1, max_chunks)
    return ens, queries


@settings(max_examples=150, deadline=None)
@given(
    h=st.integers(1, 8),
    d=st.integers(1, 3),
    weighting=st.sampled_from(["vla0", "exp", "uniform", "none"]),
    max_chunks=st.integers(1, 10),
    exp_w=st.floats(0.05, 1.0),
    steps=st.integers(1, 30),
    seed=st.integers(0, 2**31),
    data=st.data(),
)
def test_matches_hand_computation_every_execute_horizon(h, d, weighting, max_chunks, exp_w, steps, seed, data):
    e = data.draw(st.integers(1, h))
    rollout(h, d, e, weighting, max_chunks, exp_w, steps, seed)


@pytest.mark.parametrize("weighting", ["vla0", "exp", "uniform", "none"])
def test_all_execute_horizons_explicitly(weighting):
    h = 8
    for e in range(1, h + 1):
        rollout(h, 7, e, weighting, 8, 0.5, 40, e)


def test_ensembling_is_not_a_no_op_where_chunks_overlap():
    h, d = 8, 2
    for e in range(1, h):
        ens = ChunkEnsembler(h, d, weighting="vla0", execute_horizon=e)
        ens.add(np.zeros((h, d)), 0)
        ens.add(np.ones((h, d)), e)
        # At step e the old chunk still covers (row e < H): blended 1.0 * 1 + 0.5 * 0 over 1.5.
        np.testing.assert_allclose(ens.action(e), np.full(d, 1 / 1.5), rtol=1e-6)
    # e = H: exactly one chunk per step, so the newest chunk's row is the answer; the weighting has nothing to blend.
    ens = ChunkEnsembler(h, d, weighting="vla0", execute_horizon=h)
    ens.add(np.zeros((h, d)), 0)
    assert ens.needs_query(h) and not ens.needs_query(h - 1)
    ens.add(np.ones((h, d)), h)
    assert ens.covering(h) == 1 and len(ens.chunks) == 1  # the chunk from step 0 covers nothing from step H on
    np.testing.assert_allclose(ens.action(h + 3), np.ones(d))


def test_vla0_weights_concrete():
    ens = ChunkEnsembler(3, 1, weighting="vla0", max_chunks=8)
    for t, v in enumerate([10.0, 20.0, 40.0]):
        ens.add(np.full((3, 1), v), t)
    # step 2: rows from chunks at 2 (new, w 1), 1 (w .5), 0 (w .5) -> (40 + 10 + 5) / 2
    assert ens.action(2)[0] == pytest.approx((40 + 0.5 * 20 + 0.5 * 10) / 2)
    ens = ChunkEnsembler(3, 1, weighting="exp", exp_w=0.5)
    for t, v in enumerate([10.0, 20.0, 40.0]):
        ens.add(np.full((3, 1), v), t)
    assert ens.action(2)[0] == pytest.approx((40 + 0.5 * 20 + 0.25 * 10) / 1.75)


def test_old_chunks_dropped_and_reset():
    h = 4
    ens = ChunkEnsembler(h, 2, max_chunks=10)
    for t in range(12):
        ens.add(np.full((h, 2), t), t)
        assert [s for s, _ in ens.chunks] == list(range(max(0, t - h + 1), t + 1))
    with pytest.raises(RuntimeError, match="covers"):
        ens.action(12 + h)  # nothing covers that far ahead
    ens.reset()
    assert not ens.chunks and ens.needs_query(100)
    with pytest.raises(RuntimeError):
        ens.action(0)
    with pytest.raises(ValueError):
        ens.add(np.zeros((h, 3)), 0)  # wrong shape
    ens.add(np.zeros((h, 2)), 5)
    with pytest.raises(ValueError, match="reset"):
        ens.add(np.zeros((h, 2)), 5)  # steps must increase inside an episode


def test_chunk_copied_on_add():
    ens = ChunkEnsembler(2, 1)
    c = np.zeros((2, 1))
    ens.add(c, 0)
    c[:] = 5.0
    assert ens.action(1)[0] == 0.0


def test_bad_settings_are_user_errors():
    with pytest.raises(UserError, match="execute_horizon"):
        ChunkEnsembler(8, 7, execute_horizon=9)
    with pytest.raises(UserError, match="execute_horizon"):
        ChunkEnsembler(8, 7, execute_horizon=0)
    with pytest.raises(UserError, match="weighting"):
        ChunkEnsembler(8, 7, weighting="mean")
    with pytest.raises(UserError, match="exp_w"):
        ChunkEnsembler(8, 7, weighting="exp", exp_w=0.0)


def test_batch_ensembler_slots_are_independent():
    h, d, n = 4, 3, 3
    rng = np.random.default_rng(0)
    be = BatchEnsembler(n, h, d, weighting="vla0", execute_horizon=2)
    singles = [ChunkEnsembler(h, d, weighting="vla0", execute_horizon=2) for _ in range(n)]
    steps = np.zeros(n, dtype=int)
    for it in range(15):
        if it == 6:  # slot 1 starts a new episode
            be.reset(1)
            singles[1].reset()
            steps[1] = 0
        q = be.needs_query(steps)
        assert q.tolist() == [s.needs_query(int(t)) for s, t in zip(singles, steps)]
        ids = np.flatnonzero(q)
        chunks = rng.normal(size=(len(ids), h, d))
        be.add(ids, chunks, steps[ids])
        for i, c in zip(ids, chunks):
            singles[i].add(c, int(steps[i]))
        got = be.action(np.arange(n), steps)
        want = np.stack([s.action(int(t)) for s, t in zip(singles, steps)])
        np.testing.assert_array_equal(got, want)
        steps += 1
    be.reset()
    assert all(not be[i].chunks for i in range(n)) and len(be) == n
