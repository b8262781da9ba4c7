"""A deployment: which catalog models run as which workers, and how the router serves them.

This is the one settings object the launcher, the router and the scripts share. It is built by
`serving.config.loader.load_config`, which also resolves each worker's catalog entry and engine
arguments so nothing downstream has to look anything up again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, IPvAnyNetwork, model_validator

from serving.config.catalog import ModelEntry, Strict
from serving.config.engines import DiffusersArgs, TtsArgs, VllmArgs, WhisperArgs


class Limits(Strict):
    """Per-key rate limits, each a token bucket refilled over a minute (unset: unlimited)."""

    requests_per_minute: int | None = Field(
        description="Requests a key may start per minute (a token bucket refilled over the "
        "minute); unset: no request limit.",
        default=None, ge=1)
    tokens_per_minute: int | None = Field(
        default=None, ge=1,
        description="Prompt plus max_tokens, reserved on admission and settled against the "
        "actual usage afterwards.")


class ApiKey(Strict):
    """A key as stored in config: never in clear. Either its SHA-256, or the name of an
    environment variable that holds the key itself (for secrets managers)."""

    name: str = Field(
        description="The key's name, unique: it labels usage rows, metrics and logs in place "
        "of the key.",
        min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._@-]+$")
    sha256: str | None = Field(
        description="Hex SHA-256 of the key (as `serving keys create` prints it); set this or "
        "`env`.",
        default=None, pattern=r"^[0-9a-f]{64}$")
    env: str | None = Field(
        default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="Environment variable holding the key itself (e.g. from a Kubernetes "
        "Secret); set this or `sha256`. The key stays out of config files.")
    models: list[str] | None = Field(
        default=None, description="Model ids or aliases this key may use; unset: all.")
    limits: Limits | None = Field(
        default=None, description="This key's own rate limits, replacing the router's "
        "`default_limits` for it; set them for a tenant that needs more or less than the rest.")
    admin: bool = Field(
        default=False, description="An operator's key: may read /v1/usage and /metrics and "
        "ask for a reload (/v1/admin/reload); other keys get a 403 there. Keep it off for "
        "tenants.")
    cache_group: str | None = Field(
        default=None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._@-]+$",
        description="Keys with the same cache_group share vLLM's prompt (prefix) cache, and "
        "so can tell from cached token counts what prompts the others sent. Unset: the key "
        "has a cache of its own.")

    @model_validator(mode="after")
    def _one_source(self) -> ApiKey:
        if (self.sha256 is None) == (self.env is None):
            raise ValueError("a key needs exactly one of `sha256` or `env`")
        return self


class Timeouts(Strict):
    connect_s: float = Field(
        description="Time to open a connection to a worker; past it the request goes to "
        "another replica or fails with 503.",
        default=5.0, gt=0)
    chat_s: float = Field(
        description="Time allowed between two bytes from a chat worker (a whole non-streamed "
        "answer, or the gap between two streamed chunks) before the client gets a "
        "504.",
        default=600.0, gt=0)
    image_s: float = Field(
        description="A whole image request; past it the client gets a 504 and the worker "
        "stops at its next denoising step.",
        default=300.0, gt=0)
    audio_s: float = Field(
        description="A whole speech or transcription request before the client gets a 504; "
        "raise it for long files on slow hardware.",
        default=300.0, gt=0)


class VideoJobs(Strict):
    """Asynchronous video jobs, kept in `router.database` (SQLite under `state_dir` by
    default); their MP4s in `router.artifacts`.

    A router replica that takes a job holds a lease on it and renews it while it renders; a
    replica that dies stops renewing, and once the lease runs out any replica takes the job.
    """

    retention_s: int = Field(
        default=86400, ge=60,
        description="Seconds from a job's creation until it and its MP4 are deleted (404 "
        "after); raise it when clients fetch their videos late, lower it to save storage.")
    max_queued_per_key: int = Field(
        description="Video jobs one key may have queued or rendering; past it a new job is a "
        "429.",
        default=8, ge=1)
    max_attempts: int = Field(
        default=2, ge=1,
        description="Renders tried when the video worker is down or dies mid-render before "
        "the job fails with `worker_unavailable` (a render that fails on its own fails at "
        "once); raise it where workers restart often.")
    lease_s: float = Field(
        default=30.0, gt=0,
        description="How long a replica's claim on a job lasts without renewal: the time a "
        "job waits after its replica died before another takes it over.")
    heartbeat_s: float = Field(
        default=10.0, gt=0,
        description="How often a replica renews its leases; well under `lease_s`, so a slow "
        "database round trip does not lose a lease.")
    upload_retry_max_s: float = Field(
        default=30.0, gt=0,
        description="A finished render the artifact store refused is kept and uploaded "
        "again, with backoff doubling up to this interval, until the store takes it.")

    @model_validator(mode="after")
    def _heartbeat_within_lease(self) -> VideoJobs:
        if self.heartbeat_s >= self.lease_s:
            raise ValueError(f"heartbeat_s ({self.heartbeat_s}) must be shorter than lease_s "
                             f"({self.lease_s})")
        return self


class LedgerConfig(Strict):
    """How the usage ledger writes and keeps its rows (in `router.database`)."""

    flush_interval_s: float = Field(
        default=1.0, gt=0, le=60,
        description="Rows are written in batches off the event loop, at least this often.")
    max_buffered: int = Field(
        default=100_000, ge=1000,
        description="Rows held in memory while the database is unreachable. Past this the "
        "oldest are dropped (each drop logged and counted in /metrics), so a long outage "
        "cannot exhaust memory; about 500 bytes a row.")
    retention_days: float | None = Field(
        default=None, gt=0,
        description="Rows older than this are deleted (hourly). Unset: kept forever.")


class ImageInputs(Strict):
    """How the router takes images in chat requests. It resolves each `image_url` itself (data
    URLs decoded, http(s) URLs fetched) and hands vLLM only checked data URLs, so no engine ever
    fetches a client's URL. Fetching is a server-side request: by default only public addresses
    are reached, every redirect is checked again, and size and time are bounded."""

    max_images_per_request: int = Field(
        description="Images one chat request may carry; more is a 400. 0 turns image inputs "
        "off.",
        default=8, ge=0)
    max_image_bytes: int = Field(default=10 * 1024 * 1024, ge=1024,
                                 description="Largest image, encoded, from a data URL or a fetch.")
    max_pixels: int = Field(default=40_000_000, ge=1,
                            description="Largest image, decoded (width x height): a small file "
                            "that decodes to a huge bitmap is refused before it is decoded.")
    fetch_timeout_s: float = Field(
        default=10.0, gt=0,
        description="Time allowed to fetch an image URL, redirects included, before the "
        "request is a 400; raise it for slow image stores.")
    max_redirects: int = Field(
        description="HTTP redirects followed when fetching an image URL, each checked against "
        "the address guard again.",
        default=3, ge=0)
    allow_networks: list[IPvAnyNetwork] = Field(
        default_factory=list,
        description="Networks that URLs may reach although they are not public (private, "
        "loopback, link-local or reserved), e.g. `10.1.2.0/24` for an internal image store. "
        "Empty: public addresses only.")


class RouterConfig(Strict):
    host: str = Field(
        description="Address the router listens on; `0.0.0.0` to serve other machines (behind "
        "TLS or a load balancer).",
        default="127.0.0.1")
    port: int = Field(
        description="Port the router listens on for the OpenAI API.",
        default=8000, ge=0, le=65535)
    api_keys: list[ApiKey] = Field(
        description="Keys that may call the API, stored as SHA-256 hashes (`serving keys "
        "create` prints an entry); with none here or in SERVING_API_KEYS, "
        "`serving up` generates one.",
        default_factory=list)
    generated_key_file: Path = Field(
        description="Where `serving up` writes the key it generates when none is configured "
        "(mode 0600).",
        default=Path("~/.config/serving/api_key"))
    cors_origins: list[str] = Field(
        default_factory=list,
        description="Origins allowed to call the API from a browser. Empty: no CORS headers at "
        "all, since this is a server-to-server API.",
    )
    timeouts: Timeouts = Field(
        description="How long the router waits on workers before answering 504.",
        default_factory=Timeouts)
    max_connections_per_worker: int = Field(
        description="Open HTTP connections from one router process to one worker replica; "
        "raise it only when more requests than this are in flight to one replica.",
        default=1024, ge=1)
    max_body_bytes: int = Field(default=32 * 1024 * 1024, ge=1024,
                                description="Largest request body (transcription uploads have "
                                "their own limit, from the model's catalog entry).")
    videos: VideoJobs = Field(
        description="The video job queue: retention, per-key queue cap, retries and leases.",
        default_factory=VideoJobs)
    images: ImageInputs = Field(default_factory=ImageInputs,
                                description="Image inputs of chat requests (vision models).")
    default_limits: Limits = Field(
        default_factory=Limits,
        description="Limits of keys that set none, including those from SERVING_API_KEYS.")
    rate_limit_store: str = Field(
        default="memory", pattern=r"^(memory|rediss?://.+)$",
        description="`memory` (one router process) or a redis:// URL shared by replicas; its "
        "password from the URL or the REDIS_PASSWORD environment variable (which keeps it out "
        "of config files).")
    database: str | None = Field(
        default=None, pattern=r"^(sqlite|postgresql)(\+\w+)?://.*$",
        description="Where the usage ledger and the video jobs live: a SQLAlchemy URL, "
        "`sqlite:////abs/path.db` or `postgresql://user:pass@host:5432/db` (shared by router "
        "replicas). Unset: SQLite files under state_dir (usage.db, videos.db).")
    usage_db: Path | None = Field(
        default=None, description="With `database` unset: the ledger's SQLite file, relative "
        "to state_dir (default usage.db).")
    ledger: LedgerConfig = Field(
        description="The usage ledger's writer: flush interval, buffer bound during an "
        "outage, retention.",
        default_factory=LedgerConfig)
    artifacts: str | None = Field(
        default=None, pattern=r"^(s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?|file://.+)$",
        description="Where rendered videos are stored: `s3://BUCKET/PREFIX` (any S3-compatible "
        "store; credentials from the standard AWS environment variables) or `file:///path`. "
        "Unset: state_dir/videos.")
    artifacts_endpoint: str | None = Field(
        default=None, pattern=r"^https?://.+",
        description="The S3 endpoint URL of a store other than AWS (MinIO, SeaweedFS, R2...).")
    processes: int = Field(
        default=1, ge=1, le=256,
        description="Router processes `serving up` and `serving router` run on the one port "
        "(the kernel spreads connections). More than one needs a Redis `rate_limit_store`; "
        "the default SQLite files serve the processes of one node, and routers on several "
        "nodes need a PostgreSQL `database` and `artifacts` in S3.")
    metrics_port: int | None = Field(
        default=None, ge=0, le=65535,
        description="Also serve /metrics without a key on this port (bound to `host`); "
        "on the API port it needs an admin key.")
    shutdown_grace_s: float = Field(
        default=30.0, ge=0,
        description="On SIGTERM, requests in flight get this long to finish.")
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        description="Router log verbosity; `debug` logs every request's routing (never keys).",
        default="info")


class Routing(Strict):
    """Spreading requests over a worker's replicas. A chat pool goes through an existing
    cache-aware router (`engine`), started and supervised like a worker; media pools are
    spread by the router itself, to the replica with the fewest requests in flight."""

    policy: Literal["cache_aware", "round_robin", "power_of_two"] = Field(
        default="cache_aware",
        description="cache_aware: to the replica holding the longest prefix of the prompt "
        "in its KV cache, unless the load is unbalanced.")
    engine: Literal["vllm-router", "smg"] = Field(
        default="smg",
        description="Which cache-aware router runs in front of the chat pool (both are "
        "installed). `smg` sends a prompt no replica holds to the replica with the least "
        "cached text, so even one request at a time fills every replica; `vllm-router` sends "
        "it to the least loaded one, which in an idle pool is always the first. "
        "docs/benchmarks.md compares them.")
    cache_threshold: float = Field(
        default=0.5, ge=0, le=1,
        description="Least prefix match (share of the prompt) that routes by cache; below "
        "it the least loaded replica gets the request.")
    balance_abs_threshold: int = Field(
        default=2, ge=0,
        description="The load is unbalanced (and cache_aware sends to the least loaded "
        "replica) when a replica has this many more requests in flight than the pool's mean "
        "(smg) or than the idlest replica (vllm-router), and `balance_rel_threshold` times as "
        "many; lower it to favour balance over cache hits.")
    balance_rel_threshold: float = Field(
        default=1.5, ge=1,
        description="With `balance_abs_threshold`: how many times the mean's (smg) or the "
        "idlest replica's (vllm-router) requests in flight a replica must have for the load "
        "to count as unbalanced.")
    health_check_interval_s: float = Field(
        default=2.0, gt=0, description="A replica failing its health check leaves the pool "
        "until it passes again.")
    port: int | None = Field(default=None, ge=1, le=65535,
                             description="Port of the chat pool's router; unset: a free one "
                             "on each start. Set it only when something else must reach it.")


class WorkerConfig(Strict):
    model: str = Field(description="The model this worker serves: an `id` from the catalog "
                       "(models/*.yaml).")
    enabled: bool = Field(
        default=True, description="`false` runs no process for this worker and drops its "
        "models from the API; an overlay uses it to switch off a worker a base config runs.")
    engine_args: dict[str, Any] = Field(
        default_factory=dict, description="Engine settings for this deployment, over the "
        "catalog entry's `engine_defaults` key by key (see the engine_args sections below), "
        "e.g. `max_num_seqs` or `kv_cache_memory_bytes` for this machine."
    )
    port: int | None = Field(
        default=None, ge=1, le=65535,
        description="Internal port; if unset, a fresh free one on each start and restart."
    )
    gpus: list[int] | None = Field(
        default=None, description="GPU indices this worker may use (its CUDA_VISIBLE_DEVICES), "
        "split among its replicas; unset: all of them. Set it to keep workers on a shared "
        "node off each other's GPUs.")
    env: dict[str, str] = Field(
        description="Extra environment variables for the worker's processes (e.g. "
        "VLLM_CPU_OMP_THREADS_BIND); they override the launcher's.",
        default_factory=dict)
    startup_timeout_s: float = Field(
        description="How long a worker may take to become healthy before `serving up` gives "
        "up; raise it for big models on slow disks.",
        default=900.0, gt=0)
    max_in_flight: int = Field(
        default=256, ge=1,
        description="Requests in flight to this worker's model; past it the router answers "
        "503 with Retry-After at once instead of queueing without bound.")
    replicas: int = Field(
        default=1, ge=1, le=64,
        description="Local replicas `serving up` starts, each on its own port; `gpus` are "
        "split among them in order (gpus [0, 1] with 2 replicas: one GPU each).")
    endpoints: list[str] = Field(
        default_factory=list,
        description="Replicas that run elsewhere (pods, other nodes), as base URLs such as "
        "http://10.0.0.5:8001. When set, `serving up` and `serving router` start no local "
        "replica of this worker.")
    routing: Routing = Field(default_factory=lambda: Routing(),
                             description="How requests spread over several replicas.")
    drain_timeout_s: float = Field(
        default=120.0, ge=0,
        description="On a reload that removes or replaces this worker: how long its requests "
        "in flight (streams, renders) get to finish before its processes stop. The Helm "
        "chart gives a deleted pod the same time (its preStop drain; its grace period is this "
        "plus a margin).")
    reload_strategy: Literal["auto", "blue_green", "drain_first"] = Field(
        default="auto",
        description="How a reload replaces this worker when its model or engine args change. "
        "blue_green: the new processes start beside the old, and traffic moves once they are "
        "healthy (no failed request; needs memory for both). drain_first: the old stop "
        "first, and the model answers 503 `model_reloading` with Retry-After until the new "
        "ones serve. auto: blue_green, unless a CUDA config's memory plan cannot hold both.")

    # Filled in by the loader from the catalog.
    entry: ModelEntry | None = Field(
        description="Filled in by the loader from the catalog; not set in a config.",
        default=None, exclude=True)
    args: VllmArgs | DiffusersArgs | WhisperArgs | TtsArgs | None = Field(
        description="Filled in by the loader (catalog engine_defaults and this worker's "
        "engine_args); not set in a config.",
        default=None,
                                                                          exclude=True)

    @model_validator(mode="after")
    def _replicas(self) -> WorkerConfig:
        if self.endpoints and "replicas" in self.model_fields_set:
            raise ValueError("set `replicas` (started here) or `endpoints` (running "
                             "elsewhere), not both")
        for url in self.endpoints:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"endpoints: {url!r} is not an http(s):// URL")
        if self.gpus is not None and self.replicas > 1 and len(self.gpus) % self.replicas:
            raise ValueError(f"{len(self.gpus)} gpus cannot be split evenly among "
                             f"{self.replicas} replicas")
        if self.port is not None and self.replicas > 1:
            raise ValueError("a fixed `port` serves one replica; leave it unset with replicas")
        return self

    def replica_gpus(self, index: int) -> list[int] | None:
        """Replica `index`'s share of `gpus`."""
        if self.gpus is None:
            return None
        share = len(self.gpus) // self.replicas
        return self.gpus[index * share:(index + 1) * share]


class GpuSpec(Strict):
    """The GPUs a CUDA config plans for (`serving config check` adds each worker's memory up
    against them). Unset memory is read from the device, where one is present."""

    kind: str = Field(default="GPU", description="The GPU's name in the memory plan's "
                      "messages, e.g. `H100 80GB`; nothing else reads it.")
    count: int = Field(default=1, ge=1, description="GPUs on the node (indices 0..count-1) "
                       "that the memory plan spreads workers over; workers' `gpus` must be "
                       "among them.")
    memory_gib: float | None = Field(
        default=None, gt=0, description="Usable memory of each GPU, as the driver reports it.")
    memory_gib_per_gpu: dict[int, Annotated[float, Field(gt=0)]] = Field(
        default_factory=dict, description="GPU index -> usable GiB, for nodes whose GPUs "
        "differ in memory; the others take `memory_gib`.")
    headroom_gib: float = Field(
        default=2.0, ge=0, description="Planned peaks must leave this much free on each GPU "
        "(allocator fragmentation, the odd larger request).")


class Config(Strict):
    device: Literal["cpu", "cuda"] = Field(
        description="Where the workers run: `cpu` (vLLM's CPU build, the embedded default) or "
        "`cuda` (GPU configs; turns on the GPU memory plan and the driver check).",
        default="cpu")
    gpu: GpuSpec = Field(
        description="The node's GPUs, for the memory plan of a `cuda` config.",
        default_factory=GpuSpec)
    cache_dir: Path = Field(
        default=Path("~/.cache/serving"),
        description="Prepared model folders live here; SERVING_CACHE_DIR overrides it.",
    )
    state_dir: Path = Field(
        default=Path("~/.local/share/serving"),
        description="Router state: video jobs (SQLite) and their files, unless `router."
        "database` and `router.artifacts` put them elsewhere; SERVING_STATE_DIR overrides it.",
    )
    catalog_dir: Path = Field(
        default=Path("../models"), description="The catalog folder (models/*.yaml), "
        "relative to the config file that sets it; point it elsewhere to serve a catalog of "
        "your own."
    )
    router: RouterConfig = Field(
        description="The public HTTP router: listening address, keys, limits, stores, "
        "timeouts.",
        default_factory=RouterConfig)
    workers: dict[str, WorkerConfig] = Field(
        description="The workers to run, by name (chat, images, ...): each one catalog model, "
        "where and how it runs. At least one.",
        min_length=1)

    def models(self) -> list[ModelEntry]:
        return [w.entry for w in self.workers.values() if w.entry is not None]

