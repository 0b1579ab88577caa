"""The training harness behind `fastgen train / sample / eval`.

One loop for every reference model: data from `fastgen.data.stream`, Adam, a tqdm bar with the
loss, periodic sample plots, checkpoints that resume exactly (model, optimizers, step, RNG
states, loss history), and a metrics JSON per run. Under `torchrun` the model is wrapped in
DistributedDataParallel (NCCL on GPU, gloo on CPU); every rank draws its own data shard.

A model that trains more than one network (a GAN, VQGAN) owns its step instead: when it defines
    configure_optimizers(lr) -> [Optimizer, ...]
    training_step(x, y, optimizers, step) -> (loss: tensor or float, {name: scalar})
the loop calls training_step (which zeroes, backpropagates and steps itself; `step` = steps done
so far) in place of forward / backward / Adam. Under torchrun such a model is not wrapped in
DDP; every optimizer averages its gradients over the ranks just before it steps.
"""
import hashlib
import json
import math
import os
import time

import torch
import torch.distributed as dist

from . import data as fdata
from . import plotting
from .checkpoint import (CHECKPOINT_FORMAT, CHECKPOINT_NAME, RunLock, load_checkpoint,  # noqa: F401
                         load_optimizer_states, save_checkpoint, write_atomic)
from .errors import BadArgument, BadOption, MissingFile, OutputExists, UserError
from .models import DataSpec, get_model
from .models.base import model_from_checkpoint  # noqa: F401  (fastgen.train's API before checkpoint.py)


# -- distributed --------------------------------------------------------------------------------

def _init_distributed(device):
    """(rank, world_size, device); starts the process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, torch.device(device)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    dev = torch.device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return rank, world, dev


def parameter_digest(model) -> str:
    """A hash of every parameter's bytes: equal on every replica iff the replicas are identical."""
    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def adam(params, lr):
    """Adam with torch's fused kernel where it takes every parameter's device and dtype, else the
    multi-tensor (foreach) one: the default for-loop Adam cost Glow's 90 parameter tensors 1.56 ms
    a step on CPU against 0.34 ms fused (issue 18; benchmarks/adam_glow.py measures it)."""
    params = list(params)
    try:
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices
        devices = set(_get_fused_kernels_supported_devices())
    except ImportError:  # a torch without the helper: foreach is always safe
        devices = set()
    fused = bool(params) and all(p.device.type in devices and p.is_floating_point() and not p.is_sparse
                                 for p in params)
    return torch.optim.Adam(params, lr=lr, fused=True) if fused else torch.optim.Adam(params, lr=lr, foreach=True)


def _owns_step(model):
    return hasattr(model, "configure_optimizers") and hasattr(model, "training_step")


def _average_gradients_before_step(optimizer, world):
    """Under torchrun, a model that steps itself gets DDP's gradient average from a pre-step hook:
    one all-reduce of the optimizer's flattened gradients (a missing gradient counts as zero, on
    every rank alike, so the collectives always match)."""
    def hook(opt, args, kwargs):
        params = [p for group in opt.param_groups for p in group["params"]]
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        flat = torch.cat([p.grad.reshape(-1) for p in params])
        dist.all_reduce(flat)
        flat /= world
        for p, g in zip(params, flat.split([p.numel() for p in params])):
            p.grad.copy_(g.view_as(p.grad))

    optimizer.register_step_pre_hook(hook)


def _check_count(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BadArgument(f"{name} must be an integer >= 1, got {value!r}")


# -- training -----------------------------------------------------------------------------------

def train(model_name, data_name, *, steps=2000, batch=256, lr=1e-3, device="cpu", out=None,
          seed=0, force=False, resume=False, log_every=50, plot_every=500, ckpt_every=500,
          data_options=None, model_options=None, progress=True):
    """Train `model_name` on `data_name`; returns the metrics dict also written to
    `<out>/metrics.json`. See `fastgen train --help` for the arguments; `steps=0` evaluates the
    untrained model (a baseline), which the CLI does not offer."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        # 0 evaluates the untrained model (the baseline the tests compare against); the CLI asks >= 1
        raise BadArgument(f"steps must be an integer >= 0, got {steps!r}")
    _check_count("batch", batch)
    for name, every in (("log_every", log_every), ("ckpt_every", ckpt_every)):
        _check_count(name, every)
    if plot_every:
        _check_count("plot_every", plot_every)
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
        raise BadArgument(f"lr must be a finite number > 0, got {lr!r}")
    with _user_input("model"):
        model_cls = get_model(model_name)
    data_options, model_options = dict(data_options or {}), dict(model_options or {})
    out = out or os.path.join("runs", f"{model_name}-{data_name}")
    rank, world, device = _init_distributed(device)
    ckpt_path = os.path.join(out, CHECKPOINT_NAME)

    run_config = {"model": model_name, "data": data_name, "steps": steps, "batch": batch, "lr": lr,
                  "seed": seed, "world_size": world, "data_options": data_options,
                  "model_options": model_options}
    if rank == 0:
        _check_out_dir(out, ckpt_path, force=force, resume=resume)  # creates nothing yet

    # names and options first: a typo must not leave an empty run folder behind
    with _user_input(f"data {data_name!r}"):
        holdout = fdata.make(data_name, split="test", seed=seed, **data_options)
    torch.manual_seed(seed)  # identical initial weights on every rank
    with _user_input(f"model {model_name!r}"):
        model = model_cls(DataSpec.of(holdout), **model_options).to(device)
    lock = _open_run_folder(out, ckpt_path, force=force, resume=resume) if rank == 0 else None
    try:
        return _fit(model, holdout, lr=lr, model_name=model_name, data_name=data_name,
                    steps=steps, batch=batch, device=device, out=out, seed=seed, resume=resume,
                    log_every=log_every, plot_every=plot_every, ckpt_every=ckpt_every,
                    data_options=data_options, progress=progress, rank=rank, world=world,
                    ckpt_path=ckpt_path, run_config=run_config)
    finally:
        if lock is not None:
            lock.release()


def _fit(model, holdout, *, lr, model_name, data_name, steps, batch, device, out, seed,
         resume, log_every, plot_every, ckpt_every, data_options, progress, rank, world, ckpt_path,
         run_config):
    """The training loop of `train`, in the locked run folder."""
    owns_step = _owns_step(model)
    optimizers = (list(model.configure_optimizers(lr)) if owns_step
                  else [adam(model.parameters(), lr=lr)])
    start, history = 0, []
    if resume:
        state = load_checkpoint(ckpt_path, model_name, map_location=device)
        model.load_state_dict(state["model_state"])
        load_optimizer_states(optimizers, state)
        start, history = state["step"], state["history"]
        torch.set_rng_state(state["rng_cpu"])
        if state["rng_cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng_cuda"])
    # each rank its own stream of noise inside the model (the data stream is seeded separately)
    if not resume:
        torch.manual_seed(seed + 1000003 * rank)
    net = model
    if world > 1 and owns_step:
        for opt in optimizers:
            _average_gradients_before_step(opt, world)
    elif world > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    stream = fdata.stream(data_name, batch, seed=seed, rank=rank, world_size=world,
                          start=start, **data_options)
    bar = _progress(range(start, steps), enabled=progress and rank == 0,
                    desc=f"{model_name}/{data_name}", initial=start, total=steps)
    t0 = time.time()
    model.train()
    for step in bar:
        x, y = next(stream)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if owns_step:
            loss, logs = model.training_step(x, y, optimizers, step)
        else:
            loss, logs = net(x, y)
            optimizers[0].zero_grad(set_to_none=True)
            loss.backward()
            optimizers[0].step()
        done = step + 1
        if done % log_every == 0 or done == steps:
            loss = loss.detach() if torch.is_tensor(loss) else loss  # training_step may give a float
            row = {"step": done, "loss": float(loss), **{k: float(v) for k, v in logs.items()}}
            history.append(row)
            if hasattr(bar, "set_postfix"):
                bar.set_postfix(loss=f"{row['loss']:.4f}")
        if rank == 0 and plot_every and (done % plot_every == 0 or done == steps):
            model.eval()
            plotting.save_samples(model, holdout, os.path.join(out, f"samples_{done:06d}.png"),
                                  title=f"{model_name} on {data_name}, step {done}")
            model.train()
        if rank == 0 and (done % ckpt_every == 0 or done == steps):
            save_checkpoint(ckpt_path, model=model, optimizer=optimizers, step=done,
                            run_config=run_config, history=history)
    model.eval()
    result = {"run": run_config, "history": history, "train_seconds": time.time() - t0,
              "final_step": steps}
    if world > 1:
        digests = [None] * world
        dist.all_gather_object(digests, parameter_digest(model))
        result["replicas_identical"] = len(set(digests)) == 1
        result["parameter_digests"] = digests
    if rank == 0:
        result["eval"] = model.evaluate(holdout, generator=torch.Generator(device).manual_seed(seed))
        write_atomic(os.path.join(out, "metrics.json"), lambda f: f.write(json.dumps(result, indent=2).encode()))
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return result


class _user_input:
    """Turns a ValueError (or a missing file) raised while resolving `what` from the user's names
    and options into a one-line user error; other exceptions, and anything raised later in
    training, keep their type and traceback."""

    def __init__(self, what):
        self.what = what

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if exc is None or isinstance(exc, UserError):
            return False
        if isinstance(exc, FileNotFoundError):
            raise MissingFile(f"{self.what}: {exc}") from exc
        if isinstance(exc, TypeError) and "unexpected keyword argument" in str(exc):  # a model option
            raise BadOption(f"{self.what}: {exc}") from exc
        if isinstance(exc, ValueError):
            raise BadArgument(f"{self.what}: {exc}" if self.what not in str(exc) else str(exc)) from exc
        return False


def _check_out_dir(out, ckpt_path, *, force, resume):
    if resume:
        if not os.path.isfile(ckpt_path):
            raise MissingFile(f"--resume: no checkpoint at {ckpt_path}")
        return
    if os.path.exists(ckpt_path) and not force:
        raise OutputExists(f"{out} already holds a run; pass --force to overwrite it or "
                           f"--resume to continue it")


def _open_run_folder(out, ckpt_path, *, force, resume):
    """Create the run folder, check it is writable and lock it (RunLock); then, under the lock,
    check it again (another run may have started) and clear an old run's files for --force."""
    lock = RunLock(out)
    try:
        _check_out_dir(out, ckpt_path, force=force, resume=resume)
        if force and not resume:
            for name in os.listdir(out):
                if name == CHECKPOINT_NAME or name == "metrics.json" or name.startswith("samples_"):
                    os.remove(os.path.join(out, name))
    except BaseException:
        lock.release()
        raise
    return lock


def _progress(it, *, enabled, **kwargs):
    if not enabled:
        return it
    from tqdm.auto import tqdm

    return tqdm(it, dynamic_ncols=True, **kwargs)


# -- sample / eval ------------------------------------------------------------------------------

def sample(model_name, ckpt, *, n=64, out=None, seed=0, device="cpu", force=False):
    """Draw n samples from a checkpoint; saves a PNG (and the tensor as .pt) next to it."""
    _check_count("n", n)
    state = load_checkpoint(ckpt, model_name, map_location=device)
    model = model_from_checkpoint(state, device)
    out = out or os.path.join(os.path.dirname(os.path.abspath(ckpt)), f"sample_n{n}_seed{seed}.png")
    if os.path.exists(out) and not force:
        raise OutputExists(f"{out} exists; pass --force to overwrite it")
    samples = model.sample(n, generator=torch.Generator(device).manual_seed(seed)).cpu()
    reference = None
    if model.data.kind == "points2d":  # held-out points drawn lightly under the samples
        run = state["run_config"]
        reference = fdata.make(run["data"], split="test", seed=run["seed"], **run["data_options"]).x[:2000]
    plotting.save_tensor_plot(samples, model.data, out, reference=reference,
                              title=f"{model_name}, step {state['step']}: {n} samples (seed {seed})")
    torch.save(samples, os.path.splitext(out)[0] + ".pt")
    return out, samples


def evaluate(model_name, ckpt, *, seed=0, device="cpu"):
    """Held-out metrics of a checkpoint (the run's data, test split)."""
    state = load_checkpoint(ckpt, model_name, map_location=device)
    model = model_from_checkpoint(state, device)
    run = state["run_config"]
    holdout = fdata.make(run["data"], split="test", seed=run["seed"], **run["data_options"])
    return model.evaluate(holdout, generator=torch.Generator(device).manual_seed(seed))
