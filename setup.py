"""Build fastgen and its one extension, ``fastgen._C``.

Environment switches (see README):
  FASTGEN_SKIP_EXT=1         build nothing native (pure Python + Triton still work)
  FASTGEN_SKIP_CUDA_BUILD=1  build the CPU kernels only
  FASTGEN_FORCE_CUDA=1       build the CUDA kernels even with no GPU visible (CI does this)
  FASTGEN_CUDA_EMU=1         also build ``fastgen._C_emu``: the CUDA kernels (csrc/cuda/*.cu) compiled
                             as host C++ against the CPU execution model in csrc/emu/, the
                             `cuda_emu` backend (CPU tensors; a test build, slow)
  TORCH_CUDA_ARCH_LIST       CUDA architectures, default "8.0;9.0+PTX" (SASS for A100 and H100, and
                             PTX that newer GPUs -- B200, RTX 50xx -- JIT-compile at first use).
                             Recorded in the extension: fastgen._C.CUDA_ARCHS, `fastgen info`.
  CUDA_HOME                  the CUDA toolkit's own folder (the one whose lib64 holds libcudart)
  CFLAGS, CXXFLAGS, LDFLAGS  added after fastgen's own C++ compile / link flags, so they can
                             override them (scripts/sanitize.sh: -fsanitize=address,undefined -O1)
"""
import glob
import os
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _flag(name):
    return os.environ.get(name, "0").lower() in ("1", "true", "yes", "on")


def _env_flags(*names):
    """The flags in the named environment variables (shell words), in order."""
    import shlex

    return [f for name in names for f in shlex.split(os.environ.get(name, ""))]


def _cuda_home():
    """The toolkit folder. torch guesses it from the nvcc on PATH, which may be a wrapper
    script outside the toolkit; then linking fails. Prefer an explicit CUDA_HOME, else the
    folder that actually holds lib64/libcudart."""
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    candidates += sorted(glob.glob("/usr/local/cuda-*"), reverse=True)
    for path in candidates:
        if path and glob.glob(os.path.join(path, "lib*", "libcudart.so*")):
            return os.path.realpath(path)
    return None


def _wheel_cuda_includes():
    """Headers (cublas, cusparse, ...) that torch's CUDA wheel installs under nvidia/*/include.
    torch's own CUDA headers include them and a bare toolkit may lack them."""
    dirs = []
    for site in sys.path:
        dirs += glob.glob(os.path.join(site, "nvidia", "cu1*", "include"))
        dirs += glob.glob(os.path.join(site, "nvidia", "*", "include"))
    seen, out = set(), []
    for d in dirs:
        if os.path.isdir(d) and d not in seen:
            seen.add(d)
            out.append(d)
    return out


def _cpu_simd_flags():
    """at::vec only vectorizes (and uses Sleef's exp) when compiled for a capability.
    Use AVX-512 (else AVX2+FMA) when the build machine has it, like -march=native: build where
    you run. FASTGEN_CPU_SIMD=0 turns this off (portable, slower)."""
    if os.environ.get("FASTGEN_CPU_SIMD", "1") == "0" or not sys.platform.startswith("linux"):
        return []
    try:
        with open("/proc/cpuinfo") as f:
            flags = set(f.read().split())
    except OSError:
        return []
    if {"avx512f", "avx512bw", "avx512vl", "avx512dq", "fma"} <= flags:
        return ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma", "-mf16c",
                "-DCPU_CAPABILITY=AVX512", "-DCPU_CAPABILITY_AVX512"]
    if {"avx2", "fma"} <= flags:
        return ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"]
    return []


def _cuda_archs_built():
    """The architectures the CUDA kernels are compiled for, as "8.0;9.0+PTX": read back from the
    -gencode flags torch derives from TORCH_CUDA_ARCH_LIST (names such as "Ampere" resolved), so
    fastgen._C.CUDA_ARCHS says exactly which SASS and PTX the library holds."""
    from torch.utils import cpp_extension

    try:
        flags = cpp_extension._get_cuda_arch_flags()
    except Exception:  # a private torch helper: fall back to the list as given
        flags = []
    sass, ptx = set(), set()
    for flag in flags:
        code = flag.rsplit("code=", 1)[-1]
        for kind, found in (("sm_", sass), ("compute_", ptx)):
            if code.startswith(kind):
                digits = code[len(kind):]
                n = len(digits.rstrip("abcdefghijklmnopqrstuvwxyz"))
                found.add((int(digits[:n - 1]), int(digits[n - 1:n]), digits[n:]))
    if not sass and not ptx:
        listed = os.environ.get("TORCH_CUDA_ARCH_LIST", "")
        return ";".join(a for a in listed.replace(" ", ";").split(";") if a)
    return ";".join(f"{major}.{minor}{suffix}" + ("+PTX" if (major, minor, suffix) in ptx else "")
                    for major, minor, suffix in sorted(sass | ptx))


def _extensions():
    if _flag("FASTGEN_SKIP_EXT"):
        print("fastgen: FASTGEN_SKIP_EXT=1, building no native extension")
        return [], {}
    import torch
    from torch.utils import cpp_extension

    sources = ["csrc/fastgen.cpp"] + sorted(glob.glob("csrc/cpu/*.cpp"))
    cuda_sources = sorted(glob.glob("csrc/cuda/*.cu"))
    cxx = ["-O3", "-fopenmp"] + _cpu_simd_flags() + _env_flags("CFLAGS", "CXXFLAGS")
    link = ["-fopenmp"] + _env_flags("LDFLAGS")
    include_dirs = [os.path.join(ROOT, "csrc")]

    with_cuda = False
    if not _flag("FASTGEN_SKIP_CUDA_BUILD"):
        home = _cuda_home()
        want = _flag("FASTGEN_FORCE_CUDA") or torch.cuda.is_available()
        if want and home is None:
            msg = "fastgen: no CUDA toolkit found (set CUDA_HOME to the folder whose lib64 holds libcudart)"
            if _flag("FASTGEN_FORCE_CUDA"):
                raise RuntimeError(msg)
            print(msg + "; building CPU kernels only")
        elif want and torch.version.cuda is None:
            msg = "fastgen: this torch build has no CUDA"
            if _flag("FASTGEN_FORCE_CUDA"):
                raise RuntimeError(msg)
            print(msg + "; building CPU kernels only")
        elif want:
            with_cuda = True
            os.environ["CUDA_HOME"] = home
            cpp_extension.CUDA_HOME = home  # torch read CUDA_HOME at import; overrule its guess
            os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0+PTX")
            include_dirs += _wheel_cuda_includes()

    os.environ.setdefault("MAX_JOBS", str(max(1, min(4, os.cpu_count() or 1))))
    nvcc = ["-O3", "-lineinfo", "--expt-relaxed-constexpr"]
    if with_cuda:
        archs = _cuda_archs_built()
        print(f"fastgen: building CPU + CUDA kernels for {archs} (TORCH_CUDA_ARCH_LIST="
              f"{os.environ['TORCH_CUDA_ARCH_LIST']}) with CUDA_HOME={os.environ['CUDA_HOME']}")
        ext = cpp_extension.CUDAExtension(
            "fastgen._C", sources + cuda_sources, include_dirs=include_dirs,
            # a string literal; torch's ninja build shell-quotes each flag
            define_macros=[("FASTGEN_WITH_CUDA", "1"), ("FASTGEN_CUDA_ARCHS", f'"{archs}"')],
            extra_compile_args={"cxx": cxx, "nvcc": nvcc}, extra_link_args=link)
    else:
        print("fastgen: building CPU kernels only")
        ext = cpp_extension.CppExtension(
            "fastgen._C", sources, include_dirs=include_dirs,
            extra_compile_args={"cxx": cxx}, extra_link_args=link)
    build_ext = cpp_extension.BuildExtension.with_options(use_ninja=True)
    return [ext] + _emu_extensions([os.path.join(ROOT, "csrc")]), {"build_ext": build_ext}


def _emu_extensions(include_dirs):
    """fastgen._C_emu under FASTGEN_CUDA_EMU=1: every csrc/cuda/<family>.cu through its one-line
    csrc/emu/<family>.cpp, plus the schemas (csrc/emu/module.cpp), as host C++."""
    if not _flag("FASTGEN_CUDA_EMU"):
        return []
    from torch.utils import cpp_extension

    families = [os.path.splitext(os.path.basename(p))[0] for p in sorted(glob.glob("csrc/cuda/*.cu"))]
    missing = [f for f in families if not os.path.exists(f"csrc/emu/{f}.cpp")]
    if missing:
        raise RuntimeError(f"fastgen: FASTGEN_CUDA_EMU=1 but csrc/emu/ has no wrapper for {missing}: add "
                           f"csrc/emu/<family>.cpp with the line #include \"cuda/<family>.cu\"")
    print(f"fastgen: building the cuda_emu extension (CUDA kernels on the CPU execution model): {families}")
    return [cpp_extension.CppExtension(
        "fastgen._C_emu", ["csrc/emu/module.cpp"] + [f"csrc/emu/{f}.cpp" for f in families],
        include_dirs=include_dirs, define_macros=[("FASTGEN_CUDA_EMU", "1")],
        # -O1: the model's fibers and per-lane WMMA tiles gain little from -O3 and it compiles faster;
        # -Bsymbolic: inline helpers that differ from fastgen._C's (device_guard) bind in this library
        extra_compile_args={"cxx": ["-O1", "-g0"]}, extra_link_args=["-Wl,-Bsymbolic"])]


ext_modules, cmdclass = _extensions()

setup(
    name="fastgen",
    version="0.1.0",
    description="Fused Triton / CUDA / CPU kernels for generative models",
    packages=["fastgen"] + [f"fastgen.{p}" for p in find_packages("fastgen")] + ["fastgen.kernels"],
    package_dir={"fastgen.kernels": "kernels"},
    python_requires=">=3.9",
    install_requires=["torch>=2.6", "numpy", "tqdm", "matplotlib"],
    extras_require={"test": ["pytest", "expecttest"], "triton": ["triton>=3.6"]},
    entry_points={"console_scripts": ["fastgen=fastgen.cli:main"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
