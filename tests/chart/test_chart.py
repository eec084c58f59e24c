"""The Helm chart, rendered by Helm's own engine (helm-python-sdk), validated
against Kubernetes' schemas (kubernetes-validate), plus the CRD, the examples
and the Dockerfile."""

import json
import os
import pathlib
import re
import shutil
import subprocess
import tempfile

import jsonschema
import kubernetes_validate
import pytest
import yaml
import helm_python

ROOT = pathlib.Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "amqp-relay"
BIN = ROOT / "target" / "debug" / "amqp-relay"
K8S_VERSIONS = ["1.30.0", kubernetes_validate.latest_version()]

VALUE_SETS = {
    "defaults": {},
    "ha-operator": {"operator": {"replicas": 2}},
    "namespace-list": {"operator": {"watchNamespaces": ["team-a", "team-b"]}},
    "all-namespaces": {"operator": {"watchNamespaces": ["*"]}},
    "smtp-tls": {"relay": {"smtp": {"tlsSecretName": "smtp-cert"}}},
    "monitoring": {"serviceMonitor": {"enabled": True}, "networkPolicy": {"enabled": True},
                   "prometheusRule": {"enabled": True}, "grafanaDashboard": {"enabled": True}},
    "podmonitor": {"serviceMonitor": {"enabled": True, "kind": "PodMonitor"},
                   "networkPolicy": {"monitoringNamespace": "monitoring"}},
    "conventions": {"global": {"imageRegistry": "r.example"}, "fullnameOverride": "mail-relay",
                    "podAnnotations": {"a.example/x": "1"}, "podLabels": {"team": "mail"},
                    "priorityClassName": "high", "serviceAccount": {"annotations": {"iam.example/role": "r"}},
                    "service": {"type": "LoadBalancer", "externalTrafficPolicy": "Local",
                                "annotations": {"lb.example/internal": "true"}},
                    "relay": {"extraEnv": [{"name": "RUST_LOG", "value": "debug"}],
                              "extraVolumes": [{"name": "ca", "configMap": {"name": "ca"}}],
                              "extraVolumeMounts": [{"name": "ca", "mountPath": "/etc/ca"}]},
                    "operator": {"extraEnv": [{"name": "RUST_LOG", "value": "debug"}]}},
    "autoscaled": {"relay": {"autoscaling": {"enabled": True}, "leftSpools": {"deleteEmptyClaims": True}}},
}


def render(values, name="edge", namespace="mail"):
    with helm_python.Chart.load(str(CHART)) as chart:
        out = chart.render(values, name=name, namespace=namespace)
    docs = []
    for path, text in sorted(out.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                docs.append(doc)
    return docs


def by_kind(docs, kind):
    return [d for d in docs if d["kind"] == kind]


def one(docs, kind, suffix):
    found = [d for d in by_kind(docs, kind) if d["metadata"]["name"].endswith(suffix)]
    assert len(found) == 1, f"{kind} *{suffix}: {[d['metadata']['name'] for d in docs]}"
    return found[0]


def test_lint_strict():
    result = helm_python.lint(str(CHART), strict=True)
    assert result["errors"] == []
    # Severity 1 is informational (an icon is recommended); warnings and errors are not allowed.
    assert [m for m in result["messages"] if m["severity"] > 1] == []


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_object_validates_strictly(name, version):
    docs = render(VALUE_SETS[name])
    assert docs
    for doc in docs:
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # a CRD of the Prometheus operator, not a built-in kind
        kubernetes_validate.validate(doc, version, strict=True)


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_crd_validates(version):
    crd = yaml.safe_load((ROOT / "crds" / "amqproute.yaml").read_text())
    kubernetes_validate.validate(crd, version, strict=True)


def test_crd_in_chart_is_what_the_binary_prints():
    printed = subprocess.run([str(BIN), "crd"], check=True, capture_output=True, text=True).stdout
    assert (CHART / "crds" / "amqproute.yaml").read_text() == printed
    assert (ROOT / "crds" / "amqproute.yaml").read_text() == printed


def pod_specs(docs):
    return {
        "operator": one(docs, "Deployment", "-operator")["spec"]["template"]["spec"],
        "relay": one(docs, "StatefulSet", "-relay")["spec"]["template"]["spec"],
    }


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_hardened_pods_probes_and_no_subpath(name):
    docs = render(VALUE_SETS[name])
    for which, spec in pod_specs(docs).items():
        psc = spec["securityContext"]
        assert psc["runAsNonRoot"] is True and psc["runAsUser"] != 0, which
        assert psc["seccompProfile"]["type"] == "RuntimeDefault", which
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, which
            assert sc["readOnlyRootFilesystem"] is True, which
            assert sc["capabilities"]["drop"] == ["ALL"], which
            assert c["resources"]["requests"], which
            assert c["readinessProbe"]["httpGet"]["path"], which
            assert c["livenessProbe"]["httpGet"]["path"], which
            for m in c.get("volumeMounts", []):
                assert "subPath" not in m and "subPathExpr" not in m, (which, m)


def test_relay_statefulset_spool_policy_and_probes():
    docs = render({})
    sts = one(docs, "StatefulSet", "-relay")
    assert sts["spec"]["podManagementPolicy"] == "Parallel"
    claim = sts["spec"]["volumeClaimTemplates"][0]
    assert claim["metadata"]["name"] == "spool"
    assert claim["spec"]["resources"]["requests"]["storage"] == "10Gi"
    tpl = sts["spec"]["template"]
    assert tpl["metadata"]["annotations"]["checksum/base-policy"]
    spec = tpl["spec"]
    c = spec["containers"][0]
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/api/check-liveness/v1"
    grace = spec["terminationGracePeriodSeconds"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    # A drain of a few minutes first, then sessions are done before the kubelet's SIGKILL.
    assert env["AMQP_RELAY_DRAIN_TIMEOUT"] == "120s"
    assert env["AMQP_RELAY_SHUTDOWN_TIMEOUT"] == f"{grace - 120 - 10}s"
    # Scale-in never deletes a claim that may hold mail.
    assert sts["spec"]["persistentVolumeClaimRetentionPolicy"] == {"whenDeleted": "Retain", "whenScaled": "Retain"}
    spool_name = next(e for e in c["env"] if e["name"] == "AMQP_RELAY_SPOOL_NAME")
    assert spool_name["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["AMQP_RELAY_SPOOL_REPORT_CONFIGMAP"] == "mail/edge-amqp-relay-spools"
    assert one(docs, "ConfigMap", "-spools").get("data") is None, "an upgrade must not wipe the reports"
    # Memory is bounded by these, not by the backlog.
    assert int(env["AMQP_RELAY_MAX_ACTIVE_MESSAGES"]) == 20000
    assert env["AMQP_RELAY_BODY_MEMORY"] == "64MiB"
    # The relay picks its worker threads from the cores unless told.
    assert "AMQP_RELAY_WORKER_THREADS" not in env
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert mounts["spool"] == "/var/spool/amqp-relay"
    vols = {v["name"]: v for v in spec["volumes"]}
    # The operator's objects, mounted whole so the kubelet can update them.
    assert vols["routes-policy"]["configMap"]["name"] == "edge-amqp-relay-policy"
    assert vols["routes-secret"]["secret"]["secretName"] == "edge-amqp-relay-routes"
    operator_args = one(docs, "Deployment", "-operator")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--relay=edge-amqp-relay" in operator_args
    assert one(docs, "PodDisruptionBudget", "-relay")
    ports = {p["name"] for s in by_kind(docs, "Service") for p in s["spec"]["ports"]}
    assert {"http", "smtp", "metrics"} <= ports


def test_relay_reads_only_its_routes_configmap_and_secret():
    docs = render({})
    role = one(docs, "Role", "-relay")
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["configmaps"],
         "resourceNames": ["edge-amqp-relay-policy"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": [""], "resources": ["secrets"],
         "resourceNames": ["edge-amqp-relay-routes"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": [""], "resources": ["configmaps"],
         "resourceNames": ["edge-amqp-relay-spools"], "verbs": ["get", "patch"]},
    ]
    env = {e["name"]: e.get("value") for e in one(docs, "StatefulSet", "-relay")["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["AMQP_RELAY_POLICY_CONFIGMAP"] == "mail/edge-amqp-relay-policy"
    assert env["AMQP_RELAY_ROUTES_SECRET"] == "mail/edge-amqp-relay-routes"
    # Where secret_load finds the keys: the directory the Secret is also mounted at.
    mounts = one(docs, "StatefulSet", "-relay")["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
    assert env["AMQP_RELAY_ROUTES_SECRET_DIR"] in {m["mountPath"] for m in mounts}
    off = render({"relay": {"policyApiWatch": False}})
    assert not [d for d in by_kind(off, "Role") if d["metadata"]["name"].endswith("-relay")]
    assert one(off, "StatefulSet", "-relay")["spec"]["template"]["spec"]["automountServiceAccountToken"] is False


def test_leader_election_with_replicas():
    args = lambda docs: one(docs, "Deployment", "-operator")["spec"]["template"]["spec"]["containers"][0]["args"]
    strategy = lambda docs: one(docs, "Deployment", "-operator")["spec"].get("strategy", {}).get("type", "RollingUpdate")
    assert "--leader-election" not in args(render({}))
    # Without a lease two operators must never run at once: no rolling update.
    assert strategy(render({})) == "Recreate"
    assert "--leader-election" in args(render({"operator": {"replicas": 2}}))
    assert strategy(render({"operator": {"replicas": 2}})) == "RollingUpdate"
    assert strategy(render({"operator": {"leaderElection": True}})) == "RollingUpdate"


def rules(docs):
    return [r for d in docs if d["kind"] in ("Role", "ClusterRole") for r in d["rules"]]


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_rbac_is_least_privilege(name):
    docs = render(VALUE_SETS[name])
    for r in rules(docs):
        for key in ("verbs", "resources", "apiGroups"):
            assert "*" not in r.get(key, []), r
    # Writes to ConfigMaps and Secrets are limited to the two objects by name (create cannot be).
    writes = [r for r in rules(docs) if set(r["verbs"]) & {"patch", "update"} and set(r["resources"]) & {"configmaps", "secrets"}]
    assert writes and all(r.get("resourceNames") for r in writes), writes


def test_the_operator_watches_only_its_own_policy_and_routes_by_name():
    docs = render({})
    own = [r for d in by_kind(docs, "Role") if d["metadata"]["name"].endswith("-operator")
           for r in d["rules"] if "watch" in r["verbs"] and set(r["resources"]) & {"configmaps", "secrets"}]
    assert sorted((r["resources"][0], r["resourceNames"][0]) for r in own) == [
        ("configmaps", "edge-amqp-relay-policy"), ("secrets", "edge-amqp-relay-routes")], own


def test_watch_scopes():
    listed = render({"operator": {"watchNamespaces": ["team-a", "team-b"]}})
    watch_roles = [d for d in by_kind(listed, "Role") if d["metadata"]["name"].endswith("-watch")]
    assert sorted(d["metadata"]["namespace"] for d in watch_roles) == ["team-a", "team-b"]
    assert not [d for d in by_kind(listed, "ClusterRole") if d["metadata"]["name"].endswith("-watch")]
    everywhere = render({"operator": {"watchNamespaces": ["*"]}})
    assert [d for d in by_kind(everywhere, "ClusterRole") if d["metadata"]["name"].endswith("-watch")]
    default = render({})
    assert [d["metadata"]["namespace"] for d in by_kind(default, "Role") if d["metadata"]["name"].endswith("-watch")] == ["mail"]


def test_aggregated_cluster_roles_for_tenants():
    docs = render({})
    labels = [d["metadata"]["labels"] for d in by_kind(docs, "ClusterRole")]
    assert any(l.get("rbac.authorization.k8s.io/aggregate-to-edit") == "true" for l in labels)
    assert any(l.get("rbac.authorization.k8s.io/aggregate-to-view") == "true" for l in labels)


@pytest.mark.parametrize(
    "values",
    [
        {"relay": {"replicas": "two"}},
        {"bogus": 1},
        {"relay": {"smtp": {"prot": 2525}}},
        {"operator": {"watchNamespaces": "team-a"}},
        {"relay": {"persistence": {"size": "lots"}}},
        {"relay": {"workerThreads": -1}},
        {"nameOverride": "Not_DNS"},
        {"service": {"externalTrafficPolicy": "Sometimes"}},
        {"relay": {"extraEnv": [{"value": "no name"}]}},
        {"serviceMonitor": {"kind": "Probe"}},
    ],
)
def test_values_schema_rejects(values):
    with pytest.raises(helm_python.HelmError) as err:
        render(values)
    assert "schema" in str(err.value).lower() or "validat" in str(err.value).lower(), err.value


def test_tls_and_monitoring_options_render():
    tls = one(render(VALUE_SETS["smtp-tls"]), "StatefulSet", "-relay")["spec"]["template"]["spec"]
    assert any(v.get("secret", {}).get("secretName") == "smtp-cert" for v in tls["volumes"])
    mon = render(VALUE_SETS["monitoring"])
    assert len(by_kind(mon, "ServiceMonitor")) == 2
    assert len(by_kind(mon, "NetworkPolicy")) == 3, "relay, operator, drain Jobs"


def selects(selector, obj):
    labels = obj["metadata"].get("labels", {})
    return all(labels.get(k) == v for k, v in selector["matchLabels"].items())


def test_each_pod_is_scraped_once():
    """A ServiceMonitor's selector matches exactly one Service per component
    (the relay's headless one: every pod, once); a PodMonitor the pods."""
    docs = render(VALUE_SETS["monitoring"])
    services = by_kind(docs, "Service")
    for sm in by_kind(docs, "ServiceMonitor"):
        matched = [s["metadata"]["name"] for s in services if selects(sm["spec"]["selector"], s)]
        assert len(matched) == 1, (sm["metadata"]["name"], matched)
        port = sm["spec"]["endpoints"][0]["port"]
        svc = next(s for s in services if s["metadata"]["name"] == matched[0])
        assert port in {p["name"] for p in svc["spec"]["ports"]}
    relay_sm = one(docs, "ServiceMonitor", "-relay")
    assert [s["metadata"]["name"] for s in services if selects(relay_sm["spec"]["selector"], s)] == ["edge-amqp-relay-relay-headless"]
    pm = render(VALUE_SETS["podmonitor"])
    assert not by_kind(pm, "ServiceMonitor")
    relay_pm = one(pm, "PodMonitor", "-relay")
    sts = one(pm, "StatefulSet", "-relay")
    assert selects(relay_pm["spec"]["selector"], sts["spec"]["template"])
    assert relay_pm["spec"]["podMetricsEndpoints"][0]["port"] == "http"
    assert not selects(relay_pm["spec"]["selector"], one(pm, "Deployment", "-operator")["spec"]["template"])


def test_the_monitoring_namespace_may_scrape_and_notes_say_when_it_cannot():
    docs = render(VALUE_SETS["podmonitor"])
    relay_np = one(docs, "NetworkPolicy", "-relay")
    scrape = [r for r in relay_np["spec"]["ingress"]
              if {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}} in r["from"]]
    assert len(scrape) == 1 and [p["port"] for p in scrape[0]["ports"]] == ["http"], "metrics only, never SMTP"
    op_np = one(docs, "NetworkPolicy", "-operator")
    assert {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}} in op_np["spec"]["ingress"][0]["from"]
    assert "monitoringNamespace" in notes(VALUE_SETS["monitoring"])
    assert "monitoringNamespace" not in notes(VALUE_SETS["podmonitor"])
    assert "amqp-relay admin queue-summary" in notes({})


def test_alert_rules_pass_promtool_and_render_as_tested():
    """The alerts are files/prometheus-rules.yaml; promtool (Debian's
    prometheus package) checks and unit-tests them against recorded series
    (tests/chart/rules_test.yaml), and the PrometheusRule carries that file."""
    promtool = shutil.which("promtool")
    assert promtool, "promtool is installed by scripts/ensure-deps.sh"
    rules_file = CHART / "files" / "prometheus-rules.yaml"
    check = subprocess.run([promtool, "check", "rules", str(rules_file)], capture_output=True, text=True)
    assert check.returncode == 0 and "SUCCESS: 10 rules found" in check.stdout, check.stdout + check.stderr
    test = subprocess.run([promtool, "test", "rules", "rules_test.yaml"], cwd=pathlib.Path(__file__).parent,
                          capture_output=True, text=True)
    assert test.returncode == 0 and "SUCCESS" in test.stdout, test.stdout + test.stderr
    alerts = {r["alert"] for g in yaml.safe_load(rules_file.read_text())["groups"] for r in g["rules"]}
    tested = set(re.findall(r"alertname: (\w+)", (pathlib.Path(__file__).parent / "rules_test.yaml").read_text()))
    assert alerts == tested, f"alerts without a promtool test: {alerts - tested}"
    rule = one(render(VALUE_SETS["monitoring"]), "PrometheusRule", "edge-amqp-relay")
    assert rule["spec"] == yaml.safe_load(rules_file.read_text())
    assert not by_kind(render({}), "PrometheusRule"), "off by default"


def test_dashboard_is_a_sidecar_configmap_of_valid_json():
    docs = render(VALUE_SETS["monitoring"])
    cm = one(docs, "ConfigMap", "-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    dash = json.loads(cm["data"]["amqp-relay.json"])
    assert dash["uid"] == "amqp-relay" and len(dash["panels"]) >= 8
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    # Which names exist is checked against the relay's and operator's own
    # registries by the Rust tests the_charts_queries_use_only_exported_*.
    assert all("amqp_relay_" in e or "user_lua_latency" in e for e in exprs), exprs
    other = one(render({"grafanaDashboard": {"enabled": True, "namespace": "grafana"}}), "ConfigMap", "-dashboard")
    assert other["metadata"]["namespace"] == "grafana"
    assert not [d for d in render({}) if d["metadata"]["name"].endswith("-dashboard")]


def test_chart_conventions_render():
    docs = render(VALUE_SETS["conventions"])
    assert {d["metadata"]["name"] for d in docs if d["kind"] == "StatefulSet"} == {"mail-relay-relay"}
    sts = one(docs, "StatefulSet", "-relay")
    tpl = sts["spec"]["template"]
    assert tpl["metadata"]["annotations"]["a.example/x"] == "1"
    assert tpl["metadata"]["labels"]["team"] == "mail"
    spec = tpl["spec"]
    assert spec["priorityClassName"] == "high"
    c = spec["containers"][0]
    assert {"name": "RUST_LOG", "value": "debug"} in c["env"]
    assert {"name": "ca", "mountPath": "/etc/ca"} in c["volumeMounts"]
    assert {"name": "ca", "configMap": {"name": "ca"}} in spec["volumes"]
    op = one(docs, "Deployment", "-operator")["spec"]["template"]
    assert op["metadata"]["labels"]["team"] == "mail" and op["spec"]["priorityClassName"] == "high"
    assert {"name": "RUST_LOG", "value": "debug"} in op["spec"]["containers"][0]["env"]
    for sa in by_kind(docs, "ServiceAccount"):
        assert sa["metadata"]["annotations"] == {"iam.example/role": "r"}
    for name in ("-http", "-smtp"):
        svc = one(docs, "Service", name)
        assert svc["spec"]["externalTrafficPolicy"] == "Local"
        assert svc["metadata"]["annotations"] == {"lb.example/internal": "true"}
    assert "externalTrafficPolicy" not in one(render({"service": {"externalTrafficPolicy": "Local"}}), "Service", "-http")["spec"], \
        "ClusterIP has none"
    # The operator names its objects after the same prefix.
    assert "--relay=mail-relay" in one(docs, "Deployment", "-operator")["spec"]["template"]["spec"]["containers"][0]["args"]
    renamed = render({"nameOverride": "relay"})
    assert one(renamed, "StatefulSet", "-relay")["metadata"]["name"] == "edge-relay-relay"
    assert one(renamed, "StatefulSet", "-relay")["metadata"]["labels"]["app.kubernetes.io/name"] == "relay"


def test_pods_spread_across_nodes_and_zones_by_default():
    for which, spec in pod_specs(render({})).items():
        keys = {c["topologyKey"]: c["whenUnsatisfiable"] for c in spec["topologySpreadConstraints"]}
        assert keys == {"kubernetes.io/hostname": "ScheduleAnyway", "topology.kubernetes.io/zone": "ScheduleAnyway"}, which
        selector = spec["topologySpreadConstraints"][0]["labelSelector"]["matchLabels"]
        assert selector["app.kubernetes.io/component"] == which
    hard = pod_specs(render({"topologySpread": {"whenUnsatisfiable": "DoNotSchedule"}}))["relay"]
    assert hard["topologySpreadConstraints"][0]["whenUnsatisfiable"] == "DoNotSchedule"
    assert "topologySpreadConstraints" not in pod_specs(render({"topologySpread": {"enabled": False}}))["relay"]


def test_the_relay_container_finds_the_admin_credentials_for_the_cli():
    c = one(render({}), "StatefulSet", "-relay")["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in c["env"]}
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    assert env["AMQP_RELAY_ADMIN_CREDENTIALS"] in mounts
    assert env["AMQP_RELAY_ADMIN_ENDPOINT"] == "http://127.0.0.1:8000"


def test_installs_as_a_subchart():
    """A parent chart depending on this one (its values under the dependency's
    name, a `global` section) renders; helm/helm#10392 broke charts whose
    schema refused `global`."""
    with tempfile.TemporaryDirectory() as d:
        parent = pathlib.Path(d, "platform")
        (parent / "charts").mkdir(parents=True)
        shutil.copytree(CHART, parent / "charts" / "amqp-relay")
        (parent / "Chart.yaml").write_text(
            "apiVersion: v2\nname: platform\nversion: 0.1.0\n"
            "dependencies:\n  - name: amqp-relay\n    version: '>=0.0.0-0'\n")
        (parent / "values.yaml").write_text(
            "global:\n  imageRegistry: r.example\namqp-relay:\n  relay:\n    replicas: 3\n")
        with helm_python.Chart.load(str(parent)) as chart:
            out = chart.render({}, name="plat", namespace="mail")
        docs = [doc for path, text in sorted(out.items()) if not path.endswith("NOTES.txt")
                for doc in yaml.safe_load_all(text) if doc]
        sts = one(docs, "StatefulSet", "-relay")
        assert sts["metadata"]["name"] == "plat-amqp-relay-relay"
        assert sts["spec"]["replicas"] == 3


def crd_schema():
    crd = yaml.safe_load((ROOT / "crds" / "amqproute.yaml").read_text())
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def example_routes():
    for f in sorted((ROOT / "examples").glob("*.yaml")):
        for doc in yaml.safe_load_all(f.read_text()):
            if doc and doc["kind"] == "AmqpRoute":
                yield f.name, doc


def test_examples_validate_against_the_crd():
    schema = crd_schema()
    names = []
    for fname, doc in example_routes():
        jsonschema.validate(doc, schema)
        names.append(fname)
    assert {"seed-route.yaml", "log-events-route.yaml", "tls-route.yaml", "cluster-route.yaml"} <= set(names)


def cel_rules(node, path="spec"):
    """Every x-kubernetes-validations rule of the CRD schema, with the path of
    the value it applies to (`self`)."""
    for rule in node.get("x-kubernetes-validations", []):
        yield path, rule["rule"], rule["message"]
    for key, child in node.get("properties", {}).items():
        yield from cel_rules(child, f"{path}.{key}")


# What each rule must accept and refuse, as an API server evaluating it
# against a real object would (path relative to the route's spec).
CEL_CASES = {
    "spec.broker": (
        [{"url": "amqp://rabbit/"}, {"urls": ["amqp://a/", "amqp://b/"]},
         {"urlSecretRef": {"name": "u", "key": "url"}}, {"rabbitmqClusterRef": {"name": "rabbit"}},
         {"url": "amqp://rabbit/", "credentialsSecretRef": {"name": "c"}},
         {"rabbitmqClusterRef": {"name": "rabbit"}, "credentialsSecretRef": {"name": "c"}}],
        [{}, {"url": "amqp://a/", "urls": ["amqp://b/"]},
         {"url": "amqp://a/", "rabbitmqClusterRef": {"name": "r"}},
         {"urlSecretRef": {"name": "u", "key": "url"}, "credentialsSecretRef": {"name": "c"}}],
    ),
    "spec.broker.url": (["amqp://rabbit:5672/%2f", "amqps://rabbit/"], ["http://rabbit/", "rabbit:5672", ""]),
    "spec.match.domain": (["amqp", "mail.example.com"], ["a@b", "a:b", "a!b"]),
    "spec.match.tenant": (["acme"], ["a@b", "a:b"]),
    "spec.match.campaign": (["spring-sale"], ["a:b"]),
}


def test_every_cel_rule_is_evaluated_against_good_and_bad_values():
    """The CRD's CEL rules run under cel-python (the same CEL an API server
    evaluates): each accepts what it should and refuses what it should, so a
    rule that does not parse, or says yes to everything, fails here."""
    import celpy
    env = celpy.Environment()
    rules = list(cel_rules(crd_schema()["properties"]["spec"]))
    assert len(rules) == 6, rules
    assert {p for p, _, _ in rules} == set(CEL_CASES), "every rule has cases"
    for path, rule, message in rules:
        program = env.program(env.compile(rule))
        good, bad = CEL_CASES[path]
        # One rule of several on a path refuses only what it is about: a value
        # is bad when at least one of the path's rules refuses it.
        for value in good:
            assert program.evaluate({"self": celpy.json_to_cel(value)}), (path, rule, value)
    for path, (good, bad) in CEL_CASES.items():
        programs = [env.program(env.compile(r)) for p, r, _ in rules if p == path]
        for value in bad:
            verdicts = [bool(p.evaluate({"self": celpy.json_to_cel(value)})) for p in programs]
            assert not all(verdicts), (path, value)
    # The exactly-one rule's message names every choice it counts.
    messages = [m for p, _, m in rules if p == "spec.broker"]
    assert any(all(k in m for k in ("url", "urls", "urlSecretRef", "rabbitmqClusterRef")) for m in messages)
    cred = next(m for m in messages if m.startswith("credentialsSecretRef"))
    assert all(k in cred for k in ("url", "urls", "rabbitmqClusterRef", "urlSecretRef")), cred


def test_lists_and_strings_are_bounded():
    spec = crd_schema()["properties"]["spec"]["properties"]
    assert spec["broker"]["properties"]["urls"]["maxItems"] == 8
    headers = spec["publish"]["properties"]["headers"]
    assert headers["maxProperties"] == 64 and headers["additionalProperties"]["maxLength"] == 1024
    route = next(doc for _, doc in example_routes())
    route = json.loads(json.dumps(route))
    route["spec"]["publish"]["headers"] = {"x": "v" * 1025}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(route, crd_schema())


@pytest.mark.parametrize(
    "breakage",
    [
        lambda s: s["match"].pop("domain"),
        lambda s: s["publish"].update(routingKey=7),
        lambda s: s["publish"].update(onNack="maybe"),
        lambda s: s.update(delivery={"connectionLimit": 0}),
        lambda s: s.update(delivery={"retryInterval": "soon"}),
        lambda s: s["match"].update(domain=""),
    ],
)
def test_broken_examples_are_rejected(breakage):
    _, doc = next(example_routes())
    breakage(doc["spec"])
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, crd_schema())


def test_base_policy_loads_in_the_relay():
    env = dict(os.environ, AMQP_RELAY_SMTP_LISTEN="0.0.0.0:2525", AMQP_RELAY_TRUSTED_HOSTS="10.0.0.0/8",
               AMQP_RELAY_SMTP_RELAY_HOSTS="10.0.0.0/8", AMQP_RELAY_ROUTES_DIR="/nonexistent")
    out = subprocess.run([str(BIN), "check", "--policy", str(CHART / "files" / "policy.lua")],
                         capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert "1 http and 1 smtp listener" in out.stdout
    # With the operator's rendered routes beside it, as the pod mounts them.
    with tempfile.TemporaryDirectory() as d:
        rendered = subprocess.run([str(BIN), "render", "-f", str(ROOT / "examples"),
                                   "--relay", "mail-amqp-relay", "--namespace", "mail"], capture_output=True, text=True)
        assert rendered.returncode == 0, rendered.stderr
        cm = next(yaml.safe_load_all(rendered.stdout))
        pathlib.Path(d, "routes.lua").write_text(cm["data"]["routes.lua"])
        env["AMQP_RELAY_ROUTES_DIR"] = d
        out = subprocess.run([str(BIN), "check", "--policy", str(CHART / "files" / "policy.lua")],
                             capture_output=True, text=True, env=env)
        assert out.returncode == 0, out.stderr
        assert "1 log hook" in out.stdout, out.stdout


def test_dockerfile_builds_like_the_tests_and_runs_as_non_root():
    text = (ROOT / "Dockerfile").read_text()
    stages = text.split("\nFROM ")
    assert len(stages) >= 2, "multi-stage"
    assert "cargo build --release --locked" in stages[0]
    final = stages[-1]
    users = [l.split()[1] for l in final.splitlines() if l.startswith("USER ")]
    assert users, "the runtime stage sets a user"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, users
    assert 'ENTRYPOINT ["amqp-relay"]' in final
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert "target" in ignored


def test_default_install_is_closed():
    docs = render({})
    env = {e["name"]: e.get("value") for e in one(docs, "StatefulSet", "-relay")["spec"]["template"]["spec"]["containers"][0]["env"]}
    # No address is trusted, loopback included (port-forwards arrive from it).
    assert env["AMQP_RELAY_TRUSTED_HOSTS"] == ""
    assert env["AMQP_RELAY_SMTP_RELAY_HOSTS"] == ""
    assert env["AMQP_RELAY_AUTH_DIR"] == "/etc/amqp-relay/auth"
    # Credentials: created by the operator when missing, never by a render
    # (a render-time password would rotate with every helm template).
    assert not by_kind(docs, "Secret"), [d["metadata"]["name"] for d in by_kind(docs, "Secret")]
    op_env = {e["name"]: e.get("value") for e in one(docs, "Deployment", "-operator")["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert op_env["AMQP_RELAY_ENSURE_CREDENTIALS"] == \
        "edge-amqp-relay-inject-credentials:inject,edge-amqp-relay-admin-credentials:admin"
    get_rule = next(r for r in one(docs, "Role", "-operator")["rules"]
                    if r["resources"] == ["secrets"] and r["verbs"] == ["get"])
    assert get_rule["resourceNames"] == ["edge-amqp-relay-inject-credentials", "edge-amqp-relay-admin-credentials"]
    # Two renders are the same: nothing random in them.
    assert render({}) == docs
    spec = one(docs, "StatefulSet", "-relay")["spec"]["template"]["spec"]
    vols = {v["name"]: v for v in spec["volumes"]}
    assert vols["inject-credentials"]["secret"]["secretName"] == "edge-amqp-relay-inject-credentials"
    assert vols["admin-credentials"]["secret"]["secretName"] == "edge-amqp-relay-admin-credentials"
    # The NetworkPolicy is on: the relay's ports only from the release namespace.
    relay_np = one(docs, "NetworkPolicy", "-relay")
    rule = relay_np["spec"]["ingress"][0]
    assert rule["from"] == [{"podSelector": {}}]
    assert {p["port"] for p in rule["ports"]} == {"http", "smtp"}
    assert one(docs, "NetworkPolicy", "-operator")
    # The base policy checks credentials with KumoMTA's events.
    policy = one(docs, "ConfigMap", "-base-policy")["data"]["policy.lua"]
    assert "http_server_validate_auth_basic" in policy and "smtp_server_auth_plain" in policy


def test_named_credentials_and_ownership_rules_render():
    docs = render({
        "auth": {"inject": {"username": "apps", "existingSecret": "my-inject"}},
        "operator": {"watchNamespaces": ["team-a", "team-b"], "domainOwnership": {"team-a": ["a.example", "*.a.example"]}},
    })
    assert not [d for d in by_kind(docs, "Secret") if d["metadata"]["name"].endswith("-inject-credentials")]
    vols = {v["name"]: v for v in one(docs, "StatefulSet", "-relay")["spec"]["template"]["spec"]["volumes"]}
    assert vols["inject-credentials"]["secret"]["secretName"] == "my-inject"
    env = {e["name"]: e.get("value") for e in one(docs, "Deployment", "-operator")["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert json.loads(env["AMQP_RELAY_DOMAIN_OWNERSHIP"]) == {"team-a": ["a.example", "*.a.example"]}
    # The operator creates only the Secret the user did not name.
    assert env["AMQP_RELAY_ENSURE_CREDENTIALS"] == "edge-amqp-relay-admin-credentials:admin"


def notes(values):
    with helm_python.Chart.load(str(CHART)) as chart:
        out = chart.render(values, name="edge", namespace="mail")
    return next(text for path, text in out.items() if path.endswith("NOTES.txt"))


def test_notes_tell_how_to_read_credentials_and_warn_on_shared_domains():
    text = notes({})
    assert "get secret edge-amqp-relay-inject-credentials -o jsonpath='{.data.password}'" in text
    assert "only pods in namespace mail" in text
    assert "WARNING" not in text
    assert "WARNING" in notes({"operator": {"watchNamespaces": ["a", "b"]}})
    assert "WARNING" not in notes({"operator": {"watchNamespaces": ["a", "b"], "domainOwnership": {"a": ["a.example"]}}})


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_base_policy_lets_only_the_mounted_credentials_in():
    """The chart's base policy, run by the relay as the pod runs it, with the
    credentials as the Secrets mount them: the inject credential injects, the
    admin one administers, nothing else gets in."""
    import base64
    import time
    import urllib.error
    import urllib.request
    with tempfile.TemporaryDirectory() as d:
        for which, pw in (("inject", "in-pw"), ("admin", "ad-pw")):
            pathlib.Path(d, "auth", which).mkdir(parents=True)
            pathlib.Path(d, "auth", which, "username").write_text(which)
            pathlib.Path(d, "auth", which, "password").write_text(pw)
        port = free_port()
        env = dict(os.environ, AMQP_RELAY_HTTP_LISTEN=f"127.0.0.1:{port}", AMQP_RELAY_TRUSTED_HOSTS="",
                   AMQP_RELAY_AUTH_DIR=str(pathlib.Path(d, "auth")), AMQP_RELAY_SPOOL=str(pathlib.Path(d, "spool")),
                   AMQP_RELAY_ROUTES_DIR="/nonexistent", RUST_LOG="warn")
        relay = subprocess.Popen([str(BIN), "relay", "--policy", str(CHART / "files" / "policy.lua")], env=env)
        try:
            def call(path, creds=None, body=b'{"reason": "t", "domain": "amqp"}'):
                req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method="POST",
                                             headers={"content-type": "application/json"})
                if creds:
                    req.add_header("authorization", "Basic " + base64.b64encode(creds.encode()).decode())
                try:
                    return urllib.request.urlopen(req, timeout=10).status
                except urllib.error.HTTPError as e:
                    return e.code
            deadline = time.time() + 30
            while True:
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2)
                    break
                except OSError:
                    assert time.time() < deadline, "the relay did not start"
                    time.sleep(0.1)
            inject = b'{"envelope_sender": "a@b.c", "content": "x", "recipients": [{"email": "u@amqp"}]}'
            assert call("/api/inject/v1", None, inject) == 401
            assert call("/api/inject/v1", "inject:wrong", inject) == 401
            assert call("/api/inject/v1", "inject:", inject) == 401
            # Authenticated, then refused for want of a route (no routes are mounted).
            assert call("/api/inject/v1", "inject:in-pw", inject) == 400
            assert call("/api/admin/bounce/v1", "inject:in-pw") == 403
            assert call("/api/admin/bounce/v1", "admin:ad-pw") == 200
        finally:
            relay.terminate()
            relay.wait(timeout=30)


def test_base_policy_refuses_one_user_name_for_both_credentials():
    """Equal user names would let the inject password administer: the relay
    does not start, and the chart does not render, saying why."""
    with tempfile.TemporaryDirectory() as d:
        for which, pw in (("inject", "in-pw"), ("admin", "ad-pw")):
            pathlib.Path(d, "auth", which).mkdir(parents=True)
            pathlib.Path(d, "auth", which, "username").write_text("ops")
            pathlib.Path(d, "auth", which, "password").write_text(pw)
        env = dict(os.environ, AMQP_RELAY_HTTP_LISTEN=f"127.0.0.1:{free_port()}", AMQP_RELAY_TRUSTED_HOSTS="",
                   AMQP_RELAY_AUTH_DIR=str(pathlib.Path(d, "auth")), AMQP_RELAY_SPOOL=str(pathlib.Path(d, "spool")),
                   AMQP_RELAY_ROUTES_DIR="/nonexistent", RUST_LOG="warn")
        run = subprocess.run([str(BIN), "relay", "--policy", str(CHART / "files" / "policy.lua")], env=env,
                             capture_output=True, text=True, timeout=60)
        assert run.returncode != 0
        assert "same user name (ops)" in run.stderr, run.stderr
    with pytest.raises(Exception, match="different user names"):
        render({"auth": {"inject": {"username": "ops"}, "admin": {"username": "ops"}}})


CHECKOV_SKIPS = ROOT / "tests" / "chart" / "checkov-skips.yaml"


@pytest.mark.parametrize("name,values", [
    ("defaults", {}),
    ("all-features", {"operator": {"replicas": 2, "watchNamespaces": ["*"]},
                      "relay": {"smtp": {"tlsSecretName": "smtp-cert"}, "localLogs": {"enabled": True},
                                "autoscaling": {"enabled": True}, "leftSpools": {"deleteEmptyClaims": True}},
                      "serviceMonitor": {"enabled": True}}),
])
def test_checkov_finds_nothing_unexplained(name, values):
    """checkov (a Kubernetes manifest scanner) over the rendered chart: every
    finding must be in the checked-in skip list, with a reason."""
    checkov = pathlib.Path(os.environ.get("CHECKOV", ROOT / "target" / "checkov-venv" / "bin" / "checkov"))
    assert checkov.exists(), "checkov is installed by scripts/test.sh"
    skips = yaml.safe_load(CHECKOV_SKIPS.read_text())
    for check, why in skips.items():
        assert why and len(why) > 20, f"{check}: a skip needs its reason"
    with tempfile.TemporaryDirectory() as d:
        with helm_python.Chart.load(str(CHART)) as chart:
            out = chart.render(values, name="edge", namespace="mail")
        for path, text in out.items():
            if path.endswith(".yaml"):
                pathlib.Path(d, pathlib.Path(path).name).write_text(text)
        run = subprocess.run([str(checkov), "-d", d, "--framework", "kubernetes", "-o", "json", "--quiet",
                              "--compact", "--skip-download", "--skip-check", ",".join(skips)],
                             capture_output=True, text=True)
        report = json.loads(run.stdout or "{}")
        reports = report if isinstance(report, list) else [report]
        failed = [c for r in reports for c in r.get("results", {}).get("failed_checks", [])]
        # --quiet leaves passed checks out of the results; the summary counts them.
        passed = sum(r.get("summary", {}).get("passed", 0) for r in reports)
        assert passed > 100, f"checkov checked next to nothing (exit {run.returncode}): {run.stderr[-2000:]}"
        unexplained = sorted({f"{c['check_id']} {c['resource']}: {c['check_name']}" for c in failed if c["check_id"] not in skips})
        assert not unexplained, "checkov findings without a reason in checkov-skips.yaml:\n" + "\n".join(unexplained)
        # With the explained checks skipped, checkov itself must pass (not crash, not find more).
        assert run.returncode == 0, f"checkov exited {run.returncode}: {run.stderr[-2000:]}"


def test_an_install_serves_only_routes_naming_it_unless_told():
    env = lambda docs: {e["name"]: e.get("value") for e in
                        one(docs, "Deployment", "-operator")["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env(render({}))["AMQP_RELAY_SERVE_ROUTES_WITHOUT_RELAY_REF"] == "false"
    assert env(render({"operator": {"serveRoutesWithoutRelayRef": True}}))["AMQP_RELAY_SERVE_ROUTES_WITHOUT_RELAY_REF"] == "true"


def test_shared_rabbitmq_cluster_namespaces_get_read_access_and_the_flag():
    docs = render({"operator": {"sharedRabbitmqClusterNamespaces": ["messaging"]}})
    env = {e["name"]: e.get("value") for e in
           one(docs, "Deployment", "-operator")["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["AMQP_RELAY_SHARED_RABBITMQ_CLUSTER_NAMESPACES"] == "messaging"
    roles = [d for d in by_kind(docs, "Role") if d["metadata"]["namespace"] == "messaging"]
    assert len(roles) == 1
    assert {"apiGroups": ["rabbitmq.com"], "resources": ["rabbitmqclusters"], "verbs": ["get"]} in roles[0]["rules"]
    bindings = [d for d in by_kind(docs, "RoleBinding") if d["metadata"]["namespace"] == "messaging"]
    assert bindings and bindings[0]["roleRef"]["name"] == roles[0]["metadata"]["name"]
    assert "AMQP_RELAY_SHARED_RABBITMQ_CLUSTER_NAMESPACES" not in {
        e["name"] for e in one(render({}), "Deployment", "-operator")["spec"]["template"]["spec"]["containers"][0]["env"]}


def test_relay_worker_threads_are_set_when_asked():
    docs = render({"relay": {"workerThreads": 3}})
    c = one(docs, "StatefulSet", "-relay")["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["AMQP_RELAY_WORKER_THREADS"] == "3"


def test_spools_left_by_a_scale_in_are_drained_by_the_operator_with_least_privilege():
    docs = render({})
    op = one(docs, "Deployment", "-operator")["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in op["env"]}
    assert env["AMQP_RELAY_STATEFULSET"] == one(docs, "StatefulSet", "-relay")["metadata"]["name"]
    assert env["AMQP_RELAY_SPOOL_REPORT_CONFIGMAP_NAME"] == "edge-amqp-relay-spools"
    assert env["AMQP_RELAY_DELETE_DRAINED_SPOOLS"] == "false"
    role = one(docs, "Role", "-operator")["rules"]
    def verbs(resource, group=""):
        return sorted(v for r in role if resource in r["resources"] and group in r["apiGroups"] for v in r["verbs"])
    assert verbs("persistentvolumeclaims") == ["list"], "no deletion unless asked"
    assert verbs("jobs", "batch") == ["create", "delete", "list"]
    sts_rule = next(r for r in role if "statefulsets" in r["resources"])
    assert sts_rule["resourceNames"] == ["edge-amqp-relay-relay"] and sts_rule["verbs"] == ["get"]
    asked = render({"relay": {"leftSpools": {"deleteEmptyClaims": True}}})
    role = one(asked, "Role", "-operator")["rules"]
    assert any("persistentvolumeclaims" in r["resources"] and "delete" in r["verbs"] for r in role)
    off = render({"relay": {"leftSpools": {"drain": False}}})
    op = one(off, "Deployment", "-operator")["spec"]["template"]["spec"]["containers"][0]
    assert "AMQP_RELAY_STATEFULSET" not in {e["name"] for e in op["env"]}
    assert not [r for r in one(off, "Role", "-operator")["rules"] if "jobs" in r["resources"]]
    # Drain pods take no traffic.
    drain_np = one(docs, "NetworkPolicy", "-drain")
    assert drain_np["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "drain"
    assert "ingress" not in drain_np["spec"]


def test_a_grace_period_too_short_for_the_drain_is_refused():
    with pytest.raises(Exception, match="terminationGracePeriodSeconds"):
        render({"relay": {"terminationGracePeriodSeconds": 100, "drain": {"timeoutSeconds": 90}}})
    no_drain = render({"relay": {"terminationGracePeriodSeconds": 30, "drain": {"timeoutSeconds": 0}}})
    c = one(no_drain, "StatefulSet", "-relay")["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert (env["AMQP_RELAY_DRAIN_TIMEOUT"], env["AMQP_RELAY_SHUTDOWN_TIMEOUT"]) == ("0s", "20s")


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_autoscaling_takes_the_replica_count(version):
    docs = render({"relay": {"autoscaling": {"enabled": True, "maxReplicas": 5}}})
    hpa = one(docs, "HorizontalPodAutoscaler", "-relay")
    kubernetes_validate.validate(hpa, version, strict=True)
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "edge-amqp-relay-relay"}
    assert hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] == "amqp_relay_spooled_messages"
    assert hpa["spec"]["behavior"]["scaleDown"]["policies"] == [{"type": "Pods", "value": 1, "periodSeconds": 300}]
    assert "replicas" not in one(docs, "StatefulSet", "-relay")["spec"], "the HPA owns it"
    assert not by_kind(render({}), "HorizontalPodAutoscaler")


def test_log_events_of_every_queue_only_for_the_namespaces_named():
    env = lambda docs: {e["name"]: e.get("value") for e in one(docs, "Deployment", "-operator")["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert "AMQP_RELAY_LOG_EVENTS_ALL_NAMESPACES" not in env(render({}))
    named = render({"operator": {"logEventsAllNamespaces": ["platform", "ops"]}})
    assert env(named)["AMQP_RELAY_LOG_EVENTS_ALL_NAMESPACES"] == "platform,ops"
