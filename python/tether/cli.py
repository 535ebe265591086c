"""The ``tether`` command line.

    tether exec [-f FILE] [-t TARGET] [-n NS] [mirrord exec flags] -- CMD ARGS...
    tether port-forward [-f FILE] [-t TARGET] -L [LOCAL:]HOST:PORT ...
    tether verify-config FILE
    tether ls [-n NS] [--json]
    tether --version

``exec`` forks the orchestrator into its own session and then *becomes* the program
(``tether.starter``): the program keeps tether's pid, terminal and process group, so
Ctrl-C, job control, debuggers and the exit status are the program's own.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import click

from . import __version__, cli_flags
from .config import LoadedConfig
from .starter import ConfigProblem, ExecError, load_checked, setup_logging
from .targets import TargetError

log = logging.getLogger("tether")


def _load(config_file: str | None, target: str | None, namespace: str | None,
          flags: dict[str, Any] | None = None) -> LoadedConfig:
    try:
        loaded = load_checked(config_file, target, namespace,
                              cli_flags.overrides(flags) if flags else None)
    except ConfigProblem as exc:
        raise click.ClickException(str(exc)) from None
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
    from .starter import prepare_target, run_exec

    cli_flags.check_command(flags, list(command))
    loaded = _load(config_file, target, target_namespace, flags)
    try:
        config, tgt = prepare_target(loaded.config)
        run_exec(config, tgt, list(command))
    except (TargetError, ExecError) as exc:
        raise click.ClickException(str(exc)) from None


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
    from .starter import layer_path, prepare_target

    config = _load(config_file, target, target_namespace, flags).config
    try:
        config, tgt = prepare_target(config)
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
