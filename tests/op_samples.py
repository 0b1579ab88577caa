"""Sample inputs of every registered op, declared once: tests/test_op_contract.py derives its
generated checks (opcheck, torch.compile, fake shapes, empty and non-contiguous inputs, the bad
input classes) from these and the registry alone. An op in fastgen.ops.REGISTRY without an entry
here fails that suite.

SAMPLES[name](device, n) -> Sample: every argument of the op's schema, in order, with a batch of
n rows (n = 0: the op's empty case). Small float32 shapes: the suite runs on every backend.
"""
from dataclasses import dataclass

import torch

from fastgen.ops import reference


@dataclass
class Sample:
    args: tuple
    grad: tuple = ()        # indices of the float tensors to differentiate (torch.compile backward)
    ranked: tuple = ()      # indices of tensors whose rank the op fixes (a wrong rank must be rejected)
    same_shape: tuple = ()  # (i, j): args[j] must have args[i]'s shape (a mismatch must be rejected)
    empty_error: str = None  # n = 0 is rejected with this message (regex), on every backend
    reference_by_autograd: bool = False  # the reference differentiates with torch.autograd, which
    #                                      cannot run under opcheck's schema-check dispatch mode


def _r(*shape, device, seed=0, scale=1.0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=dtype) * scale).to(device)


SAMPLES = {}


def sample(name):
    def register(fn):
        SAMPLES[name] = fn
        return fn
    return register


# -- vae -------------------------------------------------------------------------------------------

@sample("gaussian_reparam_kl")
def _(device, n):
    return Sample((_r(n, 5, device=device), _r(n, 5, device=device, seed=1, scale=0.5), _r(n, 5, device=device, seed=2)),
                  grad=(0, 1), same_shape=((0, 1), (0, 2)))


@sample("gaussian_reparam_kl_backward")
def _(device, n):
    return Sample((_r(n, 5, device=device, seed=3), _r(n, device=device, seed=4),
                   *SAMPLES["gaussian_reparam_kl"](device, n).args), same_shape=((2, 0), (2, 3), (2, 4)))


# -- vq --------------------------------------------------------------------------------------------

def _codes(device, n, k=7):
    return (torch.arange(n) % k).to(device)


@sample("vq_nearest")
def _(device, n):
    return Sample((_r(n, 4, device=device), _r(7, 4, device=device, seed=1), "l2"), ranked=(0, 1))


@sample("vq_quantize")
def _(device, n):
    return Sample((_r(n, 4, device=device), _r(7, 4, device=device, seed=1), 0.25, True), grad=(0, 1), ranked=(0, 1))


@sample("vq_quantize_backward")
def _(device, n):
    return Sample((_r(n, 4, device=device, seed=2), _r((), device=device, seed=3), _r(n, 4, device=device),
                   _r(7, 4, device=device, seed=1), _codes(device, n), 0.25, True),
                  ranked=(2, 3), same_shape=((2, 0),))


@sample("vq_code_sums")
def _(device, n):
    return Sample((_r(n, 4, device=device), _codes(device, n), 7), ranked=(0,))


@sample("vq_ema_update")
def _(device, n):
    return Sample((_r(n, 4, device=device), _codes(device, n), torch.ones(7, device=device),
                   _r(7, 4, device=device, seed=1), 0.99, 1e-5), ranked=(0,))


# -- attention -------------------------------------------------------------------------------------

def _qkv(device, n, lk=5):
    return _r(n, 2, 3, 8, device=device), _r(n, 2, lk, 8, device=device, seed=1), _r(n, 2, lk, 8, device=device, seed=2)


@sample("flash_attention")
def _(device, n):
    return Sample((*_qkv(device, n), True, None, None, 0.0, None), grad=(0, 1, 2), ranked=(0, 1, 2),
                  same_shape=((1, 2),))


@sample("flash_attention_backward")
def _(device, n):
    q, k, v = _qkv(device, n)
    out, lse = reference.flash_attention(q, k, v, True)
    return Sample((_r(n, 2, 3, 8, device=device, seed=3), torch.zeros_like(lse), q, k, v, out, lse, True, None, None,
                   0.0, None), ranked=(2, 3, 4), same_shape=((2, 0), (3, 4)), reference_by_autograd=True)


@sample("decode_attention")
def _(device, n):
    q, k, v = _qkv(device, n)
    return Sample((q[:, :, :1], k, v, torch.full((n,), 4, dtype=torch.int64, device=device), None),
                  ranked=(0, 1, 2), same_shape=((1, 2),))


# -- flows -----------------------------------------------------------------------------------------

def _coupling(device, n):
    return _r(n, 3, 4, 4, device=device), _r(n, 3, 4, 4, device=device, seed=1), _r(n, 3, 4, 4, device=device, seed=2)


@sample("affine_coupling")
def _(device, n):
    return Sample((*_coupling(device, n), "sigmoid", 2.0, False), grad=(0, 1, 2), same_shape=((0, 1), (0, 2)))


@sample("affine_coupling_backward")
def _(device, n):
    return Sample((_r(n, 3, 4, 4, device=device, seed=3), _r(n, device=device, seed=4), *_coupling(device, n),
                   "sigmoid", 2.0, False), same_shape=((2, 0), (2, 3), (2, 4)))


def _actnorm(device, n):
    return _r(n, 3, 4, 4, device=device), _r(3, device=device, seed=1), _r(3, device=device, seed=2, scale=0.5)


@sample("actnorm")
def _(device, n):
    return Sample((*_actnorm(device, n), False), grad=(0, 1, 2), ranked=(1, 2))


@sample("actnorm_backward")
def _(device, n):
    return Sample((_r(n, 3, 4, 4, device=device, seed=3), _r(n, device=device, seed=4), *_actnorm(device, n), False),
                  ranked=(3, 4), same_shape=((2, 0),))


def _invconv(device, n, c=3):
    eye = torch.eye(c, device=device)
    lower = eye + torch.tril(_r(c, c, device=device, seed=1, scale=0.3), -1)
    upper = torch.triu(_r(c, c, device=device, seed=2, scale=0.3), 1)
    return (_r(n, c, 2, 2, device=device), eye[[2, 0, 1]], lower, upper,
            torch.tensor([1.0, -1.0, 1.0], device=device), _r(c, device=device, seed=3, scale=0.2))


@sample("invertible_conv1x1")
def _(device, n):
    return Sample((*_invconv(device, n), False), grad=(0, 2, 3, 5), ranked=(1, 2, 3, 4, 5))


@sample("invertible_conv1x1_backward")
def _(device, n):
    return Sample((_r(n, 3, 2, 2, device=device, seed=4), _r(n, device=device, seed=5), *_invconv(device, n), False),
                  ranked=(3, 4, 5, 6, 7), same_shape=((2, 0),))


@sample("flow_nll")
def _(device, n):
    return Sample((_r(n, 3, 4, 4, device=device), _r(n, device=device, seed=1, scale=5.0), "gaussian", None),
                  grad=(0, 1), ranked=(1,))


@sample("flow_nll_backward")
def _(device, n):
    return Sample((_r(n, device=device, seed=2), _r(n, 3, 4, 4, device=device), "gaussian", None))


# -- diffusion -------------------------------------------------------------------------------------

def _table(device, t=10):
    return torch.linspace(0.999, 0.05, t, dtype=torch.float32, device=device)


def _mix(device, n):
    return (_r(n, 3, 4, 4, device=device), _r(n, 3, 4, 4, device=device, seed=1),
            (torch.arange(n) % 10).to(device), _table(device))


@sample("add_noise")
def _(device, n):
    return Sample(_mix(device, n), grad=(0, 1), ranked=(3,), same_shape=((0, 1),))


@sample("get_velocity")
def _(device, n):
    return Sample(_mix(device, n), grad=(0, 1), ranked=(3,), same_shape=((0, 1),))


def _step(device, n):
    ac = _table(device)
    return (_r(n, 3, 4, 4, device=device), _r(n, 3, 4, 4, device=device, seed=1), _r(n, 3, 4, 4, device=device, seed=2),
            torch.tensor(5, device=device), ac, torch.cat([ac[:1] * 0 + 1, ac[:-1]]),
            torch.empty(0, device=device), torch.empty(0, device=device))


@sample("ddim_step")
def _(device, n):
    return Sample((*_step(device, n), 1.0, 0.5, "epsilon", True, 1.0, False, None, 0),
                  ranked=(4, 5), same_shape=((1, 0), (1, 2)))


@sample("ddpm_step")
def _(device, n):
    return Sample((*_step(device, n), 1.0, "epsilon", "fixed_small", True, 1.0, None, 0),
                  ranked=(4, 5), same_shape=((1, 0), (1, 2)))


def _sigmas(device):
    return torch.linspace(1.0, 0.0, 6, dtype=torch.float32, device=device)


@sample("flow_euler_step")
def _(device, n):
    return Sample((_r(n, 3, 4, 4, device=device), _r(n, 3, 4, 4, device=device, seed=1), torch.empty(0, device=device),
                   torch.tensor(2, device=device), _sigmas(device), torch.empty(0, device=device), 1.0),
                  ranked=(4,), same_shape=((1, 0),))


@sample("flow_heun_step")
def _(device, n):
    return Sample((_r(n, 3, 4, 4, device=device), _r(n, 3, 4, 4, device=device, seed=1),
                   _r(n, 3, 4, 4, device=device, seed=2), torch.tensor(2, device=device), _sigmas(device)),
                  ranked=(4,), same_shape=((2, 0), (2, 1)))


# -- gan -------------------------------------------------------------------------------------------

@sample("bias_act")
def _(device, n):
    return Sample((_r(n, 4, 3, 3, device=device), _r(4, device=device, seed=1), "silu", 0.2, 1.0, 1),
                  grad=(0, 1), ranked=(1,))


@sample("bias_act_backward")
def _(device, n):
    return Sample((_r(n, 4, 3, 3, device=device, seed=2), _r(n, 4, 3, 3, device=device), _r(4, device=device, seed=1),
                   "silu", 0.2, 1.0, 1), grad=(0, 1, 2), ranked=(2,), same_shape=((1, 0),))


# -- norm ------------------------------------------------------------------------------------------

def _gn(device, n):
    return _r(n, 4, 3, 3, device=device), _r(4, device=device, seed=1), _r(4, device=device, seed=2)


@sample("group_norm_silu")
def _(device, n):
    return Sample((*_gn(device, n), 2, 1e-5, True), grad=(0, 1, 2), ranked=(1, 2))


@sample("group_norm_silu_backward")
def _(device, n):
    x, w, b = _gn(device, n)
    _, mean, rstd = reference.group_norm_silu(x, w, b, 2)
    return Sample((_r(n, 4, 3, 3, device=device, seed=3), x, w, b, mean, rstd, 2, True),
                  ranked=(2, 3), same_shape=((1, 0),))


# -- contrastive -----------------------------------------------------------------------------------

@sample("info_nce_loss")
def _(device, n):
    return Sample((_r(n, 6, device=device), _r(n, 6, device=device, seed=1), 0.5), grad=(0, 1), ranked=(0, 1),
                  same_shape=((0, 1),), empty_error="needs at least one pair")


@sample("info_nce_loss_backward")
def _(device, n):
    z1, z2 = _r(n, 6, device=device), _r(n, 6, device=device, seed=1)
    _, lse = reference.info_nce_loss(z1, z2, 0.5) if n else (None, torch.empty(0, device=device))
    return Sample((_r((), device=device, seed=2), z1, z2, lse, 0.5), ranked=(1, 2), same_shape=((1, 2),),
                  empty_error="needs at least one pair")
