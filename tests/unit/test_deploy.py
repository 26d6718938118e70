"""The deployment files stay in step with the code: configs validate, units run real commands."""

from pathlib import Path

import pytest

from config.settings import load_settings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


@pytest.mark.parametrize("name", ["ldct-node.example.toml", "compose-node.toml"])
def test_example_configs_validate(name):
    settings = load_settings(DEPLOY / name, environ={})
    assert settings.destinations


def test_systemd_units_call_existing_commands():
    from dicom_node.cli import app

    commands = {c.name or c.callback.__name__ for c in app.registered_commands}
    for unit in (DEPLOY / "systemd").glob("*.service"):
        exec_line = next(l for l in unit.read_text().splitlines() if l.startswith("ExecStart="))
        assert exec_line.split()[-1] in commands, unit.name


def test_compose_services_use_existing_commands():
    text = (DEPLOY / "docker-compose.yml").read_text()
    for command in ("serve", "worker"):
        assert f'command: ["{command}"' in text
    assert "--no-workers" in text
