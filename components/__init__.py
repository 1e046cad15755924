"""Pulumi components of inferstack, one ComponentResource per module."""
