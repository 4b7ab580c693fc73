"""Deployment artefact checks, run by .ci/check-deploy (see there for what and why).

Fails (exit 1) with one line per problem; prints what it checked.
"""

import copy
import glob
import importlib.resources
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import helm_python
import jsonschema
import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "audit-manager"
STATIC_MANIFESTS = sorted(
    glob.glob(str(ROOT / "deploy-daemonset" / "*.yaml"))
    + glob.glob(str(ROOT / "deploy-sidecar" / "*.yaml"))
)
# Kubernetes versions to validate against: the oldest with native sidecars and a current one.
K8S_VERSIONS = os.environ.get("K8S_VERSIONS", "1.29.0,1.31.0").split(",")
READY = "/v1/auditmanager/ready"
LIVE = "/v1/auditmanager/version"
RELEASE, NAMESPACE = "audit", "openg2p"

# The documented variants (docs/deploying.md); each is rendered, validated and checked.
VARIANTS = {
    "default": {},
    "metrics-alerts-dashboards": {
        "metrics": {"serviceMonitor": {"enabled": True}, "prometheusRule": {"enabled": True}},
        "dashboards": {"enabled": True},
    },
    "autoscaling": {"autoscaling": {"enabled": True, "minReplicas": 3, "maxReplicas": 12}},
    "istio": {"istio": {"enabled": True, "gateways": ["istio-system/internal"], "hosts": ["*"]}},
    "auth-secrets": {
        "database": {"urlSecret": {"name": "audit-db-url", "key": "url"}},
        "auth": {"mode": "token", "tokensSecret": "audit-manager-tokens"},
        "tls": {"secretName": "audit-manager-tls"},
        "integrity": {"signingKeySecret": "audit-manager-sealer"},
        "env": [
            {
                "name": "AUDIT_MANAGER__KAFKA__PRODUCER__SASL_PASSWORD",
                "valueFrom": {"secretKeyRef": {"name": "kafka-sasl", "key": "password"}},
            }
        ],
    },
    "mtls": {
        "auth": {"mode": "mtls", "tokensSecret": "audit-manager-principals", "tokensKey": "principals.yaml"},
        "tls": {"secretName": "audit-manager-tls"},
        "metrics": {"serviceMonitor": {"enabled": True}},
    },
    # The reference chart's defaults in this chart's terms (docs/helm-values-from-reference.md).
    "reference-equivalent": {
        "replicas": 2,
        "autoscaling": {"enabled": True, "minReplicas": 2, "maxReplicas": 12},
        "topicInit": {"enabled": True, "partitions": 12, "replication": 1},
        "database": {
            "host": "commons-postgresql",
            "name": "audit_manager",
            "user": "audit_manager_user",
            "existingSecret": "audit-manager",
            "passwordKey": "audit-manager-db-user",
        },
        "config": {
            "kafka": {"bootstrap_servers": "commons-kafka:9092", "producer": {"linger.ms": "50"}},
            "sink": {"batch_max_records": 500, "flush_interval": "1s"},
        },
        "istio": {"enabled": True, "hosts": ["auditmanager.trial.openg2p.org"], "gateways": ["internal"]},
    },
    # TLS to both backends with client certificates (docs/deploying.md).
    "backend-tls": {
        "tls": {
            "postgres": {"secretName": "audit-db-tls", "certKey": "tls.crt", "keyKey": "tls.key"},
            "kafka": {"secretName": "kafka-client-tls", "certKey": "tls.crt", "keyKey": "tls.key"},
        },
    },
    # SASL/SCRAM over TLS with the CA from a Secret, PostgreSQL over TLS without verification.
    "kafka-sasl-ssl": {
        "tls": {"postgres": {"sslmode": "require"}, "kafka": {"secretName": "kafka-ca"}},
        "kafkaSasl": {
            "mechanism": "SCRAM-SHA-512",
            "username": "audit-manager",
            "passwordSecret": {"name": "kafka-sasl", "key": "password"},
        },
    },
    # Without Kafka (docs/deploying.md, "Without Kafka"): forward writes straight into
    # PostgreSQL; seals copied to a shared claim.
    "kafka-less": {
        "forward": {"target": "postgres"},
        "integrity": {"signingKeySecret": "audit-manager-sealer", "sealDir": {"existingClaim": "audit-seals"}},
        "config": {"integrity": {"signing_key_file": "/run/secrets/audit-manager/integrity/sealer.key"}},
    },
    # Its alerts: no sink alerts, dead letters counted from the table.
    "kafka-less-alerts": {
        "forward": {"target": "postgres"},
        "metrics": {"serviceMonitor": {"enabled": True}, "prometheusRule": {"enabled": True}},
        "dashboards": {"enabled": True},
    },
    # The same with explicit roles (the query role too) and the seal copy on NFS.
    "kafka-less-nfs-query": {
        "forward": {"target": "postgres"},
        "roles": ["ingest", "forward", "maintain", "query"],
        "integrity": {"sealDir": {"path": "/srv/seals", "volume": {"nfs": {"server": "nas.internal", "path": "/audit-seals"}}}},
    },
    "minimal": {
        "topicInit": {"enabled": False},
        "podDisruptionBudget": {"enabled": False},
        "service": {"port": 8000},
        "roles": ["sink", "maintain"],
    },
}

# Values the schema must refuse: a secret written into values is a leak waiting to happen.
REFUSED = {
    "database.password": {"database": {"password": "hunter2"}},
    "database.url": {"database": {"url": "postgres://u:p@db/x"}},
    "readiness probe elsewhere": {"probes": {"readiness": {"path": "/healthz"}}},
    "auth.mode token without auth.tokensSecret": {"auth": {"mode": "token"}},
    "auth.mode mtls without tls.secretName": {"auth": {"mode": "mtls", "tokensSecret": "t"}},
    "an unknown auth.mode": {"auth": {"mode": "basic", "tokensSecret": "t"}},
    "kafkaSasl.password": {"kafkaSasl": {"mechanism": "PLAIN", "password": "hunter2"}},
    "GSSAPI (not built in)": {"kafkaSasl": {"mechanism": "GSSAPI"}},
    "an unknown sslmode": {"tls": {"postgres": {"sslmode": "always"}}},
    "an unknown forward.target": {"forward": {"target": "redis"}},
    "the sink role with forward.target postgres": {
        "forward": {"target": "postgres"},
        "roles": ["ingest", "forward", "sink", "maintain"],
    },
    "kafkaSasl with forward.target postgres": {
        "forward": {"target": "postgres"},
        "kafkaSasl": {"mechanism": "PLAIN", "username": "u", "passwordSecret": {"name": "s"}},
    },
    "tls.kafka with forward.target postgres": {"forward": {"target": "postgres"}, "tls": {"kafka": {"enabled": True}}},
    "both a claim and a volume for integrity.sealDir": {
        "integrity": {"sealDir": {"existingClaim": "a", "volume": {"emptyDir": {}}}},
    },
}

# What the backend-TLS variants must put into the rendered configuration (dotted paths under
# audit_manager) and the Secrets the pods must mount for it.
EXPECTED_CONFIG = {
    "backend-tls": {
        "database.url": "postgres://postgres:5432/auditmanager?sslmode=verify-full"
        "&sslrootcert=/run/secrets/audit-manager/postgres-tls/ca.crt"
        "&sslcert=/run/secrets/audit-manager/postgres-tls/tls.crt"
        "&sslkey=/run/secrets/audit-manager/postgres-tls/tls.key",
        "kafka.producer.security.protocol": "ssl",
        "kafka.consumer.ssl.ca.location": "/run/secrets/audit-manager/kafka-tls/ca.crt",
        "kafka.consumer.ssl.certificate.location": "/run/secrets/audit-manager/kafka-tls/tls.crt",
        "kafka.producer.ssl.key.location": "/run/secrets/audit-manager/kafka-tls/tls.key",
    },
    "kafka-sasl-ssl": {
        "database.url": "postgres://postgres:5432/auditmanager?sslmode=require",
        "kafka.producer.security.protocol": "sasl_ssl",
        "kafka.consumer.security.protocol": "sasl_ssl",
        "kafka.consumer.sasl.mechanism": "SCRAM-SHA-512",
        "kafka.producer.sasl.username": "audit-manager",
        "kafka.producer.ssl.ca.location": "/run/secrets/audit-manager/kafka-tls/ca.crt",
    },
}

# Custom resources: no OpenAPI schema ships for them; checked structurally below instead.
CUSTOM_KINDS = {"ServiceMonitor", "PrometheusRule", "VirtualService"}

# sasl.mechanism and sasl.username are settings, not secrets; everything else SASL is.
SECRETISH_ENV = re.compile(
    r"PASSWORD|PASSPHRASE|SECRET|TOKEN|_KEY$|_PEM$|SASL_(?!MECHANISMS?$|USERNAME$)|DATABASE_URL|__URL$",
    re.I,
)
SECRETISH_KEY = re.compile(
    r"password|passphrase|secret|token|sasl\.(?!mechanisms?$|username$)|private|\.pem$|^ssl_key$", re.I
)
URL_WITH_PASSWORD = re.compile(r"[a-z][a-z0-9+.-]*://[^/\s:@]+:[^/\s@]+@", re.I)

errors: list[str] = []


def fail(msg: str) -> None:
    errors.append(msg)
    print(f"FAIL {msg}")


def metric_names() -> set[str]:
    """Every metric the service registers (the macros in src/)."""
    names = set()
    pattern = re.compile(r'metrics::(?:counter|gauge|histogram)!\(\s*"([a-z_:][a-z0-9_:]*)"')
    for path in (ROOT / "src").rglob("*.rs"):
        names.update(pattern.findall(path.read_text()))
    return names


def deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def pod_specs(doc: dict):
    kind = doc.get("kind")
    spec = doc.get("spec") or {}
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        yield spec["template"]["spec"]
    elif kind == "Pod":
        yield spec


def service_containers(pod: dict):
    """Containers running the service itself (args start with `serve`), sidecars included."""
    for c in pod.get("containers", []) + pod.get("initContainers", []):
        if (c.get("args") or [None])[0] == "serve":
            yield c


def check_probes(where: str, doc: dict) -> int:
    checked = 0
    for pod in pod_specs(doc):
        for c in service_containers(pod):
            checked += 1
            name = f"{where}: {doc['kind']}/{doc['metadata']['name']} container {c['name']}"
            ready = ((c.get("readinessProbe") or {}).get("httpGet") or {}).get("path")
            live = ((c.get("livenessProbe") or {}).get("httpGet") or {}).get("path")
            if ready != READY:
                fail(f"{name}: readiness probe on {ready!r}, want {READY}")
            if live != LIVE:
                fail(f"{name}: liveness probe on {live!r}, want {LIVE}")
            if "startupProbe" not in c:
                fail(f"{name}: no startup probe (spool recovery would trip liveness)")
    return checked


def check_no_secrets(where: str, doc: dict) -> None:
    ident = f"{where}: {doc.get('kind')}/{(doc.get('metadata') or {}).get('name')}"
    if doc.get("kind") == "Secret":
        fail(f"{ident}: manifests must not carry Secrets; reference existing ones")
    text = yaml.safe_dump(doc)
    if URL_WITH_PASSWORD.search(text):
        fail(f"{ident}: a URL with a password in it")
    for pod in pod_specs(doc):
        for c in pod.get("containers", []) + pod.get("initContainers", []):
            for env in c.get("env", []):
                if SECRETISH_ENV.search(env["name"]):
                    ref = (env.get("valueFrom") or {}).get("secretKeyRef")
                    if "value" in env or not ref:
                        fail(f"{ident}: env {env['name']} must come from a secretKeyRef")
    if doc.get("kind") == "ConfigMap":
        for key, value in (doc.get("data") or {}).items():
            if key.endswith((".yaml", ".yml")):
                walk_config(f"{ident} {key}", yaml.safe_load(value))


def walk_config(ident: str, node, path: str = "") -> None:
    if isinstance(node, dict):
        for k, v in node.items():
            p = f"{path}.{k}" if path else str(k)
            if SECRETISH_KEY.search(str(k)) and not str(k).endswith("_file") and v not in (None, ""):
                fail(f"{ident}: {p} holds a secret value; mount it from a Secret instead")
            walk_config(ident, v, p)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            walk_config(ident, v, f"{path}[{i}]")


def service_binary() -> str | None:
    """A built audit-manager (CI builds it before this runs), to load rendered configs with."""
    for candidate in (os.environ.get("AUDIT_MANAGER_BIN"), ROOT / "target/debug/audit-manager",
                      ROOT / "target/release/audit-manager"):
        if candidate and Path(candidate).is_file():
            return str(candidate)
    return None


def check_config_loads(where: str, doc: dict) -> bool:
    """The service itself parses each rendered config.yaml (unknown keys are errors there).

    `spool stats` on a spool that does not exist fails after loading the configuration, so
    only a configuration error mentions "invalid configuration"."""
    binary = service_binary()
    if binary is None or doc.get("kind") != "ConfigMap":
        return False
    text = (doc.get("data") or {}).get("config.yaml")
    if text is None:
        return False
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text(text)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AUDIT_MANAGER__", "DB_"))}
        env.pop("DATABASE_URL", None)
        env.pop("CONFIG_PATH", None)
        env["AUDIT_MANAGER__SPOOL__PATH"] = str(Path(tmp) / "no-spool")
        out = subprocess.run([binary, "spool", "stats", "--config", str(path)],
                             capture_output=True, text=True, env=env, timeout=60)
    if "invalid configuration" in out.stderr:
        fail(f"{where}: ConfigMap/{doc['metadata']['name']}: the service refuses it: {out.stderr.strip()}")
    return True


def dotted(config: dict, path: str):
    """The value at a dotted path whose last keys may themselves hold dots (librdkafka names)."""
    node = config
    rest = path
    while rest:
        if not isinstance(node, dict):
            return None
        key = next((k for k in sorted(node, key=len, reverse=True)
                    if rest == k or rest.startswith(k + ".")), None)
        if key is None:
            return None
        node, rest = node[key], rest[len(key) + 1:]
    return node


def check_secret_mounts(where: str, docs: list[dict]) -> None:
    """Every backend TLS file (CA, client certificate and key) a rendered config names lies under
    a volumeMount of every pod that loads that config (the service and the topic-init Job): the
    clients open them when they connect, not when the configuration is loaded."""
    for cm in (d for d in docs if d["kind"] == "ConfigMap" and "config.yaml" in (d.get("data") or {})):
        text = cm["data"]["config.yaml"]
        paths = set(re.findall(r"/run/secrets/audit-manager/(?:postgres|kafka)-tls/[-._a-zA-Z0-9/]+", text))
        for doc in docs:
            for pod in pod_specs(doc):
                volumes = {v["name"]: v for v in pod.get("volumes", [])}
                uses = any((volumes.get(m["name"]) or {}).get("configMap", {}).get("name") == cm["metadata"]["name"]
                           for c in pod.get("containers", []) for m in c.get("volumeMounts", []))
                if not uses:
                    continue
                mounts = [m["mountPath"] for c in pod.get("containers", []) for m in c.get("volumeMounts", [])]
                for path in sorted(paths):
                    if not any(path.startswith(m.rstrip("/") + "/") for m in mounts):
                        fail(f"{where}: {doc['kind']}/{doc['metadata']['name']} mounts nothing at {path}, "
                             f"which ConfigMap/{cm['metadata']['name']} names")


def check_expected_config(variant: str, docs: list[dict]) -> None:
    expected = EXPECTED_CONFIG.get(variant)
    if not expected:
        return
    for cm in (d for d in docs if d["kind"] == "ConfigMap" and "config.yaml" in (d.get("data") or {})):
        config = yaml.safe_load(cm["data"]["config.yaml"])["audit_manager"]
        for path, value in expected.items():
            got = dotted(config, path)
            if got != value:
                fail(f"chart[{variant}]: ConfigMap/{cm['metadata']['name']} {path} = {got!r}, expected {value!r}")


def service_config(docs: list[dict]) -> dict:
    """The rendered configuration the service's pods load (the ConfigMap they mount)."""
    for cm in docs:
        if cm["kind"] == "ConfigMap" and not cm["metadata"]["name"].endswith("-topic-init") \
                and "config.yaml" in (cm.get("data") or {}):
            return yaml.safe_load(cm["data"]["config.yaml"])["audit_manager"]
    return {}


def check_shape(variant: str, merged: dict, docs: list[dict]) -> None:
    """forward.target decides the shape: with postgres no sink role, no topic Job, nothing of
    Kafka in the configuration or the environment, no seal topic; with either, the seal
    directory (integrity.sealDir) is mounted where integrity.seal_dir points."""
    where = f"chart[{variant}]"
    target = merged["forward"]["target"]
    config = service_config(docs)
    if config.get("forward", {}).get("target", "kafka") != target:
        fail(f"{where}: the configuration says forward.target {config.get('forward')!r}, values say {target}")
    roles = config.get("roles") or []
    want_roles = merged["roles"] or (
        ["ingest", "forward", "maintain"] if target == "postgres" else ["ingest", "forward", "sink", "maintain"])
    if roles != want_roles:
        fail(f"{where}: roles {roles}, expected {want_roles}")
    pods = [p for d in docs for p in pod_specs(d)]
    rules = [r for d in docs if d["kind"] == "PrometheusRule"
             for g in d["spec"]["groups"] for r in g["rules"]]
    if target == "postgres":
        for r in rules:
            if "audit_sink_" in r["expr"]:
                fail(f"{where}: alert {r['alert']} watches the sink, which does not run without Kafka")
        if "sink" in roles:
            fail(f"{where}: the sink role runs without Kafka")
        if "kafka" in config:
            fail(f"{where}: Kafka settings rendered without Kafka: {config['kafka']}")
        if config.get("integrity", {}).get("seal_topic") != "":
            fail(f"{where}: a seal topic without Kafka: {config.get('integrity', {}).get('seal_topic')!r}")
        if any(d["kind"] == "Job" for d in docs):
            fail(f"{where}: a topic Job without Kafka")
        for pod in pods:
            for c in pod.get("containers", []):
                for env in c.get("env", []):
                    if "KAFKA" in env["name"]:
                        fail(f"{where}: env {env['name']} without Kafka")
    seal = merged["integrity"]["sealDir"]
    if seal["existingClaim"] or seal["volume"]:
        if config.get("integrity", {}).get("seal_dir") != seal["path"]:
            fail(f"{where}: integrity.seal_dir is {config.get('integrity', {}).get('seal_dir')!r}, "
                 f"the volume is mounted at {seal['path']}")
        for doc in (d for d in docs if d["kind"] == "StatefulSet"):
            pod = doc["spec"]["template"]["spec"]
            volume = next((v for v in pod.get("volumes", []) if v["name"] == "seal-dir"), None)
            mounted = [m for c in pod["containers"] for m in c.get("volumeMounts", [])
                       if m["name"] == "seal-dir" and m["mountPath"] == seal["path"] and not m.get("readOnly")]
            if volume is None or not mounted:
                fail(f"{where}: StatefulSet/{doc['metadata']['name']} does not mount the seal directory "
                     f"writable at {seal['path']}")
            elif seal["existingClaim"] and volume.get("persistentVolumeClaim", {}).get("claimName") != seal["existingClaim"]:
                fail(f"{where}: the seal directory is not the claim {seal['existingClaim']}: {volume}")
    elif "seal_dir" in config.get("integrity", {}):
        fail(f"{where}: integrity.seal_dir set with no volume behind it")


def check_custom(where: str, doc: dict, metrics: set[str]) -> None:
    ident = f"{where}: {doc['kind']}/{doc['metadata']['name']}"
    spec = doc.get("spec") or {}
    if doc["kind"] == "PrometheusRule":
        rules = [r for g in spec.get("groups", []) for r in g.get("rules", [])]
        if not rules:
            fail(f"{ident}: no rules")
        for r in rules:
            if not r.get("alert") or not r.get("expr"):
                fail(f"{ident}: a rule without alert or expr: {r}")
                continue
            anchor = r["alert"].lower()
            if f"#{anchor}" not in r.get("annotations", {}).get("description", ""):
                fail(f"{ident}: {r['alert']} does not link its runbook entry")
            runbook = ROOT / "docs" / "operations.md"
            if f"### {r['alert']}" not in runbook.read_text():
                fail(f"{ident}: docs/operations.md has no '### {r['alert']}' section")
            for name in re.findall(r"\b(audit_[a-z0-9_]+)\b", r["expr"]):
                if name not in metrics:
                    fail(f"{ident}: {r['alert']} queries {name}, which the service never registers")
    elif doc["kind"] == "ServiceMonitor":
        for ep in spec.get("endpoints", []):
            if ep.get("path") != "/v1/auditmanager/metrics":
                fail(f"{ident}: scrapes {ep.get('path')!r}")
    elif doc["kind"] == "VirtualService":
        for route in spec.get("http", []):
            for dest in route.get("route", []):
                if not dest.get("destination", {}).get("host"):
                    fail(f"{ident}: a route without a destination host")


def validate(where: str, doc: dict, metrics: set[str]) -> None:
    if doc["kind"] in CUSTOM_KINDS:
        check_custom(where, doc, metrics)
        return
    for version in K8S_VERSIONS:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = "/".join(str(p) for p in e.path)
            fail(f"{where}: {doc['kind']}/{doc['metadata'].get('name')} (k8s {version}) at {path}: {e.message}")
        except kubernetes_validate.SchemaNotFoundError:
            fail(f"{where}: {doc['kind']} {doc['apiVersion']} is unknown to Kubernetes {version}")


def load_docs(text: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(text) if d]


def check_chart(metrics: set[str]) -> int:
    lint = helm_python.lint(str(CHART), strict=True)
    for m in lint.get("messages", []):
        # 1 = info (e.g. "icon is recommended"), anything above is a finding.
        if m["severity"] >= 2:
            fail(f"helm lint: {m['path']}: {m['error']}")
    for e in lint.get("errors", []):
        fail(f"helm lint: {e}")
    chart = helm_python.Chart.load(str(CHART))
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    total = 0
    for variant, values in VARIANTS.items():
        rendered = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
        docs = [d for text in rendered.values() for d in load_docs(text)]
        kinds = sorted({d["kind"] for d in docs})
        merged = deep_merge(defaults, values)
        expect = {"StatefulSet", "Service", "ConfigMap"}
        if merged["podDisruptionBudget"]["enabled"]:
            expect.add("PodDisruptionBudget")
        if merged["topicInit"]["enabled"] and merged["forward"]["target"] == "kafka":
            expect.add("Job")
        if merged["autoscaling"]["enabled"]:
            expect.add("HorizontalPodAutoscaler")
        if merged["metrics"]["prometheusRule"]["enabled"]:
            expect.add("PrometheusRule")
        if merged["metrics"]["serviceMonitor"]["enabled"]:
            expect.add("ServiceMonitor")
        if merged["istio"]["enabled"]:
            expect.add("VirtualService")
        for missing in sorted(expect - set(kinds)):
            fail(f"chart[{variant}]: renders no {missing}")
        probes = 0
        loaded = 0
        for doc in docs:
            where = f"chart[{variant}]"
            validate(where, doc, metrics)
            loaded += check_config_loads(where, doc)
            probes += check_probes(where, doc)
            check_no_secrets(where, doc)
            if doc["kind"] == "Service" and not doc["metadata"]["name"].endswith("-headless"):
                port = doc["spec"]["ports"][0]["port"]
                if port != merged["service"]["port"]:
                    fail(f"chart[{variant}]: Service port {port}, values say {merged['service']['port']}")
            if doc["kind"] == "ConfigMap" and merged["dashboards"]["enabled"] and doc["metadata"]["name"].endswith("-dashboards"):
                if doc["metadata"]["labels"].get(merged["dashboards"]["label"]) is None:
                    fail(f"chart[{variant}]: dashboard ConfigMap lacks the {merged['dashboards']['label']} label")
                dashboards = doc.get("data") or {}
                if not dashboards:
                    fail(f"chart[{variant}]: the dashboard ConfigMap holds no dashboard")
                for key, body in dashboards.items():
                    try:
                        json.loads(body)
                    except ValueError as e:
                        fail(f"chart[{variant}]: dashboard {key} is not JSON: {e}")
        check_secret_mounts(f"chart[{variant}]", docs)
        check_expected_config(variant, docs)
        check_shape(variant, merged, docs)
        if probes == 0:
            fail(f"chart[{variant}]: no service container found to check probes on")
        note = f"; {loaded} config(s) loaded by the service" if loaded else ""
        print(f"ok   chart[{variant}]: {len(docs)} manifests ({', '.join(kinds)}){note}")
        total += len(docs)
    for what, values in REFUSED.items():
        try:
            chart.render(values, name=RELEASE, namespace=NAMESPACE)
        except helm_python.HelmError:
            print(f"ok   chart refuses {what} (values.schema.json or the templates)")
        else:
            fail(f"chart accepts {what}: values.schema.json must refuse it")
    return total


def check_static(metrics: set[str]) -> int:
    total = 0
    for path in STATIC_MANIFESTS:
        rel = os.path.relpath(path, ROOT)
        docs = load_docs(Path(path).read_text())
        probes = 0
        for doc in docs:
            validate(rel, doc, metrics)
            check_config_loads(rel, doc)
            probes += check_probes(rel, doc)
            check_no_secrets(rel, doc)
            if doc["kind"] == "ConfigMap" and "config.yaml" in (doc.get("data") or {}):
                config = yaml.safe_load(doc["data"]["config.yaml"])["audit_manager"]
                if (config.get("forward") or {}).get("target") == "postgres":
                    if "kafka" in config or "sink" in (config.get("roles") or []):
                        fail(f"{rel}: forward.target postgres with Kafka settings or the sink role")
            for pod in pod_specs(doc):
                for c in pod.get("initContainers", []):
                    if (c.get("args") or [None])[0] == "serve" and c.get("restartPolicy") != "Always":
                        fail(f"{rel}: init container {c['name']} runs the service but is not a native sidecar")
        if probes == 0:
            fail(f"{rel}: no audit-manager container found")
        print(f"ok   {rel}: {len(docs)} manifests")
        total += len(docs)
    return total


def check_compose() -> None:
    ref = importlib.resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    schema = json.loads(ref.read_text())
    doc = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    problems = sorted(validator.iter_errors(doc), key=lambda e: list(e.path))
    for e in problems:
        fail(f"docker-compose.yml at {'/'.join(map(str, e.path)) or '/'}: {e.message}")
    services = doc["services"]
    ours = {name: svc for name, svc in services.items() if "build" in svc}
    for name, svc in ours.items():
        hc = " ".join(svc.get("healthcheck", {}).get("test", []))
        if READY not in hc:
            fail(f"docker-compose.yml: the {name} healthcheck should use {READY}")
    # A plain `docker compose up`: the Kafka shape, as before.
    plain = sorted(name for name, svc in services.items() if not svc.get("profiles"))
    if plain != ["audit-manager", "kafka", "postgres"]:
        fail(f"docker-compose.yml: a plain `docker compose up` starts {plain}, not Kafka, PostgreSQL, audit-manager")
    # The Kafka-less shape: its own profile, nothing of Kafka, no sink.
    direct = services.get("audit-manager-kafka-less")
    if direct is None:
        fail("docker-compose.yml: no audit-manager-kafka-less service (the shape without Kafka)")
    else:
        env = direct.get("environment") or {}
        roles = env.get("AUDIT_MANAGER__ROLES", "").split(",")
        if "kafka-less" not in (direct.get("profiles") or []):
            fail("docker-compose.yml: audit-manager-kafka-less is not in the kafka-less profile")
        if "kafka" in (direct.get("depends_on") or {}):
            fail("docker-compose.yml: audit-manager-kafka-less depends on Kafka")
        if env.get("AUDIT_MANAGER__FORWARD__TARGET") != "postgres":
            fail("docker-compose.yml: audit-manager-kafka-less does not set AUDIT_MANAGER__FORWARD__TARGET=postgres")
        if "sink" in roles or "forward" not in roles:
            fail(f"docker-compose.yml: audit-manager-kafka-less runs roles {roles} (forward, no sink)")
        if any("KAFKA" in k for k in env):
            fail(f"docker-compose.yml: audit-manager-kafka-less has Kafka settings: {sorted(k for k in env if 'KAFKA' in k)}")
        spools = {name: [v.split(":")[0] for v in svc.get("volumes", [])] for name, svc in ours.items()}
        if len({tuple(v) for v in spools.values()}) != len(spools):
            fail(f"docker-compose.yml: the two shapes share a spool volume: {spools}")
    for name, svc in ours.items():
        check_env_loads(f"docker-compose.yml: {name}", svc.get("environment") or {})
    if not problems:
        print(f"ok   docker-compose.yml: Compose specification schema; shapes {', '.join(sorted(ours))}")


def check_env_loads(where: str, env: dict) -> None:
    """The service loads its configuration from this environment (as the image does: the
    default configuration file plus AUDIT_MANAGER__* overrides)."""
    binary = service_binary()
    if binary is None:
        return
    with tempfile.TemporaryDirectory() as tmp:
        run_env = {k: v for k, v in os.environ.items()
                   if not k.startswith(("AUDIT_MANAGER__", "DB_")) and k not in ("DATABASE_URL", "CONFIG_PATH")}
        run_env.update({k: str(v) for k, v in env.items()})
        run_env["AUDIT_MANAGER__SPOOL__PATH"] = str(Path(tmp) / "no-spool")
        out = subprocess.run([binary, "spool", "stats", "--config", str(ROOT / "config" / "default.yaml")],
                             capture_output=True, text=True, env=run_env, timeout=60)
    if "invalid configuration" in out.stderr:
        fail(f"{where}: the service refuses its environment: {out.stderr.strip()}")


def main() -> int:
    if service_binary() is None:
        print("note: no built audit-manager (target/debug); rendered configs are not loaded")
    metrics = metric_names()
    if not metrics:
        fail("found no metrics in src/: the metric-name check would be empty")
    n = check_chart(metrics)
    n += check_static(metrics)
    check_compose()
    if errors:
        print(f"\n{len(errors)} problem(s) in the deployment artefacts")
        return 1
    print(f"\nall deployment artefacts check out ({n} manifests, Kubernetes {', '.join(K8S_VERSIONS)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
