"""docker-compose.yml and .env.example: no shipped password, compose refuses to start without one."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _env_example() -> dict[str, str]:
    pairs = (
        line.split("=", 1)
        for line in (ROOT / ".env.example").read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )
    return {k.strip(): v.strip() for k, v in pairs}


def test_no_password_ships_and_reads_are_closed_by_default() -> None:
    env = _env_example()
    assert env["POSTGRES_PASSWORD"] == ""
    assert env["STRUCTSEARCH_OPEN_READS"] == "false"
    assert not (ROOT / ".env").exists() or ".env" in (ROOT / ".gitignore").read_text().split()
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert compose["services"]["postgres"]["environment"]["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD:?")


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="needs Debian's docker-compose to parse the file")
def test_compose_refuses_the_example_env_until_a_password_is_set() -> None:
    cmd = ["docker-compose", "--env-file", str(ROOT / ".env.example"), "-f", str(ROOT / "docker-compose.yml"), "config"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("POSTGRES_")}
    refused = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert refused.returncode != 0 and "set POSTGRES_PASSWORD" in refused.stderr
    accepted = subprocess.run(cmd, capture_output=True, text=True, env={**env, "POSTGRES_PASSWORD": "s3cret"})
    assert accepted.returncode == 0, accepted.stderr
