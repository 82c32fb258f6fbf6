"""The recoverability table's pieces on cases with known answers."""

from __future__ import annotations

import numpy as np

from shared.evaluation.recoverability import _predict, _r2, fit_ridge, history_windows


def test_history_windows_index_the_past():
    motion = np.arange(10, dtype=float)[:, None] * np.ones((1, 13))
    x, y = history_windows(motion, window=3, ahead=1)
    assert x.shape == (7, 39) and y[0, 0] == 3 and list(x[0, ::13]) == [0, 1, 2]
    x, y = history_windows(motion, window=3, ahead=4)
    assert y[0, 0] == 6 and list(x[0, ::13]) == [0, 1, 2] and len(y) == 4


def test_ridge_recovers_a_linear_map_and_nothing_from_noise():
    g = np.random.default_rng(0)
    xs = [g.standard_normal((200, 5)) for _ in range(8)]
    w = g.standard_normal((5, 2))
    ys = [x @ w + 0.05 * g.standard_normal((200, 2)) for x in xs]
    model = fit_ridge(xs[:6], ys[:6])
    assert (_r2(_predict(model, np.concatenate(xs[6:])), np.concatenate(ys[6:])) > 0.99).all()
    noise = [g.standard_normal((200, 2)) for _ in range(8)]
    model = fit_ridge(xs[:6], noise[:6])  # the penalty picked on validation keeps a pure-noise fit near zero
    assert (_r2(_predict(model, np.concatenate(xs[6:])), np.concatenate(noise[6:])) < 0.05).all()
