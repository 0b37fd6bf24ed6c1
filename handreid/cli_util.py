"""Shared entry-point plumbing: logging set-up and one-line errors for bad input."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable

from handreid.errors import HandReIDError


def setup_logging(verbose: bool = False) -> None:
    """Our own loggers at INFO (DEBUG if verbose); other libraries' at WARNING (open_clip logs
    its tokenizer look-ups at INFO on the root logger)."""
    logging.basicConfig(
        level=logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    logging.getLogger().setLevel(logging.DEBUG if verbose else logging.WARNING)
    for name in ("handreid", "search", "analysis", "bench"):
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.INFO)


def one_line_errors(main: Callable[..., int]) -> Callable[..., int]:
    """Turn user-facing errors into ``error: ...`` on stderr and exit code 2."""

    @functools.wraps(main)
    def wrapper(argv: list[str] | None = None) -> int:
        try:
            return main(argv)
        except HandReIDError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130

    return wrapper
