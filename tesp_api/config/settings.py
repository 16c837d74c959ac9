"""Typed settings. Every key the service reads is declared here; an unknown or mistyped key stops
the start with a message naming it (``extra="forbid"``), instead of being silently ignored.

Keys of CESNET's tesp-api 0.2 (db.mongodb_uri, pulsar.url, pulsar.amqp_url,
pulsar.status.poll_interval, pulsar.client_timeout, logging.*, basic_auth.*, oauth.*) are accepted
with their old meaning so that its users can keep their settings.toml; see docs/settings.md.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

KIB = 1024
MIB = 1024 * KIB


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ApiSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    # The URL at which Pulsar (remote staging) and users reach this service; derived from host/port when empty.
    public_url: str | None = None
    max_body_bytes: int = Field(16 * MIB, ge=64 * KIB)
    max_content_bytes: int = Field(1 * MIB, ge=128 * KIB)  # per tesInput.content; TES asks >= 128 KiB
    reject_unknown_fields: bool = True
    default_page_size: int = Field(256, ge=1, le=2047)
    forwarded_allow_ips: str = "127.0.0.1"


class ServiceInfoSettings(_Section):
    id: str = "org.ga4gh.tesp-api"
    name: str = "tesp-api"
    description: str = "GA4GH TES 1.1 on Galaxy Pulsar"
    organization_name: str = "tesp-api"
    organization_url: str = "https://github.com/CESNET/tesp-api"
    contact_url: str | None = None
    documentation_url: str | None = None
    environment: str | None = None
    created_at: str | None = None
    updated_at: str | None = None
    # Storage locations to advertise; empty = derived from the transfer schemes enabled.
    storage: list[str] = Field(default_factory=list)


class DbSettings(_Section):
    # MongoDB when set (compatible key); otherwise the embedded SQLite store.
    mongodb_uri: SecretStr | None = None
    mongodb_database: str = "tesp"
    mongodb_collection: str = "tasks"
    sqlite_path: str = ".tesp-api/tasks.sqlite3"


class PulsarStatusSettings(_Section):
    poll_interval: float = Field(2.0, gt=0)  # seconds between REST status polls of one running job
    # Accepted for compatibility and ignored: tasks are never given up after N polls.
    max_polls: int | None = None


class PulsarServer(_Section):
    name: str = "default"
    url: str | None = None  # REST: http(s)://host:port
    amqp_url: SecretStr | None = None  # AMQP mode when set
    private_token: SecretStr | None = None
    manager: str = "_default_"
    amqp_key_prefix: str | None = None
    # AMQP remote staging: the backend's own HTTP server, from which Pulsar GETs inputs and to which it
    # POSTs outputs. staging_listen = "host:port" it binds (default 127.0.0.1, a free port); staging_url =
    # where Pulsar reaches it (default: the bound address). See docs/amqp.md.
    staging_url: str | None = None
    staging_listen: str | None = None


class PulsarSettings(_Section):
    # Single-server keys (compatible with tesp-api 0.2); used when `servers` is empty.
    url: str | None = "http://127.0.0.1:8913"
    amqp_url: SecretStr | None = None
    private_token: SecretStr | None = None
    manager: str = "_default_"
    amqp_key_prefix: str | None = None
    client_timeout: float = Field(30.0, gt=0)
    status: PulsarStatusSettings = Field(default_factory=PulsarStatusSettings)
    servers: list[PulsarServer] = Field(default_factory=list)
    retries: int = Field(5, ge=0)  # per request, with exponential backoff
    unreachable_deadline: float = Field(600.0, gt=0)  # seconds Pulsar may be unreachable before SYSTEM_ERROR
    keep_job_directories: bool = False  # debugging: do not DELETE the Pulsar job at the end
    amqp_reconcile_after: float = Field(60.0, gt=0)  # AMQP: ask for status when silent this long
    amqp_reconcile_max_per_minute: int = Field(300, ge=1)  # AMQP: cap on those status requests, all jobs
    staging_url: str | None = None  # AMQP remote staging, single-server form (see PulsarServer)
    staging_listen: str | None = None

    def effective_servers(self) -> list[PulsarServer]:
        if self.servers:
            return self.servers
        return [
            PulsarServer(
                name="default",
                url=self.url,
                amqp_url=self.amqp_url,
                private_token=self.private_token,
                manager=self.manager,
                amqp_key_prefix=self.amqp_key_prefix,
                staging_url=self.staging_url,
                staging_listen=self.staging_listen,
            )
        ]


class EngineSettings(_Section):
    enabled: bool = True  # run the engine inside `tesp-api serve`
    worker_id: str | None = None  # default: hostname:pid
    max_running_tasks: int = Field(1000, ge=1)
    lease_seconds: float = Field(30.0, gt=0)
    claim_interval: float = Field(1.0, gt=0)
    log_tail_bytes: int = Field(64 * KIB, ge=0)  # stdout/stderr kept per executor log (the tail)
    work_dir: str = ".tesp-api/work"  # local scratch for staging
    # backend_parameters keys this service understands (case-insensitive).
    backend_parameters: list[str] = Field(default_factory=lambda: ["pulsar_server"])


RuntimeType = Literal["auto", "docker", "podman", "apptainer", "singularity", "bwrap"]


class RuntimeSettings(_Section):
    type: RuntimeType = "auto"
    docker_bin: str = "docker"
    podman_bin: str = "podman"
    apptainer_bin: str = "apptainer"
    singularity_bin: str = "singularity"
    bwrap_bin: str = "bwrap"
    extra_args: list[str] = Field(default_factory=list)  # appended to the run command, before the image
    pull_policy: Literal["missing", "always", "never"] = "missing"


class HttpCredential(_Section):
    host: str  # exact host name (port optional, e.g. "data.example.org:8443")
    headers: dict[str, SecretStr] = Field(default_factory=dict)
    bearer_token: SecretStr | None = None
    username: str | None = None
    password: SecretStr | None = None


class FtpCredential(_Section):
    host: str
    username: str = "anonymous"
    password: SecretStr | None = None


class S3Credential(_Section):
    bucket: str | None = None  # None = any bucket at this endpoint
    endpoint_url: str | None = None
    region: str | None = None
    access_key_id: SecretStr | None = None
    secret_access_key: SecretStr | None = None
    session_token: SecretStr | None = None


class TransferSettings(_Section):
    allowed_dirs: list[str] = Field(default_factory=list)  # file:// URLs and plain paths only inside these
    http: list[HttpCredential] = Field(default_factory=list)
    ftp: list[FtpCredential] = Field(default_factory=list)
    s3: list[S3Credential] = Field(default_factory=list)
    timeout: float = Field(60.0, gt=0)
    retries: int = Field(3, ge=0)
    chunk_bytes: int = Field(8 * MIB, ge=64 * KIB)
    signed_url_ttl: float = Field(86400.0, gt=0)  # staging tokens for Pulsar (AMQP/remote staging)
    # URL schemes accepted for inputs/outputs ("file" also covers plain absolute paths).
    schemes: list[Literal["file", "http", "https", "ftp", "s3"]] = Field(
        default_factory=lambda: ["file", "http", "https", "ftp", "s3"]
    )
    retry_backoff: float = Field(0.5, ge=0)  # first retry delay in seconds; doubles per attempt, capped at 30 s
    s3_max_concurrency: int = Field(4, ge=1)  # boto3 worker threads per multipart transfer
    follow_redirects: bool = True  # http(s) GET follows redirects (credentials are not sent to another host)


class BasicUser(_Section):
    username: str
    password_hash: SecretStr  # made by `tesp-api hash-password`
    admin: bool = False


class OidcIssuer(_Section):
    issuer: str
    audience: list[str] = Field(default_factory=list)
    algorithms: list[str] = Field(default_factory=lambda: ["RS256", "ES256", "PS256", "EdDSA"])
    discovery_url: str | None = None  # default: {issuer}/.well-known/openid-configuration
    jwks_url: str | None = None  # skip discovery


class AuthSettings(_Section):
    mode: list[Literal["none", "basic", "oidc"]] = Field(default_factory=lambda: ["none"])
    users: list[BasicUser] = Field(default_factory=list)
    issuers: list[OidcIssuer] = Field(default_factory=list)
    admin_claim: str = "groups"
    admin_values: list[str] = Field(default_factory=list)
    admin_subjects: list[str] = Field(default_factory=list)
    service_info_public: bool = True
    leeway_seconds: float = Field(30.0, ge=0)
    jwks_min_refresh_seconds: float = Field(30.0, ge=0)
    http_timeout: float = Field(5.0, gt=0)

    @field_validator("mode", mode="before")
    @classmethod
    def _one_or_many(cls, v: object) -> object:
        return [v] if isinstance(v, str) else v


class LegacyBasicAuth(_Section):
    """tesp-api 0.2's ``[basic_auth]``: accepted; a plain password is refused with a hint (see docs)."""

    enable: bool = False
    username: str | None = None
    password: SecretStr | None = None
    password_hash: SecretStr | None = None


class LegacyOauth(_Section):
    enable: bool = False
    issuer: str | None = None
    audience: str | None = None


class LoggingSettings(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    output_json: bool = False

    @field_validator("level", mode="before")
    @classmethod
    def _upper(cls, v: object) -> object:
        return v.upper() if isinstance(v, str) else v


class Settings(_Section):
    api: ApiSettings = Field(default_factory=ApiSettings)
    service_info: ServiceInfoSettings = Field(default_factory=ServiceInfoSettings)
    db: DbSettings = Field(default_factory=DbSettings)
    pulsar: PulsarSettings = Field(default_factory=PulsarSettings)
    engine: EngineSettings = Field(default_factory=EngineSettings)
    runtime: RuntimeSettings = Field(default_factory=RuntimeSettings)
    transfer: TransferSettings = Field(default_factory=TransferSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    basic_auth: LegacyBasicAuth = Field(default_factory=LegacyBasicAuth)
    oauth: LegacyOauth = Field(default_factory=LegacyOauth)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if not any(s.url or s.amqp_url for s in self.pulsar.effective_servers()):
            raise ValueError("pulsar: every server needs `url` (REST) or `amqp_url` (AMQP)")
        return self
