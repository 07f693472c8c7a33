"""The ``advx`` command line: argparse only; it parses, then calls the library.

    advx data --from DIR            copy MNIST and Fashion-MNIST into ./data and check them
    advx train                      train the baseline CNN (dL/dW), save checkpoints/baseline.pt
    advx attack --attack pgd        attack it (dL/dX), print a table, write report.json + examples.png
    advx eval                       robust accuracy over the test set at several eps (worst case)
    advx certify                    certified accuracy: a proved lower bound (bound propagation)
    advx verify NET.onnx P.vnnlib   a VNN-LIB property of an ONNX network: sat / unsat / timeout
    advx zoo                        the trained models shipped with advx (--checkpoint zoo:NAME)

attack, eval and certify take an advx checkpoint (--checkpoint) or your own model (--model
MODULE:NAME with --weights, or --model FILE.pt2), behind its normalization (--mean/--std).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import warnings

from advx import distributed
from advx.cli import attack, certify, data, train, verify, zoo
from advx.cli import eval as eval_command  # (not to shadow the builtin)
from advx.cli.common import CLIError
from advx.validate import AdvxError

COMMANDS = (data, train, attack, eval_command, certify, verify, zoo)  # each: add(subparsers) and run(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="advx",
        description="Adversarial examples on MNIST and Fashion-MNIST: train with dL/dW, attack with dL/dX, "
                    "certify with bounds. Attack, evaluate or certify advx checkpoints or your own models.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.add(sub)
    return parser


def _name_the_option(message: str, parser: argparse.ArgumentParser | None, argv: list[str]) -> str:
    """The library names its arguments (``eps must be >= 0``, ``got kind='pgd'``); on the
    command line the user typed options (``--eps``, ``--adv pgd``). Put each option, as the
    user typed it, where the message names its argument: at the head, and as ``name='value'``."""
    if parser is None:
        return message
    options = {action.dest: action for action in parser._actions if action.option_strings}

    def typed(action) -> str:
        used = [o for o in action.option_strings if any(a == o or a.startswith(o + "=") for a in argv)]
        return (used or action.option_strings)[0]

    head = message.split(" ", 1)[0].rstrip(":")
    if head in options:
        message = typed(options[head]) + message[len(head):]

    def as_option(match: re.Match) -> str:
        action = options.get(match.group(1))
        if action is None:
            return match.group(0)
        values = [match.group(2)] + re.findall(r"'([^']*)'", match.group(3))
        return f"{typed(action)} " + " or ".join(values)

    return re.sub(r"\b([a-z_]+)='([^']*)'((?: or '[^']*')*)", as_option, message)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    sub = next(a for a in parser._actions if a.dest == "command").choices.get(args.command)
    with warnings.catch_warnings():
        warnings.showwarning = _one_line_warning(args.command)
        try:
            code = args.func(args)
            distributed.finish()  # under torchrun: the ranks leave the process group together
            return code
        except AdvxError as err:  # bad input, bad files, a failed run: said in one line
            typed = sys.argv[1:] if argv is None else argv
            print(f"advx {args.command}: error: {_name_the_option(str(err), sub, typed)}", file=sys.stderr)
            return 2
        except OSError as err:  # disk full, permission denied, ...: one line, never a traceback
            where = f": {err.filename}" if err.filename else ""
            print(f"advx {args.command}: error: {err.strerror or err}{where}", file=sys.stderr)
            return 1
        except KeyboardInterrupt as err:
            print(f"advx {args.command}: interrupted" + (f"; {err}" if str(err) else ""), file=sys.stderr)
            return 130
        except Exception as err:  # raised inside torch or a user's model: one line, the traceback on request
            if os.environ.get("ADVX_TRACEBACK"):
                raise
            lines = str(err).strip().splitlines()
            print(f"advx {args.command}: error: {type(err).__name__}" + (f": {lines[0][:300]}" if lines else "")
                  + " (set ADVX_TRACEBACK=1 to see where)", file=sys.stderr)
            return 1


def _one_line_warning(command: str):
    """Warnings (advx's, torch's) as one line each: ``advx eval: warning: ...``."""
    def show(message, category, filename, lineno, file=None, line=None) -> None:
        text = " ".join(str(message).split())
        print(f"advx {command}: warning: {text}", file=sys.stderr if file is None else file)
    return show



def run_recipe(argv: list[str], recipes: dict[str, list[str]], *, script: str, doc: str, default: str) -> int:
    """``advx train`` with the options of the recipe ``--recipe NAME`` in ``argv`` (``default``
    when none is named) followed by the rest of ``argv``, whose options win; the body of the
    ``scripts/train_*.py`` that offer recipes. ``--help`` prints ``doc``, then ``advx train --help``."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--recipe", default=default)
    known, rest = parser.parse_known_args(argv)
    if "-h" in rest or "--help" in rest:
        print(doc)
        return main(["train", "--help"])
    if known.recipe not in recipes:
        print(f"{script}: error: --recipe must be one of {', '.join(recipes)}, got {known.recipe!r}", file=sys.stderr)
        return 2
    return main(["train", *recipes[known.recipe], *rest])


__all__ = ["CLIError", "build_parser", "main", "run_recipe"]
