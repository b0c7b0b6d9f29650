"""The deployment recipe (``deploy/`` and the README's "Running on several machines") against the
code, without the internet: every ``metatune …`` command parses with metatune's own parser and
every ``ray start …`` with Ray's, every ``METATUNE_*`` variable named is one the code reads, one
image runs in every container, its Ray is the RayCluster's ``rayVersion`` and the one installed
here, and the workers reach the RayCluster's head through its Service."""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import re
import shlex
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
import ray
import yaml
from ray.scripts.scripts import start as ray_start

from metatune.cli import build_parser
from metatune_service.core.config import Settings

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
README = ROOT / "README.md"
SECTION = "## Running on several machines"
VARIABLE = re.compile(r"\bMETATUNE_[A-Z][A-Z0-9_]*")
READ = re.compile(r"""(?:environ\.get|environ\.setdefault|getenv|environ\[)\(?\s*"""
                  r"""["'](METATUNE_[A-Z0-9_]+)["']""")
SHELLS = ("sh", "/bin/sh", "bash", "/bin/bash")
SEPARATORS = ("&&", "||", ";", "|", "&")
ENV_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=.*")


# What the code offers ---------------------------------------------------------------------------

@functools.cache
def known_variables() -> frozenset[str]:
    """The ``METATUNE_*`` variables the packages read: by name through ``os.environ`` /
    ``os.getenv`` anywhere in their sources, and the service's settings (pydantic-settings reads
    ``env_prefix`` + the field's name)."""
    read = {name for package in ("metatune", "metatune_service") for path in (ROOT / package).rglob("*.py")
            for name in READ.findall(path.read_text())}
    prefix = Settings.model_config["env_prefix"]
    assert prefix == "METATUNE_"
    return frozenset(read | {prefix + field.upper() for field in Settings.model_fields})


@functools.cache
def metatune_parser() -> argparse.ArgumentParser:
    """The ``metatune`` command's parser, with the service's commands (its plugin)."""
    return build_parser()


def metatune_error(argv: list[str]) -> str | None:
    """Why ``metatune argv…`` does not parse (argparse's message), or None when it does."""
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            metatune_parser().parse_args(argv)
    except SystemExit:
        return f"metatune {shlex.join(argv)}: {stderr.getvalue().strip().splitlines()[-1]}"
    return None


def ray_start_error(argv: list[str]) -> str | None:
    """Why ``ray start argv…`` does not parse (Ray's own click command), or None when it does."""
    try:
        ray_start.make_context("ray start", list(argv))
    except click.ClickException as error:
        return f"ray start {shlex.join(argv)}: {error.format_message()}"
    return None


# What the recipe says ---------------------------------------------------------------------------

def shell_commands(script: str) -> list[list[str]]:
    """The simple commands of a shell script: split at ``&&``, ``;``, pipes and line ends
    (after joining ``\\``-continued lines), comments dropped, leading ``exec`` and ``NAME=value``
    assignments dropped."""
    commands = []
    for line in script.replace("\\\n", " ").splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        words: list[str] = []
        for token in [*lexer, ";"]:
            if token not in SEPARATORS:
                words.append(token)
                continue
            while words and (words[0] == "exec" or ENV_ASSIGNMENT.fullmatch(words[0])):
                words.pop(0)
            if words:
                commands.append(words)
            words = []
    return commands


def command_errors(commands: list[list[str]]) -> list[str]:
    """What does not parse among ``commands``' ``metatune …`` and ``ray start …``."""
    errors = []
    for words in commands:
        if words[0] == "metatune":
            errors.append(metatune_error(words[1:]))
        elif words[:2] == ["ray", "start"]:
            errors.append(ray_start_error(words[2:]))
    return [error for error in errors if error is not None]


def unknown_variables(text: str) -> set[str]:
    return set(VARIABLE.findall(text)) - known_variables()


@functools.cache
def manifests() -> tuple[tuple[str, dict], ...]:
    """(file name, document) for every YAML document under deploy/."""
    paths = sorted([*DEPLOY.glob("*.yaml"), *DEPLOY.glob("*.yml")])
    return tuple((path.name, doc) for path in paths for doc in yaml.safe_load_all(path.read_text())
                 if doc is not None)


def of_kind(kind: str) -> list[dict]:
    return [doc for _, doc in manifests() if doc["kind"] == kind]


def containers(node: object) -> Iterator[dict]:
    """Every container (and init container) under ``node``."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("containers", "initContainers"):
                yield from value
            else:
                yield from containers(value)
    elif isinstance(node, list):
        for item in node:
            yield from containers(item)


def container_commands(container: dict) -> list[list[str]]:
    """The commands a container runs: its ``command`` + ``args``, or the script of ``sh -c``."""
    argv = [str(word) for word in container.get("command", []) + container.get("args", [])]
    if argv[:1] and argv[0] in SHELLS and "-c" in argv:
        return shell_commands(argv[argv.index("-c") + 1])
    return [argv] if argv else []


def env(container: dict) -> dict[str, dict]:
    return {item["name"]: item for item in container.get("env", [])}


def metatune_containers(kind: str, subcommand: str) -> list[dict]:
    return [c for doc in of_kind(kind) for c in containers(doc)
            if any(words[:2] == ["metatune", subcommand] for words in container_commands(c))]


def readme_section() -> str:
    text = README.read_text()
    assert SECTION in text, f"README.md has no section {SECTION!r}"
    return text.split(SECTION, 1)[1].split("\n## ", 1)[0]


def readme_commands() -> list[list[str]]:
    blocks = re.findall(r"```bash\n(.*?)```", readme_section(), flags=re.S)
    assert blocks, f"README.md's {SECTION!r} shows no commands"
    return [words for block in blocks for words in shell_commands(block)]


# The checks can fail ----------------------------------------------------------------------------

@pytest.mark.parametrize("argv", [["serve", "--hots", "0.0.0.0"], ["wroker"], ["worker", "--port", "1"],
                                  ["db", "upgrad"], ["serve", "--port", "70000"]])
def test_a_wrong_metatune_command_is_caught(argv):
    assert metatune_error(argv) is not None


@pytest.mark.parametrize("argv", [["--adress=HEAD:6379"], ["--head", "--port=six"], ["--num-cpu=0"]])
def test_a_wrong_ray_start_is_caught(argv):
    assert ray_start_error(argv) is not None


def test_a_wrong_variable_and_a_wrong_shell_command_are_caught():
    misspelt = "METATUNE_RAY_ADRESS=h:6379 METATUNE_RAY_ADDRESS=h:6379"
    assert unknown_variables(misspelt) == {"METATUNE_RAY_ADRESS"}
    script = 'ray start --address="$METATUNE_RAY_ADDRESS" --num-cpus=0 && exec metatune worker --no-worker'
    assert shell_commands(script) == [["ray", "start", "--address=$METATUNE_RAY_ADDRESS", "--num-cpus=0"],
                                      ["metatune", "worker", "--no-worker"]]
    assert len(command_errors(shell_commands(script))) == 1


def test_the_variables_the_code_reads_are_found():
    assert {"METATUNE_DATABASE_URL", "METATUNE_API_TOKENS", "METATUNE_RAY_ADDRESS", "METATUNE_OUTPUT_DIR",
            "METATUNE_RAY_HOST", "METATUNE_RAY_DIR", "METATUNE_TOKEN", "METATUNE_SERVER"} <= known_variables()


# deploy/ ----------------------------------------------------------------------------------------

def test_every_manifest_is_a_named_kubernetes_object():
    assert {"RayCluster", "Deployment", "Service"} <= {doc["kind"] for _, doc in manifests()}
    for name, doc in manifests():
        assert {"apiVersion", "kind", "metadata"} <= doc.keys(), name
        assert doc["metadata"].get("name"), name
    assert {doc["apiVersion"] for doc in of_kind("RayCluster")} == {"ray.io/v1"}


def test_every_command_in_the_manifests_exists():
    commands = [words for _, doc in manifests() for c in containers(doc) for words in container_commands(c)]
    assert command_errors(commands) == []
    ran = {tuple(words[:2]) for words in commands}
    assert {("metatune", "serve"), ("metatune", "worker"), ("metatune", "db"), ("ray", "start")} <= ran


def test_every_ray_start_param_exists():
    for cluster in of_kind("RayCluster"):
        spec = cluster["spec"]
        groups = [(["--head"], spec["headGroupSpec"]), *(([], group) for group in spec["workerGroupSpecs"])]
        for head, group in groups:
            params = group.get("rayStartParams") or {}
            assert all(isinstance(value, str) for value in params.values()), "KubeRay takes strings only"
            argv = head + [f"--{key}" if str(value).lower() == "true" else f"--{key}={value}"
                           for key, value in params.items()]
            assert ray_start_error(argv) is None


def test_every_variable_in_deploy_is_read_by_the_code():
    for path in sorted(DEPLOY.iterdir()):
        assert unknown_variables(path.read_text()) == set(), path.name


def test_one_image_everywhere():
    ray_images = [c["image"] for cluster in of_kind("RayCluster")
                  for group in [cluster["spec"]["headGroupSpec"], *cluster["spec"]["workerGroupSpecs"]]
                  for c in containers(group["template"])]
    service_images = [c["image"] for c in metatune_containers("Deployment", "serve")]
    worker_images = [c["image"] for c in metatune_containers("Deployment", "worker")]
    assert ray_images and service_images and worker_images
    images = {c["image"] for _, doc in manifests() for c in containers(doc)}
    assert len(images) == 1, images
    assert set(ray_images) == set(service_images) == set(worker_images) == images


def test_the_image_installs_the_tests_ray_and_the_pinned_torch():
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert re.findall(r"\bray(?:\[[\w,]+\])?==([\w.]+)", dockerfile) == [ray.__version__]
    assert [cluster["spec"]["rayVersion"] for cluster in of_kind("RayCluster")] == [ray.__version__]
    torch_spec = re.search(r"^TORCH_SPEC\s*\?=\s*(\S+)", (ROOT / "Makefile").read_text(), flags=re.M)
    assert torch_spec is not None and torch_spec.group(1) in dockerfile.split()
    assert re.search(r"""pip install [^\n]*["']/src\[ray,service\]["']""", dockerfile)
    copied = set(re.findall(r"^COPY (.+) /src/", dockerfile, flags=re.M))
    assert {"metatune", "metatune_service"} <= copied  # the migrations come inside metatune_service


def test_the_workers_join_the_rayclusters_head():
    (cluster,) = of_kind("RayCluster")
    port = (cluster["spec"]["headGroupSpec"].get("rayStartParams") or {}).get("port", "6379")
    head = f"{cluster['metadata']['name']}-head-svc:{port}"
    workers = metatune_containers("Deployment", "worker")
    assert workers
    for worker in workers:
        assert env(worker)["METATUNE_RAY_ADDRESS"]["value"] == head
        joins = [words for words in container_commands(worker) if words[:2] == ["ray", "start"]]
        addresses = [ray_start.make_context("ray start", words[2:]).params["address"] for words in joins]
        assert addresses in (["$METATUNE_RAY_ADDRESS"], ["${METATUNE_RAY_ADDRESS}"], [head]), (
            "a Ray driver needs a Ray node on its own machine: the worker must `ray start --address` first")


def test_every_metatune_container_reads_the_database_url_from_a_secret():
    for _, doc in manifests():
        for container in containers(doc):
            if any(words[0] == "metatune" for words in container_commands(container)):
                assert "secretKeyRef" in env(container)["METATUNE_DATABASE_URL"].get("valueFrom", {})


def test_the_service_reaches_the_api():
    (api,) = metatune_containers("Deployment", "serve")
    (words,) = [w for w in container_commands(api) if w[:2] == ["metatune", "serve"]]
    args = metatune_parser().parse_args(words[1:])
    assert args.host == "0.0.0.0" and args.no_worker
    ports = {p.get("name"): p["containerPort"] for p in api["ports"]}
    assert args.port in ports.values()
    (deployment,) = [doc for doc in of_kind("Deployment") if api in list(containers(doc))]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    services = [s for s in of_kind("Service") if s["spec"]["selector"].items() <= labels.items()]
    assert services
    for service in services:
        for port in service["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            assert ports.get(target, target) == args.port


# README -----------------------------------------------------------------------------------------

def test_the_readmes_cluster_commands_exist():
    commands = readme_commands()
    assert command_errors(commands) == []
    ran = {tuple(words[:2]) for words in commands}
    assert {("metatune", "serve"), ("metatune", "worker"), ("metatune", "db"), ("ray", "start")} <= ran
    assert any("--head" in words for words in commands if words[:2] == ["ray", "start"])


def test_every_variable_in_the_readme_is_read_by_the_code():
    assert unknown_variables(README.read_text()) == set()


def test_the_deploy_files_the_readme_names_exist():
    named = set(re.findall(r"\bdeploy/[\w.-]+\w", readme_section()))
    assert named
    assert {name for name in named if not (ROOT / name).is_file()} == set()
