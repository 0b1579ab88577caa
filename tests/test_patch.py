"""fastgen.patch: patched and unpatched models give the same indices, outputs and gradients."""
import copy

import pytest
import torch
from torch import nn

import fastgen
import fastgen.patch
from fastgen.patch import PatchReport

# the peers, test dependencies (scripts/setup.sh installs both; a lent GPU machine may lack them,
# and `pytest -m gpu` still imports this module)
diffusers = pytest.importorskip("diffusers")
vqp = pytest.importorskip("vector_quantize_pytorch")


def _grads(module):
    return {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


# -- torch.nn ------------------------------------------------------------------------------------

class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.GroupNorm(4, 8), nn.SiLU(),
                                  nn.Conv2d(8, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.ReLU())
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)

    def forward(self, x):
        h = self.body(x).flatten(2).transpose(1, 2)
        return self.attn(h, h, h, need_weights=False)[0]


def test_modules_patch_keeps_weights_and_results():
    torch.manual_seed(0)
    net = _Net()
    ref = copy.deepcopy(net)
    params_before = {n: p for n, p in net.named_parameters()}
    keys_before = list(net.state_dict())
    report = fastgen.patch.modules(net)
    assert isinstance(report, PatchReport)
    assert [w for w, _ in report.replaced] == ["body.1+2", "attn"]
    assert report.skipped == [("body.4", "GroupNorm followed by ReLU, not SiLU")]
    assert isinstance(net.body[1], fastgen.nn.GroupNormSiLU) and isinstance(net.body[2], nn.Identity)
    assert type(net.attn) is fastgen.nn.MultiheadAttention
    assert list(net.state_dict()) == keys_before  # checkpoints still load
    assert all(p is params_before[n] for n, p in net.named_parameters())  # optimizers stay valid
    x = torch.randn(2, 3, 5, 5)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    out, expected = net(x1), ref(x2)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    out.square().sum().backward()
    expected.square().sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-4, atol=1e-5)
    g, g_ref = _grads(net), _grads(ref)
    for name in g_ref:
        torch.testing.assert_close(g[name], g_ref[name], rtol=1e-4, atol=1e-5, msg=name)
    again = fastgen.patch.modules(net)  # idempotent
    assert again.replaced == []
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        fastgen.patch.modules("net")


# -- taming-transformers -------------------------------------------------------------------------

class VectorQuantizer2(nn.Module):
    """taming's VectorQuantizer2 (remap=None), restated from its formulas: taming cannot be
    installed from the package index. Recognized by fastgen.patch.taming by name + attributes."""

    def __init__(self, n_e, e_dim, beta, legacy=True, sane_index_shape=False):
        super().__init__()
        self.n_e, self.e_dim, self.beta, self.legacy = n_e, e_dim, beta, legacy
        self.embedding = nn.Embedding(n_e, e_dim)
        self.embedding.weight.data.uniform_(-1.0 / n_e, 1.0 / n_e)
        self.remap, self.re_embed, self.sane_index_shape = None, n_e, sane_index_shape

    def forward(self, z):
        z = z.permute(0, 2, 3, 1).contiguous()
        flat = z.view(-1, self.e_dim)
        w = self.embedding.weight
        d = flat.pow(2).sum(1, keepdim=True) + w.pow(2).sum(1) - 2 * flat @ w.t()
        idx = torch.argmin(d, dim=1)
        z_q = self.embedding(idx).view(z.shape)
        if self.legacy:
            loss = torch.mean((z_q.detach() - z) ** 2) + self.beta * torch.mean((z_q - z.detach()) ** 2)
        else:
            loss = self.beta * torch.mean((z_q.detach() - z) ** 2) + torch.mean((z_q - z.detach()) ** 2)
        z_q = (z + (z_q - z).detach()).permute(0, 3, 1, 2).contiguous()
        if self.sane_index_shape:
            idx = idx.reshape(z.shape[0], z.shape[1], z.shape[2])
        return z_q, loss, (None, None, idx)


@pytest.mark.parametrize("legacy", [True, False])
def test_taming_patch_matches(legacy):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 1), VectorQuantizer2(16, 4, 0.25, legacy=legacy, sane_index_shape=True))
    ref = copy.deepcopy(model)
    weight = model[1].embedding.weight
    report = fastgen.patch.taming(model)
    assert report.replaced == [("1", "fastgen.nn.VectorQuantizer")]
    assert type(model[1]) is fastgen.nn.VectorQuantizer and model[1].embedding.weight is weight
    assert list(model.state_dict()) == list(ref.state_dict())
    x = torch.randn(2, 3, 5, 6)
    (zq, loss, (_, _, idx)), (zq_r, loss_r, (_, _, idx_r)) = model[1](model[0](x)), ref[1](ref[0](x))
    assert torch.equal(idx, idx_r) and idx.shape == (2, 5, 6)
    torch.testing.assert_close(zq, zq_r)
    torch.testing.assert_close(loss, loss_r)
    (zq.square().sum() + loss).backward()
    (zq_r.square().sum() + loss_r).backward()
    g, g_ref = _grads(model), _grads(ref)
    for name in g_ref:
        torch.testing.assert_close(g[name], g_ref[name], rtol=1e-4, atol=1e-6, msg=name)
    assert fastgen.patch.taming(model).replaced == []


# -- vector-quantize-pytorch ---------------------------------------------------------------------

@pytest.fixture
def vqp_patch():
    """Yields a function running `fn` unpatched and patched; the library is left unpatched."""
    fastgen.patch.vector_quantize_pytorch(enable=False)
    yield
    fastgen.patch.vector_quantize_pytorch(enable=False)


def _count_fused(monkeypatch):
    calls = []
    original = fastgen.ops.vq_nearest

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(fastgen.ops, "vq_nearest", counting)
    return calls


def _run_vq(module, x, steps, train, **forward_kwargs):
    """A few training (or eval) steps; returns every output, the input gradient and the buffers."""
    module.train(train)
    outs = []
    for step in range(steps):
        xi = x[step].clone().requires_grad_(train)
        out = module(xi, **forward_kwargs)
        quantize, loss = out[0], out[2]
        if train:
            (quantize.square().mean() + loss.sum()).backward()
            outs.append(xi.grad)
        outs += [t for t in out if isinstance(t, torch.Tensor)]
    return outs, {k: v.clone() for k, v in module.state_dict().items()}, _grads(module)


VQ_CASES = {
    "ema_rotation_trick": dict(dim=16, codebook_size=64),
    "heads_shared": dict(dim=16, codebook_size=64, heads=2, codebook_dim=8),
    "heads_separate": dict(dim=16, codebook_size=32, heads=2, separate_codebook_per_head=True),
    "cosine_kmeans": dict(dim=16, codebook_size=32, use_cosine_sim=True, kmeans_init=True, kmeans_iters=2),
    "learnable_straight_through_dead_codes": dict(dim=16, codebook_size=64, learnable_codebook=True,
                                                  ema_update=False, rotation_trick=False,
                                                  threshold_ema_dead_code=1),
    "stochastic_falls_back": dict(dim=16, codebook_size=64, stochastic_sample_codes=True, sample_codebook_temp=0.5),
}


@pytest.mark.parametrize("case", list(VQ_CASES))
def test_vector_quantize_patched_matches_unpatched(case, vqp_patch, monkeypatch):
    torch.manual_seed(0)
    ref = vqp.VectorQuantize(**VQ_CASES[case])
    patched = copy.deepcopy(ref)
    x = torch.randn(2, 3, 24, 16)
    mask = torch.rand(3, 24) > 0.3 if case == "ema_rotation_trick" else None
    kwargs = dict(mask=mask) if mask is not None else {}
    torch.manual_seed(1)
    expected = _run_vq(ref, x, 2, True, **kwargs)
    report = fastgen.patch.vector_quantize_pytorch()
    assert len(report.replaced) == len(fastgen.patch._VQP_PATCHES) and fastgen.patch.vector_quantize_pytorch().replaced == []
    calls = _count_fused(monkeypatch)
    torch.manual_seed(1)
    got = _run_vq(patched, x, 2, True, **kwargs)
    assert (len(calls) > 0) == (case != "stochastic_falls_back"), len(calls)
    for a, b in zip(got[0], expected[0]):
        if a.dtype == torch.int64:
            assert torch.equal(a, b), case
        else:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=case)
    for part in (1, 2):  # buffers (EMA codebook, cluster sizes) and parameter gradients
        assert got[part].keys() == expected[part].keys()
        for k in expected[part]:
            torch.testing.assert_close(got[part][k], expected[part][k], rtol=1e-4, atol=1e-5, msg=f"{case}: {k}")
    # eval mode too
    eval_got, eval_expected = _run_vq(patched, x, 1, False), None
    fastgen.patch.vector_quantize_pytorch(enable=False)
    eval_expected = _run_vq(ref, x, 1, False)
    for a, b in zip(eval_got[0], eval_expected[0]):
        assert torch.equal(a, b) if a.dtype == torch.int64 else torch.allclose(a, b, rtol=1e-5, atol=1e-6)


def test_residual_vq_return_all_codes_and_restore(vqp_patch, monkeypatch):
    torch.manual_seed(0)
    ref = vqp.ResidualVQ(dim=16, num_quantizers=3, codebook_size=32)
    patched = copy.deepcopy(ref)
    x = torch.randn(2, 40, 16)
    ref.train()
    patched.train()
    expected = ref(x.clone().requires_grad_(), return_all_codes=True)
    fastgen.patch.vector_quantize_pytorch()
    calls = _count_fused(monkeypatch)
    got = patched(x.clone().requires_grad_(), return_all_codes=True)
    assert len(calls) == 3
    assert torch.equal(got[1], expected[1])
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    for k, v in ref.state_dict().items():
        torch.testing.assert_close(patched.state_dict()[k], v, rtol=1e-4, atol=1e-5, msg=k)
    restored = fastgen.patch.vector_quantize_pytorch(enable=False)
    assert len(restored.replaced) == len(fastgen.patch._VQP_PATCHES)
    assert vqp.vector_quantize_pytorch.Codebook.forward.__module__.startswith("vector_quantize_pytorch")
    with pytest.raises(TypeError, match="enable must be True or False"):
        fastgen.patch.vector_quantize_pytorch("yes")


# -- diffusers -----------------------------------------------------------------------------------

def test_diffusers_patch_pipeline_unet_and_vqmodel():
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1,
                                 block_out_channels=(8, 16), norm_num_groups=4,
                                 down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                                 up_block_types=("AttnUpBlock2D", "UpBlock2D"))
    pipe = diffusers.DDIMPipeline(unet=unet, scheduler=diffusers.DDIMScheduler(num_train_timesteps=50))
    ref_unet = copy.deepcopy(unet)
    keys = list(unet.state_dict())
    report = fastgen.patch.diffusers(pipe, resnet_group_norm_silu=True)
    assert type(pipe.scheduler) is fastgen.diffusion.DDIMScheduler
    assert pipe.scheduler.config.num_train_timesteps == 50
    fused_blocks = [w for w, what in report.replaced if "GroupNorm+SiLU" in what]
    assert len(fused_blocks) == sum(type(m).__name__ == "ResnetBlock2D" for m in unet.modules()) > 0
    assert list(unet.state_dict()) == keys
    x = torch.randn(2, 3, 8, 8)
    t = torch.tensor([3, 40])
    torch.testing.assert_close(unet(x, t).sample, ref_unet(x, t).sample, rtol=1e-4, atol=1e-5)
    again = fastgen.patch.diffusers(pipe, resnet_group_norm_silu=True)
    assert again.replaced == [] and ("scheduler", "already fastgen's") in again.skipped
    images = pipe(batch_size=1, num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="np")
    assert torch.isfinite(torch.as_tensor(images.images)).all()

    vq = diffusers.VQModel(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",),
                           up_block_types=("UpDecoderBlock2D",), block_out_channels=(8,), layers_per_block=1,
                           latent_channels=4, num_vq_embeddings=16, norm_num_groups=4, vq_embed_dim=4)
    ref_vq = copy.deepcopy(vq)
    weight = vq.quantize.embedding.weight
    report = fastgen.patch.diffusers(vq)  # default: no resnet fusion (no speedup measured on CPU)
    assert not any("GroupNorm" in what for _, what in report.replaced)
    assert ("VQModel.quantize", "fastgen.nn.VectorQuantizer") in report.replaced
    assert type(vq.quantize) is fastgen.nn.VectorQuantizer and vq.quantize.embedding.weight is weight
    img = torch.randn(2, 3, 8, 8)
    h = vq.encode(img).latents
    torch.testing.assert_close(h, ref_vq.encode(img).latents, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(vq.decode(h).sample, ref_vq.decode(h).sample, rtol=1e-4, atol=1e-5)
    with pytest.raises(TypeError, match="pipe_or_model must be"):
        fastgen.patch.diffusers(object())


# -- fastgen.nn.VectorQuantize: upstream's rotation trick default, clear errors -------------------

def test_fastgen_vector_quantize_rotation_trick_matches_upstream():
    torch.manual_seed(0)
    ours = fastgen.nn.VectorQuantize(8, 16, decay=0.9)
    theirs = vqp.VectorQuantize(dim=8, codebook_size=16, decay=0.9)
    assert ours.rotation_trick is True and theirs.rotation_trick is True
    with torch.no_grad():
        ours._codebook.embed.copy_(theirs._codebook.embed)
    x = torch.randn(2, 10, 8)
    up = torch.randn(2, 10, 8)
    grads = []
    for m in (ours, theirs):
        xi = x.clone().requires_grad_()
        q, idx, loss = m.train()(xi)
        (q * up).sum().backward()
        grads.append((q.detach(), idx, xi.grad))
    assert torch.equal(grads[0][1], grads[1][1])
    torch.testing.assert_close(grads[0][0], grads[1][0])
    torch.testing.assert_close(grads[0][2], grads[1][2], rtol=1e-4, atol=1e-5)
    assert not torch.allclose(grads[0][2], up)  # not straight-through


def test_fastgen_vector_quantize_rejects_upstream_only_arguments():
    fastgen.nn.VectorQuantize(8, 16, heads=1, straight_through=False)  # upstream's defaults: accepted
    with pytest.raises(TypeError, match=r"heads=4 is not supported.*fastgen\.patch\.vector_quantize_pytorch\(\)"):
        fastgen.nn.VectorQuantize(8, 16, heads=4)
    with pytest.raises(TypeError, match="unexpected keyword argument 'not_an_argument'"):
        fastgen.nn.VectorQuantize(8, 16, not_an_argument=1)
    with pytest.raises(TypeError, match=r"mask=.*is not supported.*vector_quantize_pytorch\(\)"):
        fastgen.nn.VectorQuantize(8, 16)(torch.randn(1, 3, 8), mask=torch.ones(1, 3, dtype=torch.bool))
    with pytest.raises(TypeError, match=r"return_all_codes=True is not supported"):
        fastgen.nn.ResidualVQ(2, 8, 16)(torch.randn(1, 3, 8), return_all_codes=True)


def test_vector_quantize_update_indices_matches_forward_ema(vqp_patch):
    """The library's EMA step from given indices (update_indices / update_ema_indices, e.g.
    after a topk search) takes the same patched statistics as the patched forward."""
    fastgen.patch.vector_quantize_pytorch()
    torch.manual_seed(0)
    a = vqp.VectorQuantize(dim=16, codebook_size=32).train()
    b = copy.deepcopy(a)
    x = torch.randn(1, 40, 16)
    mask = torch.rand(1, 40) > 0.5
    _, idx, _ = a(x, mask=mask)
    b.update_ema_indices(x, idx, mask=mask)
    for k, v in a.state_dict().items():
        assert torch.equal(b.state_dict()[k], v), k
