"""Property-based checks (hypothesis) of the Jacobian identities over random dense architectures,
shapes, batch sizes and dtypes, against brute-force Jacobians."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from gradreg import jacobian, regularizers

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "softplus": nn.Softplus, "gelu": nn.GELU}
TOL = {torch.float64: 1e-10, torch.float32: 1e-4}


@st.composite
def problems(draw):
    """A random dense network, a batch and labels."""
    dtype = draw(st.sampled_from([torch.float64, torch.float32]))
    d_in, classes = draw(st.integers(1, 6)), draw(st.integers(2, 5))
    widths = draw(st.lists(st.integers(2, 8), min_size=0, max_size=3))
    act = ACTIVATIONS[draw(st.sampled_from(list(ACTIVATIONS)))]
    torch.manual_seed(draw(st.integers(0, 2**16)))
    layers, width = [], d_in
    for w in widths:
        layers += [nn.Linear(width, w), act()]
        width = w
    model = nn.Sequential(*layers, nn.Linear(width, classes)).to(dtype)
    batch = draw(st.integers(1, 5))
    x = torch.randn(batch, d_in, dtype=dtype)
    y = torch.randint(classes, (batch,))
    return model, x, y


def _assert_close(a, b, dtype):
    scale = max(1.0, b.abs().max().item())
    assert (a - b).abs().max().item() <= TOL[dtype] * scale


@settings(max_examples=40, deadline=None)
@given(problems())
def test_datagrad_is_the_residual_projection(problem):
    model, x, y = problem
    J = jacobian.logits(model, x)
    residual = torch.softmax(model(x), 1) - F.one_hot(y, J.shape[1]).to(x)
    expected = (J.transpose(1, 2) @ residual.unsqueeze(2)).pow(2).sum((1, 2))
    _assert_close(regularizers.datagrad(model, x, y), expected, x.dtype)


@settings(max_examples=40, deadline=None)
@given(problems(), st.booleans())
def test_gradient_trick_and_frobenius(problem, vectorized):
    model, x, y = problem
    J = jacobian.logits(model, x)
    r = torch.randn(J.shape[1], dtype=x.dtype)
    _assert_close(regularizers.spectreg(model, x, y, r=r), (J.transpose(1, 2) @ r).pow(2).sum(1), x.dtype)
    _assert_close(regularizers.frobreg(model, x, y, vectorized=vectorized), J.pow(2).sum((1, 2)), x.dtype)
    Jp = jacobian.probabilities(model, x)
    _assert_close(regularizers.jacreg(model, x, y, vectorized=vectorized), Jp.pow(2).sum((1, 2)), x.dtype)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 6), st.integers(1, 6), st.integers(1, 4), st.integers(0, 2**16))
def test_frobreg_of_a_linear_layer_is_weight_decay(d_in, d_out, batch, seed):
    torch.manual_seed(seed)
    layer = nn.Linear(d_in, d_out).double()
    x = torch.randn(batch, d_in, dtype=torch.float64)
    expected = layer.weight.pow(2).sum().expand(batch)
    _assert_close(regularizers.frobreg(layer, x), expected, torch.float64)


@settings(max_examples=30, deadline=None)
@given(problems())
def test_norm_sandwich_and_spherical_lower_bound(problem):
    model, x, _ = problem
    J = jacobian.logits(model, x).double()
    spectral, frob, rank = jacobian.spectral_norm(J), jacobian.frobenius_norm(J), jacobian.rank(J)
    eps = 1e-9 * max(1.0, frob.max().item())
    assert (frob / rank.clamp(min=1).sqrt() <= spectral + eps).all() and (spectral <= frob + eps).all()
    u = torch.randn(J.shape[1], dtype=J.dtype)
    u = u / u.norm()
    assert ((J.transpose(1, 2) @ u).norm(dim=1) <= spectral + eps).all()
