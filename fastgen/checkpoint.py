"""Checkpoint I/O and the run folder: durable atomic writes, loading with clear errors, and a
lock so that two trainings never write into one folder.

A layer below the models and the training harness (it imports neither): models that load other
checkpoints (gpt_prior's VQGAN, rectified_flow's teacher) use it without importing fastgen.train.
"""
import errno
import os
import tempfile

import torch

from .errors import BadArgument, MissingFile, RunFolderError

CHECKPOINT_FORMAT = 1
CHECKPOINT_NAME = "checkpoint.pt"
LOCK_NAME = ".fastgen.lock"

try:
    import fcntl
except ImportError:  # Windows: no advisory locks here; the run folder is not locked
    fcntl = None


def _fsync_dir(path):
    """Make a rename inside `path` durable (POSIX; a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(path, write):
    """Write a file so that a crash (even SIGKILL or a power cut) leaves either the old file or the
    complete new one: `write(f)` into `<path>.tmp`, fsync it, rename it over `path`, fsync the folder."""
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(os.path.dirname(os.path.abspath(path)))


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
    write_atomic(path, lambda f: torch.save(state, f))


def load_checkpoint(path, model_name=None, map_location="cpu"):
    """The checkpoint dict; a clear error if it is missing, not fastgen's, or another model's."""
    if not os.path.isfile(path):
        raise MissingFile(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:
        raise BadArgument(f"{path} is not a readable fastgen checkpoint ({exc})") from exc
    if not isinstance(state, dict) or "format" not in state or "model" not in state:
        raise BadArgument(f"{path} is not a fastgen checkpoint")
    if state["format"] != CHECKPOINT_FORMAT:
        raise BadArgument(f"{path} has checkpoint format {state['format']} (fastgen "
                          f"{state.get('fastgen_version')}); this fastgen reads format {CHECKPOINT_FORMAT}")
    if model_name is not None and state["model"] != model_name:
        raise BadArgument(f"{path} is a checkpoint of model {state['model']!r}, not {model_name!r}")
    return state


def load_optimizer_states(optimizers, state):
    """Restore every optimizer from a checkpoint (a single state dict or a list of them)."""
    saved = state["optimizer_state"]
    saved = list(saved) if isinstance(saved, (list, tuple)) else [saved]
    if len(saved) != len(optimizers):
        raise BadArgument(f"checkpoint holds {len(saved)} optimizer state(s), the model has "
                          f"{len(optimizers)} optimizer(s)")
    for opt, sd in zip(optimizers, saved):
        opt.load_state_dict(sd)


def _folder_error(out, exc, doing):
    why = exc.strerror or str(exc)
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        why += " (is the folder read-only?)"
    return RunFolderError(f"run folder {out}: cannot {doing}: {why}")


class RunLock:
    """An exclusive lock on a run folder for one training, held until `release()` (or the end of
    the process, however it ends: the kernel drops flock locks with the file descriptor). Creating
    the folder and the lock file, and a write probe, also check that the folder is writable before
    any step is spent."""

    def __init__(self, out):
        self.out, self.fd = out, None
        try:
            os.makedirs(out, exist_ok=True)
        except OSError as exc:
            raise _folder_error(out, exc, "create it") from exc
        try:
            fd, probe = tempfile.mkstemp(dir=out, prefix=".fastgen-write-test-")
            os.close(fd)
            os.remove(probe)
            self.fd = os.open(os.path.join(out, LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise _folder_error(out, exc, "write into it") from exc
        if fcntl is None:
            return
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(self.fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(self.fd)
            self.fd = None
            if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
                raise RunFolderError(f"run folder {out} is in use by another training (pid {holder}); "
                                     f"wait for it to end or pass another --out") from None
            raise _folder_error(out, exc, "lock it") from exc
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)

    def release(self):
        if self.fd is not None:
            os.close(self.fd)  # drops the lock
            self.fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()
