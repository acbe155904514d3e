"""Deployment files: Kubernetes manifests (kubernetes-validate --strict, offline), their MLP_* wiring,
the YARN-style environments, the Ray cluster config (Ray's own schema) and the Dockerfile.

No API server, YARN or container engine exists here, so these are validated, not run; the processes
they start are exercised by tests/test_run_roles.py with environments of the same shape.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from launch import run_role
from services.cluster_spec import LAUNCH_ID_VAR, ClusterSpec
from services.mlp_env import MLPEnv
from services.transport_security import ENV

REPO = Path(__file__).resolve().parent.parent
K8S = REPO / "deploy" / "k8s"
MANIFESTS = sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def kubernetes_validate(*paths: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kubernetes_validate", "--strict", *map(str, paths)],
                          capture_output=True, text=True, timeout=120)


def docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def test_manifests_pass_strict_schema_validation():
    out = kubernetes_validate(*MANIFESTS)
    assert out.returncode == 0, out.stdout + out.stderr
    kinds = {m.group(1) for m in re.finditer(r"passed for resource (\w+)/", out.stdout)}
    assert {"job", "service", "configmap", "persistentvolumeclaim", "statefulset", "deployment"} <= kinds


def test_strict_validation_rejects_unknown_fields_and_wrong_types(tmp_path):
    ps = docs(K8S / "ps.yaml")
    bad_field = tmp_path / "bad-field.yaml"
    sts = json.loads(json.dumps(ps[1]))
    sts["spec"]["template"]["spec"]["containers"][0]["readinessPorbe"] = {}
    bad_field.write_text(yaml.safe_dump(sts))
    bad_type = tmp_path / "bad-type.yaml"
    sts = json.loads(json.dumps(ps[1]))
    sts["spec"]["completions"] = "two"
    bad_type.write_text(yaml.safe_dump(sts))
    for path, needle in ((bad_field, "readinessPorbe"), (bad_type, "two")):
        out = kubernetes_validate(path)
        assert out.returncode != 0 and needle in out.stdout + out.stderr, out.stdout + out.stderr


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (for `kubectl kustomize`) is not installed")
def test_kustomization_renders_every_manifest_and_stays_valid(tmp_path):
    listed = yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]
    assert sorted(listed) == sorted(p.name for p in MANIFESTS)
    rendered = subprocess.run(["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=60)
    assert rendered.returncode == 0, rendered.stderr
    path = tmp_path / "rendered.yaml"
    path.write_text(rendered.stdout)
    out = kubernetes_validate(path)
    assert out.returncode == 0, out.stdout + out.stderr
    for doc in yaml.safe_load_all(rendered.stdout):
        assert doc["metadata"]["labels"]["app.kubernetes.io/name"] == "monolith"


def _objects() -> dict[tuple[str, str], dict]:
    return {(d["kind"], d["metadata"]["name"]): d for p in MANIFESTS for d in docs(p)}


def _pod_env(objs, workload: dict, index: int) -> dict[str, str]:
    """The environment Kubernetes would give replica `index` of `workload` (fieldRefs resolved)."""
    container = workload["spec"]["template"]["spec"]["containers"][0]
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(objs[("ConfigMap", source["configMapRef"]["name"])]["data"])
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
            continue
        path = var["valueFrom"]["fieldRef"]["fieldPath"]
        if path in ("metadata.labels['apps.kubernetes.io/pod-index']",
                    "metadata.annotations['batch.kubernetes.io/job-completion-index']"):
            env[var["name"]] = str(index)
        elif path == "status.podIP":
            env[var["name"]] = f"10.244.0.{10 + index}"
        elif path == "metadata.labels['batch.kubernetes.io/controller-uid']":  # the Job's uid, on every pod
            assert workload["kind"] == "Job"
            env[var["name"]] = "0b4bd3a5-6f0a-4d4e-9e61-3c8e1b1f4e2a"
        else:
            raise AssertionError(f"unexpected fieldRef {path}")
    return env


def _expand(args: list[str], env: dict[str, str]) -> list[str]:
    def sub(m):
        assert m.group(1) in env, f"$({m.group(1)}) is not defined in the container's environment"
        return env[m.group(1)]

    return [re.sub(r"\$\(([A-Z_]+)\)", sub, a) for a in args]


def test_every_pod_finds_itself_in_the_cluster_spec():
    """The ConfigMap's MLP_* description, the replica counts, DNS names and ports all agree."""
    objs = _objects()
    cluster = objs[("ConfigMap", "monolith-cluster")]["data"]
    expected_role = {"monolith-ps": "ps", "monolith-worker": "worker", "monolith-dispatcher": "dispatcher",
                     "monolith-dsworker": "dsworker"}
    seen = set()
    for (kind, name), obj in objs.items():
        if kind != "Job":
            continue
        role = expected_role[name]
        replicas = obj["spec"].get("replicas", obj["spec"].get("completions"))
        assert int(cluster[f"MLP_{role.upper()}_NUM"]) == replicas, f"{name}: replicas vs MLP_{role.upper()}_NUM"
        pod = obj["spec"]["template"]["spec"]
        container = pod["containers"][0]
        port = container["ports"][0]["containerPort"]
        for i in range(replicas):
            env = _pod_env(objs, obj, i)
            spec = ClusterSpec.from_environ(env)
            assert (spec.task_type, spec.task_index, spec.bind_port) == (role, i, port)
            if obj["spec"].get("completionMode") != "Indexed":
                dns = name  # a single replica behind its Service
                assert ("Service", name) in objs
            else:
                service = obj["spec"].get("serviceName") or pod.get("subdomain")
                svc = objs[("Service", service)]["spec"]
                assert svc["clusterIP"] == "None" and svc["publishNotReadyAddresses"] is True
                assert svc["ports"][0]["port"] == port
                dns = f"{name}-{i}.{service}"
            assert spec.own_address == f"{dns}:{port}"
            args = _expand(container["args"], env)
            assert args[0] == "run"
            parser = argparse.ArgumentParser()
            run_role.add_arguments(parser)
            parsed = parser.parse_args(args[1:])
            if role == "worker":
                assert env[LAUNCH_ID_VAR]  # the same on every worker of the Job: scopes their barriers
                cmd = run_role.train_command(spec, parsed)
                assert cmd[cmd.index("--ps") + 1] == "monolith-ps-0.monolith-ps:7000,monolith-ps-1.monolith-ps:7000"
                assert cmd[cmd.index("--dispatcher") + 1] == "grpc://monolith-dispatcher:5050"
            else:
                cmd = run_role.service_command(spec, parsed)
                assert str(port) in cmd
                if role == "ps":  # an evicted or rolled PS pod saves its state before it goes
                    assert "--save-on-exit" in cmd and "--checkpoint-dir" in cmd
            metrics = [p["containerPort"] for p in container["ports"] if p["name"] == "metrics"]
            if role in ("ps", "worker"):  # scraped where the process serves its metrics
                annotations = obj["spec"]["template"]["metadata"]["annotations"]
                assert cmd[cmd.index("--metrics-port") + 1] == annotations["prometheus.io/port"] == str(metrics[0])
            assert all(spec.address(r, 0) for r in ("ps", "worker", "dispatcher", "dsworker"))
            seen.add(role)
    assert seen == {"ps", "worker", "dispatcher", "dsworker"}


def test_ps_readiness_probe_calls_the_health_rpc():
    sts = _objects()[("Job", "monolith-ps")]
    probe = sts["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["exec"]["command"]
    assert probe[:3] == ["python", "-m", "launch.health_probe"]
    assert (REPO / "launch" / "health_probe.py").exists()


def test_every_role_completes_after_success_and_restarts_after_failure():
    """PS shards and the data service are Jobs too: they exit 0 once every worker has finished (so the Job
    completes instead of restarting them forever) and are restarted in place when they fail; workers are
    retried as new pods."""
    jobs = {name: obj for (kind, name), obj in _objects().items() if kind == "Job"}
    assert set(jobs) == {"monolith-ps", "monolith-worker", "monolith-dispatcher", "monolith-dsworker"}
    for name, job in jobs.items():
        policy = job["spec"]["template"]["spec"]["restartPolicy"]
        assert policy == ("Never" if name == "monolith-worker" else "OnFailure"), name
        assert job["spec"].get("backoffLimit", 0) > 0 or job["spec"].get("backoffLimitPerIndex", 0) > 0, name


def test_every_pod_mounts_the_tls_secret_its_environment_names():
    objs = _objects()
    security = objs[("ConfigMap", "monolith-security")]["data"]
    assert set(security) == set(ENV.values())
    workloads = [name for (kind, name) in objs if kind in ("Job", "StatefulSet", "Deployment")]
    assert {"monolith-serving-ps", "monolith-entry"} <= set(workloads)
    for (kind, name), obj in objs.items():
        if kind not in ("Job", "StatefulSet", "Deployment"):
            continue
        pod = obj["spec"]["template"]["spec"]
        container = pod["containers"][0]
        assert {"configMapRef": {"name": "monolith-security"}} in container["envFrom"], name
        (volume,) = [v for v in pod["volumes"] if "secret" in v]
        assert volume["secret"]["secretName"] == "monolith-tls"
        (mount,) = [m for m in container["volumeMounts"] if m["name"] == volume["name"]]
        assert mount["readOnly"] is True
        for var, value in security.items():
            if var != ENV["server_name"]:
                assert value.startswith(mount["mountPath"] + "/"), (name, var)


def read_env_file(path: Path) -> dict[str, str]:
    env = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            env[key] = value
    return env


def test_yarn_worker_environment_parses_into_the_job():
    env = read_env_file(REPO / "deploy" / "yarn" / "worker-1.env")
    mlp = MLPEnv(env)
    assert mlp.task_cmd.startswith("monolith run --model")  # surrounding quotes stripped
    assert (mlp.role, mlp.index, mlp.port, mlp.host, mlp.cpu, mlp.mem) == ("WORKER", 1, 7100, "10.12.0.14", 8, 16384)
    assert mlp.get_all_addrs("ps") == ["10.12.0.11:7000", "10.12.0.12:7000"]
    spec = ClusterSpec.from_environ(env)
    assert spec.roles == {
        "dispatcher": ("10.12.0.15:5050",),
        "dsworker": ("10.12.0.15:5060", "10.12.0.16:5060"),
        "ps": ("10.12.0.11:7000", "10.12.0.12:7000"),
        "worker": ("10.12.0.13:7100", "10.12.0.14:7100"),
    }
    assert (spec.name, spec.own_address, spec.is_chief) == ("worker:1", "10.12.0.14:7100", False)
    assert spec.dispatcher_target() == mlp.dispatcher_target() == "grpc://10.12.0.15:5050"
    parser = argparse.ArgumentParser()
    run_role.add_arguments(parser)
    parsed = parser.parse_args(mlp.task_cmd.split()[2:])
    cmd = run_role.train_command(spec, parsed)
    assert cmd[cmd.index("--worker-index") + 1] == "1" and cmd[cmd.index("--num-workers") + 1] == "2"


def test_yarn_mpi_environment():
    spec = ClusterSpec.from_environ(read_env_file(REPO / "deploy" / "yarn" / "mpi-worker.env"))
    assert spec.addresses("worker") == ["10.12.0.21:7100", "10.12.0.21:7101", "10.12.0.22:7102", "10.12.0.22:7103"]
    assert (spec.name, spec.bind_port) == ("worker:3", 7103)


def test_ray_cluster_config_matches_rays_schema():
    import jsonschema
    import ray

    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    config = yaml.safe_load((REPO / "deploy" / "ray" / "cluster.yaml").read_text())
    jsonschema.validate(config, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**config, "min_wrokers": 1}, schema)


def test_dockerfile_copies_existing_sources_and_runs_monolith():
    text = (REPO / "docker" / "Dockerfile").read_text()
    copies = re.findall(r"^COPY (.+) \S+$", text, flags=re.M)
    sources = [s for line in copies for s in line.split()]
    assert {"requirements.lock", "pyproject.toml", "services/", "ps/", "worker/", "dispatcher/"} <= set(sources)
    for src in sources:
        assert (REPO / src).exists(), f"Dockerfile copies {src}, which does not exist"
    assert 'ENTRYPOINT ["monolith"]' in text and 'CMD ["run"]' in text
    for name in re.findall(r'"(\w+)"\]\s*$', text, flags=re.M):
        assert name in ("monolith", "run")


def _service_selecting(objs, workload: dict) -> list[dict]:
    labels = workload["spec"]["template"]["metadata"]["labels"]
    return [o for (kind, _n), o in objs.items() if kind == "Service"
            and all(labels.get(k) == v for k, v in o["spec"]["selector"].items())]


def test_serving_side_and_online_sync_are_wired_to_each_other():
    """Serving PS StatefulSet, entry Deployment, training PS and workers agree: the serving PS pod <i> loads
    ps_<i> of the export the chief writes and takes the training PS's row sync at the address the training PS
    and the entry use for it; the entry serves that export with --dense-sync, and the training PS's dense sync
    names the headless Service in front of every entry replica. Every command parses with its role's flags."""
    from ps.__main__ import add_arguments as ps_arguments
    from ps.__main__ import config_of as ps_config
    from serving import serve_main, serving_ps

    objs = _objects()
    serving = objs[("ConfigMap", "monolith-serving")]["data"]
    addresses = serving["MONOLITH_SERVING_PS_ADDRESSES"].split(",")

    sts = objs[("StatefulSet", "monolith-serving-ps")]
    assert sts["spec"]["replicas"] == len(addresses) == int(serving["MONOLITH_NUM_SERVING_SHARDS"])
    (headless,) = _service_selecting(objs, sts)
    assert headless["metadata"]["name"] == sts["spec"]["serviceName"] and headless["spec"]["clusterIP"] == "None"
    container = sts["spec"]["template"]["spec"]["containers"][0]
    for i in range(sts["spec"]["replicas"]):
        args = _expand(container["args"], _pod_env(objs, sts, i))
        assert args[0] == "serve-ps"
        parser = argparse.ArgumentParser()
        serving_ps.add_arguments(parser)
        parsed = parser.parse_args(args[1:])
        assert parsed.export_dir == f"{serving['MONOLITH_EXPORT_BASE']}/ps_{i}"
        assert parsed.update_policy == "training-sync"
        assert addresses[i] == f"{sts['metadata']['name']}-{i}.{headless['metadata']['name']}:{parsed.port}"
        assert parsed.port == container["ports"][0]["containerPort"] == headless["spec"]["ports"][0]["port"]

    entry = objs[("Deployment", "monolith-entry")]
    container = entry["spec"]["template"]["spec"]["containers"][0]
    args = _expand(container["args"], _pod_env(objs, entry, 0))
    assert args[0] == "serve"
    parser = argparse.ArgumentParser()
    serve_main.add_arguments(parser)
    config = serve_main.config_of(parser.parse_args(args[1:]))
    assert config.dense_sync and list(config.ps_addresses) == addresses
    assert config.export_base == serving["MONOLITH_EXPORT_BASE"]
    assert config.server.port == container["ports"][0]["containerPort"]
    services = {o["metadata"]["name"]: o for o in _service_selecting(objs, entry)}
    assert set(services) == {"monolith-entry", "monolith-entry-sync"}
    assert services["monolith-entry-sync"]["spec"]["clusterIP"] == "None"
    assert serving["MONOLITH_ENTRY_SYNC_ADDRESS"] == f"monolith-entry-sync:{config.server.port}"

    ps = objs[("Job", "monolith-ps")]
    for i in range(ps["spec"]["completions"]):
        env = _pod_env(objs, ps, i)
        parser = argparse.ArgumentParser()
        run_role.add_arguments(parser)
        cmd = run_role.service_command(ClusterSpec.from_environ(env), parser.parse_args(_expand(
            ps["spec"]["template"]["spec"]["containers"][0]["args"], env)[1:]))
        ps_parser = argparse.ArgumentParser()
        ps_arguments(ps_parser)
        shard = ps_config(ps_parser.parse_args(cmd[cmd.index("ps") + 1:]))
        assert list(shard.sync_serving_ps) == addresses and shard.sync_interval_s > 0
        assert list(shard.sync_entry_servers) == [serving["MONOLITH_ENTRY_SYNC_ADDRESS"]]
        assert shard.dense_sync_interval_s > 0


def test_workers_train_from_kafka_and_export_for_the_serving_side():
    """The worker's environment names a Kafka stream its model reads (`KafkaStreamConfig.from_environ`), and
    the chief exports distributed for as many serving PS shards as the StatefulSet runs, where they load."""
    from services.kafka_stream import KafkaStreamConfig
    from worker.models.ffm import StreamingFFMModel
    from worker.train_main import load_model_class

    objs = _objects()
    worker = objs[("Job", "monolith-worker")]
    env = _pod_env(objs, worker, 1)
    stream = KafkaStreamConfig.from_environ(env)
    kafka = objs[("ConfigMap", "monolith-kafka")]["data"]
    assert ",".join(stream.bootstrap_servers) == kafka["MONOLITH_KAFKA_BOOTSTRAP_SERVERS"]
    assert stream.topics == (kafka["MONOLITH_KAFKA_TOPICS"],) and stream.group_id == kafka["MONOLITH_KAFKA_GROUP_ID"]
    assert load_model_class(env["MONOLITH_MODEL"]) is StreamingFFMModel
    parser = argparse.ArgumentParser()
    run_role.add_arguments(parser)
    args = _expand(worker["spec"]["template"]["spec"]["containers"][0]["args"], env)
    cmd = run_role.train_command(ClusterSpec.from_environ(env), parser.parse_args(args[1:]))
    assert cmd[cmd.index("--export-mode") + 1] == "distributed"
    assert int(cmd[cmd.index("--num-serving-shards") + 1]) == objs[("StatefulSet", "monolith-serving-ps")]["spec"][
        "replicas"]
    assert cmd[cmd.index("--export-base") + 1] == objs[("ConfigMap", "monolith-serving")]["data"][
        "MONOLITH_EXPORT_BASE"]
    with pytest.raises(ValueError, match="MONOLITH_KAFKA_GROUP_ID"):
        KafkaStreamConfig.from_environ({k: v for k, v in env.items() if k != "MONOLITH_KAFKA_GROUP_ID"})
    with pytest.raises(ValueError, match="must look like 2.3.0"):
        KafkaStreamConfig.from_environ({**env, "MONOLITH_KAFKA_API_VERSION": "two"})
    assert KafkaStreamConfig.from_environ({**env, "MONOLITH_KAFKA_API_VERSION": "2.3.0"}).api_version == (2, 3, 0)
