//! The monitoring artefacts in `deploy/monitoring/` against the metrics the
//! binary really exports: every `firstseen_*` name in the Grafana dashboard,
//! the alerting rules and their unit tests must exist (a renamed metric would
//! otherwise leave an alert that can never fire), and the rules pass
//! `promtool check rules` / `promtool test rules` when promtool is installed
//! (required under CI, where `.ci/run` installs the Debian package).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use firstseen::health::Health;
use firstseen::metrics::{MetricLabels, Metrics};
use prometheus::proto::MetricType;

fn monitoring(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy/monitoring")
        .join(file)
}

/// Every series name a scrape can contain (histograms expand to their
/// `_bucket`, `_sum` and `_count` series).
fn exported_names() -> BTreeSet<String> {
    let m = Metrics::new(&MetricLabels {
        partitions: vec!["0".into()],
        rules: vec!["r".into()],
        sinks: vec!["s".into()],
    })
    .unwrap();
    let h = Health::new();
    h.register("rocksdb", "opening");
    m.record_health(&h.report());
    let mut names = BTreeSet::new();
    for f in m.registry().gather() {
        let name = f.name().to_string();
        if f.get_field_type() == MetricType::HISTOGRAM {
            for suffix in ["_bucket", "_sum", "_count"] {
                names.insert(format!("{name}{suffix}"));
            }
        }
        names.insert(name);
    }
    names
}

/// `firstseen_…` identifiers in `text`.
fn referenced_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(pos) = text[i..].find("firstseen_") {
        let start = i + pos;
        // Skip matches inside a longer identifier (e.g. `my_firstseen_x`).
        let preceded =
            start > 0 && (bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        if !preceded {
            out.insert(text[start..end].to_string());
        }
        i = end;
    }
    out
}

fn dashboard_exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr", serde_json::Value::String(s)) => out.push(s.clone()),
                    _ => dashboard_exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| dashboard_exprs(v, out)),
        _ => {}
    }
}

#[test]
fn dashboard_uses_only_exported_metrics() {
    let text = std::fs::read_to_string(monitoring("grafana-dashboard.json")).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&text).expect("dashboard is valid JSON");
    let mut exprs = Vec::new();
    dashboard_exprs(&dash["panels"], &mut exprs);
    assert!(exprs.len() >= 20, "only {} expressions", exprs.len());
    let exported = exported_names();
    let mut used = BTreeSet::new();
    for e in &exprs {
        let names = referenced_names(e);
        assert!(
            !names.is_empty(),
            "expression uses no firstseen metric: {e}"
        );
        for n in names {
            assert!(
                exported.contains(&n),
                "dashboard uses unknown metric {n} in {e}"
            );
            used.insert(n);
        }
    }
    // The dashboard is the operator's overview: each family appears on it.
    for f in &exported {
        let base = f
            .trim_end_matches("_bucket")
            .trim_end_matches("_sum")
            .trim_end_matches("_count");
        let shown = used.iter().any(|u| u.starts_with(base));
        assert!(shown, "metric family {base} is on no dashboard panel");
    }
}

#[test]
fn alert_rules_use_only_exported_metrics() {
    let exported = exported_names();
    for file in [
        "firstseen-alerts.yaml",
        "firstseen-alerts.test.yaml",
        "firstseen-asn-stale.test.yaml",
    ] {
        let text = std::fs::read_to_string(monitoring(file)).unwrap();
        let names = referenced_names(&text);
        assert!(!names.is_empty(), "{file} references no metric");
        for n in names {
            assert!(exported.contains(&n), "{file} uses unknown metric {n}");
        }
    }
}

#[test]
fn referenced_names_finds_identifiers() {
    let got =
        referenced_names("rate(firstseen_a_total[5m]) / my_firstseen_b + firstseen_c{x=\"1\"}");
    assert_eq!(
        got.into_iter().collect::<Vec<_>>(),
        ["firstseen_a_total", "firstseen_c"]
    );
}

/// Runs promtool with `args` in deploy/monitoring; skips locally when it is
/// not installed, fails under CI.
fn promtool(args: &[&str]) {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(monitoring(""))
        .output();
    let out = match out {
        Ok(o) => o,
        Err(e) if std::env::var_os("CI").is_none() => {
            eprintln!("SKIP promtool {args:?}: {e}; install the Debian package `prometheus`");
            return;
        }
        Err(e) => panic!("promtool is required under CI: {e}"),
    };
    assert!(
        out.status.success(),
        "promtool {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn promtool_check_and_test_rules() {
    promtool(&["check", "rules", "firstseen-alerts.yaml"]);
    promtool(&[
        "test",
        "rules",
        "firstseen-alerts.test.yaml",
        "firstseen-asn-stale.test.yaml",
    ]);
}

// ---------------------------------------------------------------------------
// deploy/kubernetes: the firstseen.toml embedded in configmap.yaml must load
// with firstseen's own config loader (unknown keys are errors, so a config
// written against a schema that does not exist fails here instead of
// crash-looping the pod), its rules must load, and the StatefulSet, Services
// and ServiceMonitor must agree with it (paths, mounts, env vars, port,
// probes).

use firstseen::config::{Config, LogFormat};
use firstseen::sink::config::{SecretSource, SinkConfig};
use firstseen::source::eventhubs::AuthConfig;

/// A YAML value, as far as the manifests in deploy/kubernetes need: block
/// mappings and sequences, flow sequences of scalars, `{}`, literal block
/// scalars (`|`, `|-`, `|+`), quoted and plain scalars, comments. Every
/// scalar stays a string (like PyYAML's `BaseLoader`). Anything else (anchors,
/// tags, folded scalars, multi-line flow or quoted scalars) is rejected with
/// a panic, so an unsupported construct fails the test rather than being
/// misread.
#[derive(Debug, Clone, PartialEq)]
enum Yaml {
    Str(String),
    Seq(Vec<Yaml>),
    Map(Vec<(String, Yaml)>),
}

impl Yaml {
    fn get(&self, key: &str) -> Option<&Yaml> {
        match self {
            Yaml::Map(entries) => entries.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The value at a dotted path of mapping keys; panics naming the path.
    fn at(&self, path: &str) -> &Yaml {
        path.split('.').fold(self, |v, key| {
            v.get(key)
                .unwrap_or_else(|| panic!("no `{path}` (missing `{key}`)"))
        })
    }

    fn str(&self) -> &str {
        match self {
            Yaml::Str(s) => s,
            other => panic!("expected a scalar, found {other:?}"),
        }
    }

    fn seq(&self) -> &[Yaml] {
        match self {
            Yaml::Seq(items) => items,
            other => panic!("expected a sequence, found {other:?}"),
        }
    }

    fn map(&self) -> &[(String, Yaml)] {
        match self {
            Yaml::Map(entries) => entries,
            other => panic!("expected a mapping, found {other:?}"),
        }
    }

    /// The item of a sequence of mappings whose `name` is `name`.
    fn named(&self, name: &str) -> &Yaml {
        self.seq()
            .iter()
            .find(|item| item.get("name").map(Yaml::str) == Some(name))
            .unwrap_or_else(|| panic!("no item named {name:?} in {self:?}"))
    }

    fn to_json(&self) -> serde_json::Value {
        match self {
            Yaml::Str(s) => serde_json::Value::String(s.clone()),
            Yaml::Seq(items) => items.iter().map(Yaml::to_json).collect(),
            Yaml::Map(entries) => serde_json::Value::Object(
                entries
                    .iter()
                    .map(|(k, v)| (k.clone(), v.to_json()))
                    .collect(),
            ),
        }
    }
}

struct YamlParser {
    file: String,
    lines: Vec<String>,
    pos: usize,
}

fn indent_of(line: &str) -> usize {
    line.len() - line.trim_start_matches(' ').len()
}

fn is_insignificant(line: &str) -> bool {
    let t = line.trim_start_matches(' ');
    t.is_empty() || t.starts_with('#')
}

fn is_seq_item(content: &str) -> bool {
    content == "-" || content.starts_with("- ")
}

/// `key: rest` / `key:` with a plain key; `None` for anything else.
fn split_key(content: &str) -> Option<(&str, &str)> {
    if content.starts_with(['"', '\'', '[', '{', '|', '>', '&', '*', '!', '#']) {
        return None;
    }
    let end = content
        .find(": ")
        .or_else(|| content.strip_suffix(':').map(str::len))?;
    let key = content[..end].trim_end();
    (!key.is_empty() && !key.contains(" #")).then(|| (key, &content[end + 1..]))
}

/// A single-line scalar: double-quoted, single-quoted or plain (a trailing
/// ` # comment` removed).
fn parse_scalar(raw: &str, file: &str, line_no: usize) -> String {
    let raw = raw.trim();
    let fail = |why: &str| -> ! { panic!("{file}:{line_no}: {why}: {raw}") };
    let rest_is_comment = |rest: &str| {
        let rest = rest.trim();
        rest.is_empty() || rest.starts_with('#')
    };
    if let Some(body) = raw.strip_prefix('"') {
        let mut out = String::new();
        let mut chars = body.char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '"' => {
                    if !rest_is_comment(&body[i + 1..]) {
                        fail("text after a quoted scalar");
                    }
                    return out;
                }
                '\\' => match chars.next().map(|(_, e)| e) {
                    Some('n') => out.push('\n'),
                    Some('t') => out.push('\t'),
                    Some(e @ ('"' | '\\' | '/' | ' ')) => out.push(e),
                    _ => fail("unsupported escape"),
                },
                c => out.push(c),
            }
        }
        fail("unterminated (or multi-line) double-quoted scalar");
    }
    if let Some(body) = raw.strip_prefix('\'') {
        let mut out = String::new();
        let mut chars = body.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            if c != '\'' {
                out.push(c);
            } else if chars.peek().map(|&(_, n)| n) == Some('\'') {
                chars.next();
                out.push('\'');
            } else {
                if !rest_is_comment(&body[i + 1..]) {
                    fail("text after a quoted scalar");
                }
                return out;
            }
        }
        fail("unterminated (or multi-line) single-quoted scalar");
    }
    if raw.starts_with(['&', '*', '!', '>', '%', '@', '`']) {
        fail("unsupported YAML construct");
    }
    let plain = match raw.find(" #") {
        Some(i) => &raw[..i],
        None => raw,
    };
    plain.trim_end().to_string()
}

impl YamlParser {
    fn fail(&self, why: &str) -> ! {
        let line = self.lines.get(self.pos).map_or("<end>", String::as_str);
        panic!("{}:{}: {why}: {line:?}", self.file, self.pos + 1)
    }

    fn skip_insignificant(&mut self) {
        while self.pos < self.lines.len() && is_insignificant(&self.lines[self.pos]) {
            self.pos += 1;
        }
    }

    /// The indentation of the next significant line, if any.
    fn peek_indent(&mut self) -> Option<usize> {
        self.skip_insignificant();
        self.lines.get(self.pos).map(|l| indent_of(l))
    }

    fn parse_node(&mut self, min_indent: usize) -> Yaml {
        let n = self
            .peek_indent()
            .unwrap_or_else(|| self.fail("expected a value"));
        if n < min_indent {
            self.fail("expected a more indented value");
        }
        if is_seq_item(&self.lines[self.pos][n..]) {
            self.parse_seq(n)
        } else {
            self.parse_map(n)
        }
    }

    fn parse_map(&mut self, n: usize) -> Yaml {
        let mut entries: Vec<(String, Yaml)> = Vec::new();
        while let Some(ind) = self.peek_indent() {
            if ind < n {
                break;
            }
            if ind > n {
                self.fail("unexpected indentation");
            }
            let content = self.lines[self.pos][n..].to_string();
            let Some((key, rest)) = split_key(&content) else {
                self.fail("expected `key: value`");
            };
            if entries.iter().any(|(k, _)| k == key) {
                self.fail("duplicate key");
            }
            let (key, rest) = (key.to_string(), rest.to_string());
            self.pos += 1;
            let value = self.parse_value(&rest, n, true);
            entries.push((key, value));
        }
        Yaml::Map(entries)
    }

    fn parse_seq(&mut self, n: usize) -> Yaml {
        let mut items = Vec::new();
        while let Some(ind) = self.peek_indent() {
            if ind < n || !is_seq_item(&self.lines[self.pos][ind..]) {
                break;
            }
            if ind > n {
                self.fail("unexpected indentation");
            }
            let after = self.lines[self.pos][n + 1..].to_string();
            let trimmed = after.trim_start_matches(' ');
            let item_indent = n + 1 + (after.len() - trimmed.len());
            if trimmed.is_empty() || trimmed.starts_with('#') {
                self.pos += 1;
                items.push(self.parse_value("", n, false));
            } else if is_seq_item(trimmed) || split_key(trimmed).is_some() {
                // `- key: v` / `- - x`: the item is a node indented to
                // where its content starts.
                self.lines[self.pos] = format!("{}{trimmed}", " ".repeat(item_indent));
                items.push(self.parse_node(item_indent));
            } else {
                let trimmed = trimmed.to_string();
                self.pos += 1;
                items.push(self.parse_value(&trimmed, n, false));
            }
        }
        Yaml::Seq(items)
    }

    /// The value after `key:` (or `-`) on a line indented by `n`; the line
    /// is already consumed.
    fn parse_value(&mut self, rest: &str, n: usize, same_indent_seq: bool) -> Yaml {
        let rest = rest.trim();
        let line_no = self.pos; // 1-based number of the consumed line
        if rest.is_empty() || rest.starts_with('#') {
            return match self.peek_indent() {
                Some(ind) if ind > n => self.parse_node(n + 1),
                Some(ind)
                    if same_indent_seq && ind == n && is_seq_item(&self.lines[self.pos][ind..]) =>
                {
                    self.parse_seq(n)
                }
                _ => Yaml::Str(String::new()),
            };
        }
        if let Some(header) = rest.strip_prefix('|') {
            let header = header.split(" #").next().unwrap_or("").trim();
            let chomp = match header {
                "" => "clip",
                "-" => "strip",
                "+" => "keep",
                _ => panic!(
                    "{}:{line_no}: unsupported block header |{header}",
                    self.file
                ),
            };
            return Yaml::Str(self.block_scalar(n, chomp));
        }
        if rest.starts_with('{') {
            if rest.split(" #").next().unwrap().trim() != "{}" {
                panic!(
                    "{}:{line_no}: only empty flow mappings are supported",
                    self.file
                );
            }
            return Yaml::Map(Vec::new());
        }
        if let Some(body) = rest.strip_prefix('[') {
            return Yaml::Seq(self.flow_seq(body, line_no));
        }
        Yaml::Str(parse_scalar(rest, &self.file, line_no))
    }

    /// `[a, "b", 'c']` on one line.
    fn flow_seq(&self, body: &str, line_no: usize) -> Vec<Yaml> {
        let mut items = Vec::new();
        let mut current = String::new();
        let mut quote: Option<char> = None;
        for (i, c) in body.char_indices() {
            match (quote, c) {
                (Some(q), c) if c == q => {
                    quote = None;
                    current.push(c);
                }
                (Some(_), c) => current.push(c),
                (None, '"' | '\'') => {
                    quote = Some(c);
                    current.push(c);
                }
                (None, '[' | '{') => panic!("{}:{line_no}: nested flow collection", self.file),
                (None, ',') => {
                    items.push(Yaml::Str(parse_scalar(&current, &self.file, line_no)));
                    current.clear();
                }
                (None, ']') => {
                    let rest = body[i + 1..].trim();
                    assert!(
                        rest.is_empty() || rest.starts_with('#'),
                        "{}:{line_no}: text after a flow sequence",
                        self.file
                    );
                    if !current.trim().is_empty() {
                        items.push(Yaml::Str(parse_scalar(&current, &self.file, line_no)));
                    }
                    return items;
                }
                (None, c) => current.push(c),
            }
        }
        panic!("{}:{line_no}: multi-line flow sequence", self.file)
    }

    /// A literal block scalar whose header sits on a line indented by `n`.
    fn block_scalar(&mut self, n: usize, chomp: &str) -> String {
        let first = self.lines[self.pos..]
            .iter()
            .find(|l| !l.trim_start_matches(' ').is_empty())
            .map(|l| indent_of(l));
        let content_indent = match first {
            Some(ci) if ci > n => ci,
            _ => return String::new(),
        };
        let mut text = String::new();
        while let Some(line) = self.lines.get(self.pos) {
            let blank = line.trim_start_matches(' ').is_empty();
            if !blank && indent_of(line) < content_indent {
                break;
            }
            text.push_str(line.get(content_indent..).unwrap_or(""));
            text.push('\n');
            self.pos += 1;
        }
        match chomp {
            "keep" => text,
            "strip" => text.trim_end_matches('\n').to_string(),
            _ => {
                let body = text.trim_end_matches('\n');
                if body.is_empty() {
                    String::new()
                } else {
                    format!("{body}\n")
                }
            }
        }
    }
}

/// Every non-empty document of a multi-document YAML text.
fn parse_yaml_documents(file: &str, text: &str) -> Vec<Yaml> {
    let mut docs = Vec::new();
    let mut chunk: Vec<String> = Vec::new();
    let mut flush = |chunk: &mut Vec<String>, first_line: usize| {
        let mut p = YamlParser {
            file: format!("{file} (document at line {first_line})"),
            lines: std::mem::take(chunk),
            pos: 0,
        };
        if p.peek_indent().is_some() {
            let doc = p.parse_node(0);
            if p.peek_indent().is_some() {
                p.fail("unexpected line");
            }
            docs.push(doc);
        }
    };
    let mut first_line = 1;
    for (i, line) in text.lines().enumerate() {
        assert!(
            !line.starts_with('\t') && !line.starts_with("%"),
            "{file}:{}: tabs and directives are not supported",
            i + 1
        );
        if line == "---" || line.starts_with("--- ") {
            flush(&mut chunk, first_line);
            first_line = i + 2;
        } else {
            chunk.push(line.to_string());
        }
    }
    flush(&mut chunk, first_line);
    docs
}

fn kubernetes(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy/kubernetes")
        .join(file)
}

fn manifests(file: &str) -> Vec<Yaml> {
    let path = kubernetes(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    parse_yaml_documents(&format!("deploy/kubernetes/{file}"), &text)
}

/// The object of `kind` named `name` in `file`.
fn manifest(file: &str, kind: &str, name: &str) -> Yaml {
    manifests(file)
        .into_iter()
        .find(|d| d.at("kind").str() == kind && d.at("metadata.name").str() == name)
        .unwrap_or_else(|| panic!("deploy/kubernetes/{file} has no {kind} {name}"))
}

/// `data` of a ConfigMap in configmap.yaml, as (key, value) pairs.
fn configmap_data(name: &str) -> Vec<(String, String)> {
    manifest("configmap.yaml", "ConfigMap", name)
        .at("data")
        .map()
        .iter()
        .map(|(k, v)| (k.clone(), v.str().to_string()))
        .collect()
}

fn configmap_value(name: &str, key: &str) -> String {
    configmap_data(name)
        .into_iter()
        .find(|(k, _)| k == key)
        .unwrap_or_else(|| panic!("ConfigMap {name} has no key {key}"))
        .1
}

/// Loads `text` as firstseen.toml with the real loader (no environment
/// overrides, so the process environment cannot mask a problem).
fn load_config_text(text: &str) -> Result<Config, firstseen::config::ConfigError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("firstseen.toml");
    std::fs::write(&path, text).unwrap();
    Config::load(Some(&path), std::iter::empty())
}

fn kubernetes_config() -> Config {
    let text = configmap_value("firstseen-config", "firstseen.toml");
    load_config_text(&text).unwrap_or_else(|e| {
        panic!("deploy/kubernetes/configmap.yaml: firstseen.toml does not load: {e}")
    })
}

/// Whether `path` is `dir` or below it.
fn is_under(path: &Path, dir: &str) -> bool {
    path.starts_with(dir)
}

/// The container's mount path of volume `volume` and whether it is read-only.
fn mount_of<'a>(container: &'a Yaml, volume: &str) -> (&'a str, bool) {
    let m = container.at("volumeMounts").named(volume);
    let read_only = m.get("readOnly").is_some_and(|r| r.str() == "true");
    (m.at("mountPath").str(), read_only)
}

#[test]
fn kubernetes_config_loads_with_the_real_schema() {
    let config = kubernetes_config();
    let eh = config
        .eventhubs
        .as_ref()
        .expect("[eventhubs] is required by `firstseen run`");
    assert!(
        matches!(eh.auth, AuthConfig::WorkloadIdentity { .. }),
        "the manifests use AKS workload identity, found {:?}",
        eh.auth
    );
    assert!(
        eh.namespace.ends_with(".servicebus.windows.net"),
        "{}",
        eh.namespace
    );
    assert_eq!(config.log.format, LogFormat::Json);
    assert!(
        config.server.listen.ip().is_unspecified() && config.server.listen.port() == 9464,
        "[server] listen must be 0.0.0.0:9464 (probes, Services), is {}",
        config.server.listen
    );
    assert!(
        config
            .sinks
            .iter()
            .any(|s| matches!(s, SinkConfig::Webhook(_))),
        "a webhook sink is expected"
    );
    assert!(config.asn.database.is_some(), "[asn] database must be set");

    // A key from a schema that does not exist must fail the same loader.
    let text = configmap_value("firstseen-config", "firstseen.toml");
    let err = load_config_text(&format!("{text}\n[enrich.asn]\ndatabase = \"x\"\n"))
        .expect_err("unknown keys are errors")
        .to_string();
    assert!(err.contains("enrich"), "{err}");
}

#[test]
fn kubernetes_rules_load() {
    let rules = configmap_data("firstseen-rules");
    assert!(!rules.is_empty());
    let dir = tempfile::tempdir().unwrap();
    for (key, text) in &rules {
        assert!(
            key.ends_with(".toml"),
            "{key}: firstseen loads only *.toml from the rules directory"
        );
        std::fs::write(dir.path().join(key), text).unwrap();
    }
    let loaded = firstseen::rules::rule_file::load_rules(dir.path())
        .unwrap_or_else(|e| panic!("firstseen-rules: {e}"));
    assert_eq!(loaded.len(), rules.len());
}

#[test]
fn fetch_script_configmap_is_a_verbatim_copy() {
    let copy = configmap_value("firstseen-fetch-asn-db", "fetch-asn-db.sh");
    let script = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/fetch-asn-db.sh"),
    )
    .unwrap();
    assert!(
        copy == script,
        "deploy/kubernetes/configmap.yaml: firstseen-fetch-asn-db differs from \
         scripts/fetch-asn-db.sh; copy the script into it again"
    );
}

#[test]
fn statefulset_matches_the_config() {
    let config = kubernetes_config();
    let sts = manifest("statefulset.yaml", "StatefulSet", "firstseen");
    let pod = sts.at("spec.template.spec");
    let main = pod.at("containers").named("firstseen");

    // --config points at the firstseen.toml item of the config volume.
    let args: Vec<&str> = main.at("args").seq().iter().map(Yaml::str).collect();
    let config_arg = args
        .windows(2)
        .find(|w| w[0] == "--config")
        .map(|w| w[1])
        .expect("args: --config FILE");
    let (config_mount, ro) = mount_of(main, "config");
    assert!(ro, "the config volume is mounted read-only");
    let mut projected: Vec<(String, String, String)> = Vec::new(); // (configmap, key, file)
    for source in pod
        .at("volumes")
        .named("config")
        .at("projected.sources")
        .seq()
    {
        let cm = source.at("configMap");
        for item in cm.at("items").seq() {
            projected.push((
                cm.at("name").str().to_string(),
                item.at("key").str().to_string(),
                format!("{config_mount}/{}", item.at("path").str()),
            ));
        }
    }
    let file_of = |cm: &str, key: &str| {
        projected
            .iter()
            .find(|(c, k, _)| c == cm && k == key)
            .map(|(_, _, f)| f.clone())
            .unwrap_or_else(|| panic!("the config volume does not project {cm}/{key}"))
    };
    assert_eq!(config_arg, file_of("firstseen-config", "firstseen.toml"));

    // [rules] path is the directory the rule files are projected into, and
    // every rule in the ConfigMap is projected (and only those).
    let rule_keys: Vec<String> = configmap_data("firstseen-rules")
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    for key in &rule_keys {
        assert_eq!(
            Path::new(&file_of("firstseen-rules", key)),
            config.rules.path.join(key),
            "rule {key} must land in [rules] path"
        );
    }
    for (cm, key, _) in &projected {
        assert!(
            cm != "firstseen-rules" || rule_keys.contains(key),
            "the config volume projects {key}, which firstseen-rules lacks"
        );
    }

    // [state] dir and [asn] database are on the persistent volume.
    let claim = sts.at("spec.volumeClaimTemplates").seq()[0]
        .at("metadata.name")
        .str();
    let (state_mount, ro) = mount_of(main, claim);
    assert!(!ro, "the state volume must be writable");
    assert!(
        is_under(&config.state.dir, state_mount) && config.state.dir != Path::new(state_mount),
        "[state] dir {:?} must be a directory on the {claim} volume ({state_mount})",
        config.state.dir
    );
    let asn = config.asn.database.clone().unwrap();
    for part in asn.split(',').map(str::trim) {
        assert!(
            is_under(Path::new(part), state_mount),
            "[asn] database {part} must be on the {claim} volume ({state_mount})"
        );
        assert!(
            !is_under(Path::new(part), &config.state.dir.to_string_lossy())
                && !is_under(&config.state.dir, part),
            "[asn] database {part} and [state] dir must not overlap"
        );
    }

    // The init container writes the ASN database there before firstseen
    // starts (`run` refuses to start without it), with the script from
    // the firstseen-fetch-asn-db ConfigMap.
    let init = pod.at("initContainers").named("fetch-asn-db");
    let (init_state_mount, ro) = mount_of(init, claim);
    assert!(!ro && init_state_mount == state_mount);
    let script_volume = pod
        .at("volumes")
        .seq()
        .iter()
        .find(|v| {
            v.get("configMap")
                .is_some_and(|c| c.at("name").str() == "firstseen-fetch-asn-db")
        })
        .expect("a volume of ConfigMap firstseen-fetch-asn-db")
        .at("name")
        .str();
    let (script_mount, _) = mount_of(init, script_volume);
    let init_cmd: Vec<&str> = init
        .at("command")
        .seq()
        .iter()
        .chain(init.at("args").seq())
        .map(Yaml::str)
        .collect();
    let init_cmd = init_cmd.join(" ");
    assert!(
        init_cmd.contains(&format!("{script_mount}/fetch-asn-db.sh")),
        "the init container runs fetch-asn-db.sh: {init_cmd}"
    );
    assert!(
        init_cmd.contains(&format!("db={asn}\n")),
        "the init container fetches into [asn] database {asn}: {init_cmd}"
    );

    // Every environment variable the config reads is set, from the
    // firstseen-webhook Secret; signing secrets are not optional.
    let secret = manifest("secret.example.yaml", "Secret", "firstseen-webhook");
    let env = main.at("env");
    let check_env = |source: &SecretSource, required: bool| match source {
        SecretSource::Env(var) => {
            let from = env.named(var).at("valueFrom.secretKeyRef");
            assert_eq!(from.at("name").str(), "firstseen-webhook", "{var}");
            let key = from.at("key").str();
            assert!(
                secret.at("stringData").get(key).is_some(),
                "{var}: secret.example.yaml has no key {key}"
            );
            let optional = from.get("optional").is_some_and(|o| o.str() == "true");
            assert!(!(required && optional), "{var} must not be optional");
        }
        SecretSource::File(path) => panic!("{path:?}: no secret file is mounted; use env"),
        SecretSource::Value(_) => assert!(!required, "a signing secret must not be literal"),
    };
    for sink in &config.sinks {
        if let SinkConfig::Webhook(w) = sink {
            w.signing_secrets.iter().for_each(|s| check_env(s, true));
            w.headers.values().for_each(|s| check_env(s, false));
        }
    }

    // Workload identity: the pod label and the annotated ServiceAccount.
    assert_eq!(
        sts.at("spec.template.metadata.labels")
            .get("azure.workload.identity/use")
            .map(Yaml::str),
        Some("true")
    );
    let sa = manifest(
        "serviceaccount.yaml",
        "ServiceAccount",
        pod.at("serviceAccountName").str(),
    );
    assert!(sa
        .at("metadata.annotations")
        .get("azure.workload.identity/client-id")
        .is_some());

    // The metrics port is [server] listen's, and the probes use it.
    let port = config.server.listen.port().to_string();
    let metrics_port = main.at("ports").named("metrics");
    assert_eq!(metrics_port.at("containerPort").str(), port);
    for (probe, path) in [
        ("startupProbe", "/healthz"),
        ("livenessProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
    ] {
        let get = main.at(probe).at("httpGet");
        assert_eq!(get.at("path").str(), path, "{probe}");
        assert!(
            ["metrics", port.as_str()].contains(&get.at("port").str()),
            "{probe} port"
        );
    }
}

#[test]
fn services_and_servicemonitor_scrape_the_metrics_port_once() {
    let services: Vec<Yaml> = manifests("service.yaml")
        .into_iter()
        .filter(|d| d.at("kind").str() == "Service")
        .collect();
    for svc in &services {
        let p = svc.at("spec.ports").named("metrics");
        assert_eq!(p.at("port").str(), "9464");
        assert_eq!(p.at("targetPort").str(), "metrics");
    }
    let sm = manifest("servicemonitor.yaml", "ServiceMonitor", "firstseen");
    let wanted = sm.at("spec.selector.matchLabels").map();
    let selected: Vec<&str> = services
        .iter()
        .filter(|svc| {
            let labels = svc.at("metadata.labels");
            wanted
                .iter()
                .all(|(k, v)| labels.get(k).map(Yaml::str) == Some(v.str()))
        })
        .map(|svc| svc.at("metadata.name").str())
        .collect();
    // job="firstseen" in deploy/monitoring/firstseen-alerts.yaml.
    assert_eq!(
        selected,
        ["firstseen"],
        "the ServiceMonitor must select one Service"
    );
    let endpoint = &sm.at("spec.endpoints").seq()[0];
    assert_eq!(endpoint.at("port").str(), "metrics");
    assert_eq!(endpoint.at("path").str(), "/metrics");
}

#[test]
fn yaml_subset_parser() {
    let text = "# c\na: 1 # c\nb:\n  - x\n  - \"y: z\" # c\n  - name: n\n    v: 'it''s'\nc:\n- [\"p\", q]\nd: |\n  one\n\n    two\n  # kept\n\n# comment\ne: |-\n  s\nf: {}\ng:\n---\nh: i\n";
    let docs = parse_yaml_documents("inline", text);
    let s = |v: &str| Yaml::Str(v.into());
    assert_eq!(
        docs,
        [
            Yaml::Map(vec![
                ("a".into(), s("1")),
                (
                    "b".into(),
                    Yaml::Seq(vec![
                        s("x"),
                        s("y: z"),
                        Yaml::Map(vec![("name".into(), s("n")), ("v".into(), s("it's"))]),
                    ])
                ),
                ("c".into(), Yaml::Seq(vec![Yaml::Seq(vec![s("p"), s("q")])])),
                ("d".into(), s("one\n\n  two\n# kept\n")),
                ("e".into(), s("s")),
                ("f".into(), Yaml::Map(vec![])),
                ("g".into(), s("")),
            ]),
            Yaml::Map(vec![("h".into(), s("i"))]),
        ]
    );
}

/// The hand-written parser against PyYAML (`BaseLoader`: every scalar a
/// string) on every manifest, when PyYAML is installed (the lint-deploy.sh
/// tool venv, or the system python3); skipped otherwise.
#[test]
fn yaml_subset_parser_agrees_with_pyyaml() {
    let tools = std::env::var_os("FIRSTSEEN_TOOLS_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/firstseen-tools")));
    let mut candidates: Vec<PathBuf> = tools
        .map(|t| t.join("venv/bin/python"))
        .into_iter()
        .collect();
    candidates.push("python3".into());
    let python = candidates.into_iter().find(|p| {
        Command::new(p)
            .args(["-c", "import yaml"])
            .output()
            .is_ok_and(|o| o.status.success())
    });
    let Some(python) = python else {
        eprintln!("SKIP yaml_subset_parser_agrees_with_pyyaml: no python3 with PyYAML (pip install pyyaml)");
        return;
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(kubernetes(""))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 5);
    for file in files {
        let out = Command::new(&python)
            .args([
                "-c",
                "import json, sys, yaml\n\
                 docs = yaml.load_all(open(sys.argv[1]), Loader=yaml.BaseLoader)\n\
                 print(json.dumps([d for d in docs if d is not None]))",
            ])
            .arg(&file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let want: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let got: serde_json::Value = manifests(&name).iter().map(Yaml::to_json).collect();
        assert_eq!(
            got, want,
            "{name}: the test's YAML parser disagrees with PyYAML"
        );
    }
}
