//! The deploy kit (`deploy/`) is checked like code: every YAML and JSON file parses, the
//! Kubernetes objects are well formed and agree with each other and with the daemon's
//! config, every alert names its severity and a runbook section that exists, every metric
//! an alert or the dashboard uses is one the daemon exports, and the alert rules pass
//! `promtool check rules` and their unit tests (`promtool test rules`).
//!
//! promtool comes from Debian's `prometheus` package; `.ci/run` installs it when missing.
//! Without it the promtool test fails (it never skips).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use assayer::daemon::config::Config;
use assayer::daemon::metrics::{FindingLabels, Metrics, OutcomeLabel, StreamLabels};
use serde::Deserialize;
use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn rel(path: &Path) -> String {
    path.strip_prefix(root())
        .unwrap_or(path)
        .display()
        .to_string()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", rel(path)))
}

/// Every file under `dir` (recursively), sorted.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries =
            std::fs::read_dir(&d).unwrap_or_else(|e| panic!("cannot list {}: {e}", rel(&d)));
        for entry in entries {
            let path = entry
                .unwrap_or_else(|e| panic!("cannot list {}: {e}", rel(&d)))
                .path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

fn has_ext(path: &Path, exts: &[&str]) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| exts.contains(&e))
}

/// All documents of a (multi-document) YAML text, as JSON values; empty documents
/// (a trailing `---`) are left out.
fn parse_yaml(text: &str) -> Result<Vec<Value>, String> {
    let mut docs = Vec::new();
    for (i, doc) in serde_norway::Deserializer::from_str(text).enumerate() {
        let v = Value::deserialize(doc).map_err(|e| format!("document {}: {e}", i + 1))?;
        if !v.is_null() {
            docs.push(v);
        }
    }
    Ok(docs)
}

fn yaml(rel_path: &str) -> Vec<Value> {
    let path = root().join(rel_path);
    parse_yaml(&read(&path)).unwrap_or_else(|e| panic!("{rel_path}: {e}"))
}

/// The one document of a YAML file.
fn yaml1(rel_path: &str) -> Value {
    let mut docs = yaml(rel_path);
    assert_eq!(docs.len(), 1, "{rel_path}: expected one YAML document");
    docs.remove(0)
}

fn str_at<'a>(v: &'a Value, pointer: &str, what: &str) -> &'a str {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("{what}: no string at {pointer}"))
}

fn arr_at<'a>(v: &'a Value, pointer: &str, what: &str) -> &'a Vec<Value> {
    v.pointer(pointer)
        .and_then(Value::as_array)
        .unwrap_or_else(|| panic!("{what}: no list at {pointer}"))
}

fn find_named<'a>(list: &'a [Value], name: &str, what: &str) -> &'a Value {
    list.iter()
        .find(|v| v.get("name").and_then(Value::as_str) == Some(name))
        .unwrap_or_else(|| panic!("{what}: nothing named {name:?}"))
}

/// Every `assayer_*` identifier in a PromQL expression or template.
fn assayer_metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    let is_ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b':';
    let mut i = 0;
    while let Some(off) = text[i..].find("assayer_") {
        let start = i + off;
        let mut end = start;
        while end < bytes.len() && is_ident(bytes[end]) {
            end += 1;
        }
        if start == 0 || !is_ident(bytes[start - 1]) {
            out.insert(text[start..end].to_string());
        }
        i = end;
    }
    out
}

/// The metric names the daemon exports, as a query sees them: what the daemon's own
/// registry encodes (counters get `_total`, histograms `_bucket`/`_sum`/`_count`), plus
/// the gate and reconciliation metrics of issue #5, named here until they are registered.
fn known_metric_names() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    // A labelled family is encoded only once it has a child: create one of each.
    let metrics = Metrics::new();
    metrics
        .events
        .get_or_create(&OutcomeLabel {
            outcome: "accepted",
        })
        .inc();
    metrics
        .findings
        .get_or_create(&FindingLabels {
            invariant: "item.duplicated",
            severity: "critical",
        })
        .inc();
    metrics
        .stream_lag_seconds
        .get_or_create(&StreamLabels {
            realm: "eu-1".into(),
            system: "inventory".into(),
        })
        .set(1.0);
    let text = metrics.encode();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let mut parts = rest.split_whitespace();
        let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
            panic!("unexpected TYPE line in the daemon's metrics: {line}");
        };
        match kind {
            "counter" => {
                names.insert(format!("{name}_total"));
            }
            "histogram" => {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{suffix}"));
                }
            }
            _ => {
                names.insert(name.to_string());
            }
        }
    }
    assert!(
        names.contains("assayer_events_total")
            && names.contains("assayer_findings_total")
            && names.contains("assayer_stream_lag_seconds")
            && names.contains("assayer_journal_position"),
        "the daemon's registry did not encode the expected metrics:\n{text}"
    );
    for new in [
        "assayer_gate_score",
        "assayer_gate_decision",
        "assayer_open_blocking_findings",
        "assayer_recon_runs_total",
        "assayer_recon_last_run_timestamp_seconds",
        "assayer_recon_divergent_keys",
    ] {
        names.insert(new.to_string());
    }
    names
}

/// GitHub's anchor for a heading: lower case, punctuation dropped, spaces to dashes.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// Anchors of the `###` headings inside the runbook's top-level `## Alerts` section.
fn runbook_alert_anchors() -> BTreeSet<String> {
    let text = read(&root().join("docs/runbook.md"));
    let mut in_alerts = false;
    let mut seen_alerts = false;
    let mut anchors = BTreeSet::new();
    let mut in_code = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
            continue;
        }
        if in_code {
            continue;
        }
        if let Some(h) = line.strip_prefix("## ") {
            in_alerts = h.trim() == "Alerts";
            seen_alerts |= in_alerts;
        } else if let Some(h) = line.strip_prefix("### ")
            && in_alerts
        {
            anchors.insert(anchor(h));
        }
    }
    assert!(
        seen_alerts,
        "docs/runbook.md has no top-level `## Alerts` section"
    );
    anchors
}

struct Alert {
    name: String,
    rule: Value,
}

fn prometheus_rule() -> Value {
    yaml1("deploy/k8s/prometheusrule.yaml")
}

fn alerts() -> Vec<Alert> {
    let pr = prometheus_rule();
    let mut out = Vec::new();
    for group in arr_at(&pr, "/spec/groups", "PrometheusRule") {
        for rule in arr_at(group, "/rules", "PrometheusRule group") {
            if let Some(name) = rule.get("alert").and_then(Value::as_str) {
                out.push(Alert {
                    name: name.to_string(),
                    rule: rule.clone(),
                });
            }
        }
    }
    out
}

#[test]
fn every_yaml_and_json_file_under_deploy_parses() {
    let mut checked = 0;
    let mut errors = Vec::new();
    for path in files_under(&root().join("deploy")) {
        let text = read(&path);
        if has_ext(&path, &["yaml", "yml"]) {
            match parse_yaml(&text) {
                Ok(docs) if docs.is_empty() => errors.push(format!("{}: empty", rel(&path))),
                Ok(_) => {}
                Err(e) => errors.push(format!("{}: {e}", rel(&path))),
            }
            checked += 1;
        } else if has_ext(&path, &["json"]) {
            if let Err(e) = serde_json::from_str::<Value>(&text) {
                errors.push(format!("{}: {e}", rel(&path)));
            }
            checked += 1;
        }
    }
    assert!(
        errors.is_empty(),
        "unparsable files:\n{}",
        errors.join("\n")
    );
    // k8s (8 files + 2 examples), prometheus test, compose, 2 CI files, dashboard.
    assert!(
        checked >= 15,
        "only {checked} YAML/JSON files under deploy/: was the kit moved?"
    );
}

#[test]
fn multi_document_yaml_is_read_document_by_document() {
    let docs = parse_yaml("a: 1\n---\nb: [2, 3]\n---\n").expect("valid YAML");
    assert_eq!(docs.len(), 2);
    assert_eq!(docs[1]["b"][1], 3);
    let err = parse_yaml("a: 1\n---\nb: [2\n").expect_err("unclosed sequence");
    assert!(err.starts_with("document 2"), "{err}");
}

#[test]
fn kubernetes_objects_have_api_version_kind_and_name() {
    let k8s = root().join("deploy/k8s");
    let mut errors = Vec::new();
    let mut objects = 0;
    for path in files_under(&k8s) {
        if !has_ext(&path, &["yaml", "yml"]) {
            errors.push(format!("{}: not a YAML file", rel(&path)));
            continue;
        }
        let docs = parse_yaml(&read(&path)).unwrap_or_else(|e| panic!("{}: {e}", rel(&path)));
        for (i, doc) in docs.iter().enumerate() {
            let at = format!("{} (document {})", rel(&path), i + 1);
            for pointer in ["/apiVersion", "/kind", "/metadata/name"] {
                match doc.pointer(pointer).and_then(Value::as_str) {
                    Some(s) if !s.trim().is_empty() => {}
                    _ => errors.push(format!("{at}: missing {pointer}")),
                }
            }
            objects += 1;
        }
    }
    assert!(errors.is_empty(), "{}", errors.join("\n"));
    assert!(objects >= 10, "only {objects} objects under deploy/k8s");

    // The kustomization applies exactly the top-level manifests (examples/ are the game's).
    let kustomization = yaml1("deploy/k8s/kustomization.yaml");
    let listed: BTreeSet<String> = arr_at(&kustomization, "/resources", "kustomization")
        .iter()
        .map(|v| v.as_str().expect("resource is a path").to_string())
        .collect();
    let present: BTreeSet<String> = std::fs::read_dir(&k8s)
        .expect("deploy/k8s")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.is_file() && !p.ends_with("kustomization.yaml"))
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        listed, present,
        "deploy/k8s/kustomization.yaml resources differ from the manifests in deploy/k8s"
    );
}

/// Resolves a probe's `port` (number or container port name) to a number.
fn probe_port(container: &Value, probe: &str) -> u64 {
    let port = container
        .pointer(&format!("/{probe}/httpGet/port"))
        .unwrap_or_else(|| panic!("{probe} has no httpGet.port"));
    if let Some(n) = port.as_u64() {
        return n;
    }
    let name = port.as_str().expect("port is a number or a name");
    let ports = arr_at(container, "/ports", "container");
    find_named(ports, name, "container ports")["containerPort"]
        .as_u64()
        .expect("containerPort is a number")
}

fn secrets_env(name: &str) -> Option<String> {
    match name {
        "ASSAYER_DATABASE_URL" => Some("postgres://assayer:secret@db:5432/assayer".into()),
        "ASSAYER_AMQP_URL" => Some("amqp://assayer:secret@mq:5672/%2f".into()),
        _ => None,
    }
}

#[test]
fn deployment_probes_secrets_and_config_agree_with_the_daemon_config() {
    // The example config and the ConfigMap are valid daemon configs and listen on one port.
    let example = Config::parse(
        &read(&root().join("deploy/assayer.toml")),
        "deploy/assayer.toml",
        secrets_env,
    )
    .unwrap_or_else(|e| panic!("deploy/assayer.toml: {e}"));
    let http_port = u64::from(example.http.listen.port());

    let cm = yaml1("deploy/k8s/configmap.yaml");
    let cm_name = str_at(&cm, "/metadata/name", "ConfigMap");
    let cm_toml = str_at(&cm, "/data/assayer.toml", "ConfigMap");
    let cm_config = Config::parse(cm_toml, "ConfigMap assayer.toml", secrets_env)
        .unwrap_or_else(|e| panic!("deploy/k8s/configmap.yaml: {e}"));
    assert_eq!(u64::from(cm_config.http.listen.port()), http_port);
    assert!(
        cm_config.http.listen.ip().is_unspecified(),
        "the ConfigMap must listen on all addresses for the probes: {}",
        cm_config.http.listen
    );
    assert!(
        !cm_toml.contains(":secret@") && !cm_toml.contains("password"),
        "no secret in the ConfigMap"
    );

    let dep = yaml1("deploy/k8s/deployment.yaml");
    assert_eq!(str_at(&dep, "/kind", "Deployment"), "Deployment");
    let pod = dep.pointer("/spec/template/spec").expect("pod spec");
    let container = find_named(
        arr_at(pod, "/containers", "Deployment"),
        "assayer",
        "containers",
    );

    // Runs the daemon with the mounted config.
    let args: Vec<&str> = arr_at(container, "/args", "container")
        .iter()
        .map(|a| a.as_str().expect("arg"))
        .collect();
    assert_eq!(args, ["daemon", "--config", "/etc/assayer/assayer.toml"]);
    let mount = arr_at(container, "/volumeMounts", "container")
        .iter()
        .find(|m| m["mountPath"] == "/etc/assayer")
        .expect("/etc/assayer is mounted");
    let volume = find_named(
        arr_at(pod, "/volumes", "pod"),
        mount["name"].as_str().expect("mount name"),
        "volumes",
    );
    assert_eq!(str_at(volume, "/configMap/name", "config volume"), cm_name);

    // Probes on the daemon's HTTP port.
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        assert_eq!(
            str_at(container, &format!("/{probe}/httpGet/path"), probe),
            path
        );
        assert_eq!(
            probe_port(container, probe),
            http_port,
            "{probe} must probe the port of [http] listen"
        );
    }

    // Secrets from a Secret, never inline.
    let env = arr_at(container, "/env", "container");
    for var in ["ASSAYER_DATABASE_URL", "ASSAYER_AMQP_URL"] {
        let e = find_named(env, var, "container env");
        assert!(e.get("value").is_none(), "{var} must not be inline");
        str_at(e, "/valueFrom/secretKeyRef/name", var);
        str_at(e, "/valueFrom/secretKeyRef/key", var);
    }

    // Resources and a locked-down security context.
    for pointer in [
        "/resources/requests/cpu",
        "/resources/requests/memory",
        "/resources/limits/memory",
    ] {
        assert!(container.pointer(pointer).is_some(), "missing {pointer}");
    }
    let non_root = pod.pointer("/securityContext/runAsNonRoot") == Some(&Value::Bool(true))
        || container.pointer("/securityContext/runAsNonRoot") == Some(&Value::Bool(true));
    assert!(non_root, "runAsNonRoot must be true");
    let csc = container
        .get("securityContext")
        .expect("container securityContext");
    assert_eq!(csc["readOnlyRootFilesystem"], true);
    assert_eq!(csc["allowPrivilegeEscalation"], false);
    assert_eq!(
        csc.pointer("/capabilities/drop/0"),
        Some(&Value::from("ALL"))
    );

    // Service → pod port → ServiceMonitor endpoint.
    let svc = yaml1("deploy/k8s/service.yaml");
    let svc_port = &arr_at(&svc, "/spec/ports", "Service")[0];
    assert_eq!(svc_port["port"].as_u64(), Some(http_port));
    let pod_labels = dep.pointer("/spec/template/metadata/labels").unwrap();
    for (k, v) in svc["spec"]["selector"]
        .as_object()
        .expect("Service selector")
    {
        assert_eq!(
            pod_labels.get(k),
            Some(v),
            "Service selector {k} does not match the pods"
        );
    }
    let sm = yaml1("deploy/k8s/servicemonitor.yaml");
    assert_eq!(
        str_at(&sm, "/apiVersion", "ServiceMonitor"),
        "monitoring.coreos.com/v1"
    );
    let endpoint = &arr_at(&sm, "/spec/endpoints", "ServiceMonitor")[0];
    assert_eq!(endpoint["path"], "/metrics");
    assert_eq!(endpoint["port"], svc_port["name"]);
    for (k, v) in sm["spec"]["selector"]["matchLabels"]
        .as_object()
        .expect("ServiceMonitor selector")
    {
        assert_eq!(svc["metadata"]["labels"].get(k), Some(v));
    }
}

#[test]
fn systemd_unit_runs_the_daemon_hardened() {
    let unit = read(&root().join("deploy/systemd/assayer.service"));
    let keys: Vec<(&str, &str)> = unit
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .collect();
    let get = |k: &str| keys.iter().find(|(key, _)| *key == k).map(|(_, v)| *v);
    assert_eq!(
        get("ExecStart"),
        Some("/usr/local/bin/assayer daemon --config /etc/assayer/assayer.toml")
    );
    for (k, v) in [
        ("User", "assayer"),
        ("NoNewPrivileges", "true"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "true"),
        ("PrivateTmp", "true"),
        ("CapabilityBoundingSet", ""),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
        ("SystemCallFilter", "@system-service"),
        ("Restart", "always"),
    ] {
        assert_eq!(get(k), Some(v), "deploy/systemd/assayer.service: {k}");
    }
    // The container image and compose run the same command on configs that parse.
    let containerfile = read(&root().join("deploy/container/Containerfile"));
    assert!(containerfile.contains(r#"CMD ["daemon", "--config", "/etc/assayer/assayer.toml"]"#));
    Config::parse(
        &read(&root().join("deploy/compose-assayer.toml")),
        "deploy/compose-assayer.toml",
        secrets_env,
    )
    .unwrap_or_else(|e| panic!("deploy/compose-assayer.toml: {e}"));
}

#[test]
fn every_alert_has_severity_summary_and_a_runbook_section() {
    let anchors = runbook_alert_anchors();
    let alerts = alerts();
    let mut errors = Vec::new();
    let mut linked = BTreeSet::new();
    for a in &alerts {
        let severity = a.rule.pointer("/labels/severity").and_then(Value::as_str);
        if !matches!(severity, Some("critical" | "warning" | "info")) {
            errors.push(format!(
                "{}: labels.severity must be critical, warning or info, not {severity:?}",
                a.name
            ));
        }
        for key in ["summary", "description"] {
            if a.rule
                .pointer(&format!("/annotations/{key}"))
                .and_then(Value::as_str)
                .is_none_or(|s| s.trim().is_empty())
            {
                errors.push(format!("{}: no annotations.{key}", a.name));
            }
        }
        match a
            .rule
            .pointer("/annotations/runbook_url")
            .and_then(Value::as_str)
        {
            None => errors.push(format!("{}: no annotations.runbook_url", a.name)),
            Some(url) => match url.split_once("docs/runbook.md#") {
                Some((_, frag)) if anchors.contains(frag) => {
                    linked.insert(frag.to_string());
                }
                Some((_, frag)) => errors.push(format!(
                    "{}: runbook_url anchor #{frag} is not a `###` heading under `## Alerts` in docs/runbook.md",
                    a.name
                )),
                None => errors.push(format!(
                    "{}: runbook_url {url} does not point into docs/runbook.md",
                    a.name
                )),
            },
        }
    }
    for orphan in anchors.difference(&linked) {
        errors.push(format!(
            "docs/runbook.md: alert section #{orphan} belongs to no alert"
        ));
    }
    assert!(errors.is_empty(), "{}", errors.join("\n"));

    let names: BTreeSet<&str> = alerts.iter().map(|a| a.name.as_str()).collect();
    for required in [
        "AssayerBlockingFindingOpen",
        "AssayerConsumerLag",
        "AssayerAuditStalled",
        "AssayerReconciliationStale",
        "AssayerReconciliationFailing",
        "AssayerGateNoGo",
        "AssayerDown",
    ] {
        assert!(names.contains(required), "no alert {required}");
    }

    // `up{job="..."}` names the job the ServiceMonitor produces: the Service's name.
    let svc = yaml1("deploy/k8s/service.yaml");
    let job = format!("job=\"{}\"", str_at(&svc, "/metadata/name", "Service"));
    let down = alerts.iter().find(|a| a.name == "AssayerDown").unwrap();
    assert!(
        down.rule["expr"].as_str().unwrap().contains(&job),
        "AssayerDown must select {job}"
    );
}

#[test]
fn alerts_and_dashboard_use_only_exported_metrics() {
    let known = known_metric_names();
    let mut errors = Vec::new();
    let mut check = |place: String, text: &str| {
        for name in assayer_metric_names(text) {
            if !known.contains(&name) {
                errors.push(format!("{place}: unknown metric {name}"));
            }
        }
    };
    for a in alerts() {
        check(format!("alert {}", a.name), &a.rule.to_string());
    }

    let dash: Value =
        serde_json::from_str(&read(&root().join("deploy/grafana/assayer-dashboard.json")))
            .expect("dashboard JSON");
    let mut used = BTreeSet::new();
    let panels = arr_at(&dash, "/panels", "dashboard");
    assert!(!panels.is_empty(), "dashboard has no panels");
    for panel in panels {
        let title = str_at(panel, "/title", "panel");
        let targets = arr_at(panel, "/targets", title);
        assert!(!targets.is_empty(), "panel {title} has no query");
        for t in targets {
            let expr = str_at(t, "/expr", title);
            check(format!("dashboard panel {title:?}"), expr);
            used.extend(assayer_metric_names(expr));
        }
    }
    assert!(errors.is_empty(), "{}", errors.join("\n"));

    // Panels: unique ids, inside the 24-column grid, not overlapping, on the data source
    // the dashboard asks for on import.
    let variables: BTreeSet<&str> = arr_at(&dash, "/templating/list", "dashboard")
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert!(variables.contains("datasource") && variables.contains("job"));
    let mut ids = BTreeSet::new();
    let mut cells = BTreeMap::new();
    for panel in panels {
        let title = str_at(panel, "/title", "panel");
        assert!(
            ids.insert(panel["id"].as_u64().expect("panel id")),
            "duplicate panel id ({title})"
        );
        assert_eq!(
            str_at(panel, "/datasource/uid", title),
            "${datasource}",
            "panel {title}"
        );
        let g = |k: &str| panel["gridPos"][k].as_u64().expect("gridPos");
        let (x, y, w, h) = (g("x"), g("y"), g("w"), g("h"));
        assert!(
            w > 0 && h > 0 && x + w <= 24,
            "panel {title} is outside the grid"
        );
        for cx in x..x + w {
            for cy in y..y + h {
                if let Some(other) = cells.insert((cx, cy), title) {
                    panic!("panels {other:?} and {title:?} overlap");
                }
            }
        }
    }

    // What the dashboard must show.
    for metric in [
        "assayer_events_total",
        "assayer_findings_total",
        "assayer_open_blocking_findings",
        "assayer_gate_score",
        "assayer_gate_decision",
        "assayer_stream_lag_seconds",
        "assayer_checkpoint_duration_seconds_bucket",
        "assayer_reorder_buffer_events",
        "assayer_detection_latency_seconds_bucket",
        "assayer_recon_runs_total",
        "assayer_recon_last_run_timestamp_seconds",
    ] {
        assert!(used.contains(metric), "the dashboard shows no {metric}");
    }
}

#[test]
fn metric_names_are_extracted_from_promql() {
    let names = assayer_metric_names(
        r#"histogram_quantile(0.99, sum by (le) (rate(assayer_x_bucket{job="a"}[5m]))) / my_assayer_y + assayer_z"#,
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        ["assayer_x_bucket", "assayer_z"]
    );
}

fn promtool() -> &'static str {
    match Command::new("promtool").arg("--version").output() {
        Ok(o) if o.status.success() => "promtool",
        Ok(o) => panic!(
            "`promtool --version` failed ({}): {}",
            o.status,
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => panic!(
            "promtool not found ({e}). It checks the alert rules; install Debian's \
             `prometheus` package: `apt-get install -y --no-install-recommends prometheus` \
             (.ci/run does this when promtool is missing)"
        ),
    }
}

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn alert_rules_pass_promtool_check_and_unit_tests() {
    let promtool = promtool();
    let dir = tempfile::tempdir().expect("temp dir");
    let spec = prometheus_rule()["spec"].clone();
    let rules = dir.path().join("assayer.rules.yml");
    std::fs::write(
        &rules,
        serde_norway::to_string(&spec).expect("rules to YAML"),
    )
    .expect("write rules");

    let count: usize = arr_at(&spec, "/groups", "spec")
        .iter()
        .map(|g| arr_at(g, "/rules", "group").len())
        .sum();
    let (ok, out) = run(Command::new(promtool).arg("check").arg("rules").arg(&rules));
    assert!(ok, "promtool check rules failed:\n{out}");
    assert!(
        out.contains(&format!("SUCCESS: {count} rules found")),
        "promtool did not check all {count} rules:\n{out}"
    );

    // Unit tests: the file names the rules as `assayer.rules.yml` next to it.
    let tests_path = "deploy/prometheus/alerts.test.yml";
    let tests = yaml1(tests_path);
    assert_eq!(
        tests["rule_files"],
        serde_json::json!(["assayer.rules.yml"]),
        "{tests_path}: rule_files"
    );
    let firing: BTreeSet<&str> = arr_at(&tests, "/tests", tests_path)
        .iter()
        .flat_map(|t| t["alert_rule_test"].as_array().into_iter().flatten())
        .filter(|c| c["exp_alerts"].as_array().is_some_and(|a| !a.is_empty()))
        .filter_map(|c| c["alertname"].as_str())
        .collect();
    assert!(
        firing.len() >= 2,
        "{tests_path} must show at least two alerts firing, shows {firing:?}"
    );
    std::fs::copy(root().join(tests_path), dir.path().join("alerts.test.yml"))
        .expect("copy unit tests");
    let (ok, out) = run(Command::new(promtool).current_dir(dir.path()).args([
        "test",
        "rules",
        "alerts.test.yml",
    ]));
    assert!(ok, "promtool test rules failed:\n{out}");
    assert!(out.contains("SUCCESS"), "{out}");
}

#[test]
fn gate_integrations_ask_the_gate_endpoints() {
    let svc = yaml1("deploy/k8s/service.yaml");
    let base = format!(
        "http://{}.{}.svc:{}",
        str_at(&svc, "/metadata/name", "Service"),
        str_at(&svc, "/metadata/namespace", "Service"),
        svc["spec"]["ports"][0]["port"]
    );

    let at = yaml1("deploy/k8s/examples/argo-analysistemplate.yaml");
    assert_eq!(at["kind"], "AnalysisTemplate");
    let metric = &arr_at(&at, "/spec/metrics", "AnalysisTemplate")[0];
    assert_eq!(metric["successCondition"], r#"result.decision == "GO""#);
    assert_eq!(metric["failureCondition"], r#"result.decision == "NO-GO""#);
    let web = metric.pointer("/provider/web").expect("web provider");
    assert!(
        web.get("jsonPath").is_none(),
        "without jsonPath the whole body is `result`"
    );
    assert_eq!(web["url"], "{{args.assayer-url}}/v1/gate");
    let arg = find_named(
        arr_at(&at, "/spec/args", "AnalysisTemplate"),
        "assayer-url",
        "args",
    );
    assert_eq!(arg["value"].as_str(), Some(base.as_str()));

    let canary = yaml1("deploy/k8s/examples/flagger-canary.yaml");
    assert_eq!(canary["kind"], "Canary");
    let hooks = arr_at(&canary, "/spec/analysis/webhooks", "Canary");
    let types: BTreeSet<&str> = hooks.iter().filter_map(|h| h["type"].as_str()).collect();
    assert_eq!(types, BTreeSet::from(["pre-rollout", "rollout"]));
    for h in hooks {
        assert_eq!(
            h["url"].as_str(),
            Some(format!("{base}/v1/gate/flagger").as_str())
        );
    }
}

#[test]
fn ci_examples_gate_around_the_deploy_step() {
    for (path, summary) in [
        ("deploy/ci/github-actions.yml", "$GITHUB_STEP_SUMMARY"),
        ("deploy/ci/gitlab-ci.yml", "--format markdown"),
    ] {
        let text = read(&root().join(path));
        yaml1(path);
        for needle in [
            "assayer gate --config \"$ASSAYER_CONFIG\" --format junit",
            "--format markdown",
            summary,
            "assayer deploy begin --config \"$ASSAYER_CONFIG\" --version \"$VERSION\"",
            "assayer deploy verify --config \"$ASSAYER_CONFIG\"",
        ] {
            assert!(text.contains(needle), "{path}: no `{needle}`");
        }
        // Each exit code of the gate has its branch: 0 GO, 2 NO-GO, 3 MARGINAL, else failed.
        for branch in ["0)", "2)", "3)", "*)"] {
            assert!(
                text.matches(branch).count() >= 2,
                "{path}: exit code branch `{branch}` missing"
            );
        }
    }

    // Order: gate + deploy begin, then the deploy, then verify.
    let gh = yaml1("deploy/ci/github-actions.yml");
    assert_eq!(
        gh.pointer("/jobs/deploy/needs"),
        Some(&Value::from("pre-deploy"))
    );
    assert_eq!(
        gh.pointer("/jobs/verify/needs"),
        Some(&Value::from("deploy"))
    );
    let gl = yaml1("deploy/ci/gitlab-ci.yml");
    assert_eq!(
        gl["stages"],
        serde_json::json!(["pre-deploy", "deploy", "verify"])
    );
    let stage_of = |job: &str| gl[job]["stage"].as_str().map(str::to_string);
    assert_eq!(stage_of("assayer-gate").as_deref(), Some("pre-deploy"));
    assert_eq!(stage_of("assayer-verify").as_deref(), Some("verify"));
}

#[test]
fn compose_starts_the_services_the_daemon_uses() {
    let compose = yaml1("deploy/compose.yaml");
    let services = compose["services"].as_object().expect("services");
    let image = |s: &str| {
        services
            .get(s)
            .and_then(|v| v["image"].as_str())
            .unwrap_or_else(|| panic!("deploy/compose.yaml: no service {s} with an image"))
            .to_string()
    };
    assert!(image("postgres").contains("postgres"));
    assert!(image("redis").contains("redis"));
    assert!(
        image("rabbitmq").contains("management"),
        "RabbitMQ needs the management plugin"
    );
    // Published where the tests and deploy/local.toml expect them.
    let ports: BTreeMap<&str, Vec<&str>> = services
        .iter()
        .map(|(k, v)| {
            let p = v["ports"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            (k.as_str(), p)
        })
        .collect();
    assert!(ports["postgres"].contains(&"127.0.0.1:5432:5432"));
    assert!(ports["redis"].contains(&"127.0.0.1:6379:6379"));
    assert!(ports["rabbitmq"].contains(&"127.0.0.1:5672:5672"));

    // The optional daemon builds from the Containerfile and mounts files that exist.
    let daemon = &services["assayer"];
    let compose_dir = root().join("deploy");
    let context = compose_dir.join(str_at(daemon, "/build/context", "assayer"));
    assert!(
        context
            .join(str_at(daemon, "/build/dockerfile", "assayer"))
            .is_file()
    );
    for s in services.values() {
        for v in s["volumes"].as_array().into_iter().flatten() {
            let v = v.as_str().expect("volume");
            if let Some(local) = v.strip_prefix("./") {
                let file = local.split(':').next().unwrap();
                assert!(
                    compose_dir.join(file).is_file(),
                    "deploy/compose.yaml mounts missing {file}"
                );
            }
        }
    }
}
