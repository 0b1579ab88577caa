"""Benchmark cases, one per op. A new op registers its `Case` here; a peer implementation
(faiss, SDPA, diffusers, ...) is one entry of `peers`: name -> factory(device) that returns a
callable taking the case's inputs by name, or a string saying why it cannot run (not installed,
wrong device), which the table reports as skipped."""
import torch

import fastgen
from fastgen.ops import reference

from .harness import Case, register_case


def _reparam_inputs(shape, dtype, device, requires_grad):
    g = torch.Generator(device).manual_seed(0)
    mu, logvar, eps = (torch.randn(shape, generator=g, device=device, dtype=dtype) for _ in range(3))
    return {"mu": mu.requires_grad_(requires_grad), "logvar": logvar.requires_grad_(requires_grad),
            "eps": eps}


register_case(Case(
    op="gaussian_reparam_kl",
    shapes=[(64, 65536), (16384, 256)],     # 2**22 elements each: few large samples, many VAE latents
    quick_shapes=[(32, 8192)],
    make_inputs=_reparam_inputs,
    reference=reference.gaussian_reparam_kl,
    fastgen=lambda backend, **kw: fastgen.ops.gaussian_reparam_kl(**kw, backend=backend),
    grad_inputs=("mu", "logvar"),
))


# -- vector quantization ---------------------------------------------------------------------

def _vq_inputs(shape, dtype, device, requires_grad):
    n, k, d = shape
    g = torch.Generator(device).manual_seed(0)
    return {"z": torch.randn(n, d, generator=g, device=device, dtype=dtype),
            "codebook": torch.randn(k, d, generator=g, device=device, dtype=dtype)}


def _vq_check(actual, expected, dtype, what):
    """Distances must agree; indices may differ only on rounding-level near-ties."""
    from fastgen import testing

    idx, dist = actual[:2]
    idx_ref, dist_ref = expected[:2]
    testing.assert_close(dist.to(dist_ref.dtype), dist_ref, rtol=1e-3, atol=1e-3, name=f"{what} distances")
    agree = float((idx.to(idx_ref.device) == idx_ref).float().mean())
    if agree < 0.999:
        raise AssertionError(f"{what}: only {agree:.4%} of the indices agree with the reference")


def _faiss_peer(device):
    if device != "cpu":
        return "faiss-cpu searches CPU tensors"
    try:
        import faiss
    except ImportError:
        return "faiss not installed (pip install faiss-cpu)"

    def search(z, codebook):
        index = faiss.IndexFlatL2(codebook.shape[1])
        index.add(codebook.float().numpy())  # faiss searches fp32
        dist, idx = index.search(z.float().numpy(), 1)
        return torch.from_numpy(idx[:, 0]), torch.from_numpy(dist[:, 0])
    return search


def _cdist_peer(device):
    def search(z, codebook):  # in fp32, like the fused op's accumulation
        dist, idx = torch.cdist(z.float(), codebook.float()).min(1)
        return idx, dist * dist
    return search


register_case(Case(
    op="vq_nearest",
    # (N, K, D): the grid, N = 65536
    shapes=[(65536, k, d) for k in (512, 1024, 8192) for d in (8, 64, 256)],
    quick_shapes=[(4096, 512, 64)],
    make_inputs=_vq_inputs,
    reference=reference.vq_nearest,
    fastgen=lambda backend, **kw: fastgen.ops.vq_nearest(**kw, backend=backend),
    peers={"faiss": _faiss_peer, "cdist": _cdist_peer},
    check=_vq_check,
    modes=("fwd",),
))


def _vq_quantize_inputs(shape, dtype, device, requires_grad):
    inputs = _vq_inputs(shape, dtype, device, requires_grad)
    return {k: v.requires_grad_(requires_grad) for k, v in inputs.items()}


register_case(Case(
    op="vq_quantize",
    shapes=[(65536, 1024, 64)],
    quick_shapes=[(4096, 512, 64)],
    make_inputs=_vq_quantize_inputs,
    reference=lambda z, codebook: reference.vq_quantize(z, codebook, 0.25),
    fastgen=lambda backend, **kw: fastgen.ops.vq_quantize(**kw, beta=0.25, backend=backend),
    grad_inputs=("z", "codebook"),
    registry_op="vq_nearest",
))


# -- GAN / SimCLR family -----------------------------------------------------------------------

def _bias_act_inputs(shape, dtype, device, requires_grad):
    g = torch.Generator(device).manual_seed(0)
    x = torch.randn(shape, generator=g, device=device, dtype=dtype)
    bias = torch.randn(shape[1], generator=g, device=device, dtype=dtype)
    return {"x": x.requires_grad_(requires_grad), "bias": bias.requires_grad_(requires_grad)}


def _check_with_reductions(n_elementwise):
    """Outputs and per-element gradients at the dtype's tolerance; the rest (per-channel
    gradients, sums over batch and space) at a tolerance for long fp32 sums in another order."""
    def check(actual, expected, dtype, what):
        from fastgen import testing

        for i, (a, e) in enumerate(zip(actual, expected)):
            if i < n_elementwise:
                testing.assert_close(a, e, dtype=dtype, name=f"{what}[{i}]", atol=1e-4)
            else:
                testing.assert_close(a, e, dtype=dtype, name=f"{what}[{i}]", rtol=1e-4, atol=1e-3)
    return check


def _bias_act_eager(x, bias):
    """What a GAN layer does without the fusion: bias add, leaky ReLU, gain (StyleGAN's)."""
    shape = [1, -1] + [1] * (x.dim() - 2)
    return torch.nn.functional.leaky_relu(x + bias.reshape(shape), 0.2) * 2 ** 0.5


register_case(Case(
    op="bias_act",
    shapes=[(256, 4096), (32, 128, 32, 32)],  # a linear layer's output, a conv feature map
    quick_shapes=[(64, 1024)],
    make_inputs=_bias_act_inputs,
    reference=_bias_act_eager,
    fastgen=lambda backend, **kw: fastgen.ops.bias_act(**kw, act="leaky_relu", alpha=0.2, gain=2 ** 0.5,
                                                       backend=backend),
    grad_inputs=("x", "bias"),
    check=_check_with_reductions(2),  # y, dx
))


def _group_norm_inputs(shape, dtype, device, requires_grad):
    g = torch.Generator(device).manual_seed(0)
    x = torch.randn(shape, generator=g, device=device, dtype=dtype)
    weight = 1 + 0.1 * torch.randn(shape[1], generator=g, device=device, dtype=dtype)
    bias = 0.1 * torch.randn(shape[1], generator=g, device=device, dtype=dtype)
    return {k: v.requires_grad_(requires_grad) for k, v in (("x", x), ("weight", weight), ("bias", bias))}


def _group_norm_silu_eager(x, weight, bias):
    """nn.GroupNorm(32, C) followed by nn.SiLU, as UNet / VQGAN blocks write it."""
    return torch.nn.functional.silu(torch.nn.functional.group_norm(x, 32, weight, bias, 1e-5))


register_case(Case(
    op="group_norm_silu",
    shapes=[(32, 128, 32, 32), (8, 512, 16, 16)],
    quick_shapes=[(4, 64, 16, 16)],
    make_inputs=_group_norm_inputs,
    reference=_group_norm_silu_eager,
    fastgen=lambda backend, **kw: fastgen.ops.group_norm_silu(**kw, num_groups=32, backend=backend),
    grad_inputs=("x", "weight", "bias"),
    check=_check_with_reductions(2),  # y, dx
))


def _info_nce_inputs(shape, dtype, device, requires_grad):
    n, d = shape
    g = torch.Generator(device).manual_seed(0)
    return {name: torch.randn(n, d, generator=g, device=device, dtype=dtype).requires_grad_(requires_grad)
            for name in ("z1", "z2")}


def _info_nce_check(actual, expected, dtype, what):
    """The loss sums 2N logsumexps: compare at fp32 tolerance scaled by 1/temperature."""
    from fastgen import testing

    for i, (a, e) in enumerate(zip(actual, expected)):
        testing.assert_close(a.to(e.dtype), e, rtol=1e-4, atol=1e-4 if i else 1e-3, name=f"{what}[{i}]")


register_case(Case(
    op="info_nce_loss",
    shapes=[(4096, 128)],       # (N, D): 2N = 8192 anchors, a 256 MiB fp32 matrix for eager
    quick_shapes=[(512, 128)],
    make_inputs=_info_nce_inputs,
    reference=lambda z1, z2: reference.info_nce_loss(z1, z2, 0.5)[0],
    fastgen=lambda backend, **kw: fastgen.ops.info_nce_loss(**kw, temperature=0.5, backend=backend),
    grad_inputs=("z1", "z2"),
    check=_info_nce_check,
))
