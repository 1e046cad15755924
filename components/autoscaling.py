"""Autoscaling: KEDA scales one model server's Deployment (one model, or several sharing its pods) on
the runtime's own load, down to zero.

* A ``ScaledObject`` with two Prometheus triggers on what the runtime exports (``runtime/metrics.py``):
  ``inferstack_queue_depth`` (requests waiting for the batcher: the leading indicator of saturation,
  as the EKS guide for AI/ML advises, where CPU is the wrong signal for GPU inference) and
  ``inferstack_inflight_requests`` (admitted and not yet answered: covers models without batching).
  Each is summed over the server's pods (its namespace holds nothing else) and over every series
  they export, so a server with several models scales on their total, with today's unlabeled
  metrics and with a per-model ``model`` label alike; divided by the per-replica target; KEDA
  takes the larger.
* Stabilization fits a GPU cold start (node scale-up + multi-GB image pull + model load, minutes):
  scale up at once (window 0 s; up to 2 pods or +100 % per minute), since a replica asked for late
  arrives minutes late; scale down slowly (window 600 s, then one pod per 300 s), since a replica
  removed during a lull costs a whole cold start to bring back. A Deployment with ``min_replicas`` 0
  goes to zero only after ``scale_to_zero_after_s`` (KEDA's ``cooldownPeriod``) without load; the
  cluster autoscaler then removes the idle GPU node.
* ``min_replicas`` 0: requests must not fail while there is no pod. KEDA's HTTP add-on holds them: an
  ``HTTPScaledObject`` (with ``skip-scaledobject-creation``, so this ScaledObject stays the one owner
  of the HPA) routes by ``Host`` to the backend Service, the ScaledObject gets the add-on's
  ``external-push`` trigger (pending requests activate the Deployment), and the model's Service
  points at the interceptor: ``InferenceService`` makes it an ``ExternalName`` to the interceptor
  (the same resource that selects the pods at a minimum >= 1, so changing the minimum updates one
  object) next to a ``<model>-backend`` Service the interceptor forwards to; every in-cluster name of
  it is routed, the bare ``<model>`` included. ``loadBalancer`` adds a load balancer in front of the
  interceptor pods whose hostname is routed, ``ingress`` an Ingress to the interceptor whose host is
  routed. ``nodePort`` is refused at zero: the interceptor routes by ``Host``, and a client of
  a node port sends whichever node address it used.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

# the Service helpers the model's own Service uses (private there; one copy of each)
from inferstack.components.inference_service import EXPOSURES, LB_SCHEMES, ingress_spec
from inferstack.components.inference_service import _endpoint as service_endpoint
from inferstack.components.inference_service import _exposure as exposure_service
from inferstack.components.keda_http_addon import INTERCEPTOR_LABELS, INTERCEPTOR_SERVICE

TYPE = "inferstack:autoscaling:Autoscaling"
QUEUE_METRIC = "inferstack_queue_depth"
INFLIGHT_METRIC = "inferstack_inflight_requests"
SKIP_SCALEDOBJECT = "httpscaledobject.keda.sh/skip-scaledobject-creation"
#: seconds: scale-up reacts at once; scale-down waits out lulls shorter than two GPU cold starts
SCALE_UP_WINDOW_S = 0
SCALE_DOWN_WINDOW_S = 600
SCALE_DOWN_POD_EVERY_S = 300
POLLING_INTERVAL_S = 15


@dataclass
class AutoscalingArgs:
    model_name: str
    """The Deployment to scale (and the prefix of what is declared here). Required."""
    namespace: str
    """The Deployment's namespace. Required."""
    min_replicas: int
    """0 (scale to zero, through the HTTP add-on) to ``max_replicas``. Required."""
    max_replicas: int
    """1 to 100. Required."""
    prometheus_address: pulumi.Input[str]
    """URL of the Prometheus that scrapes the runtime pods (the stack's). Required."""
    target_queue_depth: int = 4
    """Queued requests per replica. Default 4."""
    target_inflight: int = 16
    """Requests in flight per replica. Default 16."""
    scale_to_zero_after_s: int = 900
    """Idle seconds before the last replica goes (min 0). Default 900."""
    backend_service: str | None = None
    """min 0: the Service that selects the pods (the interceptor's backend). Required then."""
    port: int = 8000
    """The backend Service's port. Default 8000."""
    exposure: str = "clusterIP"
    """min 0: how clients reach the interceptor, as ``InferenceServiceArgs.exposure``: ``clusterIP``,
    ``loadBalancer`` or ``ingress`` (``nodePort`` is refused: see the module docstring). Default
    clusterIP."""
    load_balancer_scheme: str | None = None
    """min 0 with ``loadBalancer`` on EKS: ``internal`` or ``internet-facing`` AWS NLB. Default none."""
    ingress_class: str | None = None
    """min 0 with ``ingress``: the Ingress's class. Required there."""
    ingress_host: str | None = None
    """min 0 with ``ingress``: the host the Ingress and the interceptor route. Required there."""
    ingress_paths: list[str] | None = None
    """min 0 with ``ingress``: the paths of the host the Ingress sends to the interceptor, as
    ``InferenceServiceArgs.ingress_paths``. Default none: every path."""
    interceptor_host: pulumi.Input[str] | None = None
    """min 0: DNS name of the HTTP add-on's interceptor proxy Service. Required then."""
    interceptor_namespace: pulumi.Input[str] | None = None
    """min 0: its namespace (a load balancer in front of it lives there). Required then."""
    interceptor_port: int = 8000
    """min 0: its port. Default 8000."""
    scaler_address: pulumi.Input[str] | None = None
    """min 0: ``host:port`` of the HTTP add-on's external scaler. Required then."""
    service_depends_on: list[pulumi.Resource] = field(default_factory=list)
    """Resources a load balancer Service must outlive (the VPC's gateways). Default none."""


class Autoscaling(pulumi.ComponentResource):
    scaled_object_name: pulumi.Output[str]
    endpoint_url: pulumi.Output[str] | None
    """min 0: the URL clients use (through the interceptor); otherwise None (the model's Service)."""

    def __init__(self, name: str, args: AutoscalingArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        _validate(args)
        super().__init__(TYPE, name, None, opts)
        labels = {"app.kubernetes.io/instance": args.model_name, "app.kubernetes.io/managed-by": "pulumi"}
        triggers = [
            _prometheus_trigger(
                "queue-depth", QUEUE_METRIC, args.namespace, args.target_queue_depth, args.prometheus_address
            ),
            _prometheus_trigger(
                "inflight", INFLIGHT_METRIC, args.namespace, args.target_inflight, args.prometheus_address
            ),
        ]
        self.endpoint_url = None
        if args.min_replicas == 0:
            http_name = f"{args.model_name}-http"
            front = self._front_service(name, args, labels) if args.exposure == "loadBalancer" else None
            hosts = _hosts(args.model_name, args.namespace, front, args.ingress_host)
            k8s.apiextensions.CustomResource(
                f"{name}-http-scaled-object",
                api_version="http.keda.sh/v1alpha1",
                kind="HTTPScaledObject",
                metadata={
                    "name": http_name,
                    "namespace": args.namespace,
                    "labels": labels,
                    "annotations": {SKIP_SCALEDOBJECT: "true"},
                },
                spec={
                    "hosts": hosts,
                    "scaleTargetRef": {
                        "apiVersion": "apps/v1",
                        "kind": "Deployment",
                        "name": args.model_name,
                        "service": args.backend_service,
                        "port": args.port,
                    },
                    "replicas": {"min": 0, "max": args.max_replicas},
                    "scaledownPeriod": args.scale_to_zero_after_s,
                    "scalingMetric": {"concurrency": {"targetValue": args.target_inflight}},
                },
                opts=pulumi.ResourceOptions(parent=self),
            )
            triggers.append(
                {
                    "type": "external-push",
                    "name": "http-pending",
                    "metadata": {"scalerAddress": args.scaler_address, "httpScaledObject": http_name},
                }
            )
            if args.exposure == "ingress":
                self._ingress(name, args, labels)
                self.endpoint_url = pulumi.Output.from_input(f"http://{args.ingress_host}")
            elif front is not None:
                self.endpoint_url = pulumi.Output.all(front.status, front.metadata).apply(
                    lambda v: service_endpoint(v[0], v[1], args.interceptor_port)
                )
            else:  # the model's own Service, an ExternalName to the interceptor (InferenceService)
                self.endpoint_url = pulumi.Output.from_input(
                    f"http://{args.model_name}.{args.namespace}.svc.cluster.local:{args.interceptor_port}"
                )
        scaled = k8s.apiextensions.CustomResource(
            f"{name}-scaled-object",
            api_version="keda.sh/v1alpha1",
            kind="ScaledObject",
            metadata={"name": args.model_name, "namespace": args.namespace, "labels": labels},
            spec={
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": args.model_name},
                "minReplicaCount": args.min_replicas,
                "maxReplicaCount": args.max_replicas,
                "pollingInterval": POLLING_INTERVAL_S,
                "cooldownPeriod": args.scale_to_zero_after_s,
                "advanced": {"horizontalPodAutoscalerConfig": {"behavior": scaling_behavior()}},
                "triggers": triggers,
            },
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.scaled_object_name = scaled.id.apply(lambda _: args.model_name)
        self.register_outputs(
            {"scaled_object_name": self.scaled_object_name, "endpoint_url": self.endpoint_url}
        )

    def _front_service(self, name: str, args: AutoscalingArgs, labels: dict[str, str]) -> k8s.core.v1.Service:
        """``loadBalancer`` at zero: a load balancer in front of the interceptor's pods. (In the
        cluster, the model's own Service leads to the interceptor: an ExternalName that
        InferenceService declares, so one resource owns ``<namespace>/<model>`` at any minimum.)"""
        svc_type, annotations = exposure_service(args.exposure, args.load_balancer_scheme)
        return k8s.core.v1.Service(
            f"{name}-endpoint",
            metadata={
                "name": f"{args.model_name}-endpoint",
                "namespace": args.interceptor_namespace,
                "labels": labels,
                "annotations": annotations,
            },
            spec={
                "type": svc_type,
                "selector": INTERCEPTOR_LABELS,
                "ports": [
                    {"name": "http", "port": args.interceptor_port, "target_port": "proxy", "protocol": "TCP"}
                ],
            },
            opts=pulumi.ResourceOptions(
                parent=self,
                depends_on=args.service_depends_on,
                custom_timeouts=pulumi.CustomTimeouts(create="20m", delete="20m"),
            ),
        )


    def _ingress(self, name: str, args: AutoscalingArgs, labels: dict[str, str]) -> k8s.networking.v1.Ingress:
        """``ingress`` at zero: the Ingress leads to the interceptor's proxy Service (an Ingress
        reaches Services of its own namespace only), which routes ``ingress_host`` to the model."""
        return k8s.networking.v1.Ingress(
            f"{name}-ingress",
            metadata={
                "name": args.model_name,
                "namespace": args.interceptor_namespace,
                "labels": labels,
                # the controller may never publish an address (e.g. a NodePort ingress controller)
                "annotations": {"pulumi.com/skipAwait": "true"},
            },
            spec=ingress_spec(
                args.ingress_class, args.ingress_host, INTERCEPTOR_SERVICE, {"number": args.interceptor_port},
                args.ingress_paths,
            ),
            opts=pulumi.ResourceOptions(parent=self),
        )


def scaling_behavior() -> dict[str, Any]:
    """The HPA behavior KEDA applies (see the module docstring for the numbers)."""
    return {
        "scaleUp": {
            "stabilizationWindowSeconds": SCALE_UP_WINDOW_S,
            "selectPolicy": "Max",
            "policies": [
                {"type": "Pods", "value": 2, "periodSeconds": 60},
                {"type": "Percent", "value": 100, "periodSeconds": 60},
            ],
        },
        "scaleDown": {
            "stabilizationWindowSeconds": SCALE_DOWN_WINDOW_S,
            "selectPolicy": "Min",
            "policies": [{"type": "Pods", "value": 1, "periodSeconds": SCALE_DOWN_POD_EVERY_S}],
        },
    }


def load_query(metric: str, namespace: str) -> str:
    """PromQL: ``metric`` summed over the server's pods (one server per namespace) and over its
    models' series (without ``by (model)``: a ``model`` label, where the runtime sets one, is summed
    away, so a multi-model server scales on its models' total); 0 when no pod reports (at zero
    replicas), so the trigger reads idle instead of failing."""
    return f'sum({metric}{{namespace="{namespace}"}}) or vector(0)'


def _prometheus_trigger(
    name: str, metric: str, namespace: str, target: int, address: pulumi.Input[str]
) -> dict[str, Any]:
    return {
        "type": "prometheus",
        "name": name,
        "metricType": "AverageValue",
        "metadata": {
            "serverAddress": address,
            "query": load_query(metric, namespace),
            "threshold": str(target),
            # one waiting request is enough to bring a Deployment back from zero
            "activationThreshold": "0",
        },
    }


def _hosts(
    model: str, namespace: str, front: k8s.core.v1.Service | None, ingress_host: str | None
) -> pulumi.Output[list[str]]:
    """The ``Host`` values the interceptor routes to this model: every name of the model's Service
    in the cluster (the bare ``<model>`` that clients of its own namespace call included), the
    load balancer's Service names and address when there is one, and the Ingress's host."""

    def names(name: str, ns: str) -> list[str]:
        return [f"{name}.{ns}.svc.cluster.local", f"{name}.{ns}.svc", f"{name}.{ns}"]

    def hosts(v: list[Any]) -> list[str]:
        found = [*names(model, namespace), model]
        meta, status = v[0] or {}, v[1] or {}
        if meta:
            found += names(str(meta["name"]), str(meta["namespace"]))
        ingress = (status.get("load_balancer") or {}).get("ingress") or []
        found += [h for i in ingress for h in (i.get("hostname"), i.get("ip")) if h]
        return found + ([ingress_host] if ingress_host else [])

    if front is None:
        return pulumi.Output.from_input(hosts([None, None]))
    return pulumi.Output.all(front.metadata, front.status).apply(hosts)


def _validate(args: AutoscalingArgs) -> None:
    if not 0 <= args.min_replicas <= args.max_replicas or not 1 <= args.max_replicas <= 100:
        raise ValueError(
            f"AutoscalingArgs: min_replicas {args.min_replicas}, max_replicas {args.max_replicas}; "
            "expected 0 <= min_replicas <= max_replicas, 1 <= max_replicas <= 100"
        )
    for what, value in (
        ("target_queue_depth", args.target_queue_depth),
        ("target_inflight", args.target_inflight),
    ):
        if not 1 <= value <= 10000:
            raise ValueError(f"AutoscalingArgs.{what}: {value}; expected 1..10000")
    if not 60 <= args.scale_to_zero_after_s <= 86400:
        raise ValueError(
            f"AutoscalingArgs.scale_to_zero_after_s: {args.scale_to_zero_after_s}; expected 60..86400"
        )
    if args.exposure not in EXPOSURES:
        raise ValueError(
            f"AutoscalingArgs.exposure: {args.exposure!r}; expected one of {', '.join(EXPOSURES)}"
        )
    if args.exposure == "nodePort" and args.min_replicas == 0:
        raise ValueError(
            "AutoscalingArgs.exposure: 'nodePort' with min_replicas 0; the interceptor routes by Host "
            "and a node port's clients send a node's address: use clusterIP, loadBalancer or ingress"
        )
    if args.load_balancer_scheme is not None and (
        args.load_balancer_scheme not in LB_SCHEMES or args.exposure != "loadBalancer"
    ):
        raise ValueError(
            f"AutoscalingArgs.load_balancer_scheme: {args.load_balancer_scheme!r}; expected "
            f"{' or '.join(LB_SCHEMES)}, and only with exposure loadBalancer"
        )
    ingress_set = args.ingress_class and args.ingress_host
    if args.exposure == "ingress" and args.min_replicas == 0 and not ingress_set:
        raise ValueError(
            "AutoscalingArgs.ingress_class/ingress_host: missing; exposure ingress needs both"
        )
    if args.min_replicas == 0:
        missing = [
            f
            for f in ("backend_service", "interceptor_host", "interceptor_namespace", "scaler_address")
            if getattr(args, f) is None
        ]
        if missing:
            raise ValueError(
                f"AutoscalingArgs.{missing[0]}: missing; min_replicas 0 routes requests through KEDA's "
                "HTTP add-on, which needs backend_service, interceptor_host, interceptor_namespace "
                "and scaler_address"
            )
