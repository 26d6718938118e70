from pathlib import Path

import pytest

from config.settings import ConfigError, load_settings


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(text)
    return path


def test_defaults_without_file():
    s = load_settings(environ={})
    assert (s.node.ae_title, s.node.port, s.series.idle_seconds, s.series.min_slices) == ("LDCTNODE", 11112, 10, 20)
    assert s.inference.engine == "cnn" and s.inference.device == "auto"
    assert s.database_url.startswith("sqlite:///") and s.database_url.endswith("jobs.sqlite3")


def test_file_and_environment_override(tmp_path):
    path = write(
        tmp_path,
        '[node]\nport = 104\n[[destinations]]\nname = "pacs"\nae_title = "ORTHANC"\nhost = "pacs.local"\nport = 4242\n',
    )
    s = load_settings(
        path,
        environ={
            "LDCT_NODE__PORT": "11113",
            "LDCT_DATABASE__URL": "postgresql+psycopg://u@h/db",
            "LDCT_NODE__ALLOWED_CALLING_AE_TITLES": "CT1, CT2",
        },
    )
    assert s.node.port == 11113
    assert s.node.allowed_calling_ae_titles == ["CT1", "CT2"]
    assert s.database_url == "postgresql+psycopg://u@h/db"
    assert s.destination("pacs").port == 4242


def test_every_problem_reported_with_its_key(tmp_path):
    path = write(
        tmp_path,
        '[node]\nport = 0\nae_title = "THIS_IS_FAR_TOO_LONG"\n[inference]\ndevice = "tpu"\n[series]\nunknown = 1\n',
    )
    with pytest.raises(ConfigError) as err:
        load_settings(path, environ={})
    message = str(err.value)
    for key in ("node.port", "node.ae_title", "inference.device", "series.unknown"):
        assert key in message


def test_bad_toml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(write(tmp_path, "[node\n"), environ={})
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "nope.toml", environ={})


def test_unknown_environment_key_is_an_error():
    with pytest.raises(ConfigError, match="has no key"):
        load_settings(environ={"LDCT_NODE__PROT": "1"})


def test_duplicate_destination_names(tmp_path):
    dest = '[[destinations]]\nname = "pacs"\nae_title = "A"\nhost = "h"\nport = 1\n'
    with pytest.raises(ConfigError, match="unique"):
        load_settings(write(tmp_path, dest + dest), environ={})


def test_config_check_cli(tmp_path):
    from typer.testing import CliRunner

    from dicom_node.admin.cli import app

    good = write(tmp_path, "[node]\nport = 11112\n")
    result = CliRunner().invoke(app, ["config", "check", str(good)])
    assert result.exit_code == 0 and "valid" in result.output
    bad = tmp_path / "bad.toml"
    bad.write_text("[node]\nport = -1\n")
    result = CliRunner().invoke(app, ["config", "check", str(bad)])
    assert result.exit_code == 2 and "node.port" in result.output


def test_tls_and_allowed_peers_are_validated_with_every_problem_named(tmp_path):
    cert = tmp_path / "node.pem"
    cert.write_text("x")
    path = write(
        tmp_path,
        f'[tls]\nenabled = true\ncertificate = "{cert}"\nrequire_client_certificate = true\n'
        '[[node.allowed_peers]]\nae_title = "CT1"\naddresses = ["10.0.0.300"]\n'
        '[[destinations]]\nname = "pacs"\nae_title = "PACS"\nhost = "h"\nport = 104\ntls = true\n',
    )
    with pytest.raises(ConfigError) as err:
        load_settings(path, environ={})
    message = str(err.value)
    assert "needs certificate and private_key" in message
    assert "require_client_certificate needs ca_certificates" in message
    assert "10.0.0.300" in message and "node.allowed_peers" in message


def test_tls_destination_and_bound_peers_accepted(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    path = write(
        tmp_path,
        f'[tls]\nca_certificates = "{ca}"\n'
        '[[node.allowed_peers]]\nae_title = "CT1"\naddresses = ["10.0.0.5", "10.1.0.0/16"]\n'
        '[[destinations]]\nname = "pacs"\nae_title = "PACS"\nhost = "h"\nport = 2762\ntls = true\n',
    )
    s = load_settings(path, environ={"LDCT_TLS__REQUIRE_CLIENT_CERTIFICATE": "true"})
    assert s.node.allowed_peers[0].addresses == ["10.0.0.5", "10.1.0.0/16"]
    assert s.destination("pacs").tls and s.tls.require_client_certificate and not s.tls.enabled


def test_dicomweb_destination_beside_a_dimse_one(tmp_path):
    secret = tmp_path / "pacs.secret"
    secret.write_text("pw\n")
    path = write(
        tmp_path,
        '[[destinations]]\nname = "pacs"\nae_title = "PACS"\nhost = "h"\nport = 104\n'
        '[[destinations]]\nname = "web"\ntype = "dicomweb"\nurl = "https://pacs.example.org/dicom-web/"\n'
        f'auth = "basic"\nusername = "ldct"\nsecret_file = "{secret}"\ntimeout_seconds = 120\n',
    )
    s = load_settings(path, environ={})
    assert s.destination("pacs").type == "dimse"
    web = s.destination("web")
    assert web.type == "dicomweb" and web.url == "https://pacs.example.org/dicom-web"  # the root, no trailing /
    assert (web.auth, web.username, web.secret_file, web.timeout_seconds) == ("basic", "ldct", secret, 120)


@pytest.mark.parametrize(
    ("destination", "problem"),
    [
        ('url = "ftp://pacs/dicom-web"', "url must be http:// or https://"),
        ('url = "http://user:pw@pacs/dicom-web"', "url must not hold credentials"),
        ('url = "http://pacs/dicom-web?x=1"', "no query or fragment"),
        ('url = "http://pacs:99999/dicom-web"', "url: Port out of range"),
        ('url = "http://pacs/dw"\nauth = "basic"\nsecret_env = "X"', 'auth = "basic" needs username'),
        ('url = "http://pacs/dw"\nauth = "bearer"', 'auth = "bearer" needs exactly one of secret_file, secret_env'),
        (
            'url = "http://pacs/dw"\nauth = "bearer"\nsecret_env = "X"\nsecret_file = "/etc/hosts"',
            "needs exactly one of secret_file, secret_env",
        ),
        ('url = "http://pacs/dw"\nsecret_env = "X"', 'need auth = "basic" or "bearer"'),
        ('url = "http://pacs/dw"\nauth = "bearer"\nsecret_file = "/nonexistent/s"', "secret_file: file not found"),
        ('url = "http://pacs/dw"\nca_certificates = "/etc/hosts"', "ca_certificates applies to an https url only"),
        ('url = "http://pacs/dw"\npassword = "x"', "password"),
        ('auth = "none"', "url"),
    ],
)
def test_dicomweb_destination_problems_are_named(tmp_path, destination, problem):
    path = write(tmp_path, f'[[destinations]]\nname = "web"\ntype = "dicomweb"\n{destination}\n')
    with pytest.raises(ConfigError) as err:
        load_settings(path, environ={})
    assert problem in str(err.value) and "destinations.0" in str(err.value)


def test_unknown_destination_type_is_named(tmp_path):
    path = write(tmp_path, '[[destinations]]\nname = "x"\ntype = "ftp"\n')
    with pytest.raises(ConfigError, match=r"'ftp'.*'dimse', 'dicomweb'"):
        load_settings(path, environ={})


def test_config_check_says_where_the_secret_is_never_what_it_is(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from dicom_node.admin.cli import app

    secret = tmp_path / "pacs.secret"
    secret.write_text("file-secret-81c2\n")
    monkeypatch.setenv("LDCT_T_TOKEN", "env-secret-4d7e")
    path = write(
        tmp_path,
        '[[destinations]]\nname = "a"\ntype = "dicomweb"\nurl = "https://pacs/dicom-web"\n'
        f'auth = "basic"\nusername = "ldct"\nsecret_file = "{secret}"\n'
        '[[destinations]]\nname = "b"\ntype = "dicomweb"\nurl = "http://[::1]:8042/dicom-web"\n'
        'auth = "bearer"\nsecret_env = "LDCT_T_TOKEN"\n'
        '[[destinations]]\nname = "c"\ntype = "dicomweb"\nurl = "https://pacs/dw"\n'
        'auth = "bearer"\nsecret_env = "UNSET_X"\n',
    )
    result = CliRunner().invoke(app, ["config", "check", str(path)])
    assert result.exit_code == 0, result.output
    output = " ".join(result.output.split())
    assert (
        f"destination a: STOW-RS to https://pacs/dicom-web, basic authentication, secret from file {secret}" in output
    )
    assert (
        "destination b: STOW-RS to http://[::1]:8042/dicom-web, bearer authentication, secret from environment"
        in output
    )
    assert "(warning: sent unencrypted over http)" in output
    assert "UNSET_X (not set in this environment)" in output
    assert "file-secret-81c2" not in result.output and "env-secret-4d7e" not in result.output


def test_the_weight_set_names_the_settings_accept_are_the_ones_the_engine_ships():
    """config stays free of the inference stack, so it names the sets itself: keep both lists equal."""
    from config.settings import SHIPPED_WEIGHT_SETS
    from inference.engines import WEIGHT_SETS

    assert set(SHIPPED_WEIGHT_SETS) == set(WEIGHT_SETS)
    assert all(path.is_file() for path in WEIGHT_SETS.values())
