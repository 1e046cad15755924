"""The rules of :mod:`rules` wrapped as a pulumi_policy pack (pulumi-policy 1.7 API)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pulumi_policy import (
    EnforcementLevel,
    Policy,
    PolicyConfigSchema,
    PolicyPack,
    ReportViolation,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationArgs,
    StackValidationPolicy,
)

if __package__:
    from . import rules
else:  # run by the Pulumi CLI from this folder
    import rules  # type: ignore[no-redef]

PACK_NAME = "inferstack-ml"


def _provider_props(provider: Any) -> Mapping[str, Any]:
    if provider is None or not str(getattr(provider, "resource_type", "")).endswith(":aws"):
        return {}
    return getattr(provider, "props", None) or {}


def from_validation_args(args: ResourceValidationArgs) -> rules.Resource:
    return rules.Resource(
        type=args.resource_type,
        name=args.name,
        urn=args.urn,
        props=args.props,
        provider_props=_provider_props(args.provider),
    )


def from_policy_resource(res: Any) -> rules.Resource:
    deps = {
        prop: [d.urn for d in dependents] for prop, dependents in (res.property_dependencies or {}).items()
    }
    return rules.Resource(
        type=res.resource_type,
        name=res.name,
        urn=res.urn,
        props=res.props,
        property_dependencies=deps,
        provider_props=_provider_props(res.provider),
    )


def _level(rule: rules.Rule) -> EnforcementLevel:
    return EnforcementLevel.MANDATORY if rule.mandatory else EnforcementLevel.ADVISORY


def resource_policy(rule: rules.Rule) -> ResourceValidationPolicy:
    check = rule.resource_check
    assert check is not None

    def validate(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
        for message in check(from_validation_args(args)):
            report_violation(message, None)

    return ResourceValidationPolicy(
        name=rule.name, description=rule.description, validate=validate, enforcement_level=_level(rule)
    )


def stack_policy(rule: rules.Rule) -> StackValidationPolicy:
    check = rule.stack_check
    assert check is not None

    def validate(args: StackValidationArgs, report_violation: ReportViolation) -> None:
        resources = [from_policy_resource(r) for r in args.resources]
        for urn, message in check(resources, dict(args.get_config() or {})):
            report_violation(message, urn)

    schema = None
    if rule.name == "cost-tags-present":
        schema = PolicyConfigSchema(
            properties={
                "requiredTags": {
                    "type": "array",
                    "items": {"type": "string"},
                    "default": list(rules.DEFAULT_REQUIRED_TAGS),
                },
            }
        )
    return StackValidationPolicy(
        name=rule.name,
        description=rule.description,
        validate=validate,
        enforcement_level=_level(rule),
        config_schema=schema,
    )


def policies() -> list[Policy]:
    made: list[Policy] = []
    for rule in rules.RULES:
        made.append(resource_policy(rule) if rule.resource_check is not None else stack_policy(rule))
    return made


def serve() -> None:
    """Start the pack's analyzer server; the Pulumi CLI does this when given ``--policy-pack``."""
    PolicyPack(name=PACK_NAME, policies=policies())
