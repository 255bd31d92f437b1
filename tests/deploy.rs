//! The deployment files: every Kubernetes manifest is YAML that names its
//! apiVersion, kind and metadata.name; the Grafana dashboard is JSON that
//! charts only metrics rolemint exports, and all of them; the image has a
//! HEALTHCHECK.
//!
//! No YAML parser is among the dependencies. Each document is checked
//! structurally here, and fully parsed by PyYAML when `python3` has it
//! (always when `ROLEMINT_TEST_PYTHON` names an interpreter: then a missing
//! PyYAML fails the test instead of skipping the full parse).

use std::path::{Path, PathBuf};
use std::process::Command;

fn manifests() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 6,
        "manifests in {}: {files:?}",
        dir.display()
    );
    files
}

/// The documents of a YAML stream that hold more than comments.
fn documents(text: &str) -> Vec<String> {
    let mut docs = vec![String::new()];
    for line in text.lines() {
        if line.trim_end() == "---" {
            docs.push(String::new());
        } else if let Some(doc) = docs.last_mut() {
            doc.push_str(line);
            doc.push('\n');
        }
    }
    docs.into_iter()
        .filter(|d| {
            d.lines()
                .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        })
        .collect()
}

/// The value of a top-level `key: value` line.
fn top_level<'a>(doc: &'a str, key: &str) -> Option<&'a str> {
    doc.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .map(str::trim)
}

/// `metadata.name`: the first `name:` indented under `metadata:`.
fn metadata_name(doc: &str) -> Option<String> {
    let mut lines = doc.lines().skip_while(|l| *l != "metadata:").skip(1);
    lines
        .by_ref()
        .take_while(|l| l.starts_with(' ') || l.trim().is_empty())
        .find_map(|l| l.strip_prefix("  name:"))
        .map(|v| v.trim().trim_matches('"').to_owned())
}

#[test]
fn every_manifest_names_its_api_version_kind_and_name() {
    let mut kinds = Vec::new();
    for file in manifests() {
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(
            !text.contains('\t'),
            "{}: tabs are not YAML indentation",
            file.display()
        );
        for doc in documents(&text) {
            let at = file.display();
            let api =
                top_level(&doc, "apiVersion").unwrap_or_else(|| panic!("{at}: no apiVersion"));
            let kind = top_level(&doc, "kind").unwrap_or_else(|| panic!("{at}: no kind"));
            let name = metadata_name(&doc).unwrap_or_else(|| panic!("{at}: no metadata.name"));
            assert!(
                !api.is_empty() && !kind.is_empty() && !name.is_empty(),
                "{at}"
            );
            kinds.push(kind.to_owned());
        }
    }
    for wanted in [
        "Deployment",
        "Service",
        "ConfigMap",
        "Secret",
        "ServiceMonitor",
        "PodDisruptionBudget",
        "ServiceAccount",
    ] {
        assert!(
            kinds.iter().any(|k| k == wanted),
            "no {wanted} in {kinds:?}"
        );
    }
}

#[test]
fn every_manifest_parses_as_yaml() {
    let required = std::env::var("ROLEMINT_TEST_PYTHON").ok();
    let python = required.clone().unwrap_or_else(|| "python3".into());
    let has_yaml = Command::new(&python)
        .args(["-c", "import yaml"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_yaml {
        assert!(
            required.is_none(),
            "{python} cannot import yaml (ROLEMINT_TEST_PYTHON is set)"
        );
        eprintln!("no PyYAML: manifests checked structurally only");
        return;
    }
    const CHECK: &str = r#"
import sys, yaml
for path in sys.argv[1:]:
    with open(path) as f:
        for doc in yaml.safe_load_all(f):
            if doc is None:
                continue
            assert isinstance(doc, dict), path
            for key in ("apiVersion", "kind"):
                assert isinstance(doc.get(key), str) and doc[key], (path, key)
            assert doc["metadata"]["name"], path
            if doc["kind"] == "Deployment":
                spec = doc["spec"]["template"]["spec"]
                c = spec["containers"][0]
                assert c["readinessProbe"]["httpGet"]["path"] == "/readyz", path
                assert c["livenessProbe"]["httpGet"]["path"] == "/healthz", path
                assert c["lifecycle"]["preStop"], path
                assert doc["spec"]["replicas"] == 3, path
                items = [i["key"] for v in spec["volumes"] if "secret" in v
                         for i in v["secret"].get("items", [])]
                assert "cluster-secret" in items, path
            if doc["kind"] == "ConfigMap":
                assert "[admin]" in doc["data"]["rolemint.toml"], path
                assert "[cluster]" in doc["data"]["rolemint.toml"], path
print("ok")
"#;
    let out = Command::new(&python)
        .arg("-c")
        .arg(CHECK)
        .args(manifests())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every `rolemint_...` name in a PromQL expression.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("rolemint_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
            .unwrap_or(tail.len());
        names.push(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

fn exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr", serde_json::Value::String(e)) => out.push(e.clone()),
                    _ => exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| exprs(v, out)),
        _ => {}
    }
}

#[test]
fn the_dashboard_charts_exactly_the_exported_metrics() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/grafana/rolemint.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut all = Vec::new();
    exprs(&dashboard, &mut all);
    let used: Vec<String> = all.iter().flat_map(|e| metric_names(e)).collect();
    for name in &used {
        assert!(
            rolemint::observe::metrics::is_described(name),
            "the dashboard uses {name}, which rolemint does not export"
        );
    }
    for m in rolemint::observe::metrics::ALL {
        assert!(
            used.iter()
                .any(|u| u == m.name || u.strip_suffix("_bucket") == Some(m.name)),
            "the dashboard has no panel for {}",
            m.name
        );
    }
}

#[test]
fn the_image_checks_its_own_health() {
    let dockerfile =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Dockerfile")).unwrap();
    let check = dockerfile
        .lines()
        .skip_while(|l| !l.starts_with("HEALTHCHECK"))
        .take_while(|l| !l.trim().is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    assert!(check.contains("CMD [\"rolemint\", \"health\""), "{check}");
    let compose =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/docker.toml"))
            .unwrap();
    assert!(
        compose.contains("[admin]"),
        "the image's HEALTHCHECK needs [admin] listen in config/docker.toml"
    );
}
