from __future__ import annotations

from pathlib import Path

import pytest
import yaml

STANDIN = Path(__file__).with_name("standin_program.py")
PROGRAM = f"{STANDIN}:main"

BASE_CONFIG = {
    "aws:region": "us-east-1",
    "inferstack:gpu": {"instanceTypes": ["g4dn.xlarge"], "min": 0, "max": 2},
    "inferstack:authToken": {"secure": "v1:AAAAencrypted"},
}


class Project:
    """A throwaway Pulumi project (Pulumi.yaml + stacks/) that runs the stand-in program."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "stacks").mkdir(parents=True)
        (root / "Pulumi.yaml").write_text("name: inferstack\nruntime: python\nstackConfigDir: stacks\n")

    def set_stack(self, stack: str, **config: object) -> None:
        values = dict(BASE_CONFIG)
        values.update({k if ":" in k else f"inferstack:{k}": v for k, v in config.items()})
        values = {k: v for k, v in values.items() if v is not None}
        (self.root / "stacks" / f"Pulumi.{stack}.yaml").write_text(yaml.safe_dump({"config": values}))

    def args(self, *extra: str) -> list[str]:
        return ["plan", "--program", PROGRAM, "--project-dir", str(self.root), *extra]


@pytest.fixture
def project(tmp_path: Path) -> Project:
    p = Project(tmp_path / "proj")
    p.set_stack("dev")
    p.set_stack("prod", prod=True, gpu={"instanceTypes": ["g6.xlarge", "g5.xlarge"], "min": 1, "max": 4})
    return p
