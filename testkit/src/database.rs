//! A PostgreSQL database of the test's own on the shared server, dropped at
//! the end, pass or fail.

use std::net::SocketAddr;

use sqlx::Connection;

use crate::harness::run_detached;

pub const PG_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

pub struct TestDatabase {
    pub name: String,
}

impl TestDatabase {
    pub async fn create(test: &str) -> TestDatabase {
        let name = format!(
            "bwtest_{}_{:08x}",
            test.replace('-', "_"),
            rand::random::<u32>()
        );
        let mut admin = sqlx::PgConnection::connect(PG_ADMIN_URL).await.unwrap_or_else(|e| {
            panic!("these tests need PostgreSQL at 127.0.0.1:5432 (user postgres, trust auth): {e}")
        });
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .unwrap();
        let _ = admin.close().await;
        TestDatabase { name }
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:5432/{}", self.name)
    }

    /// The URL through a proxy at `addr`.
    pub fn url_via(&self, addr: SocketAddr) -> String {
        format!("postgres://postgres@{addr}/{}", self.name)
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let name = self.name.clone();
        run_detached(async move {
            if let Ok(mut admin) = sqlx::PgConnection::connect(PG_ADMIN_URL).await {
                let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&mut admin)
                    .await;
            }
        });
    }
}
