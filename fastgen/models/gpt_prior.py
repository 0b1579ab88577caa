"""VQGAN stage 2: a GPT over the code grids of a trained VQGAN ("Taming Transformers").

    fastgen train vqgan --data shapes --steps 2000                 # stage 1 -> runs/vqgan-shapes
    fastgen train gpt_prior --data shapes --model-opt vqgan=runs/vqgan-shapes/checkpoint.pt
    fastgen sample gpt_prior --ckpt runs/gpt_prior-shapes/checkpoint.pt

The frozen VQGAN turns each image into an h x w grid of code indices (raster order); the GPT
models p(code_t | class, code_<t) with a start token per class (or one shared start token),
causal flash attention in training, and KV-cache decoding (`fastgen.nn.KVCache` +
`decode_attention`) when sampling with temperature, top-k and top-p. Samples are decoded to
images by the VQGAN decoder. The VQGAN's weights are stored in this model's checkpoint too.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops
from ..checkpoint import load_checkpoint
from ..nn import KVCache
from .base import GenerativeModel, model_from_checkpoint, register


class CausalSelfAttention(nn.Module):
    def __init__(self, n_embd, n_head):
        super().__init__()
        if n_embd % n_head:
            raise ValueError(f"gpt_prior: n_embd ({n_embd}) must be a multiple of n_head ({n_head})")
        self.n_head = n_head
        self.qkv = nn.Linear(n_embd, 3 * n_embd)
        self.proj = nn.Linear(n_embd, n_embd)

    def forward(self, x, cache=None):
        b, t, c = x.shape
        # (B, T, H, Dh) memory viewed as (B, H, T, Dh): the kernels read strides, no copy
        q, k, v = (z.unflatten(-1, (self.n_head, c // self.n_head)).transpose(1, 2)
                   for z in self.qkv(x).chunk(3, dim=-1))
        if cache is None:
            y, _ = ops.flash_attention(q, k, v, causal=True)
        else:  # the new tokens' keys join the cache, then they attend to everything cached
            y = cache.append(k, v).attend(q)
        return self.proj(y.transpose(1, 2).reshape(b, t, c))


class Block(nn.Module):
    def __init__(self, n_embd, n_head):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(n_embd), nn.LayerNorm(n_embd)
        self.attn = CausalSelfAttention(n_embd, n_head)
        self.mlp = nn.Sequential(nn.Linear(n_embd, 4 * n_embd), nn.GELU(), nn.Linear(4 * n_embd, n_embd))

    def forward(self, x, cache=None):
        x = x + self.attn(self.ln1(x), cache)
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    """Decoder-only transformer reading `vocab` tokens and predicting the first `n_out` of them,
    with learned positions up to `block_size`."""

    def __init__(self, vocab, n_out, block_size, n_layer, n_head, n_embd):
        super().__init__()
        self.block_size, self.n_head, self.n_embd = block_size, n_head, n_embd
        self.tok = nn.Embedding(vocab, n_embd)
        self.pos = nn.Parameter(torch.zeros(1, block_size, n_embd))
        self.blocks = nn.ModuleList(Block(n_embd, n_head) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd)
        self.head = nn.Linear(n_embd, n_out, bias=False)
        self.apply(self._init)

    @staticmethod
    def _init(m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)

    def forward(self, tokens, start=0, caches=None):
        """Logits for `tokens` [B, T] at positions start .. start + T - 1 (with `caches`, one
        KVCache per layer holding positions < start)."""
        x = self.tok(tokens) + self.pos[:, start:start + tokens.shape[1]]
        for i, block in enumerate(self.blocks):
            x = block(x, None if caches is None else caches[i])
        return self.head(self.ln_f(x))

    def new_caches(self, batch):
        p = self.pos
        return [KVCache(batch, self.n_head, self.block_size, self.n_embd // self.n_head, p.dtype, p.device)
                for _ in self.blocks]

    @torch.no_grad()
    def generate(self, prefix, steps, uniforms, use_cache=True, **sampling):
        """Append `steps` tokens to `prefix` [B, P] one at a time, drawing token t with
        `uniforms[:, t]` (inverse CDF after `filter_logits(**sampling)`). With use_cache each
        step feeds only the newest token through per-layer KV caches; without, it recomputes the
        whole sequence (the reference the cache must reproduce). Returns the new tokens [B, steps]."""
        tokens = prefix
        caches = self.new_caches(prefix.shape[0]) if use_cache else None
        if use_cache and prefix.shape[1] > 1:  # the prompt goes through once, causal
            self(prefix[:, :-1], start=0, caches=caches)
        out = []
        for t in range(steps):
            pos = tokens.shape[1] - 1
            if use_cache:
                logits = self(tokens[:, -1:], start=pos, caches=caches)[:, -1]
            else:
                logits = self(tokens)[:, -1]
            nxt = draw(filter_logits(logits.float(), **sampling), uniforms[:, t])
            out.append(nxt)
            tokens = torch.cat([tokens, nxt.unsqueeze(1)], 1)
        return torch.stack(out, 1)


def filter_logits(logits, temperature=1.0, top_k=None, top_p=None):
    """Temperature, then keep the top_k largest and the smallest set with probability >= top_p
    (nucleus); the rest get -inf."""
    logits = logits / max(temperature, 1e-8)
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        # drop a token when the tokens before it already reach top_p (the first always stays)
        drop = (probs.cumsum(-1) - probs) >= top_p
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits


def draw(logits, uniform):
    """Inverse-CDF sampling from softmax(logits) with given uniforms [B]: the same uniforms give
    the same tokens whenever the probabilities agree to rounding."""
    cdf = logits.softmax(-1).cumsum(-1)
    return torch.searchsorted(cdf, (uniform * cdf[:, -1]).unsqueeze(-1)).clamp_max(logits.shape[-1] - 1).squeeze(-1)


@register("gpt_prior")
class GPTPrior(GenerativeModel):
    kinds = ("image",)

    def __init__(self, data, vqgan=None, n_layer=4, n_head=4, n_embd=128, class_conditional=True,
                 temperature=1.0, top_k=None, top_p=None):
        super().__init__(data, vqgan=vqgan, n_layer=n_layer, n_head=n_head, n_embd=n_embd,
                         class_conditional=class_conditional, temperature=temperature, top_k=top_k, top_p=top_p)
        if vqgan is None:
            raise ValueError("gpt_prior needs a trained VQGAN: train one with `fastgen train vqgan --data "
                             f"{data.name}` and pass --model-opt vqgan=<run>/checkpoint.pt")
        state = load_checkpoint(vqgan, "vqgan")
        if tuple(state["data_spec"]["shape"]) != tuple(data.shape):
            raise ValueError(f"gpt_prior: the VQGAN at {vqgan} was trained on images of shape "
                             f"{tuple(state['data_spec']['shape'])}, the data has {tuple(data.shape)}")
        self.vqgan = model_from_checkpoint(state).requires_grad_(False)
        self.grid = tuple(self.vqgan.grid)
        self.n_codes = self.vqgan.n_e
        self.n_starts = data.num_classes if class_conditional else 1
        self.class_conditional = class_conditional
        self.sampling = dict(temperature=temperature, top_k=top_k, top_p=top_p)
        seq = self.grid[0] * self.grid[1]
        # tokens: codes 0 .. n_codes - 1, then one start token per class (read, never predicted)
        self.gpt = GPT(self.n_codes + self.n_starts, self.n_codes, seq, n_layer, n_head, n_embd)

    def train(self, mode=True):
        super().train(mode)
        self.vqgan.eval()  # frozen tokenizer: always in eval mode
        return self

    def _start_tokens(self, y):
        y = y if self.class_conditional else torch.zeros_like(y)
        return (self.n_codes + y.long()).unsqueeze(1)

    def codes(self, x):
        """Code grids of images in [0, 1], flattened in raster order: [B, h * w]."""
        with torch.no_grad():
            return self.vqgan.encode(x)[2].reshape(x.shape[0], -1)

    def forward(self, x, y):
        codes = self.codes(x)
        tokens = torch.cat([self._start_tokens(y), codes[:, :-1]], 1)
        logits = self.gpt(tokens)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), codes.reshape(-1))
        return loss, {"bits_per_token": loss.detach() / math.log(2)}

    @torch.no_grad()
    def sample_codes(self, n, generator=None, y=None, use_cache=True, **sampling):
        """n code grids [n, h * w] drawn token by token. With use_cache the step feeds only the
        newest token and attends through per-layer KV caches; without, it recomputes the whole
        prefix each step (the reference the cache must reproduce)."""
        opts = {**self.sampling, **sampling}
        device = self.device
        if y is None:
            y = torch.randint(self.n_starts, (n,), generator=generator, device=device)
        seq = self.grid[0] * self.grid[1]
        uniforms = torch.rand(n, seq, generator=generator, device=device)
        return self.gpt.generate(self._start_tokens(y), seq, uniforms, use_cache, **opts)

    @torch.no_grad()
    def sample(self, n, generator=None):
        codes = self.sample_codes(n, generator)
        return self.vqgan.decode_indices(codes.reshape(n, *self.grid))

    @torch.no_grad()
    def evaluate(self, dataset, generator=None, batch_size=256):
        """Held-out negative log-likelihood of the code grids, in bits per token, next to the
        uniform prior's log2(K) and the held-out codes' own unigram entropy (a prior that
        ignores context cannot beat it)."""
        nll, count = 0.0, 0
        usage = torch.zeros(self.n_codes, dtype=torch.float64)
        for x, y in zip(dataset.x.split(batch_size), dataset.y.split(batch_size)):
            x, y = x.to(self.device), y.to(self.device)
            loss, _ = self.forward(x, y)
            nll += float(loss) * x.shape[0] * self.gpt.block_size
            count += x.shape[0] * self.gpt.block_size
            usage += torch.bincount(self.codes(x).reshape(-1).cpu(), minlength=self.n_codes).double()
        p = usage[usage > 0] / usage.sum()
        return {"bits_per_token": nll / count / math.log(2),
                "uniform_bits_per_token": math.log2(self.n_codes),
                "unigram_bits_per_token": float(-(p * p.log2()).sum()),
                "tokens_per_image": self.gpt.block_size}
