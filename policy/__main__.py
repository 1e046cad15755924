"""Entry point the Pulumi CLI runs for ``pulumi preview --policy-pack policy``."""

if __package__:
    from .pack import serve
else:
    from pack import serve  # type: ignore[no-redef]

serve()
