"""``python -m inferstack.runtime PATH [options]``: the container's entrypoint (``inferstack serve``)."""

from inferstack.runtime.cli import main

main()
