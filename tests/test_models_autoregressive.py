"""FVSBN, NADE and MADE: exact likelihoods (they sum to 1 over all 2^D vectors), the
autoregressive property, and training beating an untrained model."""
import itertools

import pytest
import torch

from fastgen import train
from fastgen.models import DataSpec, get_model

AR = ["fvsbn", "nade", "made"]


def _model(name, d=5, **kw):
    torch.manual_seed(0)
    m = get_model(name)(DataSpec("bars", "binary", (d,), 2), **kw)
    with torch.no_grad():  # random (not zero-initialized) parameters: a non-trivial distribution
        for p in m.parameters():
            p.normal_(0, 1.0)
    return m


@pytest.mark.parametrize("name,kw", [("fvsbn", {}), ("nade", {"hidden": 7}), ("made", {"hidden": 16}),
                                     ("made", {"hidden": 16, "order": "random", "seed": 3})])
def test_probabilities_sum_to_one_over_all_vectors(name, kw):
    m = _model(name, **kw).double()
    x = torch.tensor(list(itertools.product([0.0, 1.0], repeat=5)), dtype=torch.float64)
    with torch.no_grad():
        log_p = m.log_prob(x)
    assert abs(float(torch.logsumexp(log_p, 0).exp()) - 1.0) < 1e-10
    assert float(log_p.exp().max()) < 0.9  # not a degenerate point mass


@pytest.mark.parametrize("name", AR)
def test_conditional_d_ignores_later_variables(name):
    m = _model(name, d=6)
    order = m._order().tolist()
    x = torch.bernoulli(torch.full((4, 6), 0.5))
    base = m.logits(x)
    for pos, d in enumerate(order):
        later = order[pos:]  # d itself and everything after it in the order
        x2 = x.clone()
        x2[:, later] = 1 - x2[:, later]
        assert torch.allclose(m.logits(x2)[:, d], base[:, d], atol=1e-6), (name, d)


@pytest.mark.parametrize("name", AR)
def test_sample_shape_and_values(name):
    m = _model(name, d=6)
    s = m.sample(10, generator=torch.Generator().manual_seed(0))
    assert s.shape == (10, 6) and set(s.unique().tolist()) <= {0.0, 1.0}


@pytest.mark.parametrize("name", AR)
def test_training_beats_untrained_nll(tmp_path, name):
    common = dict(data_options={"size": 4}, batch=64, seed=0, progress=False, plot_every=0, lr=1e-2)
    untrained = train.train(name, "bars", steps=0, out=str(tmp_path / "u"), **common)["eval"]
    trained = train.train(name, "bars", steps=300, out=str(tmp_path / "t"), log_every=100, **common)["eval"]
    # bars-and-stripes at 4x4 has 30 equally likely vectors: the optimum is log(30) = 3.4 nats
    assert trained["nll"] < untrained["nll"] - 4.0, (trained, untrained)
    assert trained["nll"] < 6.5, trained
