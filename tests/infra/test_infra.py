"""infra/ agrees with the code: entrypoints name real pipelines and manifests, one image and one
Ray version everywhere, GPU groups ask for GPUs, secrets are referenced and never written down,
and every object passes the schema it has (Kubernetes pod templates: kubernetes-validate; the
cluster launcher: Ray's own schema; KubeRay CRDs: the field lists below)."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import tomllib
from typing import Any

import kubernetes_validate
import pytest
import ray
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from tests.helpers import REPO

INFRA = REPO / "infra"
JOBS = ("curate", "recaption", "pack", "train")
STAGE_MANIFESTS = {"manifests/pretrain.yaml", "manifests/midtrain.yaml", "manifests/sft.yaml"}
K8S_VERSION = "1.37"  # newest schema set bundled with kubernetes-validate 1.37

# Field names (json tags) of KubeRay's ray.io/v1 types, from ray-project/kuberay
# ray-operator/apis/ray/v1/raycluster_types.go and rayjob_types.go (KubeRay 1.5/1.6). A name not
# listed here is a typo the API server would prune silently.
RAYCLUSTER_SPEC = {
    "upgradeStrategy", "authOptions", "suspend", "managedBy", "autoscalerOptions",
    "headServiceAnnotations", "enableInTreeAutoscaling", "gcsFaultToleranceOptions",
    "historyServerOptions", "networkPolicy", "tlsOptions", "headGroupSpec", "rayVersion",
    "workerGroupSpecs",
}  # fmt: skip
HEAD_GROUP_SPEC = {
    "template", "headService", "enableIngress", "ingressOptions", "resources", "labels",
    "rayStartParams", "serviceType",
}  # fmt: skip
WORKER_GROUP_SPEC = {
    "suspend", "groupName", "replicas", "minReplicas", "maxReplicas", "idleTimeoutSeconds",
    "priority", "resources", "labels", "rayStartParams", "template", "scaleStrategy",
    "numOfHosts",
}  # fmt: skip
AUTH_OPTIONS = {"enableK8sTokenAuth", "secretName", "mode"}
AUTOSCALER_OPTIONS = {
    "resources", "image", "imagePullPolicy", "securityContext", "idleTimeoutSeconds",
    "upscalingMode", "version", "env", "envFrom", "volumeMounts", "command", "args",
}  # fmt: skip
RAYJOB_SPEC = {
    "activeDeadlineSeconds", "backoffLimit", "rayClusterSpec", "submitterPodTemplate",
    "metadata", "clusterSelector", "submitterConfig", "managedBy", "deletionStrategy",
    "entrypoint", "runtimeEnvYAML", "jobId", "submissionMode", "entrypointResources",
    "entrypointNumCpus", "entrypointNumGpus", "ttlSecondsAfterFinished",
    "shutdownAfterJobFinishes", "suspend", "schedule",
}  # fmt: skip
SUBMISSION_MODES = {"K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"}


def load(name: str) -> dict[str, Any]:
    return yaml.safe_load((INFRA / name).read_text())


def rayjob_files() -> list[str]:
    return sorted(p.name for p in INFRA.glob("rayjob-*.yaml"))


def cluster_specs() -> list[tuple[str, dict]]:
    """(file, RayClusterSpec) of the RayCluster and of every RayJob."""
    out = [("raycluster.yaml", load("raycluster.yaml")["spec"])]
    out += [(f, load(f)["spec"]["rayClusterSpec"]) for f in rayjob_files()]
    return out


def groups(spec: dict) -> list[tuple[str, dict]]:
    """(group name, group spec) of the head and every worker group."""
    return [("head", spec["headGroupSpec"])] + [
        (g["groupName"], g) for g in spec["workerGroupSpecs"]
    ]


def containers(spec: dict) -> list[tuple[str, dict]]:
    return [(name, c) for name, g in groups(spec) for c in g["template"]["spec"]["containers"]]


def unknown_keys(obj: dict, allowed: set[str], where: str) -> list[str]:
    return [f"{where}.{k}" for k in obj if k not in allowed]


# --- files parse; objects pass their schemas ----------------------------------------------------


def test_every_infra_yaml_parses_and_the_set_is_complete():
    names = sorted(p.name for p in INFRA.glob("*.yaml"))
    assert {"raycluster.yaml", "cluster-aws.yaml"} <= set(names)
    assert rayjob_files() == sorted(f"rayjob-{job}.yaml" for job in JOBS)
    for name in names:
        docs = list(yaml.safe_load_all((INFRA / name).read_text()))
        assert len(docs) == 1 and isinstance(docs[0], dict), name
    for name in ["raycluster.yaml", *rayjob_files()]:
        doc = load(name)
        assert doc["apiVersion"] == "ray.io/v1", name
        assert doc["kind"] == ("RayCluster" if name == "raycluster.yaml" else "RayJob")
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", doc["metadata"]["name"])


def test_kuberay_fields_are_the_crds():
    bad: list[str] = []
    for name in rayjob_files():
        spec = load(name)["spec"]
        bad += unknown_keys(spec, RAYJOB_SPEC, f"{name}: spec")
    for name, spec in cluster_specs():
        bad += unknown_keys(spec, RAYCLUSTER_SPEC, f"{name}: RayClusterSpec")
        bad += unknown_keys(spec.get("authOptions", {}), AUTH_OPTIONS, f"{name}: authOptions")
        autoscaler = spec.get("autoscalerOptions", {})
        bad += unknown_keys(autoscaler, AUTOSCALER_OPTIONS, f"{name}: autoscalerOptions")
        bad += unknown_keys(spec["headGroupSpec"], HEAD_GROUP_SPEC, f"{name}: headGroupSpec")
        for g in spec["workerGroupSpecs"]:
            bad += unknown_keys(g, WORKER_GROUP_SPEC, f"{name}: {g.get('groupName')}")
            assert {"groupName", "minReplicas", "maxReplicas", "template"} <= set(g), name
            assert g["minReplicas"] <= g.get("replicas", 0) <= g["maxReplicas"], name
        for _, g in groups(spec):
            assert all(isinstance(v, str) for v in g.get("rayStartParams", {}).values()), name
    assert bad == []
    assert unknown_keys({"entrypoint": "", "entrypiont": ""}, RAYJOB_SPEC, "x") == ["x.entrypiont"]


def test_pod_templates_pass_the_kubernetes_schema():
    """Each group's pod template, as a core/v1 PodTemplate, validates strictly (unknown fields
    refused) against the bundled Kubernetes schemas; a typo is caught, so the check bites."""
    checked = 0
    for name, spec in cluster_specs():
        for group, g in groups(spec):
            obj = {
                "apiVersion": "v1",
                "kind": "PodTemplate",
                "metadata": {"name": f"{group}-template"},
                "template": g["template"],
            }
            try:
                kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
            except kubernetes_validate.ValidationError as e:
                pytest.fail(f"{name}: {group}: {list(e.path)}: {e.message}")
            checked += 1
    autoscaler = load("raycluster.yaml")["spec"]["autoscalerOptions"]
    sidecar = {"name": "autoscaler", "image": "x", "env": autoscaler["env"]}
    obj = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "autoscaler"}}
    kubernetes_validate.validate(
        {**obj, "template": {"spec": {"containers": [sidecar]}}}, K8S_VERSION, strict=True
    )
    assert checked == 13  # RayCluster: 3 groups; curate, pack: 2 each; recaption, train: 3 each
    typo = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"}}
    typo["template"] = {"spec": {"containers": [{"name": "c", "image": "i", "imagePullPolicy": "Sometimes", "envFrom": [{"secretRef": {"nam": "x"}}]}]}}  # fmt: skip
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(typo, K8S_VERSION, strict=True)


def test_cluster_launcher_passes_rays_schema():
    from jsonschema import ValidationError
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = load("cluster-aws.yaml")
    validate_config(prepare_config(config))  # what `ray up` runs first
    with pytest.raises(ValidationError, match="'worker_image_typo' was unexpected"):
        validate_config(prepare_config({**config, "docker": {**config["docker"], "worker_image_typo": "x"}}))  # fmt: skip
    types = config["available_node_types"]
    assert config["head_node_type"] in types and {"cpu", "gpu"} <= set(types)
    # setup installs neo from the checkout that file_mounts syncs
    src = next(dst for dst, local in config["file_mounts"].items() if local == ".")
    assert any("pip install" in c and f"-e {src}" in c for c in config["setup_commands"])


# --- entrypoints agree with the code -----------------------------------------------------------


def entrypoint(job: str) -> list[str]:
    return shlex.split(load(f"rayjob-{job}.yaml")["spec"]["entrypoint"])


@pytest.mark.parametrize("job", JOBS)
def test_entrypoint_shape(job):
    argv = entrypoint(job)
    assert argv[:3] == ["python", "-m", f"pipelines.{job}"]
    assert argv[3] == "--manifest" and argv[4] in STAGE_MANIFESTS


@pytest.mark.parametrize("job", JOBS)
def test_entrypoint_module_exists(job):
    """Fails until pipelines/<job>.py exists (curate and recaption land with their jobs)."""
    assert (REPO / "pipelines" / f"{job}.py").is_file(), f"pipelines/{job}.py is missing"


@pytest.mark.parametrize("job", JOBS)
def test_entrypoint_manifest_exists_and_validates(job):
    """Fails until the stage manifests (manifests/pretrain.yaml ...) are written."""
    from neo_data.manifest import load_manifest

    path = REPO / entrypoint(job)[4]
    assert path.is_file(), f"{path.relative_to(REPO)} is missing"
    manifest = load_manifest(path)
    section = {"curate": "curate", "recaption": "recaption", "train": "train"}.get(job)
    if section:  # each job refuses a manifest without its section
        assert getattr(manifest, section) is not None, f"{path.name} has no {section}: section"


HELP_PROBE = """
import contextlib, io, importlib, json, sys
from tests.helpers import REPO
out = {}
for job in sys.argv[1:]:
    try:
        mod = importlib.import_module(f"pipelines.{job}")
    except ModuleNotFoundError as e:
        out[job] = f"missing: {e}"
        continue
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.suppress(SystemExit):
        mod.main(["--help"])
    out[job] = buf.getvalue()
print(json.dumps(out))
"""


def test_pipelines_take_the_flags_their_entrypoints_pass():
    """Each pipeline's argparse (``main(["--help"])`` in a fresh interpreter) has every flag
    its RayJob entrypoint and the README's `ray job submit` use."""
    run = subprocess.run(
        [sys.executable, "-c", HELP_PROBE, *JOBS],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    helps = json.loads(run.stdout.splitlines()[-1])
    problems = []
    for job in JOBS:
        flags = [a for a in entrypoint(job) if a.startswith("--")]
        flags += [a for a in readme_submit(job) if a.startswith("--")]
        for flag in sorted(set(flags)):
            if f"{flag} " not in helps[job] and f"{flag}\n" not in helps[job]:
                problems.append(f"pipelines.{job}: no {flag} ({helps[job][:60]!r})")
    assert problems == []


def readme_submit(job: str) -> list[str]:
    """The entrypoint of the README's `ray job submit` example for ``job``."""
    text = (INFRA / "README.md").read_text().replace("\\\n", " ")
    for line in text.splitlines():
        if line.startswith("ray job submit") and f"pipelines.{job} " in line:
            return shlex.split(line.split(" -- ", 1)[1])
    raise AssertionError(f"infra/README.md has no `ray job submit` example for {job}")


@pytest.mark.parametrize("job", JOBS)
def test_readme_submits_each_pipeline_like_its_rayjob(job):
    assert readme_submit(job)[:5] == entrypoint(job)


# --- one image, one Ray ------------------------------------------------------------------------


def dockerfile_ray_image() -> str:
    m = re.search(r"^ARG RAY_IMAGE=(\S+)$", (INFRA / "Dockerfile").read_text(), re.M)
    assert m, "infra/Dockerfile: no ARG RAY_IMAGE=..."
    return m.group(1)


def test_one_image_everywhere():
    images = {c["image"] for _, spec in cluster_specs() for _, c in containers(spec)}
    docker = load("cluster-aws.yaml")["docker"]
    images |= {docker[k] for k in ("image", "head_image", "worker_image") if k in docker}
    assert len(images) == 1, images
    (image,) = images
    readme = (INFRA / "README.md").read_text()
    assert f"docker build -f infra/Dockerfile -t {image} ." in readme
    assert f"-t {image} ." in (INFRA / "Dockerfile").read_text()


def test_ray_versions_agree():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    req = next(Requirement(r) for r in pyproject["dependencies"] if Requirement(r).name == "ray")
    m = re.fullmatch(
        r"rayproject/ray:(\d+\.\d+\.\d+)-py(\d)(\d+)-(cpu|gpu|cu\d+)", dockerfile_ray_image()
    )
    assert m, dockerfile_ray_image()
    image_ray, python = m.group(1), f"{m.group(2)}.{m.group(3)}"
    assert image_ray == ray.__version__  # the Ray these tests (and the local cluster) run
    assert req.specifier.contains(image_ray), (str(req), image_ray)
    assert SpecifierSet(pyproject["requires-python"]).contains(f"{python}.0")
    for name, spec in cluster_specs():
        assert spec["rayVersion"] == image_ray, name
    assert f"assert ray.__version__ == '{image_ray}'" in (INFRA / "Dockerfile").read_text()


# --- GPUs, jobs, auth, secrets -----------------------------------------------------------------


def test_gpu_groups_request_gpus_and_cpu_groups_do_not():
    for name, spec in cluster_specs():
        for group, g in groups(spec):
            for c in g["template"]["spec"]["containers"]:
                gpus = int(c["resources"].get("limits", {}).get("nvidia.com/gpu", 0))
                assert (gpus > 0) == (group == "gpu"), (name, group)
                if gpus:
                    assert int(c["resources"]["requests"]["nvidia.com/gpu"]) == gpus
            if group == "gpu":
                tolerations = g["template"]["spec"].get("tolerations", [])
                assert any(t["key"] == "nvidia.com/gpu" for t in tolerations), name
    for job in ("recaption", "train"):
        spec = load(f"rayjob-{job}.yaml")["spec"]["rayClusterSpec"]
        assert "gpu" in [name for name, _ in groups(spec)], job
    gpu = load("cluster-aws.yaml")["available_node_types"]["gpu"]
    assert gpu["resources"]["GPU"] > 0 and gpu["node_config"]["InstanceType"][0] in "gp"


@pytest.mark.parametrize("job", JOBS)
def test_rayjobs_run_once_and_clean_up(job):
    spec = load(f"rayjob-{job}.yaml")["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    assert isinstance(spec["ttlSecondsAfterFinished"], int) and spec["ttlSecondsAfterFinished"] >= 0
    assert spec["submissionMode"] in SUBMISSION_MODES
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    workdir = re.search(r"^WORKDIR (\S+)$", (INFRA / "Dockerfile").read_text(), re.M).group(1)
    assert runtime_env["working_dir"] == workdir  # the image's copy holds manifests/


def test_ray_token_auth_everywhere():
    for name, spec in cluster_specs():
        if name == "raycluster.yaml":
            autoscaler = ("autoscaler", spec["autoscalerOptions"])  # it talks to the GCS too
            for group, c in [*containers(spec), autoscaler]:
                env = {e["name"]: e for e in c.get("env", [])}
                assert env["RAY_AUTH_MODE"]["value"] == "token", group
                ref = env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]
                assert ref == {"name": "neo-ray-token", "key": "auth_token"}, group
        else:
            assert spec["authOptions"]["mode"] == "token", name
    launcher = load("cluster-aws.yaml")
    assert "--env RAY_AUTH_MODE=token" in launcher["docker"]["run_options"]
    assert launcher["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"


SECRETISH = re.compile(r"(SECRET|TOKEN|PASSWORD|ACCESS_KEY|CREDENTIAL)", re.I)


def test_secrets_are_referenced_never_written():
    for name, spec in cluster_specs():
        for e in spec.get("autoscalerOptions", {}).get("env", []):
            if SECRETISH.search(e["name"]) and e["name"] != "RAY_AUTH_MODE":
                assert "value" not in e and "secretKeyRef" in e["valueFrom"], (name, e)
        for group, c in containers(spec):
            for e in c.get("env", []):
                if SECRETISH.search(e["name"]) and e["name"] != "RAY_AUTH_MODE":
                    assert "value" not in e and "secretKeyRef" in e["valueFrom"], (name, e)
            refs = [s["secretRef"]["name"] for s in c.get("envFrom", []) if "secretRef" in s]
            assert refs == ["neo-s3"], (name, group)
    for path in INFRA.iterdir():
        text = path.read_text()
        assert not re.search(r"AKIA[0-9A-Z]{16}", text), path.name  # an AWS access key id
        assert not re.search(r"(?i)aws_secret_access_key\s*[:=]\s*\S{20,}", text), path.name
        assert not re.search(r"(?m)^kind:\s*Secret\b", text), path.name
    for option in load("cluster-aws.yaml")["docker"]["run_options"]:
        flag, _, value = option.partition(" ")
        if flag in ("--env", "-e"):
            var = value.split("=", 1)[0]
            assert var == "RAY_AUTH_MODE" or not SECRETISH.search(var), option
