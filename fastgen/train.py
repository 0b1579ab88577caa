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
from .models import DataSpec, get_model

CHECKPOINT_FORMAT = 1
CHECKPOINT_NAME = "checkpoint.pt"


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


# -- checkpoints --------------------------------------------------------------------------------

def save_checkpoint(path, *, model, optimizer, step, run_config, history):
    """`optimizer`: one optimizer, or a list (one state dict is stored as before; more as a list)."""
    optimizers = list(optimizer) if isinstance(optimizer, (list, tuple)) else [optimizer]
    opt_states = [o.state_dict() for o in optimizers]
    state = {
        "format": CHECKPOINT_FORMAT,
        "fastgen_version": __import__("fastgen").__version__,
        "model": model.name,
        "model_config": model.config,
        "data_spec": model.data.to_dict(),
        "run_config": run_config,
        "step": step,
        "model_state": model.state_dict(),
        "optimizer_state": opt_states[0] if len(opt_states) == 1 else opt_states,
        "rng_cpu": torch.get_rng_state(),
        "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "history": history,
    }
    tmp = f"{path}.tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)  # a crash mid-save never leaves a truncated checkpoint


def load_checkpoint(path, model_name=None, map_location="cpu"):
    """The checkpoint dict; a clear error if it is missing, not fastgen's, or another model's."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:
        raise ValueError(f"{path} is not a readable fastgen checkpoint ({exc})") from exc
    if not isinstance(state, dict) or "format" not in state or "model" not in state:
        raise ValueError(f"{path} is not a fastgen checkpoint")
    if state["format"] != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} has checkpoint format {state['format']} (fastgen "
                         f"{state.get('fastgen_version')}); this fastgen reads format {CHECKPOINT_FORMAT}")
    if model_name is not None and state["model"] != model_name:
        raise ValueError(f"{path} is a checkpoint of model {state['model']!r}, not {model_name!r}")
    return state


def load_optimizer_states(optimizers, state):
    """Restore every optimizer from a checkpoint (a single state dict or a list of them)."""
    saved = state["optimizer_state"]
    saved = list(saved) if isinstance(saved, (list, tuple)) else [saved]
    if len(saved) != len(optimizers):
        raise ValueError(f"checkpoint holds {len(saved)} optimizer state(s), the model has "
                         f"{len(optimizers)} optimizer(s)")
    for opt, sd in zip(optimizers, saved):
        opt.load_state_dict(sd)


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


def model_from_checkpoint(state, device="cpu"):
    cls = get_model(state["model"])
    model = cls(DataSpec(**{**state["data_spec"], "shape": tuple(state["data_spec"]["shape"])}),
                **state["model_config"]).to(device)
    model.load_state_dict(state["model_state"])
    model.eval()
    return model


def _check_count(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


# -- training -----------------------------------------------------------------------------------

def train(model_name, data_name, *, steps=2000, batch=256, lr=1e-3, device="cpu", out=None,
          seed=0, force=False, resume=False, log_every=50, plot_every=500, ckpt_every=500,
          data_options=None, model_options=None, progress=True):
    """Train `model_name` on `data_name`; returns the metrics dict also written to
    `<out>/metrics.json`. See `fastgen train --help` for the arguments; `steps=0` evaluates the
    untrained model (a baseline), which the CLI does not offer."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        # 0 evaluates the untrained model (the baseline the tests compare against); the CLI asks >= 1
        raise ValueError(f"steps must be an integer >= 0, got {steps!r}")
    _check_count("batch", batch)
    for name, every in (("log_every", log_every), ("ckpt_every", ckpt_every)):
        _check_count(name, every)
    if plot_every:
        _check_count("plot_every", plot_every)
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    model_cls = get_model(model_name)
    data_options, model_options = dict(data_options or {}), dict(model_options or {})
    out = out or os.path.join("runs", f"{model_name}-{data_name}")
    rank, world, device = _init_distributed(device)
    ckpt_path = os.path.join(out, CHECKPOINT_NAME)

    run_config = {"model": model_name, "data": data_name, "steps": steps, "batch": batch, "lr": lr,
                  "seed": seed, "world_size": world, "data_options": data_options,
                  "model_options": model_options}
    if rank == 0:
        _prepare_out_dir(out, ckpt_path, force=force, resume=resume)

    holdout = fdata.make(data_name, split="test", seed=seed, **data_options)
    torch.manual_seed(seed)  # identical initial weights on every rank
    model = model_cls(DataSpec.of(holdout), **model_options).to(device)
    owns_step = _owns_step(model)
    optimizers = (list(model.configure_optimizers(lr)) if owns_step
                  else [torch.optim.Adam(model.parameters(), lr=lr)])
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
        with open(os.path.join(out, "metrics.json"), "w") as f:
            json.dump(result, f, indent=2)
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return result


def _prepare_out_dir(out, ckpt_path, *, force, resume):
    if resume:
        if not os.path.isfile(ckpt_path):
            raise FileNotFoundError(f"--resume: no checkpoint at {ckpt_path}")
        return
    if os.path.exists(ckpt_path) and not force:
        raise FileExistsError(f"{out} already holds a run; pass --force to overwrite it or "
                              f"--resume to continue it")
    os.makedirs(out, exist_ok=True)
    if force:
        for name in os.listdir(out):
            if name == CHECKPOINT_NAME or name == "metrics.json" or name.startswith("samples_"):
                os.remove(os.path.join(out, name))


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
        raise FileExistsError(f"{out} exists; pass --force to overwrite it")
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
