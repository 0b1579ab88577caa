"""The `fastgen` command: `fastgen info`, `fastgen bench`."""
import argparse
import json
import sys


def _info(args) -> int:
    import fastgen

    report = fastgen.info(print_report=not args.json)
    if args.json:
        print(json.dumps(report, indent=2))
    return 0


def _bench(args) -> int:
    from fastgen import bench

    return bench.run(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastgen", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("info", help="versions, device, and which backends are live per op")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=_info)
    p = sub.add_parser("bench", help="benchmark fastgen ops against eager, torch.compile and peers")
    from fastgen import bench

    bench.add_arguments(p)
    p.set_defaults(func=_bench)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
