"""The incumbent's (``mirrord exec``'s) command-line flags, on ``tether exec``.

A mirrord user types and pastes these; each one means what it means there
(``mirrord/cli/src/config.rs``: ``ExecParams`` and ``AgentParams``) and, as there, a flag
overrides the config file.  ``exec_options`` adds them to a click command;
``overrides`` turns the values click parsed into a config fragment in mirrord's shape,
which ``tether.config.load_config`` merges over the file (None means "not given").
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])

FS_MODES = ("read", "write", "local", "localwithoverrides")


def _port_pair(ctx: click.Context, param: click.Parameter,
               values: tuple[str, ...]) -> tuple[tuple[int, int], ...]:
    pairs = []
    for text in values:
        parts = text.split(":")
        try:
            local, remote = (int(p) for p in parts)
            if not (1 <= local <= 65535 and 1 <= remote <= 65535):
                raise ValueError
        except ValueError:
            raise click.BadParameter(
                f"{text!r}: expected LOCAL:REMOTE, two ports in 1..65535 (e.g. 8080:80)"
            ) from None
        pairs.append((local, remote))
    return tuple(pairs)


# (decls, click keyword arguments): in --help order.
_OPTIONS: list[tuple[tuple[str, ...], dict[str, Any]]] = [
    (("--steal",), {"is_flag": True, "default": None,
                    "help": "Steal the target's incoming traffic instead of mirroring it "
                            "(feature.network.incoming.mode = steal)."}),
    (("--fs-mode",), {"type": click.Choice(FS_MODES, case_sensitive=False),
                      "help": "Default file system behaviour (feature.fs.mode): read (remote "
                              "reads, local writes), write, local, localwithoverrides."}),
    (("-s", "--override-env-vars-include"), {
        "metavar": "VARS", "help": "Only these of the target's variables, ';'-separated "
                                   "globs (feature.env.include)."}),
    (("-x", "--override-env-vars-exclude"), {
        "metavar": "VARS", "help": "All of the target's variables but these, ';'-separated "
                                   "globs (feature.env.exclude)."}),
    (("--env-file",), {"type": click.Path(dir_okay=False),
                       "help": "A .env file whose variables override the target's "
                               "(feature.env.env_file)."}),
    (("--no-outgoing",), {"is_flag": True, "help": "Outgoing TCP and UDP stay local."}),
    (("--no-tcp-outgoing",), {"is_flag": True, "help": "Outgoing TCP stays local."}),
    (("--no-udp-outgoing",), {"is_flag": True, "help": "Outgoing UDP stays local."}),
    (("--no-remote-dns",), {"is_flag": True,
                            "help": "Resolve names on this machine, not in the target."}),
    (("-p", "--port-mapping"), {
        "multiple": True, "callback": _port_pair, "metavar": "LOCAL:REMOTE",
        "help": "The local program's port LOCAL serves the target's port REMOTE "
                "(feature.network.incoming.port_mapping; repeatable)."}),
    (("--skip-processes",), {"metavar": "NAMES",
                             "help": "';'-separated programs that run without tether."}),
    (("-a", "--agent-namespace"), {"help": "Namespace to start the agent in (Kubernetes)."}),
    (("-i", "--agent-image"), {"help": "Agent container image (Kubernetes)."}),
    (("--agent-ttl",), {"type": click.IntRange(0, 65535),
                        "help": "Seconds the agent waits for a session (Kubernetes)."}),
    (("--agent-startup-timeout",), {"type": click.IntRange(0),
                                    "help": "Seconds to wait for the agent to start."}),
    (("-e", "--ephemeral-container"), {
        "is_flag": True, "default": None,
        "help": "Start the agent as an ephemeral container in the target pod (Kubernetes)."}),
    (("-c", "--accept-invalid-certificates"), {
        "is_flag": True, "default": None,
        "help": "Accept the API server's certificate even if it does not verify."}),
    (("--context",), {"help": "Kubeconfig context to use (kube_context)."}),
    (("--key",), {"help": "Session key, the {{ key }} of templated config files."}),
    (("--no-telemetry",), {"is_flag": True, "help": "Accepted for mirrord's sake; tether "
                                                    "sends no telemetry."}),
    (("--disable-version-check",), {"is_flag": True,
                                    "help": "Accepted for mirrord's sake; tether does not "
                                            "check for versions."}),
]

NAMES = ("steal", "fs_mode", "override_env_vars_include", "override_env_vars_exclude",
         "env_file", "no_outgoing", "no_tcp_outgoing", "no_udp_outgoing", "no_remote_dns",
         "port_mapping", "skip_processes", "agent_namespace", "agent_image", "agent_ttl",
         "agent_startup_timeout", "ephemeral_container", "accept_invalid_certificates",
         "context", "key", "no_telemetry", "disable_version_check")


def exec_options(func: F) -> F:
    """Decorate a click command with the mirrord exec flags (values by ``NAMES``)."""
    for decls, kwargs in reversed(_OPTIONS):
        func = click.option(*decls, **kwargs)(func)
    return func


# mirrord's port-forward takes the agent and cluster flags of exec (``AgentParams``, -c,
# --context), not the ones about a program.
PORT_FORWARD = ("agent_namespace", "agent_image", "agent_ttl", "agent_startup_timeout",
                "ephemeral_container", "accept_invalid_certificates", "context")


def port_forward_options(func: F) -> F:
    """Decorate a click command with the agent and cluster flags of mirrord port-forward."""
    for decls, kwargs in reversed(_OPTIONS):
        if decls[-1].lstrip("-").replace("-", "_") in PORT_FORWARD:
            func = click.option(*decls, **kwargs)(func)
    return func


def check_command(flags: dict[str, Any], command: list[str]) -> None:
    """`-e` is mirrord's --ephemeral-container, a switch: `-e .env -- app` would run the
    env file as the program.  Say so instead."""
    first = command[0] if command else ""
    if (flags.get("ephemeral_container") and os.path.isfile(first)
            and not os.access(first, os.X_OK)):
        raise click.UsageError(
            f"-e is --ephemeral-container (as in mirrord exec), so {first!r} would be run as "
            f"the program; for a file of variables write --env-file {first}")


def pop_flags(params: dict[str, Any]) -> dict[str, Any]:
    """Take the mirrord flags out of a click command's keyword arguments."""
    return {name: params.pop(name, None) for name in NAMES}


def overrides(flags: dict[str, Any]) -> dict[str, Any]:
    """The config fragment the given flags stand for (mirrord's shape)."""
    if flags.get("key"):
        os.environ["TETHER_KEY"] = flags["key"]  # read when the file's templates render
    network: dict[str, Any] = {}
    if flags.get("steal"):
        network["incoming"] = {"mode": "steal"}
    if flags.get("port_mapping"):
        network.setdefault("incoming", {})["port_mapping"] = [
            list(p) for p in flags["port_mapping"]]
    outgoing: dict[str, Any] = {}
    if flags.get("no_outgoing") or flags.get("no_tcp_outgoing"):
        outgoing["tcp"] = False
    if flags.get("no_outgoing") or flags.get("no_udp_outgoing"):
        outgoing["udp"] = False
    if outgoing:
        network["outgoing"] = outgoing
    if flags.get("no_remote_dns"):
        network["dns"] = {"enabled": False}
    env = {"include": flags.get("override_env_vars_include"),
           "exclude": flags.get("override_env_vars_exclude"),
           "env_file": flags.get("env_file")}
    feature: dict[str, Any] = {"network": network or None, "env": env,
                               "fs": {"mode": flags["fs_mode"].lower()}
                               if flags.get("fs_mode") else None}
    agent = {"namespace": flags.get("agent_namespace"), "image": flags.get("agent_image"),
             "ttl": flags.get("agent_ttl"), "startup_timeout": flags.get("agent_startup_timeout"),
             "ephemeral": True if flags.get("ephemeral_container") else None}
    out: dict[str, Any] = {"feature": feature, "agent": agent,
                           "kube_context": flags.get("context")}
    if flags.get("accept_invalid_certificates"):
        out["accept_invalid_certificates"] = True
    if flags.get("skip_processes"):
        out["skip_processes"] = [s for s in flags["skip_processes"].split(";") if s]
    return _prune(out)


def _prune(value: Any) -> Any:
    """Drop what was not given (None, and sections left empty), so that a flag the user
    did not type never replaces the file's value, e.g. an env section the file turned off."""
    if not isinstance(value, dict):
        return value
    out = {k: _prune(v) for k, v in value.items() if v is not None}
    return {k: v for k, v in out.items() if v != {}}
