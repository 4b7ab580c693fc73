//! The investigators' page in a real browser: Chromium (Debian's `chromium`) driven by
//! `playwright-core` (`tests/browser/`, installed by `npm ci --prefix tests/browser`) against
//! this service with real rows in PostgreSQL. `.ci/run` installs both.
//!
//! Set `UI_SCREENSHOT=docs/ui-timeline.png` to refresh the screenshot the README shows.

use crate::common;

use std::path::Path;
use std::process::Command;

use audit_manager::config::Role;
use audit_manager::event::Row;
use audit_manager::store::Store;
use chrono::{TimeZone, Utc};
use common::{TestApp, TestDb, TestKafka};
use serde_json::json;

const ACTORS: [&str; 5] = [
    "registrar-amina",
    "officer-joseph",
    "approver-li",
    "auditor-sara",
    "batch-payments",
];
const ACTIONS: [(&str, &str, &str); 4] = [
    (
        "beneficiary.update",
        "beneficiary",
        "org.openg2p.registry.beneficiary.updated",
    ),
    (
        "payment.approve",
        "payment",
        "org.openg2p.payments.approved",
    ),
    ("user.login", "session", "org.openg2p.auth.login"),
    ("permission.check", "program", "org.openg2p.auth.permission"),
];

fn rows(n: usize) -> Vec<Row> {
    let start = Utc.with_ymd_and_hms(2026, 10, 1, 8, 0, 0).unwrap();
    (0..n)
        .map(|i| {
            let (action, resource_type, ty) = ACTIONS[i % ACTIONS.len()];
            let city = ["Kisumu", "Nakuru", "Eldoret", "Mombasa"];
            Row {
                id: format!("evt-{i:04}"),
                occurred_at: start + chrono::Duration::minutes(i as i64 * 37),
                source: "/registry".into(),
                r#type: ty.into(),
                subject: Some(format!("{resource_type}/{}", i % 17)),
                actor_type: "user".into(),
                actor_id: ACTORS[i % ACTORS.len()].into(),
                resource_type: Some(resource_type.into()),
                resource_id: Some(format!("{}", 1000 + i % 17)),
                action: action.into(),
                outcome: ["success", "success", "failure", "denied"][i % 4].into(),
                reason: None,
                trace_id: Some(format!("{:032x}", 0xabc000 + i / 3)),
                auth_type: None,
                auth_id: None,
                details: Some(
                    json!({
                        "changes": [{
                            "field": "address.city",
                            "before": city[i % 4],
                            "after": city[(i + 1) % 4],
                        }],
                        "context": { "channel": "web" },
                    })
                    .to_string(),
                ),
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_investigators_page_searches_pages_shows_detail_and_exports() {
    let browser_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    assert!(
        browser_dir.join("node_modules/playwright-core").exists(),
        "playwright-core is not installed: run `npm ci --prefix tests/browser` (and \
         `apt-get install chromium`), as .ci/run does"
    );
    let mut data = rows(250);
    let db = TestDb::new().await;
    let store = Store::connect_lazy(&db.url, 2).expect("store");
    store.prepare().await.expect("schema");
    store.insert(&data).await.expect("rows");
    // Seal them, then change one sealed row and store a few more after the seal.
    let keys = tempfile::tempdir().unwrap();
    let key_file = keys.path().join("sealer.key");
    audit_manager::integrity::seal::keygen(&key_file).expect("keygen");
    let signer = audit_manager::integrity::seal::Signer::new(
        audit_manager::integrity::seal::load_signing_key(&key_file).unwrap(),
    );
    {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
        audit_manager::integrity::sealer::seal_pass(&mut conn, &signer, None)
            .await
            .expect("seal");
        sqlx::query("UPDATE audit_events SET outcome = 'success' WHERE id = 'evt-0007'")
            .execute(&mut conn)
            .await
            .unwrap();
    }
    let mut late = rows(255).split_off(250);
    for r in &mut late {
        r.id = r.id.replace("evt-", "late-");
    }
    store.insert(&late).await.expect("late rows");
    data.extend(late.iter().cloned());
    store.close().await;
    let public_key = keys.path().join("sealer.key.pub");
    let kafka = TestKafka::new(1);
    let url = db.url.clone();
    let mut app = TestApp::with_kafka(&kafka.bootstrap.clone(), move |c| {
        c.roles = vec![Role::Query, Role::Forward];
        c.database.url = url.into();
        c.query.allow_anonymous = true;
        c.integrity.public_key_files = vec![public_key];
    })
    .await;

    let actor = ACTORS[1];
    let traced = &data[100];
    let expect = json!({
        "total": data.len(),
        "actor": actor,
        "actorCount": data.iter().filter(|r| r.actor_id == actor).count(),
        "traceOf": { "id": traced.id, "actor": traced.actor_id, "trace_id": traced.trace_id },
        "traceCount": data.iter().filter(|r| r.trace_id == traced.trace_id).count(),
        "late": late.len(),
        "tampered": { "id": "evt-0007", "actor": data[7].actor_id },
        "changeField": "address.city",
        "changeBefore": "Kisumu",
        "changeAfter": "Nakuru",
    });
    let screenshot = std::env::var("UI_SCREENSHOT").unwrap_or_else(|_| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
        dir.join("ui-timeline.png").to_string_lossy().into_owned()
    });
    let base = format!("http://{}", app.addr);
    let out = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg("ui.mjs")
            .arg(&base)
            .arg(&screenshot)
            .current_dir(&browser_dir)
            .env("EXPECT", expect.to_string())
            .output()
            .expect("node runs (install Node.js)")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "browser test failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("ok - the CSV export holds"), "{stdout}");
    app.stop().await;
}
