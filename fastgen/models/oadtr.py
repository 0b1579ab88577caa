"""OadTR: online action detection with a transformer (Wang et al., 2021), on feature streams.

For every frame t the model sees only the last `window` frames (t - window + 1 .. t):

- encoder: the window's features embedded, a learned task token prepended, learned positions,
  `enc_layers` pre-norm transformer layers;
- decoder: `n_future` learned queries, causal self-attention among them and cross-attention to
  the encoder, `dec_layers` layers; query i also predicts the label of frame t + 1 + i
  (auxiliary loss, as in the paper);
- classifier on [task token ; mean of the decoder outputs] -> the label of frame t.

Attention runs on fastgen.nn.MultiheadAttention (flash_attention). `eval` reports per-frame
mAP over the action classes (background excluded) on held-out streams; `stream()` processes
one new frame at a time with a rolling window and gives the same scores as the batched pass.

    fastgen train oadtr --data action_streams --steps 1500
"""
import torch
import torch.nn.functional as F
from torch import nn

from .. import metrics
from ..nn import MultiheadAttention
from .base import GenerativeModel, register


class _Layer(nn.Module):
    """Pre-norm transformer layer: self-attention, optional cross-attention, MLP."""

    def __init__(self, d, heads, cross):
        super().__init__()
        self.ln1, self.ln3 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = MultiheadAttention(d, heads, batch_first=True)
        self.ln2 = nn.LayerNorm(d) if cross else None
        self.cross = MultiheadAttention(d, heads, batch_first=True) if cross else None
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x, memory=None, causal_mask=None):
        h = self.ln1(x)
        x = x + self.attn(h, h, h, attn_mask=causal_mask, is_causal=causal_mask is not None,
                          need_weights=False)[0]
        if self.cross is not None:
            h = self.ln2(x)
            x = x + self.cross(h, memory, memory, need_weights=False)[0]
        return x + self.mlp(self.ln3(x))


@register("oadtr")
class OadTR(GenerativeModel):
    kinds = ("sequence",)

    def __init__(self, data, window=16, d_model=64, heads=4, enc_layers=2, dec_layers=1, n_future=4,
                 future_weight=0.5):
        super().__init__(data, window=window, d_model=d_model, heads=heads, enc_layers=enc_layers,
                         dec_layers=dec_layers, n_future=n_future, future_weight=future_weight)
        if len(data.shape) != 2:
            raise ValueError(f"oadtr: expects feature streams of shape (length, features), got {data.shape}")
        self.window, self.n_future, self.future_weight = window, n_future, future_weight
        self.num_classes = data.num_classes  # background (0) included
        self.embed = nn.Linear(data.shape[1], d_model)
        self.task_token = nn.Parameter(torch.zeros(1, 1, d_model))
        self.pos = nn.Parameter(torch.zeros(1, window + 1, d_model))
        self.encoder = nn.ModuleList(_Layer(d_model, heads, cross=False) for _ in range(enc_layers))
        self.queries = nn.Parameter(torch.zeros(1, n_future, d_model))
        self.decoder = nn.ModuleList(_Layer(d_model, heads, cross=True) for _ in range(dec_layers))
        self.ln_enc, self.ln_dec = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.future_head = nn.Linear(d_model, self.num_classes)
        self.classifier = nn.Linear(2 * d_model, self.num_classes)
        for p in (self.task_token, self.pos, self.queries):
            nn.init.normal_(p, std=0.02)
        self.register_buffer("future_mask", torch.triu(torch.full((n_future, n_future), float("-inf")), 1),
                             persistent=False)

    # -- windows ----------------------------------------------------------------------------

    def windows(self, x):
        """Streams [B, T, F] -> the window ending at every frame [B * T, window, F] (zeros
        before the stream starts)."""
        b, t, f = x.shape
        padded = F.pad(x, (0, 0, self.window - 1, 0))
        return padded.unfold(1, self.window, 1).permute(0, 1, 3, 2).reshape(b * t, self.window, f)

    def classify_windows(self, w):
        """Windows [N, window, F] -> (logits of their last frame [N, C], future logits [N, n_future, C])."""
        h = torch.cat([self.task_token.expand(w.shape[0], -1, -1), self.embed(w)], 1) + self.pos
        for layer in self.encoder:
            h = layer(h)
        memory = self.ln_enc(h)
        q = self.queries.expand(w.shape[0], -1, -1)
        for layer in self.decoder:
            q = layer(q, memory, self.future_mask)
        q = self.ln_dec(q)
        logits = self.classifier(torch.cat([memory[:, 0], q.mean(1)], -1))
        return logits, self.future_head(q)

    def forward(self, x, y):
        b, t, _ = x.shape
        logits, future = self.classify_windows(self.windows(x))
        loss = F.cross_entropy(logits, y.reshape(-1))
        # future targets: frame t + 1 + i of the same stream; past the end -> ignored
        ahead = F.pad(y, (0, self.n_future), value=-100).unfold(1, self.n_future, 1)[:, 1:t + 1]
        future_loss = F.cross_entropy(future.reshape(-1, self.num_classes), ahead.reshape(-1), ignore_index=-100)
        acc = (logits.argmax(-1) == y.reshape(-1)).float().mean()
        return loss + self.future_weight * future_loss, {"frame_ce": loss.detach(), "future_ce": future_loss.detach(),
                                                         "frame_acc": acc.detach()}

    @torch.no_grad()
    def scores(self, x, batch_windows=4096):
        """Per-frame class probabilities [B, T, C] of streams [B, T, F] (online: frame t only
        sees frames <= t)."""
        w = self.windows(x.to(self.device))
        probs = torch.cat([self.classify_windows(c)[0].softmax(-1) for c in w.split(batch_windows)])
        return probs.reshape(x.shape[0], x.shape[1], -1)

    @torch.no_grad()
    def stream(self, frames):
        """Online mode: feed frames [F] one at a time (any iterable); yields each frame's class
        probabilities [C] as soon as it arrives, from a rolling window of the last frames."""
        buf = torch.zeros(1, self.window, self.data.shape[1], device=self.device)
        for frame in frames:
            buf = torch.cat([buf[:, 1:], frame.reshape(1, 1, -1).to(buf)], 1)
            yield self.classify_windows(buf)[0].softmax(-1)[0]

    # -- harness ----------------------------------------------------------------------------

    @torch.no_grad()
    def sample(self, n, generator=None):
        """Not a generative model: per-frame class probabilities [n, T, C] of n fresh streams
        (what the training plots show)."""
        from .. import data as fdata

        seed = int(torch.randint(1 << 30, (1,), generator=generator, device=generator.device if generator else None))
        streams = fdata.make(self.data.name, n=n, seed=seed, split="test").x
        return self.scores(streams)

    @torch.no_grad()
    def evaluate(self, dataset, generator=None):
        """Per-frame mAP over the action classes (background excluded, as OadTR reports on
        THUMOS), per-frame accuracy, and the chance-level mAP (each class's frame frequency)."""
        probs = self.scores(dataset.x).reshape(-1, self.num_classes).cpu()
        y = dataset.y.reshape(-1)
        ap = metrics.average_precision(probs[:, 1:], F.one_hot(y, self.num_classes)[:, 1:])
        present = F.one_hot(y, self.num_classes)[:, 1:].sum(0) > 0
        return {"mAP": float(ap[present].mean()), "frame_acc": float((probs.argmax(-1) == y).float().mean()),
                "chance_mAP": float(F.one_hot(y, self.num_classes)[:, 1:].float().mean(0)[present].mean()),
                "per_class_AP": [float(a) for a in ap]}
