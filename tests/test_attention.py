"""Attention kernels: the fused (SDPA), explicit and FlexAttention soft-cap paths agree."""

from __future__ import annotations

import warnings

import pytest
import torch
from transformer_lens.hook_points import HookPoint

from g2interp.model.attention import AttentionMasks, _explicit, _flex_softcap, attend


def _inputs(B=2, H=4, G=2, Q=20, D=16, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, n, Q, D, generator=gen) for n in (H, G, G))
    valid = torch.ones(B, Q, dtype=torch.bool)
    valid[1, 15:] = False  # right padding in row 1
    return q, k, v, AttentionMasks(Q, Q, 0, valid, torch.device("cpu"))


@pytest.mark.parametrize("window", [None, 6])
def test_flex_softcap_equals_explicit(window):
    q, k, v, masks = _inputs()
    spec = masks.for_window(window)
    ref = _explicit(q, k, v, spec, 0.25, 5.0, HookPoint(), HookPoint())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = _flex_softcap(q, k, v, spec, 0.25, 5.0, compiled=False)
    assert torch.allclose(out, ref, atol=1e-5)


@pytest.mark.parametrize("window", [None, 6, 50])
def test_sdpa_equals_explicit_without_softcap(window):
    q, k, v, masks = _inputs(seed=1)
    spec = masks.for_window(window)
    ref = _explicit(q, k, v, spec, 0.3, None, HookPoint(), HookPoint())
    out = attend(q, k, v, spec, scale=0.3, softcap=None, explicit=False, scores_hook=None, pattern_hook=None)
    assert torch.allclose(out, ref, atol=1e-5)


def test_window_counts_the_query_itself():
    masks = AttentionMasks(10, 10, 0, None, torch.device("cpu"))
    allowed = masks.for_window(3).dense(10, 10, torch.device("cpu"))[0, 0]
    assert allowed[9].nonzero().flatten().tolist() == [7, 8, 9]
    assert masks.for_window(None).causal and masks.for_window(None).allowed is None


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_compiled_flex_on_cuda_equals_explicit():
    q, k, v, masks = _inputs()
    q, k, v = q.cuda(), k.cuda(), v.cuda()
    masks = AttentionMasks(20, 20, 0, masks.key_valid_BK.cuda(), torch.device("cuda"))
    spec = masks.for_window(6)
    ref = _explicit(q, k, v, spec, 0.25, 5.0, HookPoint(), HookPoint())
    assert torch.allclose(_flex_softcap(q, k, v, spec, 0.25, 5.0), ref, atol=1e-4)
