"""The Markdown page a reviewer reads in a minute: counts, GPU capacity, cost, public endpoints,
what survives a destroy, policy results, and a Mermaid diagram of the component tree."""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

from inferstack.policy import rules

from inferstack.plan.cost import CostEstimate, price_table
from inferstack.plan.k8s import Manifest
from inferstack.plan.snapshot import short_type


def _money(value: float) -> str:
    return f"${value:,.2f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return lines


def public_endpoints(snapshot: dict[str, Any]) -> list[str]:
    found = []
    for r in snapshot["resources"]:
        view = rules.Resource(type=r["type"], name=r["name"], urn=r["urn"], props=r["inputs"])
        if rules.is_public_endpoint(view):
            kind = r["type"].rsplit(":", 1)[-1]
            meta = r["inputs"].get("metadata") or {}
            found.append(
                f"Kubernetes {kind} `{meta.get('namespace', 'default')}/{meta.get('name', r['name'])}` "
                f"is internet-facing"
            )
        elif r["type"] == "aws:eks/cluster:Cluster":
            vpc = r["inputs"].get("vpcConfig") or {}
            if vpc.get("endpointPublicAccess", True):
                cidrs = vpc.get("publicAccessCidrs") or ["0.0.0.0/0"]
                found.append(
                    f"EKS API endpoint of `{r['name']}` is public (from {', '.join(map(str, cidrs))}; "
                    "authenticated by IAM)"
                )
        elif r["type"] == "aws:lb/loadBalancer:LoadBalancer" and not r["inputs"].get("internal"):
            found.append(f"AWS load balancer `{r['name']}` is internet-facing")
    return found


def mermaid(snapshot: dict[str, Any]) -> list[str]:
    resources = snapshot["resources"]
    components = [r for r in resources if not r["custom"]]
    ids: dict[str, str] = {}
    lines = ["```mermaid", "graph TD"]
    root = f"stack {snapshot['project']}-{snapshot['stack']}"
    lines.append(f'  root["{root}"]')
    for i, c in enumerate(components):
        ids[c["urn"]] = f"c{i}"
    leaves: dict[str, Counter[str]] = defaultdict(Counter)
    for r in resources:
        if r["custom"]:
            leaves[r.get("parent") or ""][short_type(r["type"])] += 1

    def label(text: str) -> str:
        return text.replace('"', "#quot;")

    for c in components:
        lines.append(f'  {ids[c["urn"]]}["{label(c["name"])}<br/><i>{label(c["type"])}</i>"]')
    for c in components:
        parent = ids.get(c.get("parent") or "", "root")
        lines.append(f"  {parent} --> {ids[c['urn']]}")
    for j, (parent_urn, counts) in enumerate(sorted(leaves.items())):
        parent = ids.get(parent_urn, "root")
        text = "<br/>".join(f"{n} × {label(t)}" for t, n in sorted(counts.items()))
        lines.append(f'  r{j}(["{text}"])')
        lines.append(f"  {parent} -.- r{j}")
    lines.append("```")
    return lines


def render_summary(
    snapshot: dict[str, Any],
    cost: CostEstimate,
    manifests: list[Manifest],
    k8s_version: str | None,
    k8s_version_source: str,
    violations: list[rules.Violation],
) -> str:
    stack = snapshot["stack"]
    resources = [r for r in snapshot["resources"] if r["custom"] and not r.get("read")]
    lines = [
        f"# Plan of stack `{stack}`",
        "",
        f"Rendered offline by `inferstack plan --stack {stack}` from `Pulumi.{stack}.yaml` "
        "under Pulumi's mocks; do not edit. Values only the cloud knows are placeholders "
        "such as `<arn of NAME>`.",
        "",
    ]
    if snapshot.get("assumedSecrets"):
        lines += [
            "Secrets this stack needs that its file does not hold; set them before `pulumi up`:",
            "",
        ]
        for key in snapshot["assumedSecrets"]:
            path = "--path " if "." in key.split(":", 1)[-1] else ""  # a value inside an object
            lines.append(f"- `{key}`: `pulumi config set --secret {path}'{key}' <value> --stack {stack}`")
        lines.append("")
    lines += [f"## Resources ({len(resources)})", ""]
    counts = Counter(r["type"] for r in resources)
    lines += _table(["type", "count"], [[f"`{t}`", str(n)] for t, n in sorted(counts.items())])

    lines += ["", "## GPU capacity", ""]
    gpu_pools = [p for p in cost.pools if p.gpu]
    if gpu_pools:
        lines += _table(
            ["node group", "instance types", "min nodes", "max nodes", "GPUs per node"],
            [
                [
                    f"`{p.name}`",
                    ", ".join(p.instance_types),
                    str(p.min_size),
                    str(p.max_size),
                    str(p.gpus_per_node) if p.gpus_per_node is not None else "unknown",
                ]
                for p in gpu_pools
            ],
        )
        lines += [
            "",
            f"GPUs: **{cost.gpus_rest}** at rest, **{cost.gpus_max}** at max scale, "
            f"**{cost.gpus_ceiling}** with every GPU node group at its max size.",
        ]
    else:
        lines.append("No GPU node groups (GPU capacity comes from the cluster the stack deploys into).")
    if cost.workloads:
        lines += [""]
        lines += _table(
            ["workload", "GPUs per replica", "replicas at rest", "replicas at max scale", "bounds from"],
            [
                [
                    f"`{w.name}`",
                    str(w.gpus_per_replica),
                    str(w.min_replicas),
                    str(w.max_replicas),
                    w.scaled_by,
                ]
                for w in cost.workloads
            ],
        )
    if cost.unplaced:
        lines += ["", f"No GPU node group holds a replica of: {', '.join(f'`{n}`' for n in cost.unplaced)}."]

    table = price_table()
    lines += ["", "## Estimated cost per hour", ""]
    rows = []
    for p in cost.pools:
        rows.append(
            [
                f"node group `{p.name}` ({p.instance_types[0] if p.instance_types else '?'}; "
                f"{p.nodes_rest} at rest, {p.nodes_max} at max scale, {p.min_size}..{p.max_size} allowed)",
                _money(p.nodes_rest * (p.usd_node or 0.0)),
                _money(p.nodes_max * (p.usd_node or 0.0)),
            ]
        )
    for c in cost.control_planes:
        if c.end_of_standard_support is None:
            when = "not in the version table: priced at the standard rate"
        else:
            rate = "extended-support" if c.extended else "standard"
            when = f"standard support ends {c.end_of_standard_support}; {rate} rate"
        rows.append(
            [
                f"EKS control plane `{c.name}` "
                f"(Kubernetes {c.version}, upgrade policy {c.support_type}, {when})",
                _money(c.usd_per_hour),
                _money(c.usd_per_hour),
            ]
        )
    for count, what, key in (
        (cost.nat_gateways, "NAT gateway", "nat_gateway_usd_per_hour"),
        (cost.public_ips, "public IPv4 address", "public_ipv4_usd_per_hour"),
        (cost.load_balancers, "network load balancer (LoadBalancer Service)", "nlb_usd_per_hour"),
    ):
        if count:
            fixed = count * table[key]
            rows.append([f"{what} × {count}", _money(fixed), _money(fixed)])
    rows.append(
        ["**total**", f"**{_money(cost.usd_per_hour_rest)}**", f"**{_money(cost.usd_per_hour_max)}**"]
    )
    lines += _table(["item", "at rest", "at max scale"], rows)
    lines += [
        "",
        "Ceiling, every node group at its max size of its dearest instance type: "
        f"{_money(cost.usd_per_hour_ceiling)}.",
        "",
        "At rest: each GPU workload at its scaler's minimum (else its replicas), each GPU node group "
        "at the nodes those replicas need and at least its min size, CPU node groups at their min "
        "size; at max scale: the workloads at their maximum. At rest and at max scale a node is priced "
        "as its group's first instance type (on-demand node groups launch the types in the order "
        "given); the ceiling prices each group's dearest type. The control plane costs the "
        "extended-support rate when its upgrade policy is "
        f"EXTENDED and its version leaves standard support within {table['eks_extended_support_lead_days']} "
        f"days of {table['as_of']} (versions: {table['eks_versions_source']}).",
        "",
        f"Estimates: on-demand {table['region']} prices as of {table['as_of']} "
        f"(`inferstack/plan/prices.json`). {table['note']}",
    ]
    if cost.unpriced:
        lines.append(f"Not in the price table (counted as $0): {', '.join(cost.unpriced)}.")

    lines += ["", "## Public endpoints", ""]
    endpoints = public_endpoints(snapshot)
    lines += [f"- {e}" for e in endpoints] if endpoints else ["None: every endpoint is internal."]

    lines += ["", "## What a destroy keeps", ""]
    kept = [r for r in resources if r.get("protect") or r.get("retainOnDelete")]
    if kept:
        lines += _table(
            ["resource", "protect", "retain on delete"],
            [
                [
                    f"`{short_type(r['type'])}` `{r['name']}`",
                    "yes" if r.get("protect") else "no",
                    "yes" if r.get("retainOnDelete") else "no",
                ]
                for r in kept
            ],
        )
        lines += [
            "",
            "`inferstack destroy` leaves protected resources, and what they depend on, in place "
            "(`pulumi destroy --exclude-protected`); retained ones stay in the cloud after any destroy.",
        ]
    else:
        lines.append("Nothing: `pulumi destroy` deletes every resource of this stack.")
    emptied = [r["name"] for r in resources if r["inputs"].get("forceDestroy") is True]
    if emptied:
        lines.append(f"Deleted with their contents (forceDestroy): {', '.join(f'`{n}`' for n in emptied)}.")

    lines += ["", "## Policy", ""]
    if not violations:
        lines.append(f"All {len(rules.RULES)} rules of the policy pack pass.")
    else:
        lines += _table(
            ["rule", "level", "resource", "message"],
            [
                [
                    v.policy,
                    "mandatory" if v.mandatory else "advisory",
                    f"`{v.urn.rsplit('::', 1)[-1]}`",
                    v.message,
                ]
                for v in violations
            ],
        )

    lines += ["", "## Kubernetes objects", ""]
    if manifests:
        where = f"Kubernetes {k8s_version} ({k8s_version_source})" if k8s_version else "no declared version"
        lines.append(
            f"{len(manifests)} manifests in `{stack}/k8s/`, validated against the schemas of {where}."
        )
    else:
        lines.append("None.")
    releases = [r for r in resources if r["type"].startswith("kubernetes:helm.sh/")]
    for r in releases:
        i = r["inputs"]
        repo = (i.get("repositoryOpts") or {}).get("repo", "")
        lines.append(
            f"Helm release `{r['name']}`: chart `{i.get('chart')}` {i.get('version', '')} {repo} "
            "(rendered by Helm at deploy time, not here)."
        )

    lines += ["", "## Component tree", ""]
    lines += mermaid(snapshot)
    return "\n".join(lines) + "\n"
