"""The `fastgen` command: `fastgen info | bench | train | sample | eval`."""
import argparse
import ast
import json
import math
import sys


def _info(args) -> int:
    import fastgen

    report = fastgen.info(print_report=not args.json)
    if args.json:
        print(json.dumps(report, indent=2))
    return 0


def _quiet_cpp_extension_import():
    """torch.utils.benchmark imports torch.utils.cpp_extension, which logs "No CUDA runtime is
    found, using CUDA_HOME=..." on every CPU-only machine that has a CUDA toolkit. The bench
    compiles nothing, so that line says nothing about this run: keep it out of the output."""
    import logging

    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)


def _bench(args) -> int:
    from fastgen import bench

    return bench.run(args)


def _options(pairs):
    """["size=16", "decoder='gaussian'"] -> {"size": 16, "decoder": "gaussian"}."""
    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"fastgen: expected KEY=VALUE, got {pair!r}")
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value  # a bare word is a string
    return out


def _train(args) -> int:
    from fastgen import train

    result = train.train(args.model, args.data, steps=args.steps, batch=args.batch, lr=args.lr,
                         device=args.device, out=args.out, seed=args.seed, force=args.force,
                         resume=args.resume, log_every=args.log_every, plot_every=args.plot_every,
                         ckpt_every=args.ckpt_every, data_options=_options(args.data_opt),
                         model_options=_options(args.model_opt))
    if "eval" in result:
        print(json.dumps(result["eval"], indent=2))
    return 0


def _sample(args) -> int:
    from fastgen import train

    path, samples = train.sample(args.model, args.ckpt, n=args.n, out=args.out, seed=args.seed,
                                 device=args.device, force=args.force)
    print(f"{len(samples)} samples -> {path}")
    return 0


def _eval(args) -> int:
    from fastgen import train

    print(json.dumps(train.evaluate(args.model, args.ckpt, seed=args.seed, device=args.device), indent=2))
    return 0


def _int_at_least(minimum, note=""):
    """argparse type: an integer >= minimum (checked before any work starts)."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}{note}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}{note}, got {value}")
        return value
    return parse


_count = _int_at_least(1)
_count_or_zero = _int_at_least(0, " (0: off)")


def _learning_rate(text):
    """argparse type: a finite float > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text}")
    return value


def _device_default():
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def build_parser(bench_arguments: bool = True) -> argparse.ArgumentParser:
    """The CLI's parser. The bench's own options need fastgen.bench (and torch.utils.benchmark)
    imported; other commands build the parser without them (`fastgen info` stays fast)."""
    parser = argparse.ArgumentParser(prog="fastgen", description=__doc__)
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of every error, user errors included")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("info", help="versions, device, and which backends are live per op")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=_info)
    p = sub.add_parser("bench", help="benchmark fastgen ops against eager, torch.compile and peers")
    if bench_arguments:
        _quiet_cpp_extension_import()
        from fastgen import bench

        bench.add_arguments(p)
    p.set_defaults(func=_bench)

    p = sub.add_parser("train", help="train a reference model (see fastgen.models)")
    p.add_argument("model", help="model name, e.g. vae")
    p.add_argument("--data", required=True, help="dataset name, e.g. moons, shapes (see fastgen.data)")
    p.add_argument("--steps", type=_count, default=2000, help="optimizer steps (>= 1)")
    p.add_argument("--batch", type=_count, default=256, help="batch size per process (>= 1)")
    p.add_argument("--lr", type=_learning_rate, default=1e-3, help="learning rate (> 0)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--out", default=None, help="run folder (default runs/MODEL-DATA)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="overwrite an existing run folder")
    p.add_argument("--resume", action="store_true", help="continue from the run folder's checkpoint")
    p.add_argument("--log-every", type=_count, default=50)
    p.add_argument("--plot-every", type=_count_or_zero, default=500, help="0: no plots during training")
    p.add_argument("--ckpt-every", type=_count, default=500)
    p.add_argument("--data-opt", action="append", metavar="KEY=VALUE", help="dataset option, e.g. size=16")
    p.add_argument("--model-opt", action="append", metavar="KEY=VALUE", help="model option, e.g. latent_dim=8")
    p.set_defaults(func=_train)

    p = sub.add_parser("sample", help="draw samples from a checkpoint (PNG + .pt)")
    p.add_argument("model")
    p.add_argument("--ckpt", required=True)
    p.add_argument("-n", type=_count, default=64, help="number of samples (>= 1)")
    p.add_argument("--out", default=None, help="PNG path (default: next to the checkpoint)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=_sample)

    p = sub.add_parser("eval", help="held-out metrics of a checkpoint")
    p.add_argument("model")
    p.add_argument("--ckpt", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    p.set_defaults(func=_eval)
    return parser


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(bench_arguments=argv[:1] == ["bench"]).parse_args(argv)
    if getattr(args, "device", "unset") is None:
        args.device = _device_default()
    from fastgen.errors import UserError

    try:
        return args.func(args)
    except UserError as exc:  # what the user asked for: one line; anything else keeps its traceback
        if args.debug:
            raise
        print(f"fastgen {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
