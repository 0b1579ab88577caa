"""Vector-quantization modules on top of `fastgen.ops.vq_nearest` / `vq_quantize`.

- `VectorQuantizer`: taming-transformers' `VectorQuantizer2` (same constructor, forward
  signature, return values, index shapes, remapping and state dict), with the search done by
  the fused nearest-code op instead of an N x K distance matrix.
- `EMAVectorQuantizer`: the EMA-codebook quantizer taming ships but cannot construct, working.
- `vq_ema_update_`: one EMA codebook step (the fused `fastgen.ops.vq_ema_update`), all-reduced
  across replicas when torch.distributed is up.
- `VectorQuantize` / `ResidualVQ`: the commonly used part of lucidrains'
  vector-quantize-pytorch (EMA or learned codebook, k-means init, cosine codebook, dead-code
  expiry, codebook_dim projection, residual quantization).
"""
import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .. import ops
from ..ops import vq as _vq_ops

__all__ = ["EMAVectorQuantizer", "ResidualVQ", "VectorQuantize", "VectorQuantizer", "vq_ema_update_"]

_HALF = (torch.float16, torch.bfloat16)


def _distributed():
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


# -- layout helpers ----------------------------------------------------------------------------

def _fmap_to_rows(who, name, z, channels):
    """BCHW -> (B*H*W, C) rows (a view when z is channels_last, else one copy)."""
    if not isinstance(z, torch.Tensor):
        raise TypeError(f"fastgen.nn.{who}: {name} must be a torch.Tensor, got {type(z).__name__}")
    if z.dim() != 4 or z.shape[1] != channels:
        raise ValueError(f"fastgen.nn.{who}: {name} must have shape (B, {channels}, H, W), "
                         f"got {tuple(z.shape)}")
    return z.permute(0, 2, 3, 1).reshape(-1, channels)


def _rows_to_fmap(rows, like):
    """(B*H*W, C) rows -> BCHW in `like`'s memory format (channels_last input: no copy)."""
    b, c, h, w = like.shape
    out = rows.reshape(b, h, w, rows.shape[-1]).permute(0, 3, 1, 2)
    if like.is_contiguous(memory_format=torch.channels_last) and not like.is_contiguous():
        return out
    return out.contiguous()


def _smoothed_codebook(cluster_size, embed_sum, eps):
    """Codebook = EMA sums / Laplace-smoothed EMA counts (as the EMA step computes it)."""
    return _vq_ops.ema_codebook(cluster_size, embed_sum, eps)


def vq_ema_update_(z_flat, indices, cluster_size, embed_sum, decay, eps):
    """One EMA codebook step, updating `cluster_size` (K,) and `embed_sum` (K, D) in place and
    returning (codebook, perplexity): `fastgen.ops.vq_ema_update` (fused segmented sums + EMA,
    all-reduced over replicas when torch.distributed is initialized) under the name the
    modules use."""
    return ops.vq_ema_update(z_flat, indices, cluster_size, embed_sum, decay, eps)


# -- taming-transformers ------------------------------------------------------------------------

class _IndexRemap:
    """taming's post-hoc index remapping: `remap` is a .npy of the used code ids; forward
    indices become positions in that list, unknown ids become `unknown_index`
    ("random": uniform in [0, len(used)); "extra": len(used); or a given int)."""

    def _init_remap(self, remap, unknown_index, n_codes):
        self.remap = remap
        if remap is None:
            self.re_embed = n_codes
            return
        if not (unknown_index in ("random", "extra") or isinstance(unknown_index, (int, np.integer))):
            raise ValueError(f"fastgen.nn.{type(self).__name__}: unknown_index must be 'random', 'extra' "
                             f"or an int, got {unknown_index!r}")
        self.register_buffer("used", torch.tensor(np.load(remap)))
        if self.used.dim() != 1:
            raise ValueError(f"fastgen.nn.{type(self).__name__}: remap must hold a 1-d array of code "
                             f"ids, got shape {tuple(self.used.shape)}")
        self.re_embed = self.used.shape[0]
        self.unknown_index = unknown_index
        if unknown_index == "extra":
            self.unknown_index = self.re_embed
            self.re_embed += 1

    def remap_to_used(self, inds):
        """Code ids (B, ...) -> positions in `used` (first occurrence); ids not in `used` get
        `unknown_index`. A lookup table over the K codes replaces taming's (N, len(used)) match."""
        if inds.dim() < 2:
            raise ValueError(f"fastgen.nn.{type(self).__name__}.remap_to_used: inds must have a batch "
                             f"axis and at least one more, got shape {tuple(inds.shape)}")
        k = self.n_codes
        used = self.used.to(device=inds.device, dtype=torch.int64)
        m = used.shape[0]
        positions = torch.arange(m, device=inds.device)
        valid = (used >= 0) & (used < k)
        table = torch.full((k,), m, dtype=torch.int64, device=inds.device)
        table.scatter_reduce_(0, used.clamp(0, k - 1), torch.where(valid, positions, m), "amin")
        flat = inds.to(torch.int64)
        in_range = (flat >= 0) & (flat < k)
        new = torch.where(in_range, table[flat.clamp(0, k - 1)], m)
        if self.unknown_index == "random":
            fill = torch.randint(0, self.re_embed, new.shape, device=new.device)
        else:
            fill = torch.full_like(new, self.unknown_index)
        return torch.where(new == m, fill, new)

    def unmap_to_all(self, inds):
        """Positions in `used` (B, ...) -> code ids; the "extra" position maps to used[0].
        Unlike taming, the argument is not modified."""
        if inds.dim() < 2:
            raise ValueError(f"fastgen.nn.{type(self).__name__}.unmap_to_all: inds must have a batch "
                             f"axis and at least one more, got shape {tuple(inds.shape)}")
        used = self.used.to(inds)
        if self.re_embed > used.shape[0]:
            inds = torch.where(inds >= used.shape[0], 0, inds)
        return used[inds]

    def get_codebook_entry(self, indices, shape):
        """Codes for `indices`; with `shape` = (B, H, W, C) they come back as BCHW."""
        if self.remap is not None:
            batch = shape[0] if shape is not None else 1
            indices = self.unmap_to_all(indices.reshape(batch, -1)).reshape(-1)
        z_q = self.embedding(indices)
        if shape is not None:
            z_q = z_q.view(shape).permute(0, 3, 1, 2).contiguous()
        return z_q


class VectorQuantizer(_IndexRemap, nn.Module):
    """Drop-in for taming-transformers' `VectorQuantizer2` (and `VectorQuantizer`, with
    legacy=True): nearest code per pixel of a BCHW input, straight-through gradient and
    taming's loss
        legacy=True:  mean((sg(z_q) - z)^2) + beta * mean((z_q - sg(z))^2)   (taming's default)
        legacy=False: beta * mean((sg(z_q) - z)^2) + mean((z_q - sg(z))^2).
    forward returns (z_q, loss, (None, None, indices)); indices are flat (B*H*W,), (B*H*W, 1)
    with `remap`, or (B, H, W) with sane_index_shape. A taming checkpoint loads as is
    (`embedding.weight`, plus `used` with remap).
    """

    def __init__(self, n_e, e_dim, beta, remap=None, unknown_index="random", sane_index_shape=False,
                 legacy=True):
        super().__init__()
        self.n_e = n_e
        self.e_dim = e_dim
        self.beta = beta
        self.legacy = legacy
        self.embedding = nn.Embedding(n_e, e_dim)
        self.embedding.weight.data.uniform_(-1.0 / n_e, 1.0 / n_e)
        self._init_remap(remap, unknown_index, n_e)
        self.sane_index_shape = sane_index_shape

    @property
    def n_codes(self):
        return self.n_e

    def forward(self, z, temp=None, rescale_logits=False, return_logits=False):
        # temp / rescale_logits / return_logits exist for interface parity with GumbelQuantize.
        if not (temp is None or temp == 1.0):
            raise ValueError(f"fastgen.nn.VectorQuantizer: temp must be None or 1.0 (Gumbel interface "
                             f"only), got {temp!r}")
        if rescale_logits or return_logits:
            raise ValueError("fastgen.nn.VectorQuantizer: rescale_logits and return_logits must be False "
                             "(Gumbel interface only)")
        rows = _fmap_to_rows("VectorQuantizer", "z", z, self.e_dim)
        weight = self.embedding.weight
        dtype = torch.promote_types(rows.dtype, weight.dtype)
        z_q, loss, idx = ops.vq_quantize(rows.to(dtype), weight.to(dtype), self.beta, self.legacy)
        z_q = _rows_to_fmap(z_q, z)
        b, _, h, w = z.shape
        if self.remap is not None:
            idx = self.remap_to_used(idx.reshape(b, -1)).reshape(-1, 1)
        if self.sane_index_shape:
            idx = idx.reshape(b, h, w)
        return z_q, loss, (None, None, idx)


class _EMAEmbedding(nn.Module):
    """taming's EmbeddingEMA state (keys embedding.weight / .cluster_size / .embed_avg), held as
    buffers: the codebook gets no gradient."""

    def __init__(self, num_tokens, codebook_dim, decay=0.99, eps=1e-5):
        super().__init__()
        self.decay = decay
        self.eps = eps
        weight = torch.randn(num_tokens, codebook_dim)
        self.register_buffer("weight", weight)
        # taming starts cluster_size at 0 with embed_avg = weight: after the first step every
        # unused code becomes ~weight / eps and never wins again. At 1 the state is consistent
        # (weight = embed_avg / cluster_size) and an unused code stays where it is.
        self.register_buffer("cluster_size", torch.ones(num_tokens))
        self.register_buffer("embed_avg", weight.clone())
        self.update = True

    def forward(self, embed_id):
        return F.embedding(embed_id, self.weight)


class EMAVectorQuantizer(_IndexRemap, nn.Module):
    """What taming-transformers' EMAVectorQuantizer means to be (its own fails in __init__):
    nearest code per pixel of a BCHW input; in training mode the codebook follows an EMA of the
    per-code counts and sums (Laplace-smoothed, see `vq_ema_update_`) instead of a gradient.
    forward returns (z_q, beta * mse(sg(z_q), z), (perplexity, None, indices (B*H*W,))); z_q
    and the loss use the codebook from before this step's update, as taming's code does.
    State dict keys are taming's (embedding.weight / cluster_size / embed_avg). One deliberate
    difference: cluster_size starts at 1, not 0 (see _EMAEmbedding).
    """

    def __init__(self, n_embed, embedding_dim, beta, decay=0.99, eps=1e-5, remap=None,
                 unknown_index="random"):
        super().__init__()
        self.n_embed = n_embed
        self.embedding_dim = embedding_dim
        self.beta = beta
        self.embedding = _EMAEmbedding(n_embed, embedding_dim, decay, eps)
        self._init_remap(remap, unknown_index, n_embed)

    @property
    def n_codes(self):
        return self.n_embed

    def forward(self, z):
        rows = _fmap_to_rows("EMAVectorQuantizer", "z", z, self.embedding_dim)
        emb = self.embedding
        dtype = torch.promote_types(rows.dtype, emb.weight.dtype)
        rows = rows.to(dtype)
        codebook = emb.weight.to(dtype)
        idx, _ = ops.vq_nearest(rows.detach(), codebook)
        z_q = codebook.index_select(0, idx)
        if self.training and emb.update:
            new, perplexity = vq_ema_update_(rows.detach(), idx, emb.cluster_size, emb.embed_avg,
                                             emb.decay, emb.eps)
            emb.weight.copy_(new)
        else:
            counts = torch.zeros(self.n_embed, dtype=dtype, device=idx.device)
            counts.index_add_(0, idx, torch.ones(idx.shape[0], dtype=dtype, device=idx.device))
            perplexity = _vq_ops.code_perplexity(counts)
        loss = self.beta * F.mse_loss(z_q.detach(), rows)
        z_q = _rows_to_fmap(rows + (z_q - rows).detach(), z)
        if self.remap is not None:
            idx = self.remap_to_used(idx.reshape(z.shape[0], -1)).reshape(-1)
        return z_q, loss, (perplexity, None, idx)


# -- vector-quantize-pytorch --------------------------------------------------------------------

def _sample_rows(rows, num):
    """`num` rows of `rows`: distinct ones when there are enough, else drawn with replacement.
    Rank 0's draw is broadcast so replicas stay identical."""
    n = rows.shape[0]
    if n >= num:
        pick = torch.randperm(n, device=rows.device)[:num]
    else:
        pick = torch.randint(0, n, (num,), device=rows.device)
    out = rows.index_select(0, pick)
    if _distributed():
        dist.broadcast(out, 0)
    return out


def _kmeans(samples, k, iters, metric):
    """Lloyd's k-means on samples (N, D): `iters` rounds of nearest-mean assignment
    (`vq_nearest`) and mean update from segmented sums; an empty cluster keeps its mean.
    Returns (means (k, D), counts (k,) of the last assignment)."""
    d = samples.shape[1]
    means = _sample_rows(samples, k)
    counts = None
    for _ in range(iters):
        idx, _ = ops.vq_nearest(samples, means, metric)
        counts, sums = ops.vq_code_sums(samples, idx, k)
        if _distributed():
            stats = torch.cat([sums, counts[:, None]], 1)
            dist.all_reduce(stats)
            counts, sums = stats[:, d], stats[:, :d]
        new = (sums / counts.clamp_min(1).unsqueeze(1)).to(samples.dtype)
        if metric == "cosine":
            new = F.normalize(new, dim=-1, eps=1e-6)
        means = torch.where((counts == 0).unsqueeze(1), means, new)
    return means, counts


class _Codebook(nn.Module):
    """Codebook state with vector-quantize-pytorch's buffer names and shapes (`_codebook.embed`
    (1, K, D), `embed_avg` (1, K, D), `cluster_size` (1, K), `initted`), so its checkpoints load."""

    def __init__(self, dim, codebook_size, kmeans_init, use_cosine_sim, learnable):
        super().__init__()
        if kmeans_init:
            embed = torch.zeros(1, codebook_size, dim)
        else:
            embed = nn.init.kaiming_uniform_(torch.empty(1, codebook_size, dim))
            if use_cosine_sim:
                embed = F.normalize(embed, dim=-1, eps=1e-6)
        self.register_buffer("initted", torch.tensor(not kmeans_init))
        self.register_buffer("cluster_size", torch.ones(1, codebook_size))
        self.register_buffer("embed_avg", embed.clone())
        if learnable:
            self.embed = nn.Parameter(embed)
        else:
            self.register_buffer("embed", embed)
        # Python mirror of `initted`, so a forward neither syncs with the device nor branches on
        # tensor data (which torch.compile cannot trace) once the codebook is initialised.
        self._initted = not kmeans_init

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._initted = bool(self.initted)


def _to_rows(who, x, dim, channel_last, image_fmap):
    """Input -> (rows (M, dim), layout). Layouts: BCHW (image_fmap), (B, N, dim), (B, dim)
    (channel_last) or (B, dim, N)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"fastgen.nn.{who}: x must be a torch.Tensor, got {type(x).__name__}")
    if image_fmap:
        return _fmap_to_rows(who, "x", x, dim), "image"
    if channel_last:
        if x.dim() not in (2, 3) or x.shape[-1] != dim:
            raise ValueError(f"fastgen.nn.{who}: x must have shape (B, N, {dim}) or (B, {dim}), "
                             f"got {tuple(x.shape)}")
        return x.reshape(-1, dim), "last"
    if x.dim() != 3 or x.shape[1] != dim:
        raise ValueError(f"fastgen.nn.{who}: x must have shape (B, {dim}, N) (channel_last=False), "
                         f"got {tuple(x.shape)}")
    return x.transpose(1, 2).reshape(-1, dim), "first"


def _from_rows(q, idx, x, layout):
    """Inverse of `_to_rows` for the quantized rows (M, d) and per-row indices (M, ...)."""
    extra = idx.shape[1:]
    if layout == "image":
        b, _, h, w = x.shape
        return q.reshape(b, h, w, -1).permute(0, 3, 1, 2), idx.reshape(b, h, w, *extra)
    lead = x.shape[:-1] if layout == "last" else (x.shape[0], x.shape[2])
    q = q.reshape(*lead, q.shape[-1])
    if layout == "first":
        q = q.transpose(1, 2)
    return q, idx.reshape(*lead, *extra)


def _rotation_trick(e, q, eps=1e-6):
    """The rotation trick (Fifty et al. 2024, arXiv:2410.06424, section 4.2): the value is q,
    the gradient reaches e through the rotation R that takes e's direction to q's and the
    rescaling ||q|| / ||e||, both held constant: d out / d e = (||q|| / ||e||) R. With
    u = e / ||e||, v = q / ||q||, r = (u + v) / ||u + v||: R e = e - 2 (r . e) r + 2 (u . e) v."""
    e_norm = e.norm(dim=-1, keepdim=True)
    q_norm = q.norm(dim=-1, keepdim=True)
    u = (e / e_norm.clamp_min(eps)).detach()
    v = (q / q_norm.clamp_min(eps)).detach()
    r = F.normalize(u + v, dim=-1, eps=eps)
    rotated = e - 2 * (e * r).sum(-1, keepdim=True) * r + 2 * (e * u).sum(-1, keepdim=True) * v
    return rotated * (q_norm / e_norm.clamp_min(eps)).detach()


# vector_quantize_pytorch.VectorQuantize's arguments that fastgen's class does not take, with
# upstream's defaults: passing the default is accepted (it changes nothing), anything else raises.
_UPSTREAM_ONLY_INIT = dict(
    heads=1, separate_codebook_per_head=False, freeze_codebook=False, sync_kmeans=True,
    layernorm_after_project_in=False, accept_3d_fmap=False, commitment_use_cross_entropy_loss=False,
    orthogonal_reg_weight=0.0, orthogonal_reg_active_codes_only=False, orthogonal_reg_max_codes=None,
    codebook_diversity_loss_weight=0.0, codebook_diversity_temperature=100.0, stochastic_sample_codes=False,
    sample_codebook_temp=1.0, straight_through=False, directional_reparam=False,
    directional_reparam_variance=5e-3, sync_codebook=None, sync_affine_param=False, vq_bridge=None,
    manual_ema_update=False, in_place_codebook_optimizer=None, manual_in_place_optimizer_update=False,
    affine_param=False, affine_param_batch_decay=0.99, affine_param_codebook_decay=0.9, sync_update_v=0.0,
    return_zeros_for_masked_padding=True, route_gradients_to_input=True)
_UPSTREAM_ONLY_FORWARD = dict(
    indices=None, mask=None, lens=None, topk=None, sample_codebook_temp=None, freeze_codebook=None,
    return_loss_breakdown=False, codebook_transform_fn=None, ema_update_weight=None, accum_ema_update=False,
    ema_update=None)
_UPSTREAM_ONLY_RESIDUAL_FORWARD = dict(
    indices=None, return_all_codes=False, sample_codebook_temp=None, freeze_codebook=False, mask=None,
    return_loss_breakdown=False, rand_quantize_dropout_fixed_seed=None)
_PATCH_HINT = ("; to keep vector_quantize_pytorch's own class with all its features and still get fastgen's "
               "fused nearest-code search, call fastgen.patch.vector_quantize_pytorch()")


def _reject_upstream_only(who, given, table):
    for name, value in given.items():
        if name not in table:
            raise TypeError(f"fastgen.nn.{who} got an unexpected keyword argument {name!r}")
        default = table[name]
        same = value is default or (type(value) in (bool, int, float) and type(default) in (bool, int, float)
                                   and value == default)
        if not same:
            raise TypeError(f"fastgen.nn.{who}: argument {name}={value!r} is not supported (only upstream's "
                            f"default {default!r}){_PATCH_HINT}")


class VectorQuantize(nn.Module):
    """The commonly used part of lucidrains' `vector_quantize_pytorch.VectorQuantize`, same
    argument names, defaults and return value `(quantized, indices, commit_loss)`.

    Input (B, N, dim) or (B, dim); (B, dim, N) with channel_last=False; BCHW with
    accept_image_fmap (indices (B, H, W)). The codebook is EMA-updated (ema_update, decay, eps)
    or learned (learnable_codebook=True, ema_update=False; the commitment loss then also trains
    it), optionally k-means initialised from the first batch, optionally cosine (inputs and codes
    L2-normalized), with dead codes (EMA cluster size < threshold_ema_dead_code) replaced by
    random vectors of the current batch. codebook_dim != dim adds project_in / project_out.
    In training mode the gradient reaches the input through the rotation trick (rotation_trick,
    default True for dim > 1, as upstream; False: straight-through), and commit_loss =
    commitment_weight * mse(sg(code), x) (x after project_in / normalization); in eval mode the
    output is the codes themselves and commit_loss is 0, as upstream.
    """

    def __init__(self, dim, codebook_size, codebook_dim=None, decay=0.8, eps=1e-5, kmeans_init=False,
                 kmeans_iters=10, use_cosine_sim=False, threshold_ema_dead_code=0, commitment_weight=1.0,
                 learnable_codebook=False, ema_update=True, channel_last=True, accept_image_fmap=False,
                 rotation_trick=None, **upstream_only):
        super().__init__()
        _reject_upstream_only("VectorQuantize", upstream_only, _UPSTREAM_ONLY_INIT)
        if learnable_codebook and ema_update:
            raise ValueError("fastgen.nn.VectorQuantize: learnable_codebook=True needs ema_update=False "
                             "(a codebook is either learned or EMA-updated)")
        if learnable_codebook and use_cosine_sim:
            raise ValueError("fastgen.nn.VectorQuantize: use_cosine_sim is not supported with "
                             "learnable_codebook=True")
        if kmeans_init and kmeans_iters < 1:
            raise ValueError(f"fastgen.nn.VectorQuantize: kmeans_iters must be >= 1, got {kmeans_iters}")
        codebook_dim = dim if codebook_dim is None else codebook_dim
        self.dim = dim
        self.codebook_size = codebook_size
        self.codebook_dim = codebook_dim
        # upstream's default: the rotation trick whenever the feature dimension is above 1
        self.rotation_trick = dim > 1 if rotation_trick is None else bool(rotation_trick)
        self.decay = decay
        self.eps = eps
        self.kmeans_init = kmeans_init
        self.kmeans_iters = kmeans_iters
        self.use_cosine_sim = use_cosine_sim
        self.threshold_ema_dead_code = threshold_ema_dead_code
        self.commitment_weight = commitment_weight
        self.learnable_codebook = learnable_codebook
        self.ema_update = ema_update
        self.channel_last = channel_last
        self.accept_image_fmap = accept_image_fmap
        self.has_projections = codebook_dim != dim
        self.project_in = nn.Linear(dim, codebook_dim) if self.has_projections else nn.Identity()
        self.project_out = nn.Linear(codebook_dim, dim) if self.has_projections else nn.Identity()
        self._codebook = _Codebook(codebook_dim, codebook_size, kmeans_init, use_cosine_sim,
                                   learnable_codebook)

    @property
    def codebook(self):
        """The codes, (codebook_size, codebook_dim)."""
        return self._codebook.embed[0]

    @property
    def _metric(self):
        return "cosine" if self.use_cosine_sim else "l2"

    def get_codes_from_indices(self, indices):
        """Codes (in codebook space) for `indices`, laid out like the input would be."""
        codes = self.codebook[indices]
        if self.accept_image_fmap or not self.channel_last:
            codes = codes.movedim(-1, 1)
        return codes

    def get_output_from_indices(self, indices):
        """What forward would output (eval mode) for these indices."""
        codes = self.project_out(self.codebook[indices])
        if self.accept_image_fmap or not self.channel_last:
            codes = codes.movedim(-1, 1)
        return codes

    def forward(self, x, **upstream_only):
        if upstream_only:
            _reject_upstream_only("VectorQuantize.forward", upstream_only, _UPSTREAM_ONLY_FORWARD)
        rows, layout = _to_rows("VectorQuantize", x, self.dim, self.channel_last, self.accept_image_fmap)
        q, idx, loss = self._quantize_rows(self.project_in(rows))
        return (*_from_rows(self.project_out(q.to(rows.dtype)), idx, x, layout), loss)

    def _quantize_rows(self, rows):
        """(M, codebook_dim) -> (quantized rows in the compute dtype, indices (M,), loss)."""
        cb = self._codebook
        dtype = torch.promote_types(torch.float32 if rows.dtype in _HALF else rows.dtype, cb.embed.dtype)
        h = rows.to(dtype)
        if self.use_cosine_sim:
            h = F.normalize(h, dim=-1, eps=1e-6)
        if self.kmeans_init and not cb._initted:
            self._kmeans_init_(h.detach())
        embed = cb.embed[0] if self.learnable_codebook else cb.embed[0].detach()
        embed = embed.to(dtype)
        idx, _ = ops.vq_nearest(h.detach(), embed.detach(), self._metric)
        q = embed.index_select(0, idx)
        if not self.training:
            return q, idx, torch.zeros((), device=rows.device)
        # upstream's zero loss requires grad in training, so loss.backward() works with
        # commitment_weight=0; dynamo cannot create such a tensor, and does not need to.
        loss = torch.zeros((), device=rows.device, requires_grad=not torch.compiler.is_compiling())
        if self.ema_update or self.threshold_ema_dead_code > 0:
            self._update_codebook_(h.detach(), idx)
        commit_q = q if self.learnable_codebook else q.detach()
        if h.requires_grad:
            q = _rotation_trick(h, q) if self.rotation_trick else h + (q - h).detach()
        if self.commitment_weight > 0:
            loss = loss + F.mse_loss(commit_q, h) * self.commitment_weight
        return q, idx, loss

    @torch.no_grad()
    def _update_codebook_(self, h, idx):
        cb = self._codebook
        codebook, _ = vq_ema_update_(h, idx, cb.cluster_size[0], cb.embed_avg[0], self.decay, self.eps)
        if self.ema_update:
            if self.use_cosine_sim:
                codebook = F.normalize(codebook, dim=-1, eps=1e-6)
            cb.embed[0].copy_(codebook)
        if self.threshold_ema_dead_code > 0 and h.shape[0] > 0:
            self._expire_codes_(h)

    @torch.no_grad()
    def _expire_codes_(self, h):
        """Codes whose EMA cluster size fell below the threshold restart at random batch vectors
        (with cluster size = threshold). Sync-free: every code draws a candidate, dead ones take it."""
        cb = self._codebook
        dead = (cb.cluster_size[0] < self.threshold_ema_dead_code).unsqueeze(1)
        sampled = _sample_rows(h, self.codebook_size).to(cb.embed.dtype)
        reset = float(self.threshold_ema_dead_code)
        cb.embed[0].copy_(torch.where(dead, sampled, cb.embed[0]))
        cb.embed_avg[0].copy_(torch.where(dead, sampled * reset, cb.embed_avg[0]))
        cb.cluster_size[0].masked_fill_(dead.squeeze(1), reset)

    @torch.no_grad()
    def _kmeans_init_(self, h):
        cb = self._codebook
        means, counts = _kmeans(h, self.codebook_size, self.kmeans_iters, self._metric)
        cb.embed_avg[0].copy_(means * counts.unsqueeze(1))
        cb.cluster_size[0].copy_(counts)
        codebook = _smoothed_codebook(cb.cluster_size[0].to(means.dtype), cb.embed_avg[0].to(means.dtype),
                                      self.eps)
        if self.use_cosine_sim:
            codebook = F.normalize(codebook, dim=-1, eps=1e-6)
        cb.embed[0].copy_(codebook)
        cb.initted.fill_(True)
        cb._initted = True


class ResidualVQ(nn.Module):
    """Residual vector quantization (SoundStream, Algorithm 1), lucidrains' `ResidualVQ`:
    quantizer i quantizes what quantizers 0..i-1 left, residual_i = residual_{i-1} - sg(q_{i-1}).
    Returns (sum of the quantized residuals, indices (..., num_quantizers), losses
    (num_quantizers,)). Keyword arguments go to every `VectorQuantize` layer; codebook_dim
    != dim projects once, around all layers. As upstream, each layer's output passes the
    gradient (rotation trick by default; with rotation_trick=False straight-through, so
    d quantized / d x = num_quantizers * I in training mode).
    """

    def __init__(self, num_quantizers, dim, codebook_size, codebook_dim=None, channel_last=True,
                 accept_image_fmap=False, **kwargs):
        super().__init__()
        if num_quantizers < 1:
            raise ValueError(f"fastgen.nn.ResidualVQ: num_quantizers must be >= 1, got {num_quantizers}")
        codebook_dim = dim if codebook_dim is None else codebook_dim
        self.num_quantizers = num_quantizers
        self.dim = dim
        self.codebook_size = codebook_size
        self.codebook_dim = codebook_dim
        self.channel_last = channel_last
        self.accept_image_fmap = accept_image_fmap
        self.has_projections = codebook_dim != dim
        self.project_in = nn.Linear(dim, codebook_dim) if self.has_projections else nn.Identity()
        self.project_out = nn.Linear(codebook_dim, dim) if self.has_projections else nn.Identity()
        self.layers = nn.ModuleList(VectorQuantize(codebook_dim, codebook_size, **kwargs)
                                    for _ in range(num_quantizers))

    @property
    def codebooks(self):
        """(num_quantizers, codebook_size, codebook_dim)."""
        return torch.stack([layer.codebook for layer in self.layers])

    def get_output_from_indices(self, indices):
        """What forward would output (eval mode) for indices (..., num_quantizers)."""
        codes = sum(layer.codebook[indices[..., i]] for i, layer in enumerate(self.layers))
        codes = self.project_out(codes)
        if self.accept_image_fmap or not self.channel_last:
            codes = codes.movedim(-1, 1)
        return codes

    def forward(self, x, **upstream_only):
        if upstream_only:
            _reject_upstream_only("ResidualVQ.forward", upstream_only, _UPSTREAM_ONLY_RESIDUAL_FORWARD)
        rows, layout = _to_rows("ResidualVQ", x, self.dim, self.channel_last, self.accept_image_fmap)
        residual = self.project_in(rows)
        quantized = torch.zeros_like(residual)
        all_indices, all_losses = [], []
        for layer in self.layers:
            q, idx, loss = layer(residual)
            residual = residual - q.detach()
            quantized = quantized + q
            all_indices.append(idx)
            all_losses.append(loss)
        quantized, indices = _from_rows(self.project_out(quantized), torch.stack(all_indices, -1), x, layout)
        return quantized, indices, torch.stack(all_losses)
