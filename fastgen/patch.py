"""Accelerate existing code in one line: patch a user's model (or a library) in place with
fastgen's fused modules, the way Liger-Kernel's `apply_liger_kernel_to_*()` does.

    import fastgen.patch
    fastgen.patch.modules(model)                      # torch.nn: MultiheadAttention, GroupNorm+SiLU
    fastgen.patch.taming(vqgan)                       # taming-transformers' VectorQuantizer2
    fastgen.patch.vector_quantize_pytorch()           # lucidrains' library, globally (enable=False undoes)
    fastgen.patch.diffusers(pipe)                     # scheduler, VQModel quantizer, resnet GroupNorm+SiLU

Every function patches in place, is idempotent (a second call replaces nothing) and returns a
`PatchReport`: what was replaced, and what was left alone and why. Parameters are kept (the
same Parameter objects where possible, so an optimizer built before the patch keeps working).
"""
import contextlib
import dataclasses
import functools
import inspect
from typing import List, Tuple

import torch
from torch import nn

from .nn import GroupNormSiLU, MultiheadAttention, VectorQuantizer

__all__ = ["PatchReport", "diffusers", "modules", "taming", "vector_quantize_pytorch"]


@dataclasses.dataclass
class PatchReport:
    """What a patch did: `replaced` holds (where, what it became), `skipped` (where, why not)."""

    replaced: List[Tuple[str, str]] = dataclasses.field(default_factory=list)
    skipped: List[Tuple[str, str]] = dataclasses.field(default_factory=list)

    def __str__(self):
        lines = [f"fastgen.patch: {len(self.replaced)} replaced, {len(self.skipped)} skipped"]
        lines += [f"  replaced {where}: {what}" for where, what in self.replaced]
        lines += [f"  skipped  {where}: {why}" for where, why in self.skipped]
        return "\n".join(lines)

    def merge(self, other):
        self.replaced += other.replaced
        self.skipped += other.skipped
        return self


def _check_module(fn, model):
    if not isinstance(model, nn.Module):
        raise TypeError(f"fastgen.patch.{fn}: model must be a torch.nn.Module, got {type(model).__name__}")


def _set_child(model, path, new):
    parent_path, _, name = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, name, new)


# -- torch.nn ------------------------------------------------------------------------------------

def _group_norm_silu_from(norm, cls=GroupNormSiLU):
    """A GroupNormSiLU that shares `norm`'s Parameter objects (weights kept, optimizer intact)."""
    fused = cls(norm.num_groups, norm.num_channels, norm.eps, norm.affine,
                          device=norm.weight.device if norm.affine else None,
                          dtype=norm.weight.dtype if norm.affine else None)
    if norm.affine:
        fused.weight, fused.bias = norm.weight, norm.bias
    fused.train(norm.training)
    return fused


def modules(model, *, attention=True, group_norm_silu=True):
    """Patch a torch model in place:
    - every `nn.MultiheadAttention` becomes `fastgen.nn.MultiheadAttention` (its subclass: same
      parameters, state dict and calls; the attention runs fused when called with
      need_weights=False, see its docstring);
    - in every `nn.Sequential`, an `nn.GroupNorm` directly followed by `nn.SiLU` becomes one
      `fastgen.nn.GroupNormSiLU` (sharing the GroupNorm's parameters) and the SiLU an
      `nn.Identity`, so state-dict keys stay the same.
    Returns a PatchReport."""
    _check_module("modules", model)
    report = PatchReport()
    for path, m in list(model.named_modules()):
        where = path or type(model).__name__
        if attention and isinstance(m, nn.MultiheadAttention):
            if isinstance(m, MultiheadAttention):
                continue  # already fastgen's
            if type(m) is not nn.MultiheadAttention:
                report.skipped.append((where, f"{type(m).__name__} subclasses nn.MultiheadAttention; its "
                                              "forward may differ, left alone"))
                continue
            m.__class__ = MultiheadAttention  # a subclass with no state of its own: params stay the same objects
            report.replaced.append((where, "fastgen.nn.MultiheadAttention"))
        if group_norm_silu and isinstance(m, nn.Sequential):
            children = list(m.named_children())
            for (name, a), (next_name, b) in zip(children, children[1:]):
                if type(a) is nn.GroupNorm and type(b) is nn.SiLU:
                    setattr(m, name, _group_norm_silu_from(a))
                    setattr(m, next_name, nn.Identity())
                    prefix = f"{path}." if path else ""
                    report.replaced.append((f"{prefix}{name}+{next_name}", "fastgen.nn.GroupNormSiLU + nn.Identity"))
                elif type(a) is nn.GroupNorm and not isinstance(b, (nn.SiLU, GroupNormSiLU)):
                    prefix = f"{path}." if path else ""
                    report.skipped.append((f"{prefix}{name}", f"GroupNorm followed by {type(b).__name__}, not SiLU"))
    return report


# -- taming-transformers -------------------------------------------------------------------------

_TAMING_ATTRS = ("n_e", "beta", "embedding", "legacy", "remap", "sane_index_shape")


def _code_dim(m):
    # taming calls it e_dim, diffusers' copy vq_embed_dim
    return getattr(m, "e_dim", getattr(m, "vq_embed_dim", None))


def _is_taming_quantizer(m):
    # taming cannot be installed from the package index, so it is recognized by name and shape:
    # taming.modules.vqvae.quantize.VectorQuantizer2, and diffusers' copy (models.autoencoders.vae)
    if isinstance(m, VectorQuantizer):
        return False
    return type(m).__name__ in ("VectorQuantizer2", "VectorQuantizer") and all(hasattr(m, a) for a in _TAMING_ATTRS) \
        and isinstance(m.embedding, nn.Embedding) and _code_dim(m) == m.embedding.embedding_dim


def _fastgen_quantizer_from(m):
    """fastgen.nn.VectorQuantizer with `m`'s settings, sharing its embedding (and remap table)."""
    q = VectorQuantizer(m.n_e, _code_dim(m), m.beta, remap=None, sane_index_shape=m.sane_index_shape,
                        legacy=m.legacy)
    q.embedding = m.embedding  # the same module and Parameter
    if m.remap is not None:  # the remap table as loaded (the .npy path may be gone by now)
        q.remap = m.remap
        q.register_buffer("used", m.used)
        q.re_embed = m.re_embed
        q.unknown_index = m.unknown_index
    q.train(m.training)
    return q


def taming(model):
    """Patch a model in place: every taming-transformers `VectorQuantizer2` (recognized by class
    name and attributes, since taming is not installable from the package index) becomes
    `fastgen.nn.VectorQuantizer` with the same embedding (the same Parameter), beta, legacy,
    remap and index shape. The model itself may be the quantizer: then the new module is
    returned in the report's `replaced` and must be used in its place. Returns a PatchReport."""
    _check_module("taming", model)
    report = PatchReport()
    for path, m in list(model.named_modules()):
        if not _is_taming_quantizer(m):
            continue
        if not path:
            raise TypeError("fastgen.patch.taming: model is itself a VectorQuantizer2; patch the model that "
                            "holds it, or build fastgen.nn.VectorQuantizer directly")
        if not isinstance(m.beta, (int, float)):
            report.skipped.append((path, f"beta is a {type(m.beta).__name__}, expected a number"))
            continue
        _set_child(model, path, _fastgen_quantizer_from(m))
        report.replaced.append((path, "fastgen.nn.VectorQuantizer"))
    return report


# -- vector-quantize-pytorch ---------------------------------------------------------------------

_VQP_ORIGINALS = {}


class _CodeIndices:
    """Stands in for the N x K one-hot the library's EMA statistics take: the same information as
    indices, so counts and sums come from fastgen.ops.vq_code_sums (segmented, no one-hot)."""

    def __init__(self, indices):
        self.indices = indices  # (h, N) int64


def _vqp():
    try:
        from vector_quantize_pytorch import vector_quantize_pytorch as vqp
    except ImportError as e:
        raise ImportError("fastgen.patch.vector_quantize_pytorch: the vector-quantize-pytorch package is not "
                          f"importable ({e}); pip install vector-quantize-pytorch") from None
    return vqp


def _fast_path_blocker(codebook, sample_codebook_temp, codebook_transform_fn, topk):
    """None when the fused search gives exactly the library's result, else why not."""
    vqp = _vqp()
    if not codebook.__dict__.get("_fastgen_distances_unused", False):
        return "the distance matrix is returned to a caller that uses it"
    if codebook_transform_fn is not None or topk is not None:
        return "codebook_transform_fn / topk"
    if getattr(codebook, "vq_bridge", None) is not None or getattr(codebook, "affine_param", False):
        return "vq_bridge / affine_param"
    if codebook.use_cosine_sim and codebook.learnable_codebook:
        return "a learnable cosine codebook is not kept normalized (the library ranks raw dot products)"
    sampler = codebook.gumbel_sample
    if not (isinstance(sampler, functools.partial) and sampler.func is vqp.gumbel_sample and not sampler.args):
        return "a custom gumbel_sample"
    if codebook.training and sample_codebook_temp > 0 and (
            sampler.keywords.get("stochastic", False) or sampler.keywords.get("straight_through", False)):
        return "stochastic / straight-through code sampling needs the distances"
    return None


def _expand_mask(mask, flatten):
    """(b, n) -> (h, b * heads * n), as the library expands a token mask over its rows."""
    if mask is None:
        return None
    b, n = mask.shape
    heads = flatten.shape[-2] // (b * n)
    return mask[:, None, :].expand(b, heads, n).reshape(1, -1).expand(flatten.shape[0], -1)


def _codebook_update_indices(self, x, embed_ind, mask=None, ema_update_weight=None, accum_ema_update=False,
                             ema_update=None):
    """Codebook.update_indices (the EMA step from given indices, e.g. after a topk search) with
    the statistics from fastgen.ops.vq_code_sums instead of a one-hot, so it matches the patched
    forward's EMA step exactly."""
    if getattr(self, "affine_param", False):
        return _VQP_ORIGINALS["Codebook.update_indices"](self, x, embed_ind, mask, ema_update_weight,
                                                         accum_ema_update, ema_update)
    vqp = _vqp()
    x = x.float()
    if x.dim() < 4:
        x, embed_ind = x.unsqueeze(0), embed_ind.unsqueeze(0)
    flatten, _ = vqp.pack_one(x, "h * d")
    embed_ind, _ = vqp.pack_one(embed_ind, "h *")
    embed_ind = embed_ind.masked_fill(embed_ind == -1, 0)  # padding, as the library treats it
    self.update_codebook(flatten, _CodeIndices(embed_ind), mask=_expand_mask(mask, flatten),
                         ema_update_weight=ema_update_weight, accum_ema_update=accum_ema_update,
                         ema_update=ema_update)


def _codebook_forward(self, x, sample_codebook_temp=None, mask=None, freeze_codebook=False,
                      codebook_transform_fn=None, ema_update_weight=None, accum_ema_update=False,
                      ema_update=None, topk=None, update_usage=True):
    """vector_quantize_pytorch's Codebook.forward with the distance + argmax (+ one-hot lookup and
    one-hot EMA statistics) replaced by fastgen's fused nearest-code search, a gather and
    segmented code sums, whenever that gives the same result; any other call runs the
    library's own forward."""
    from . import ops

    original = _VQP_ORIGINALS["Codebook.forward"]
    temp = self.sample_codebook_temp if sample_codebook_temp is None else sample_codebook_temp
    if _fast_path_blocker(self, temp, codebook_transform_fn, topk) is not None:
        return original(self, x, sample_codebook_temp=sample_codebook_temp, mask=mask,
                        freeze_codebook=freeze_codebook, codebook_transform_fn=codebook_transform_fn,
                        ema_update_weight=ema_update_weight, accum_ema_update=accum_ema_update,
                        ema_update=ema_update, topk=topk, update_usage=update_usage)
    vqp = _vqp()
    ema_update = self.ema_update if ema_update is None else ema_update
    no_autocast = torch.autocast("cuda", enabled=False) if x.is_cuda else contextlib.nullcontext()
    with no_autocast:
        x = x.float()
        needs_codebook_dim = x.dim() < 4
        if needs_codebook_dim:
            x = x.unsqueeze(0)
        flatten, unpack_one = vqp.pack_one(x, "h * d")
        mask = _expand_mask(mask, flatten)
        self.init_embed_(flatten, mask=mask)
        embed = (self.embed if self.learnable_codebook else self.embed.detach()).to(flatten.dtype)
        metric = "cosine" if self.use_cosine_sim else "l2"
        heads = flatten.shape[0]
        codes = [embed[h if embed.shape[0] > 1 else 0] for h in range(heads)]
        found = [ops.vq_nearest(flatten[h], codes[h].contiguous(), metric)[0] for h in range(heads)]
        picked = [codes[h].index_select(0, found[h]) for h in range(heads)]
        # one head (the common case): views, no stacking copies
        indices = found[0].unsqueeze(0) if heads == 1 else torch.stack(found)
        quantize = picked[0].unsqueeze(0) if heads == 1 else torch.stack(picked)
        if self.training and update_usage and not freeze_codebook:
            self.update_codebook(flatten, _CodeIndices(indices), mask=mask, ema_update_weight=ema_update_weight,
                                 accum_ema_update=accum_ema_update, ema_update=ema_update)
        quantize = unpack_one(quantize, "h * d")
        embed_ind = unpack_one(indices, "h *")
        if needs_codebook_dim:
            quantize, embed_ind = quantize.squeeze(0), embed_ind.squeeze(0)
    # the N x K distances are never formed; the patched VectorQuantize.forward only takes this
    # path when it does not read them
    return quantize, embed_ind, None


def _track_cluster_size_and_embed_avg(self, flatten, embed_onehot, mask=None, ema_update_weight=None,
                                      accum_ema_update=False):
    if not isinstance(embed_onehot, _CodeIndices):
        return _VQP_ORIGINALS["Codebook.track_cluster_size_and_embed_avg"](
            self, flatten, embed_onehot, mask, ema_update_weight, accum_ema_update)
    from . import ops

    vqp = _vqp()
    sizes, sums = [], []
    for h in range(flatten.shape[0]):
        rows, idx = flatten[h], embed_onehot.indices[h]
        if mask is not None:
            rows, idx = rows[mask[h]], idx[mask[h]]
        count, total = ops.vq_code_sums(rows.contiguous(), idx.contiguous(), self.codebook_size)
        sizes.append(count.to(flatten.dtype))
        sums.append(total.to(flatten.dtype))
    if len(sizes) == 1:
        cluster_size, embed_sum = sizes[0].unsqueeze(0), sums[0].unsqueeze(0)
    else:
        cluster_size, embed_sum = torch.stack(sizes), torch.stack(sums)
    self.all_reduce_fn(cluster_size)
    self.all_reduce_fn(embed_sum)
    if callable(ema_update_weight):
        ema_update_weight = ema_update_weight(embed_sum, cluster_size)
    if accum_ema_update:
        vqp.accum_grad_(self.cluster_size, cluster_size)
        vqp.accum_grad_(self.embed_avg, embed_sum)
    else:
        vqp.ema_inplace(self.cluster_size, cluster_size, self.decay, ema_update_weight)
        vqp.ema_inplace(self.embed_avg, embed_sum, self.decay, ema_update_weight)


@functools.lru_cache(maxsize=None)
def _vq_forward_signature():
    return inspect.signature(_VQP_ORIGINALS["VectorQuantize.forward"])


def _vector_quantize_forward(self, *args, **kwargs):
    """VectorQuantize.forward unchanged, telling its codebook whether the distances are read
    (cross-entropy on given indices, codebook diversity loss, cross-entropy commitment loss)."""
    bound = _vq_forward_signature().bind(self, *args, **kwargs)
    uses_distances = bound.arguments.get("indices") is not None or (self.training and (
        getattr(self, "has_codebook_diversity_loss", True) or getattr(self, "commitment_use_cross_entropy_loss", True)))
    codebook = self._codebook
    before = codebook.__dict__.get("_fastgen_distances_unused", False)
    object.__setattr__(codebook, "_fastgen_distances_unused", not uses_distances)
    try:
        return _VQP_ORIGINALS["VectorQuantize.forward"](self, *args, **kwargs)
    finally:
        object.__setattr__(codebook, "_fastgen_distances_unused", before)


_VQP_PATCHES = {
    "Codebook.forward": _codebook_forward,
    "Codebook.track_cluster_size_and_embed_avg": _track_cluster_size_and_embed_avg,
    "Codebook.update_indices": _codebook_update_indices,
    "Codebook.update_ema_indices": _codebook_update_indices,  # the library's alias of update_indices
    "VectorQuantize.forward": _vector_quantize_forward,
}


def vector_quantize_pytorch(enable=True):
    """Route vector-quantize-pytorch's nearest-code search (Euclidean and cosine codebooks) to
    fastgen's fused search, globally: every `VectorQuantize` / `ResidualVQ` (existing or new)
    finds its codes with `fastgen.ops.vq_nearest` (no N x K distance matrix), looks them up
    with a gather instead of a one-hot matmul, and takes the EMA statistics from
    `fastgen.ops.vq_code_sums` instead of a one-hot. Everything else is the library's own code
    (rotation trick, heads, separate codebooks, EMA, k-means init, masks, dead-code expiry,
    ResidualVQ). Calls that need the distances themselves (stochastic or straight-through
    sampling, topk, codebook_transform_fn, cross-entropy losses, codebook diversity loss,
    affine_param, vq_bridge, a learnable cosine codebook) run the library's path unchanged.
    `enable=False` restores the library's methods. Returns a PatchReport."""
    if not isinstance(enable, bool):
        raise TypeError(f"fastgen.patch.vector_quantize_pytorch: enable must be True or False, got {enable!r}")
    vqp = _vqp()
    report = PatchReport()
    for name, patched in _VQP_PATCHES.items():
        cls_name, attr = name.split(".")
        cls = getattr(vqp, cls_name)
        current = cls.__dict__[attr]
        if enable:
            if current is patched:
                report.skipped.append((f"vector_quantize_pytorch.{name}", "already patched"))
                continue
            _VQP_ORIGINALS[name] = current
            setattr(cls, attr, patched)
            report.replaced.append((f"vector_quantize_pytorch.{name}", "fastgen fused nearest-code search"))
        else:
            if current is not patched:
                report.skipped.append((f"vector_quantize_pytorch.{name}", "not patched"))
                continue
            setattr(cls, attr, _VQP_ORIGINALS.pop(name))
            report.replaced.append((f"vector_quantize_pytorch.{name}", "restored the library's method"))
    return report


# -- diffusers -----------------------------------------------------------------------------------

_SCHEDULERS = ("DDPMScheduler", "DDIMScheduler", "FlowMatchEulerDiscreteScheduler")


class _FusedNormHandoff(GroupNormSiLU):
    """GroupNorm + SiLU fused (same parameters and state-dict keys as the GroupNorm), for a
    diffusers resnet block whose `nonlinearity` follows the norm but is also applied elsewhere
    (to the time embedding). The block's nonlinearity becomes a `_SiLUUnlessFused`, which passes
    through exactly the tensor this norm just returned (its SiLU is already applied) and applies
    SiLU to anything else."""

    _handoff = None

    def forward(self, x):
        out = super().forward(x)
        self._handoff = out
        return out


class _SiLUUnlessFused(nn.SiLU):
    def __init__(self, norms):
        super().__init__()
        self._norms = list(norms)  # plain list: the norms stay registered where they are

    def forward(self, x):
        for norm in self._norms:
            if norm._handoff is x:
                norm._handoff = None
                return x
        return super().forward(x)


def _patch_resnet_block(block):
    norms = []
    for name in ("norm1", "norm2"):
        norm = getattr(block, name, None)
        if name == "norm2" and getattr(block, "time_embedding_norm", "default") == "scale_shift":
            continue  # scale/shift sits between norm2 and the nonlinearity
        if type(norm) is nn.GroupNorm:
            handoff = _group_norm_silu_from(norm, _FusedNormHandoff)
            setattr(block, name, handoff)
            norms.append(handoff)
    if norms:
        block.nonlinearity = _SiLUUnlessFused(norms)
    return len(norms)


def diffusers(pipe_or_model, *, scheduler=True, vq=True, resnet_group_norm_silu=False):
    """Patch a diffusers pipeline (or one of its models) in place:
    - `scheduler`: a DDPM / DDIM / FlowMatchEulerDiscrete scheduler becomes fastgen's (built from
      its config; a genuine diffusers scheduler, so the pipeline saves and reloads);
    - `vq`: a VQModel's `VectorQuantizer` (taming's class under another name) becomes
      `fastgen.nn.VectorQuantizer`, same embedding;
    - `resnet_group_norm_silu` (opt-in): in every ResnetBlock2D with a SiLU nonlinearity, norm1
      (and norm2 unless time_embedding_norm="scale_shift") + SiLU run as one fused
      GroupNorm+SiLU; the nonlinearity still applies SiLU to the time embedding. Results equal
      within fp32 tolerance, but on this project's CPU it measured 0.88x (inference) and 1.03x
      (training step) on a small UNet2DModel, so it is off by default.
    Attention processors are left alone: on this project's CPU fastgen's SDPA measured no faster
    than torch's. Returns a PatchReport."""
    try:
        import diffusers as _diffusers
    except ImportError as e:
        raise ImportError(f"fastgen.patch.diffusers: diffusers is not importable ({e})") from None
    from . import diffusion

    report = PatchReport()
    is_pipeline = isinstance(pipe_or_model, _diffusers.DiffusionPipeline)
    if not is_pipeline and not isinstance(pipe_or_model, nn.Module):
        raise TypeError("fastgen.patch.diffusers: pipe_or_model must be a diffusers DiffusionPipeline or a "
                        f"torch.nn.Module, got {type(pipe_or_model).__name__}")
    if is_pipeline:
        models = [(name, c) for name, c in pipe_or_model.components.items() if isinstance(c, nn.Module)]
        current = getattr(pipe_or_model, "scheduler", None)
        if scheduler and current is not None:
            name = type(current).__name__
            if type(current).__module__.startswith("fastgen."):
                report.skipped.append(("scheduler", "already fastgen's"))
            elif name in _SCHEDULERS:
                pipe_or_model.scheduler = getattr(diffusion, name).from_config(current.config)
                report.replaced.append(("scheduler", f"fastgen.diffusion.{name}"))
            else:
                report.skipped.append(("scheduler", f"{name} has no fastgen equivalent (fastgen has {_SCHEDULERS})"))
    else:
        models = [(type(pipe_or_model).__name__, pipe_or_model)]
    resnet_cls = getattr(getattr(_diffusers.models, "resnet", None), "ResnetBlock2D", None)
    for model_name, model in models:
        if vq:
            sub = taming(model)
            report.replaced += [(f"{model_name}.{w}", what) for w, what in sub.replaced]
            report.skipped += [(f"{model_name}.{w}", why) for w, why in sub.skipped]
        if resnet_group_norm_silu and resnet_cls is not None:
            for path, m in model.named_modules():
                if type(m) is not resnet_cls:
                    continue
                if isinstance(m.nonlinearity, _SiLUUnlessFused):
                    continue
                if type(m.nonlinearity) is not nn.SiLU:
                    report.skipped.append((f"{model_name}.{path}", f"nonlinearity is {type(m.nonlinearity).__name__}"))
                    continue
                n = _patch_resnet_block(m)
                if n:
                    report.replaced.append((f"{model_name}.{path}", f"{n} x GroupNorm+SiLU fused"))
    return report
