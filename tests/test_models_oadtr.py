"""OadTR on action_streams: learns per-frame online detection (mAP well above an untrained
model and chance), streaming one frame at a time equals the batched pass, and the AP metric."""
import torch

import fastgen.data as fd
from fastgen import train
from fastgen.metrics import average_precision
from fastgen.models import DataSpec, get_model

COMMON = dict(data_options={"length": 32}, batch=32, seed=0, progress=False, plot_every=0)
SMALL = {"d_model": 32, "heads": 2, "enc_layers": 1, "window": 8, "n_future": 2}


def test_training_beats_untrained_map(tmp_path):
    untrained = train.train("oadtr", "action_streams", steps=0, out=str(tmp_path / "u"), model_options=SMALL,
                            **COMMON)["eval"]
    trained = train.train("oadtr", "action_streams", steps=150, lr=3e-3, out=str(tmp_path / "t"),
                          model_options=SMALL, **COMMON)["eval"]
    assert trained["mAP"] > untrained["mAP"] + 0.2, (trained, untrained)
    assert trained["mAP"] > 2 * trained["chance_mAP"], trained


def test_streaming_equals_batched_windows():
    torch.manual_seed(0)
    ds = fd.make("action_streams", n=2, seed=3, length=20)
    model = get_model("oadtr")(DataSpec.of(ds), **SMALL).eval()
    batched = model.scores(ds.x)
    for i in range(2):
        online = torch.stack(list(model.stream(ds.x[i])))
        torch.testing.assert_close(online, batched[i], rtol=1e-5, atol=1e-6)
    # online: changing a future frame never changes an earlier frame's scores
    x = ds.x[:1].clone()
    x[0, 12:] += 5.0
    torch.testing.assert_close(model.scores(x)[0, :12], batched[0, :12], rtol=1e-5, atol=1e-6)


def test_average_precision_by_hand():
    s = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.6, 0.4], [0.5, 0.5]])
    t = torch.tensor([[1, 0], [0, 0], [1, 0], [0, 0], [1, 0]])
    ap = average_precision(s, t)
    assert abs(float(ap[0]) - (1 + 2 / 3 + 3 / 5) / 3) < 1e-6
    assert torch.isnan(ap[1])                        # no positives
    # ties share one threshold: precision at the end of the tie group
    ap = average_precision(torch.tensor([0.9, 0.5, 0.5, 0.1]), torch.tensor([0, 1, 0, 1]))
    assert abs(float(ap[0]) - (0.5 * 1 / 3 + 0.5 * 2 / 4)) < 1e-6
