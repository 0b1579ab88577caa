"""make(): a fixed split as a FastgenDataset; stream(): endless fresh batches; batches(): endless
shuffled batches of a FastgenDataset. All deterministic, all sharded by rank."""
import operator

import torch

from .base import SPLITS, FastgenDataset, generator, get_builder

CHUNK = 4096  # procedural items generated per call inside make() (bounds peak memory)


def _int(value, what, lo):
    try:
        v = operator.index(value)
    except TypeError:
        raise TypeError(f"{what} must be an int, got {value!r}") from None
    if v < lo:
        raise ValueError(f"{what} must be >= {lo}, got {v}")
    return v


def _generate(builder, count, g, opts):
    x, y = builder.generate(count, g, opts)
    return x.to(torch.float32).contiguous(), y.to(torch.int64).contiguous()


def _fixed_split(name, num_items, test_fraction, split):
    """Indices of `split` in a loaded dataset: a fixed share (the same for every seed) is test."""
    if num_items < 2 or test_fraction == 0:
        return torch.arange(num_items)
    n_test = min(max(1, round(num_items * test_fraction)), num_items - 1)
    perm = torch.randperm(num_items, generator=generator(name, "split", num_items))
    return perm[:n_test].sort().values if split == "test" else perm[n_test:].sort().values


def make(name, *, n=None, seed=0, split="train", **kwargs) -> FastgenDataset:
    """A fixed split of dataset `name` with `n` items (default: the dataset's default_n, e.g.
    10000 for toys / shapes / binary / bars, 512 for action_streams; all items of the split for
    folder / npz). Same (name, n, seed, split, options) -> identical data; "train" and "test"
    draw from different seeds. kwargs are the dataset's options (see DATASETS[name].options).

    For folder / npz the data is loaded, a fixed `test_fraction` held out as "test", and the
    split's items returned in an order shuffled by `seed` (`n` takes the first n of them)."""
    builder = get_builder(name)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(map(repr, SPLITS))}, got {split!r}")
    seed = _int(seed, "seed", -(1 << 62))
    opts = builder.resolve(kwargs)
    if n is not None:
        n = _int(n, "n", 0)
    if builder.procedural:
        n = builder.default_n if n is None else n
        g = generator(name, "make", split, seed)
        parts = [_generate(builder, min(CHUNK, n - i), g, opts) for i in range(0, max(n, 1), CHUNK)]
        x, y = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        num_classes, class_names = builder.info(opts)
        kind = builder.kind
    else:
        loaded = builder.load(opts)
        idx = _fixed_split(name, loaded["x"].shape[0], opts["test_fraction"], split)
        idx = idx[torch.randperm(len(idx), generator=generator(name, "make", split, seed))]
        if n is not None:
            if n > len(idx):
                raise ValueError(f"dataset {name!r}: asked for n={n} items but the {split} split of "
                                 f"{opts['path']} has only {len(idx)}")
            idx = idx[:n]
        x, y = loaded["x"][idx].contiguous(), loaded["y"][idx].contiguous()
        num_classes, class_names, kind = loaded["num_classes"], loaded["class_names"], loaded["kind"]
    return FastgenDataset(name, kind, x, y, num_classes, class_names=class_names, options=opts,
                          split=split, seed=seed)


def _check_ranks(batch_size, rank, world_size):
    batch_size = _int(batch_size, "batch_size", 1)
    world_size = _int(world_size, "world_size", 1)
    rank = _int(rank, "rank", 0)
    if rank >= world_size:
        raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
    return batch_size, rank, world_size


def stream(name, batch_size, *, seed=0, rank=0, world_size=1, start=0, n=None, **kwargs):
    """An endless iterator of (x [batch_size, *shape], y [batch_size, ...]) batches of `name`.

    Procedural datasets: every batch freshly generated from a generator seeded by
    (name, seed, rank, step), so a step's batch is the same whenever it is drawn and different
    ranks get different data. `start` is the first step (resume a run exactly where it stopped).
    With `n` given, or for folder / npz: batches are drawn (with replacement, same seeding) from
    the fixed train split `make(name, n=n, seed=seed, split="train", **kwargs)`.
    Errors in the arguments are raised here, not at the first next()."""
    builder = get_builder(name)
    batch_size, rank, world_size = _check_ranks(batch_size, rank, world_size)
    seed = _int(seed, "seed", -(1 << 62))
    start = _int(start, "start", 0)
    if builder.procedural and n is None:
        opts = builder.resolve(kwargs)

        def fresh():
            step = start
            while True:
                yield _generate(builder, batch_size, generator(name, "stream", seed, rank, step), opts)
                step += 1
        return fresh()

    data = make(name, n=n, seed=seed, split="train", **kwargs)
    if len(data) == 0:
        raise ValueError(f"dataset {name!r}: the train split is empty, nothing to stream")

    def resample():
        step = start
        while True:
            g = generator(name, "stream-fixed", seed, rank, step)
            idx = torch.randint(len(data), (batch_size,), generator=g)
            yield data.x[idx], data.y[idx]
            step += 1
    return resample()


def batches(dataset, batch_size, *, seed=0, rank=0, world_size=1, start=0):
    """An endless iterator of shuffled (x, y) batches of a FastgenDataset (anything with `x`, `y`).

    Every epoch is a fresh permutation from seed + epoch; it is cut into `world_size` equal
    contiguous shards (the last len % world_size items of the permutation are left out that
    epoch) and rank `rank` walks its shard. Batches always hold `batch_size` items: a batch that
    reaches the end of an epoch continues into the next. `start` skips that many batches."""
    batch_size, rank, world_size = _check_ranks(batch_size, rank, world_size)
    seed = _int(seed, "seed", -(1 << 62))
    start = _int(start, "start", 0)
    x, y = dataset.x, dataset.y
    total = x.shape[0]
    shard = total // world_size
    if shard == 0:
        raise ValueError(f"batches: {total} items cannot be shared by world_size={world_size} ranks")

    def shard_of(epoch):
        perm = torch.randperm(total, generator=generator("batches", seed + epoch))
        return perm[rank * shard:(rank + 1) * shard]

    def walk():
        cache = {}
        k = start
        while True:
            pos = torch.arange(k * batch_size, (k + 1) * batch_size)
            epochs, offsets = pos // shard, pos % shard
            idx = torch.empty(batch_size, dtype=torch.int64)
            for e in epochs.unique().tolist():
                if e not in cache:
                    cache = {old: v for old, v in cache.items() if old >= e - 1}
                    cache[e] = shard_of(e)
                sel = epochs == e
                idx[sel] = cache[e][offsets[sel]]
            yield x[idx], y[idx]
            k += 1
    return walk()
