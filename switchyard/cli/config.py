"""Configuration: ``nats-config`` (the policy compiled into the bus's authorization),
``provision``, ``policy check``, ``workflow put|list`` and ``protocol schema``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from switchyard.cli.app import JsonOpt, app, client, dump, err, load_settings, once, out

policy_app = typer.Typer(help="The tool policy.", no_args_is_help=True)
workflow_app = typer.Typer(help="Workflow definitions on the bus.", no_args_is_help=True)
protocol_app = typer.Typer(help="The wire protocol, for other languages.", no_args_is_help=True)
app.add_typer(policy_app, name="policy")
app.add_typer(workflow_app, name="workflow")
app.add_typer(protocol_app, name="protocol")


@app.command("nats-config")
def nats_config(
    policy: Annotated[str | None, typer.Option(help="policy file or built-in name")] = None,
    out_dir: Annotated[Path, typer.Option("--out", help="where to write the config and keys")] = Path(
        "nats-secure"),
    role: Annotated[list[str] | None, typer.Option(
        help="an agent role beyond the policy's and the workflows' (repeatable)")] = None,
    port: Annotated[int, typer.Option(help="the server's client port")] = 4222,
    cluster: Annotated[int, typer.Option(
        help="also write node-1.conf … node-N.conf, a JetStream cluster of N >= 3 nodes")] = 0,
    cluster_port: Annotated[int, typer.Option(
        help="node 1's route port; node i's is this + i - 1 (its client port: --port + i - 1)")] = 6222,
    monitor_port: Annotated[int, typer.Option(
        help="node 1's monitoring port (/healthz); node i's is this + i - 1; 0: none")] = 8222,
    cluster_host: Annotated[str, typer.Option(
        help="where node i listens and is dialled; {i} is its number (nats-{i}, say)")] =
        "127.0.0.1",
) -> None:
    """Generate a nats-server config from the policy: one nkey user per identity (admin,
    supervisor, toolhost, console, one per agent role), allow-lists only, per-identity inboxes.
    With ``--cluster N``, also the configs of an N-node cluster under the same authorization
    (its routes under a generated password); then set SWITCHYARD_REPLICAS=3 and NATS_URL to the
    nodes, comma-separated."""
    from switchyard import credentials
    from switchyard.protocol.errors import ConfigError
    from switchyard.supervisor import authz
    from switchyard.supervisor.policy import load_policy

    settings = load_settings()
    if cluster and cluster < 3:
        err.print(f"[red]--cluster {cluster}: a JetStream cluster needs 3 or more nodes[/] (two "
                  "stop when either does, and one is no cluster; leave --cluster out for one)")
        raise typer.Exit(2)
    try:
        pol = load_policy(policy or settings.policy)
        workflows = settings.load_workflows()
    except ConfigError as exc:
        err.print(f"[red]{escape(str(exc))}[/]")
        raise typer.Exit(1) from None
    for name in ("auth.conf", "nats.conf", *(f"node-{i}.conf" for i in range(1, cluster + 1))):
        if (out_dir / name).is_dir():  # a bind mount made it before the file existed
            err.print(f"[red]{escape(str(out_dir / name))} is a directory, not a config file[/]: "
                      "a container engine creates one when it mounts a file that is not there "
                      "yet (`compose up` before `nats-config`). Remove it (nothing was written) "
                      "and run this again.")
            raise typer.Exit(1)
    used, queues = authz.deployment_of(workflows.values())
    ids = authz.identities(pol, {*pol.roles, *used, *(role or [])}, settings.subjects, queues)
    creds = credentials.Credentials(out_dir / "creds")
    auth = authz.authorization(ids, creds.public_key)
    (out_dir / "auth.conf").write_text(auth)
    (out_dir / "nats.conf").write_text(
        authz.server_config(auth, store_dir=(out_dir / "jetstream").resolve(), port=port))
    nodes = authz.cluster_configs(
        auth, nodes=cluster, store_dir=(out_dir / "jetstream").resolve(), port=port,
        cluster_port=cluster_port, host=cluster_host, route_user="route",
        route_password=creds.route_password(), monitor_port=monitor_port) if cluster else {}
    for name, text in nodes.items():  # they hold the routes' password
        path = out_dir / name
        path.touch(mode=0o600)
        path.write_text(text)
    table = Table(title=f"identities ({out_dir / 'nats.conf'})")
    for col in ("identity", "nkey", "publish", "subscribe", "credentials"):
        table.add_column(col)
    for ident in ids:
        table.add_row(ident.name, creds.public_key(ident.name)[:12] + "…",
                      str(len(ident.publish)), str(len(ident.subscribe)),
                      str(creds.seed_file(ident.name)))
    out.print(table)
    out.print(f"Run it: nats-server -c {out_dir / 'nats.conf'}; give each process its key with "
              "SWITCHYARD_NKEY_FILE. Provision streams and buckets as the admin.")
    if nodes:
        urls = ",".join(f"nats://{cluster_host.replace('{i}', str(i))}:{port + i - 1}"
                        for i in range(1, cluster + 1))
        out.print(f"Or the cluster: nats-server -c {out_dir}/node-<i>.conf for i in 1..{cluster}; "
                  f"then NATS_URL={urls} SWITCHYARD_REPLICAS=3.", markup=False)


@app.command("provision")
def provision_cmd(json_out: JsonOpt = False) -> None:
    """Create the streams and buckets where missing, at SWITCHYARD_REPLICAS, and list them. On a
    secured bus, run it as the admin (SWITCHYARD_NKEY_FILE=.../admin.nk) before the others start;
    on an open one every component does this at start."""
    from switchyard.protocol.bus.provision import layout_names, provision

    settings = load_settings()
    if not settings.provisions:
        assert settings.nkey_file is not None
        err.print(f"[red]{escape(settings.nkey_file.stem)} may not create streams (the key file's "
                  "name is the identity): on a secured bus only the admin may "
                  "(SWITCHYARD_NKEY_FILE=…/admin.nk)[/]")
        raise typer.Exit(2)

    async def main() -> list[dict[str, object]]:
        async with client(settings) as bus:
            await provision(bus.js, settings.subjects, replicas=settings.replicas,
                            trail_max_age=settings.trail_max_age_s)
            names = layout_names(settings.subjects)
            found: list[dict[str, object]] = []
            for name in names:
                info = await bus.js.stream_info(name)
                found.append({"stream": name, "replicas": info.config.num_replicas,
                              "messages": info.state.messages,
                              "max_age_s": info.config.max_age or 0})
            return found

    found = once(main())
    if json_out:
        dump(found)
        return
    table = Table(title=f"streams and buckets at {settings.nats_url}")
    for col in ("stream", "replicas", "messages", "max age"):
        table.add_column(col)
    for row in found:
        age = float(row["max_age_s"] or 0)  # type: ignore[arg-type]
        table.add_row(str(row["stream"]), str(row["replicas"]), str(row["messages"]),
                      f"{age / 86400:g} d" if age else "-")
    out.print(table)


@policy_app.command("check")
def policy_check(
    policy: Annotated[str | None, typer.Argument(help="policy file or built-in name")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Validate the policy (and the configured workflows against it); print the grant matrix."""
    from switchyard.protocol.errors import ConfigError
    from switchyard.supervisor.policy import load_policy

    settings = load_settings()
    try:
        pol = load_policy(policy or settings.policy)
        for wf in settings.load_workflows().values():
            pol.check_workflow(wf)
    except ConfigError as exc:
        err.print(f"[red]{escape(str(exc))}[/]")
        raise typer.Exit(1) from None
    matrix = pol.matrix()
    if json_out:
        dump({"matrix": matrix, "limits": {t: r.limits for t, r in pol.tools.items() if r.limits},
               "calls_per_task": {r: rule.calls_per_task for r, rule in pol.roles.items()}})
        return
    tools = sorted(pol.tools)
    table = Table(title="effective grants: role by tool")
    table.add_column("role")
    for tool in tools:
        table.add_column(tool)
    table.add_column("calls/task", justify="right")
    for role, allowed in matrix.items():
        table.add_row(role, *[allowed.get(t, "·") for t in tools],
                      str(pol.roles[role].calls_per_task))
    out.print(table)
    for tool, rule in sorted(pol.tools.items()):
        if rule.limits or rule.approval:
            out.print(f"{tool}: limits {rule.limits or 'none'}; approval when {rule.approval}",
                      markup=False)


@workflow_app.command("put")
def workflow_put(file: Path) -> None:
    """Validate a workflow YAML file and put it on the bus; running supervisors pick it up."""
    from switchyard.protocol.bus.provision import open_bucket
    from switchyard.protocol.errors import ConfigError
    from switchyard.supervisor.catalog import put_workflow
    from switchyard.supervisor.workflow import parse_workflow

    settings = load_settings()
    try:
        text = file.read_text()
        wf = parse_workflow(text, str(file))  # before touching the bus
        policy = settings.load_policy()
        if policy is not None:  # the supervisor would refuse it: say so now, not at submit
            policy.check_workflow(wf)
        if unknown := sorted(wf.model_names() - set(settings.catalogue().names())):
            raise ConfigError(f"workflow {wf.name} names models the catalogue lacks: {unknown} "
                              "(see SWITCHYARD_MODEL_CATALOGUE)")
    except (ConfigError, OSError, UnicodeDecodeError) as exc:
        err.print(f"[red]{escape(str(exc))}[/]")
        raise typer.Exit(1) from None

    async def main() -> str:
        async with client(settings) as bus:
            kv = await open_bucket(bus.js, settings.subjects.bucket("workflow_defs"), history=5)
            wf = await put_workflow(kv, text, str(file))
            return f"workflow {wf.name!r} ({len(wf.steps)} steps) is on the bus"

    out.print(once(main()))


@workflow_app.command("list")
def workflow_list() -> None:
    """Workflows put on the bus (the supervisor's built-in ones are not listed)."""
    from switchyard.protocol.bus.provision import open_bucket
    from switchyard.supervisor.catalog import list_workflows

    settings = load_settings()

    async def main() -> list[str]:
        async with client(settings) as bus:
            kv = await open_bucket(bus.js, settings.subjects.bucket("workflow_defs"), history=5)
            return await list_workflows(kv)

    for name in once(main()):
        out.print(name)


@protocol_app.command("schema")
def protocol_schema(
    out_dir: Annotated[Path, typer.Option("--out", help="directory to write into")] = Path(
        "schema"),
) -> None:
    """Write JSON Schema for every message and an AsyncAPI 3 document of the subjects."""
    from switchyard.protocol.schema import asyncapi, message_schemas

    settings = load_settings()
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, schema in message_schemas().items():
        (out_dir / f"{name}.schema.json").write_text(json.dumps(schema, indent=2) + "\n")
    (out_dir / "asyncapi.json").write_text(
        json.dumps(asyncapi(settings.subjects), indent=2) + "\n")
    out.print(f"wrote {len(message_schemas())} message schemas and asyncapi.json to {out_dir}")
