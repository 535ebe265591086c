"""Config files written as templates, the way the incumbent (mirrord) documents them.

mirrord renders a config file with the Tera template engine before parsing it, so a team
commits ``"target": "{{ get_env(name="TARGET", default="pod/fallback") }}"`` and
``"header_filter": "^baggage: .*mirrord-session={{ key }}.*$"``.  tether renders the part
of that language such files use, on the raw text (a template may put double quotes inside
a JSON string, so the file is not valid JSON before rendering):

* ``{{ get_env(name="NAME", default="value") }}`` (either quote style, either order; without
  ``default`` an unset variable is an error, as in Tera);
* the variables ``key`` (the session key: the file's top-level ``"key"``, else ``TETHER_KEY``
  or ``MIRRORD_KEY``, else a generated one) and ``git_branch`` (the checked-out branch of
  the working directory, ``MIRRORD_BRANCH_NAME`` overrides it), optionally with
  ``| default(value="...")``.

Anything else (``{% if %}`` blocks, other functions and filters) fails with one line that
names it and says templates beyond these are not supported, rather than a config that
silently means something else.  Pure apart from reading the environment and asking git.
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
from collections.abc import Callable, Mapping

SUPPORTED = ('get_env(name="...", default="..."), key, git_branch '
             '(optionally | default(value="..."))')

_EXPR = re.compile(r"\{\{-?(.*?)-?\}\}", re.S)
_TAG = re.compile(r"\{%.*?%\}|\{#.*?#\}", re.S)
_STRING = r"""(?:"((?:[^"\\]|\\.)*)"|'((?:[^'\\]|\\.)*)')"""
_ARG = re.compile(r"\s*([A-Za-z_]\w*)\s*=\s*" + _STRING + r"\s*(,|$)")
_CALL = re.compile(r"^\s*get_env\s*\((.*)\)\s*$", re.S)
_VAR = re.compile(r"^\s*([A-Za-z_]\w*)\s*(?:\|\s*default\s*\((.*)\))?\s*$", re.S)
_KEY_FIELD = re.compile(r'^\s*"?key"?\s*[:=]\s*(?:"([^"\n]*)"|([^\s"\'{#][^\n#,]*))', re.M)


class TemplateError(ValueError):
    """A template the file uses cannot be rendered; the message names it."""


def has_template(text: str) -> bool:
    return "{{" in text or "{%" in text or "{#" in text


def _line(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def _args(text: str, where: str) -> dict[str, str]:
    out: dict[str, str] = {}
    pos = 0
    text = text.strip()
    while pos < len(text):
        m = _ARG.match(text, pos)
        if not m:
            raise TemplateError(f"{where}: cannot read the arguments {text!r} "
                                '(write name="..." pairs)')
        value = m.group(2) if m.group(2) is not None else m.group(3)
        out[m.group(1)] = re.sub(r"\\(.)", r"\1", value)
        pos = m.end()
    return out


def git_branch(cwd: str | None = None) -> str | None:
    """The branch checked out in ``cwd``; None when there is none (no repository, no git,
    a detached HEAD), in which case ``{{ git_branch }}`` needs a default."""
    if os.environ.get("MIRRORD_BRANCH_NAME"):
        return os.environ["MIRRORD_BRANCH_NAME"]
    try:
        out = subprocess.run(["git", "rev-parse", "--abbrev-ref", "HEAD"], cwd=cwd,
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    branch = out.stdout.strip()
    return branch if out.returncode == 0 and branch and branch != "HEAD" else None


def render(text: str, env: Mapping[str, str] | None = None,
           branch: Callable[[], str | None] = git_branch, key: str | None = None) -> str:
    """Render the supported templates in ``text``; raise TemplateError naming the first
    template that cannot be rendered, with its line."""
    env = os.environ if env is None else env
    tag = _TAG.search(text)
    if tag:
        raise TemplateError(
            f"line {_line(text, tag.start())}: {tag.group(0)[:40]!r}: template tags are not "
            f"supported by tether; only {{{{ ... }}}} with {SUPPORTED}")
    cache: dict[str, str | None] = {}

    def variable(name: str) -> str | None:
        if name not in cache:
            if name == "git_branch":
                cache[name] = branch()
            elif name == "key":
                cache[name] = key if key is not None else session_key(text, env, branch)
            else:
                cache[name] = None
        return cache[name]

    def one(m: re.Match[str]) -> str:
        expr = m.group(1).strip()
        where = f"line {_line(text, m.start())}: {{{{ {expr} }}}}"
        call = _CALL.match(expr)
        if call:
            args = _args(call.group(1), where)
            unknown = set(args) - {"name", "default"}
            if "name" not in args or unknown:
                raise TemplateError(f"{where}: get_env takes name=\"...\" and optionally "
                                    "default=\"...\"")
            value = env.get(args["name"], args.get("default"))
            if value is None:
                raise TemplateError(f"{where}: the environment variable {args['name']} is not "
                                    "set and no default is given")
            return value
        var = _VAR.match(expr)
        if var and var.group(1) in ("key", "git_branch"):
            value = variable(var.group(1))
            if value is None and var.group(2) is not None:
                value = _args(var.group(2), where).get("value")
            if value is None:
                raise TemplateError(f"{where}: {var.group(1)} is not known here (not a git "
                                    f"checkout on a branch?); add | default(value=\"...\")")
            return value
        raise TemplateError(f"{where}: not supported by tether; templates may use {SUPPORTED}")

    return _EXPR.sub(one, text)


def session_key(text: str, env: Mapping[str, str],
                branch: Callable[[], str | None] = git_branch) -> str:
    """mirrord's session key: read from the file before rendering (it may itself use
    git_branch), else the environment, else generated for this session."""
    for var in ("TETHER_KEY", "MIRRORD_KEY"):
        if env.get(var):
            return env[var]
    m = _KEY_FIELD.search(text)
    raw = (m.group(1) or (m.group(2) or "").strip()) if m else ""
    if raw:
        return render(raw, env, branch, key="") if has_template(raw) else raw
    return "tether-" + secrets.token_hex(4)
