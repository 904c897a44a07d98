//! `tributary audit verify` and `audit anchor` as an operator runs them.

#![expect(clippy::expect_used, reason = "tests fail loudly")]

use std::process::Command;

use sea_orm::ConnectionTrait;
use tributary::auth::{Principal, Role};
use tributary::config::DatabaseSettings;
use tributary::services::persons::{self, NewPerson};

fn tributary(dir: &std::path::Path, args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tributary"))
        .args(args)
        .args(["--config", "hub.toml"])
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env(
            "ANCHOR_KEY",
            "an anchor key of at least thirty-two characters",
        )
        .output()
        .expect("the binary runs");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test]
async fn audit_verify_exits_zero_when_the_chain_holds_and_names_the_first_broken_event() {
    let dir = tempfile::tempdir().unwrap();
    let db_file = dir.path().join("hub.db");
    std::fs::write(
        dir.path().join("hub.toml"),
        format!(
            "[database]\nurl = \"sqlite://{}?mode=rwc\"\n[audit]\nanchor_dir = \"anchors\"\nanchor_key_env = \"ANCHOR_KEY\"\n",
            db_file.display()
        ),
    )
    .unwrap();
    assert_eq!(tributary(dir.path(), &["migrate"]).0, 0);
    let db = tributary::db::connect(&DatabaseSettings {
        url: format!("sqlite://{}?mode=rwc", db_file.display()),
        max_connections: 2,
    })
    .await
    .unwrap();
    let admin = Principal {
        sub: "ops".into(),
        role: Role::Admin,
        acts_for: Vec::new(),
        agency: None,
        purpose: None,
        request_id: "r".into(),
    };
    for family in ["A", "B", "C"] {
        persons::register(
            &db,
            &admin,
            NewPerson {
                given_name: "P".into(),
                family_name: family.into(),
                date_of_birth: chrono::NaiveDate::from_ymd_opt(1980, 1, 1).unwrap(),
                identifiers: Vec::new(),
            },
        )
        .await
        .unwrap();
    }
    let (code, out) = tributary(dir.path(), &["audit", "verify"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("holds: 3 events"), "{out}");
    let (code, out) = tributary(dir.path(), &["audit", "anchor"]);
    assert_eq!(code, 0, "{out}");
    assert!(dir.path().join("anchors/anchor-000000000003.json").exists());

    db.execute_unprepared("UPDATE audit_events SET detail = '{}' WHERE seq = 2")
        .await
        .unwrap();
    let (code, out) = tributary(dir.path(), &["audit", "verify"]);
    assert_ne!(code, 0);
    assert!(out.contains("BROKEN at event 2"), "{out}");
}
