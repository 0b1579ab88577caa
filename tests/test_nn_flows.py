"""fastgen.nn.flows: invertibility, logdet = log|det J|, state_dict, caching, errors."""
import pytest
import torch
from torch import nn

import fastgen
from fastgen.nn import flows
from fastgen.testing import assert_close


def _perturb(module, seed=0, scale=0.3):
    """Zero-initialized conditioners make a coupling the identity: move every parameter."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return module


def _layers():
    """(name, module, per-sample input shape) for every invertible layer and mask."""
    torch.manual_seed(0)
    mask = torch.tensor([[True, False, True], [False, False, True]])
    return [
        ("additive-half", flows.AdditiveCoupling(4, "half", hidden=8), (4,)),
        ("additive-channel", flows.AdditiveCoupling(4, "channel", hidden=8), (4, 2, 2)),
        ("affine-half", flows.AffineCoupling(4, "half", hidden=8, scale_fn="exp"), (4,)),
        ("affine-half-parity", flows.AffineCoupling(4, "half", hidden=8, parity=1), (4,)),
        ("affine-channel", flows.AffineCoupling(4, "channel", hidden=8, scale_fn="tanh_exp"), (4, 2, 2)),
        ("affine-checkerboard", flows.AffineCoupling(2, "checkerboard", hidden=8, scale_fn="atan_exp"),
         (2, 3, 2)),
        ("affine-checkerboard-parity", flows.AffineCoupling(2, "checkerboard", hidden=8, parity=1),
         (2, 2, 2)),
        ("affine-tensor-mask", flows.AffineCoupling(6, mask, hidden=8), (2, 3)),
        ("nice-scaling", flows.NICEScaling((3, 2)), (3, 2)),
        ("actnorm", flows.ActNorm(3), (3, 2, 2)),
        ("actnorm-2d", flows.ActNorm(5), (5,)),
        ("invconv", flows.InvConv2dLU(4, generator=torch.Generator().manual_seed(1)), (4, 2, 1)),
        ("invconv-2d", flows.InvConv2dLU(3, generator=torch.Generator().manual_seed(2)), (3,)),
        ("squeeze", flows.Squeeze(), (1, 4, 2)),
    ]


LAYERS = _layers()


@pytest.mark.parametrize("name,layer,shape", LAYERS, ids=[n for n, _, _ in LAYERS])
def test_inverse_undoes_forward(name, layer, shape):
    layer = _perturb(layer.double())
    x = torch.randn((5,) + shape, dtype=torch.float64)
    z, ld = layer(x)
    x2, ld_inv = layer.inverse(z)
    assert z.shape[0] == 5 and ld.shape == (5,)
    assert_close(x2, x, name=f"{name} inverse(forward(x))")
    assert_close(ld + ld_inv, torch.zeros_like(ld), name=f"{name} logdets sum")


@pytest.mark.parametrize("name,layer,shape", LAYERS, ids=[n for n, _, _ in LAYERS])
def test_logdet_is_log_abs_det_jacobian(name, layer, shape):
    layer = _perturb(layer.double(), seed=3).eval()
    x = torch.randn((2,) + shape, dtype=torch.float64)
    _, ld = layer(x)
    for b in range(2):
        jac = torch.autograd.functional.jacobian(lambda v: layer(v.unsqueeze(0))[0].reshape(-1), x[b])
        d = x[b].numel()
        _, logabsdet = torch.linalg.slogdet(jac.reshape(d, d))
        assert_close(ld[b], logabsdet, name=f"{name} logdet[{b}]")


def test_actnorm_data_dependent_init_and_state_dict(tmp_path):
    layer = flows.ActNorm(3)
    x = torch.randn(64, 3, 4, 4) * torch.tensor([2.0, 0.5, 3.0]).view(1, 3, 1, 1) + 1.5
    assert not bool(layer.initialized)
    y, _ = layer(x)
    assert bool(layer.initialized)
    assert_close(y.mean((0, 2, 3)), torch.zeros(3), atol=1e-5, name="mean after init")
    assert_close(y.std((0, 2, 3), unbiased=False), torch.ones(3), atol=1e-4, name="std after init")
    # a second batch does not re-initialize
    loc = layer.loc.detach().clone()
    layer(torch.randn(8, 3, 4, 4))
    assert torch.equal(layer.loc.detach(), loc)
    torch.save(layer.state_dict(), tmp_path / "actnorm.pt")
    fresh = flows.ActNorm(3)
    fresh.load_state_dict(torch.load(tmp_path / "actnorm.pt"))
    assert bool(fresh.initialized) and "initialized" in layer.state_dict()
    fresh(torch.randn(8, 3, 4, 4) * 10)  # would re-initialize if the flag were lost
    assert torch.equal(fresh.loc.detach(), loc)
    # eval mode never initializes
    untouched = flows.ActNorm(3).eval()
    untouched(x)
    assert not bool(untouched.initialized)


def test_invconv_inverse_is_cached_while_weights_unchanged():
    layer = flows.InvConv2dLU(4)
    with torch.no_grad():
        w1 = layer.inverse_weight()
        assert layer.inverse_weight() is w1
    opt = torch.optim.SGD(layer.parameters(), lr=1e-3)
    z, ld = layer(torch.randn(2, 4, 3, 3))
    (z.square().sum() + ld.sum()).backward()
    opt.step()
    with torch.no_grad():
        w2 = layer.inverse_weight()
    assert w2 is not w1
    assert_close(w2, torch.linalg.inv(layer.weight().detach().double()).float(), name="W^-1 after a step")
    # with a graph needed, the inverse is differentiable (not the cached tensor)
    w3 = layer.inverse_weight()
    assert w3.requires_grad


def test_invconv_logdet_has_no_slogdet_and_matches_it():
    layer = _perturb(flows.InvConv2dLU(5).double())
    _, ld = layer(torch.randn(2, 5, 3, 4, dtype=torch.float64))
    _, expected = torch.linalg.slogdet(layer.weight())
    assert_close(ld, (12 * expected).expand(2), name="H*W*log|det W|")


def test_invconv_half_precision_computes_in_fp32():
    layer = flows.InvConv2dLU(4)
    x = torch.randn(2, 4, 3, 3)
    z, ld = layer(x.half())
    z_ref, ld_ref = layer(x.half().float())
    assert z.dtype == torch.float16 and ld.dtype == torch.float32
    assert_close(z, z_ref.half(), dtype=torch.float16)


def test_glow_like_flow_sequential():
    torch.manual_seed(0)
    flow = flows.FlowSequential(
        flows.Squeeze(), flows.ActNorm(4), flows.InvConv2dLU(4), flows.AffineCoupling(4, "channel", hidden=8),
        flows.Split(4), flows.Squeeze(), flows.ActNorm(8), flows.AffineCoupling(8, "channel", hidden=8),
        event_shape=(1, 4, 4)).double()
    x = torch.randn(6, 1, 4, 4, dtype=torch.float64)
    flow(x)  # initializes ActNorm
    _perturb(flow, seed=5, scale=0.1)
    z, total = flow(x)
    assert z.shape == (6, 8, 1, 1)
    x2, back = flow.inverse(z, flow.split_latents)
    assert_close(x2, x, name="inverse(forward(x))")
    # log p(x) = log N(z) + logdets + split log-densities: equals the change of variables
    # computed with the jacobian of the (invertible) map x -> (z, z_split)
    lp = flow.log_prob(x)

    def full_latent(v):
        zz, _ = flow(v.unsqueeze(0))
        return torch.cat([zz.reshape(-1)] + [s.reshape(-1) for s in flow.split_latents])

    b = 0
    jac = torch.autograd.functional.jacobian(full_latent, x[b])
    _, logabsdet = torch.linalg.slogdet(jac.reshape(16, 16))
    flow(x[b:b + 1])
    split = flow.split_latents[0]
    h = x[b:b + 1]
    for layer in flow.layers[:4]:
        h, _ = layer(h)
    mean, log_std = flow.layers[4]._gaussian(h[:, :2])
    split_lp = torch.distributions.Normal(mean, log_std.exp()).log_prob(split).sum()
    prior_lp = torch.distributions.Normal(0.0, 1.0).log_prob(z[b]).sum()
    assert_close(lp[b], prior_lp + split_lp + logabsdet, name="log p(x)")
    samples = flow.sample(3, temperature=0.7, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (3, 1, 4, 4) and torch.isfinite(samples).all()


def test_nice_flow_logistic_prior():
    flow = flows.FlowSequential(flows.AdditiveCoupling(4, hidden=8), flows.AdditiveCoupling(4, hidden=8, parity=1),
                                flows.NICEScaling(4), prior="logistic", event_shape=(4,))
    _perturb(flow)
    x = torch.randn(5, 4)
    z, total = flow(x)
    expected = -(torch.nn.functional.softplus(z) + torch.nn.functional.softplus(-z)).sum(1) + total
    assert_close(flow.log_prob(x), expected, atol=1e-5)
    assert flow.sample(7).shape == (7, 4)


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="half split needs an even number of features"):
        flows.AffineCoupling(5, "half")
    with pytest.raises(ValueError, match="channel split needs an even number of channels"):
        flows.AdditiveCoupling(3, "channel")
    with pytest.raises(ValueError, match="mask must be 'half', 'channel', 'checkerboard' or a bool tensor"):
        flows.AffineCoupling(4, "stripes")
    with pytest.raises(TypeError, match="mask must be a bool tensor"):
        flows.AffineCoupling(4, torch.ones(4))
    with pytest.raises(ValueError, match="both conditioning"):
        flows.AffineCoupling(4, torch.ones(4, dtype=torch.bool))
    with pytest.raises(ValueError, match="scale_fn must be one of"):
        flows.AffineCoupling(4, scale_fn="relu")
    with pytest.raises(ValueError, match=r"expects x of shape \(N, 4\)"):
        flows.AffineCoupling(4)(torch.randn(2, 4, 1))
    with pytest.raises(ValueError, match=r"expects x of shape \(N, 4, H, W\)"):
        flows.AffineCoupling(4, "channel")(torch.randn(2, 4))
    mask = torch.tensor([True, False, True])
    with pytest.raises(ValueError, match=r"the mask has shape \(3,\) but x has per-sample shape \(4,\)"):
        flows.AffineCoupling(3, mask)(torch.randn(2, 4))
    bad = flows.AffineCoupling(4, "half", conditioner=nn.Linear(2, 2))
    with pytest.raises(ValueError, match=r"conditioner returned shape \(3, 2\); expected \(3, 4\)"):
        bad(torch.randn(3, 4))
    with pytest.raises(ValueError, match="divisible by 2"):
        flows.Squeeze()(torch.randn(1, 1, 3, 4))
    with pytest.raises(ValueError, match=r"ActNorm\(3\) expects x of shape \(N, 3, ...\)"):
        flows.ActNorm(3)(torch.randn(4, 2, 2))
    with pytest.raises(ValueError, match="at least 2 samples"):
        flows.ActNorm(3)(torch.randn(1, 3))
    with pytest.raises(ValueError, match=r"InvConv2dLU\(4\) expects"):
        flows.InvConv2dLU(4)(torch.randn(2, 3, 2, 2))
    with pytest.raises(ValueError, match="prior must be one of"):
        flows.FlowSequential(flows.NICEScaling(2), prior="cauchy")
    with pytest.raises(ValueError, match="needs event_shape to sample"):
        flows.FlowSequential(flows.NICEScaling(2)).sample(2)
