"""What a plan never writes (a secret, in any file) and what it never reads (a YAML alias bomb, a
plaintext secret, an unknown key): each refused in one line with exit 1 and nothing written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from inferstack.cli import app

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


def _plan(project, *extra: str):
    return runner.invoke(app, project.args(*extra))


def _written(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): p.read_text() for p in folder.rglob("*") if p.is_file()}


def _one_line_error(result, *needles: str) -> str:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1, result.output
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def test_a_billion_laughs_stack_file_is_refused(project) -> None:
    levels = ['  a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, 10):
        levels.append(f"  a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    text = "config:\n  aws:region: us-east-1\n  inferstack:bomb:\n" + "\n".join(
        "  " + ln for ln in levels
    ) + "\n"
    (project.root / "stacks" / "Pulumi.dev.yaml").write_text(text)  # ~1 KB; 9^10 strings expanded
    line = _one_line_error(
        _plan(project, "--stack", "dev"), "Pulumi.dev.yaml", "line 4", "YAML anchors and aliases"
    )
    assert "not valid YAML" in line
    assert not (project.root / "plan").exists()


def test_a_merge_key_is_an_alias_too(project) -> None:
    (project.root / "stacks" / "Pulumi.dev.yaml").write_text(
        "config:\n  inferstack:a: &base {x: 1}\n  inferstack:b:\n    <<: *base\n"
    )
    _one_line_error(_plan(project, "--stack", "dev"), "line 2: YAML anchors and aliases")


def test_a_plaintext_secret_is_refused_with_the_command_that_encrypts_it(project) -> None:
    project.set_stack("dev", authToken="plain-token-4711")
    result = _plan(project, "--stack", "dev")
    _one_line_error(
        result,
        "inferstack:authToken: a secret in plain text in Pulumi.dev.yaml",
        "`pulumi config set --secret 'inferstack:authToken' <value> --stack dev`",
    )
    assert "plain-token-4711" not in result.output
    assert not (project.root / "plan").exists()


def test_kubernetes_secret_data_is_masked_in_every_file(project) -> None:
    # the stand-in reads a plain config value (`secretData`, not a secret to Pulumi) into a Secret,
    # whose data pulumi_kubernetes marks secret: the plan's json and the manifest show `<secret>`
    project.set_stack("dev", secretData="s3cr3t-in-a-secret")
    result = _plan(project, "--stack", "dev")
    assert result.exit_code == 0, result.output
    files = _written(project.root / "plan")
    assert yaml.safe_load(files["dev/k8s/secret-creds.yaml"])["stringData"] == {"token": "<secret>"}
    snapshot = json.loads(files.pop("dev.json"))
    assert snapshot["config"].pop("inferstack:secretData")  # the stack file's own plain value
    files["dev.json"] = json.dumps(snapshot)
    assert not [name for name, text in files.items() if "s3cr3t-in-a-secret" in text]


# -- the repo's own program --------------------------------------------------------------------
def _repo_copy(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    root.mkdir()
    shutil.copy(ROOT / "Pulumi.yaml", root / "Pulumi.yaml")
    shutil.copytree(ROOT / "stacks", root / "stacks")
    shutil.copytree(ROOT / "examples" / "packages", root / "examples" / "packages")
    return root


def _local_stack(root: Path, **store: object) -> None:
    path = root / "stacks" / "Pulumi.local.yaml"
    doc = yaml.safe_load(path.read_text())
    doc["config"]["inferstack:objectStore"].update(store)
    path.write_text(yaml.safe_dump(doc))


def _repo_plan(root: Path, stack: str):
    return runner.invoke(app, ["plan", "--stack", stack, "--project-dir", str(root)])


def test_the_repo_program_refuses_a_plaintext_store_key(tmp_path: Path) -> None:
    root = _repo_copy(tmp_path)
    _local_stack(root, secretAccessKey="plain-minio-key")
    result = _repo_plan(root, "local")
    _one_line_error(
        result,
        "inferstack:objectStore.secretAccessKey: a secret in plain text in Pulumi.local.yaml",
        "`pulumi config set --secret --path 'inferstack:objectStore.secretAccessKey' <value> --stack local`",
    )
    assert "plain-minio-key" not in result.output
    assert not (root / "plan").exists()


def test_secure_values_appear_in_no_plan_file(tmp_path: Path) -> None:
    root = _repo_copy(tmp_path)
    _local_stack(root, secretAccessKey={"secure": "v1:c2VjdXJlLW1pbmlvLWtleQ=="})
    prod = root / "stacks" / "Pulumi.prod.yaml"
    doc = yaml.safe_load(prod.read_text())
    doc["config"]["inferstack:authToken"] = {"secure": "v1:c2VjdXJlLXRva2Vu"}
    prod.write_text(yaml.safe_dump(doc))
    for stack in ("local", "prod"):
        result = _repo_plan(root, stack)
        assert result.exit_code == 0, result.output
    files = _written(root / "plan")
    assert len(files) > 10
    for value in ("c2VjdXJlLW1pbmlvLWtleQ==", "c2VjdXJlLXRva2Vu"):
        assert not [name for name, text in files.items() if value in text], value
    assert yaml.safe_load(files["local/k8s/secret-tiny-s3.yaml"])["stringData"] == {"credentials": "<secret>"}


def test_the_committed_stacks_hold_no_plaintext_secret() -> None:
    # the plans the repo commits are made from these files (test_repo_stacks checks they are current)
    for path in (ROOT / "stacks").glob("Pulumi.*.yaml"):
        config = yaml.safe_load(path.read_text())["config"]
        assert "secretAccessKey" not in (config.get("inferstack:objectStore") or {}), path.name
        assert not isinstance(config.get("inferstack:authToken"), str), path.name


def test_the_repo_program_names_the_key_a_typo_meant(tmp_path: Path) -> None:
    root = _repo_copy(tmp_path)
    dev = root / "stacks" / "Pulumi.dev.yaml"
    doc = yaml.safe_load(dev.read_text())
    doc["config"]["inferstack:autToken"] = {"secure": "v1:dHlwbw=="}
    dev.write_text(yaml.safe_dump(doc))
    result = _repo_plan(root, "dev")
    _one_line_error(result, "inferstack:autToken: unknown key; did you mean 'authToken'?")
    assert "dHlwbw==" not in result.output and not (root / "plan").exists()


KUBE_TOKEN = "kubeconfig-token-4711"
INLINE_KUBECONFIG = (
    "apiVersion: v1\nkind: Config\nusers:\n- name: u\n  user:\n"
    f"    token: {KUBE_TOKEN}\n    client-key-data: Y2xpZW50LWtleQ==\n"
)


def _local_config(root: Path, **values: object) -> None:
    path = root / "stacks" / "Pulumi.local.yaml"
    doc = yaml.safe_load(path.read_text())
    doc["config"].update({f"inferstack:{k}": v for k, v in values.items()})
    path.write_text(yaml.safe_dump(doc))


def _kube_provider_input(root: Path) -> object:
    snapshot = json.loads((root / "plan" / "local.json").read_text())
    (provider,) = [r for r in snapshot["resources"] if r["type"] == "pulumi:providers:kubernetes"]
    return provider["inputs"].get("kubeconfig")


@pytest.mark.parametrize("key", ["kubeconfig", "kubeconfigContents"])
def test_a_plaintext_kubeconfig_is_refused_and_written_nowhere(tmp_path: Path, key: str) -> None:
    root = _repo_copy(tmp_path)
    _local_config(root, **{key: INLINE_KUBECONFIG})
    result = _repo_plan(root, "local")
    line = _one_line_error(result, f"inferstack:{key}:", "pulumi config set --secret")
    assert "kubeconfigContents" in line
    assert KUBE_TOKEN not in result.output and "Y2xpZW50LWtleQ==" not in result.output
    assert not (root / "plan").exists()


def test_secure_kubeconfig_contents_appear_in_no_plan_file(tmp_path: Path) -> None:
    root = _repo_copy(tmp_path)
    _local_config(root, kubeconfigContents={"secure": "v1:a3ViZWNvbmZpZy1zZWNyZXQ="})
    result = _repo_plan(root, "local")
    assert result.exit_code == 0, result.output
    files = _written(root / "plan")
    assert not [name for name, text in files.items() if "a3ViZWNvbmZpZy1zZWNyZXQ=" in text]
    assert _kube_provider_input(root) == "<secret>"  # not joined onto the project path
    assert json.loads(files["local.json"])["config"]["inferstack:kubeconfigContents"] == "<secret>"


def test_a_kubeconfig_path_is_planned_as_given(tmp_path: Path) -> None:
    root = _repo_copy(tmp_path)
    _local_config(root, kubeconfig="~/.kube/other")
    result = _repo_plan(root, "local")
    assert result.exit_code == 0, result.output
    assert _kube_provider_input(root) == "~/.kube/other"
    files = _written(root / "plan")
    for local_path in (str(Path.home()), str(root)):
        assert not [name for name, text in files.items() if local_path in text], local_path
