"""The survival NLL and the decoupling loss against direct computations."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from deref.errors import InputError
from deref.losses import decoupling_loss, distance, nll_survival_loss


def test_nll_by_hand_uncensored_and_censored():
    h = torch.tensor([[0.1, 0.2, 0.3, 0.4]])
    s = [1.0, 0.9, 0.9 * 0.8, 0.9 * 0.8 * 0.7, 0.9 * 0.8 * 0.7 * 0.6]  # S_0 .. S_4
    # event in bin 2: survived bins 0, 1, then the event: -log(S_2) - log(h_2)
    assert nll_survival_loss(h, torch.tensor([2]), torch.tensor([0])).item() == pytest.approx(
        -math.log(s[2]) - math.log(0.3), rel=1e-6
    )
    # censored in bin 2: survived through bin 2: -log(S_3)
    assert nll_survival_loss(h, torch.tensor([2]), torch.tensor([1])).item() == pytest.approx(
        -math.log(s[3]), rel=1e-6
    )
    # event in bin 0: -log(1) - log(h_0)
    assert nll_survival_loss(h, torch.tensor([0]), torch.tensor([0])).item() == pytest.approx(
        -math.log(0.1), rel=1e-6
    )


def test_nll_batch_mean_and_alpha():
    h = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.5, 0.5, 0.5, 0.5]])
    y, c = torch.tensor([1, 3]), torch.tensor([0, 1])
    per = nll_survival_loss(h, y, c, reduction="none")
    assert per.shape == (2,)
    assert nll_survival_loss(h, y, c).item() == pytest.approx(per.mean().item())
    # alpha re-weights the uncensored term: (1 - a) L + a L_unc; the censored patient has L_unc = 0
    a = 0.4
    per_a = nll_survival_loss(h, y, c, alpha=a, reduction="none")
    assert per_a[0].item() == pytest.approx(per[0].item())  # uncensored: (1-a) L + a L = L
    assert per_a[1].item() == pytest.approx((1 - a) * per[1].item())
    with pytest.raises(InputError, match=r"bin labels must lie in \[0, 3\]"):
        nll_survival_loss(h, torch.tensor([4, 0]), c)


def test_nll_eps_clamp_keeps_it_finite():
    h = torch.tensor([[1.0, 1.0, 1.0, 1.0]])
    assert math.isfinite(nll_survival_loss(h, torch.tensor([3]), torch.tensor([1])).item())


def test_distances_against_direct_formulas():
    torch.manual_seed(0)
    a, b = torch.randn(3, 8), torch.randn(3, 8)
    torch.testing.assert_close(distance(a, b, "mse"), ((a - b) ** 2).mean(1))
    torch.testing.assert_close(distance(a, b, "l1"), (a - b).abs().mean(1))
    p, q = F.softmax(b, 1), F.softmax(a, 1)
    torch.testing.assert_close(distance(a, b, "kl"), (p * (p.log() - q.log())).sum(1))
    torch.testing.assert_close(distance(a, b, "cosine"), 1 - (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)))


@pytest.mark.parametrize("kind", ["mse", "l1", "kl", "cosine"])
def test_decoupling_loss_is_the_paper_formula(kind):
    torch.manual_seed(1)
    f = torch.randn(5, 4, 16)
    sp1, sp2, sh, ex = f.unbind(1)

    def d(x, y):
        return distance(x, y, kind)

    expected = d(sp1, sh) + d(sp2, sh) + d(sp1, ex) + d(sp2, ex) + d(sh, ex) - d(sp1, sp2)
    torch.testing.assert_close(decoupling_loss(f, kind, reduction="none"), expected)
    torch.testing.assert_close(decoupling_loss(f, kind), expected.mean())
    three = decoupling_loss(f[:, :3], kind, reduction="none")
    torch.testing.assert_close(three, d(sp1, sh) + d(sp2, sh) - d(sp1, sp2))


def test_hinge_bounds_the_negative_term():
    f = torch.zeros(2, 4, 8)
    f[:, 0] = 100.0  # sp1 far from sp2: the plain loss can be made arbitrarily negative
    plain = decoupling_loss(f, "mse", reduction="none")
    hinged = decoupling_loss(f, "mse", hinge_margin=1.0, reduction="none")
    pos = plain + distance(f[:, 0], f[:, 1])
    torch.testing.assert_close(hinged, pos)  # margin - D < 0 -> hinge contributes 0
    assert bool((hinged >= 0).all())
