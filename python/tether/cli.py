"""The ``tether`` command line.

    tether exec [-f FILE] [-t TARGET] [-n NS] [mirrord exec flags] -- CMD ARGS...
    tether port-forward [-f FILE] [-t TARGET] -L [LOCAL:]HOST:PORT ...
    tether verify-config FILE
    tether ls [-n NS] [--json]
    tether --version

``exec`` forks the orchestrator into its own session and then *becomes* the program
(execvpe): the program keeps tether's pid, terminal and process group, so Ctrl-C, job
control, debuggers and the exit status are the program's own, with nothing to forward.
"""

from __future__ import annotations

import logging
import os
import select
import socket
import sys
import time
from typing import Any, NoReturn

import click

from . import __version__, cli_flags, messages_session, protocol  # noqa: F401  (its messages)
from .config import Config, ConfigError, LoadedConfig, load_config
from .targets import TargetError, effective_config, resolve_target

log = logging.getLogger("tether")


def setup_logging() -> None:
    level_name = os.environ.get("TETHER_LOG", "info").upper()
    level = getattr(logging, level_name, logging.INFO)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("tether: %(message)s"))
    root = logging.getLogger("tether")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def _load(config_file: str | None, target: str | None, namespace: str | None,
          flags: dict[str, Any] | None = None) -> LoadedConfig:
    overrides: dict[str, Any] = cli_flags.overrides(flags) if flags else {}
    if target or namespace:
        tgt: dict[str, Any] = {}
        if target:
            tgt["path"] = target
        if namespace:
            tgt["namespace"] = namespace
        overrides["target"] = tgt
    try:
        loaded = load_config(config_file, overrides or None)
    except ConfigError as exc:
        lines = "\n".join(f"  {p}" for p in exc.problems)
        where = f" in {exc.source}" if getattr(exc, "source", None) else ""
        raise click.ClickException(f"invalid configuration{where}:\n{lines}") from None
    for line in loaded.report():
        log.warning("config: %s", line)
    return loaded


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-V", "--version", prog_name="tether")
def main() -> None:
    """Run a local program as if it were inside a remote target.

    The program gets the target's environment variables, files, DNS and outgoing
    network, and the target's incoming traffic is mirrored or stolen to it (optionally
    per HTTP request).  Start with:

        tether exec --target process/<pid> -- ./my-app

        tether exec -t deployment/silly-demo -n staging --steal -- python app.py

    or put the target in .tether/tether.json and run `tether exec -- ./my-app`.
    mirrord's config files and `mirrord exec` flags work as they are.
    Set TETHER_LOG=debug for a detailed log.
    """
    setup_logging()


@main.command(
    "exec",
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
)
@click.option("-f", "--config-file", type=click.Path(dir_okay=False),
              help="Config file (JSON, YAML or TOML; mirrord's schema). "
                   "Default: .tether/tether.json if present.")
@click.option("-t", "--target", "target",
              help="What to act inside: process/<pid>, or a Kubernetes workload "
                   "(deployment/<name>, pod/<name>, ...). Overrides target.path.")
@click.option("-n", "--target-namespace", help="Namespace of the target (Kubernetes).")
@cli_flags.exec_options
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def exec_command(config_file: str | None, target: str | None, target_namespace: str | None,
                 command: tuple[str, ...], **flags: Any) -> None:
    """Run COMMAND with the target's context.

    COMMAND replaces tether once the session is ready, so its exit status, signals and
    terminal are its own. Put `--` before COMMAND when it has options of its own:

        tether exec -t process/4242 -- python app.py --port 8080

    The flags of `mirrord exec` work here with the same meaning, and a flag overrides the
    config file.
    """
    loaded = _load(config_file, target, target_namespace, flags)
    config = loaded.config
    try:
        tgt = resolve_target(config.target.path, config.target.namespace, config)
        tgt.check()
        config = effective_config(tgt, config)
    except TargetError as exc:
        raise click.ClickException(str(exc)) from None
    run_exec(config, tgt, list(command))


def run_exec(config: Config, target: Any, command: list[str]) -> NoReturn:
    layer_so = layer_path()
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    parent_pid = os.getpid()
    started = time.monotonic()
    pid = os.fork()
    if pid == 0:  # the orchestrator
        ours.close()
        code = 1
        try:
            os.setsid()  # the terminal's Ctrl-C belongs to the program, not to us
            devnull = os.open(os.devnull, os.O_RDONLY)
            os.dup2(devnull, 0)
            os.close(devnull)
            # A process target forks its agent first, so that the agent's start-up and the
            # orchestrator's (its imports below) run in parallel.
            secret = ""
            prestart = getattr(target, "prestart_agent", None)
            if prestart is not None:
                import secrets

                secret = secrets.token_hex(16)
                prestart(secret, os.environ.get("TETHER_LOG", "info"))
            from .orchestrator import Orchestrator

            orch = Orchestrator(config=config, target=target, local_env=dict(os.environ),
                                cwd=os.getcwd(), layer_so=layer_so, agent_secret=secret)
            code = _run_orchestrator(orch, theirs, parent_pid)
        except BaseException:  # never return into click in the forked child
            log.exception("orchestrator failed")
        finally:
            os._exit(code)

    theirs.close()
    reply = _wait_ready(ours, started, target.describe())
    if reply is None:
        raise click.ClickException("the tether orchestrator exited before the session started "
                                   "(run with TETHER_LOG=debug for details)")
    if reply["t"] == "session_failed":
        raise click.ClickException(reply["message"])
    env = reply["env"]
    _hand_over_syscalls(ours, command, env)
    ours.close()
    log.debug("session ready after %.0f ms; exec %s", (time.monotonic() - started) * 1000,
              command[0])
    try:
        os.execvpe(command[0], command, env)
    except FileNotFoundError:
        click.echo(f"tether: {command[0]}: command not found", err=True)
        os._exit(127)
    except PermissionError:
        click.echo(f"tether: {command[0]}: permission denied", err=True)
        os._exit(126)
    raise AssertionError("unreachable")


DEBUGGERS = {"gdb", "lldb", "strace", "ltrace", "valgrind", "rr"}


def _seccomp_wanted(command: list[str], env: dict[str, str]) -> bool:
    """Static and Go programs never load the layer: supervise their system calls instead.

    TETHER_SECCOMP=always|never overrides the detection (auto)."""
    choice = os.environ.get("TETHER_SECCOMP", "auto").lower()
    if choice in ("never", "0", "off", "no"):
        return False
    if choice in ("always", "1", "on", "yes"):
        return True
    from .elfinfo import inspect, resolve_command

    def needs(arg: str) -> bool:
        path = resolve_command(arg, env.get("PATH"))
        info = inspect(path) if path else None
        return bool(info and info.needs_seccomp)

    if needs(command[0]):
        return True
    # A debugger starts its debuggee itself: put the whole tree under the supervisor from
    # here, as a launcher exec'd in between would stand where the debugger expects its
    # program (breakpoints are set in the wrong image).
    if os.path.basename(command[0]) in DEBUGGERS:
        return any(needs(arg) for arg in command[1:] if not arg.startswith("-"))
    return False


def _hand_over_syscalls(chan: socket.socket, command: list[str], env: dict[str, str]) -> None:
    """Tell the orchestrator how the program is reached; for seccomp, hand it the listener."""
    if not _seccomp_wanted(command, env):
        chan.sendall(protocol.encode({"t": "session_exec"}))
        return
    from .seccomp import install_filter

    try:
        listener = install_filter()
    except OSError as exc:
        raise click.ClickException(f"{command[0]} is a static or Go program and needs seccomp "
                                   f"user notification: {exc}") from None
    socket.send_fds(chan, [protocol.encode({"t": "session_exec", "fds": 1})], [listener])
    os.close(listener)
    env["TETHER_SECCOMP_ACTIVE"] = "1"  # the filter is inherited: no second one below
    decoder = protocol.FrameDecoder()
    while True:  # wait until the supervisor runs: our first trapped call needs it
        data = chan.recv(4096)
        if not data:
            raise click.ClickException("the tether orchestrator exited before the program started")
        if list(decoder.feed(data)):
            return


def _run_orchestrator(orch: Any, chan: socket.socket, parent_pid: int) -> int:
    import asyncio

    from .orchestrator import end_program

    async def body() -> int:
        loop = asyncio.get_running_loop()
        try:
            env = await orch.start()
        except (TargetError, OSError) as exc:
            chan.sendall(protocol.encode({"t": "session_failed", "message": str(exc)}))
            chan.close()
            await orch.stop()
            return 1
        chan.sendall(protocol.encode(
            {"t": "session_ready", "env": env, "socket": orch.socket_path}))
        msg, fds, *_ = await loop.run_in_executor(None, socket.recv_fds, chan, 65536, 1)
        if fds:
            orch.start_supervisor(fds[0])
            chan.sendall(protocol.encode({"t": "session_exec"}))
        chan.close()
        log.info("session started: %s", orch.target.describe())
        reason = await orch.serve(parent_pid)
        if reason:
            end_program(parent_pid, reason)
        await orch.stop()
        log.debug("session ended")
        return 0 if not reason else 1

    return asyncio.run(body())


def _wait_ready(chan: socket.socket, started: float, what: str) -> dict[str, Any] | None:
    decoder = protocol.FrameDecoder()
    announced = False
    while True:
        ready, _, _ = select.select([chan], [], [], 0.25)
        if not ready:
            if not announced and time.monotonic() - started > 1.0:
                click.echo(f"tether: starting the agent in {what}...", err=True)
                announced = True
            continue
        data = chan.recv(1 << 20)
        if not data:
            return None
        for msg in decoder.feed(data):
            return msg


def layer_path() -> str:
    here = os.path.dirname(os.path.abspath(__file__))
    path = os.path.join(here, "libtether_layer.so")
    if not os.path.exists(path):
        raise click.ClickException(
            f"the tether layer is missing ({path}); reinstall tether with `make install`"
        )
    return path


@main.command("demo")
def demo() -> None:
    """Walk through tether on a throw-away local staging (root; no cluster needed)."""
    from .demo.__main__ import main as demo_main

    raise SystemExit(demo_main())


@main.command("ls")
@click.option("-n", "--namespace", help="Namespace to list (default: the kubeconfig's).")
@click.option("-f", "--config-file", type=click.Path(dir_okay=False),
              help="Config file whose kubeconfig/kube_context to use.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list (for IDEs).")
def ls_command(namespace: str | None, config_file: str | None, as_json: bool) -> None:
    """List the Kubernetes targets of a namespace (deployment/..., pod/..., ...)."""
    import json

    from .targets.kube_api import KubeApi
    from .targets.kube_list import list_targets

    try:
        config = _load(config_file, None, None).config
        api = KubeApi(config.kubeconfig, config.kube_context, config.accept_invalid_certificates)
        ns = namespace or config.target.namespace
        if not ns:
            api.client()
            ns = api.default_namespace
        targets = list_targets(api, ns)
    except (TargetError, click.ClickException) as exc:
        message = exc.format_message() if isinstance(exc, click.ClickException) else str(exc)
        if as_json:  # an editor plugin reads stdout: give it an object it can show
            click.echo(json.dumps({"error": message}))
            raise SystemExit(1) from None
        raise click.ClickException(message) from None
    if as_json:
        click.echo(json.dumps(targets))
    else:
        for target in targets:
            click.echo(target)


@main.command("port-forward")
@click.option("-f", "--config-file", type=click.Path(dir_okay=False),
              help="Config file (its target and agent settings are used).")
@click.option("-t", "--target", "target", help="Where connections are made from (as for exec).")
@click.option("-n", "--target-namespace", help="Namespace of the target (Kubernetes).")
@click.option("-L", "--port-mapping", "mappings", multiple=True, required=True,
              metavar="[LOCAL_PORT:]HOST:PORT",
              help="Connections to 127.0.0.1:LOCAL_PORT are made to HOST:PORT from the target "
                   "(HOST resolved there, at each connection). Repeatable.")
@cli_flags.port_forward_options
def port_forward_command(config_file: str | None, target: str | None,
                         target_namespace: str | None, mappings: tuple[str, ...],
                         **flags: Any) -> None:
    """Reach hosts as the target sees them, from programs not run under tether.

        tether port-forward -t deployment/silly-demo -n staging -L 5432:db:5432

    then `psql -h 127.0.0.1` talks to the database the target talks to. Runs until Ctrl-C.
    """
    from .port_forward import parse_mapping

    try:
        parsed = [parse_mapping(m) for m in mappings]
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="-L") from None
    config = _load(config_file, target, target_namespace, flags).config
    try:
        tgt = resolve_target(config.target.path, config.target.namespace, config)
        tgt.check()
        config = effective_config(tgt, config)
    except TargetError as exc:
        raise click.ClickException(str(exc)) from None
    import asyncio

    from .orchestrator import Orchestrator
    from .port_forward import run

    orch = Orchestrator(config=config, target=tgt, local_env=dict(os.environ), cwd=os.getcwd(),
                        layer_so=layer_path())
    try:
        reason = asyncio.run(run(orch, parsed))
    except (TargetError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    if reason:
        raise click.ClickException(reason)


@main.command("verify-config")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--print", "print_effective", is_flag=True,
              help="Print the effective configuration (defaults filled in) as JSON.")
def verify_config(file: str, print_effective: bool) -> None:
    """Check a config file; list every problem by its JSON path.

    Exit status 0 when the file is valid (warnings allowed), 1 otherwise.
    """
    loaded = _load(file, None, None)
    if print_effective:
        import json

        from .config import dump_effective

        click.echo(json.dumps(dump_effective(loaded.config), indent=2))
    report = loaded.report()
    warned = f" ({len(report)} warning{'s' if len(report) > 1 else ''})" if report else ""
    click.echo(f"{file}: valid{warned}")


if __name__ == "__main__":
    main()
