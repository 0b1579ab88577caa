"""Build fastgen's native extension (fastgen/_C*.so) in place, incrementally, with progress.

    python scripts/build_ext.py            # what scripts/setup.sh runs
    python scripts/build_ext.py --force    # rebuild even when the stamp says nothing changed

- Nothing changed (same csrc/ files, setup.py, build switches, torch, Python and compiler):
  the stamp in build/ matches and this returns in well under a second.
- Something changed: `setup.py build_ext --inplace` runs in the persistent build/ folder, so
  ninja recompiles only the translation units whose sources or headers changed.
- While it runs, one line per compile: which file, how many are left, elapsed time and an
  estimate of the rest. The full compiler output goes to build/build.log and its tail is
  printed when the build fails.
- ccache is used when it is on PATH (CXX="ccache c++", PYTORCH_NVCC="ccache nvcc").

The build switches are the ones setup.py reads (FASTGEN_SKIP_EXT, FASTGEN_SKIP_CUDA_BUILD,
FASTGEN_FORCE_CUDA, TORCH_CUDA_ARCH_LIST, FASTGEN_CPU_SIMD, CUDA_HOME, MAX_JOBS).
"""
import argparse
import glob
import hashlib
import os
import re
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.path.join(ROOT, "build")
STAMP = os.path.join(BUILD, "fastgen_ext.stamp")
LOG = os.path.join(BUILD, "build.log")
SWITCHES = ("FASTGEN_SKIP_EXT", "FASTGEN_CUDA_EMU", "FASTGEN_SKIP_CUDA_BUILD", "FASTGEN_FORCE_CUDA", "TORCH_CUDA_ARCH_LIST",
            "FASTGEN_CPU_SIMD", "CUDA_HOME", "CXX", "CC")
# rough cost of one translation unit on one core of a 2-core AVX2 box (seconds): the first
# estimate, before any file has finished
FIRST_GUESS = {".cpp": 25.0, ".cu": 90.0}


def _torch_version():
    """torch's version without importing torch (an import costs seconds)."""
    from importlib import metadata

    try:
        return metadata.version("torch")
    except metadata.PackageNotFoundError:
        return "none"


def stamp():
    """Hash of everything the extension's binary depends on."""
    h = hashlib.sha256()
    files = sorted(glob.glob(os.path.join(ROOT, "csrc", "**", "*"), recursive=True))
    for path in files + [os.path.join(ROOT, "setup.py")]:
        if os.path.isfile(path):
            h.update(os.path.relpath(path, ROOT).encode())
            with open(path, "rb") as f:
                h.update(hashlib.sha256(f.read()).digest())
    for name in SWITCHES:
        h.update(f"{name}={os.environ.get(name, '')}".encode())
    h.update(f"python={sys.version} torch={_torch_version()}".encode())
    for tool in ("c++", "nvcc"):
        h.update(f"{tool}={shutil.which(tool)}".encode())
    return h.hexdigest()


def built_library():
    return glob.glob(os.path.join(ROOT, "fastgen", "_C*.so"))


def _source_of(line):
    """The source a ninja command compiles (its first .cpp / .cu argument), or None."""
    m = re.search(r"\s(\S+\.(?:cpp|cc|cu))(?=\s|$)", line)
    return os.path.relpath(m.group(1), ROOT) if m else None


def _fmt(seconds):
    seconds = int(round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


def _sources(setup_line):
    """The translation units setup.py compiles, judged from its "building ..." line."""
    srcs = [os.path.join("csrc", "fastgen.cpp")] + glob.glob(os.path.join(ROOT, "csrc", "cpu", "*.cpp"))
    if "CUDA" in setup_line:
        srcs += glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu"))
    return srcs


def _planned(sources):
    jobs = max(1, int(os.environ.get("MAX_JOBS", "2")))
    return sum(FIRST_GUESS.get(os.path.splitext(s)[1], 25.0) for s in sources) / jobs


def build(force=False, quiet=False):
    """Returns 0 when the library is up to date (built now or already), else the build's exit code."""
    os.makedirs(BUILD, exist_ok=True)
    key = stamp()
    if not force and built_library() and os.path.exists(STAMP) and open(STAMP).read().strip() == key:
        if not quiet:
            print("fastgen: native extension up to date (build/fastgen_ext.stamp); nothing to build")
        return 0
    env = dict(os.environ)
    if shutil.which("ccache"):
        env.setdefault("CXX", "ccache c++")
        env.setdefault("PYTORCH_NVCC", "ccache nvcc")
    cmd = [sys.executable, "setup.py", "build_ext", "--inplace", "--build-temp", os.path.join(BUILD, "temp")]
    print("fastgen: building the native extension (incremental; full log in build/build.log)", flush=True)
    first_build = not glob.glob(os.path.join(BUILD, "temp", "**", "*.o"), recursive=True)
    t0 = time.time()
    total = None
    jobs = max(1, int(env.get("MAX_JOBS", "2")))
    with open(LOG, "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, bufsize=1)
        for line in proc.stdout:
            log.write(line)
            # piped ninja prints "[k/N] <command>" when its k-th step finishes
            m = re.match(r"\[(\d+)/(\d+)\]\s", line)
            if m:
                done, total = int(m.group(1)), int(m.group(2))
                src = _source_of(line) or ("link" if ".so" in line else "step")
                now = time.time() - t0
                eta = now / done * (total - done)
                print(f"[{done}/{total}] {src} done, elapsed {_fmt(now)}"
                      + (f", about {_fmt(eta)} left" if total > done else ""), flush=True)
            elif line.startswith("fastgen:"):
                print(line.rstrip(), flush=True)
                if "building" in line and total is None and first_build:
                    print(f"fastgen: a first build takes about {_fmt(_planned(_sources(line)))} with {jobs} "
                          f"jobs on an idle 2-core AVX2 box; later builds recompile only what changed", flush=True)
        rc = proc.wait()
    elapsed = time.time() - t0
    if rc != 0:
        with open(LOG) as f:
            tail = f.readlines()[-60:]
        print("".join(tail), end="")
        print(f"fastgen: native build FAILED after {_fmt(elapsed)} (full log: build/build.log)")
        return rc
    with open(STAMP, "w") as f:
        f.write(key + "\n")
    print(f"fastgen: native extension built in {_fmt(elapsed)}"
          + (f" ({total} file{'s' if total > 1 else ''} compiled)" if total else " (nothing to recompile)"))
    return 0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--force", action="store_true", help="rebuild even when the stamp matches")
    p.add_argument("--print-stamp", action="store_true", help="print the stamp and exit")
    a = p.parse_args(argv)
    if a.print_stamp:
        print(stamp())
        return 0
    if os.environ.get("FASTGEN_SKIP_EXT", "0").lower() in ("1", "true", "yes", "on"):
        print("fastgen: FASTGEN_SKIP_EXT=1, building no native extension")
        return 0
    return build(force=a.force)


if __name__ == "__main__":
    sys.exit(main())
