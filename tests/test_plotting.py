"""Sample plots: robust axis limits, equal aspect, held-out overlay, title with the metric."""
import math

import pytest
import torch

from fastgen import plotting
from fastgen.models.base import DataSpec

matplotlib = pytest.importorskip("matplotlib")

POINTS = DataSpec("moons", "points2d", (2,), 2)


def _moons_like(n, seed):
    """A 2:1 landscape cloud (x in [-3, 3], y in [-1.5, 1.5]) with two outliers at +-50."""
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(n, 2, generator=g) - 0.5) * torch.tensor([6.0, 3.0])
    x[0] = torch.tensor([50.0, -50.0])
    x[1] = torch.tensor([-50.0, 50.0])
    return x


def test_points_axes_ignore_outliers_and_are_equal_aspect():
    plt = plotting._pyplot()
    samples, held_out = _moons_like(1000, 0), _moons_like(2000, 1)
    fig, ax = plotting._points_figure(plt, samples, held_out, "vae on moons, step 10")
    try:
        (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
        assert -3.6 < x0 < -2.7 and 2.7 < x1 < 3.6, (x0, x1)
        assert -1.8 < y0 < -1.2 and 1.2 < y1 < 1.8, (y0, y1)
        assert ax.get_aspect() == 1.0
        w, h = fig.get_size_inches()
        assert 1.5 < w / h < 2.5  # shaped like the data, not a strip in a square canvas
        labels = [t.get_text() for t in ax.get_legend().get_texts()]
        assert labels == ["held-out data (2000)", "samples (1000)"]
        assert any("2 samples outside the view" in t.get_text() for t in ax.texts)
    finally:
        plt.close(fig)


def test_robust_limits_widen_a_thin_cloud():
    line = torch.stack([torch.linspace(-10, 10, 500), torch.zeros(500)], dim=1)
    (x0, x1), (y0, y1) = plotting.robust_limits(line, max_ratio=3.0)
    assert math.isclose((x1 - x0) / (y1 - y0), 3.0, rel_tol=1e-5)
    assert math.isclose(y0, -y1, abs_tol=1e-6)


def test_save_samples_title_png_and_rng(tmp_path):
    class Toy:
        data, device = POINTS, torch.device("cpu")

        def sample(self, n, generator=None):
            return torch.randn(n, 2, generator=generator)

    class HeldOut:
        x = torch.randn(3000, 2, generator=torch.Generator().manual_seed(5))

    rng = torch.get_rng_state()
    path = plotting.save_samples(Toy(), HeldOut(), str(tmp_path / "s.png"), n=300, title="toy, step 3")
    assert torch.equal(torch.get_rng_state(), rng)  # plotting never shifts the training RNG
    image = matplotlib.image.imread(path)
    assert image.shape[0] > 300 and image.shape[1] > 300

    seen = {}
    real_title = matplotlib.axes.Axes.set_title
    try:
        matplotlib.axes.Axes.set_title = lambda ax, text, **kw: seen.setdefault("title", text)
        plotting.save_samples(Toy(), HeldOut(), str(tmp_path / "t.png"), n=300, title="toy, step 3")
    finally:
        matplotlib.axes.Axes.set_title = real_title
    assert seen["title"].startswith("toy, step 3\nsliced W to held-out ")


def test_image_plots_still_work(tmp_path):
    spec = DataSpec("shapes", "image", (3, 8, 8), 4)
    path = plotting.save_tensor_plot(torch.rand(10, 3, 8, 8), spec, str(tmp_path / "g.png"), title="grid",
                                     metrics={"mse": 0.01234})
    assert matplotlib.image.imread(path).shape[-1] in (3, 4)
    binary = DataSpec("binary", "binary", (16,), 2)
    plotting.save_tensor_plot((torch.rand(5, 16) > 0.5).float(), binary, str(tmp_path / "b.png"))
    assert plotting._format_title("grid", {"mse": 0.01234}) == "grid\nmse 0.0123"
