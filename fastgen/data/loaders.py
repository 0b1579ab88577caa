"""make(): a fixed split as a FastgenDataset; stream(): endless fresh batches; batches(): endless
shuffled batches of a FastgenDataset. All deterministic, all sharded by rank."""
import torch

# make() lives with the dataset builders (a builder called is make()); imported here as before
from .base import FastgenDataset, _generate, _int, generator, get_builder, make  # noqa: F401

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
