"""The ``tether`` command's entry point.

Two jobs before anything else is imported:

- Ctrl-C at any moment of start-up exits quietly with 130 (no traceback from the middle
  of an import), and leaves nothing: whatever tether started by then cleans up after
  itself when tether exec's end of the liveness pipe closes (``tether.starter``).
- ``tether exec`` with the options it always had (-f, -t, -n) starts without click: the
  time until the program's first instruction is what a developer waits for in every
  edit-run loop.  Anything else (other commands, --help, options added later) goes to the
  click command line in ``tether.cli``, which prints the same messages.
"""

from __future__ import annotations

import os
import signal


def _interrupted(signum: int, frame: object) -> None:
    os._exit(130)


# First, before the imports below.  Nothing of ours needs undoing at this level: once
# tether exec has forked the orchestrator, the orchestrator cleans up after itself when
# our end of the liveness pipe closes (tether.starter).
try:
    signal.signal(signal.SIGINT, _interrupted)
except ValueError:  # imported outside the main thread (a test): not the command
    pass

import sys  # noqa: E402
from typing import Any  # noqa: E402

from .starter import (  # noqa: E402
    ConfigProblem,
    ExecError,
    fast_exec_args,
    load_checked,
    prepare_target,
    say,
    setup_logging,
)


def _fast_exec(opts: dict[str, str], command: list[str]) -> int:
    from .starter import run_exec
    from .targets import TargetError

    try:
        # Imported here, before the fork, the modules the orchestrator needs too are
        # imported once (forking first to overlap them with the config was measured: no
        # gain on two idle cores, a loss on busy ones; docs/architecture.md).
        setup_logging()
        loaded = load_checked(opts.get("config_file"), opts.get("target"),
                              opts.get("namespace"))
        for line in loaded.report():  # as tether.cli logs them
            say(f"tether: config: {line}")
        config, tgt = prepare_target(loaded.config)
        run_exec(config, tgt, command)
    except (ConfigProblem, TargetError, ExecError) as exc:
        say(f"Error: {exc}")
        return 1


def main() -> Any:
    fast = fast_exec_args(sys.argv[1:])
    if fast is not None:
        return _fast_exec(*fast)
    from .cli import main as cli_main

    if sys.argv[1:2] != ["exec"]:
        # Commands that run until Ctrl-C (port-forward) stop their agent on
        # KeyboardInterrupt; only exec's start-up must never leave a half-made session.
        signal.signal(signal.SIGINT, signal.default_int_handler)
    return cli_main()


if __name__ == "__main__":
    sys.exit(main())
