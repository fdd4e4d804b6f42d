"""The docker/ files must be right without a Docker engine: parse the compose file and check that
every reference in it (Dockerfiles, services, volumes, commands, settings) points at something real."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yml").read_text())


def test_compose_has_the_lab_services(compose: dict) -> None:
    services = compose["services"]
    assert {"redis", "postgres", "dashboard", "worker-gpu0"} <= set(services)
    for name, svc in services.items():
        assert "image" in svc or "build" in svc, f"{name} has neither image nor build"


def test_builds_point_at_existing_dockerfiles(compose: dict) -> None:
    for name, svc in compose["services"].items():
        if "build" not in svc:
            continue
        context = (DOCKER / svc["build"]["context"]).resolve()
        assert context == ROOT, f"{name}: build context should be the repository root"
        assert (context / svc["build"]["dockerfile"]).is_file(), name


def test_dependencies_and_volumes_are_declared(compose: dict) -> None:
    services = compose["services"]
    declared = set(compose.get("volumes", {}))
    for name, svc in services.items():
        for dep, cond in svc.get("depends_on", {}).items():
            assert dep in services, f"{name} depends on unknown service {dep}"
            if cond.get("condition") == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits for {dep} to be healthy but it has no healthcheck"
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith((".", "/")):
                assert source in declared, f"{name} uses undeclared volume {source}"


def test_gpu_worker_reserves_one_gpu_and_pins_it(compose: dict) -> None:
    worker = compose["services"]["worker-gpu0"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"] and devices[0]["device_ids"] == ["0"]
    assert worker["environment"]["CUDA_VISIBLE_DEVICES"] == "0"
    assert "--device" in worker["command"] and "--queue" in worker["command"]


def test_environment_names_are_settings_the_code_reads(compose: dict) -> None:
    source = "\n".join(p.read_text() for p in (ROOT / "storage").glob("*.py"))
    names = set()
    for svc in compose["services"].values():
        names |= {k for k in (svc.get("environment") or {}) if k.startswith("GAMMA_LAB_")}
    assert names, "no gamma-lab settings passed to the containers"
    for name in names:
        assert name in source, f"compose sets {name} but storage/ never reads it"


def test_commands_are_real_cli_subcommands(compose: dict) -> None:
    for name, svc in compose["services"].items():
        command = svc.get("command")
        if not command or command[0] != "gamma-lab":
            continue
        result = subprocess.run(
            [sys.executable, "-m", "app.cli", command[1], "--help"], cwd=ROOT, capture_output=True, text=True
        )
        assert result.returncode == 0, f"{name}: `gamma-lab {command[1]} --help` failed: {result.stderr}"
        for flag in (a for a in command[2:] if a.startswith("--")):
            assert flag in result.stdout, f"{name}: {flag} is not an option of `gamma-lab {command[1]}`"


@pytest.mark.parametrize("dockerfile", ["Dockerfile.cpu", "Dockerfile.cuda"])
def test_dockerfiles_copy_existing_paths_and_run_gamma_lab(dockerfile: str) -> None:
    text = (DOCKER / dockerfile).read_text()
    assert re.search(r"^FROM \S+", text, re.M)
    for line in re.findall(r"^COPY (.+)$", text, re.M):
        for src in line.split()[:-1]:
            assert (ROOT / src).exists(), f"{dockerfile} copies missing {src}"
    cmd = re.search(r"^CMD (\[.*\])$", text, re.M)
    assert cmd and '"gamma-lab"' in cmd.group(1)
