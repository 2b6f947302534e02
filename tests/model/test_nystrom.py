"""Our batched Nystrom attention against the independent ``nystrom-attention`` package."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from deref.model.nystrom import NystromAttention, banded_depthwise_conv, iterative_pinv

nystrom_pkg = pytest.importorskip("nystrom_attention")


def _pair(seed=0, dim=64, heads=4, landmarks=16):
    torch.manual_seed(seed)
    theirs = nystrom_pkg.NystromAttention(
        dim=dim,
        dim_head=dim // heads,
        heads=heads,
        num_landmarks=landmarks,
        pinv_iterations=6,
        residual=True,
        residual_conv_kernel=33,
        dropout=0.0,
    ).eval()
    ours = NystromAttention(dim, heads=heads, landmarks=landmarks, dropout=0.0).eval()
    ours.load_state_dict(theirs.state_dict())
    return ours, theirs


@pytest.mark.parametrize("n", [1, 7, 16, 17, 100, 257])
def test_single_sequence_matches_package(n):
    ours, theirs = _pair()
    x = torch.randn(1, n, 64)
    with torch.no_grad():
        np_out = theirs(x)
        our_out, _ = ours(x)
    torch.testing.assert_close(our_out, np_out, atol=2e-6, rtol=1e-5)


def test_batch_of_different_lengths_equals_one_at_a_time():
    ours, _ = _pair(seed=1)
    lengths = [5, 40, 16, 33]
    x = torch.randn(len(lengths), max(lengths), 64)
    for i, n in enumerate(lengths):
        x[i, n:] = 1e4  # garbage in the padding must not leak
    with torch.no_grad():
        out, attn = ours(x, torch.tensor(lengths), return_cls_attention=True)
        for i, n in enumerate(lengths):
            single, single_attn = ours(x[i : i + 1, :n], return_cls_attention=True)
            torch.testing.assert_close(out[i : i + 1, :n], single, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(attn[i : i + 1, :, :n], single_attn, atol=1e-6, rtol=1e-5)
            assert torch.all(out[i, n:] == 0)


def test_cls_attention_equals_package_matrix_row():
    ours, theirs = _pair(seed=2)
    x = torch.randn(1, 50, 64)
    with torch.no_grad():
        _, full = theirs(x, return_attn=True)  # (1, h, L, L) over the front-padded sequence
        _, row = ours(x, return_cls_attention=True)
    pad = full.shape[-1] - 50
    torch.testing.assert_close(row, full[:, :, pad, pad:], atol=1e-6, rtol=1e-4)


def test_banded_conv_equals_depthwise_conv2d():
    torch.manual_seed(0)
    v = torch.randn(2, 8, 301, 32)
    w = torch.randn(8, 1, 33, 1)
    ref = F.conv2d(v, w, padding=(16, 0), groups=8)
    torch.testing.assert_close(banded_depthwise_conv(v, w), ref, atol=1e-5, rtol=1e-5)


def test_pinv_scale_is_per_patient():
    torch.manual_seed(0)
    a = torch.softmax(torch.randn(2, 3, 8, 8), dim=-1)
    a[1] *= 5.0  # a different scale for the second patient must not change the first
    z_batch = iterative_pinv(a, 6)
    z_first = iterative_pinv(a[:1], 6)
    torch.testing.assert_close(z_batch[:1], z_first)
    # six Newton-Schulz steps approximate the inverse of a well-conditioned matrix
    b = torch.eye(8).expand(1, 1, 8, 8) * 0.5 + 0.05
    assert torch.allclose(iterative_pinv(b, 12) @ b, torch.eye(8).expand(1, 1, 8, 8), atol=1e-3)


@pytest.mark.parametrize("lengths", [[300], [5, 140, 300, 129]])
def test_cls_only_equals_first_row_of_full_forward(lengths):
    """``cls_only`` (queries projected for the class token and the landmarks only, the
    residual conv and output projection for one row) gives the full forward's first row."""
    ours, _ = _pair(seed=3)
    x = torch.randn(len(lengths), max(lengths), 64)
    lens = None if len(lengths) == 1 else torch.tensor(lengths)
    with torch.no_grad():
        full, full_attn = ours(x, lens, return_cls_attention=True)
        first, attn = ours(x, lens, return_cls_attention=True, cls_only=True)
    assert first.shape == (len(lengths), 1, 64)
    torch.testing.assert_close(first, full[:, :1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(attn, full_attn, atol=1e-6, rtol=1e-5)
    # and the gradients through that row are the full forward's
    xg = x.clone().requires_grad_(True)
    ours(xg, lens)[0][:, 0].sum().backward()
    g_full = xg.grad.clone()
    xg.grad = None
    ours(xg, lens, cls_only=True)[0].sum().backward()
    torch.testing.assert_close(xg.grad, g_full, atol=1e-5, rtol=1e-4)


def test_fast_dropout_is_inverted_dropout():
    from deref.model.nystrom import fast_dropout

    x = torch.ones(200, 500, requires_grad=True)
    assert fast_dropout(x, 0.25, False) is x
    y = fast_dropout(x, 0.25, True)
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.75) < 0.01
    torch.testing.assert_close(y[kept], torch.full_like(y[kept], 1 / 0.75))
    y.sum().backward()
    torch.testing.assert_close(x.grad, y.detach())  # the gradient is the same mask
