"""Network: a VPC with public subnets (NAT, public load balancers) and private subnets for the nodes.

* Zones are chosen among those that offer every GPU instance type the node groups may launch
  (``ec2:DescribeInstanceTypeOfferings`` by availability zone): a zone without them would hold a
  subnet where the GPU node group can never start a node.
* An S3 gateway endpoint on the private route tables: model downloads and ECR image layers (served
  from S3) bypass the NAT gateways and their per-GB processing charge; a gateway endpoint itself is
  free.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

import pulumi
import pulumi_aws as aws

TYPE = "inferstack:network:Network"
NAT_MODES = ("single", "perAz")


@dataclass
class NetworkArgs:
    cluster_name: str
    """EKS cluster that uses the subnets (``kubernetes.io/cluster/<name>`` tags). Required."""
    cidr: str = "10.40.0.0/16"
    """VPC CIDR, /20 or larger; one public and one private subnet per zone. Default 10.40.0.0/16."""
    az_count: int = 2
    """Availability zones, 2-3 (EKS needs two). Default 2."""
    nat: str = "single"
    """``single`` NAT gateway for all zones (dev; a zone outage cuts egress) or ``perAz`` (prod).
    Default single."""
    region: str = "us-east-1"
    """Region of the VPC, for the S3 endpoint's service name. Default us-east-1."""
    gpu_instance_types: list[str] = field(default_factory=list)
    """Instance types the GPU node groups launch: only zones that offer all of them are used.
    Default none (any zone)."""
    s3_gateway_endpoint: bool = True
    """An S3 gateway endpoint on the private route tables. Default true."""
    tags: dict[str, str] = field(default_factory=dict)
    """Tags on every resource. Default none."""


class ZoneShortage(ValueError):
    """Fewer zones offer the GPU instance types than ``az_count`` asks for."""

    def __init__(self, az_count: int, region: str, instance_types: list[str], zones: list[str]) -> None:
        self.az_count, self.zones = az_count, zones
        self.detail = (
            f"only {len(zones)} zone(s) of {region} offer {', '.join(sorted(set(instance_types)))}"
            f"{': ' + ', '.join(zones) if zones else ''}"
        )
        super().__init__(
            f"NetworkArgs.az_count: {az_count}; {self.detail} "
            "(lower the zone count, or choose instance types offered in more zones)"
        )


class Network(pulumi.ComponentResource):
    vpc_id: pulumi.Output[str]
    private_subnet_ids: pulumi.Output[list[str]]
    public_subnet_ids: pulumi.Output[list[str]]
    zones: list[str]
    """The availability zones of the subnets, in order."""
    gateways: list[pulumi.Resource]
    """The internet and NAT gateways and routes: a LoadBalancer Service lists them in ``depends_on`` so
    that ``pulumi destroy`` removes its load balancer before the VPC's gateways and subnets."""

    def __init__(self, name: str, args: NetworkArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        try:
            net = ipaddress.IPv4Network(args.cidr)
        except ValueError:
            raise ValueError(
                f"NetworkArgs.cidr: {args.cidr!r}; expected an IPv4 CIDR such as 10.40.0.0/16"
            ) from None
        if net.prefixlen > 20:
            raise ValueError(f"NetworkArgs.cidr: {args.cidr}; expected /20 or larger")
        if not 2 <= args.az_count <= 3:
            raise ValueError(f"NetworkArgs.az_count: {args.az_count}; expected 2 or 3")
        if args.nat not in NAT_MODES:
            raise ValueError(f"NetworkArgs.nat: {args.nat!r}; expected one of {', '.join(NAT_MODES)}")
        super().__init__(TYPE, name, None, opts)
        child = pulumi.ResourceOptions(parent=self)

        available: list[str] = list(
            aws.get_availability_zones(
                state="available",
                filters=[{"name": "opt-in-status", "values": ["opt-in-not-required"]}],
                opts=pulumi.InvokeOptions(parent=self),
            ).names
        )
        if len(available) < args.az_count:
            raise ValueError(
                f"NetworkArgs.az_count: {args.az_count}; the region has only {len(available)} zones"
            )
        offering = available
        if args.gpu_instance_types:
            offered = aws.ec2.get_instance_type_offerings(
                location_type="availability-zone",
                filters=[{"name": "instance-type", "values": sorted(set(args.gpu_instance_types))}],
                opts=pulumi.InvokeOptions(parent=self),
            )
            offering = offering_zones(
                available, list(offered.locations), list(offered.instance_types), args.gpu_instance_types
            )
            if len(offering) < args.az_count:
                raise ZoneShortage(args.az_count, args.region, args.gpu_instance_types, offering)
        zones = offering[: args.az_count]
        self.zones = zones
        blocks = list(net.subnets(new_prefix=net.prefixlen + 4))
        cluster_tag = {f"kubernetes.io/cluster/{args.cluster_name}": "shared"}

        vpc = aws.ec2.Vpc(
            f"{name}-vpc",
            cidr_block=str(net),
            enable_dns_hostnames=True,
            enable_dns_support=True,
            tags={**args.tags, "Name": f"{name}-vpc"},
            opts=child,
        )
        igw = aws.ec2.InternetGateway(
            f"{name}-igw", vpc_id=vpc.id, tags={**args.tags, "Name": f"{name}-igw"}, opts=child
        )
        public_rt = aws.ec2.RouteTable(
            f"{name}-public-rt", vpc_id=vpc.id, tags={**args.tags, "Name": f"{name}-public"}, opts=child
        )
        public_route = aws.ec2.Route(
            f"{name}-public-default",
            route_table_id=public_rt.id,
            destination_cidr_block="0.0.0.0/0",
            gateway_id=igw.id,
            opts=child,
        )
        self.gateways = [igw, public_route]

        public, private, nats, private_rts = [], [], [], []
        for i, zone in enumerate(zones):
            pub = aws.ec2.Subnet(
                f"{name}-public-{i}",
                vpc_id=vpc.id,
                availability_zone=zone,
                cidr_block=str(blocks[8 + i]),
                tags={
                    **args.tags,
                    **cluster_tag,
                    "Name": f"{name}-public-{zone}",
                    "kubernetes.io/role/elb": "1",
                },
                opts=child,
            )
            aws.ec2.RouteTableAssociation(
                f"{name}-public-{i}", subnet_id=pub.id, route_table_id=public_rt.id, opts=child
            )
            public.append(pub)
            if i == 0 or args.nat == "perAz":
                eip = aws.ec2.Eip(
                    f"{name}-nat-{i}",
                    domain="vpc",
                    tags={**args.tags, "Name": f"{name}-nat-{zone}"},
                    opts=pulumi.ResourceOptions(parent=self, depends_on=[igw]),
                )
                nats.append(
                    aws.ec2.NatGateway(
                        f"{name}-nat-{i}",
                        allocation_id=eip.id,
                        subnet_id=pub.id,
                        tags={**args.tags, "Name": f"{name}-nat-{zone}"},
                        opts=pulumi.ResourceOptions(parent=self, depends_on=[public_route]),
                    )
                )
            priv = aws.ec2.Subnet(
                f"{name}-private-{i}",
                vpc_id=vpc.id,
                availability_zone=zone,
                cidr_block=str(blocks[i]),
                tags={
                    **args.tags,
                    **cluster_tag,
                    "Name": f"{name}-private-{zone}",
                    "kubernetes.io/role/internal-elb": "1",
                },
                opts=child,
            )
            rt = aws.ec2.RouteTable(
                f"{name}-private-rt-{i}",
                vpc_id=vpc.id,
                tags={**args.tags, "Name": f"{name}-private-{zone}"},
                opts=child,
            )
            route = aws.ec2.Route(
                f"{name}-private-default-{i}",
                route_table_id=rt.id,
                destination_cidr_block="0.0.0.0/0",
                nat_gateway_id=nats[-1].id,
                opts=child,
            )
            aws.ec2.RouteTableAssociation(
                f"{name}-private-{i}", subnet_id=priv.id, route_table_id=rt.id, opts=child
            )
            private.append(priv)
            private_rts.append(rt)
            self.gateways.append(route)
        self.gateways.extend(nats)
        self.gateways.extend(public)
        if args.s3_gateway_endpoint:
            aws.ec2.VpcEndpoint(
                f"{name}-s3",
                vpc_id=vpc.id,
                service_name=f"com.amazonaws.{args.region}.s3",
                vpc_endpoint_type="Gateway",
                route_table_ids=[rt.id for rt in private_rts],
                tags={**args.tags, "Name": f"{name}-s3"},
                opts=child,
            )

        self.vpc_id = vpc.id
        self.private_subnet_ids = pulumi.Output.all(*[s.id for s in private])
        self.public_subnet_ids = pulumi.Output.all(*[s.id for s in public])
        self.register_outputs(
            {
                "vpc_id": self.vpc_id,
                "private_subnet_ids": self.private_subnet_ids,
                "public_subnet_ids": self.public_subnet_ids,
            }
        )


def offering_zones(
    zones: list[str], locations: list[str], instance_types: list[str], wanted: list[str]
) -> list[str]:
    """The zones (in ``zones`` order) where every type of ``wanted`` is offered; ``locations`` and
    ``instance_types`` are the parallel lists of ``ec2:DescribeInstanceTypeOfferings``."""
    offered: dict[str, set[str]] = {}
    for zone, itype in zip(locations, instance_types, strict=True):
        offered.setdefault(zone, set()).add(itype)
    return [z for z in zones if set(wanted) <= offered.get(z, set())]
