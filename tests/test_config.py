"""What a user sees when tether reads their (mirrord-shaped) config file."""

from __future__ import annotations

import ipaddress
import json
import os
from pathlib import Path
from typing import Any

import pytest
from tether.config import (
    AddressFilter,
    Config,
    ConfigError,
    HttpFilter,
    TargetConfig,
    compile_pattern,
    dump_effective,
    load_config,
    parse_address_filter,
    parse_config,
    python_replacement,
)

CONFIGS = Path(__file__).parent / "configs"


def problems(data: Any) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    return info.value.problems


def incoming(value: Any) -> dict[str, Any]:
    return {"feature": {"network": {"incoming": value}}}


# --------------------------------------------------------------------------
# The scenes' files


@pytest.mark.parametrize("name", ["mirror.json", "steal.json", "filter.json"])
def test_seed_files_validate_cleanly(name: str) -> None:
    loaded = load_config(str(CONFIGS / name))
    assert loaded.warnings == []
    cfg = loaded.config
    assert cfg.target == TargetConfig(
        path="deployment/silly-demo",
        namespace="staging",
        kind="deployment",
        name="silly-demo",
    )
    assert cfg.agent.namespace == "staging"


def test_seed_modes() -> None:
    def mode(name: str) -> str:
        return load_config(str(CONFIGS / name)).config.feature.network.incoming.mode

    assert mode("mirror.json") == "mirror"
    assert mode("steal.json") == "steal"
    assert mode("filter.json") == "steal"


def test_filtered_steal_builds_a_path_filter_that_matches_the_users_requests() -> None:
    inc = load_config(str(CONFIGS / "filter.json")).config.feature.network.incoming
    assert inc.http_filter == HttpFilter("path", ".+user=vfarcic.*")
    regex = inc.http_filter.compiled()
    assert regex.search("/?user=vfarcic")
    assert regex.search("/videos?USER=VFARCIC")  # case-insensitive, as mirrord
    assert not regex.search("/?user=someone-else")


@pytest.mark.parametrize("name", ["filter.yaml", "filter.toml"])
def test_yaml_and_toml_read_like_json(name: str) -> None:
    assert (
        load_config(str(CONFIGS / name)).config
        == load_config(str(CONFIGS / "filter.json")).config
    )


def test_a_file_using_most_keys_loads_with_warnings_for_unused_ones() -> None:
    loaded = load_config(str(CONFIGS / "everything.json"))
    assert loaded.warnings == []
    assert loaded.unused == ["operator", "telemetry", "feature.copy_target",
                             "agent.flush_connections", "agent.metrics", "agent.log_level",
                             "agent.communication_timeout"]
    assert loaded.report() == ["accepted, not used by tether: " + ", ".join(loaded.unused)]
    cfg = loaded.config
    assert cfg.target.container == "app"
    assert cfg.agent.image == "registry.example.com/tether-agent:1.2.3"
    assert cfg.agent.image_pull_secrets == ("regcred",)
    assert cfg.feature.env.include == ("DB_*", "PUBLIC_ENV")
    inc = cfg.feature.network.incoming
    assert inc.http_filter == HttpFilter(
        "any_of",
        children=(
            HttpFilter("header", "^x-developer: alice$"),
            HttpFilter("path", "^/api/v2/"),
            HttpFilter("method", "DELETE"),
        ),
    )
    assert inc.http_filter_ports == (8080,)
    assert inc.port_mapping == ((9333, 80),)
    out = cfg.feature.network.outgoing
    assert out.filter is not None and out.filter.kind == "local"
    assert [e.raw for e in out.filter.entries][2] == "[::1]:80"


def test_effective_config_reads_back_to_the_same_config() -> None:
    for name in ["mirror.json", "filter.json", "everything.json"]:
        cfg = load_config(str(CONFIGS / name)).config
        dumped = dump_effective(cfg)
        json.dumps(dumped)  # plain JSON
        assert parse_config(dumped).config == cfg


def test_defaults() -> None:
    cfg = parse_config({}).config
    assert cfg == Config()
    assert cfg.target.targetless
    assert cfg.feature.network.incoming.mode == "mirror"
    assert cfg.feature.fs.mode == "read"
    assert cfg.feature.env.enabled
    assert cfg.feature.network.outgoing.tcp and cfg.feature.network.outgoing.udp
    assert not cfg.feature.network.outgoing.ignore_localhost
    assert cfg.feature.network.dns.enabled
    assert cfg.skip_build_tools is True


# --------------------------------------------------------------------------
# Short forms, as mirrord accepts them


def _get(cfg: Config, dotted: str) -> Any:
    value: Any = cfg
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


@pytest.mark.parametrize(
    ("data", "attribute", "expected"),
    [
        ({"target": "deployment/x"}, "target.path", "deployment/x"),
        ({"target": "deployment/x"}, "target.kind", "deployment"),
        ({"target": "pod/x/container/y"}, "target.container", "y"),
        ({"target": "process/1234"}, "target.pid", 1234),
        ({"target": "targetless"}, "target.path", None),
        (
            {"target": {"deployment": "x", "container": "y"}},
            "target.path",
            "deployment/x/container/y",
        ),
        ({"target": {"path": {"stateful_set": "db"}}}, "target.path", "statefulset/db"),
        ({"target": {"path": "job/x", "namespace": "ns"}}, "target.namespace", "ns"),
        ({"target": {"namespace": "ns"}}, "target.path", None),
        (incoming("mirror"), "feature.network.incoming.mode", "mirror"),
        (incoming("steal"), "feature.network.incoming.mode", "steal"),
        (incoming("off"), "feature.network.incoming.mode", "off"),
        (incoming(True), "feature.network.incoming.mode", "mirror"),
        (incoming(False), "feature.network.incoming.mode", "off"),
        (incoming({"mode": "steal"}), "feature.network.incoming.mode", "steal"),
        (incoming(None), "feature.network.incoming.mode", "mirror"),
        ({"feature": {"env": False}}, "feature.env.enabled", False),
        ({"feature": {"env": True}}, "feature.env.enabled", True),
        ({"feature": {"env": {"include": "A;B;"}}}, "feature.env.include", ("A", "B")),
        (
            {"feature": {"env": {"exclude": ["A", "B"]}}},
            "feature.env.exclude",
            ("A", "B"),
        ),
        ({"feature": {"fs": "write"}}, "feature.fs.mode", "write"),
        (
            {"feature": {"fs": "localwithoverrides"}},
            "feature.fs.mode",
            "localwithoverrides",
        ),
        ({"feature": {"fs": True}}, "feature.fs.mode", "read"),
        ({"feature": {"fs": False}}, "feature.fs.mode", "local"),
        (
            {"feature": {"fs": {"read_only": "^/etc/"}}},
            "feature.fs.read_only",
            ("^/etc/",),
        ),
        (
            {"feature": {"network": {"dns": False}}},
            "feature.network.dns.enabled",
            False,
        ),
        (
            {"feature": {"network": {"outgoing": False}}},
            "feature.network.outgoing.tcp",
            False,
        ),
        (
            {"feature": {"network": {"outgoing": False}}},
            "feature.network.outgoing.udp",
            False,
        ),
        ({"feature": {"network": False}}, "feature.network.incoming.mode", "off"),
        ({"feature": {"network": False}}, "feature.network.outgoing.tcp", False),
        ({"feature": {"network": False}}, "feature.network.dns.enabled", False),
        ({"feature": {"network": True}}, "feature.network.incoming.mode", "mirror"),
        ({"skip_processes": "gdb"}, "skip_processes", ("gdb",)),
        ({"skip_processes": ["gdb", "lldb"]}, "skip_processes", ("gdb", "lldb")),
        ({"agent": {"image": "repo/agent:1"}}, "agent.image", "repo/agent:1"),
        ({"agent": {"ttl": None}}, "agent.ttl", 1),
        (
            incoming({"http_filter": False}),
            "feature.network.incoming.http_filter",
            None,
        ),
        (
            incoming({"http_filter": {"header_filter": "^x-user: a$", "ports": 8080}}),
            "feature.network.incoming.http_filter_ports",
            (8080,),
        ),
        (
            incoming({"http_filter": {"method_filter": "post"}}),
            "feature.network.incoming.http_filter",
            HttpFilter("method", "POST"),
        ),
    ],
)
def test_short_and_long_forms(
    data: dict[str, Any], attribute: str, expected: Any
) -> None:
    loaded = parse_config(data)
    assert _get(loaded.config, attribute) == expected


# --------------------------------------------------------------------------
# Errors: every problem, each naming its path


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            incoming({"mode": "stael"}),
            "feature.network.incoming.mode: 'stael' is not one of mirror, steal, off",
        ),
        (
            incoming("stael"),
            "feature.network.incoming: 'stael' is not one of mirror, steal, off",
        ),
        ({"agent": {"ttl": "abc"}}, "agent.ttl: expected an integer, got 'abc'"),
        ({"agent": {"ttl": True}}, "agent.ttl: expected an integer, got true"),
        ({"agent": {"ttl": 1.5}}, "agent.ttl: expected an integer, got 1.5"),
        ({"agent": {"ttl": 70000}}, "agent.ttl: 70000 is out of range (0..65535)"),
        (
            {"agent": {"privileged": "yes"}},
            "agent.privileged: expected a boolean, got 'yes'",
        ),
        ({"agent": {"labels": {"a": 1}}}, "agent.labels.a: expected a string, got 1"),
        (
            {"agent": {"image_pull_policy": "Sometimes"}},
            "agent.image_pull_policy: 'Sometimes' is not one of Always, IfNotPresent, Never",
        ),
        (
            {"agent": {"image_pull_secrets": [{"nam": "x"}]}},
            "agent.image_pull_secrets[0].nam: unknown key (did you mean 'name'?)",
        ),
        ({"agent": []}, "agent: expected an object, got a list"),
        (
            {"skip_processes": 3},
            "skip_processes: expected a string or a list of strings, got 3",
        ),
        ({"skip_processes": ["a", 3]}, "skip_processes[1]: expected a string, got 3"),
        (
            {"feature": {"network": {"incomng": "steal"}}},
            "feature.network.incomng: unknown key (did you mean 'incoming'?)",
        ),
        ({"feture": {}}, "feture: unknown key (did you mean 'feature'?)"),
        (
            {"agent": {"namespce": "x"}},
            "agent.namespce: unknown key (did you mean 'namespace'?)",
        ),
        (
            {"target": {"path": "deployment/x", "namesapce": "y"}},
            "target.namesapce: unknown key (did you mean 'namespace'?)",
        ),
        (
            incoming({"mode": "steal", "http_filter": {"path_filter": "(unclosed"}}),
            (
                "feature.network.incoming.http_filter.path_filter: invalid regular expression: "
                "missing ): (unclosed"
            ),
        ),
        (
            incoming({"http_filter": {"any_of": [{"path": "ok"}, {"header": "[bad"}]}}),
            (
                "feature.network.incoming.http_filter.any_of[1].header: invalid regular expression: "
                "missing ]: [bad"
            ),
        ),
        (
            # Python's re runs look-behind; the agent's linear-time engine (RE2) cannot.
            incoming({"http_filter": {"all_of": [{"path": "/"}, {"header": "(?<=u: )me"}]}}),
            (
                "feature.network.incoming.http_filter.all_of[1].header: invalid regular "
                "expression: invalid perl operator: (?<= (filters use RE2 syntax: no "
                "look-around or back-references)"
            ),
        ),
        (
            incoming({"http_filter": {"all_of": []}}),
            "feature.network.incoming.http_filter.all_of: cannot be an empty list",
        ),
        (
            incoming({"http_filter": {"all_of": [{"path": "a", "header": "b"}]}}),
            "feature.network.incoming.http_filter.all_of[0]: set exactly one of header, path, method",
        ),
        (
            incoming({"http_filter": {"path_filter": "a", "header_filter": "b"}}),
            (
                "feature.network.incoming.http_filter: set only one of header_filter, path_filter, "
                "method_filter, all_of, any_of (got path_filter, header_filter)"
            ),
        ),
        (
            incoming({"http_filter": {"method_filter": "GE T"}}),
            "feature.network.incoming.http_filter.method_filter: 'GE T' is not an HTTP method",
        ),
        (
            incoming(
                {
                    "http_filter": {
                        "body_filter": {"body": "json", "query": "$", "matches": "x"}
                    }
                }
            ),
            (
                "feature.network.incoming.http_filter.body_filter: not supported by tether (a filter "
                "tether cannot evaluate would let every request through); use a path, header or "
                "method filter"
            ),
        ),
        (
            incoming({"ports": [80], "ignore_ports": [81]}),
            "feature.network.incoming: set only one of ports, ignore_ports",
        ),
        (
            incoming({"port_mapping": [[80]]}),
            (
                "feature.network.incoming.port_mapping[0]: expected a pair of ports like [8080, 80], "
                "got a list"
            ),
        ),
        (
            incoming({"port_mapping": [[80, 70000]]}),
            "feature.network.incoming.port_mapping[0][1]: 70000 is out of range (0..65535)",
        ),
        (
            incoming({"mode": "steal", "shadow": True}),
            (
                "feature.network.incoming.shadow: shadow compares the target's answers with "
                "the local program's while mirroring: it needs mode mirror"
            ),
        ),
        (
            incoming({"shadow": "yes"}),
            "feature.network.incoming.shadow: expected a boolean, got 'yes'",
        ),
        (
            incoming({"on_concurrent_steal": "kill"}),
            "feature.network.incoming.on_concurrent_steal: 'kill' is not one of abort, continue, override",
        ),
        (
            {"feature": {"fs": "readwrite"}},
            "feature.fs: 'readwrite' is not one of read, write, local, localwithoverrides",
        ),
        (
            {"feature": {"fs": {"local": ["ok", "*bad"]}}},
            "feature.fs.local[1]: invalid regular expression: nothing to repeat at position 0",
        ),
        (
            {"feature": {"env": {"override": {"PORT": 8080}}}},
            "feature.env.override.PORT: expected a string, got 8080",
        ),
        (
            {"feature": {"env": {"mapping": {"(": "x"}}}},
            (
                "feature.env.mapping.(: invalid regular expression: "
                "missing ), unterminated subpattern at position 0"
            ),
        ),
        (
            {"target": "deploymnt/x"},
            (
                "target: unknown target type 'deploymnt' (did you mean 'deployment'?); expected one "
                "of pod, deployment, rollout, job, cronjob, statefulset, service, replicaset, process"
            ),
        ),
        (
            {"target": "deployment"},
            (
                "target: 'deployment' is not a target path; expected "
                "<type>/<name>[/container/<container>], e.g. deployment/silly-demo"
            ),
        ),
        (
            {"target": {"path": "pod/x/sidecar/y"}},
            (
                "target.path: 'pod/x/sidecar/y' is not a target path; expected "
                "<type>/<name>[/container/<container>], e.g. deployment/silly-demo"
            ),
        ),
        (
            {"target": "process/abc"},
            "target: 'process/abc': a process target is process/<pid>, got pid 'abc'",
        ),
        (
            {"target": {"deployment": "x", "pod": "y"}},
            (
                "target: set exactly one of pod, deployment, rollout, job, cron_job, stateful_set, "
                "service, replica_set"
            ),
        ),
        (
            {
                "feature": {
                    "network": {
                        "outgoing": {"filter": {"remote": ["a"], "local": ["b"]}}
                    }
                }
            },
            "feature.network.outgoing.filter: set exactly one of remote, local",
        ),
        (
            {
                "feature": {
                    "network": {"dns": {"filter": {"local": "tcp://example.com"}}}
                }
            },
            (
                "feature.network.dns.filter.local: 'tcp://example.com' is not a valid filter: a "
                "protocol (tcp://) is not allowed here; expected [name|address|subnet/mask][:port]"
            ),
        ),
    ],
)
def test_error_messages_name_the_path(data: dict[str, Any], message: str) -> None:
    assert message in problems(data)


def test_every_problem_is_reported_at_once() -> None:
    got = problems(
        {
            "agent": {"ttl": "abc", "namespce": "x"},
            "feature": {"network": {"incoming": {"mode": "stael"}}},
            "tarket": "deployment/x",
        }
    )
    assert sorted(got) == sorted(
        [
            "agent.ttl: expected an integer, got 'abc'",
            "agent.namespce: unknown key (did you mean 'namespace'?)",
            "feature.network.incoming.mode: 'stael' is not one of mirror, steal, off",
            "tarket: unknown key (did you mean 'target'?)",
        ]
    )


def test_unknown_key_without_a_close_match_lists_the_known_ones() -> None:
    (message,) = problems({"feature": {"network": {"zzz": 1}}})
    assert message == (
        "feature.network.zzz: unknown key (expected one of: dns, incoming, ipv6, outgoing)"
    )


def test_config_error_text_lists_every_problem() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"agent": {"ttl": "abc"}, "feture": {}})
    assert str(info.value) == (
        "invalid config:\n"
        "  feture: unknown key (did you mean 'feature'?)\n"
        "  agent.ttl: expected an integer, got 'abc'"
    )


# --------------------------------------------------------------------------
# mirrord keys tether does not act on


@pytest.mark.parametrize(
    ("data", "path"),
    [
        ({"operator": True}, "operator"),
        ({"internal_proxy": {"start_idle_timeout": 30}}, "internal_proxy"),
        ({"experimental": {"readlink": True}}, "experimental"),
        ({"agent": {"nftables": True}}, "agent.nftables"),
        ({"feature": {"copy_target": True}}, "feature.copy_target"),
        ({"feature": {"split_queues": {}}}, "feature.split_queues"),
        ({"feature": {"env": {"load_from_process": True}}}, "feature.env.load_from_process"),
        ({"feature": {"fs": {"readonly_file_buffer": 0}}}, "feature.fs.readonly_file_buffer"),
        (incoming({"tls_delivery": {"protocol": "tcp"}}), "feature.network.incoming.tls_delivery"),
        # keys of the model that nothing in tether reads
        ({"agent": {"communication_timeout": 10}}, "agent.communication_timeout"),
        ({"agent": {"log_level": "debug"}}, "agent.log_level"),
    ],
)
def test_keys_tether_does_not_act_on_are_reported_not_silently_valid(
    data: dict[str, Any], path: str
) -> None:
    loaded = parse_config(data)
    assert loaded.warnings == []
    assert loaded.report() == [f"accepted, not used by tether: {path}"]


def test_a_filter_port_list_without_a_filter_warns() -> None:
    loaded = parse_config(incoming({"http_filter": {"ports": [80]}}))
    assert loaded.report() == [
        "feature.network.incoming.http_filter.ports: no filter is set, so ports has no effect"]


def test_accepted_keys_are_still_type_checked() -> None:
    assert problems({"operator": "yes"}) == ["operator: expected a boolean, got 'yes'"]


def test_null_means_default_and_does_not_warn() -> None:
    loaded = parse_config({"operator": None, "agent": None, "feature": {"fs": None}})
    assert loaded.warnings == []
    assert loaded.config == Config()


# --------------------------------------------------------------------------
# Outgoing / DNS filter entries


V4 = ipaddress.ip_network


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "tcp://1.1.1.0/24:1337",
            AddressFilter("", "tcp", None, V4("1.1.1.0/24"), 1337),
        ),
        ("1.1.5.0/24", AddressFilter("", None, None, V4("1.1.5.0/24"), None)),
        ("udp://10.0.0.1", AddressFilter("", "udp", None, V4("10.0.0.1/32"), None)),
        ("google.com", AddressFilter("", None, "google.com", None, None)),
        ("Google.COM:443", AddressFilter("", None, "google.com", None, 443)),
        (":53", AddressFilter("", None, None, None, 53)),
        ("TCP://localhost:1337", AddressFilter("", "tcp", "localhost", None, 1337)),
        ("[::1]:80", AddressFilter("", None, None, V4("::1/128"), 80)),
        ("[fe80::/10]", AddressFilter("", None, None, V4("fe80::/10"), None)),
        ("::1", AddressFilter("", None, None, V4("::1/128"), None)),
        ("2001:db8::/32", AddressFilter("", None, None, V4("2001:db8::/32"), None)),
        ("udp://", AddressFilter("", "udp", None, None, None)),
        (
            "my-service.staging.svc",
            AddressFilter("", None, "my-service.staging.svc", None, None),
        ),
    ],
)
def test_filter_entries_parse(text: str, expected: AddressFilter) -> None:
    got = parse_address_filter(text)
    assert (got.protocol, got.host, got.network, got.port) == (
        expected.protocol,
        expected.host,
        expected.network,
        expected.port,
    )
    assert got.raw == text


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("http://x.com", "unknown protocol 'http' (use tcp:// or udp://)"),
        ("1.2.3.4:99999", "port 99999 is out of range (1..65535)"),
        ("1.2.3.4:http", "invalid port 'http'"),
        ("1.2.3.999", "invalid IPv4 address '1.2.3.999'"),
        ("10.0.0.0/33", "invalid subnet '10.0.0.0/33'"),
        ("[::1", "missing ']' after the IPv6 address"),
        ("[1.2.3.4]:80", "brackets are only for IPv6 addresses"),
        ("[::1]80", "unexpected '80' after ']'"),
        ("fe80::zz", "invalid IPv6 address 'fe80::zz'"),
        ("bad_host!", "invalid host name 'bad_host!'"),
        ("", "empty entry"),
        (":", "invalid port ''"),
    ],
)
def test_bad_filter_entries_say_why(text: str, reason: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_address_filter(text)
    assert str(info.value) == reason


def test_bad_filter_entry_in_a_file_names_the_entry() -> None:
    data = {
        "feature": {
            "network": {"outgoing": {"filter": {"remote": ["ok.com", "1.2.3.4:0"]}}}
        }
    }
    assert problems(data) == [
        (
            "feature.network.outgoing.filter.remote[1]: '1.2.3.4:0' is not a valid filter: port 0 "
            "is out of range (1..65535); expected [tcp://|udp://][name|address|subnet/mask][:port]"
        )
    ]


# --------------------------------------------------------------------------
# mirrord regex dialect


def test_named_groups_in_mirrord_syntax_compile() -> None:
    regex = compile_pattern(r"^/home/(?<user>\w+)/dev/(?<!x)(?<=v/)config")
    match = regex.search("/home/alice/dev/config")
    assert match and match.group("user") == "alice"


@pytest.mark.parametrize(
    ("rust", "python"),
    [
        ("/etc/tomcat", "/etc/tomcat"),
        ("/mnt/${user}-$app", r"/mnt/\g<user>-\g<app>"),
        ("$1/x", r"\g<1>/x"),
        ("cost$$", "cost$"),
        (r"a\b", r"a\\b"),
    ],
)
def test_replacements_translate(rust: str, python: str) -> None:
    assert python_replacement(rust) == python


# --------------------------------------------------------------------------
# Files and overrides


def test_command_line_overrides_merge_over_the_file() -> None:
    loaded = load_config(
        str(CONFIGS / "mirror.json"),
        {"target": {"path": "pod/other", "namespace": None}},
    )
    assert loaded.config.target.path == "pod/other"
    assert loaded.config.target.namespace == "staging"


def test_overrides_merge_into_short_forms(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"target": "deployment/x", **incoming("steal")}))
    loaded = load_config(
        str(path), {"target": {"namespace": "ns"}, **incoming({"ports": [80]})}
    )
    assert loaded.config.target.path == "deployment/x"
    assert loaded.config.target.namespace == "ns"
    assert loaded.config.feature.network.incoming.mode == "steal"
    assert loaded.config.feature.network.incoming.ports == (80,)


def test_no_path_uses_dot_tether_in_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert load_config(None).config == Config()
    assert load_config(None).source is None
    (tmp_path / ".tether").mkdir()
    (tmp_path / ".tether" / "tether.json").write_text('{"target": "pod/p"}')
    loaded = load_config(None)
    assert loaded.config.target.path == "pod/p"
    assert loaded.source == os.path.join(".tether", "tether.json")


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        (
            "bad.json",
            '{\n  "target": "pod/x"\n,',
            ": invalid JSON at line 3, column 2: ",
        ),
        ("bad.yaml", "target: [unclosed\n", ": invalid YAML at line 2, column 1: "),
        ("bad.toml", "target = \n", ": invalid TOML: "),
        (
            "list.json",
            "[1, 2]",
            ": the config must be an object at the top level, got a list",
        ),
    ],
)
def test_unparseable_files_name_file_and_position(
    tmp_path: Path, name: str, text: str, message: str
) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    (problem,) = info.value.problems
    assert problem.startswith(f"{path}{message}")


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.json"
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert info.value.problems == [
        f"{path}: cannot read the config file: No such file or directory"
    ]


def test_errors_from_a_file_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("agent:\n  ttl: abc\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert info.value.source == str(path)
    assert info.value.problems == ["agent.ttl: expected an integer, got 'abc'"]
    assert str(path) in str(info.value)


def test_empty_yaml_file_is_the_defaults(tmp_path: Path) -> None:
    path = tmp_path / "empty.yml"
    path.write_text("# nothing yet\n")
    assert load_config(str(path)).config == Config()


def test_incoming_shadow_defaults_off_and_parses() -> None:
    assert parse_config({}).config.feature.network.incoming.shadow is False
    cfg = parse_config(incoming({"mode": "mirror", "shadow": True})).config
    assert cfg.feature.network.incoming.shadow is True
    assert parse_config(incoming({"shadow": True})).config.feature.network.incoming.shadow is True
    steal = parse_config(incoming({"mode": "steal", "shadow": False})).config
    assert steal.feature.network.incoming.shadow is False
    assert dump_effective(cfg)["feature"]["network"]["incoming"]["shadow"] is True


# --------------------------------------------------------------------------
# The incumbent's own documentation examples, and templates


# mirrord's "Complete config.json" example (mirrord/config/src/lib.rs, `#root-complete`),
# as its documentation prints it: with the trailing comma after "metrics" and the `{{ key }}`
# template in the header filter.
MIRRORD_COMPLETE = r"""{
  "accept_invalid_certificates": false,
  "skip_processes": "ide-debugger",
  "target": {"path": "pod/bear-pod", "namespace": "default"},
  "connect_tcp": null,
  "agent": {
    "log_level": "info",
    "json_log": false,
    "labels": { "user": "meow" },
    "annotations": { "cats.io/inject": "enabled" },
    "namespace": "default",
    "image": "ghcr.io/metalbear-co/mirrord:latest",
    "image_pull_policy": "IfNotPresent",
    "image_pull_secrets": [ { "name": "secret" } ],
    "ttl": 30,
    "ephemeral": false,
    "communication_timeout": 30,
    "startup_timeout": 360,
    "flush_connections": true,
    "metrics": "0.0.0.0:9000",
  },
  "feature": {
    "env": {
      "include": "DATABASE_USER;PUBLIC_ENV",
      "exclude": "DATABASE_PASSWORD;SECRET_ENV",
      "override": {"DATABASE_CONNECTION": "db://localhost:7777/my-db", "LOCAL_BEAR": "panda"},
      "mapping": {".+_TIMEOUT": "1000"}
    },
    "fs": {
      "mode": "write",
      "read_write": ".+\\.json" ,
      "read_only": [ ".+\\.yaml", ".+important-file\\.txt" ],
      "local": [ ".+\\.js", ".+\\.mjs" ]
    },
    "network": {
      "incoming": {
        "mode": "steal",
        "http_filter": {"header_filter": "^baggage: .*mirrord-session={{ key }}.*$"},
        "port_mapping": [[ 7777, 8888 ]],
        "ignore_localhost": false,
        "ignore_ports": [9999, 10000]
      },
      "outgoing": {
        "tcp": true,
        "udp": true,
        "filter": {"local": ["tcp://1.1.1.0/24:1337", "1.1.5.0/24", "google.com", ":53"]},
        "ignore_localhost": false,
        "unix_streams": "bear.+"
      },
      "dns": {
        "enabled": true,
        "filter": {"local": ["1.1.1.0/24:1337", "1.1.5.0/24", "google.com"]}
      }
    },
    "copy_target": {"scale_down": false}
  },
  "operator": true,
  "kubeconfig": "~/.kube/config",
  "sip_binaries": "bash",
  "telemetry": true,
  "kube_context": "my-cluster"
}
"""


def test_the_incumbents_complete_example_verifies(tmp_path: Path, monkeypatch) -> None:
    """mirrord documents this file as showing every option; a user pasting it gets a valid
    config, the session key in the filter, and one line naming what tether ignores."""
    monkeypatch.setenv("TETHER_KEY", "bear-session")
    path = tmp_path / "complete.json"
    path.write_text(MIRRORD_COMPLETE)
    loaded = load_config(str(path))
    cfg = loaded.config
    assert cfg.agent.image_pull_secrets == ("secret",)
    assert cfg.feature.network.outgoing.unix_streams == ("bear.+",)
    assert cfg.feature.network.incoming.http_filter == HttpFilter(
        "header", "^baggage: .*mirrord-session=bear-session.*$")
    assert loaded.report() == [
        "accepted, not used by tether: operator, sip_binaries, telemetry, feature.copy_target, "
        "agent.flush_connections, agent.metrics, agent.log_level, agent.communication_timeout"]


def test_templated_target_reads_the_environment_with_its_default(tmp_path: Path,
                                                                 monkeypatch) -> None:
    """mirrord's "Basic config.json with templating": the target comes from $TARGET, with
    a default; double quotes inside the template are fine (it is rendered before parsing)."""
    path = tmp_path / "t.json"
    path.write_text('{"target": "{{ get_env(name="TARGET", default="pod/fallback") }}",\n'
                    ' "feature": {"env": true, "fs": "read", "network": true}}')
    monkeypatch.delenv("TARGET", raising=False)
    assert load_config(str(path)).config.target.path == "pod/fallback"
    monkeypatch.setenv("TARGET", "deployment/silly-demo")
    assert load_config(str(path)).config.target.path == "deployment/silly-demo"


def test_session_key_comes_from_the_file_and_git_branch_has_a_default(tmp_path: Path,
                                                                      monkeypatch) -> None:
    """mirrord reads `key` before rendering the rest; `git_branch` outside a checkout needs
    `| default(value=...)`, and without it the file fails naming the template."""
    monkeypatch.delenv("TETHER_KEY", raising=False)
    monkeypatch.delenv("MIRRORD_KEY", raising=False)
    monkeypatch.delenv("MIRRORD_BRANCH_NAME", raising=False)
    monkeypatch.chdir(tmp_path)  # not a git checkout
    path = tmp_path / "k.yaml"
    path.write_text("key: \"{{ git_branch | default(value='shared') }}\"\n"
                    "feature:\n  network:\n    incoming:\n      mode: steal\n"
                    "      http_filter:\n        header_filter: 'session={{ key }}'\n")
    cfg = load_config(str(path)).config
    assert cfg.feature.network.incoming.http_filter == HttpFilter("header", "session=shared")
    path.write_text('{"target": "pod/{{ git_branch }}"}')
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert info.value.problems == [
        f"{path}: line 1: {{{{ git_branch }}}}: git_branch is not known here (not a git "
        'checkout on a branch?); add | default(value="...")']


@pytest.mark.parametrize(("text", "says"), [
    ('{"target": "{% if true %}pod/a{% endif %}"}', "template tags are not supported by tether"),
    ('{"target": "{{ now() }}"}', "not supported by tether; templates may use get_env"),
    ('{"target": "{{ get_env(name="NOPE_UNSET_X") }}"}',
     "the environment variable NOPE_UNSET_X is not set and no default is given"),
])
def test_templates_tether_cannot_render_fail_with_one_line(tmp_path: Path, text: str,
                                                            says: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    (problem,) = info.value.problems
    assert problem.startswith(f"{path}: line 1: ") and says in problem


def network(value: Any) -> dict[str, Any]:
    return {"feature": {"network": value}}


def test_ipv6_false_keeps_outgoing_ipv6_local_through_the_filter() -> None:
    """mirrord leaves IPv6 alone unless `feature.network.ipv6` is on; tether handles it
    unless the key is false, which becomes a `local` ::/0 filter entry."""
    out = parse_config(network({"ipv6": False})).config.feature.network.outgoing
    assert out.filter is not None and out.filter.kind == "local"
    assert [e.raw for e in out.filter.entries] == ["::/0"]
    out = parse_config(network({"ipv6": False, "outgoing": {"filter": {
        "local": ["10.0.0.0/8"]}}})).config.feature.network.outgoing
    assert [e.raw for e in out.filter.entries] == ["10.0.0.0/8", "::/0"]
    out = parse_config(network({"ipv6": False, "outgoing": {"filter": {
        "remote": ["10.0.0.0/8", "fd00::/8", "db"]}}})).config.feature.network.outgoing
    assert [e.raw for e in out.filter.entries] == ["10.0.0.0/8", "db"]
    assert parse_config(network({"ipv6": True})).config.feature.network.outgoing.filter is None
    cfg = parse_config(network({"ipv6": False})).config
    assert parse_config(dump_effective(cfg)).config == cfg


@pytest.mark.parametrize(("value", "on"), [("remote", True), ("local", False)])
def test_outgoing_as_remote_or_local_string(value: str, on: bool) -> None:
    """mirrord's reference also writes `"outgoing": "remote"` / `"local"`."""
    out = parse_config(network({"outgoing": value})).config.feature.network.outgoing
    assert (out.tcp, out.udp) == (on, on)
