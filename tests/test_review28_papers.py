"""Fidelity to the papers: behaviour pinned from the papers' formulas, not from the code."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from deepzip.prune import scale_dropout_
from deepzip.quantize.incremental.levels import inq_exponents, inq_round
from deepzip.quantize.incremental.parametrization import SymmetricSharedWeight
from deepzip.quantize.shared import GradRule


@pytest.mark.parametrize("grad", ["sum", "mean"])
def test_ternary_sgd_step_moves_a_by_the_summed_signed_gradient(grad: GradRule) -> None:
    # Deep Compression's rule for a shared value: its gradient is the sum of its members'
    # gradients ("mean": divided by their number). For the tied ternary codebook (-a, +a),
    # dL/da = sum over +a members of g - sum over -a members of g, and one SGD step of rate
    # lr must move a by lr * dL/da. Before the fix each entry got half of it, so a moved by
    # half the step.
    indices = torch.tensor([0, 1, 1, 0, 1, 0], dtype=torch.uint8)
    mask = torch.tensor([True, True, True, False, True, True])
    sw = SymmetricSharedWeight(torch.tensor([-0.5, 0.5]), indices, mask, grad=grad)
    g = torch.tensor([1.0, 2.0, 3.0, 100.0, 4.0, -0.5])
    sw(torch.zeros(6)).backward(g)
    plus, minus = 2.0 + 3.0 + 4.0, 1.0 - 0.5  # members at +a and at -a (position 3 is pruned)
    d_a = plus - minus
    if grad == "mean":
        d_a /= 5  # five members
    lr = 0.01
    torch.optim.SGD([sw.codebook], lr=lr).step()
    a = float(sw.export().codebook[1])
    assert a == pytest.approx(0.5 - lr * d_a, rel=1e-6)
    # the value itself is untouched by the gradient scaling
    sw.zero_grad()
    with torch.no_grad():
        w = sw(torch.zeros(6))
    assert w.tolist() == pytest.approx([-a, a, a, 0.0, a, -a])


def test_inq_levels_and_rounding_follow_zhou_et_al() -> None:
    # n1 = floor(log2(4 s / 3)), n2 = n1 + 1 - 2**(b-1) / 2; w -> beta * sgn(w) when
    # (alpha + beta) / 2 <= |w| < 3 beta / 2 for neighbours alpha < beta of {0, 2**n2..2**n1}
    g = torch.Generator().manual_seed(3)
    for bits in range(2, 9):
        w = torch.randn(4000, generator=g) * 0.07
        s = float(w.abs().max())
        n1 = math.floor(math.log2(4 * s / 3))
        n2 = n1 + 1 - 2 ** (bits - 1) // 2
        assert inq_exponents(s, bits) == (n1, n2)
        levels = [0.0] + [2.0**n for n in range(n2, n1 + 1)]
        expected = []
        for x in w.tolist():
            q = 0.0
            for alpha, beta in itertools.pairwise(levels):
                if (alpha + beta) / 2 <= abs(x) < 1.5 * beta:
                    q = beta
            expected.append(math.copysign(q, x) if q else 0.0)
        assert inq_round(w, n1, n2).tolist() == expected


def test_dropout_rate_follows_han_2015_equation_2() -> None:
    # D_r = D_o * sqrt(C_ir / C_io), C the connections of the layer the dropout follows
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 4))
    changed = scale_dropout_(model, {"0.weight": 0.09, "3.weight": 0.5})
    assert changed == {"2": pytest.approx(0.5 * math.sqrt(0.09))}
    # from the original rate again, not compounded
    scale_dropout_(model, {"0.weight": 0.04})
    drop = model[2]
    assert isinstance(drop, nn.Dropout)
    assert drop.p == pytest.approx(0.5 * 0.2)
