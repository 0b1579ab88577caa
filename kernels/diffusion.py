"""Triton kernels for the diffusion family: add_noise / get_velocity, the DDPM and DDIM steps,
and the flow-matching Euler / Heun steps. Each call is one launch over the flattened elements.

Per-step scalars (cumulative alphas, sigmas) are gathered inside the kernel from schedule tables
on the device, indexed by a timestep that is either a device tensor (read through a pointer,
so a CUDA graph replays it) or a host value (a kernel argument): no host-device sync.
Every program recomputes the step's few coefficients from the two gathered alphas; that is a
handful of scalar flops next to a BLOCK of loads. Math in fp32 (fp64 for fp64 samples).
"""
import torch

from ._compat import jit, math_dtype, split_double, tl

_BLOCK = 1024

# codes shared with the launchers below (constexpr switches)
PRED = {"epsilon": 0, "sample": 1, "v_prediction": 2}
VAR = {"fixed_small": 0, "fixed_small_log": 1, "fixed_large": 2, "fixed_large_log": 3}


def _index_arg(index, dummy):
    """(pointer, host value, FROM_PTR) for a 0-d index tensor: a host (CPU) index becomes a
    kernel argument (reading it costs no device sync); a device index is read by the kernel.
    `dummy` is a tensor on the kernel's device to pass as the unused pointer."""
    if index.device.type == "cpu":
        return dummy, int(index), False
    return index, 0, True


@jit
def _load_index(ptr, value, FROM_PTR: tl.constexpr):
    if FROM_PTR:
        return tl.load(ptr).to(tl.int64)
    return tl.zeros([], tl.int64) + value


# -- add_noise / get_velocity: out = c_a[b] * a + c_b[b] * b ------------------------------------

@jit
def _mix_by_timestep_kernel(a_ptr, b_ptr, t_ptr, table_ptr, out_ptr, n, cols, t_stride, table_len,
                            VELOCITY: tl.constexpr, BLOCK: tl.constexpr):
    math_t = tl.float64 if out_ptr.dtype.element_ty == tl.float64 else tl.float32
    idx = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = idx < n
    row = idx // cols
    t = tl.load(t_ptr + row * t_stride, mask=mask, other=0).to(tl.int64)
    # device timesteps are not range-checked on the host (a sync): one outside the table reads
    # nothing and gives NaN, as the reference and the CUDA kernel do
    t_ok = (t >= 0) & (t < table_len)
    abar = tl.load(table_ptr + t, mask=mask & t_ok, other=float("nan")).to(math_t)
    sa = tl.sqrt(abar)
    sb = tl.sqrt(1.0 - abar)
    a = tl.load(a_ptr + idx, mask=mask, other=0.0).to(math_t)
    b = tl.load(b_ptr + idx, mask=mask, other=0.0).to(math_t)
    if VELOCITY:  # a = sample, b = noise: sqrt(abar) * noise - sqrt(1 - abar) * sample
        out = sa * b - sb * a
    else:         # a = x0, b = noise
        out = sa * a + sb * b
    tl.store(out_ptr + idx, out.to(out_ptr.dtype.element_ty), mask=mask)


def _mix(a, b, timesteps, table, velocity):
    a, b = a.contiguous(), b.contiguous()
    out = torch.empty_like(a, memory_format=torch.contiguous_format)
    n = a.numel()
    if n == 0:
        return out
    rows = a.shape[0]
    cols = n // rows
    t_stride = 0 if timesteps.numel() == 1 else 1
    grid = (triton_cdiv(n, _BLOCK),)
    _mix_by_timestep_kernel[grid](a, b, timesteps.reshape(-1).contiguous(), table.contiguous(), out,
                                  n, cols, t_stride, table.shape[0], VELOCITY=velocity, BLOCK=_BLOCK)
    return out


def add_noise(original_samples, noise, timesteps, alphas_cumprod):
    return _mix(original_samples, noise, timesteps, alphas_cumprod, False)


def get_velocity(sample, noise, timesteps, alphas_cumprod):
    return _mix(sample, noise, timesteps, alphas_cumprod, True)


def triton_cdiv(a, b):
    return -(-a // b)


# -- DDPM / DDIM ---------------------------------------------------------------------------------
# Both steps have the form (see csrc/common/diffusion.h for the derivation):
#   x0   = (X * x + M * m) * S                 (m = model output; prediction type -> X, M, S)
#   x0  <- clamp(x0, -s_b, s_b) / s_b            (dynamic threshold) or clamp(x0, -r, r) (clip)
#   prev = A * x0 + B * x + C * m + D * noise

@jit
def _denoise_step_kernel(m_ptr, u_ptr, x_ptr, noise_ptr, t_ptr, t_value, table_ptr, prev_table_ptr,
                         thr_ptr, prev_ptr, x0_ptr, n, cols, eta_hi, eta_lo, clip_hi, clip_lo, g_hi, g_lo,
                         seed_ptr, seed_value, seed_offset, SEED_FROM_PTR: tl.constexpr, GEN_NOISE: tl.constexpr,
                         GUIDED: tl.constexpr, T_FROM_PTR: tl.constexpr, DDPM: tl.constexpr,
                         PRED_TYPE: tl.constexpr,
                         VAR_TYPE: tl.constexpr, CLIP: tl.constexpr, THRESHOLD: tl.constexpr,
                         HAS_NOISE: tl.constexpr, USE_CLIPPED: tl.constexpr, BLOCK: tl.constexpr):
    math_t = tl.float64 if prev_ptr.dtype.element_ty == tl.float64 else tl.float32
    t = _load_index(t_ptr, t_value, T_FROM_PTR)
    zero = tl.zeros([], math_t)  # scalar args are fp32 on GPU and Python floats when interpreted
    eta = (zero + eta_hi) + eta_lo
    clip_range = (zero + clip_hi) + clip_lo
    a = tl.load(table_ptr + t).to(math_t)
    a_prev = tl.load(prev_table_ptr + t).to(math_t)
    b = 1.0 - a
    sa = tl.sqrt(a)
    sb = tl.sqrt(b)
    # x0 = (X x + M m) S; eps = EX x + EM m
    S = 1.0
    if PRED_TYPE == 0:
        X = 1.0
        M = -sb
        S = 1.0 / sa
        EX = 0.0
        EM = 1.0
    elif PRED_TYPE == 1:
        X = 0.0
        M = 1.0
        EX = 1.0 / sb
        EM = -sa / sb
    else:
        X = sa
        M = -sb
        EX = sb
        EM = sa
    if DDPM:
        alpha_t = a / a_prev
        beta_t = 1.0 - alpha_t
        A = tl.sqrt(a_prev) * beta_t / b
        B = tl.sqrt(alpha_t) * (1.0 - a_prev) / b
        C = 0.0
        var = tl.maximum((1.0 - a_prev) / b * beta_t, 1e-20)
        if VAR_TYPE == 0:
            D = tl.sqrt(var)
        elif VAR_TYPE == 1:
            D = tl.exp(0.5 * tl.log(var))
        elif VAR_TYPE == 2:
            D = tl.sqrt(beta_t)
        else:
            D = tl.exp(0.5 * tl.log(beta_t))
        D = tl.where(t > 0, D, 0.0)
    else:
        # sigma and dir as in csrc/common/diffusion.h (dir^2 formed without cancellation)
        r = (a_prev - a) / (a_prev * b)
        one_minus_r = a * (1.0 - a_prev) / (a_prev * b)
        std = eta * tl.sqrt((1.0 - a_prev) * r)
        direction = tl.sqrt(tl.maximum((1.0 - a_prev) * ((1.0 - eta * eta) + eta * eta * one_minus_r), 0.0))
        if USE_CLIPPED:  # eps re-derived from the clipped x0: (x - sa x0) / sb
            A = tl.sqrt(a_prev) - direction * sa / sb
            B = direction / sb
            C = 0.0
        else:
            A = tl.sqrt(a_prev)
            B = direction * EX
            C = direction * EM
        D = std
    idx = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = idx < n
    m = tl.load(m_ptr + idx, mask=mask, other=0.0).to(math_t)
    if GUIDED:  # classifier-free guidance: u + g (c - u)
        u = tl.load(u_ptr + idx, mask=mask, other=0.0).to(math_t)
        m = u + ((zero + g_hi) + g_lo) * (m - u)
    x = tl.load(x_ptr + idx, mask=mask, other=0.0).to(math_t)
    x0 = (X * x + M * m) * S
    if THRESHOLD:
        s = tl.load(thr_ptr + idx // cols, mask=mask, other=1.0).to(math_t)
        x0 = tl.minimum(tl.maximum(x0, -s), s) / s
    elif CLIP:
        x0 = tl.minimum(tl.maximum(x0, -clip_range), clip_range)
    if DDPM or USE_CLIPPED:  # C = 0 by construction: no 0 * m term (0 * inf = NaN after clipping)
        prev = A * x0 + B * x
    else:
        prev = A * x0 + B * x + C * m
    if GEN_NOISE:  # in-kernel noise: element idx gets randn(seed, seed_offset + idx), any tiling
        seed = _load_index(seed_ptr, seed_value, SEED_FROM_PTR)
        z = tl.randn(seed, seed_offset + idx).to(math_t)
        prev += D * z
    elif HAS_NOISE:
        z = tl.load(noise_ptr + idx, mask=mask, other=0.0).to(math_t)
        prev += D * z
    tl.store(prev_ptr + idx, prev.to(prev_ptr.dtype.element_ty), mask=mask)
    tl.store(x0_ptr + idx, x0.to(x0_ptr.dtype.element_ty), mask=mask)


def _denoise_step(ddpm, model_output, sample, noise, timestep, alphas_cumprod, alphas_cumprod_prev,
                  threshold, uncond, guidance_scale, eta, prediction_type, variance_type, clip_sample,
                  clip_sample_range, use_clipped_model_output, seed=None, seed_offset=0):
    m, x = model_output.contiguous(), sample.contiguous()
    prev = torch.empty_like(x, memory_format=torch.contiguous_format)
    x0 = torch.empty_like(x, memory_format=torch.contiguous_format)
    n = x.numel()
    if n == 0:
        return prev, x0
    stochastic = ddpm or eta > 0
    gen_noise = seed is not None and stochastic
    has_noise = noise.numel() > 0 and stochastic
    noise = noise.contiguous() if has_noise else x
    seed_ptr, seed_value, seed_from_ptr = _index_arg(seed.reshape(()), x) if gen_noise else (x, 0, False)
    thresholding = threshold.numel() > 0
    guided = uncond.numel() > 0
    t_ptr, t_value, from_ptr = _index_arg(timestep.reshape(()), x)
    _denoise_step_kernel[(triton_cdiv(n, _BLOCK),)](
        m, uncond.contiguous() if guided else m, x, noise, t_ptr, t_value, alphas_cumprod.contiguous(),
        alphas_cumprod_prev.contiguous(), threshold.contiguous() if thresholding else x, prev, x0, n,
        n // x.shape[0], *split_double(eta), *split_double(clip_sample_range),
        *split_double(guidance_scale), seed_ptr, seed_value, int(seed_offset), SEED_FROM_PTR=seed_from_ptr,
        GEN_NOISE=gen_noise, GUIDED=guided, T_FROM_PTR=from_ptr, DDPM=ddpm,
        PRED_TYPE=PRED[prediction_type],
        VAR_TYPE=VAR[variance_type], CLIP=bool(clip_sample), THRESHOLD=thresholding,
        HAS_NOISE=has_noise, USE_CLIPPED=bool(use_clipped_model_output), BLOCK=_BLOCK)
    return prev, x0


def ddim_step(model_output, sample, noise, timestep, alphas_cumprod, alphas_cumprod_prev, threshold,
              model_output_uncond, guidance_scale=1.0, eta=0.0, prediction_type="epsilon",
              clip_sample=False, clip_sample_range=1.0, use_clipped_model_output=False, seed=None,
              seed_offset=0):
    return _denoise_step(False, model_output, sample, noise, timestep, alphas_cumprod,
                         alphas_cumprod_prev, threshold, model_output_uncond, guidance_scale, eta,
                         prediction_type, "fixed_small",
                         clip_sample, clip_sample_range, use_clipped_model_output, seed, seed_offset)


def ddpm_step(model_output, sample, noise, timestep, alphas_cumprod, alphas_cumprod_prev, threshold,
              model_output_uncond, guidance_scale=1.0, prediction_type="epsilon",
              variance_type="fixed_small", clip_sample=True, clip_sample_range=1.0, seed=None,
              seed_offset=0):
    return _denoise_step(True, model_output, sample, noise, timestep, alphas_cumprod,
                         alphas_cumprod_prev, threshold, model_output_uncond, guidance_scale, 0.0,
                         prediction_type, variance_type,
                         clip_sample, clip_sample_range, False, seed, seed_offset)


# -- flow matching ---------------------------------------------------------------------------------

@jit
def _flow_step_kernel(v_ptr, v2_ptr, x_ptr, noise_ptr, i_ptr, i_value, sigmas_ptr, out_ptr, n, g_hi, g_lo,
                      I_FROM_PTR: tl.constexpr, HEUN: tl.constexpr, STOCHASTIC: tl.constexpr,
                      GUIDED: tl.constexpr, BLOCK: tl.constexpr):
    math_t = tl.float64 if out_ptr.dtype.element_ty == tl.float64 else tl.float32
    i = _load_index(i_ptr, i_value, I_FROM_PTR)
    s = tl.load(sigmas_ptr + i).to(math_t)
    s_next = tl.load(sigmas_ptr + i + 1).to(math_t)
    idx = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = idx < n
    v = tl.load(v_ptr + idx, mask=mask, other=0.0).to(math_t)
    if GUIDED:  # v2 holds the unconditional velocity: u + g (c - u)
        u = tl.load(v2_ptr + idx, mask=mask, other=0.0).to(math_t)
        v = u + ((tl.zeros([], math_t) + g_hi) + g_lo) * (v - u)
    x = tl.load(x_ptr + idx, mask=mask, other=0.0).to(math_t)
    if HEUN:
        v2 = tl.load(v2_ptr + idx, mask=mask, other=0.0).to(math_t)
        out = x + (s_next - s) * 0.5 * (v + v2)
    elif STOCHASTIC:
        z = tl.load(noise_ptr + idx, mask=mask, other=0.0).to(math_t)
        out = (1.0 - s_next) * (x - s * v) + s_next * z
    else:
        out = x + (s_next - s) * v
    tl.store(out_ptr + idx, out.to(out_ptr.dtype.element_ty), mask=mask)


def _flow(v, v2, x, noise, step_index, sigmas, heun, guidance_scale=1.0):
    """v2: the second velocity (Heun) or the unconditional one (Euler with guidance), or None."""
    v, x = v.contiguous(), x.contiguous()
    out = torch.empty_like(x, memory_format=torch.contiguous_format)
    n = x.numel()
    if n == 0:
        return out
    stochastic = noise is not None and noise.numel() > 0
    guided = not heun and v2 is not None and v2.numel() > 0
    i_ptr, i_value, from_ptr = _index_arg(step_index.reshape(()), x)
    _flow_step_kernel[(triton_cdiv(n, _BLOCK),)](
        v, v2.contiguous() if heun or guided else v, x, noise.contiguous() if stochastic else x, i_ptr,
        i_value, sigmas.contiguous(), out, n, *split_double(guidance_scale), I_FROM_PTR=from_ptr,
        HEUN=heun, STOCHASTIC=stochastic, GUIDED=guided, BLOCK=_BLOCK)
    return out


def flow_euler_step(model_output, sample, noise, step_index, sigmas, model_output_uncond, guidance_scale=1.0):
    return _flow(model_output, model_output_uncond, sample, noise, step_index, sigmas, False, guidance_scale)


def flow_heun_step(model_output, model_output_next, sample, step_index, sigmas):
    return _flow(model_output, model_output_next, sample, None, step_index, sigmas, True)
