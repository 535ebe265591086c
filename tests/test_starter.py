"""`tether exec` takes its fast start only for what it parses exactly as click would; every
other command line goes to click (its help, its errors, options added later)."""

from __future__ import annotations

import pytest
from tether.starter import fast_exec_args


@pytest.mark.parametrize("argv, expected", [
    (["exec", "-t", "process/1", "--", "app", "-x"], ({"target": "process/1"}, ["app", "-x"])),
    (["exec", "--target=process/1", "-f", "c.json", "app"],
     ({"target": "process/1", "config_file": "c.json"}, ["app"])),
    (["exec", "-n", "staging", "--target-namespace", "prod", "--", "--weird"],
     ({"namespace": "prod"}, ["--weird"])),
    (["exec", "app", "--target", "x"], ({}, ["app", "--target", "x"])),
])
def test_plain_exec_command_lines_take_the_fast_start(argv, expected):
    assert fast_exec_args(argv) == expected


@pytest.mark.parametrize("argv", [
    [], ["verify-config", "x.json"], ["exec"], ["exec", "--"], ["exec", "-h"],
    ["exec", "--help"], ["exec", "-tprocess/1", "app"], ["exec", "-t=process/1", "app"],
    ["exec", "--some-new-flag", "app"], ["exec", "-t"], ["--version"],
])
def test_anything_else_goes_to_click(argv):
    assert fast_exec_args(argv) is None


def test_a_directory_as_config_file_gets_clicks_message(tmp_path):
    assert fast_exec_args(["exec", "-f", str(tmp_path), "app"]) is None
