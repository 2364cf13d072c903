"""gradreg.conv.Conv2d: the same function as nn.Conv2d, with derivatives of every order equal too."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from gradreg import conv


@pytest.mark.parametrize("c_in, c_out, k, pad", [(1, 6, 5, 2), (3, 4, 3, 1), (2, 3, 5, 0)])
def test_fast_conv_matches_library_conv_to_third_order(c_in, c_out, k, pad):
    torch.manual_seed(0)
    ref = nn.Conv2d(c_in, c_out, k, padding=pad).double()
    fast = conv.Conv2d(c_in, c_out, k, padding=pad).double()
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(3, c_in, 9, 9, dtype=torch.float64, requires_grad=True)
    v = torch.randn(3, c_out, 9 - k + 1 + 2 * pad, 9 - k + 1 + 2 * pad, dtype=torch.float64)

    def derivatives(m):
        y = m(x)
        (gx,) = torch.autograd.grad((y * v).sum(), x, create_graph=True)       # first order in x
        s = gx.pow(2).sum()                                                   # a DataGrad-like penalty
        g2 = torch.autograd.grad(s, [x, m.weight, m.bias], create_graph=True, allow_unused=True,
                                 materialize_grads=True)                      # second order
        g3 = torch.autograd.grad(g2[1].pow(2).sum(), m.weight)                # third order
        return [y, gx, *g2, *g3]

    for a, b in zip(derivatives(ref), derivatives(fast), strict=True):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)


def test_unsupported_settings_are_refused():
    with pytest.raises(ValueError, match="stride 1"):
        conv.Conv2d(1, 2, 3, stride=2)
