"""`polyfuse <command>`: one small module per command, each with add_parser(sub) and run(args)."""
from __future__ import annotations

import argparse
import sys

from ..errors import PolyfuseError
from . import demo, evaluate, info, plan, predict, train
from . import pretrain
from . import export, prune, serve
from . import embed, evaluate_retrieval, index, search
from . import compare, explain
from . import cache

COMMANDS = {"plan": plan, "train": train, "evaluate": evaluate, "predict": predict, "info": info, "demo": demo}
COMMANDS.update({"pretrain": pretrain})
COMMANDS.update({"serve": serve, "export": export, "prune": prune})
COMMANDS.update({"embed": embed, "index": index, "search": search, "evaluate-retrieval": evaluate_retrieval})
COMMANDS.update({"explain": explain, "compare": compare})
COMMANDS.update({"cache": cache})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="polyfuse", description="Multimodal deep learning on tables.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, module in COMMANDS.items():
        module.add_parser(sub)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command].run(args) or 0
    except PolyfuseError as e:
        print(f"polyfuse {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"polyfuse {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
