"""Plain-PyTorch specification of every fastgen op: obviously correct, and the ground truth
every kernel is tested against. Math runs in fp32 (fp64 for fp64 inputs); outputs follow the
kernels' contract (per-element outputs in the input dtype, per-sample reductions in the math
dtype).

One module per op family (vae, vq, attention, flow, diffusion, gan, norm, contrastive), the
same names as fastgen/ops/<family>.py; every name is also here, so `reference.flash_attention`
works. Nothing in fastgen imports this package at run time: the registry imports a reference
function only when the "reference" backend runs (FusedOp(reference="<family>.<name>")), and
the runtime helpers the ops need live in fastgen/ops/ (tests/test_op_contract.py checks both).
"""
from ._common import math_dtype, per_sample_sum
from .vae import (  # noqa: F401
    gaussian_reparam_kl, gaussian_reparam_kl_backward)
from .vq import (  # noqa: F401
    vq_distances, vq_nearest, vq_quantize, vq_quantize_backward, vq_code_sums, vq_ema_apply_,
    vq_ema_finish, vq_perplexity, vq_ema_update, VQ_METRICS)
from .attention import (  # noqa: F401
    attention_valid, attention_dropout_keep, dropout_scale, flash_attention,
    flash_attention_backward, decode_attention_valid, decode_attention)
from .flow import (  # noqa: F401
    coupling_log_scale, affine_coupling, coupling_dlog_scale, affine_coupling_backward,
    actnorm_shape, actnorm, actnorm_backward, lu_weight, invertible_conv1x1,
    invertible_conv1x1_backward, flow_prior_log_prob, flow_nll, flow_nll_backward,
    COUPLING_SCALE_FNS, ATAN_CLAMP_GAIN, FLOW_PRIORS)
from .diffusion import (  # noqa: F401
    _per_sample, _timestep_alphas, add_noise, get_velocity, _step_alphas, pred_original_and_epsilon,
    dynamic_threshold, guided, _limit_x0, step_noise, ddim_step, ddpm_step, flow_euler_step,
    flow_heun_step, PREDICTION_TYPES, VARIANCE_TYPES)
from .gan import (  # noqa: F401
    bias_act_channel_shape, _activation, bias_act, bias_act_slope, bias_act_backward, sum_but_dim,
    bias_act_curvature, BIAS_ACTS)
from .norm import group_norm_silu, _group_size, group_norm_silu_backward  # noqa: F401
from .contrastive import info_nce_loss, info_nce_loss_backward, INFO_NCE_NORM_EPS  # noqa: F401
