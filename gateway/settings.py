"""One settings object for the gateway; every field can be set as ``PRISM_<NAME>``."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .draining import DEFAULT_GRACE_S, DEFAULT_TIMEOUT_S
from .shared_redis import as_cluster_url, check_redis_url


def _default_policy() -> Path:
    """The checkout's policies/default.yaml (an editable install, ``make serve``), else the
    one in the working directory (an installed wheel: the Docker image runs in /app)."""
    beside_code = Path(__file__).resolve().parent.parent / "policies" / "default.yaml"
    return beside_code if beside_code.exists() else Path("policies") / "default.yaml"


DEFAULT_POLICY = _default_policy()


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PRISM_", extra="ignore")

    policy: Path = Field(DEFAULT_POLICY, description="policy file (YAML)")
    #: relative model/catalogue paths in the policy resolve against this folder
    data_dir: Path = Field(default_factory=Path.cwd)
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    #: uvicorn worker processes sharing the port (``prism serve --workers``); each has its own
    #: in-process cache, policy watcher and metrics, Redis (when set) is shared
    workers: int = Field(1, ge=1)
    #: Redis shared by all replicas; unset = in-process cache. ``redis://host:port/0`` for one
    #: server, ``redis+cluster://host:port[,host:port...]`` for a Redis Cluster
    redis_url: str | None = None
    #: treat a plain ``redis://`` url as a Redis Cluster seed (same as ``redis+cluster://``)
    redis_cluster: bool = False
    cache_max_bytes: int = Field(256 * 2**20, ge=0)
    cache_max_entries: int = Field(100_000, ge=0)
    #: store cached embeddings as float16 (half the memory, ~1e-3 relative error)
    cache_half: bool = False
    max_body_bytes: int = Field(16 * 2**20, ge=1024, description="larger bodies get 413")
    max_inputs: int = Field(256, ge=1, description="most inputs one request may carry")
    #: watch the policy file and reload on change (seconds between checks; 0 = off)
    policy_watch_s: float = Field(2.0, ge=0)
    #: API keys accepted as ``Authorization: Bearer``; empty = no auth
    api_keys: list[str] = Field(default_factory=list)
    #: keys for ``/admin/*`` only (and everything else); empty = admin takes ``api_keys``
    admin_keys: list[str] = Field(default_factory=list)
    #: callers must send a key; unset = yes once ``api_keys`` or ``admin_keys`` are set
    require_key: bool | None = None
    #: managed keys without Redis (default: ``.<policy file name>.keys.json``, mode 0600)
    keys_file: Path | None = None
    #: when Redis (keys and limits) cannot be reached: ``fail_open`` serves known keys under
    #: each process's own limits, ``fail_closed`` refuses managed keys with 503
    limits_on_store_down: Literal["fail_open", "fail_closed"] = "fail_open"
    #: the admin audit log without Redis (default: ``.<policy file name>.audit.jsonl``, 0600)
    audit_file: Path | None = None
    #: without Redis, experiment figures and guardrail stops are kept in this JSON file so a
    #: restart does not forget them (default: ``.<policy file name>.experiments.json`` next
    #: to the policy); ``experiments_persist=false`` keeps them in memory only
    experiments_file: Path | None = None
    experiments_persist: bool = True
    #: without Redis, label moves and unloaded versions made through ``/admin/models`` are
    #: kept in this JSON file (default: ``.<policy file name>.overrides.json`` next to the
    #: policy), shared by the workers of one host and kept across restarts
    overrides_file: Path | None = None
    #: how often a replica checks for overrides another replica changed (seconds)
    overrides_poll_s: float = Field(0.5, gt=0, le=1.0)
    #: the longest an unload waits for the calls in flight on a version before freeing it
    unload_drain_s: float = Field(30.0, ge=0, le=600)
    #: on SIGTERM, seconds /readyz answers 503 while requests are still served, so that load
    #: balancers move away before the listener closes (``prism serve --drain-grace-s``)
    drain_grace_s: float = Field(DEFAULT_GRACE_S, ge=0)
    #: then the longest wait for in-flight requests before they are cancelled
    drain_timeout_s: float = Field(DEFAULT_TIMEOUT_S, ge=0)
    #: answer ``POST /v1/infer``, ``/v1/embeddings`` and ``/v2/models/{m}/infer`` on the fast
    #: lane, in front of the framework (``gateway/lane.py``); false: every request through it
    fast_lane: bool = True
    #: load local models in the lifespan (tests of pure routing can switch it off)
    load_models: bool = True
    log_level: str = "INFO"

    def overrides_state(self) -> Path | None:
        """Where a gateway without Redis keeps its overrides."""
        if self.redis_url:
            return None
        return self.overrides_file or self.policy.with_name(f".{self.policy.name}.overrides.json")

    @model_validator(mode="after")
    def _redis_target(self) -> Settings:
        """One url downstream: ``redis_cluster`` folds into it; a bad url fails at start."""
        if self.redis_url:
            url = as_cluster_url(self.redis_url) if self.redis_cluster else self.redis_url
            self.redis_url = check_redis_url(url)
        return self

    def experiments_state(self) -> Path | None:
        """Where a gateway without Redis keeps its experiment state; None = memory only."""
        if self.redis_url or not self.experiments_persist:
            return None
        return self.experiments_file or self.policy.with_name(
            f".{self.policy.name}.experiments.json"
        )

    def keys_path(self) -> Path:
        """Where a gateway without Redis keeps its managed keys."""
        return self.keys_file or self.policy.with_name(f".{self.policy.name}.keys.json")

    def audit_path(self) -> Path:
        """Where a gateway without Redis appends its audit log."""
        return self.audit_file or self.policy.with_name(f".{self.policy.name}.audit.jsonl")
