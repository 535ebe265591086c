"""Property test of the config loader (hypothesis): any JSON document, shaped like a tether
config or not, loads or fails with ConfigError (problems named by JSON path); a config that
loads can be printed (`verify-config --print`)."""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tether import config as config_module
from tether.config import ConfigError, dump_effective, load_config

# The words the loader knows (every quoted key of config.py), so random documents reach
# deep into the schema instead of failing at the top level.
VOCABULARY = sorted(set(re.findall(r'"([a-z][a-z_]{1,30})"',
                                   Path(config_module.__file__).read_text())))
PATHS = [
    ("target",), ("target", "path"), ("target", "namespace"), ("target", "deployment"),
    ("feature", "env"), ("feature", "env", "include"), ("feature", "env", "override"),
    ("feature", "fs"), ("feature", "fs", "mode"), ("feature", "fs", "read_only"),
    ("feature", "network", "incoming"), ("feature", "network", "incoming", "mode"),
    ("feature", "network", "incoming", "ports"),
    ("feature", "network", "incoming", "http_filter"),
    ("feature", "network", "incoming", "http_filter", "header_filter"),
    ("feature", "network", "incoming", "http_filter", "all_of"),
    ("feature", "network", "incoming", "port_mapping"),
    ("feature", "network", "outgoing"), ("feature", "network", "outgoing", "filter"),
    ("feature", "network", "outgoing", "filter", "remote"),
    ("feature", "network", "dns", "filter", "local"),
    ("agent",), ("agent", "ttl"), ("agent", "image"), ("agent", "resources"),
    ("agent", "labels"), ("agent", "tolerations"), ("skip_processes",), ("kubeconfig",),
]

leaves = (st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats()
          | st.text(max_size=30) | st.sampled_from(VOCABULARY)
          | st.sampled_from(["steal", "mirror", "off", "local", "remote", "read", "write",
                             "deployment/x", "process/1", "targetless", ".*", "(", "8080",
                             "tcp://10.0.0.0/8:5432", "x-dev: me", "[", "a{1,99999}"]))
json_values = st.recursive(
    leaves, lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.sampled_from(VOCABULARY) | st.text(max_size=8), inner, max_size=4),
    max_leaves=12)


def place(doc: dict, path: tuple[str, ...], value: object) -> dict:
    node = doc
    for key in path[:-1]:
        nxt = node.get(key)
        if not isinstance(nxt, dict):
            nxt = node[key] = {}
        node = nxt
    node[path[-1]] = value
    return doc


def build(entries: list[tuple[tuple[str, ...], object]]) -> dict:
    doc: dict = {}
    for path, value in entries:
        place(doc, path, value)
    return doc


documents = (st.lists(st.tuples(st.sampled_from(PATHS), json_values), max_size=6).map(build)
             | json_values)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents)
def test_any_json_document_loads_or_fails_with_a_config_error(doc):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tether.json"
        path.write_text(json.dumps(doc))
        try:
            loaded = load_config(str(path))
        except ConfigError as exc:
            assert exc.problems and all(isinstance(p, str) and p for p in exc.problems)
            assert "Traceback" not in str(exc)
            return
    json.dumps(dump_effective(loaded.config))
