"""fastgen.data: procedural datasets, user-data loaders, stream() and batches()."""
import numpy as np
import pytest
import torch

import fastgen.data as fd

TOYS = ["moons", "circles", "8gaussians", "checkerboard", "swissroll", "pinwheel"]
TOY_CLASSES = {"moons": 2, "circles": 2, "8gaussians": 8, "checkerboard": 1, "swissroll": 1, "pinwheel": 5}
# (name, options, kind, shape, num_classes) of every procedural dataset
PROCEDURAL = [(t, {}, "points2d", (2,), TOY_CLASSES[t]) for t in TOYS] + [
    ("shapes", {}, "image", (3, 16, 16), 4),
    ("shapes", {"size": 32, "channels": 1}, "image", (1, 32, 32), 4),
    ("binary", {}, "binary", (64,), 4),
    ("binary", {"size": 16}, "binary", (256,), 4),
    ("bars", {}, "binary", (16,), 2),
    ("bars", {"size": 6}, "binary", (36,), 2),
    ("action_streams", {}, "sequence", (64, 32), 5),
    ("action_streams", {"length": 20, "feature_dim": 5, "num_classes": 2}, "sequence", (20, 5), 3),
]
PROC_IDS = [f"{p[0]}-{'-'.join(f'{k}{v}' for k, v in p[1].items()) or 'default'}" for p in PROCEDURAL]


def test_registry_names():
    expected = set(TOYS) | {"shapes", "binary", "bars", "action_streams", "folder", "npz"}
    assert expected == set(fd.DATASETS)


@pytest.mark.parametrize("name,opts,kind,shape,num_classes", PROCEDURAL, ids=PROC_IDS)
def test_procedural_dataset(name, opts, kind, shape, num_classes):
    rng = torch.get_rng_state()
    ds = fd.make(name, n=300, seed=0, **opts)
    assert torch.equal(rng, torch.get_rng_state()), "touched the global RNG"
    assert isinstance(ds, torch.utils.data.Dataset) and isinstance(ds, fd.FastgenDataset)
    assert (ds.name, ds.kind, ds.shape, ds.num_classes) == (name, kind, shape, num_classes)
    assert len(ds) == 300 and ds.x.shape == (300, *shape)
    assert ds.x.dtype == torch.float32 and ds.y.dtype == torch.int64
    assert ds.y.shape == ((300, shape[0]) if kind == "sequence" else (300,))
    assert torch.isfinite(ds.x).all()
    assert ds.y.min() >= 0 and ds.y.max() < num_classes
    if num_classes > 1:  # every class shows up
        assert len(ds.y.unique()) == num_classes
    assert len(ds.class_names) == num_classes
    if kind == "points2d":
        assert ds.x.abs().max() < 5.5 and ds.x.abs().max() > 2.5  # roughly [-4, 4]
    if kind == "image":
        assert ds.x.min() >= 0 and ds.x.max() <= 1
    if kind == "binary":
        assert set(ds.x.unique().tolist()) == {0.0, 1.0}
    x0, y0 = ds[0]
    assert x0.shape == shape and torch.equal(x0, ds.x[0]) and torch.equal(y0, ds.y[0])

    again = fd.make(name, n=300, seed=0, **opts)
    assert torch.equal(ds.x, again.x) and torch.equal(ds.y, again.y)
    other = fd.make(name, n=300, seed=1, **opts)
    assert not torch.equal(ds.x, other.x)
    test = fd.make(name, n=300, seed=0, split="test", **opts)
    assert not torch.equal(ds.x, test.x)
    assert torch.equal(fd.DATASETS[name](n=300, seed=0, **opts).x, ds.x)  # a builder is make()


def test_default_sizes():
    assert len(fd.make("moons")) == 10000
    assert len(fd.make("bars")) == 10000
    assert fd.make("binary", n=1).shape == (64,)
    assert fd.make("shapes", n=1).shape == (3, 16, 16)
    assert len(fd.make("action_streams")) == 512
    empty = fd.make("shapes", n=0)
    assert empty.x.shape == (0, 3, 16, 16) and empty.y.shape == (0,)


def test_toy_labels_are_the_natural_classes():
    m = fd.make("moons", n=2000)
    # the upper moon (0) lies mostly above the lower one (1)
    assert m.x[m.y == 0, 1].mean() > m.x[m.y == 1, 1].mean() + 1
    c = fd.make("circles", n=2000)
    r = c.x.norm(dim=1)
    assert r[c.y == 0].mean() > 2.5 and r[c.y == 1].mean() < 2
    g = fd.make("8gaussians", n=4000)
    for k in range(8):  # mode k sits at angle k * 45 degrees
        mean = g.x[g.y == k].mean(0)
        angle = torch.atan2(mean[1], mean[0]) % (2 * np.pi)
        assert abs(float(angle) - k * np.pi / 4) < 0.15 or abs(float(angle) - k * np.pi / 4) > 2 * np.pi - 0.15
    cb = fd.make("checkerboard", n=2000)
    cell = (torch.floor(cb.x[:, 0] / 2) + torch.floor(cb.x[:, 1] / 2)) % 2
    assert cell.unique().numel() == 1  # only one colour of the checkerboard is filled


def _foreground(ds):
    """Grey shapes images -> boolean foreground masks (background = median of the border)."""
    x = ds.x[:, 0]
    border = torch.cat([x[:, 0, :], x[:, -1, :], x[:, :, 0], x[:, :, -1]], 1)
    bg = border.median(1).values
    return (x - bg[:, None, None]).abs() > 0.175  # foreground and background differ by >= 0.35


def test_shapes_contain_the_shape():
    ds = fd.make("shapes", n=2000, size=32, channels=1, seed=3)
    counts = torch.bincount(ds.y, minlength=4).float()
    assert (counts / len(ds) - 0.25).abs().max() < 0.05  # classes roughly uniform
    fg = _foreground(ds)
    frac = fg.float().mean((1, 2))
    assert frac.min() > 0.03 and frac.max() < 0.6 and 0.1 < frac.mean() < 0.35
    # fill of the bounding box: a circle ~ pi/4, an axis-aligned square ~ 1
    h, w = fg.any(2).sum(1), fg.any(1).sum(1)
    fill = fg.sum((1, 2)) / (h * w).clamp(min=1)
    circle, square = fill[ds.y == 0], fill[ds.y == 1]
    assert 0.68 < circle.mean() < 0.88 and square.mean() > 0.95
    assert (circle < 0.92).float().mean() > 0.97 and (square > 0.92).float().mean() > 0.97
    # a triangle's mass sits low (apex up), a cross's in the middle
    rows = torch.arange(32.0)
    for k in (2, 3):
        m = fg[ds.y == k].float()
        centre_row = (m.sum(2) * rows).sum(1) / m.sum((1, 2))
        top = fg[ds.y == k].any(2).float().argmax(1)
        bottom = 31 - fg[ds.y == k].any(2).flip(1).float().argmax(1)
        rel = (centre_row - top) / (bottom - top).clamp(min=1)
        if k == 2:
            assert rel.mean() > 0.55
        else:
            assert abs(float(rel.mean()) - 0.5) < 0.05


def test_shapes_colour_channels_vary():
    ds = fd.make("shapes", n=200, size=16, channels=3)
    assert ds.x.shape == (200, 3, 16, 16)
    corner = ds.x[:, :, 0, 0]
    assert corner.std(0).min() > 0.15  # random background colours
    assert (ds.x[:, 0] != ds.x[:, 1]).any()


def test_binary_is_binarized_shapes():
    ds = fd.make("binary", n=500, size=16)
    assert ds.x.shape == (500, 256)
    assert torch.equal(ds.x, ds.x.round()) and set(ds.x.unique().tolist()) == {0.0, 1.0}
    on = ds.x.mean(1)
    assert on.min() > 0.03 and on.max() < 0.6
    assert len(ds.y.unique()) == 4


def test_bars_are_bars_or_stripes():
    ds = fd.make("bars", n=500, size=5)
    grid = ds.x.view(-1, 5, 5)
    rows_const = (grid == grid[:, :, :1]).all(2).all(1)
    cols_const = (grid == grid[:, :1, :]).all(2).all(1)
    assert (rows_const | cols_const).all()
    assert rows_const[ds.y == 0].all() and cols_const[ds.y == 1].all()
    # not degenerate: the patterns vary
    assert len({tuple(v) for v in ds.x.tolist()}) > 20


def _runs(labels):
    """[(label, start, length)] of a 1D label sequence."""
    out, start = [], 0
    for t in range(1, len(labels) + 1):
        if t == len(labels) or labels[t] != labels[start]:
            out.append((labels[start], start, t - start))
            start = t
    return out


def test_action_streams_segments():
    ds = fd.make("action_streams", n=200, seed=0)
    y = ds.y
    assert (y == 0).any(1).all()  # every window has background
    assert (y > 0).any(1).float().mean() > 0.95  # and nearly all have actions
    bg = (y == 0).float().mean()
    assert 0.2 < bg < 0.7
    for row in y.tolist():
        runs = _runs(row)
        for i, (label, start, length) in enumerate(runs):
            inner = 0 < i < len(runs) - 1
            if label > 0:
                if inner:
                    assert 4 <= length <= 20
                    # actions are separated by background
                    assert runs[i - 1][0] == 0 and runs[i + 1][0] == 0
            elif inner:
                assert 2 <= length <= 16
    # class patterns: frames of one class are closer to their class mean than to others on average
    X, Y = ds.x.reshape(-1, 32), y.reshape(-1)
    means = torch.stack([X[Y == c].mean(0) for c in range(5)])
    test = fd.make("action_streams", n=100, split="test")
    pred = torch.cdist(test.x.reshape(-1, 32), means).argmin(1)
    assert (pred == test.y.reshape(-1)).float().mean() > 0.5


def test_action_streams_options():
    ds = fd.make("action_streams", n=50, length=100, min_len=8, max_len=8, num_classes=2, noise=0.0)
    for row in ds.y.tolist():
        runs = _runs(row)
        assert all(length == 8 for label, _, length in runs[1:-1] if label > 0)
    assert ds.y.max() == 2
    # noise 0: every background frame is the same background pattern
    bg = ds.x[ds.y == 0]
    assert torch.allclose(bg, bg[:1].expand_as(bg))


# -- stream() and batches() -----------------------------------------------------------------------

@pytest.mark.parametrize("name,opts", [("moons", {}), ("shapes", {"size": 16, "channels": 1}),
                                       ("bars", {}), ("action_streams", {"length": 16})])
def test_stream_deterministic_and_sharded(name, opts):
    rng = torch.get_rng_state()
    a = fd.stream(name, 32, seed=0, **opts)
    first = [next(a) for _ in range(3)]
    assert torch.equal(rng, torch.get_rng_state())
    x, y = first[0]
    shape = fd.make(name, n=1, **opts).shape
    assert x.shape == (32, *shape) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert not torch.equal(first[0][0], first[1][0])  # fresh data every step
    b = fd.stream(name, 32, seed=0, **opts)
    for (xa, ya), (xb, yb) in zip(first, (next(b) for _ in range(3))):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    resumed = fd.stream(name, 32, seed=0, start=2, **opts)
    assert torch.equal(next(resumed)[0], first[2][0])
    r1 = fd.stream(name, 32, seed=0, rank=1, world_size=2, **opts)
    assert not torch.equal(next(r1)[0], first[0][0])
    r0 = fd.stream(name, 32, seed=0, rank=0, world_size=2, **opts)
    assert torch.equal(next(r0)[0], first[0][0])  # rank 0's data does not depend on world_size
    assert not torch.equal(next(fd.stream(name, 32, seed=1, **opts))[0], first[0][0])


def test_stream_from_fixed_n():
    ds = fd.make("bars", n=10, seed=4)
    it = fd.stream("bars", 64, seed=4, n=10)
    x, _ = next(it)
    pool = {tuple(v) for v in ds.x.tolist()}
    assert all(tuple(v) in pool for v in x.tolist())


def test_stream_errors_are_raised_eagerly():
    with pytest.raises(ValueError, match="rank"):
        fd.stream("moons", 8, rank=2, world_size=2)
    with pytest.raises(ValueError, match="batch_size"):
        fd.stream("moons", 0)
    with pytest.raises(TypeError, match="colour"):
        fd.stream("shapes", 8, colour=1)


def test_batches_shuffle_shard_and_epochs():
    ds = fd.make("moons", n=100, seed=0)
    ds.x[:, 0] = torch.arange(100.0)  # tag items by index
    def take(it, k):
        return torch.cat([next(it)[0][:, 0] for _ in range(k)]).long()
    # one rank: each epoch is a permutation, epochs reshuffle, batches straddle epochs
    seq = take(fd.batches(ds, 30, seed=5), 10)  # 300 items = 3 epochs
    epochs = seq.view(3, 100)
    for e in epochs:
        assert torch.equal(e.sort().values, torch.arange(100))
    assert not torch.equal(epochs[0], epochs[1])
    assert torch.equal(take(fd.batches(ds, 30, seed=5), 10), seq)
    assert not torch.equal(take(fd.batches(ds, 30, seed=6), 10), seq)
    assert torch.equal(take(fd.batches(ds, 30, seed=5, start=4), 1), seq[120:150])
    # three ranks: disjoint shards of 33 covering 99 items each epoch
    shards = [take(fd.batches(ds, 11, seed=5, rank=r, world_size=3), 3) for r in range(3)]
    assert all(len(s.unique()) == 33 for s in shards)
    assert len(torch.cat(shards).unique()) == 99
    x, y = next(fd.batches(ds, 7))
    assert x.shape == (7, 2) and y.shape == (7,)
    with pytest.raises(ValueError):
        fd.batches(fd.make("moons", n=2), 4, world_size=3)


# -- the user's own data --------------------------------------------------------------------------

def _imsave(path, rgb, size=(12, 18)):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    img = np.zeros((*size, 3), dtype=np.float32)
    img[...] = rgb
    path.parent.mkdir(parents=True, exist_ok=True)
    plt.imsave(str(path), img)


def test_folder_flat(tmp_path):
    for i in range(10):
        _imsave(tmp_path / f"img{i}.png", (1.0, 0.0, 0.0) if i % 2 else (0.0, 0.0, 1.0))
    (tmp_path / "notes.txt").write_text("not an image")
    train = fd.make("folder", path=str(tmp_path), size=8)
    test = fd.make("folder", path=str(tmp_path), size=8, split="test")
    assert (train.kind, train.shape, train.num_classes) == ("image", (3, 8, 8), 1)
    assert len(train) == 9 and len(test) == 1  # test_fraction 0.1
    assert train.x.dtype == torch.float32 and (train.y == 0).all()
    assert train.x.min() >= 0 and train.x.max() <= 1
    pixels = torch.cat([train.x, test.x]).mean((2, 3))  # every image is pure red or pure blue
    red = torch.tensor([1.0, 0.0, 0.0])
    blue = torch.tensor([0.0, 0.0, 1.0])
    assert all(torch.allclose(p, red, atol=0.02) or torch.allclose(p, blue, atol=0.02) for p in pixels)
    # the split is fixed; the seed only reorders
    other = fd.make("folder", path=str(tmp_path), size=8, seed=1)
    assert torch.equal(other.x.sum(0), train.x.sum(0))
    grey = fd.make("folder", path=str(tmp_path), size=4, channels=1, n=3)
    assert grey.x.shape == (3, 1, 4, 4)
    x, y = next(fd.stream("folder", 16, path=str(tmp_path), size=8))
    assert x.shape == (16, 3, 8, 8) and (y == 0).all()


def test_folder_class_subfolders(tmp_path):
    for i in range(6):
        _imsave(tmp_path / "cats" / f"{i}.png", (0.9, 0.9, 0.9))
        _imsave(tmp_path / "dogs" / "nested" / f"{i}.png", (0.1, 0.1, 0.1))
    (tmp_path / "empty").mkdir()
    ds = fd.make("folder", path=str(tmp_path), size=6, channels=1, test_fraction=0.0)
    assert ds.num_classes == 2 and ds.class_names == ("cats", "dogs")
    assert len(ds) == 12 and sorted(ds.y.tolist()) == [0] * 6 + [1] * 6
    assert (ds.x[ds.y == 0] > 0.8).all() and (ds.x[ds.y == 1] < 0.2).all()


def test_folder_errors(tmp_path):
    with pytest.raises(ValueError, match="no images") as err:
        fd.make("folder", path=str(tmp_path))
    assert str(tmp_path) in str(err.value)
    (tmp_path / "sub").mkdir()
    with pytest.raises(ValueError, match="no images"):
        fd.make("folder", path=str(tmp_path))
    with pytest.raises(FileNotFoundError):
        fd.make("folder", path=str(tmp_path / "missing"))
    with pytest.raises(TypeError, match="path"):
        fd.make("folder")
    _imsave(tmp_path / "top.png", (0, 0, 0))
    _imsave(tmp_path / "sub" / "a.png", (0, 0, 0))
    with pytest.raises(ValueError, match="both"):
        fd.make("folder", path=str(tmp_path))


def test_npz(tmp_path):
    gen = np.random.default_rng(0)
    images = gen.random((20, 3, 8, 8)).astype(np.float32)
    labels = gen.integers(0, 3, 20)
    np.savez(tmp_path / "img.npz", x=images, y=labels)
    ds = fd.make("npz", path=str(tmp_path / "img.npz"), test_fraction=0.25)
    test = fd.make("npz", path=str(tmp_path / "img.npz"), test_fraction=0.25, split="test")
    assert (ds.kind, ds.shape, len(ds), len(test)) == ("image", (3, 8, 8), 15, 5)
    assert ds.x.dtype == torch.float32 and ds.y.dtype == torch.int64
    both = torch.cat([ds.x, test.x])
    assert sorted(both.sum((1, 2, 3)).tolist()) == pytest.approx(sorted(images.sum((1, 2, 3)).tolist()), rel=1e-5)
    assert ds.num_classes == labels.max() + 1
    # labels stay with their items
    for x, y in zip(ds.x, ds.y):
        i = int(np.argmin(np.abs(images - x.numpy()).sum((1, 2, 3))))
        assert labels[i] == y

    np.savez(tmp_path / "nhwc.npz", x=(gen.random((6, 5, 5, 3)) * 255).astype(np.uint8))
    ds = fd.make("npz", path=str(tmp_path / "nhwc.npz"))
    assert ds.shape == (3, 5, 5) and ds.x.max() <= 1 and (ds.y == 0).all() and ds.num_classes == 1
    np.savez(tmp_path / "pts.npz", x=gen.normal(size=(50, 2)))
    assert fd.make("npz", path=str(tmp_path / "pts.npz")).kind == "points2d"
    np.savez(tmp_path / "bin.npz", x=gen.integers(0, 2, (50, 12)))
    assert fd.make("npz", path=str(tmp_path / "bin.npz")).kind == "binary"
    np.savez(tmp_path / "seq.npz", x=gen.normal(size=(10, 7, 4)), y=gen.integers(0, 3, (10, 7)))
    seq = fd.make("npz", path=str(tmp_path / "seq.npz"), test_fraction=0.0)
    assert seq.kind == "sequence" and seq.shape == (7, 4) and seq.y.shape == (10, 7)
    x, y = next(fd.stream("npz", 4, path=str(tmp_path / "seq.npz")))
    assert x.shape == (4, 7, 4) and y.shape == (4, 7)


def test_npz_errors(tmp_path):
    np.savez(tmp_path / "bad.npz", images=np.zeros((3, 2)), labels=np.zeros(3))
    with pytest.raises(ValueError, match="no array 'x'") as err:
        fd.make("npz", path=str(tmp_path / "bad.npz"))
    assert "images" in str(err.value) and "labels" in str(err.value)
    np.savez(tmp_path / "short.npz", x=np.zeros((3, 2)), y=np.zeros(2, dtype=np.int64))
    with pytest.raises(ValueError, match="y must be"):
        fd.make("npz", path=str(tmp_path / "short.npz"))
    with pytest.raises(FileNotFoundError):
        fd.make("npz", path=str(tmp_path / "nothing.npz"))


# -- errors ----------------------------------------------------------------------------------------

def test_unknown_dataset_lists_valid_names():
    with pytest.raises(ValueError, match="unknown dataset 'mnist'") as err:
        fd.make("mnist")
    for name in ("moons", "shapes", "action_streams", "folder", "npz"):
        assert name in str(err.value)
    with pytest.raises(ValueError, match="valid datasets"):
        fd.stream("mnist", 4)


def test_unknown_option_is_named():
    with pytest.raises(TypeError, match="'colour'") as err:
        fd.make("shapes", colour=3)
    assert "channels" in str(err.value) and "size" in str(err.value)
    with pytest.raises(TypeError, match="'size'.*none"):
        fd.make("moons", size=3)


def test_bad_values():
    with pytest.raises(ValueError, match="channels"):
        fd.make("shapes", channels=2)
    with pytest.raises(ValueError, match="size"):
        fd.make("shapes", size=4)
    with pytest.raises(ValueError, match="split"):
        fd.make("moons", split="validation")
    with pytest.raises(ValueError, match="n must be"):
        fd.make("moons", n=-1)
    with pytest.raises(ValueError, match="max_len"):
        fd.make("action_streams", min_len=5, max_len=3)
