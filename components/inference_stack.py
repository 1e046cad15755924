"""InferenceStack: the whole stack for one environment, composed per target.

* ``aws``: Network -> Cluster -> system pool + GpuNodePools -> NvidiaDevicePlugin, DcgmExporter,
  ModelStore (S3, KMS), RuntimeImage per variant (built into ECR, or prebuilt by digest), per model
  a ModelArtifact, and per model server (``servers[]``, or a model of its own) an InferenceService
  whose pods read their models through EKS Pod Identity.
* ``kubernetes``: an existing cluster from a kubeconfig context and any S3-compatible store (MinIO,
  Ceph, OSS, COS) through an ``aws`` provider with a custom endpoint and its addressing style; no
  node pools, the CPU runtime image (built and pushed to a registry the cluster reaches, or prebuilt
  by digest), static store credentials in a Secret.

On both targets: Keda + KedaHttpAddon + Prometheus + Grafana (``inferstack:addons``), and per model
server with ``autoscaling`` an Autoscaling (KEDA ScaledObject on the runtime's queue, scale to zero through
the HTTP add-on). The Kubernetes part is the same code on both targets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_aws as aws
import pulumi_kubernetes as k8s
from inferstack.components.autoscaling import Autoscaling, AutoscalingArgs
from inferstack.components.cluster import Cluster, ClusterArgs
from inferstack.components.cluster_autoscaler import ClusterAutoscaler, ClusterAutoscalerArgs
from inferstack.components.config import ConfigError, ModelServerConfig, StackConfig
from inferstack.components.dcgm_exporter import DcgmExporter
from inferstack.components.eks_addons import EksAddons, EksAddonsArgs
from inferstack.components.gpu_node_pool import GpuNodePool, GpuNodePoolArgs
from inferstack.components.grafana import Grafana, GrafanaArgs
from inferstack.components.inference_service import (
    InferenceService,
    InferenceServiceArgs,
    S3Credentials,
    ServedModel,
)
from inferstack.components.keda import Keda
from inferstack.components.keda_http_addon import (
    INTERCEPTOR_SERVICE,
    SCALER_PORT,
    SCALER_SERVICE,
    KedaHttpAddon,
    KedaHttpAddonArgs,
)
from inferstack.components.model_artifact import ModelArtifact, ModelArtifactArgs
from inferstack.components.model_store import ModelStore, ModelStoreArgs
from inferstack.components.network import Network, NetworkArgs, ZoneShortage
from inferstack.components.nvidia_device_plugin import NvidiaDevicePlugin
from inferstack.components.prometheus import Prometheus
from inferstack.components.runtime_image import RuntimeImage, RuntimeImageArgs

TYPE = "inferstack:inference_stack:InferenceStack"


@dataclass
class InferenceStackArgs:
    config: StackConfig
    """The validated stack config (``inferstack.components.config.load()``). Required."""
    cluster_name: str | None = None
    """EKS cluster name (target aws). Default ``inferstack-<stack>``."""


class InferenceStack(pulumi.ComponentResource):
    endpoints: pulumi.Output[dict[str, str]]
    model_uris: pulumi.Output[dict[str, str]]
    bucket_name: pulumi.Output[str]
    cluster_name: pulumi.Output[str]
    kubeconfig: pulumi.Output[str]
    runtime_repository: pulumi.Output[str] | None

    def __init__(
        self, name: str, args: InferenceStackArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        cfg = args.config
        cluster_name = args.cluster_name or f"inferstack-{pulumi.get_stack()}"
        if cfg.target not in ("aws", "kubernetes"):
            raise ValueError(f"InferenceStackArgs.config.target: {cfg.target!r}; expected aws or kubernetes")
        super().__init__(TYPE, name, None, opts)
        self.runtime_repository = None
        if cfg.target == "aws":
            self._aws(name, cfg, cluster_name)
        else:
            self._kubernetes(name, cfg)
        self.register_outputs(
            {
                "endpoints": self.endpoints,
                "model_uris": self.model_uris,
                "bucket_name": self.bucket_name,
                "cluster_name": self.cluster_name,
                "kubeconfig": self.kubeconfig,
                "runtime_repository": self.runtime_repository,
            }
        )

    # -- aws: EKS + S3 ---------------------------------------------------------------------
    def _aws(self, name: str, cfg: StackConfig, cluster_name: str) -> None:
        provider = aws.Provider(
            f"{name}-aws",
            region=cfg.region,
            default_tags={"tags": cfg.tags},
            opts=pulumi.ResourceOptions(parent=self),
        )
        on_aws = pulumi.ResourceOptions(parent=self, providers={"aws": provider})
        try:
            network = Network(
                f"{name}-network",
                NetworkArgs(
                    cluster_name=cluster_name,
                    cidr=cfg.network.cidr,
                    az_count=cfg.network.az_count,
                    nat=cfg.network.nat,
                    region=cfg.region,
                    gpu_instance_types=[t for p in cfg.gpu_pools for t in p.instance_types],
                ),
                opts=on_aws,
            )
        except ZoneShortage as e:
            raise ConfigError(
                "network.azCount",
                e.az_count,
                f"at most {len(e.zones)}: {e.detail} (or choose GPU instance types offered in more zones)",
            ) from None
        cluster = Cluster(
            f"{name}-cluster",
            ClusterArgs(
                cluster_name=cluster_name,
                version=cfg.cluster_version,
                subnet_ids=network.private_subnet_ids,
                region=cfg.region,
                admin_principal_arns=cfg.cluster_admins,
                support_type=cfg.cluster_support_type,
                public_access_cidrs=cfg.public_access_cidrs,
            ),
            opts=on_aws,
        )
        # The CNI (with NetworkPolicy enforcement) and kube-proxy before the nodes; CoreDNS after them.
        networking = EksAddons(
            f"{name}-networking",
            EksAddonsArgs(
                cluster_name=cluster.name,
                cluster_version=cfg.cluster_version,
                addons=["vpc-cni", "kube-proxy"],
                tags=cfg.tags,
            ),
            opts=on_aws,
        )

        def node_pool(role: str, instance_types: list[str], min_size: int, max_size: int,
                      desired_size: int, **kind: Any) -> GpuNodePool:
            # what every pool of this cluster shares; `kind` is what makes it a system or GPU pool
            return GpuNodePool(
                f"{name}-{role}",
                GpuNodePoolArgs(
                    cluster_name=cluster.name,
                    node_role_arn=cluster.node_role_arn,
                    subnet_ids=network.private_subnet_ids,
                    instance_types=instance_types,
                    autoscaler_cluster=cluster_name,
                    version=cluster.version,
                    node_group_depends_on=[*cluster.node_policy_attachments, *networking.addons.values()],
                    min_size=min_size,
                    max_size=max_size,
                    desired_size=desired_size,
                    **kind,
                ),
                opts=on_aws,
            )

        pools: list[GpuNodePool] = []
        if cfg.system_pool is not None:
            sp = cfg.system_pool
            pools.append(node_pool("system", sp.instance_types, sp.min_size, sp.max_size, sp.desired_size,
                                   disk_size_gib=50, gpu=False))
        for pool in cfg.gpu_pools:
            pools.append(node_pool(pool.name, pool.instance_types, pool.min_size, pool.max_size,
                                   pool.desired_size, disk_size_gib=pool.disk_size_gib,
                                   ami_type=pool.ami_type, capacity_type=pool.capacity_type))

        dns = EksAddons(
            f"{name}-dns",
            EksAddonsArgs(
                cluster_name=cluster.name,
                cluster_version=cfg.cluster_version,
                addons=["coredns"],
                depends_on=list(pools),
                tags=cfg.tags,
            ),
            opts=on_aws,
        )
        managed_addons: list[pulumi.Resource] = [*networking.addons.values(), *dns.addons.values()]
        kube = k8s.Provider(
            f"{name}-k8s",
            kubeconfig=cluster.kubeconfig,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[cluster]),
        )
        on_k8s = pulumi.ResourceOptions(parent=self, providers={"aws": provider, "kubernetes": kube})
        cluster_addons: list[pulumi.Resource] = []
        if cfg.gpu_pools:
            # Scales the GPU pools from zero when an inference pod is pending, and back when idle.
            cluster_addons.append(
                ClusterAutoscaler(
                    f"{name}-autoscaler",
                    ClusterAutoscalerArgs(
                        cluster_name=cluster_name,
                        cluster_version=cfg.cluster_version,
                        region=cfg.region,
                        tags=cfg.tags,
                    ),
                    opts=pulumi.ResourceOptions(
                        parent=self,
                        providers={"aws": provider, "kubernetes": kube},
                        depends_on=[*cluster.addons, *pools],
                    ),
                )
            )
        if any(p.ami_type.startswith("AL2023") for p in cfg.gpu_pools):
            cluster_addons.append(
                NvidiaDevicePlugin(
                    f"{name}-device-plugin",
                    opts=pulumi.ResourceOptions(
                        parent=self, providers={"kubernetes": kube}, depends_on=pools[:1]
                    ),
                )
            )

        store = ModelStore(
            f"{name}-store",
            ModelStoreArgs(
                bucket_prefix=cfg.model_store.bucket_prefix,
                bucket_name=cfg.model_store.bucket_name,
                force_destroy=cfg.model_store.force_destroy,
                protect=cfg.model_store.protect,
                noncurrent_version_days=cfg.model_store.noncurrent_version_days,
                tags=cfg.tags,
            ),
            opts=on_aws,
        )
        images = self._runtime_images(name, cfg, on_aws)
        if cfg.gpu_pools:
            # GPU utilization and memory for the dashboard, from the GPU nodes only.
            cluster_addons.append(
                DcgmExporter(
                    f"{name}-dcgm-exporter",
                    opts=pulumi.ResourceOptions(
                        parent=self, providers={"kubernetes": kube}, depends_on=pools[:1]
                    ),
                )
            )
        scaling = _ScalingAddons(self, name, cfg, kube, depends_on=[*cluster.addons, *pools])

        artifacts = _artifacts(name, cfg, store.bucket_name, on_aws)
        endpoints = self._model_servers(
            cfg, "aws", name, artifacts, images, scaling, store.bucket_name,
            pulumi.ResourceOptions.merge(
                on_k8s,
                pulumi.ResourceOptions(depends_on=[*cluster.addons, *managed_addons, *cluster_addons]),
            ),
            # destroy: the Service (and its NLB) goes before the VPC's gateways and subnets.
            [*network.gateways, *pools],
            cluster_name=cluster.name,
            kms_key_arn=store.kms_key_arn,
            region=cfg.region,
            tags=cfg.tags,
        )
        uris = {m: a.uri for m, a in artifacts.items()}

        self.endpoints = pulumi.Output.all(**endpoints)
        self.model_uris = pulumi.Output.all(**uris)
        self.bucket_name = store.bucket_name
        self.cluster_name = cluster.name
        self.kubeconfig = cluster.kubeconfig

    # -- kubernetes: existing cluster + S3-compatible store --------------------------------
    def _kubernetes(self, name: str, cfg: StackConfig) -> None:
        store_cfg = cfg.object_store
        assert store_cfg is not None  # config.load() requires it for this target
        provider = aws.Provider(
            f"{name}-object-store",
            region=store_cfg.region,
            access_key=store_cfg.access_key_id,
            secret_key=store_cfg.secret_access_key,
            endpoints=[{"s3": store_cfg.endpoint}],
            # MinIO/Ceph: path-style; OSS and COS refuse it (objectStore.addressingStyle: virtual)
            s3_use_path_style=store_cfg.addressing_style == "path",
            skip_credentials_validation=True,
            skip_requesting_account_id=True,
            skip_metadata_api_check=True,
            skip_region_validation=True,
            opts=pulumi.ResourceOptions(parent=self),
        )
        kube = k8s.Provider(
            f"{name}-k8s",
            context=cfg.kube_context,
            kubeconfig=cfg.kubeconfig_contents or cfg.kubeconfig,
            opts=pulumi.ResourceOptions(parent=self),
        )
        on_store = pulumi.ResourceOptions(parent=self, providers={"aws": provider})
        on_k8s = pulumi.ResourceOptions(parent=self, providers={"aws": provider, "kubernetes": kube})
        # S3-compatible stores lack S3's public-access-block and KMS APIs, and a local one speaks http:
        # the bucket is private by the store's default, versioned and lifecycle-managed.
        store = ModelStore(
            f"{name}-store",
            ModelStoreArgs(
                bucket_prefix=cfg.model_store.bucket_prefix,
                bucket_name=cfg.model_store.bucket_name,
                force_destroy=cfg.model_store.force_destroy,
                protect=cfg.model_store.protect,
                noncurrent_version_days=cfg.model_store.noncurrent_version_days,
                kms=False,
                block_public_access=False,
                require_tls=False,
                abort_incomplete_upload_days=None,
                tags={},
            ),
            opts=on_store,
        )
        images = self._runtime_images(name, cfg, pulumi.ResourceOptions(parent=self))
        scaling = _ScalingAddons(self, name, cfg, kube, depends_on=[])
        artifacts = _artifacts(name, cfg, store.bucket_name, on_store)
        endpoints = self._model_servers(
            cfg, "kubernetes", name, artifacts, images, scaling, store.bucket_name, on_k8s, [],
            region=store_cfg.region,
            s3_credentials=S3Credentials(store_cfg.access_key_id, store_cfg.secret_access_key),
            s3_endpoint=store_cfg.cluster_endpoint,
            s3_addressing_style=store_cfg.addressing_style,
        )
        uris = {m: a.uri for m, a in artifacts.items()}
        self.endpoints = pulumi.Output.all(**endpoints)
        self.model_uris = pulumi.Output.all(**uris)
        self.bucket_name = store.bucket_name
        self.cluster_name = pulumi.Output.from_input(cfg.kube_context or "(current kubeconfig context)")
        self.kubeconfig = pulumi.Output.secret(cfg.kubeconfig_contents or cfg.kubeconfig or "")

    # -- the model servers: one InferenceService (Deployment, Service, exposure) each ----------
    def _model_servers(
        self,
        cfg: StackConfig,
        target: str,
        name: str,
        artifacts: dict[str, ModelArtifact],
        images: dict[str, pulumi.Output[str]],
        scaling: _ScalingAddons,
        bucket: pulumi.Input[str],
        opts: pulumi.ResourceOptions,
        service_depends_on: list[pulumi.Resource],
        **target_args: Any,
    ) -> dict[str, pulumi.Output[str]]:
        """Declare every model server of the stack on ``target`` (``aws``/``kubernetes``), with the
        target's own InferenceServiceArgs (``target_args``); returns model name -> endpoint URL."""
        endpoints: dict[str, pulumi.Output[str]] = {}
        paths = ingress_paths(cfg.model_servers())
        for m in cfg.model_servers():
            exposure = _exposure(m, target, paths.get(m.name))
            first = artifacts[m.models[0].name]
            svc = InferenceService(
                f"{name}-{m.name}",
                InferenceServiceArgs(
                    model_name=m.name,
                    image=m.image or images[m.variant],
                    model_uri=first.uri,
                    bucket=bucket,
                    model_prefix=first.prefix,
                    extra_models=_extra_models(m, artifacts),
                    **_sizing(m),
                    **scaling.service_exposure(m, exposure),
                    auth_token=cfg.auth_token if m.auth else None,
                    service_depends_on=service_depends_on,
                    **target_args,
                ),
                opts=opts,
            )
            url = scaling.autoscale(m, svc, exposure, service_depends_on=service_depends_on)
            endpoints.update({model.name: url for model in m.models})
        return endpoints

    # -- runtime images: one per variant the models use ------------------------------------
    def _runtime_images(
        self, name: str, cfg: StackConfig, opts: pulumi.ResourceOptions
    ) -> dict[str, pulumi.Output[str]]:
        """Variant (``gpu``/``cpu``) -> image reference by digest, for the variants that a model
        without its own ``image`` runs: built during ``pulumi up``, or prebuilt (config checked that
        each is pinned by digest)."""
        ri = cfg.runtime_image
        images: dict[str, pulumi.Output[str]] = {}
        for variant in sorted({s.variant for s in cfg.model_servers() if s.image is None}):
            if not ri.build:
                images[variant] = pulumi.Output.from_input(ri.prebuilt[variant])
                continue
            ecr = ri.registry == "ecr"
            image = RuntimeImage(
                f"{name}-runtime-{variant}",
                RuntimeImageArgs(
                    variant=variant,
                    ecr_repository=f"inferstack-runtime-{pulumi.get_stack()}-{variant}" if ecr else None,
                    repository=None if ecr else f"{ri.registry}",
                    platform=ri.platform,
                    force_delete=cfg.model_store.force_destroy,
                    tags=cfg.tags if ecr else {},
                ),
                opts=opts,
            )
            images[variant] = image.image
            if image.repository_url is not None and self.runtime_repository is None:
                self.runtime_repository = image.repository_url
        return images


class _ScalingAddons:
    """The stack's KEDA, HTTP add-on, Prometheus and Grafana (as ``cfg.addons`` asks), and per model
    server the Autoscaling that uses them."""

    def __init__(
        self,
        stack: pulumi.ComponentResource,
        name: str,
        cfg: StackConfig,
        kube: k8s.Provider,
        depends_on: list[pulumi.Resource],
    ) -> None:
        self.stack, self.name = stack, name
        self.kube = kube
        opts = pulumi.ResourceOptions(parent=stack, providers={"kubernetes": kube}, depends_on=depends_on)
        wanted = any(m.autoscaling for m in cfg.model_servers())
        self.keda: list[pulumi.Resource] = []
        self.http: KedaHttpAddon | None = None
        if cfg.addons.keda and wanted:
            keda = Keda(f"{name}-keda", opts=opts)
            after_keda = pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(depends_on=[keda]))
            self.http = KedaHttpAddon(f"{name}-keda-http", opts=after_keda)
            self.keda = [keda, self.http]
        # KEDA's HTTP add-on: the stack's, or the one the user installed (addons.keda false, httpAddon)
        if self.http is not None:
            self.interceptor_host: pulumi.Input[str] = self.http.interceptor_host
            self.interceptor_namespace: pulumi.Input[str] = self.http.namespace
            self.interceptor_port = self.http.interceptor_port
            self.scaler_address: pulumi.Input[str] = self.http.scaler_address
        else:
            ns = cfg.addons.http_addon_namespace or KedaHttpAddonArgs().namespace
            self.interceptor_host = f"{INTERCEPTOR_SERVICE}.{ns}.svc.cluster.local"
            self.interceptor_namespace = ns
            self.interceptor_port = cfg.addons.http_addon_proxy_port or KedaHttpAddonArgs().proxy_port
            self.scaler_address = f"{SCALER_SERVICE}.{ns}:{SCALER_PORT}"
        self.prometheus_address: pulumi.Output[str] | None = None
        if cfg.addons.prometheus:
            prometheus = Prometheus(f"{name}-prometheus", opts=opts)
            self.prometheus_address = prometheus.address
            if cfg.addons.grafana:
                Grafana(f"{name}-grafana", GrafanaArgs(prometheus_address=prometheus.address), opts=opts)
        elif cfg.addons.prometheus_address:
            self.prometheus_address = pulumi.Output.from_input(cfg.addons.prometheus_address)

    def service_exposure(self, m: ModelServerConfig, exposure: dict[str, Any]) -> dict[str, Any]:
        """The server's own Service: as ``exposure`` asks, or, when ``m`` scales to zero, an
        ExternalName to the interceptor (whose front takes the exposure) plus the ClusterIP backend
        the interceptor forwards to."""
        backend = backend_service(m)
        if backend is None:
            return exposure
        return {"exposure": "clusterIP", "backend_service": backend, "external_name": self.interceptor_host}

    def autoscale(
        self,
        m: ModelServerConfig,
        svc: InferenceService,
        exposure: dict[str, Any],
        service_depends_on: list[pulumi.Resource],
    ) -> pulumi.Output[str]:
        """Declare server ``m``'s Autoscaling (if any); its endpoint URL. ``exposure`` is how the
        server's Service would be exposed (the interceptor takes its place at zero)."""
        a = m.autoscaling
        if a is None:
            return svc.endpoint_url
        assert self.prometheus_address is not None  # config.load() requires one with autoscaling
        scaling = Autoscaling(
            f"{self.name}-{m.name}-autoscaling",
            AutoscalingArgs(
                model_name=m.name,
                namespace=m.name,
                min_replicas=a.min_replicas,
                max_replicas=a.max_replicas,
                prometheus_address=self.prometheus_address,
                target_queue_depth=a.target_queue_depth,
                target_inflight=a.target_inflight,
                scale_to_zero_after_s=a.scale_to_zero_after_s,
                backend_service=backend_service(m),
                **exposure,
                interceptor_host=self.interceptor_host,
                interceptor_namespace=self.interceptor_namespace,
                interceptor_port=self.interceptor_port,
                scaler_address=self.scaler_address,
                service_depends_on=service_depends_on,
            ),
            opts=pulumi.ResourceOptions(
                parent=self.stack, providers={"kubernetes": self.kube}, depends_on=[svc, *self.keda]
            ),
        )
        return scaling.endpoint_url if scaling.endpoint_url is not None else svc.endpoint_url


def _artifacts(
    name: str, cfg: StackConfig, bucket: pulumi.Output[str], opts: pulumi.ResourceOptions
) -> dict[str, ModelArtifact]:
    """Each model's package uploaded (and checked against its sha256s) on its own, whatever server
    runs it: model name -> its ModelArtifact."""
    return {
        m.name: ModelArtifact(
            f"{name}-{m.name}-artifact", ModelArtifactArgs(bucket=bucket, package_dir=m.path), opts=opts
        )
        for m in cfg.models
    }


def _extra_models(m: ModelServerConfig, artifacts: dict[str, ModelArtifact]) -> list[ServedModel]:
    return [ServedModel(artifacts[x.name].uri, artifacts[x.name].prefix) for x in m.models[1:]]


def ingress_paths(servers: list[ModelServerConfig]) -> dict[str, list[str] | None]:
    """Server name -> the paths its Ingress routes (``exposure: ingress``): ``/v2/models/<name>``
    for each of its models (the name the runtime serves it under, its manifest's), plus ``/``
    (health, server metadata, metrics) when no other server shares the host. None (every path, as
    for one model per Deployment) for a one-model server alone on its host."""
    hosts: dict[str, int] = {}
    for s in servers:
        if s.exposure == "ingress" and s.ingress_host:
            hosts[s.ingress_host] = hosts.get(s.ingress_host, 0) + 1
    out: dict[str, list[str] | None] = {}
    for s in servers:
        if s.exposure != "ingress" or not s.ingress_host:
            continue
        shared = hosts[s.ingress_host] > 1
        if len(s.models) == 1 and not shared:
            out[s.name] = None
            continue
        out[s.name] = [f"/v2/models/{m.manifest.name}" for m in s.models] + ([] if shared else ["/"])
    return out


def backend_service(m: ModelServerConfig) -> str | None:
    """The Service selecting server ``m``'s pods when it scales to zero (clients reach the
    interceptor under the server's name); None otherwise."""
    return f"{m.name}-backend" if m.autoscaling and m.autoscaling.min_replicas == 0 else None


def _sizing(m: ModelServerConfig) -> dict[str, Any]:
    scaling = m.autoscaling
    return {
        "replicas": scaling.min_replicas if scaling else m.replicas,
        "autoscaled": scaling is not None,
        "gpus": m.gpus,
        "cpu": m.cpu,
        "memory": m.memory,
        "image_pull_policy": m.image_pull_policy,
        "cache_size": m.cache_size,
    }


def _exposure(m: ModelServerConfig, target: str, paths: list[str] | None = None) -> dict[str, Any]:
    """``models[].exposure`` as InferenceService arguments. ``internal`` and ``public`` keep their
    meaning per target: an internal / internet-facing AWS NLB on ``aws``; on ``kubernetes``, whose
    clusters may have no load balancer at all, ClusterIP / a plain LoadBalancer Service.
    ``loadBalancer`` on ``aws`` is an internal NLB (``public`` is the internet-facing one)."""
    if target == "aws" and m.exposure in ("internal", "public", "loadBalancer"):
        scheme = "internet-facing" if m.exposure == "public" else "internal"
        return {"exposure": "loadBalancer", "load_balancer_scheme": scheme}
    exposure = {"internal": "clusterIP", "public": "loadBalancer"}.get(m.exposure, m.exposure)
    out = {"exposure": exposure, "ingress_class": m.ingress_class, "ingress_host": m.ingress_host}
    return {**out, "ingress_paths": paths} if paths else out
