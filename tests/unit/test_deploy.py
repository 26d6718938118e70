"""The deployment files stay in step with the code: configs validate, the compose file and
the systemd units pass their own tools' checks, and every command and setting they name exists.

Without a container engine or systemd as PID 1 here, the files are checked, not run:
`docker-compose config` (Debian's docker-compose) validates the compose file against the
compose schema, `systemd-analyze verify` the units; the environment each service passes is
loaded as the node would load it.
"""

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from config.settings import load_settings

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
CONTAINER_CONFIG = "/etc/ldct-node/ldct-node.toml"  # where docker-compose.yml mounts compose-node.toml


def cli_commands() -> set[str]:
    from dicom_node.admin.cli import app

    return {c.name or c.callback.__name__ for c in app.registered_commands}


@pytest.mark.parametrize("name", ["ldct-node.example.toml", "compose-node.toml"])
def test_example_configs_validate(name):
    settings = load_settings(DEPLOY / name, environ={})
    assert settings.destinations


def test_systemd_units_call_existing_commands():
    for unit in (DEPLOY / "systemd").glob("*.service"):
        exec_line = next(line for line in unit.read_text().splitlines() if line.startswith("ExecStart="))
        assert exec_line.split()[-1] in cli_commands(), unit.name


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed (run .ci/run)")
def test_systemd_units_pass_systemd_analyze_verify(tmp_path):
    """Unknown keys, bad values and a missing executable are all reported; the installed path
    (/opt/ldct-node/.venv) is replaced by this checkout's, which exists."""
    executable = REPO / ".venv" / "bin" / "ldct-node"
    assert executable.exists(), "run scripts/setup.sh first"
    for unit in sorted((DEPLOY / "systemd").glob("*.service")):
        text = unit.read_text()
        assert "/opt/ldct-node/.venv/bin/ldct-node" in text, unit.name
        copy = tmp_path / unit.name
        copy.write_text(text.replace("/opt/ldct-node/.venv/bin/ldct-node", str(executable)))
        result = subprocess.run(
            ["systemd-analyze", "verify", "--man=no", str(copy)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert (result.returncode, result.stdout + result.stderr) == (0, ""), unit.name


def compose() -> dict:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose not installed (run .ci/run)")
def test_compose_file_is_valid_for_docker_compose():
    result = subprocess.run(
        ["docker-compose", "-f", str(DEPLOY / "docker-compose.yml"), "config", "-q"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (result.returncode, result.stderr) == (0, "")


def test_compose_services_run_existing_commands_with_valid_settings():
    """Each ldct-node service: its command exists and its environment, applied to the mounted
    config the way the node applies it, gives a valid configuration (a misspelt variable fails)."""
    services = {name: s for name, s in compose()["services"].items() if "build" in s}
    assert set(services) == {"node", "worker"}
    for name, service in services.items():
        assert service["command"][0] in cli_commands(), name
        environment = dict(service["environment"])
        mounts = {m.split(":")[1]: m.split(":")[0] for m in service["volumes"]}
        assert environment.pop("LDCT_CONFIG") == CONTAINER_CONFIG and mounts[CONTAINER_CONFIG] == "./compose-node.toml"
        settings = load_settings(DEPLOY / "compose-node.toml", environ=environment)
        assert settings.database_url.startswith("postgresql+psycopg://"), name
        assert str(settings.node.data_dir) == "/var/lib/ldct-node"
        assert "spool:/var/lib/ldct-node" in service["volumes"], name  # shared by node and worker
    assert services["node"]["command"] == ["serve", "--no-workers"]
    assert (
        load_settings(
            DEPLOY / "compose-node.toml",
            environ={k: v for k, v in services["worker"]["environment"].items() if k != "LDCT_CONFIG"},
        ).inference.device
        == "cuda"
    )
