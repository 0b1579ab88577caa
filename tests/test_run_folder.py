"""Run folders and checkpoints under faults: durable atomic writes, one training per folder, a
writable folder checked before any step, no folder left behind by a typo, and the CLI's split
between user errors (one line) and bugs (a traceback)."""
import errno
import os

import pytest
import torch

from fastgen import checkpoint, cli, train
from fastgen.errors import BadArgument, MissingFile, RunFolderError, UserError

TINY = dict(steps=2, batch=8, log_every=1, plot_every=0, ckpt_every=1, progress=False)


def test_checkpoint_writes_are_fsynced_then_renamed(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync

    def fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}") if os.path.exists("/proc/self/fd") else fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    path = tmp_path / "c.pt"
    checkpoint.write_atomic(str(path), lambda f: torch.save({"a": torch.arange(3)}, f))
    assert torch.equal(torch.load(path)["a"], torch.arange(3)) and not (tmp_path / "c.pt.tmp").exists()
    if os.path.exists("/proc/self/fd"):  # the temporary file's data, then the folder's rename
        assert synced == [str(path) + ".tmp", str(tmp_path)], synced
    else:
        assert len(synced) == 2


def test_second_training_into_a_locked_folder_is_refused(tmp_path):
    out = tmp_path / "run"
    with checkpoint.RunLock(str(out)):
        with pytest.raises(RunFolderError, match=rf"run folder {out} is in use by another training \(pid {os.getpid()}\)"):
            train.train("vae", "moons", out=str(out), **TINY)
        assert not (out / checkpoint.CHECKPOINT_NAME).exists()
    train.train("vae", "moons", out=str(out), **TINY)  # released: the folder is free again
    assert (out / checkpoint.CHECKPOINT_NAME).exists()


def test_unwritable_run_folder_fails_before_training(tmp_path, monkeypatch):
    out = tmp_path / "ro"
    out.mkdir()
    os.chmod(out, 0o555)
    try:
        if os.access(out, os.W_OK):  # root ignores the mode: refuse the probe file as a read-only fs would
            def mkstemp(*args, **kwargs):
                raise PermissionError(errno.EROFS, "Read-only file system", str(out))
            monkeypatch.setattr(checkpoint.tempfile, "mkstemp", mkstemp)
        calls = []
        monkeypatch.setattr(train, "_fit", lambda *a, **k: calls.append(1))
        with pytest.raises(RunFolderError, match=rf"run folder {out}: cannot write into it: .*read-only"):
            train.train("vae", "moons", out=str(out), **TINY)
        assert not calls  # no step was spent
    finally:
        os.chmod(out, 0o755)
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(RunFolderError, match=rf"run folder {blocker}/run: cannot create it"):
        train.train("vae", "moons", out=str(blocker / "run"), **TINY)


@pytest.mark.parametrize("args,match", [
    (("vae", "nosuchdata"), "moons"),
    (("nosuchmodel", "moons"), "valid models"),
    (("vae", "moons", {"data_options": {"nosuchoption": 1}}), "nosuchoption"),
    (("vae", "moons", {"model_options": {"nosuchoption": 1}}), "nosuchoption"),
])
def test_typos_leave_no_run_folder(tmp_path, args, match):
    out = tmp_path / "runs" / "x"
    kwargs = args[2] if len(args) > 2 else {}
    with pytest.raises(UserError, match=match):
        train.train(args[0], args[1], out=str(out), **TINY, **kwargs)
    assert not (tmp_path / "runs").exists()


def test_resume_without_checkpoint_is_a_user_error(tmp_path):
    with pytest.raises(MissingFile, match="--resume: no checkpoint"):
        train.train("vae", "moons", out=str(tmp_path / "r"), resume=True, **TINY)
    assert not (tmp_path / "r").exists()


def test_cli_user_errors_are_one_line_and_bugs_keep_their_traceback(tmp_path, monkeypatch, capsys):
    argv = ["train", "vae", "--data", "moons", "--out", str(tmp_path / "run")]
    monkeypatch.setattr(train, "train", lambda *a, **k: (_ for _ in ()).throw(BadArgument("lr is odd")))
    assert cli.main(argv) == 2
    assert capsys.readouterr().err == "fastgen train: lr is odd\n"
    with pytest.raises(BadArgument):  # --debug: the traceback of user errors too
        cli.main(["--debug"] + argv)
    for bug in (ValueError("a bug in a model"), TypeError("another"), RuntimeError("boom")):
        monkeypatch.setattr(train, "train", lambda *a, _bug=bug, **k: (_ for _ in ()).throw(_bug))
        with pytest.raises(type(bug), match=str(bug)):
            cli.main(argv)
    assert issubclass(BadArgument, ValueError) and issubclass(MissingFile, FileNotFoundError)
    assert issubclass(RunFolderError, UserError)
