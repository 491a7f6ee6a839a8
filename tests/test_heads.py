"""Task heads, label scaling and the closed-form ridge warm start."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tagllm_core.exceptions import TrainingError
from tagllm_core.heads import HeadConfig, LabelScaler, TaskHead, build_head
from tagllm_core.warm_start import fit_ridge

# --- LabelScaler --------------------------------------------------------------------


def test_label_scaler_round_trip_1d():
    rng = np.random.default_rng(0)
    y = rng.normal(7.0, 3.0, size=50)
    s = LabelScaler.fit(y)
    z = s.transform(y)
    assert z.shape == (50, 1)
    np.testing.assert_allclose(z.mean(0), 0.0, atol=1e-12)
    np.testing.assert_allclose(z.std(0), 1.0, atol=1e-12)
    np.testing.assert_allclose(s.inverse(z)[:, 0], y, atol=1e-10)
    assert s.mean == pytest.approx([y.mean()])
    assert s.std == pytest.approx([y.std()])


def test_label_scaler_round_trip_multi_output():
    rng = np.random.default_rng(1)
    y = np.stack([rng.normal(-2, 0.1, 40), rng.normal(100, 25, 40), rng.uniform(0, 1, 40)], 1)
    s = LabelScaler.fit(y)
    assert len(s.mean) == len(s.std) == 3
    z = s.transform(y)
    np.testing.assert_allclose(z.mean(0), 0.0, atol=1e-10)
    np.testing.assert_allclose(z.std(0), 1.0, atol=1e-10)
    np.testing.assert_allclose(s.inverse(z), y, atol=1e-9)
    # serialisable as plain lists (it goes into the tag card as JSON)
    d = s.to_dict()
    assert LabelScaler(**d) == s
    assert all(isinstance(v, float) for v in d["mean"] + d["std"])


def test_label_scaler_transform_of_known_values():
    s = LabelScaler(mean=[10.0], std=[2.0])
    np.testing.assert_allclose(s.transform([10.0, 12.0, 6.0])[:, 0], [0.0, 1.0, -2.0])
    np.testing.assert_allclose(s.inverse([0.5])[:, 0], [11.0])


@pytest.mark.parametrize("y", [np.full(10, 3.3), np.stack([np.arange(10.0), np.ones(10)], 1)])
def test_constant_label_is_a_training_error(y):
    with pytest.raises(TrainingError, match="constant"):
        LabelScaler.fit(y)


# --- ridge ---------------------------------------------------------------------------------


def test_fit_ridge_recovers_a_known_linear_map():
    gen = torch.Generator().manual_seed(0)
    N, F, K = 400, 12, 3
    X = torch.randn(N, F, generator=gen) * 2 + 5  # not centred: the bias must absorb the offset
    W = torch.randn(K, F, generator=gen)
    b = torch.tensor([1.5, -3.0, 10.0])
    Y = X @ W.T + b
    state = fit_ridge(X, Y, alphas=[1e-6])[0]
    assert state["weight"].shape == (K, F) and state["bias"].shape == (K,)
    assert state["weight"].dtype == torch.float32
    torch.testing.assert_close(state["weight"], W, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(state["bias"], b, atol=1e-2, rtol=1e-3)
    # and it plugs straight into a head
    head = build_head(HeadConfig("regression", K, F), state)
    torch.testing.assert_close(head(X), Y, atol=1e-2, rtol=1e-3)


def test_fit_ridge_with_noise_and_1d_targets():
    gen = torch.Generator().manual_seed(1)
    X = torch.randn(500, 4, generator=gen)
    w = torch.tensor([0.5, -1.0, 2.0, 0.0])
    y = X @ w + 0.7 + 0.01 * torch.randn(500, generator=gen)
    state = fit_ridge(X, y, alphas=[1e-3])[0]
    assert state["weight"].shape == (1, 4) and state["bias"].shape == (1,)
    torch.testing.assert_close(state["weight"][0], w, atol=5e-3, rtol=0)
    assert abs(float(state["bias"][0]) - 0.7) < 5e-3


def test_fit_ridge_shrinks_with_alpha_but_not_the_bias():
    gen = torch.Generator().manual_seed(2)
    X = torch.randn(100, 3, generator=gen)
    y = X @ torch.tensor([1.0, 2.0, 3.0]) + 4.0
    small = fit_ridge(X, y, alphas=[1e-6])[0]
    big = fit_ridge(X, y, alphas=[1e6])[0]
    assert big["weight"].abs().max() < 0.01 * small["weight"].abs().max()
    # with the weights shrunk to ~0 the bias is the target mean: it is not penalised
    assert abs(float(big["bias"][0]) - float(y.mean())) < 0.05


def test_fit_ridge_more_features_than_rows_is_finite():
    gen = torch.Generator().manual_seed(3)
    X = torch.randn(10, 64, generator=gen)
    y = torch.randn(10, generator=gen)
    state = fit_ridge(X, y, alphas=[1.0])[0]
    assert torch.isfinite(state["weight"]).all() and torch.isfinite(state["bias"]).all()


@pytest.mark.parametrize("n_rows", [40, 200])  # fewer and more rows than features
def test_fit_ridge_solves_the_normal_equations_at_the_leave_one_out_penalty(n_rows):
    """The head is RidgeCV's own solution: it must be the centred ridge solution at the chosen penalty,
    and that penalty the one of least exact leave-one-out error among those offered."""
    gen = torch.Generator().manual_seed(4)
    X = torch.randn(n_rows, 60, generator=gen, dtype=torch.float64) + 2.0
    y = X[:, :3] @ torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64) + torch.randn(n_rows, generator=gen,
                                                                                   dtype=torch.float64)
    alphas = [0.1, 3.0, 100.0]
    state, alpha = fit_ridge(X, y, alphas=alphas)

    def solve(x, t, a):
        xm, tm = x.mean(0), t.mean()
        w = torch.linalg.solve((x - xm).T @ (x - xm) + a * torch.eye(x.shape[1], dtype=x.dtype), (x - xm).T @ (t - tm))
        return w, tm - xm @ w

    def loo(a):
        errors = []
        for i in range(n_rows):
            keep = torch.arange(n_rows) != i
            w, b = solve(X[keep], y[keep], a)
            errors.append(float(X[i] @ w + b - y[i]) ** 2)
        return sum(errors)

    assert alpha == min(alphas, key=loo)
    w, b = solve(X, y, alpha)
    torch.testing.assert_close(state["weight"][0].double(), w, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(state["bias"][0].double(), b, rtol=1e-5, atol=1e-6)


# --- heads -----------------------------------------------------------------------------------


def test_head_config_validation():
    with pytest.raises(TrainingError, match="task"):
        HeadConfig("ranking", 1, 8)
    with pytest.raises(TrainingError, match="two classes"):
        HeadConfig("classification", 1, 8)
    cfg = HeadConfig("classification", 3, 8)
    assert cfg.to_dict() == {"task": "classification", "n_outputs": 3, "in_dim": 8, "n_extra": 0, "standardize": False,
                             "forest_trees": 0, "forest_nodes": 0, "forest_depth": 0, "forest_input": "descriptors"}
    assert HeadConfig(**cfg.to_dict()) == cfg


def test_classification_head_shape_and_loss():
    torch.manual_seed(0)
    head = TaskHead(HeadConfig("classification", 4, 16))
    x = torch.randn(6, 16, dtype=torch.bfloat16)  # features may come in the backbone dtype
    logits = head(x)
    assert logits.shape == (6, 4) and logits.dtype == torch.float32
    targets = torch.tensor([0, 1, 2, 3, 1, 0])
    loss = head.loss(logits, targets)
    expected = -torch.log_softmax(logits, 1)[torch.arange(6), targets].mean()
    torch.testing.assert_close(loss, expected)
    # float class indices (as they come out of a DataFrame) are accepted
    torch.testing.assert_close(head.loss(logits, targets.float()), expected)
    loss.backward()
    assert head.linear.weight.grad.abs().sum() > 0


def test_classification_loss_is_low_for_confident_right_answers():
    head = TaskHead(HeadConfig("classification", 2, 2))
    head.load_state({"weight": torch.eye(2) * 20, "bias": torch.zeros(2)})
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert head.loss(head(x), torch.tensor([0, 1])) < 1e-6
    assert head.loss(head(x), torch.tensor([1, 0])) > 10


def test_regression_head_loss_is_mse():
    torch.manual_seed(1)
    head = TaskHead(HeadConfig("regression", 2, 5))
    x = torch.randn(7, 5)
    out = head(x)
    assert out.shape == (7, 2)
    t = torch.randn(7, 2)
    torch.testing.assert_close(head.loss(out, t), ((out - t) ** 2).mean())


def test_head_state_round_trip_is_a_copy():
    torch.manual_seed(2)
    a = TaskHead(HeadConfig("regression", 1, 3))
    state = a.state()
    b = build_head(HeadConfig("regression", 1, 3), state)
    x = torch.randn(4, 3)
    torch.testing.assert_close(a(x), b(x))
    state["weight"].add_(1.0)  # mutating the exported state must not touch the head
    assert not torch.equal(a.linear.weight, state["weight"])
