"""The environment the local process starts with: local, plus the pod's."""

from __future__ import annotations

from pathlib import Path

import pytest
from tether.config import EnvConfig
from tether.environment import (
    DEFAULT_LOCAL_ONLY,
    MAX_ARG_STRLEN,
    EnvFileError,
    compute_env,
    exec_limit_problems,
    exec_size_problems,
    parse_dotenv,
    parse_environ,
)

LOCAL = {
    "PATH": "/usr/local/bin:/usr/bin",
    "HOME": "/home/dev",
    "LANG": "en_US.UTF-8",
    "LC_ALL": "en_US.UTF-8",
    "EDITOR": "vim",
    "TETHER_LOG": "debug",
    "LD_PRELOAD": "/opt/tether/libtether.so",
    "GOPATH": "/home/dev/go",
}

# What a backend pod in staging carries (scene 2: the DB credentials).
REMOTE = {
    "PATH": "/go/bin:/usr/local/go/bin:/usr/bin",
    "HOME": "/root",
    "HOSTNAME": "silly-demo-7d9f-abcde",
    "LC_ALL": "C",
    "GOPATH": "/go",
    "DB_HOST": "postgres.staging.svc.cluster.local",
    "DB_USER": "app",
    "DB_PASS": "s3cret",
    "DB_TIMEOUT": "5",
    "KUBERNETES_SERVICE_HOST": "10.96.0.1",
    "TETHER_LOG": "trace",
    "LD_PRELOAD": "/usr/lib/libjemalloc.so",
}


def env(cfg: EnvConfig, tmp_path: Path | None = None) -> dict[str, str]:
    return compute_env(LOCAL, REMOTE, cfg, cwd=str(tmp_path or "/nonexistent"))


def test_the_pods_variables_reach_the_local_process() -> None:
    got = env(EnvConfig())
    assert got["DB_HOST"] == "postgres.staging.svc.cluster.local"
    assert got["DB_PASS"] == "s3cret"
    assert got["KUBERNETES_SERVICE_HOST"] == "10.96.0.1"
    assert got["EDITOR"] == "vim"  # local-only variables survive


@pytest.mark.parametrize(
    "name", ["PATH", "HOME", "HOSTNAME", "LC_ALL", "GOPATH", "TETHER_LOG", "LD_PRELOAD"]
)
def test_machine_specific_variables_stay_local(name: str) -> None:
    got = env(EnvConfig())
    assert got.get(name) == LOCAL.get(name)


@pytest.mark.parametrize(
    ("cfg", "present", "absent"),
    [
        (
            EnvConfig(include=("DB_*",)),
            ["DB_HOST", "DB_PASS"],
            ["KUBERNETES_SERVICE_HOST"],
        ),
        (
            EnvConfig(include=("DB_HOST", "DB_USER")),
            ["DB_HOST"],
            ["DB_PASS", "DB_TIMEOUT"],
        ),
        (EnvConfig(include=("DB_?OST",)), ["DB_HOST"], ["DB_USER"]),
        (EnvConfig(exclude=("DB_PASS",)), ["DB_HOST", "DB_USER"], ["DB_PASS"]),
        (
            EnvConfig(exclude=("DB_*", "KUBE*")),
            [],
            ["DB_HOST", "KUBERNETES_SERVICE_HOST"],
        ),
        (EnvConfig(include=("DB_*",), exclude=("DB_PASS",)), ["DB_USER"], ["DB_PASS"]),
        (EnvConfig(enabled=False), [], ["DB_HOST", "KUBERNETES_SERVICE_HOST"]),
    ],
)
def test_include_and_exclude_globs(
    cfg: EnvConfig, present: list[str], absent: list[str]
) -> None:
    got = env(cfg)
    for name in present:
        assert got[name] == REMOTE[name]
    for name in absent:
        assert name not in got


@pytest.mark.parametrize(
    ("include", "name", "value"),
    [
        (("PATH",), "PATH", REMOTE["PATH"]),
        (("LC_*",), "LC_ALL", "C"),
        (("HOSTNAME", "DB_*"), "HOSTNAME", REMOTE["HOSTNAME"]),
        (("*",), "PATH", LOCAL["PATH"]),  # a bare wildcard does not name PATH
        (("*",), "DB_HOST", REMOTE["DB_HOST"]),
    ],
)
def test_an_explicit_include_brings_a_local_only_variable(
    include: tuple[str, ...], name: str, value: str
) -> None:
    assert env(EnvConfig(include=include))[name] == value


def test_tether_variables_never_come_from_the_pod() -> None:
    assert env(EnvConfig(include=("TETHER_LOG",)))["TETHER_LOG"] == "debug"


def test_local_variable_missing_from_pod_is_kept_and_not_invented() -> None:
    got = compute_env({"A": "1"}, {"B": "2"}, EnvConfig(), cwd="/")
    assert got == {"A": "1", "B": "2"}


def test_override_wins_over_the_pod() -> None:
    got = env(EnvConfig(override={"DB_HOST": "localhost", "NEW": "x"}))
    assert got["DB_HOST"] == "localhost"
    assert got["NEW"] == "x"


def test_unset_removes_case_insensitively_and_last() -> None:
    got = env(EnvConfig(unset=("db_pass", "EDITOR"), override={"DB_PASS": "again"}))
    assert "DB_PASS" not in got
    assert "EDITOR" not in got


def test_mapping_replaces_values_of_matching_pod_variables() -> None:
    got = env(EnvConfig(mapping={".+_TIMEOUT": "1000"}))
    assert got["DB_TIMEOUT"] == "1000"
    assert got["DB_HOST"] == REMOTE["DB_HOST"]


def test_disabled_env_still_applies_what_the_user_wrote(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("FROM_FILE=1\n")
    cfg = EnvConfig(
        enabled=False, env_file=".env", override={"O": "2"}, unset=("EDITOR",)
    )
    got = compute_env(LOCAL, REMOTE, cfg, cwd=str(tmp_path))
    assert got["FROM_FILE"] == "1"
    assert got["O"] == "2"
    assert "EDITOR" not in got
    assert "DB_HOST" not in got


def test_env_file_is_relative_to_cwd_and_sits_between_pod_and_override(
    tmp_path: Path,
) -> None:
    (tmp_path / "dev.env").write_text("DB_HOST=db.local\nDB_USER=me\n")
    cfg = EnvConfig(env_file="dev.env", override={"DB_USER": "override"})
    got = compute_env(LOCAL, REMOTE, cfg, cwd=str(tmp_path))
    assert got["DB_HOST"] == "db.local"
    assert got["DB_USER"] == "override"


def test_missing_env_file_is_an_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(
        EnvFileError, match=r"^missing\.env: cannot read the env file: No such file"
    ):
        compute_env({}, {}, EnvConfig(env_file="missing.env"), cwd=str(tmp_path))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("A=1", {"A": "1"}),
        ("export A=1", {"A": "1"}),
        ("  A = 1  ", {"A": "1"}),
        ("# comment\n\nA=1 # trailing comment", {"A": "1"}),
        ("A=a#b", {"A": "a#b"}),
        ("A=", {"A": ""}),
        ("A='single $B # kept'", {"A": "single $B # kept"}),
        ('A="double\\nline \\"q\\""', {"A": 'double\nline "q"'}),
        ('A="first\nsecond"\nB=2', {"A": "first\nsecond", "B": "2"}),
        ("A=1\nB=${A}-$A", {"A": "1", "B": "1-1"}),
        ('A=1\nB="${A} \\$A"', {"A": "1", "B": "1 $A"}),
        ("B=$UNKNOWN", {"B": ""}),
        (
            "URL=postgres://u:p@h:5432/db?sslmode=disable",
            {"URL": "postgres://u:p@h:5432/db?sslmode=disable"},
        ),
    ],
)
def test_dotenv_syntax(text: str, expected: dict[str, str]) -> None:
    assert parse_dotenv(text) == expected


def test_dotenv_expands_from_the_environment_so_far() -> None:
    assert parse_dotenv("B=$A/x", known={"A": "/base"}) == {"B": "/base/x"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not a pair", "dev.env:1: expected KEY=VALUE, got 'not a pair'"),
        ("A=1\n1BAD=2", "dev.env:2: expected KEY=VALUE, got '1BAD=2'"),
        ("A='open", "dev.env:1: unterminated single quote"),
        ('A="open\nmore', "dev.env:1: unterminated double quote"),
    ],
)
def test_dotenv_errors_name_file_and_line(text: str, message: str) -> None:
    with pytest.raises(EnvFileError) as info:
        parse_dotenv(text, name="dev.env")
    assert str(info.value) == message


def test_default_local_only_is_documented_as_patterns() -> None:
    assert "PATH" in DEFAULT_LOCAL_ONLY
    assert "TETHER_*" in DEFAULT_LOCAL_ONLY
    assert "LC_*" in DEFAULT_LOCAL_ONLY


# ---- what exec accepts ----


def test_one_variable_longer_than_exec_takes_is_named():
    problems = exec_size_problems({"BIG": "x" * MAX_ARG_STRLEN, "SMALL": "y"})
    assert problems == [f"variable BIG: {MAX_ARG_STRLEN + 5} bytes; exec accepts at most "
                        f"{MAX_ARG_STRLEN} bytes per variable (E2BIG)"]


def test_many_variables_together_too_large_for_exec():
    env = {f"V{i}": "x" * 100_000 for i in range(30)}
    (problem,) = exec_size_problems(env)
    assert "bytes of environment and arguments; exec accepts at most" in problem


def test_an_environment_that_fits_has_no_problem():
    assert exec_size_problems({"A": "1"}, ["prog", "arg"]) == []


def test_config_problems_are_named_by_json_path(tmp_path):
    (tmp_path / "big.env").write_text("FROM_FILE=" + "z" * MAX_ARG_STRLEN + "\n")
    cfg = EnvConfig(override={"BIG": "x" * MAX_ARG_STRLEN}, env_file="big.env")
    problems = exec_limit_problems({}, cfg, str(tmp_path))
    assert problems[0].startswith("feature.env.env_file (big.env): FROM_FILE: ")
    assert problems[1].startswith("feature.env.override.BIG: ")


def test_proc_environ_block_is_parsed_like_the_agent_reads_it():
    raw = b"A=1\0EMPTY=\0NOEQUALS\0B=x=y\0BIN=\xff\0\0"
    assert parse_environ(raw) == {"A": "1", "EMPTY": "", "B": "x=y", "BIN": "\udcff"}
