//! A scratch database for the store's own tests: created with the schema by
//! [`Store::prepare`] (as a deployment's is), dropped when the test ends.
//!
//! PostgreSQL at `$TEST_PG_URL`, by default `postgres://postgres@127.0.0.1:5432` (trust).

use sqlx::{Connection as _, Executor as _};

use super::Store;

fn admin_url() -> String {
    std::env::var("TEST_PG_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

/// A fresh database with the schema applied, dropped on drop.
pub struct ScratchDb {
    pub name: String,
    pub store: Store,
}

impl ScratchDb {
    pub async fn new() -> ScratchDb {
        let name = format!("audit_test_{}", uuid::Uuid::new_v4().simple());
        let store =
            Store::connect_lazy(&format!("{}/{name}", admin_url()), 4).expect("database URL");
        store
            .prepare()
            .await
            .expect("PostgreSQL at $TEST_PG_URL or 127.0.0.1:5432 creating a scratch database");
        ScratchDb { name, store }
    }
}

impl Drop for ScratchDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs inside the test's runtime: a thread with its own runtime drops the database.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                if let Ok(mut admin) =
                    sqlx::PgConnection::connect(&format!("{}/postgres", admin_url())).await
                {
                    let drop = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                    let _ = admin.execute(drop.as_str()).await;
                    let _ = admin.close().await;
                }
            });
        })
        .join();
    }
}
