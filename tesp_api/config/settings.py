"""Typed settings. Every key the service reads is declared here; an unknown or mistyped key stops
the start with a message naming it (``extra="forbid"``), instead of being silently ignored.

Keys of CESNET's tesp-api 0.2 (db.mongodb_uri, pulsar.url, pulsar.amqp_url,
pulsar.status.poll_interval, pulsar.client_timeout, logging.*, basic_auth.*, oauth.*) are accepted
with their old meaning so that its users can keep their settings.toml; see docs/settings.md.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

KIB = 1024
MIB = 1024 * KIB


Scheme = Literal["file", "http", "https", "ftp", "s3"]
ALL_SCHEMES: tuple[Scheme, ...] = ("file", "http", "https", "ftp", "s3")
AuthMode = Literal["none", "basic", "oidc"]
NO_AUTH: tuple[AuthMode, ...] = ("none",)


class _Section(BaseModel):
    # hide_input_in_errors: a validation error must not echo the raw values (passwords, URIs with secrets).
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)


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
    cors_origins: list[str] = Field(
        default_factory=list,
        description="browser origins that may call the API (CORS), e.g. https://app.example.org; empty: off",
    )
    metrics: bool = Field(True, description="serve /metrics (Prometheus; protected like service-info)")
    # Bounded answers and input (docs/api.md, "Limits"): checked at create with a 400 naming the field.
    max_page_bytes: int = Field(
        16 * MIB, ge=64 * KIB, description="a list page stops early (with next_page_token) before this size"
    )
    max_task_content_bytes: int = Field(
        8 * MIB, ge=128 * KIB, description="inputs[].content bytes added up over one task"
    )
    max_executors: int = Field(256, ge=1, description="executors per task")
    max_inputs: int = Field(10000, ge=1, description="inputs per task")
    max_outputs: int = Field(10000, ge=1, description="outputs per task")
    max_volumes: int = Field(1000, ge=0, description="volumes per task")
    max_tags: int = Field(1000, ge=0, description="tags per task")
    max_env: int = Field(1000, ge=0, description="env entries per executor")
    max_command_arguments: int = Field(10000, ge=1, description="command arguments per executor")
    max_argument_bytes: int = Field(
        1 * MIB,
        ge=64 * KIB,
        description="bytes of one executor's command arguments plus env entries (Linux allows 2 MiB in all)",
    )
    max_name_chars: int = Field(
        4096, ge=256, description="names, tag keys and values, paths, env names, image, workdir"
    )
    max_description_chars: int = Field(65536, ge=1024, description="task, input and output descriptions")
    max_url_chars: int = Field(65536, ge=2048, description="inputs[].url and outputs[].url")
    idempotency_ttl_seconds: float = Field(
        86400.0,
        gt=0,
        description="how long POST /tasks remembers an Idempotency-Key (a retry returns the first task)",
    )
    workers: int = Field(
        0,
        ge=0,
        le=256,
        description="0: one process runs the API and the engine; N >= 1: `serve` runs the API in N processes "
        "sharing the socket and the engine in its own process (docs/deploy.md)",
    )
    access_log: bool = Field(True, description="one INFO line per HTTP request (uvicorn's access log)")


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
    sqlite_synchronous: Literal["FULL", "NORMAL"] = Field(
        "FULL", description="FULL: an answered create survives a power loss; NORMAL: fewer fsyncs"
    )


class PulsarStatusSettings(_Section):
    poll_interval: float = Field(2.0, gt=0)  # seconds between REST status polls of one running job
    # Accepted for compatibility and ignored: tasks are never given up after N polls.
    max_polls: int | None = None


class PulsarServer(_Section):
    name: str = "default"
    url: str | None = None  # REST: http(s)://host:port
    amqp_url: SecretStr | None = None  # AMQP mode when set
    private_token: SecretStr | None = None
    uds: str | None = Field(
        None,
        description="REST over this Unix socket (Pulsar bound to `unix:<path>`); `url` then only names the Host "
        "header. Executors cannot reach a socket file they cannot see (docs/security.md)",
    )
    manager: str = "_default_"
    amqp_key_prefix: str | None = None
    # AMQP remote staging: the backend's own HTTP server, from which Pulsar GETs inputs and to which it
    # POSTs outputs. staging_listen = "host:port" it binds (default 127.0.0.1, a free port); staging_url =
    # where Pulsar reaches it (default: the bound address). See docs/amqp.md.
    staging_url: str | None = None
    staging_listen: str | None = None
    # Capacity and limits (docs/quotas.md). max_active: at most this many tasks in INITIALIZING or
    # RUNNING on this server, counted in the store over all workers (0 = no limit). max_cpu_cores /
    # max_ram_gb: the largest task this server takes; a task that fits no server is refused (400).
    max_active: int = Field(
        0, ge=0, description="tasks INITIALIZING/RUNNING here at most, all workers (0: no limit)"
    )
    max_cpu_cores: int | None = Field(None, ge=1, description="largest resources.cpu_cores this server takes")
    max_ram_gb: float | None = Field(None, gt=0, description="largest resources.ram_gb this server takes")

    @property
    def transport(self) -> Literal["amqp", "rest"]:
        """AMQP whenever ``amqp_url`` is set, whatever ``url`` says: tesp-api 0.2 did so, and its
        shipped settings.toml sets ``pulsar.url``, so a drop-in TESP_API_PULSAR__AMQP_URL must switch.
        To run REST and AMQP servers side by side, list them as separate ``pulsar.servers``."""
        return "amqp" if self.amqp_url is not None and self.amqp_url.get_secret_value() else "rest"


class PulsarHealthSettings(_Section):
    """Each worker probes every Pulsar server (REST: GET /healthz) and watches the outcome of real
    requests; a server that is down gets no new tasks (docs/quotas.md, "Routing")."""

    probe_interval: float = Field(
        10.0, ge=0, description="seconds between probes of one server (0: no probe)"
    )
    probe_timeout: float = Field(5.0, gt=0, description="a probe that takes longer counts as a failure")
    failures_to_down: int = Field(
        2, ge=1, description="consecutive failures (probes or requests) that mark a server down"
    )


class QuotaSettings(_Section):
    """Fair per-user quotas (docs/quotas.md): decided in the store when a task is claimed."""

    max_active_per_user: int = Field(
        0, ge=0, description="tasks INITIALIZING/RUNNING per owner at most, all workers (0: no limit)"
    )
    per_user: dict[str, int] = Field(
        default_factory=dict,
        description="overrides of max_active_per_user by owner subject, e.g. {alice = 50} (0: no limit)",
    )

    @field_validator("per_user")
    @classmethod
    def _non_negative(cls, value: dict[str, int]) -> dict[str, int]:
        bad = sorted(k for k, v in value.items() if v < 0)
        if bad:
            raise ValueError(f"quotas.per_user: negative limit for {', '.join(bad)}")
        return value

    def limit_for(self, subject: str | None) -> int:
        """The owner's limit (0: none); tasks without an owner (auth off) share the default."""
        if subject is not None and subject in self.per_user:
            return self.per_user[subject]
        return self.max_active_per_user


class PulsarSettings(_Section):
    # Single-server keys (compatible with tesp-api 0.2); used when `servers` is empty.
    url: str | None = "http://127.0.0.1:8913"
    amqp_url: SecretStr | None = None
    private_token: SecretStr | None = None
    uds: str | None = Field(None, description="REST over this Unix socket, not url's address (servers[].uds)")
    manager: str = "_default_"
    amqp_key_prefix: str | None = None
    client_timeout: float = Field(30.0, gt=0)
    status: PulsarStatusSettings = Field(default_factory=PulsarStatusSettings)
    servers: list[PulsarServer] = Field(default_factory=list)
    retries: int = Field(
        5,
        ge=0,
        description="deprecated and ignored: Pulsar calls are retried until unreachable_deadline "
        "(docs/engine.md, Retries)",
    )
    unreachable_deadline: float = Field(600.0, gt=0)  # seconds Pulsar may be unreachable before SYSTEM_ERROR
    lost_job_deadline: float = Field(
        120.0,
        gt=0,
        description="seconds a job Pulsar reports running may show no heartbeat before it counts as lost "
        "(REST: Pulsar restarted under it; docs/engine.md, Crash runs); REST: also how long a job Pulsar "
        "reports queued whose runner never started waits before it is submitted once more; AMQP: how long "
        "Pulsar may answer preprocessing with no other update before the setup is sent once more (and "
        "as long again before the job counts as lost)",
    )
    keep_job_directories: bool = False  # debugging: do not DELETE the Pulsar job at the end
    amqp_reconcile_after: float = Field(60.0, gt=0)  # AMQP: ask for status when silent this long
    amqp_reconcile_max_per_minute: int = Field(300, ge=1)  # AMQP: cap on those status requests, all jobs
    staging_url: str | None = None  # AMQP remote staging, single-server form (see PulsarServer)
    staging_listen: str | None = None
    staging_dir: str | None = Field(
        None,
        description="AMQP: where staged inputs and the outputs Pulsar uploads are kept (default "
        "<engine.work_dir>/pulsar-received); replicas on several hosts must share it (docs/amqp.md)",
    )
    health: PulsarHealthSettings = Field(default_factory=lambda: PulsarHealthSettings())
    routing: Literal["least_loaded", "tightest_fit"] = Field(
        "least_loaded",
        description="which of the servers that can take a task wins: least_loaded (load vs capacity, "
        "for several sites) or tightest_fit (the smallest max_cpu_cores/max_ram_gb that fit, for one "
        "Slurm manager per resource class; ties by load). docs/quotas.md, Routing",
    )

    def effective_servers(self) -> list[PulsarServer]:
        if self.servers:
            return self.servers
        return [
            PulsarServer(
                name="default",
                url=self.url,
                amqp_url=self.amqp_url,
                private_token=self.private_token,
                uds=self.uds,
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
    rerun_lost: int = Field(
        0,
        ge=0,
        description="re-run a task whose Pulsar job was lost after it started (Pulsar restarted, the job's "
        "process died) up to this many times, each stated in system_logs; 0: it ends PREEMPTED (docs/engine.md)",
    )
    # backend_parameters keys this service understands (case-insensitive).
    backend_parameters: list[str] = Field(default_factory=lambda: ["pulsar_server"])


RuntimeType = Literal["auto", "docker", "podman", "apptainer", "singularity", "bwrap"]


class RuntimeSettings(_Section):
    """How executors run on the Pulsar host (docs/runtimes.md). The runtime CLI runs inside the Pulsar job with
    a clean environment: PATH and ``env`` only, never the task's env."""

    type: RuntimeType = "auto"
    docker_bin: str = "docker"
    podman_bin: str = "podman"
    apptainer_bin: str = "apptainer"
    singularity_bin: str = "singularity"
    bwrap_bin: str = "bwrap"
    extra_args: list[str] = Field(
        default_factory=list,
        description="added to the run command of WHATEVER runtime is used (before the image; bwrap: before --); "
        "prefer the per-runtime *_args",
    )
    docker_args: list[str] = Field(
        default_factory=list, description="extra `docker run` options (docker only)"
    )
    podman_args: list[str] = Field(
        default_factory=list, description="extra `podman run` options (podman only)"
    )
    bwrap_args: list[str] = Field(default_factory=list, description="extra bwrap options (bwrap only)")
    apptainer_args: list[str] = Field(
        default_factory=list,
        description="extra `apptainer/singularity exec` options (apptainer, singularity)",
    )
    pull_policy: Literal["missing", "always", "never"] = "missing"
    network: Literal["none", "host", "bridge"] = Field(
        default="none",
        description="executors' network: none (default; bwrap --unshare-net, docker/podman --network none), "
        "host, or bridge (docker/podman; bwrap treats it as host)",
    )
    allow_task_network: bool = Field(
        default=False,
        description='a task may ask for "host"/"bridge" with resources.backend_parameters {"network": ...}',
    )
    cap_add: list[str] = Field(
        default_factory=list,
        description="capabilities given back after --cap-drop ALL (docker, podman, bwrap)",
    )
    user: str | None = Field(
        default=None, description="docker/podman --user (uid[:gid]) for every executor; empty = image's"
    )
    pids_limit: int = Field(default=4096, ge=0, description="docker/podman --pids-limit (0 = no limit)")
    env: dict[str, str] = Field(
        default_factory=dict,
        description="environment of the runtime CLI in the Pulsar job (e.g. DOCKER_HOST, CONTAINERS_CONF, "
        "CONTAINERS_STORAGE_CONF; PATH overrides the default)",
    )
    runner_python: str = Field(
        default="python3", description="Python (>= 3.8) that runs the job runner on the Pulsar host"
    )
    bind_host_paths: list[str] = Field(
        default_factory=list,
        description="extra host paths bwrap binds read-only at the same place (e.g. a venv)",
    )
    sandbox_user: str = Field(
        default="65534:65534",
        description="bwrap: uid:gid the executors run as when the runner runs as root (never root on the host); "
        "empty = keep root's uid (unsafe: the host's device nodes are then writable by their owner)",
    )

    @field_validator("cap_add")
    @classmethod
    def _caps(cls, value: list[str]) -> list[str]:
        out = []
        for cap in value:
            name = cap.strip().upper()
            name = name if name.startswith("CAP_") else "CAP_" + name
            if not re.fullmatch(r"CAP_[A-Z_]+", name):
                raise ValueError(f"not a capability name: {cap!r}")
            out.append(name)
        return out

    @field_validator("sandbox_user")
    @classmethod
    def _uid_gid(cls, value: str) -> str:
        if value and not re.fullmatch(r"[1-9][0-9]*:[1-9][0-9]*", value.strip()):
            raise ValueError(f"sandbox_user must be 'uid:gid' (numbers, not 0) or empty, got {value!r}")
        return value.strip()

    @field_validator("bind_host_paths")
    @classmethod
    def _abs(cls, value: list[str]) -> list[str]:
        for path in value:
            if not path.startswith("/") or ".." in path.split("/"):
                raise ValueError(f"bind_host_paths: {path!r} must be absolute, without '..'")
        return value


class HttpCredential(_Section):
    host: str = Field(description='exact host name, optionally with port ("data.example.org:8443")')
    headers: dict[str, SecretStr] = Field(
        default_factory=dict, description="extra request headers for this host"
    )
    bearer_token: SecretStr | None = Field(None, description="sent as `Authorization: Bearer ...`")
    username: str | None = Field(None, description="HTTP basic auth (when no bearer_token)")
    password: SecretStr | None = None


class FtpCredential(_Section):
    host: str = Field(description="host name, optionally with port; used when the URL has no user:password@")
    username: str = "anonymous"
    password: SecretStr | None = None


class S3Credential(_Section):
    bucket: str | None = Field(None, description="the bucket this entry is for; empty = every other bucket")
    endpoint_url: str | None = Field(None, description="S3-compatible endpoint (MinIO, Ceph...); empty = AWS")
    region: str | None = None
    access_key_id: SecretStr | None = Field(None, description="empty = boto3's default credential chain")
    secret_access_key: SecretStr | None = None
    session_token: SecretStr | None = None


class TransferSettings(_Section):
    allowed_dirs: list[str] = Field(
        default_factory=list,
        description="file:// URLs and plain paths are accepted only inside these (symlinks and .. resolved)",
    )
    http: list[HttpCredential] = Field(default_factory=list, description="credentials per http(s) host")
    ftp: list[FtpCredential] = Field(default_factory=list, description="credentials per FTP host")
    s3: list[S3Credential] = Field(default_factory=list, description="endpoint, region and keys per bucket")
    timeout: float = Field(60.0, gt=0, description="seconds: connect and per-read timeout of each transfer")
    retries: int = Field(
        3, ge=0, description="retries per file after a transient failure (5xx, timeout, refused)"
    )
    chunk_bytes: int = Field(8 * MIB, ge=64 * KIB, description="streaming buffer and S3 multipart part size")
    signed_url_ttl: float = Field(
        86400.0, gt=0, description="seconds a presigned S3 URL or staging token given to Pulsar stays valid"
    )
    schemes: list[Scheme] = Field(
        default_factory=lambda: list(ALL_SCHEMES),
        description='URL schemes accepted for inputs and outputs ("file" also covers plain absolute paths)',
    )
    retry_backoff: float = Field(
        0.5, ge=0, description="first retry delay (s); doubles per attempt, at most 30 s"
    )
    s3_max_concurrency: int = Field(10, ge=1, description="boto3 threads per multipart S3 transfer")
    follow_redirects: bool = Field(
        True, description="http(s) GET follows redirects; each host gets only its own credentials"
    )
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description=(
            "hosts transfers may reach although they are loopback/private/link-local (SSRF guard): exact "
            'host names, "host:port", IPs or CIDRs, e.g. ["minio.internal:9000", "10.1.0.0/16"]; the '
            "control plane (Pulsar, broker, staging, this API) stays refused"
        ),
    )
    denied_hosts: list[str] = Field(
        default_factory=list,
        description=(
            "more endpoints transfers must never reach, even when allowed_hosts covers them (e.g. a "
            'broker management port elsewhere: "rabbit.internal:15672"); same forms as allowed_hosts'
        ),
    )
    resolve_timeout: float = Field(
        5.0,
        gt=0,
        description="seconds for one host-name lookup of the SSRF check (at create and per connection)",
    )

    @field_validator("allowed_hosts", "denied_hosts")
    @classmethod
    def _host_rules(cls, v: list[str]) -> list[str]:
        from tesp_api.transfer.host_rules import parse_rule  # stdlib only; no cycle

        for entry in v:
            try:
                parse_rule(entry)
            except ValueError as exc:
                raise ValueError(f"{entry!r} is not a host name, host:port, IP or CIDR ({exc})") from None
        return v


# Signature algorithms a JWT may use: asymmetric only. "none" and the HS* family are never accepted
# (an HS* token "signed" with the issuer's public key would otherwise pass as genuine).
OIDC_ALLOWED_ALGORITHMS = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
)


class BasicUser(_Section):
    """One user for HTTP Basic authentication."""

    username: str = Field(min_length=1, description="login name; the owner recorded on this user's tasks")
    password_hash: SecretStr = Field(description="made by `tesp-api hash-password`; never a plain password")
    admin: bool = Field(False, description="sees and cancels every user's tasks")

    @field_validator("username")
    @classmethod
    def _no_colon(cls, v: str) -> str:
        if ":" in v:
            raise ValueError("a Basic username cannot contain ':'")
        return v

    @field_validator("password_hash")
    @classmethod
    def _is_a_hash(cls, v: SecretStr) -> SecretStr:
        from tesp_api.auth.passwords import InvalidPasswordHash, parse_hash  # stdlib only; no cycle

        try:
            parse_hash(v.get_secret_value())
        except InvalidPasswordHash as exc:
            raise ValueError(f"password_hash: {exc}") from None
        return v


class OidcIssuer(_Section):
    """One trusted OpenID Connect issuer. Tokens from issuers not listed are refused."""

    issuer: str = Field(description="the exact `iss` value of its tokens (also where discovery is found)")
    audience: list[str] = Field(
        default_factory=list, description="required: a token's `aud` must contain one of these"
    )
    algorithms: list[str] = Field(
        default_factory=lambda: ["RS256", "ES256", "PS256", "EdDSA"],
        description=f"accepted signature algorithms, among {', '.join(OIDC_ALLOWED_ALGORITHMS)}",
    )
    discovery_url: str | None = Field(None, description="default: {issuer}/.well-known/openid-configuration")
    jwks_url: str | None = Field(None, description="the JWKS URL, skipping discovery")
    admin_subjects: list[str] = Field(
        default_factory=list, description="`sub` values of this issuer who are admins"
    )

    @field_validator("audience", mode="before")
    @classmethod
    def _audience_one_or_many(cls, v: object) -> object:
        return [v] if isinstance(v, str) else v

    @model_validator(mode="after")
    def _audience_required(self) -> OidcIssuer:
        if not [a for a in self.audience if a]:
            raise ValueError(
                f"auth.issuers: {self.issuer}: audience is required: the client id (or API audience) your "
                "tokens are issued for, so that tokens meant for other applications of the issuer are refused"
            )
        return self

    @field_validator("algorithms")
    @classmethod
    def _asymmetric_only(cls, v: list[str]) -> list[str]:
        bad = [a for a in v if a not in OIDC_ALLOWED_ALGORITHMS]
        if bad or not v:
            raise ValueError(
                f"algorithms must be among {', '.join(OIDC_ALLOWED_ALGORITHMS)} (got {bad or v})"
            )
        return v


class AuthSettings(_Section):
    """Who may call the API (see docs/auth.md). "none" is for local use only."""

    mode: list[AuthMode] = Field(
        default_factory=lambda: list(NO_AUTH), description='"none", or "basic" and/or "oidc"'
    )
    users: list[BasicUser] = Field(default_factory=list, description="Basic users")
    issuers: list[OidcIssuer] = Field(default_factory=list, description="the OIDC issuer allowlist")
    admin_claim: str = Field("groups", description="token claim (dotted path) whose values can make an admin")
    admin_values: list[str] = Field(
        default_factory=list, description="values of admin_claim that make an admin"
    )
    admin_subjects: list[str] = Field(
        default_factory=list, description="subjects (Basic username or token `sub`) who are admins"
    )
    service_info_public: bool = Field(True, description="service-info answers without credentials")
    realm: str = Field("tesp-api", description="realm named in WWW-Authenticate challenges")
    leeway_seconds: float = Field(30.0, ge=0, description="clock skew allowed for exp/nbf/iat")
    jwks_min_refresh_seconds: float = Field(
        30.0, ge=0, description="at most one JWKS refetch per issuer this often (unknown `kid`)"
    )
    jwks_max_age_seconds: float = Field(
        3600.0, gt=0, description="keys are refetched when older (so removed keys stop working)"
    )
    http_timeout: float = Field(5.0, gt=0, description="seconds for each request to an issuer")
    insecure_http_hosts: list[str] = Field(
        default_factory=list,
        description="hosts whose discovery and JWKS may be fetched over plain http (tests only); others need https",
    )
    password_hash_threads: int = Field(
        2,
        ge=1,
        le=64,
        description="threads of the pool that checks Basic passwords (scrypt), apart from others",
    )
    password_hash_queue: int = Field(
        64, ge=1, description="password checks waiting at once; more are answered 503 with Retry-After"
    )
    login_failures_before_throttle: int = Field(
        5,
        ge=1,
        description="wrong passwords for one user before its logins are throttled (429 + Retry-After)",
    )
    login_address_failures_before_throttle: int = Field(
        50, ge=1, description="failed logins from one client address (IPv6: its /64) before it is throttled"
    )
    login_throttle_seconds: float = Field(
        1.0, gt=0, description="first throttle delay; doubles with each further failure"
    )
    login_throttle_max_seconds: float = Field(300.0, gt=0, description="the longest throttle delay")
    login_failure_memory_seconds: float = Field(
        900.0, gt=0, description="failures older than this (since the last one) are forgotten"
    )

    @field_validator("mode", mode="before")
    @classmethod
    def _one_or_many(cls, v: object) -> object:
        return [v] if isinstance(v, str) else v

    @field_validator("mode")
    @classmethod
    def _none_alone(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError('mode is empty: use "none", or "basic" and/or "oidc"')
        if "none" in v and len(set(v)) > 1:
            raise ValueError('"none" cannot be combined with "basic" or "oidc"')
        return list(dict.fromkeys(v))

    @model_validator(mode="after")
    def _unique_names(self) -> AuthSettings:
        names = [u.username for u in self.users]
        issuers = [i.issuer for i in self.issuers]
        if len(set(names)) != len(names):
            raise ValueError("auth.users: a username is listed twice")
        if len(set(issuers)) != len(issuers):
            raise ValueError("auth.issuers: an issuer is listed twice")
        return self


class LegacyBasicAuth(_Section):
    """tesp-api 0.2's ``[basic_auth]``: accepted with a password_hash; a plain password is refused with a
    hint (see docs/auth.md). The user it names is an admin, as it saw every task in 0.2."""

    enable: bool = False
    username: str | None = None
    password: SecretStr | None = Field(None, description="refused when enable = true: use password_hash")
    password_hash: SecretStr | None = Field(None, description="made by `tesp-api hash-password`")

    @model_validator(mode="after")
    def _hash_not_plain(self) -> LegacyBasicAuth:
        if not self.enable:
            return self
        if self.password is not None:
            raise ValueError(
                "basic_auth.password holds a plain-text password, which is no longer accepted: run "
                "`tesp-api hash-password`, put what it prints in basic_auth.password_hash and delete "
                "basic_auth.password"
            )
        if not self.username or self.password_hash is None:
            raise ValueError(
                "basic_auth.enable = true needs basic_auth.username and basic_auth.password_hash"
            )
        BasicUser(username=self.username, password_hash=self.password_hash)  # same checks as auth.users
        return self


class LegacyOauth(_Section):
    """tesp-api 0.2's ``[oauth]``: enable = true now needs the issuer to trust and the audience (see
    docs/auth.md); it adds that issuer to auth.issuers."""

    enable: bool = False
    issuer: str | None = None
    audience: str | None = None

    @model_validator(mode="after")
    def _issuer_named(self) -> LegacyOauth:
        if self.enable and not (self.issuer and self.audience):
            raise ValueError(
                "oauth.enable = true needs oauth.issuer (the one issuer to trust) and oauth.audience "
                "(the client id tokens are issued for); better: use auth.mode and auth.issuers"
            )
        return self


class CallbackSettings(_Section):
    """Signed status callbacks (docs/callbacks.md): a task's ``callback_url`` is POSTed the task's BASIC
    view on every state change, signed per Standard Webhooks, from an outbox in the task store."""

    secret: SecretStr | None = Field(
        None,
        description="signing key, whsec_<base64 of 24..64 random bytes>; empty: callback_url is refused (400)",
    )
    allowed_prefixes: list[str] = Field(
        default_factory=lambda: ["https://"],
        description="a callback_url must start with one of these; a prefix naming a host (https://h:port/...) "
        "also allows that host when it is private or loopback; a bare scheme needs a public address",
    )
    events: list[str] = Field(
        default_factory=list,
        description='states that are sent (e.g. ["COMPLETE", "EXECUTOR_ERROR"]); empty: all',
    )
    max_attempts: int = Field(
        10, ge=1, description="deliveries tried per event before it is dropped (logged)"
    )
    backoff_initial: float = Field(
        1.0, gt=0, description="seconds before the first retry; doubles, with jitter"
    )
    backoff_max: float = Field(600.0, gt=0, description="longest wait between two attempts (s)")
    timeout: float = Field(10.0, gt=0, description="seconds one POST may take (connect + answer)")
    poll_interval: float = Field(1.0, gt=0, description="seconds between looks at the outbox when idle")
    lease_seconds: float = Field(60.0, gt=0, description="an event claimed by a replica is its own this long")
    concurrency: int = Field(16, ge=1, description="POSTs in flight at once per process")

    @field_validator("secret")
    @classmethod
    def _whsec(cls, value: SecretStr | None) -> SecretStr | None:
        import base64
        import binascii

        if value is None or not value.get_secret_value():
            return None
        text = value.get_secret_value()
        if not text.startswith("whsec_"):
            raise ValueError("callbacks.secret must start with whsec_ (Standard Webhooks)")
        try:
            key = base64.b64decode(text[len("whsec_") :], validate=True)
        except binascii.Error:
            raise ValueError("callbacks.secret: whsec_ must be followed by base64") from None
        if not 24 <= len(key) <= 64:
            raise ValueError(f"callbacks.secret: the key must be 24 to 64 bytes, not {len(key)}")
        return value

    @field_validator("events")
    @classmethod
    def _states(cls, value: list[str]) -> list[str]:
        from tesp_api.tes.models import TesState  # pydantic only: no cycle

        out = [v.strip().upper() for v in value]
        bad = [v for v in out if v not in TesState.__members__]
        if bad:
            raise ValueError(f"callbacks.events: not task states: {bad}")
        return list(dict.fromkeys(out))

    @field_validator("allowed_prefixes")
    @classmethod
    def _prefixes(cls, value: list[str]) -> list[str]:
        for prefix in value:
            if not prefix.lower().startswith(("https://", "http://")):
                raise ValueError(
                    f"callbacks.allowed_prefixes: {prefix!r} must start with https:// or http://"
                )
        return value


class RetentionSettings(_Section):
    """How long finished tasks are kept (docs/callbacks.md, "Retention")."""

    finished_max_age: float = Field(
        0.0,
        ge=0,
        description="seconds after its end a finished task is deleted, with its scratch (0: keep all)",
    )
    interval: float = Field(300.0, gt=0, description="seconds between two sweeps (one replica at a time)")
    batch_size: int = Field(500, ge=1, description="tasks deleted per store call")


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
    quotas: QuotaSettings = Field(default_factory=QuotaSettings)
    runtime: RuntimeSettings = Field(default_factory=RuntimeSettings)
    transfer: TransferSettings = Field(default_factory=TransferSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    basic_auth: LegacyBasicAuth = Field(default_factory=LegacyBasicAuth)
    oauth: LegacyOauth = Field(default_factory=LegacyOauth)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)
    callbacks: CallbackSettings = Field(default_factory=CallbackSettings)
    retention: RetentionSettings = Field(default_factory=RetentionSettings)

    @model_validator(mode="after")
    def _check(self) -> Settings:
        """Every Pulsar server must have a backend (a server without one would silently get no
        tasks), and names must be unique (tasks record the server by name)."""
        pulsar = self.pulsar
        if not pulsar.servers and not (pulsar.url or pulsar.amqp_url):
            raise ValueError("pulsar: set `pulsar.url` (REST) or `pulsar.amqp_url` (AMQP)")
        seen: set[str] = set()
        for index, server in enumerate(pulsar.servers):
            where = f"pulsar.servers[{index}] (name {server.name!r})"
            if not (server.url or (server.amqp_url and server.amqp_url.get_secret_value())):
                raise ValueError(f"{where}: needs `url` (REST) or `amqp_url` (AMQP)")
            if server.name in seen:
                raise ValueError(f"{where}: another server has this name; names must be unique")
            seen.add(server.name)
        return self

    @model_validator(mode="after")
    def _task_network(self) -> Settings:
        """With runtime.allow_task_network a task may ask for a network: the key is then supported."""
        keys = self.engine.backend_parameters
        if self.runtime.allow_task_network and "network" not in (k.lower() for k in keys):
            keys.append("network")
        return self

    @model_validator(mode="after")
    def _check_auth(self) -> Settings:
        effective_auth_settings(self)  # raises ValueError naming what is missing
        return self


def effective_auth_settings(settings: Settings) -> AuthSettings:
    """The auth settings actually in force: ``settings.auth`` plus tesp-api 0.2's ``[basic_auth]``
    user and ``[oauth]`` issuer; raises ValueError when a mode lacks what it needs (basic without
    users, oidc without issuers, an issuer URL that may not be fetched).

    One function, so that the settings check at start-up and the authenticator built later never
    disagree about who may log in. It lives here (re-exported by ``tesp_api.auth.effective``) so this
    module needs only stdlib-only leaves of tesp_api.auth (passwords.py, urls.py): config and auth
    do not import each other."""
    from tesp_api.auth.urls import fetched_urls, insecure_url_reason  # stdlib only; no cycle

    auth = settings.auth
    modes: list[str] = [m for m in auth.mode if m != "none"]
    users = list(auth.users)
    issuers = list(auth.issuers)
    legacy_basic = settings.basic_auth
    if legacy_basic.enable and legacy_basic.username and legacy_basic.password_hash is not None:
        if any(u.username == legacy_basic.username for u in users):
            raise ValueError(f"basic_auth.username {legacy_basic.username!r} is also listed in auth.users")
        # tesp-api 0.2 had one user who saw every task: keep that.
        users.append(
            BasicUser(username=legacy_basic.username, password_hash=legacy_basic.password_hash, admin=True)
        )
        modes.append("basic")
    legacy_oauth = settings.oauth
    if legacy_oauth.enable and legacy_oauth.issuer and legacy_oauth.audience:
        if not any(i.issuer == legacy_oauth.issuer for i in issuers):
            issuers.append(
                OidcIssuer.model_validate(
                    {"issuer": legacy_oauth.issuer, "audience": [legacy_oauth.audience]}
                )
            )
        modes.append("oidc")
    modes = list(dict.fromkeys(modes)) or ["none"]
    if "basic" in modes and not users:
        raise ValueError('auth.mode includes "basic" but no user is configured (auth.users)')
    if "oidc" in modes and not issuers:
        raise ValueError('auth.mode includes "oidc" but no issuer is configured (auth.issuers)')
    if "oidc" in modes:
        for issuer in issuers:
            for url in fetched_urls(issuer):
                reason = insecure_url_reason(url, auth.insecure_http_hosts)
                if reason:
                    raise ValueError(
                        f"auth.issuers: {issuer.issuer}: {reason}; for a test issuer only, list its host "
                        "in auth.insecure_http_hosts"
                    )
    return auth.model_copy(update={"mode": modes, "users": users, "issuers": issuers})
