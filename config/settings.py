"""The node's settings: one pydantic schema, loaded from TOML, overridden by environment.

Environment overrides use `LDCT_<SECTION>__<KEY>`, e.g. `LDCT_NODE__PORT=11113`,
`LDCT_DATABASE__URL=postgresql+psycopg://...`, `LDCT_INFERENCE__DEVICE=cpu`. Destinations
(a list) come from the file only. Every problem is reported at start, all at once, with the
key that holds it: a node never starts on a half-valid configuration.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

ENV_PREFIX = "LDCT_"
AE_TITLE_PATTERN = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # default repertoire, no backslash


class ConfigError(ValueError):
    """A configuration that cannot be used; the message lists every problem."""


def _check_ae_title(value: str) -> str:
    if not AE_TITLE_PATTERN.match(value) or not value.strip():
        raise ValueError("an AE title is 1 to 16 printable characters, no backslash")
    return value


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NodeSettings(_Section):
    ae_title: str = "LDCTNODE"
    port: int = Field(11112, ge=1, le=65535)
    bind_address: str = "0.0.0.0"
    data_dir: Path = Path("ldct-data")
    min_free_disk_mb: int = Field(500, ge=0, description="below this, C-STORE answers 0xA700")
    allowed_calling_ae_titles: list[str] = Field(
        default_factory=list, description="empty: any calling AE title is accepted"
    )
    allowed_peers: list[AllowedPeer] = Field(
        default_factory=list,
        description="calling AE titles bound to source addresses; an AE listed here is refused from other addresses",
    )
    max_pdu_size: int = Field(0, ge=0, description="0: unlimited")
    acknowledge_after: Literal["disk", "write"] = Field(
        "disk",
        description="disk: answer C-STORE success once the file and its folder are fsynced (survives a power "
        "cut; Orthanc also syncs each file by default); write: once the kernel has the bytes, as "
        "dcmtk's storescp does (faster; a power cut "
        "can lose instances acknowledged in the last seconds)",
    )
    receive_processes: int = Field(
        0,
        ge=0,
        le=64,
        description="processes serving DICOM associations (the node hands each to the least busy), so that "
        "concurrent associations use several CPU cores; 0: one per CPU core, at most 4",
    )
    workers: int = Field(1, ge=0, description="in-process workers started by `serve`")

    _ae = field_validator("ae_title")(classmethod(lambda cls, v: _check_ae_title(v)))

    @field_validator("allowed_calling_ae_titles")
    @classmethod
    def _check_allowed(cls, values: list[str]) -> list[str]:
        return [_check_ae_title(v) for v in values]


class AllowedPeer(_Section):
    """One calling AE title and the source addresses (IPs or CIDR networks) it may call from."""

    ae_title: str
    addresses: list[str] = Field(min_length=1)

    _ae = field_validator("ae_title")(classmethod(lambda cls, v: _check_ae_title(v)))

    @field_validator("addresses")
    @classmethod
    def _check_addresses(cls, values: list[str]) -> list[str]:
        for value in values:
            try:
                ipaddress.ip_network(value, strict=False)
            except ValueError as exc:
                raise ValueError(f"{value!r} is not an IP address or network (e.g. 10.0.0.5, 10.0.0.0/24)") from exc
        return values


NodeSettings.model_rebuild()


class TLSSettings(_Section):
    """DICOM TLS: the Store SCP's certificate and, for dispatch, the node's client identity."""

    enabled: bool = Field(False, description="the Store SCP accepts TLS connections only")
    certificate: Path | None = Field(None, description="PEM certificate (chain) of this node")
    private_key: Path | None = Field(None, description="PEM private key of `certificate`")
    ca_certificates: Path | None = Field(
        None, description="PEM CA bundle: verifies client certificates and TLS destinations"
    )
    require_client_certificate: bool = Field(False, description="refuse TLS clients without a valid certificate")

    def identity(self) -> tuple[Path, Path] | None:
        """(certificate, private key) of this node, when configured."""
        if self.certificate is None or self.private_key is None:
            return None
        return self.certificate, self.private_key

    @model_validator(mode="after")
    def _complete(self) -> TLSSettings:
        problems = []
        if self.enabled and (self.certificate is None or self.private_key is None):
            problems.append("tls.enabled needs certificate and private_key")
        if self.require_client_certificate and self.ca_certificates is None:
            problems.append("require_client_certificate needs ca_certificates to verify clients with")
        if (self.certificate is None) != (self.private_key is None):
            problems.append("certificate and private_key go together")
        for name in ("certificate", "private_key", "ca_certificates"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                problems.append(f"{name}: file not found: {path}")
        if problems:
            raise ValueError("; ".join(problems))
        return self


# Sharp (lung, bone, edge) reconstruction kernels by the names vendors give them in
# ConvolutionKernel: GE LUNG/BONE/BONEPLUS/EDGE/DETAIL, Siemens B/I/H with sharpness 50-99
# (B60f, I70f, Br64, Bl57, Hr60), Canon FC50-FC59 and FC80-FC89, Philips L, YA-YD, D, E.
DEFAULT_LUNG_KERNEL_PATTERN = r"(?i)lung|bone|sharp|edge|detail|^[BIH][a-z]?[5-9][0-9]|^FC[58][0-9]$|^(L|Y[A-D]|D|E)$"


def _check_regex(pattern: str) -> str:
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"invalid regular expression {pattern!r}: {exc}") from exc
    return pattern


class SeriesSettings(_Section):
    idle_seconds: float = Field(10.0, gt=0)
    min_slices: int = Field(20, ge=1)
    include_descriptions: list[str] = Field(
        default_factory=list, description="regexes; when set, a series must match one"
    )
    exclude_descriptions: list[str] = Field(default_factory=list, description="regexes")
    spacing_tolerance: float = Field(0.05, gt=0, lt=1, description="relative slice-step tolerance")
    per_study: Literal["all", "best"] = Field(
        "best",
        description="best: wait until the whole study is idle and process the one series the selection rules "
        "prefer (others are recorded as not selected); all: process every eligible series on its own",
    )
    lung_kernel_pattern: str = Field(
        DEFAULT_LUNG_KERNEL_PATTERN,
        description="regex searched in each ConvolutionKernel value: a match is a lung (sharp) kernel, "
        "which the per-study selection prefers",
    )
    lossy: Literal["flag", "refuse"] = Field(
        "flag",
        description="lossy-compressed images (LossyImageCompression 01 or a lossy transfer syntax): flag "
        "(processed, said so in the SR and `show`) or refuse (recorded with the reason, not processed)",
    )
    not_processed: Literal["keep", "drop"] = Field(
        "keep",
        description="instances of SOP classes the node does not analyse (anything but CT Image Storage): keep "
        "in the spool until retention, or drop right after acknowledging them (their series is still recorded)",
    )

    @field_validator("include_descriptions", "exclude_descriptions")
    @classmethod
    def _check_regexes(cls, patterns: list[str]) -> list[str]:
        return [_check_regex(pattern) for pattern in patterns]

    _kernel = field_validator("lung_kernel_pattern")(classmethod(lambda cls, v: _check_regex(v)))


class DimseDestination(_Section):
    """A PACS reached by C-STORE (DIMSE), optionally over DICOM TLS."""

    type: Literal["dimse"] = "dimse"
    name: str = Field(min_length=1)
    ae_title: str
    host: str = Field(min_length=1)
    port: int = Field(ge=1, le=65535)
    tls: bool = Field(False, description="send over DICOM TLS, verifying the peer against the CA bundle")
    ca_certificates: Path | None = Field(
        None, description="CA bundle for this destination (default: tls.ca_certificates)"
    )
    server_name: str | None = Field(None, description="name in the peer's certificate (default: host)")

    _ae = field_validator("ae_title")(classmethod(lambda cls, v: _check_ae_title(v)))

    def address(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


class DicomWebDestination(_Section):
    """A PACS reached by DICOMweb STOW-RS (PS3.18 10.5) at its DICOMweb root `url`.

    The secret (basic: the password; bearer: the token) is never part of the settings: it is
    read from `secret_file` or the environment variable `secret_env` each time it is needed,
    so it appears in no configuration output, and a rotated secret needs no restart.
    """

    type: Literal["dicomweb"]
    name: str = Field(min_length=1)
    url: str = Field(description="the DICOMweb root, e.g. https://pacs.example.org/dicom-web")
    auth: Literal["none", "basic", "bearer"] = "none"
    username: str | None = Field(None, description="basic authentication's user name")
    secret_file: Path | None = Field(None, description="file holding the password or token (first line)")
    secret_env: str | None = Field(None, description="environment variable holding the password or token")
    ca_certificates: Path | None = Field(
        None, description="CA bundle for an https url (default: tls.ca_certificates, else the system's)"
    )
    timeout_seconds: float | None = Field(None, gt=0, description="network timeout (default: dispatch.timeout_seconds)")

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("url must be http:// or https:// with a host, e.g. https://pacs.example.org/dicom-web")
        if parts.username is not None or parts.password is not None:
            raise ValueError("url must not hold credentials: use auth, username and secret_file or secret_env")
        if parts.query or parts.fragment:
            raise ValueError("url is the DICOMweb root: no query or fragment")
        try:
            port = parts.port  # urlsplit checks the port only when asked
        except ValueError as exc:
            raise ValueError(f"url: {exc}") from exc
        if port == 0:
            raise ValueError("url: port 0 is not a port")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _check_auth(self) -> DicomWebDestination:
        problems = []
        sources = [s for s in (self.secret_file, self.secret_env) if s is not None]
        if self.auth == "none" and (sources or self.username):
            problems.append('username, secret_file and secret_env need auth = "basic" or "bearer"')
        if self.auth != "none" and len(sources) != 1:
            problems.append(f'auth = "{self.auth}" needs exactly one of secret_file, secret_env')
        if self.auth == "basic" and not self.username:
            problems.append('auth = "basic" needs username')
        if self.auth == "bearer" and self.username:
            problems.append('auth = "bearer" takes no username')
        if self.secret_file is not None and not Path(self.secret_file).is_file():
            problems.append(f"secret_file: file not found: {self.secret_file}")
        if self.ca_certificates is not None and not self.url.startswith("https://"):
            problems.append("ca_certificates applies to an https url only")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def address(self) -> str:
        return self.url


def _destination_type(value: Any) -> str:
    """A destination without `type` is a DIMSE one (the configurations written before DICOMweb)."""
    found = value.get("type", "dimse") if isinstance(value, dict) else getattr(value, "type", "dimse")
    return str(found)


Destination = Annotated[
    Annotated[DimseDestination, Tag("dimse")] | Annotated[DicomWebDestination, Tag("dicomweb")],
    Discriminator(_destination_type),
]


#: The CNN weight sets shipped in inference/weights (names as `inference.engines.WEIGHT_SETS`).
SHIPPED_WEIGHT_SETS = ("open", "noncommercial")


class InferenceSettings(_Section):
    engine: Literal["cnn", "threshold"] = "cnn"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    weights: str | None = Field(
        None,
        description="CNN weight set: 'open' (redistributable with attribution), 'noncommercial'"
        " (non-commercial research only), or a weights file with SHA256SUMS beside it;"
        " empty: the shipped default (README)",
    )

    @field_validator("weights")
    @classmethod
    def _known_weights(cls, value: str | None) -> str | None:
        if value in (None, "") or value in SHIPPED_WEIGHT_SETS:
            return value or None
        if not Path(value).is_file():
            raise ValueError(f"not a shipped weight set {SHIPPED_WEIGHT_SETS} nor an existing file")
        return value


class ReportSettings(_Section):
    key_images: bool = True
    omit_empty_seg_frames: bool = Field(
        False, description="False keeps empty frames: OHIF misplaces masks otherwise (highdicom#214)"
    )


class RiskSettings(_Section):
    model: Path | None = Field(None, description="risk model JSON; empty: the shipped default")
    missing: Literal["omit", "assume-absent"] = "omit"


class JobSettings(_Section):
    lease_seconds: float = Field(300.0, gt=0)
    heartbeat_seconds: float = Field(30.0, gt=0)
    max_attempts: int = Field(3, ge=1)


class DispatchSettings(_Section):
    run_by: Literal["serve", "worker"] = Field(
        "serve",
        description="which processes send results: serve (the receiving node, whose address the PACS knows) "
        "or worker (each `ldct-node worker` process, for a PACS that accepts results from the GPU hosts)",
    )
    first_retry_seconds: float = Field(30.0, gt=0)
    max_retry_seconds: float = Field(900.0, gt=0)
    max_age_hours: float = Field(24.0, gt=0)
    timeout_seconds: float = Field(30.0, gt=0)


class RetentionSettings(_Section):
    keep_days: float = Field(
        7.0, gt=0, description="results of finished jobs; spooled series this long after their last decision"
    )


class DatabaseSettings(_Section):
    url: str = Field("", description="empty: SQLite file jobs.sqlite3 in data_dir")


class LoggingSettings(_Section):
    format: Literal["console", "json"] = "console"
    level: Literal["debug", "info", "warning", "error"] = "info"


class MetricsSettings(_Section):
    port: int = Field(0, ge=0, le=65535, description="Prometheus /metrics HTTP port; 0: off")
    bind_address: str = "127.0.0.1"


class Settings(_Section):
    node: NodeSettings = Field(default_factory=NodeSettings)
    series: SeriesSettings = Field(default_factory=SeriesSettings)
    destinations: list[Destination] = Field(default_factory=list)
    inference: InferenceSettings = Field(default_factory=InferenceSettings)
    report: ReportSettings = Field(default_factory=ReportSettings)
    risk: RiskSettings = Field(default_factory=RiskSettings)
    jobs: JobSettings = Field(default_factory=JobSettings)
    dispatch: DispatchSettings = Field(default_factory=DispatchSettings)
    retention: RetentionSettings = Field(default_factory=RetentionSettings)
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    tls: TLSSettings = Field(default_factory=TLSSettings)

    @model_validator(mode="after")
    def _unique_destinations(self) -> Settings:
        names = [d.name for d in self.destinations]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"destination names must be unique: {', '.join(dupes)}")
        for dest in self.destinations:
            if (
                isinstance(dest, DimseDestination)
                and dest.tls
                and dest.ca_certificates is None
                and self.tls.ca_certificates is None
            ):
                raise ValueError(f"destination {dest.name!r}: tls needs ca_certificates (its own or [tls])")
        return self

    @property
    def database_url(self) -> str:
        return self.database.url or f"sqlite:///{(self.node.data_dir / 'jobs.sqlite3').resolve()}"

    def destination(self, name: str) -> Destination:
        for dest in self.destinations:
            if dest.name == name:
                return dest
        known = ", ".join(d.name for d in self.destinations) or "none configured"
        raise ConfigError(f"no destination named {name!r} (known: {known})")


def _env_overrides(environ: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Collect LDCT_<SECTION>__<KEY>=value pairs; lists are comma-separated."""
    overrides: dict[str, dict[str, Any]] = {}
    for key, value in environ.items():
        if not key.startswith(ENV_PREFIX) or "__" not in key:
            continue
        section, _, field = key[len(ENV_PREFIX) :].lower().partition("__")
        section_model = Settings.model_fields.get(section)
        if section_model is None or section == "destinations":
            raise ConfigError(f"{key}: no such settings section {section!r}")
        annotation = section_model.annotation
        field_info = getattr(annotation, "model_fields", {}).get(field)
        if field_info is None:
            raise ConfigError(f"{key}: section [{section}] has no key {field!r}")
        if "list" in str(field_info.annotation):
            overrides.setdefault(section, {})[field] = [v.strip() for v in value.split(",") if v.strip()]
        else:
            overrides.setdefault(section, {})[field] = value
    return overrides


def _format_errors(exc: ValidationError, source: str) -> str:
    lines = [f"invalid configuration ({source}):"]
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        lines.append(f"  {where}: {err['msg']}")
    return "\n".join(lines)


def load_settings(path: Path | str | None = None, environ: dict[str, str] | None = None) -> Settings:
    """Load settings from an optional TOML file, then apply environment overrides."""
    environ = dict(os.environ if environ is None else environ)
    data: dict[str, Any] = {}
    source = "built-in defaults"
    if path is not None:
        path = Path(path)
        source = str(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ConfigError(f"configuration file not found: {path}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    for section, values in _env_overrides(environ).items():
        data.setdefault(section, {}).update(values)
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, source)) from None
