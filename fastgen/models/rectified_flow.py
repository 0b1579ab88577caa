"""Rectified flow (Liu et al. 2022, "Flow Straight and Fast") on 2D point clouds, with reflow.

    fastgen train rectified_flow --data moons --steps 4000                    # 1-rectified flow
    fastgen train rectified_flow --data moons --steps 2000 --out runs/rectified_flow2-moons \\
        --model-opt reflow_from=runs/rectified_flow-moons/checkpoint.pt      # 2-rectified flow
    fastgen eval rectified_flow --ckpt runs/rectified_flow2-moons/checkpoint.pt

Convention (the one of `fastgen.ops.flow_euler_step` and FlowMatchEulerDiscreteScheduler): time
is sigma in [0, 1], sigma = 1 is noise z ~ N(0, I), sigma = 0 is data x, the straight path is
x_sigma = (1 - sigma) x + sigma z, and the network v(x_sigma, sigma) regresses its constant
velocity dx/dsigma = z - x. (Liu et al. write X_0 = noise, X_1 = data, t = 1 - sigma, v = X_1 - X_0:
the same flow with time and velocity negated.) Sampling integrates the ODE from sigma = 1 to 0 on
a uniform grid with the fused Euler (`flow_euler_step`) or Heun (`flow_euler_step` predictor +
`flow_heun_step` corrector) steps.

Reflow: `reflow_from=<checkpoint of a rectified_flow>` draws `reflow_pairs` noises z, solves the
teacher's ODE to get its samples x = ODE(z) (`reflow_solver`, `reflow_steps`), and trains on
straight paths between these fixed couplings (z, x) instead of independent (noise, data) pairs;
the data batches of the training loop then only set the batch size. The student starts from
the teacher's weights (`reflow_init=True`, as in the paper). The couplings are stored in the
checkpoint (buffers), so a reflowed checkpoint reloads without its teacher; `--resume` rebuilds
them from the teacher (same seed, same couplings).

`evaluate` reports sliced-Wasserstein to held-out data after 1, 2, 4 and 100 Euler steps
(`eval_steps`) from the same noise, with the configured solver and steps, and the straightness
S = E_sigma E_z ||(z - x_0) - v(x_sigma, sigma)||^2 along the model's own Euler trajectories
(`straightness_steps` steps; 0 for a perfectly straight flow, which one Euler step samples exactly).
"""
import torch

from .. import metrics, ops
from ..checkpoint import load_checkpoint
from ..diffusion.schedulers import randn
from .base import GenerativeModel, model_from_checkpoint, register
from .ddpm import MLPDenoiser

SOLVERS = ("euler", "heun")
# the network sees sigma * TIME_SCALE: the sinusoidal embedding's frequencies are sized for
# integer timesteps in [0, 1000), like the ddpm model's
TIME_SCALE = 1000.0


def _positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"rectified_flow: {name} must be a positive int, got {value!r}")
    return value


def _solver(name, value):
    if value not in SOLVERS:
        raise ValueError(f"rectified_flow: {name} must be one of {SOLVERS}, got {value!r}")
    return value


def uniform_sigmas(steps, device=None):
    """The sampling grid sigma = 1, 1 - 1/steps, ..., 0 (steps + 1 entries)."""
    return torch.linspace(1.0, 0.0, steps + 1, device=device, dtype=torch.float32)


@register("rectified_flow")
class RectifiedFlow(GenerativeModel):
    kinds = ("points2d",)

    def __init__(self, data, hidden=None, depth=None, solver="euler", sample_steps=100,
                 eval_steps=(1, 2, 4, 100), straightness_steps=100, reflow_from=None, reflow_pairs=10000,
                 reflow_steps=50, reflow_solver="heun", reflow_seed=0, reflow_init=True, reflowed_from=None):
        teacher = None
        if reflow_from is not None:
            teacher = self._load_teacher(reflow_from, data)
            hidden = teacher.config["hidden"] if hidden is None else hidden
            depth = teacher.config["depth"] if depth is None else depth
            if reflow_init and (hidden, depth) != (teacher.config["hidden"], teacher.config["depth"]):
                raise ValueError(
                    f"rectified_flow: reflow_init=True starts from the teacher's weights, so hidden/depth must "
                    f"match the teacher's ({teacher.config['hidden']}, {teacher.config['depth']}); got "
                    f"({hidden}, {depth}) (leave them unset or pass reflow_init=False)")
        hidden = 128 if hidden is None else hidden
        depth = 3 if depth is None else depth
        eval_steps = tuple(eval_steps) if isinstance(eval_steps, (list, tuple)) else eval_steps
        # a reflowed model's config names its teacher only as provenance (reflowed_from): rebuilding
        # it from its checkpoint must not need the teacher, whose couplings are in the state dict
        super().__init__(data, hidden=hidden, depth=depth, solver=solver, sample_steps=sample_steps,
                         eval_steps=eval_steps, straightness_steps=straightness_steps, reflow_from=None,
                         reflow_pairs=reflow_pairs, reflow_steps=reflow_steps, reflow_solver=reflow_solver,
                         reflow_seed=reflow_seed, reflow_init=reflow_init,
                         reflowed_from=reflow_from if reflow_from is not None else reflowed_from)
        _positive_int("hidden", hidden)
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 0:
            raise ValueError(f"rectified_flow: depth must be an int >= 0, got {depth!r}")
        _solver("solver", solver)
        _solver("reflow_solver", reflow_solver)
        _positive_int("sample_steps", sample_steps)
        _positive_int("straightness_steps", straightness_steps)
        _positive_int("reflow_steps", reflow_steps)
        _positive_int("reflow_pairs", reflow_pairs)
        if not isinstance(eval_steps, tuple) or not eval_steps:
            raise ValueError(f"rectified_flow: eval_steps must be a non-empty list of positive ints, "
                             f"got {eval_steps!r}")
        for s in eval_steps:
            _positive_int("eval_steps entry", s)
        if isinstance(reflow_seed, bool) or not isinstance(reflow_seed, int):
            raise ValueError(f"rectified_flow: reflow_seed must be an int, got {reflow_seed!r}")
        if not isinstance(reflow_init, bool):
            raise ValueError(f"rectified_flow: reflow_init must be True or False, got {reflow_init!r}")
        self.dim = int(torch.tensor(data.shape).prod())
        self.net = MLPDenoiser(self.dim, hidden, depth)
        self.reflow = self.config["reflowed_from"] is not None
        if self.reflow:
            # fixed couplings (z, teacher ODE(z)); reflow_ready stays False in a model rebuilt with
            # reflowed_from but no checkpoint to load them from, and training then refuses to start
            self.register_buffer("reflow_noise", torch.zeros(reflow_pairs, self.dim))
            self.register_buffer("reflow_sample", torch.zeros(reflow_pairs, self.dim))
            self.register_buffer("reflow_ready", torch.tensor(False))
        if teacher is not None:
            if reflow_init:
                self.net.load_state_dict(teacher.net.state_dict())
            z = torch.randn(reflow_pairs, self.dim, generator=torch.Generator().manual_seed(reflow_seed))
            with torch.no_grad():
                self.reflow_noise.copy_(z)
                self.reflow_sample.copy_(teacher.integrate(z, reflow_steps, reflow_solver))
            self.reflow_ready.fill_(True)

    @staticmethod
    def _load_teacher(path, data):
        if not isinstance(path, str):
            raise ValueError(f"rectified_flow: reflow_from must be the path of a rectified_flow checkpoint, "
                             f"got {path!r}")
        try:
            state = load_checkpoint(path, "rectified_flow")
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"rectified_flow: reflow_from: {exc} (train the flow to reflow first: "
                                    f"fastgen train rectified_flow --data {data.name} --out <run>, then "
                                    f"reflow_from=<run>/checkpoint.pt)") from None
        if tuple(state["data_spec"]["shape"]) != tuple(data.shape):
            raise ValueError(f"rectified_flow: the teacher at {path} was trained on points of shape "
                             f"{tuple(state['data_spec']['shape'])}, the data has {tuple(data.shape)}")
        return model_from_checkpoint(state)

    # -- the flow -------------------------------------------------------------------------------

    def velocity(self, x, sigma):
        """v(x_sigma, sigma) ~ dx/dsigma = noise - data; sigma a float, 0-d or per-row tensor in [0, 1]."""
        return self.net(x, torch.as_tensor(sigma, device=x.device, dtype=torch.float32) * TIME_SCALE)

    def forward(self, x, y=None):
        b = x.shape[0]
        if self.reflow:
            if not bool(self.reflow_ready):
                raise RuntimeError("rectified_flow: this reflow model has no couplings; build it with "
                                   "reflow_from=<teacher checkpoint> (or load a reflowed checkpoint)")
            idx = torch.randint(0, self.reflow_noise.shape[0], (b,), device=self.reflow_noise.device)
            z, x0 = self.reflow_noise[idx], self.reflow_sample[idx]
        else:
            x0 = x.reshape(b, -1)
            z = torch.randn_like(x0)
        sigma = torch.rand(b, 1, device=x0.device, dtype=x0.dtype)
        x_sigma = (1 - sigma) * x0 + sigma * z
        loss = torch.mean((self.velocity(x_sigma, sigma.reshape(-1)) - (z - x0)) ** 2)
        return loss, {"velocity_mse": loss.detach()}

    @torch.no_grad()
    def integrate(self, z, steps, solver="euler", trajectory=False):
        """Solve dx/dsigma = v(x, sigma) from x = z at sigma = 1 to sigma = 0 in `steps` uniform
        steps of the fused Euler or Heun op. With trajectory=True also returns the velocities
        v(x_i, sigma_i) at the grid points, [steps, *z.shape] (Euler's, or Heun's first stage)."""
        _positive_int("steps", steps)
        _solver("solver", solver)
        sigmas = uniform_sigmas(steps, z.device)
        x, vs = z, []
        for i in range(steps):
            v = self.velocity(x, sigmas[i])
            if trajectory:
                vs.append(v)
            x_next = ops.flow_euler_step(v, x, i, sigmas)
            if solver == "heun":
                x_next = ops.flow_heun_step(v, self.velocity(x_next, sigmas[i + 1]), x, i, sigmas)
            x = x_next
        return (x, torch.stack(vs)) if trajectory else x

    @torch.no_grad()
    def sample(self, n, generator=None, solver=None, steps=None, noise=None):
        """n samples from z ~ N(0, I) (drawn with `generator`, or the given `noise` [n, dim])."""
        z = self._noise(n, generator) if noise is None else noise.to(self.device).reshape(n, self.dim)
        x = self.integrate(z, steps or self.config["sample_steps"], solver or self.config["solver"])
        return x.reshape((n,) + tuple(self.data.shape))

    def _noise(self, n, generator):
        # drawn as diffusers' pipelines (and fastgen.diffusion.sample) draw it: a CPU generator
        # feeds a model on any device
        return randn((n, self.dim), generator=generator, device=self.device)

    @torch.no_grad()
    def straightness(self, z, steps=None):
        """Liu et al.'s S(Z) = int_0^1 E ||(Z_noise - Z_data) - v(Z_sigma, sigma)||^2 dsigma on the
        model's own Euler trajectories from noises z (a rectangle rule over the grid)."""
        x, vs = self.integrate(z, steps or self.config["straightness_steps"], "euler", trajectory=True)
        return float(((z - x).unsqueeze(0) - vs).pow(2).sum(-1).mean())

    @torch.no_grad()
    def evaluate(self, dataset, generator=None):
        n = min(len(dataset.x), 2000)
        real = dataset.x[:n].reshape(n, -1)
        z = self._noise(n, generator)  # one noise for every solver / step count: differences are the ODE's

        def sw(samples):
            return float(metrics.sliced_wasserstein(samples.reshape(n, -1).cpu(), real, seed=0))

        samples = self.sample(n, noise=z)
        out = {"sliced_wasserstein": sw(samples),
               "mmd_rbf": float(metrics.mmd_rbf(samples.reshape(n, -1).cpu(), real)),
               "straightness": self.straightness(z)}
        for steps in self.config["eval_steps"]:
            out[f"sliced_wasserstein_euler_{steps}"] = sw(self.sample(n, noise=z, solver="euler", steps=steps))
        return out
