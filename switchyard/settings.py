"""Settings, read from the environment once, here and nowhere else.

| variable | default | meaning |
| --- | --- | --- |
| ``NATS_URL`` | ``nats://127.0.0.1:4222`` | the bus |
| ``SWITCHYARD_PREFIX`` | ``sy`` | subject prefix (several deployments on one NATS) |
| ``SWITCHYARD_DATA_DIR`` | ``.switchyard`` | keys, SQLite store, embedded NATS data, logs |
| ``SWITCHYARD_SUPERVISOR_SEED`` | ``<data dir>/supervisor.nk`` | the supervisor's signing key file |
| ``SWITCHYARD_TRUSTED_KEYS`` | (from the bus) | comma-separated grant issuer public keys |
| ``SWITCHYARD_CONCURRENCY`` | ``8`` | tasks one agent process runs at once |
| ``SWITCHYARD_ACK_WAIT`` | ``30`` | seconds before an unacknowledged task is redelivered |
| ``SWITCHYARD_MAX_DELIVER`` | ``5`` | deliveries of one task before it is given up |
| ``SWITCHYARD_WORKFLOWS`` | ``support`` | comma-separated workflow YAML files or built-in names |
| ``SWITCHYARD_NATS_SYNC`` | ``always`` | embedded server fsync: ``always`` or ``default`` (2 min) |
| ``SWITCHYARD_LOG_LEVEL`` | ``info`` | log level |
| ``SWITCHYARD_METRICS_PORT`` | ``0`` (off) | serve Prometheus ``/metrics`` at this port |
| ``SWITCHYARD_METRICS_ADDR`` | ``127.0.0.1`` | the address it listens on (``0.0.0.0`` in a container) |
| ``SWITCHYARD_POLICY`` | ``support`` | tool policy file or built-in name; ``none`` for none |
| ``SWITCHYARD_RETENTION_S`` | ``604800`` | seconds a finished workflow and a recorded tool call are kept |
| ``SWITCHYARD_TRAIL_MAX_AGE_S`` | ``2592000`` | seconds journals, tool calls, dead letters are kept |
| ``SWITCHYARD_REPLICAS`` | ``1`` | replicas (1..5) of the streams and buckets created (3 on 3 nodes) |
| ``SWITCHYARD_PUBLISH_TIMEOUT_S`` | ``10`` | seconds to wait for a publish's ack before retrying it |
| ``SWITCHYARD_AGENTS`` | ``reference`` | which built-in agents run: ``reference`` (local models) or ``llm`` |
| ``SWITCHYARD_MODEL_CATALOGUE`` | (built-in) | YAML file of named models, over the built-in catalogue |
| ``SWITCHYARD_MODEL`` | ``llm`` | the model an LLM agent calls when its step names none |
| ``SWITCHYARD_MODEL_BASE_URL`` | (none) | an OpenAI-compatible endpoint, as catalogue model ``llm`` |
| ``SWITCHYARD_MODEL_NAME`` | ``default`` | the provider's model id at that endpoint |
| ``SWITCHYARD_MODEL_CONTEXT`` | ``8192`` | that model's context size in tokens (the server's) |
| ``SWITCHYARD_MODEL_API_KEY`` | (none) | its API key (never logged) |
| ``SWITCHYARD_MODEL_CACHE_TTL_S`` | ``0`` (off) | cache temperature-0 model replies this long (KV) |
| ``SWITCHYARD_TRACE`` | ``1`` | ``0``: no spans at all (the benchmark's baseline) |
| ``SWITCHYARD_TRACE_CONTENT`` | ``0`` | ``1``: spans carry model messages and tool arguments, PII redacted |
| ``SWITCHYARD_NKEY_FILE`` | (none) | this process's nkey seed on a secured bus; its name is who |
| ``SWITCHYARD_UVLOOP`` | ``1`` | run on uvloop when it is installed; ``0`` for asyncio's loop |
| ``SWITCHYARD_USER`` (or ``USER``) | ``operator`` | who decides and replays, in audit records |
| ``SWITCHYARD_FAULTS`` | (none) | the chaos suite's fault plan (``switchyard.protocol.faults``) |
| ``SWITCHYARD_CONSOLE_PORT`` | ``8700`` | the web console's port (``switchyard console``, ``up``) |
| ``SWITCHYARD_CONSOLE_ADDR`` | ``127.0.0.1`` | the address it listens on |
| ``SWITCHYARD_CONSOLE_USERS`` | ``<data dir>/console-users`` | reviewers and their scrypt hashes |
| ``SWITCHYARD_CONSOLE_SECRET`` | (made once in the data dir) | what signs its session cookies |
| ``SWITCHYARD_CONSOLE_TRUSTED_PROXIES`` | (none) | SSO proxies whose user header is believed |
| ``SWITCHYARD_CONSOLE_USER_HEADER`` | ``X-Forwarded-User`` | the header naming the signed-in user |
| ``SWITCHYARD_CONSOLE_CLAIM_S`` | ``900`` | seconds a reviewer's claim holds |
| ``SWITCHYARD_CONSOLE_HTTPS_ONLY`` | ``0`` | ``1``: session cookies only over HTTPS |
| ``SWITCHYARD_A2A_PORT`` | ``8800`` | the A2A gateway's port (``switchyard a2a serve``) |
| ``SWITCHYARD_A2A_ADDR`` | ``127.0.0.1`` | the address it listens on |
| ``SWITCHYARD_A2A_URL`` | ``http://<addr>:<port>/`` | the URL its agent card names |
| ``SWITCHYARD_A2A_KEYS`` | ``<data dir>/a2a-keys`` | callers' keys (SHA-256) and their workflows |
| ``SWITCHYARD_A2A_WORKFLOWS`` | (all configured) | the workflows it offers, comma-separated |
| ``SWITCHYARD_A2A_MAX_BODY`` | ``1048576`` | the largest request body it reads, in bytes |
| ``SWITCHYARD_A2A_SETTLE_S`` | ``5`` | seconds after a run's end before any replica settles its task |
| ``SWITCHYARD_PARENT_PID`` | (none) | set by ``switchyard up``: stop when that process is gone |
"""

from __future__ import annotations

import contextlib
import os
import secrets
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

from pydantic import AliasChoices, Field, IPvAnyAddress, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from switchyard.agents import AgentConfig
from switchyard.agents.model.catalogue import Catalogue, load_catalogue
from switchyard.protocol import Subjects, grants
from switchyard.protocol.errors import ConfigError
from switchyard.protocol.faults import FaultPlan
from switchyard.supervisor import SupervisorConfig, Workflow, builtin_workflow, load_workflow
from switchyard.supervisor.authz import ADMIN
from switchyard.supervisor.policy import Policy, load_policy
from switchyard.tools import ToolHostConfig


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SWITCHYARD_", extra="ignore", populate_by_name=True)

    nats_url: str = Field(default="nats://127.0.0.1:4222", validation_alias="NATS_URL")
    prefix: str = "sy"
    data_dir: Path = Path(".switchyard")
    supervisor_seed: Path | None = None
    trusted_keys: str = ""
    concurrency: int = Field(default=8, ge=1, le=1024)
    ack_wait: float = Field(default=30.0, gt=0)
    max_deliver: int = Field(default=5, ge=1)
    workflows: str = ""
    nats_sync: Literal["always", "default"] = "always"
    log_level: Literal["debug", "info", "warning", "error", "critical",
                       "DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "info"
    metrics_port: int = Field(default=0, ge=0, le=65535)
    metrics_addr: IPvAnyAddress = IPv4Address("127.0.0.1")
    policy: str = "support"
    nkey_file: Path | None = None
    retention_s: float = Field(default=7 * 24 * 3600.0, gt=0)
    # how long journals, tool-call chains and dead letters are kept (for streams created here)
    trail_max_age_s: float = Field(default=30 * 24 * 3600.0, gt=0)
    # how long a process waits for the server's ack of a publish before it counts it failed (and
    # retries): on a cluster, how soon writes caught by a dead leader go to the new one
    publish_timeout_s: float = Field(default=10.0, gt=0, le=300)
    # the replication factor of the streams and buckets created here (existing ones keep theirs)
    replicas: int = Field(default=1, ge=1, le=5)
    agents: Literal["reference", "llm"] = "reference"
    model_catalogue: Path | None = None
    model: str = "llm"
    model_base_url: str = ""
    model_name: str = "default"
    model_context: int = Field(default=8192, gt=0)
    model_api_key: SecretStr = SecretStr("")
    model_cache_ttl_s: float = Field(default=0.0, ge=0)
    # the standard OpenTelemetry variables that say an exporter is wanted (the SDK reads them
    # all itself; these only decide whether to install it)
    otel_endpoint: str = Field(default="", validation_alias=AliasChoices(
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"))
    otel_traces_exporter: str = Field(default="", validation_alias="OTEL_TRACES_EXPORTER")
    trace: bool = True  # 0: no spans at all (what the benchmark measures tracing against)
    trace_content: bool = False  # 1: message contents on spans (the operator's opt-in)
    uvloop: bool = True
    # the web console (switchyard console)
    console_port: int = Field(default=8700, ge=0, le=65535)
    console_addr: IPvAnyAddress = IPv4Address("127.0.0.1")
    console_users: Path | None = None  # default: <data dir>/console-users
    console_secret: SecretStr = SecretStr("")  # default: <data dir>/console-secret, made once
    console_trusted_proxies: str = ""  # addresses or networks whose user header is believed
    console_user_header: str = "X-Forwarded-User"
    console_claim_s: float = Field(default=900.0, gt=0)
    console_https_only: bool = False
    # the A2A gateway (switchyard a2a serve)
    a2a_port: int = Field(default=8800, ge=0, le=65535)
    a2a_addr: IPvAnyAddress = IPv4Address("127.0.0.1")
    a2a_url: str = ""  # the URL callers reach it at (the card's); default http://addr:port/
    a2a_keys: Path | None = None  # default: <data dir>/a2a-keys
    a2a_workflows: str = ""  # the workflows it offers (comma-separated); empty: all configured
    a2a_max_body: int = Field(default=1_048_576, gt=0)
    a2a_settle_s: float = Field(default=5.0, ge=0)  # after a run's end, its replica's to say
    user: str = Field(default="operator",
                      validation_alias=AliasChoices("SWITCHYARD_USER", "USER"))
    parent_pid: int | None = None
    faults: str = ""
    fault_name: str = ""
    fault_run: int = 0

    def fault_plan(self) -> FaultPlan:
        return FaultPlan.parse(self.faults, name=self.fault_name, run=self.fault_run)

    @field_validator("nkey_file")
    @classmethod
    def _nkey_file_is_a_seed(cls, value: Path | None) -> Path | None:
        """The key must be there and be an nkey seed now, not a traceback at connect."""
        if value is None:
            return None
        import nkeys

        try:
            seed = bytearray(value.read_bytes().strip())
        except OSError as exc:
            raise ValueError(f"cannot read the key file {str(value)!r}: {exc.strerror}") from None
        try:
            nkeys.from_seed(seed)
        except Exception:
            raise ValueError(f"{str(value)!r} holds no nkey seed (`switchyard nats-config` "
                             "writes them)") from None
        return value

    @field_validator("model_catalogue")
    @classmethod
    def _catalogue_is_one(cls, value: Path | None) -> Path | None:
        """A catalogue that cannot be read or is invalid stops every command, not only the
        processes that call models (and not at their first call)."""
        if value is not None:
            load_catalogue(value)  # ConfigError, a ValueError: named with the variable
        return value

    @field_validator("model_base_url")
    @classmethod
    def _base_url_is_http(cls, value: str) -> str:
        if value and (urlparse(value).scheme not in ("http", "https") or
                      not urlparse(value).hostname):
            raise ValueError(f"{value!r} is not an http(s) URL (http://host:port/v1)")
        return value

    @field_validator("nats_url")
    @classmethod
    def _url_is_a_nats_url(cls, value: str) -> str:
        for url in value.split(","):
            parsed = urlparse(url.strip())
            try:
                port = parsed.port  # out of 0-65535, or not a number: ValueError
            except ValueError:
                port = -1
            if parsed.scheme not in ("nats", "tls", "ws", "wss") or not parsed.hostname or port == -1:
                raise ValueError(f"{url.strip()!r} is not a NATS URL (nats://host:port)")
        return value

    @field_validator("prefix")
    @classmethod
    def _prefix_is_valid(cls, value: str) -> str:
        Subjects(value)  # raises ConfigError (a ValueError) with the rule in its sentence
        return value

    @property
    def tracing(self) -> bool:
        """Whether an OpenTelemetry exporter is configured (``OTEL_*``)."""
        return self.otel_traces_exporter != "none" and bool(
            self.otel_endpoint or self.otel_traces_exporter == "otlp")

    @property
    def subjects(self) -> Subjects:
        return Subjects(self.prefix)

    @property
    def seed_path(self) -> Path:
        return self.supervisor_seed or self.data_dir / "supervisor.nk"

    @property
    def a2a_keys_file(self) -> Path:
        return self.a2a_keys or self.data_dir / "a2a-keys"

    @property
    def a2a_public_url(self) -> str:
        return self.a2a_url or f"http://{self.a2a_addr}:{self.a2a_port}/"

    def a2a_exposed(self) -> dict[str, Workflow]:
        """The workflows the gateway offers, by name (a name not configured stops it)."""
        flows = self.load_workflows()
        names = [n.strip() for n in self.a2a_workflows.split(",") if n.strip()] or list(flows)
        unknown = [n for n in names if n not in flows]
        if unknown:
            raise ConfigError(f"SWITCHYARD_A2A_WORKFLOWS names {', '.join(unknown)}, which "
                              f"SWITCHYARD_WORKFLOWS does not configure ({', '.join(flows)})")
        return {n: flows[n] for n in names}

    @property
    def console_users_file(self) -> Path:
        return self.console_users or self.data_dir / "console-users"

    def console_session_key(self) -> str:
        """What signs the console's session cookies: the setting, else a key made once in the
        data directory (so a restart keeps reviewers signed in, and replicas sharing the
        directory share it)."""
        if self.console_secret.get_secret_value():
            return self.console_secret.get_secret_value()
        path = self.data_dir / "console-secret"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".console-secret.{os.getpid()}")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(secrets.token_hex(32))
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)  # the first one made stands
            tmp.unlink()
        return path.read_text().strip()

    @field_validator("console_trusted_proxies")
    @classmethod
    def _proxies_are_addresses(cls, value: str) -> str:
        import ipaddress

        for part in (p.strip() for p in value.split(",")):
            if part:
                try:
                    ipaddress.ip_network(part, strict=False)
                except ValueError:
                    raise ValueError(f"{part!r} is not an address or network") from None
        return value

    def connect_options(self) -> dict[str, Any]:
        """``nats.connect`` options: on a secured bus, this process's identity (the nkey file's
        name, ``agent-triage.nk``) and its own inbox prefix."""
        if self.nkey_file is None:
            return {}
        from switchyard.credentials import connect_options

        return connect_options(self.nkey_file)

    @property
    def provisions(self) -> bool:
        """Whether this process creates missing streams and buckets: on a secured bus only the
        admin may, and the others wait for them."""
        return self.nkey_file is None or self.nkey_file.stem == ADMIN

    def trusted(self) -> frozenset[str]:
        return frozenset(k.strip() for k in self.trusted_keys.split(",") if k.strip())

    def load_seed(self, *, create: bool = True) -> bytes:
        path = self.seed_path
        if path.exists():
            return path.read_bytes().strip()
        if not create:
            raise ConfigError(f"no supervisor key at {path}")
        path.parent.mkdir(parents=True, exist_ok=True)
        # written whole under a name of its own (every container's process is pid 1), then
        # linked into place, which fails if it exists: replicas starting at once on a shared
        # volume end up with one key, not one each
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(grants.new_seed())
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        except PermissionError:  # a file system without hard links: exclusive create instead
            with contextlib.suppress(FileExistsError):
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as f:
                    f.write(tmp.read_bytes())
        finally:
            tmp.unlink()
        return path.read_bytes().strip()

    def load_workflows(self) -> dict[str, Workflow]:
        """The configured workflows; one naming a model the catalogue lacks is refused."""
        files = [f.strip() for f in self.workflows.split(",") if f.strip()]
        loaded = [
            load_workflow(f) if f.endswith((".yaml", ".yml")) else builtin_workflow(f)
            for f in files
        ] or [builtin_workflow("support")]
        models = {n for wf in loaded for n in wf.model_names()}
        if models:
            known = set(self.catalogue().names())
            for wf in loaded:
                if unknown := sorted(wf.model_names() - known):
                    raise ConfigError(
                        f"workflow {wf.name} names models the catalogue lacks: {unknown} (it "
                        f"has {sorted(known)}; see SWITCHYARD_MODEL_CATALOGUE)")
        return {wf.name: wf for wf in loaded}

    def catalogue(self) -> Catalogue:
        """The built-in models, ``llm`` at ``SWITCHYARD_MODEL_BASE_URL`` if set, and the
        catalogue file's."""
        return load_catalogue(self.model_catalogue, base_url=self.model_base_url,
                              model=self.model_name, context=self.model_context,
                              api_key=self.model_api_key.get_secret_value(), env=os.environ)

    def agent_config(self) -> AgentConfig:
        return AgentConfig(
            nats_url=self.nats_url, subjects=self.subjects, concurrency=self.concurrency,
            ack_wait=self.ack_wait, max_deliver=self.max_deliver, trusted_keys=self.trusted(),
            connect_options=self.connect_options(), faults=self.fault_plan(),
            trail_max_age_s=self.trail_max_age_s,
            publish_timeout=self.publish_timeout_s, replicas=self.replicas,
            provisions=self.provisions, catalogue=self.catalogue(), model=self.model,
            model_cache_ttl_s=self.model_cache_ttl_s,
        )

    def load_policy(self) -> Policy | None:
        return None if self.policy in ("", "none") else load_policy(self.policy)

    def supervisor_config(self) -> SupervisorConfig:
        return SupervisorConfig(
            seed=self.load_seed(), workflows=self.load_workflows(), nats_url=self.nats_url,
            subjects=self.subjects, policy=self.load_policy(), ack_wait=self.ack_wait,
            retention_s=self.retention_s, connect_options=self.connect_options(),
            faults=self.fault_plan(), trail_max_age_s=self.trail_max_age_s,
            publish_timeout=self.publish_timeout_s,
            replicas=self.replicas, provisions=self.provisions,
            models=frozenset(self.catalogue().names()),
        )

    def toolhost_config(self) -> ToolHostConfig:
        return ToolHostConfig(
            nats_url=self.nats_url, subjects=self.subjects, trusted_keys=self.trusted(),
            retention_s=self.retention_s, connect_options=self.connect_options(),
            faults=self.fault_plan(), trail_max_age_s=self.trail_max_age_s,
            publish_timeout=self.publish_timeout_s,
            replicas=self.replicas, provisions=self.provisions)
