"""Settings: one typed object, read once at start-up and passed down.

Sources, highest precedence first: explicit CLI flags (passed as ``overrides``),
environment variables, the ``.env`` file beside the config file, ``orchestrator.toml``,
defaults.

Where the config file lives never depends on the working directory: it is
``--config`` / ``ORCHESTRATOR_CONFIG`` when given, otherwise ``orchestrator.toml`` in
the platform's user config folder. Relative paths in any source are resolved once,
against the config file's folder. ``DATA_DIR`` defaults to the platform's user data
folder.

Library code never reads ``os.environ``; only :func:`load_settings` does, through
pydantic-settings.
"""

from __future__ import annotations

import base64
import contextvars
import ipaddress
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import platformdirs
from pydantic import (
    AliasChoices,
    AnyHttpUrl,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    DotEnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from orchestrator import errors
from orchestrator.domain.webhooks import UrlProblem, check_url
from orchestrator.object_store import S3Credentials, S3Location

APP_NAME = "orchestrator"
CONFIG_ENV = "ORCHESTRATOR_CONFIG"
CONFIG_FILE_NAME = "orchestrator.toml"

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]

# The config file chosen for the settings being built; read by the custom sources.
_config_file: contextvars.ContextVar[Path | None] = contextvars.ContextVar(
    "orchestrator_config_file", default=None
)


def default_config_file() -> Path:
    """``orchestrator.toml`` in the platform's user config folder."""
    return platformdirs.user_config_path(APP_NAME, appauthor=False) / CONFIG_FILE_NAME


def default_data_dir() -> Path:
    return platformdirs.user_data_path(APP_NAME, appauthor=False)


class ComfyInstanceSettings(BaseModel):
    """One ComfyUI server of the pool."""

    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")]
    url: AnyHttpUrl
    max_in_flight: Annotated[int, Field(ge=1, le=64)] = 2


class ComfyProcessSettings(BaseModel):
    """A local ComfyUI server that Orchestrator starts and supervises (``serve``)."""

    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")]
    command: Annotated[list[str], Field(min_length=1)] = Field(
        description="The program and its arguments (run directly, no shell)."
    )
    cwd: Path | None = None
    env: dict[str, str] = Field(default_factory=dict)
    port: Annotated[int, Field(ge=1, le=65535)]
    max_in_flight: Annotated[int, Field(ge=1, le=64)] = 2
    startup_timeout_s: Annotated[float, Field(gt=0, le=3600)] = 60.0
    max_restarts: Annotated[int, Field(ge=0, le=1000)] = 5
    check_listener: bool = Field(
        default=True,
        description="Ready only once the socket listening on the port belongs to the "
        "process started or one of its descendants (Linux, through /proc). Turn off when "
        "the command hands the port to another process tree (e.g. `docker run -p`).",
    )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


class Settings(BaseSettings):
    """Every setting Orchestrator reads. Field names are the TOML keys; the
    upper-case names are the environment variables (see ``.env.example``)."""

    model_config = SettingsConfigDict(
        extra="ignore",
        case_sensitive=False,
        populate_by_name=True,
        validate_default=True,
        env_ignore_empty=True,
    )

    # --- paths -----------------------------------------------------------------
    data_dir: Path | None = Field(
        default=None,
        description="Root folder for the database, outputs and job manifests. "
        "Default: the platform's user data folder.",
    )
    output_dir: Path | None = Field(
        default=None, description="Where generated files are written. Default: DATA_DIR/outputs."
    )
    jobs_dir: Path | None = Field(
        default=None,
        description="Where a JSON manifest per finished job is written. Default: DATA_DIR/jobs.",
    )
    output_store_url: str | None = Field(
        default=None,
        description="Where outputs and job manifests are kept. Unset: the local OUTPUT_DIR "
        "(and JOBS_DIR). s3://bucket/prefix: an S3-compatible bucket (AWS S3, MinIO, R2…), "
        "outputs under prefix/outputs/, manifests under prefix/jobs/; endpoint, region and "
        "keys from AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY. "
        "A folder path: the local output folder (instead of OUTPUT_DIR).",
    )
    output_store_presign_s: Annotated[int, Field(ge=0, le=7 * 86_400)] = Field(
        default=0,
        description="With an S3 output store: GET /api/outputs/... answers with a redirect "
        "to a presigned URL valid this many seconds instead of streaming the bytes through "
        "Orchestrator. 0: stream (the default).",
    )
    aws_endpoint_url: str | None = Field(
        default=None,
        description="The S3 API endpoint, e.g. http://127.0.0.1:9000 for MinIO. Unset: AWS S3.",
    )
    aws_region: str | None = Field(
        default=None,
        validation_alias=AliasChoices("aws_region", "aws_default_region"),
        description="The bucket's region (AWS_DEFAULT_REGION is read too). Default: us-east-1.",
    )
    aws_access_key_id: str | None = Field(
        default=None, description="Access key of the S3 output store."
    )
    aws_secret_access_key: SecretStr | None = Field(
        default=None, description="Secret key of the S3 output store."
    )
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL. Default: SQLite file DATA_DIR/orchestrator.db. "
        "PostgreSQL: postgresql+asyncpg://user@host:5432/db",
    )
    tilda_dump_path: Path | None = Field(
        default=None, description="Folder or zip of a Tilda site export (used by the importer)."
    )
    tilda_import_roots: list[Path] = Field(
        default_factory=list,
        description="Folders under which POST /api/tilda/import may read a server-side path "
        '(JSON list, e.g. ["exports"]); TILDA_DUMP_PATH is always allowed.',
    )
    tilda_max_total_mb: Annotated[int, Field(ge=1)] = Field(
        default=2048, description="Largest total uncompressed size of an export to import, MB."
    )
    tilda_max_files: Annotated[int, Field(ge=1)] = Field(
        default=50_000, description="Most files an export to import may hold."
    )
    tilda_max_ratio: Annotated[float, Field(ge=1)] = Field(
        default=200.0,
        description="Highest compression ratio of one zip entry of 1 MiB or more, and of "
        "the whole archive, before it is refused as a zip bomb.",
    )
    tilda_public_key: SecretStr | None = Field(
        default=None, description="Tilda API public key (Business plan). Absent: API import off."
    )
    tilda_secret_key: SecretStr | None = Field(
        default=None, description="Tilda API secret key. Absent: API import off."
    )
    tilda_project_id: str | None = Field(
        default=None, description="Tilda project id imported by `orchestrator tilda import --api`."
    )
    tilda_api_url: AnyHttpUrl = Field(
        default=AnyHttpUrl("https://api.tildacdn.info"), description="Tilda API origin."
    )
    tilda_asset_hosts: str = Field(
        default="*.tildacdn.com,*.tildacdn.info",
        description="Hosts the Tilda API's image URLs may be downloaded from, comma-"
        "separated patterns as in FLUX_KEY_HOSTS (https only; TILDA_API_URL's origin is "
        "always allowed).",
    )

    # --- server -----------------------------------------------------------------
    host: str = Field(
        default="127.0.0.1",
        validation_alias="ORCHESTRATOR_HOST",
        description="Address `orchestrator serve` binds to.",
    )
    port: Annotated[int, Field(ge=1, le=65535)] = Field(
        default=8000, validation_alias="ORCHESTRATOR_PORT", description="Port of `serve`."
    )
    log_level: LogLevel = Field(default="INFO", description="DEBUG, INFO, WARNING or ERROR.")
    log_format: Literal["auto", "json", "console"] = Field(
        default="auto",
        description="auto: human-readable when stderr is a terminal, JSON lines otherwise.",
    )
    demo_mode: Literal["auto", "on", "off"] = Field(
        default="auto",
        description="auto: simulate backends when none is configured; on: always; off: never.",
    )
    allowed_hosts: str = Field(
        default="",
        description="More host names the server answers to, comma-separated (a name a "
        "reverse proxy passes on). Bound to loopback, the server answers only requests whose "
        "Host is 127.0.0.1, localhost, [::1] or one of these (DNS-rebinding protection; "
        "others get 421); bound to another address, the check is on only when this is set.",
    )
    auth_disabled: bool = Field(
        default=False,
        description="Serve without authentication (no API token needed). Allowed only "
        "when ORCHESTRATOR_HOST is a loopback address (127.0.0.1, ::1, localhost).",
    )
    session_ttl_s: Annotated[float, Field(ge=60, le=90 * 86_400)] = Field(
        default=43_200.0,
        description="How long a web UI login lasts, seconds (the session also ends on "
        "logout or when its token is revoked).",
    )

    # --- FLUX (Black Forest Labs) ---------------------------------------------------
    bfl_api_key: SecretStr | None = Field(
        default=None, description="BFL API key. Absent: the flux backend is disabled."
    )
    flux_base_url: AnyHttpUrl = Field(
        default=AnyHttpUrl("https://api.bfl.ai"), description="BFL API origin."
    )
    flux_max_active: Annotated[int, Field(ge=1, le=1000)] = Field(
        default=24, description="Active FLUX tasks allowed per key (BFL's default is 24)."
    )
    flux_kontext_max_active: Annotated[int, Field(ge=1, le=1000)] = Field(
        default=6, description="Active flux-kontext-max tasks allowed (BFL's default is 6)."
    )
    flux_poll_interval_s: Annotated[float, Field(gt=0, le=60)] = Field(
        default=0.5, description="Seconds between polls of a FLUX task."
    )
    flux_deadline_s: Annotated[float, Field(gt=0)] = Field(
        default=600.0, description="Default deadline of a FLUX job, seconds."
    )
    flux_key_hosts: str = Field(
        default="api.bfl.ai,api.eu*.bfl.ai,api.us*.bfl.ai",
        description="Hosts that may receive the BFL key, comma-separated, besides "
        "FLUX_BASE_URL's own origin: only over https, on port 443 unless a pattern names "
        "another (`host:port`). `*` matches within one label (`api.eu*.bfl.ai`: the EU "
        "region and its clusters api.eu1…euN); a leading `*.` matches any subdomain. A "
        "`polling_url` BFL answers must be on one of these (or FLUX_BASE_URL's origin).",
    )
    flux_result_hosts: str = Field(
        default="*.bfl.ai,bfldelivery*.blob.core.windows.net",
        description="Hosts a FLUX result (`result.sample`) may be downloaded from, "
        "comma-separated patterns as in FLUX_KEY_HOSTS (https only; FLUX_BASE_URL's origin "
        "is always allowed). The key is never sent there.",
    )
    flux_max_output_mb: Annotated[int, Field(ge=1, le=100_000)] = Field(
        default=64,
        description="Largest FLUX output downloaded, MB; a larger one fails the job with "
        "`output_too_large`.",
    )

    # --- ComfyUI ------------------------------------------------------------------
    comfy_url: AnyHttpUrl | None = Field(
        default=None, description="One ComfyUI server, e.g. http://127.0.0.1:8188."
    )
    comfy_instances: list[ComfyInstanceSettings] = Field(
        default_factory=list,
        description="Several ComfyUI servers: [[comfy_instances]] tables in the TOML "
        '(name, url, max_in_flight), or JSON: [{"name":"a","url":"http://…"}].',
    )
    comfy_processes: list[ComfyProcessSettings] = Field(
        default_factory=list,
        description="Local ComfyUI servers that `serve` starts and supervises: "
        "[[comfy_processes]] tables in the TOML (name, command, cwd, env, port, "
        "max_in_flight, startup_timeout_s, max_restarts, check_listener); each becomes a "
        "pool instance "
        "http://127.0.0.1:<port>.",
    )
    comfy_workflows_dir: Path | None = Field(
        default=None,
        description="Folder of user workflows (<name>.json with a declared parameter "
        "schema); each becomes a job kind. Default: DATA_DIR/workflows.",
    )
    comfy_max_in_flight: Annotated[int, Field(ge=1, le=64)] = Field(
        default=2, description="Prompts sent at once to the COMFY_URL instance."
    )
    comfy_deadline_s: Annotated[float, Field(gt=0)] = Field(
        default=1800.0, description="Default deadline of a ComfyUI job, seconds."
    )
    comfy_max_output_mb: Annotated[int, Field(ge=1, le=100_000)] = Field(
        default=1024,
        description="Largest ComfyUI output (image or video) downloaded, MB; a larger one "
        "fails the job with `output_too_large`.",
    )
    comfy_reconcile_interval_s: Annotated[float, Field(gt=0, le=300)] = Field(
        default=5.0,
        description="How often a running ComfyUI job is cross-checked against /history "
        "and /queue (besides the websocket).",
    )
    comfy_health_interval_s: Annotated[float, Field(gt=0, le=3600)] = Field(
        default=10.0, description="How often each ComfyUI instance is health-checked."
    )

    # --- v0 -----------------------------------------------------------------------
    v0_api_key: SecretStr | None = Field(
        default=None, description="v0 API key for page generation. Absent: v0 disabled."
    )
    v0_base_url: AnyHttpUrl = Field(
        default=AnyHttpUrl("https://api.v0.dev"), description="v0 Model API origin."
    )
    v0_max_active: Annotated[int, Field(ge=1, le=1000)] = Field(
        default=4, description="v0 jobs streaming at once."
    )
    v0_deadline_s: Annotated[float, Field(gt=0)] = Field(
        default=600.0, description="Default deadline of a v0 job, seconds."
    )

    # --- outbound HTTP ---------------------------------------------------------------
    http_connect_timeout_s: Annotated[float, Field(gt=0, le=300)] = Field(
        default=10.0, description="Connect timeout of every outbound request."
    )
    http_read_timeout_s: Annotated[float, Field(gt=0, le=3600)] = Field(
        default=60.0, description="Read (and write) timeout of every outbound request."
    )

    # --- worker -------------------------------------------------------------------
    worker_enabled: bool = Field(
        default=True, description="Run the job worker inside `orchestrator serve`."
    )
    worker_concurrency: Annotated[int, Field(ge=1, le=10000)] = Field(
        default=64, description="Jobs one worker process runs at once (all backends)."
    )
    worker_poll_interval_s: Annotated[float, Field(gt=0, le=60)] = Field(
        default=0.5, description="How often the worker looks for jobs queued by other processes."
    )
    lease_s: Annotated[float, Field(ge=2, le=3600)] = Field(
        default=30.0,
        description="A claimed job's lease; another process takes the job over only "
        "after it expired.",
    )
    shutdown_grace_s: Annotated[float, Field(ge=0, le=3600)] = Field(
        default=10.0,
        description="On SIGTERM/SIGINT, how long in-flight jobs may finish; the rest are "
        "left for the next start to re-attach.",
    )

    # --- operations -----------------------------------------------------------------
    min_free_disk_mb: Annotated[int, Field(ge=0)] = Field(
        default=500,
        description="`orchestrator ignite` warns when a data folder has less free space, MB.",
    )
    ready_max_queue: Annotated[int, Field(ge=1)] = Field(
        default=10_000,
        description="/readyz answers 503 when this many jobs (or more) are queued.",
    )

    # --- cost ledger and budgets ---------------------------------------------------------
    flux_prices: dict[str, Annotated[float, Field(ge=0, le=100_000)]] = Field(
        default_factory=dict,
        description="Credits per image by FLUX model, over BFL's list prices (used when "
        'BFL sends no `cost`), e.g. {"flux-dev": 2.5}. 1 credit = US$0.01.',
    )
    comfy_gpu_second_rate: Annotated[float, Field(ge=0, le=1000)] = Field(
        default=0.0, description="Credits per GPU-second of a ComfyUI job (0: free)."
    )
    v0_credits_per_1k_tokens: Annotated[float, Field(ge=0, le=100_000)] = Field(
        default=0.0, description="Credits per 1,000 tokens of a v0 job (0: not counted)."
    )
    comfy_estimate_gpu_s: Annotated[float, Field(gt=0, le=86_400)] = Field(
        default=30.0,
        description="GPU-seconds a ComfyUI job is expected to take (reserved against budgets) "
        "until its model has run before; then the recent average is used.",
    )
    v0_estimate_tokens: Annotated[int, Field(ge=1, le=1_000_000)] = Field(
        default=8000,
        description="Tokens of answer a v0 job is expected to use (reserved against budgets, "
        "with its prompt) when the request sets no max_completion_tokens.",
    )
    daily_budget: Annotated[float, Field(ge=0)] | None = Field(
        default=None,
        description="Credits all jobs together may spend per UTC day; a job that would "
        "exceed it is refused before anything is spent. Unset: no global budget.",
    )

    # --- webhooks -------------------------------------------------------------------
    webhook_secret: SecretStr | None = Field(
        default=None,
        description="Signing secret, whsec_ followed by base64 of 24 to 64 random bytes. "
        "Absent: webhooks are disabled.",
    )
    upstream_allow_private: bool = Field(
        default=False,
        description="Allow URLs that upstreams hand over (BFL's polling and result URLs, "
        "Tilda's image URLs) to reach loopback, private and link-local addresses. The "
        "origins configured here (FLUX_BASE_URL, TILDA_API_URL) are always allowed.",
    )
    download_timeout_s: Annotated[float, Field(gt=0, le=86_400)] = Field(
        default=300.0,
        description="Longest time one output download may take in all, seconds "
        "(`download_timeout`); a server that trickles or never ends its body is cut off.",
    )
    webhook_allow_private: bool = Field(
        default=False,
        description="Allow webhook targets on loopback, private, link-local and other "
        "non-public addresses (refused by default: SSRF guard).",
    )
    webhook_url: str | None = Field(
        default=None,
        description="An http(s) URL that receives every job's events (job.started, "
        "job.progress, job.completed) as signed Standard Webhooks.",
    )
    webhook_max_age_s: Annotated[float, Field(gt=0, le=30 * 86_400)] = Field(
        default=86_400.0,
        description="How long a failing webhook delivery keeps being retried, seconds.",
    )
    webhook_timeout_s: Annotated[float, Field(gt=0, le=300)] = Field(
        default=10.0, description="Timeout of one webhook delivery attempt, seconds."
    )

    # where this object came from (not a setting)
    config_file: Path = Field(default_factory=default_config_file, exclude=True)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        config_file = _config_file.get()
        if config_file is None:
            return (init_settings, env_settings)
        return (
            init_settings,
            env_settings,
            DotEnvSettingsSource(settings_cls, env_file=config_file.parent / ".env"),
            TomlConfigSettingsSource(settings_cls, toml_file=config_file),
        )

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, v: object) -> object:
        return v.upper() if isinstance(v, str) else v

    @field_validator(
        "bfl_api_key",
        "v0_api_key",
        "tilda_public_key",
        "tilda_secret_key",
        "tilda_project_id",
        "comfy_url",
        "database_url",
        "webhook_url",
        "webhook_secret",
        mode="before",
    )
    @classmethod
    def _blank_is_none(cls, v: object) -> object:
        return None if isinstance(v, str) and not v.strip() else v

    @field_validator("output_store_url", "aws_endpoint_url", "aws_region", mode="before")
    @classmethod
    def _blank_store_is_none(cls, v: object) -> object:
        return None if isinstance(v, str) and not v.strip() else v

    @field_validator("output_store_url")
    @classmethod
    def _check_store_url(cls, v: str | None) -> str | None:
        if v is None:
            return v
        v = v.strip()
        if v.startswith("s3://"):
            S3Location.parse(v)  # ValueError names what is wrong
            return v
        if v.startswith("file://"):
            return v
        if "://" in v:
            raise ValueError(
                "must be s3://bucket[/prefix], a folder path, or unset (the local OUTPUT_DIR)"
            )
        return v

    @field_validator("database_url")
    @classmethod
    def _check_db_url(cls, v: str | None) -> str | None:
        if v is None:
            return v
        scheme = v.split("://", 1)[0] if "://" in v else ""
        allowed = ("sqlite", "sqlite+aiosqlite", "postgresql", "postgresql+asyncpg", "postgres")
        if scheme not in allowed:
            raise ValueError(
                f"unsupported database URL scheme {scheme!r}; use sqlite or postgresql"
            )
        return v

    @field_validator("webhook_secret")
    @classmethod
    def _check_webhook_secret(cls, v: SecretStr | None) -> SecretStr | None:
        if v is None:
            return v
        raw = v.get_secret_value().strip().removeprefix("whsec_")
        try:
            key = base64.b64decode(raw + "=" * (-len(raw) % 4), validate=True)
        except ValueError:
            raise ValueError("must be whsec_ followed by base64") from None
        if len(key) < 16:
            raise ValueError("too short: use at least 24 random bytes, base64-encoded")
        return SecretStr(v.get_secret_value().strip())

    @field_validator("webhook_url")
    @classmethod
    def _check_webhook_url(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is not None:
            try:
                check_url(v, allow_private=bool(info.data.get("webhook_allow_private")))
            except UrlProblem as exc:
                raise ValueError(str(exc)) from None
        return v

    @field_validator("flux_key_hosts", "flux_result_hosts", "tilda_asset_hosts")
    @classmethod
    def _host_patterns(cls, v: str) -> str:
        from orchestrator.domain.hosts import parse_patterns

        parse_patterns(v)  # a ValueError names the bad pattern
        return v

    @field_validator("flux_prices")
    @classmethod
    def _known_flux_models(cls, v: dict[str, float]) -> dict[str, float]:
        from orchestrator.domain.params import FLUX_MODELS

        unknown = sorted(set(v) - set(FLUX_MODELS))
        if unknown:
            raise ValueError(f"unknown FLUX models {unknown}; known: {sorted(FLUX_MODELS)}")
        return v

    @field_validator("auth_disabled")
    @classmethod
    def _auth_off_only_on_loopback(cls, v: bool, info: ValidationInfo) -> bool:
        host = info.data.get("host")
        if v and isinstance(host, str) and not is_loopback(host):
            raise ValueError(
                f"authentication can be turned off only when the server binds to a "
                f"loopback address (127.0.0.1, ::1, localhost), not ORCHESTRATOR_HOST={host}"
            )
        return v

    @field_validator("comfy_instances")
    @classmethod
    def _unique_names(cls, v: list[ComfyInstanceSettings]) -> list[ComfyInstanceSettings]:
        names = [i.name for i in v]
        if len(names) != len(set(names)):
            raise ValueError("instance names must be unique")
        return v

    @field_validator("comfy_processes")
    @classmethod
    def _unique_processes(cls, v: list[ComfyProcessSettings]) -> list[ComfyProcessSettings]:
        names = [p.name for p in v]
        if len(names) != len(set(names)):
            raise ValueError("process names must be unique")
        ports = [p.port for p in v]
        if len(ports) != len(set(ports)):
            raise ValueError("process ports must be unique")
        return v

    @model_validator(mode="after")
    def _resolve_paths(self) -> Settings:
        base = self.config_file.parent
        data = _resolve(self.data_dir, base) if self.data_dir else default_data_dir()
        self.data_dir = data
        self.output_dir = _resolve(self.output_dir, base) if self.output_dir else data / "outputs"
        if self.output_store_url is not None and not self.output_store_url.startswith("s3://"):
            folder = Path(self.output_store_url.removeprefix("file://")).expanduser()
            self.output_dir = _resolve(folder, base)
        self.jobs_dir = _resolve(self.jobs_dir, base) if self.jobs_dir else data / "jobs"
        self.comfy_workflows_dir = (
            _resolve(self.comfy_workflows_dir, base)
            if self.comfy_workflows_dir
            else data / "workflows"
        )
        if self.tilda_dump_path is not None:
            self.tilda_dump_path = _resolve(self.tilda_dump_path, base)
        self.tilda_import_roots = [_resolve(r, base) for r in self.tilda_import_roots]
        for proc in self.comfy_processes:
            if proc.cwd is not None:
                proc.cwd = _resolve(proc.cwd, base)
        clash = {p.name for p in self.comfy_processes} & (
            {i.name for i in self.comfy_instances} | ({"default"} if self.comfy_url else set())
        )
        if clash:
            raise ValueError(
                f"comfy_processes names clash with ComfyUI instance names: {sorted(clash)}"
            )
        if self.database_url is None:
            self.database_url = f"sqlite+aiosqlite:///{data / 'orchestrator.db'}"
        else:
            self.database_url = _normalise_db_url(self.database_url, base)
        return self

    # --- derived views ---------------------------------------------------------------
    @property
    def data_path(self) -> Path:
        assert self.data_dir is not None
        return self.data_dir

    @property
    def output_path(self) -> Path:
        assert self.output_dir is not None
        return self.output_dir

    @property
    def output_store_s3(self) -> S3Location | None:
        """The bucket and prefix of an S3 output store; None: outputs are local."""
        url = self.output_store_url
        return S3Location.parse(url) if url is not None and url.startswith("s3://") else None

    @property
    def s3_credentials(self) -> S3Credentials:
        secret = self.aws_secret_access_key
        return S3Credentials(
            endpoint_url=self.aws_endpoint_url,
            region=self.aws_region,
            access_key_id=self.aws_access_key_id,
            secret_access_key=secret.get_secret_value() if secret is not None else None,
            connect_timeout_s=self.http_connect_timeout_s,
        )

    @property
    def jobs_path(self) -> Path:
        assert self.jobs_dir is not None
        return self.jobs_dir

    @property
    def db_url(self) -> str:
        assert self.database_url is not None
        return self.database_url

    @property
    def is_sqlite(self) -> bool:
        return self.db_url.startswith("sqlite")

    @property
    def webhooks_disabled_reason(self) -> str | None:
        """Why webhooks are off (None when they are on)."""
        if self.webhook_secret is None:
            return "WEBHOOK_SECRET is not set"
        return None

    def secret_values(self) -> list[str]:
        """Every secret's plain value, for log redaction."""
        out = []
        for v in (
            self.bfl_api_key,
            self.v0_api_key,
            self.webhook_secret,
            self.tilda_public_key,
            self.tilda_secret_key,
        ):
            if v is not None and v.get_secret_value():
                out.append(v.get_secret_value())
        return out

    def masked(self) -> dict[str, str]:
        """Resolved values as strings, secrets masked, keyed by environment name."""
        rows: dict[str, str] = {}
        for name, field in type(self).model_fields.items():
            if field.exclude:
                continue
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                shown = mask_secret(value.get_secret_value())
            elif value is None:
                shown = "(not set)"
            elif name == "database_url":
                shown = mask_db_url(str(value))
            elif name == "comfy_instances":
                shown = ", ".join(f"{i.name}={i.url}" for i in value) or "(none)"
            elif name == "comfy_processes":
                shown = ", ".join(f"{p.name}=:{p.port}" for p in value) or "(none)"
            else:
                shown = str(value)
            rows[env_name(name)] = shown
        return rows


def child_environment(extra: Mapping[str, str]) -> dict[str, str]:
    """The environment for a child process (a supervised ComfyUI): this process's,
    plus ``extra``. The one other place the environment is read."""
    return {**os.environ, **extra}


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or localhost."""
    host = host.strip().strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def env_name(field_name: str) -> str:
    """The environment variable that sets a field."""
    field = Settings.model_fields[field_name]
    alias = field.validation_alias
    return alias if isinstance(alias, str) else field_name.upper()


def mask_secret(value: str) -> str:
    """A secret for display: whether it is set and its length, none of its characters."""
    if not value:
        return "(not set)"
    return f"**** (set, {len(value)} character{'' if len(value) == 1 else 's'})"


def mask_db_url(url: str) -> str:
    if "://" not in url or "@" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}{':****' if ':' in creds else ''}@{host}"


def _resolve(path: Path, base: Path) -> Path:
    path = path.expanduser()
    return path if path.is_absolute() else (base / path).resolve()


def _normalise_db_url(url: str, base: Path) -> str:
    if url.startswith("postgres://"):
        url = "postgresql+asyncpg://" + url[len("postgres://") :]
    elif url.startswith("postgresql://"):
        url = "postgresql+asyncpg://" + url[len("postgresql://") :]
    elif url.startswith("sqlite://") and not url.startswith("sqlite+aiosqlite://"):
        url = "sqlite+aiosqlite://" + url[len("sqlite://") :]
    prefix = "sqlite+aiosqlite:///"
    if url.startswith(prefix):
        file_part = url[len(prefix) :]
        if file_part and file_part != ":memory:" and not file_part.startswith("/"):
            url = prefix + str(_resolve(Path(file_part), base))
    return url


@dataclass(frozen=True)
class ConfigProblem:
    variable: str
    message: str

    def __str__(self) -> str:
        return f"{self.variable}: {self.message}"


def resolve_config_file(
    explicit: Path | None = None, environ: Mapping[str, str] | None = None
) -> Path:
    """The config file: the explicit flag, else ``ORCHESTRATOR_CONFIG``, else the default.

    A relative explicit path is the only thing ever resolved against the working
    directory, because the user typed it there."""
    env = os.environ if environ is None else environ
    if explicit is not None:
        return explicit.expanduser().resolve()
    from_env = env.get(CONFIG_ENV, "").strip()
    if from_env:
        return Path(from_env).expanduser().resolve()
    return default_config_file()


def load_settings(
    config_file: Path | None = None,
    overrides: Mapping[str, object] | None = None,
    *,
    check_dirs: bool = True,
) -> Settings:
    """Build and validate the settings, or raise :class:`errors.ConfigError` listing
    every problem with the variable that causes it."""
    path = resolve_config_file(config_file)
    token = _config_file.set(path)
    try:
        init = {k: v for k, v in (overrides or {}).items() if v is not None}
        # keyword overrides of any setting's type, validated by pydantic (that is the
        # point); mypy sees only dict[str, object] against typed fields
        settings = Settings(config_file=path, **init)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = [
            ConfigProblem(_variable_for(err["loc"]), _clean_msg(err["msg"])) for err in exc.errors()
        ]
        raise errors.ConfigError(problems=[str(p) for p in problems]) from None
    finally:
        _config_file.reset(token)
    if check_dirs:
        problems = check_writable(settings)
        if problems:
            raise errors.ConfigError(problems=[str(p) for p in problems])
    return settings


def check_writable(settings: Settings) -> list[ConfigProblem]:
    """Create the data folders if needed and prove each one is writable."""
    problems: list[ConfigProblem] = []
    for field in ("data_dir", "output_dir", "jobs_dir"):
        folder: Path = getattr(settings, field)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
                pass
        except OSError as exc:
            problems.append(
                ConfigProblem(env_name(field), f"folder {folder} is not writable ({exc.strerror})")
            )
    return problems


def _variable_for(loc: tuple[int | str, ...]) -> str:
    if not loc:
        return "settings"
    head = str(loc[0])
    if head in Settings.model_fields:
        return env_name(head)
    return head.upper()


def _clean_msg(msg: str) -> str:
    return msg.removeprefix("Value error, ")
