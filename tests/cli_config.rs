//! `firstseen check-config`: reports every problem `run` would hit at start
//! (without connecting anywhere), never prints a secret, and blames
//! environment overrides by name.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const CONNECTION: &str =
    "Endpoint=sb://ns.example.com/;SharedAccessKeyName=k;SharedAccessKey=c2VjcmV0LXZhbHVl;EntityPath=h";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn config(dir: &Path, extra: &str) -> PathBuf {
    let text = format!(
        r#"
[state]
dir = "{state}"
[rules]
path = "{rules}"
[asn]
database = "{asn}"
[eventhubs]
namespace = "ns.example.com"
event_hub = "h"
[eventhubs.auth]
kind = "connection-string"
env = "TEST_EH_CONNECTION"
[[sinks]]
type = "webhook"
name = "soar"
url = "https://soar.example.com/hook"
signing_secrets = [{{ env = "TEST_WEBHOOK_SECRET" }}]
{extra}
"#,
        state = dir.join("state").display(),
        rules = root().join("config/rules").display(),
        asn = root().join("samples/asn").display(),
    );
    let path = dir.join("firstseen.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn check(path: &Path, env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_firstseen"));
    cmd.arg("check-config").arg("--config").arg(path);
    cmd.env_remove("TEST_EH_CONNECTION")
        .env_remove("TEST_WEBHOOK_SECRET");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let Output {
        status,
        stdout,
        stderr,
    } = cmd.output().unwrap();
    (
        status.code(),
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&stderr).into_owned(),
    )
}

const SECRETS: [(&str, &str); 2] = [
    ("TEST_EH_CONNECTION", CONNECTION),
    ("TEST_WEBHOOK_SECRET", SECRET),
];

#[test]
fn a_complete_config_passes_and_no_secret_is_printed() {
    let dir = tempfile::tempdir().unwrap();
    let (code, out, err) = check(&config(dir.path(), ""), &SECRETS);
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("configuration ok"), "{err}");
    assert!(out.contains("env = \"TEST_WEBHOOK_SECRET\""), "{out}");
    for secret in [SECRET, CONNECTION, "c2VjcmV0LXZhbHVl"] {
        assert!(
            !out.contains(secret) && !err.contains(secret),
            "{secret} printed"
        );
    }
    // The shipped examples are valid configurations.
    for shipped in ["config/firstseen.toml", "config/local-double.toml"] {
        let out = Command::new(env!("CARGO_BIN_EXE_firstseen"))
            .args(["check-config", "--config"])
            .arg(root().join(shipped))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        // Only the environment (secrets, paths of a real host) may be missing.
        assert!(
            !err.contains("unknown field") && !err.contains("firstseen: error"),
            "{shipped}: {err}"
        );
    }
}

#[test]
fn what_run_would_reject_is_reported_before_it_runs() {
    let dir = tempfile::tempdir().unwrap();
    // Missing secrets.
    let (code, _, err) = check(&config(dir.path(), ""), &[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("problem: eventhubs.auth: environment variable TEST_EH_CONNECTION is not set"),
        "{err}"
    );
    assert!(
        err.contains(
            "problem: sinks.soar.signing_secrets[0]: environment variable TEST_WEBHOOK_SECRET"
        ),
        "{err}"
    );

    // A signing secret that is not whsec_<base64>.
    let (code, _, err) = check(
        &config(dir.path(), ""),
        &[
            ("TEST_EH_CONNECTION", CONNECTION),
            ("TEST_WEBHOOK_SECRET", "whsec_!!"),
        ],
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("signing_secrets[0]"), "{err}");

    // An allowlist entry naming the rule by its file name never applies.
    let extra = r#"
[[allowlist]]
asn = 9009
rules = ["azure_vm_extension_crud_unusual_source_asn"]
owner = "soc"
reason = "test"
"#;
    let (code, _, err) = check(&config(dir.path(), extra), &SECRETS);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("not the rule_id of a loaded rule")
            && err.contains("5f3c9a7e-2b41-4d8e-9c16-8a0f7d3b2e64"),
        "{err}"
    );

    // An expired entry is accepted with a warning.
    let extra =
        "[[allowlist]]\nasn = 9009\nowner = \"soc\"\nreason = \"test\"\nexpires = \"2020-01-01\"\n";
    let (code, _, err) = check(&config(dir.path(), extra), &SECRETS);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        err.contains("warning: allowlist entry 0 (owner \"soc\") has expired"),
        "{err}"
    );

    // A state directory that cannot be created.
    let (code, _, err) = check(
        &config(dir.path(), ""),
        &[
            SECRETS[0],
            SECRETS[1],
            ("FIRSTSEEN_STATE__DIR", "/proc/firstseen-nope"),
        ],
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("problem: state.dir"), "{err}");
}

#[test]
fn environment_overrides_are_named_in_errors_and_take_arrays() {
    let dir = tempfile::tempdir().unwrap();
    let path = config(dir.path(), "");
    let (code, _, err) = check(
        &path,
        &[SECRETS[0], SECRETS[1], ("FIRSTSEEN_BOGUS__X", "1")],
    );
    assert_eq!(code, Some(2));
    assert!(
        err.contains("(with FIRSTSEEN_BOGUS__X)") && err.contains("unknown field `bogus`"),
        "{err}"
    );

    let (code, out, err) = check(
        &path,
        &[
            SECRETS[0],
            SECRETS[1],
            ("FIRSTSEEN_EVENTHUBS__PARTITIONS", r#"["0", "1"]"#),
        ],
    );
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains(r#"partitions = ["#), "{out}");
}
