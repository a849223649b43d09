"""The `radd-fast` command line."""

from __future__ import annotations

import argparse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="radd-fast",
        description="Train, sample and evaluate masked discrete diffusion language models (RADD), fast.",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    sub.add_parser("info", help="versions, build, kernels per device, visible GPU")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "info":
        from . import info

        return info.main()
    raise AssertionError(f"unhandled command {args.command}")  # argparse rejects unknown commands


if __name__ == "__main__":
    raise SystemExit(main())
