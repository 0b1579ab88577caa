"""SimCLR on shapes: contrastive pre-training makes the encoder's features linearly separable by
shape (linear-probe accuracy well above the untrained encoder's), and the augmentations."""
import torch

from fastgen import train
from fastgen.models.simclr import augment

COMMON = dict(data_options={"size": 16}, batch=64, seed=0, progress=False, plot_every=0)


def test_pretraining_beats_the_untrained_linear_probe(tmp_path):
    untrained = train.train("simclr", "shapes", steps=0, out=str(tmp_path / "u"), **COMMON)["eval"]
    result = train.train("simclr", "shapes", steps=300, lr=2e-3, out=str(tmp_path / "t"), log_every=100, **COMMON)
    trained = result["eval"]
    assert trained["probe_acc"] > untrained["probe_acc"] + 0.08, (trained, untrained)
    assert trained["probe_acc"] > 1.6 * trained["chance"], trained
    losses = [r["nt_xent"] for r in result["history"]]
    assert losses[-1] < losses[0]


def test_augment_keeps_shape_and_range_and_is_seeded():
    x = torch.rand(8, 3, 16, 16)
    a = augment(x, torch.Generator().manual_seed(0))
    b = augment(x, torch.Generator().manual_seed(0))
    c = augment(x, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and float(a.min()) >= 0 and float(a.max()) <= 1
    assert torch.equal(a, b) and not torch.equal(a, c)
