//! The audit log: the line each event writes, rotation, and what never reaches a line.

use super::*;

fn revoked(id: &str) -> Event {
    Event::LeaseRevoked {
        lease_id: id.into(),
        role: "v-alice-readonly-x-1".into(),
        by: "operator",
    }
}

#[test]
fn lines_carry_time_and_event_name() {
    let line = format_line(
        &revoked("database/sessions/readonly/a"),
        SystemTime::UNIX_EPOCH,
    );
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["time"], "1970-01-01T00:00:00.000Z");
    assert_eq!(v["event"], "lease.revoked");
    assert_eq!(v["by"], "operator");
    assert_eq!(v["lease_id"], "database/sessions/readonly/a");
    assert!(!line.contains('\n'));
}

#[test]
fn every_event_serializes_under_its_name() {
    let events = [
        Event::ConnectionRefused {
            client_addr: "a".into(),
            reason: "r".into(),
        },
        Event::AuthFailed {
            reason: "r".into(),
            issuer: None,
            identity: None,
            client_addr: "a".into(),
            template: "t".into(),
            database: "d".into(),
        },
        Event::AuthOk {
            identity: "i".into(),
            issuer: Some("iss".into()),
            client_addr: "a".into(),
            template: "t".into(),
            database: "d".into(),
        },
        Event::LeaseMinted {
            lease_id: "l".into(),
            role: "r".into(),
            identity: "i".into(),
            issuer: "local".into(),
            groups: vec![],
            template: "t".into(),
            database: "d".into(),
            expire_time: "e".into(),
            client_addr: None,
        },
        Event::SessionEnded {
            lease_id: "l".into(),
            role: "r".into(),
            identity: "i".into(),
            reason: "client".into(),
            duration_seconds: 1.5,
            bytes_in: 1,
            bytes_out: 2,
        },
        Event::LeaseRenewed {
            lease_id: "l".into(),
            role: "r".into(),
            expire_time: "e".into(),
            capped: true,
            caller: "operator".into(),
        },
        revoked("l"),
        Event::LeaseRevokeFailed {
            lease_id: "l".into(),
            role: "r".into(),
            attempt: 2,
            error: "e".into(),
            retrying: true,
        },
        Event::LeaseRetained {
            lease_id: "l".into(),
            role: "r".into(),
            detail: "owner of table t".into(),
        },
        Event::LeaseReaped {
            lease_id: None,
            role: "r".into(),
            reason: "expired".into(),
            instance: None,
        },
        Event::AdminRequest {
            method: "GET".into(),
            path: "/healthz".into(),
            status: 200,
            caller: "anonymous".into(),
            client_addr: "a".into(),
        },
    ];
    for e in &events {
        let v: serde_json::Value =
            serde_json::from_str(&format_line(e, SystemTime::now())).unwrap();
        assert_eq!(v["event"], e.name());
    }
}

#[tokio::test]
async fn writes_appends_and_reopens_after_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    std::fs::write(&path, "{\"earlier\":true}\n").unwrap();
    let audit = Audit::open(Target::File(path.clone())).unwrap();
    audit.record_durable(revoked("one")).await.unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(lines[1].contains("\"lease_id\":\"one\""));

    // Rotation: the file is moved away, then the log is reopened.
    let rotated = dir.path().join("audit.jsonl.1");
    std::fs::rename(&path, &rotated).unwrap();
    audit.record(revoked("two")); // still to the old file (same inode)
    audit.reopen().await.unwrap();
    audit.record_durable(revoked("three")).await.unwrap();
    let old = std::fs::read_to_string(&rotated).unwrap();
    let new = std::fs::read_to_string(&path).unwrap();
    assert!(
        old.contains("\"two\"") && !old.contains("\"three\""),
        "{old}"
    );
    assert_eq!(new.lines().count(), 1, "{new}");
    assert!(new.contains("\"three\""));
}

#[tokio::test]
async fn a_disabled_log_accepts_everything() {
    let audit = Audit::disabled();
    audit.record(revoked("x"));
    audit.record_durable(revoked("y")).await.unwrap();
    audit.reopen().await.unwrap();
    assert!(!audit.is_enabled());
}

#[tokio::test]
async fn pre_auth_lines_are_rate_limited_and_summed_up() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let audit = Audit::open(Target::File(path.clone()))
        .unwrap()
        .with_pre_auth_limit(5);
    let refused = || Event::ConnectionRefused {
        client_addr: "10.0.0.1:1".into(),
        reason: "protocol".into(),
    };
    for _ in 0..100 {
        audit.record(refused());
    }
    // Decisions after authentication are never limited.
    audit.record_durable(revoked("l")).await.unwrap();
    let lines = |event: &str| -> Vec<serde_json::Value> {
        std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|v| v["event"] == event)
            .collect()
    };
    assert_eq!(lines("connection.refused").len(), 5);
    assert_eq!(lines("lease.revoked").len(), 1);
    // Once the budget refills, the next line follows a summary.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while lines("audit.suppressed").is_empty() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        audit.record(refused());
        audit.record_durable(revoked("barrier")).await.unwrap();
    }
    let summary = lines("audit.suppressed");
    assert_eq!(summary.len(), 1, "no summary line");
    assert!(summary[0]["count"].as_u64().unwrap() >= 95, "{summary:?}");
    assert!(!Event::AuthFailed {
        reason: "r".into(),
        issuer: Some("i".into()),
        identity: Some("alice".into()),
        client_addr: "a".into(),
        template: "t".into(),
        database: "d".into(),
    }
    .is_pre_auth());
}

#[test]
fn an_unwritable_path_is_an_error() {
    let err = Audit::open(Target::File("/nonexistent-dir/audit.jsonl".into())).unwrap_err();
    assert!(
        err.to_string().contains("/nonexistent-dir/audit.jsonl"),
        "{err}"
    );
}
