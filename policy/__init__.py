"""The inferstack policy pack: ML-infrastructure rules (see ``rules``) for ``pulumi preview
--policy-pack policy`` and for ``inferstack plan``, which runs the same rules offline."""
