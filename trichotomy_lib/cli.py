"""The ``trichotomy`` command line."""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trichotomy", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    rep = sub.add_parser("reproduce", help="run the numbered notebooks in order with papermill")
    rep.add_argument("--profile", default="default", help="smoke, default, paper, or a path to a profile YAML (default: default)")
    rep.add_argument("--only", nargs="+", metavar="NN", help="run only these notebooks (two-digit numbers)")
    rep.add_argument("--from", dest="start", metavar="NN", help="start at this notebook")
    rep.add_argument("--data-root", help="root directory of real image files (file-list datasets)")
    rep.add_argument("--out", help="run root (default: the profile's run_root, i.e. runs/)")
    rep.add_argument("--stages-in-notebooks", dest="stages_first", action="store_false",
                     help="compute each pipeline stage when a notebook first asks for it, in that notebook's process, "
                          "instead of every stage first, side by side on the CPU's cores (the default for a whole run)")

    from .release_cli import add_parser

    add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "reproduce":
        from .reproduce import main_reproduce

        return main_reproduce(args)
    if args.command == "release":
        from .release_cli import main_release

        return main_release(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
