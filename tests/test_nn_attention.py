"""fastgen.nn.functional.scaled_dot_product_attention and fastgen.nn.MultiheadAttention give
torch's results (state dicts load both ways)."""
import warnings

import pytest
import torch
import torch.nn.functional as F

import fastgen
from fastgen.nn import MultiheadAttention
from fastgen.nn.functional import scaled_dot_product_attention
from fastgen.testing import assert_close

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _qkv(b, h, hkv, lq, lk, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, n, l, d, generator=g).to(DEVICE).requires_grad_()
            for n, l in ((h, lq), (hkv, lk), (hkv, lk))]


def _same_with_grads(a_fn, b_fn, inputs):
    a = a_fn(*inputs)
    ga = torch.autograd.grad(a.square().sum(), inputs)
    b = b_fn(*inputs)
    gb = torch.autograd.grad(b.square().sum(), inputs)
    assert_close(a, b, name="out")
    for x, y in zip(ga, gb):
        assert_close(x, y, name="grad")


@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize("shape", [(2, 3, 3, 7, 7, 16), (1, 4, 2, 9, 13, 32), (2, 2, 2, 1, 5, 8)], ids=str)
def test_sdpa_matches_torch(shape, is_causal):
    gqa = shape[1] != shape[2]
    kw = dict(is_causal=is_causal, enable_gqa=gqa)
    _same_with_grads(lambda q, k, v: scaled_dot_product_attention(q, k, v, **kw),
                     lambda q, k, v: F.scaled_dot_product_attention(q, k, v, **kw), _qkv(*shape))


def test_sdpa_key_padding_mask_and_3d_inputs():
    q, k, v = _qkv(2, 3, 3, 6, 8, 16)
    keep = torch.ones(2, 1, 1, 8, dtype=torch.bool, device=DEVICE)
    keep[0, ..., 5:] = False
    keep[1, ..., :2] = False
    _same_with_grads(lambda q, k, v: scaled_dot_product_attention(q, k, v, attn_mask=keep, scale=0.2),
                     lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=keep, scale=0.2), (q, k, v))
    q3, k3, v3 = (t.detach()[:, 0].requires_grad_() for t in (q, k, v))
    _same_with_grads(lambda q, k, v: scaled_dot_product_attention(q, k, v, is_causal=True),
                     lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True), (q3, k3, v3))


def test_sdpa_falls_back_for_what_it_cannot_fuse():
    q, k, v = _qkv(1, 2, 2, 4, 4, 8)
    general = torch.randn(1, 2, 4, 4, device=DEVICE)  # a float mask over (query, key): not fused
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = scaled_dot_product_attention(q, k, v, attn_mask=general)
    assert_close(got, F.scaled_dot_product_attention(q, k, v, attn_mask=general))
    # noted once per process (an earlier test may have triggered it already)
    assert any("only masks of shape (B, 1, 1, Lk)" in str(w.message) for w in caught) or \
        "only masks of shape (B, 1, 1, Lk) (key padding) are fused" in fastgen.nn.attention._NOTED
    # head counts differ without enable_gqa: whatever torch does (here: broadcast one kv head),
    # with the note saying why the fused path was not taken
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = scaled_dot_product_attention(q, k[:, :1], v[:, :1])
    assert_close(got, F.scaled_dot_product_attention(q, k[:, :1], v[:, :1]))
    assert any("enable_gqa" in str(w.message) for w in caught) or \
        "different head counts need enable_gqa=True" in fastgen.nn.attention._NOTED


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("kdim", [None, 12])
def test_multihead_attention_matches_torch(batch_first, kdim):
    torch.manual_seed(0)
    ref = torch.nn.MultiheadAttention(32, 4, batch_first=batch_first, kdim=kdim, vdim=kdim).to(DEVICE)
    ours = MultiheadAttention(32, 4, batch_first=batch_first, kdim=kdim, vdim=kdim).to(DEVICE)
    ours.load_state_dict(ref.state_dict())
    assert list(ours.state_dict()) == list(ref.state_dict())
    b, lq, lk = 3, 7, 9
    x = torch.randn(b, lq, 32, device=DEVICE)
    mem = torch.randn(b, lk, kdim or 32, device=DEVICE)
    pad = torch.zeros(b, lk, dtype=torch.bool, device=DEVICE)
    pad[0, 6:] = True
    pad[2, :3] = True
    if not batch_first:
        x, mem = x.transpose(0, 1), mem.transpose(0, 1)
    for args, kw in [((x, mem, mem), {"key_padding_mask": pad}), ((x, mem, mem), {})]:
        got, w = ours(*args, need_weights=False, **kw)
        want, _ = ref(*args, need_weights=False, **kw)
        assert w is None
        assert_close(got, want)
    if kdim is None:  # causal self-attention, the GPT block's call
        causal = torch.nn.Transformer.generate_square_subsequent_mask(lq, device=DEVICE)
        got, _ = ours(x, x, x, attn_mask=causal, is_causal=True, need_weights=False)
        want, _ = ref(x, x, x, attn_mask=causal, is_causal=True, need_weights=False)
        assert_close(got, want)
        # need_weights=True is torch's path: same outputs and weights
        got, w = ours(x, x, x)
        want, w_ref = ref(x, x, x)
        assert_close(got, want)
        assert_close(w, w_ref)


def test_multihead_attention_gradients_match_torch():
    torch.manual_seed(1)
    ref = torch.nn.MultiheadAttention(16, 2, batch_first=True).to(DEVICE)
    ours = MultiheadAttention(16, 2, batch_first=True).to(DEVICE)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(2, 5, 16, device=DEVICE)
    (ours(x, x, x, need_weights=False)[0].square().sum()).backward()
    (ref(x, x, x, need_weights=False)[0].square().sum()).backward()
    for (name, p), q in zip(ours.named_parameters(), ref.parameters()):
        assert_close(p.grad, q.grad, name=name)


def test_multihead_attention_compiles_fullgraph():
    torch._dynamo.reset()
    mha = MultiheadAttention(16, 2, batch_first=True).to(DEVICE)
    x = torch.randn(2, 5, 16, device=DEVICE)
    pad = torch.tensor([[False] * 5, [False, False, False, True, True]], device=DEVICE)
    f = lambda x: mha(x, x, x, key_padding_mask=pad, need_weights=False)[0]  # noqa: E731
    assert_close(torch.compile(f, fullgraph=True)(x), f(x))


def test_kv_cache_incremental_decoding_matches_full_causal_attention():
    """Prompt of 5 tokens, then 6 single-token steps: every step's output equals the matching
    row of causal attention recomputed over the whole sequence."""
    from fastgen.nn import KVCache

    g = torch.Generator().manual_seed(0)
    b, h, hkv, n, d = 2, 4, 2, 11, 16
    q, k, v = (torch.randn(b, m, n, d, generator=g).to(DEVICE) for m in (h, hkv, hkv))
    full, _ = fastgen.ops.flash_attention(q, k, v, causal=True)
    cache = KVCache(b, hkv, 16, d, device=DEVICE)
    cache.append(k[:, :, :5], v[:, :, :5])
    assert_close(cache.attend(q[:, :, :5]), full[:, :, :5])
    for t in range(5, n):
        cache.append(k[:, :, t:t + 1], v[:, :, t:t + 1])
        assert_close(cache.attend(q[:, :, t:t + 1]), full[:, :, t:t + 1], name=f"step {t}")
    assert cache.seqlens.tolist() == [n, n]
    assert cache.reset().seqlens.tolist() == [0, 0]


def test_dropout_is_fused_and_reproducible():
    """Dropout runs in the fused kernel with fastgen's Philox mask: SDPA with dropout_p equals
    flash_attention with the seed the same default-generator state gives, and MultiheadAttention
    in training drops (eval does not) reproducibly under torch.manual_seed."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 10, 16, generator=g) for _ in range(3))
    torch.manual_seed(5)
    got = fastgen.nn.functional.scaled_dot_product_attention(q, k, v, dropout_p=0.3, is_causal=True)
    torch.manual_seed(5)
    want, _ = fastgen.ops.flash_attention(q, k, v, True, None, None, 0.3)
    assert torch.equal(got, want)
    assert not torch.allclose(got, fastgen.ops.flash_attention(q, k, v, True)[0])

    mha = fastgen.nn.MultiheadAttention(32, 4, dropout=0.5, batch_first=True)
    x = torch.randn(2, 9, 32, generator=g)
    runs = []
    for _ in range(2):
        torch.manual_seed(1)
        runs.append(mha(x, x, x, need_weights=False)[0])
    assert torch.equal(runs[0], runs[1])
    mha.eval()
    assert not torch.allclose(runs[0], mha(x, x, x, need_weights=False)[0])
