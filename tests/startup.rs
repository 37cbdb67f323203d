//! The `hearty` binary: a bad saga file or setting is a clear start-up
//! error, and with nothing configured it serves with zero set-up.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

fn hearty() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_hearty"));
    // Start from a clean slate whatever the caller's environment says.
    for (k, _) in std::env::vars() {
        if k.starts_with("HEARTY_") {
            c.env_remove(k);
        }
    }
    c.env("RUST_LOG", "warn");
    c
}

#[test]
fn a_bad_saga_file_names_the_file_and_the_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("broken.toml");
    let text = include_str!("../sagas/order_fulfilment.toml").replacen(
        "timeout = \"5s\"",
        "timeout = \"soon\"",
        1,
    );
    std::fs::write(&path, &text).expect("write");
    let line = text
        .lines()
        .position(|l| l.contains("\"soon\""))
        .expect("present")
        + 1;
    let out = hearty()
        .args(["serve", "--http-addr", "127.0.0.1:0"])
        .env("HEARTY_SAGA_FILE", &path)
        .env("HEARTY_DATA_DIR", dir.path().join("data"))
        .output()
        .expect("run hearty");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("broken.toml"), "{err}");
    assert!(err.contains(&format!("line {line}")), "{err}");
    assert!(err.contains("timeout"), "{err}");
}

#[test]
fn a_missing_saga_file_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = hearty()
        .args(["serve", "--saga-file", "/nonexistent/saga.toml"])
        .env("HEARTY_DATA_DIR", dir.path().join("data"))
        .output()
        .expect("run hearty");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/saga.toml"), "{err}");
}

#[test]
fn bad_settings_are_refused_with_their_names() {
    for (var, value, word) in [
        ("HEARTY_KITCHEN_MODE", "sometimes", "auto or manual"),
        ("HEARTY_PAY_LATENCY", "slow", "latency"),
        ("HEARTY_ROLES", "api,chef", "unknown role"),
        ("HEARTY_NAMESPACE", "has space", "namespace"),
        ("HEARTY_PAY_DECLINE_ABOVE", "lots", "amount"),
        ("HEARTY_FAIL_COMPENSATIONS", "pay=often", "count"),
        (
            "HEARTY_AMQP_URL",
            "http://u:secret@b,amqp://a:5672",
            "not an amqp:// or amqps:// URL",
        ),
        ("HEARTY_AMQP_URL", " , ", "names no RabbitMQ node"),
        ("HEARTY_DRAIN", "soon", "duration"),
    ] {
        let out = hearty()
            .arg("serve")
            .env(var, value)
            .output()
            .expect("run hearty");
        assert!(!out.status.success(), "{var}={value} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(word), "{var}={value}: {err}");
        assert!(!err.contains("secret"), "a password was printed: {err}");
    }
}

/// Secrets that cannot be used are refused at start-up, by name, without
/// being repeated (a pod's log is not a place for a password).
#[test]
fn bad_secrets_are_refused_without_printing_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (var, value, word) in [
        (
            "HEARTY_MANAGER_TOKEN",
            "Tr0ub4dor&3xyz",
            "at least 16 characters",
        ),
        (
            "HEARTY_MANAGER_TOKEN",
            "change-me-manager-token",
            "published",
        ),
        (
            "HEARTY_AUTH_KEY",
            "Kx9-short-but-secret-key-31chrs",
            "at least 32 characters",
        ),
        (
            "HEARTY_AUTH_KEY",
            "change-me-please-change-me-please!",
            "published",
        ),
    ] {
        let out = hearty()
            .args(["serve", "--http-addr", "127.0.0.1:0"])
            .env("HEARTY_DATA_DIR", dir.path())
            .env(var, value)
            .output()
            .expect("run hearty");
        assert!(!out.status.success(), "{var} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(var) && err.contains(word), "{var}: {err}");
        assert!(!err.contains(value), "{var}'s value was printed: {err}");
    }
    // A broker elsewhere as `guest`: refused, its password not printed.
    let out = hearty()
        .arg("serve")
        .env("HEARTY_DATA_DIR", dir.path())
        .env(
            "HEARTY_AMQP_URL",
            "amqp://guest:guest@rabbit.example:5672/%2f",
        )
        .env("HEARTY_AUTH_KEY", "k".repeat(40))
        .output()
        .expect("run hearty");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("guest"), "{err}");
    assert!(!err.contains("guest:guest"), "{err}");
}

#[test]
fn serves_with_zero_setup() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = hearty()
        .args(["serve", "--http-addr", "127.0.0.1:0"])
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn hearty");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut token = None;
    let mut addr = None;
    for line in lines.by_ref() {
        let line = line.expect("line");
        if let Some(t) =
            line.strip_prefix("Manager token (send as `Authorization: Bearer <token>`): ")
        {
            token = Some(t.to_owned());
        }
        if let Some(a) = line.strip_prefix("Hearty listening on http://") {
            addr = Some(a.to_owned());
            break;
        }
    }
    let addr = addr.expect("the service says where it listens");
    assert_eq!(
        token.map(|t| t.len()),
        Some(32),
        "a token is generated and printed"
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let ready = rt.block_on(async {
        let client = reqwest::Client::new();
        for _ in 0..100 {
            if let Ok(r) = client
                .get(format!("http://{addr}/health/ready"))
                .send()
                .await
            {
                return Some((r.status().as_u16(), r.text().await.unwrap_or_default()));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    });
    let _ = child.kill();
    let _ = child.wait();
    let (status, body) = ready.expect("health answered");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("in-process"), "{body}");
    assert!(
        dir.path().join("data/orchestrator.db").exists(),
        "SQLite files under ./data"
    );
}

/// Two processes on one data folder would both drive its sagas: the second
/// waits as a standby, saying so, and takes over when the first ends.
#[test]
fn a_second_process_on_the_same_data_folder_waits_as_a_standby() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut first = hearty()
        .args(["serve", "--http-addr", "127.0.0.1:0"])
        .env("HEARTY_DATA_DIR", dir.path().join("data"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn hearty");
    let stdout = first.stdout.take().expect("stdout");
    let listening = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .any(|l| l.starts_with("Hearty listening on"));
    assert!(listening, "the first one serves");
    let mut second = hearty()
        .args(["serve", "--http-addr", "127.0.0.1:0"])
        .env("HEARTY_DATA_DIR", dir.path().join("data"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn hearty");
    let (tx, lines) = std::sync::mpsc::channel();
    let out = second.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut seen = Vec::new();
    let standby = loop {
        match lines.recv_timeout(Duration::from_secs(30)) {
            Ok(l) if l.contains("standby") => break l,
            Ok(l) => seen.push(l),
            Err(_) => panic!("the second one says it waits: {seen:?}"),
        }
    };
    assert!(
        standby.contains("owner_pid") && standby.contains(&first.id().to_string()),
        "names the owner: {standby}"
    );
    assert!(
        !seen.iter().any(|l| l.starts_with("Hearty listening")),
        "the standby serves nothing: {seen:?}"
    );
    let _ = first.kill();
    let _ = first.wait();
    let took_over = loop {
        match lines.recv_timeout(Duration::from_secs(30)) {
            Ok(l) if l.starts_with("Hearty listening") => break true,
            Ok(_) => {}
            Err(_) => break false,
        }
    };
    let _ = second.kill();
    let _ = second.wait();
    assert!(took_over, "the standby takes over once the first is gone");
}
