//! A PostgreSQL server of the test's own (`initdb` and `pg_ctl` as the
//! `postgres` user, data under a temporary directory) that accepts only TLS
//! connections, with a server certificate from a [`TestCa`]: how a test
//! proves `sslmode=verify-full` against a CA the operator names.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::tls::TestCa;

const BIN: &str = "/usr/lib/postgresql/15/bin";
const ROOT: &str = "/tmp/bw-postgres";

/// A running private server; stopped and removed on drop.
pub struct PostgresNode {
    pub port: u16,
    dir: PathBuf,
}

impl PostgresNode {
    /// Starts a server on a free port that refuses every connection that is
    /// not TLS; trust authentication otherwise (user `postgres`).
    pub fn start_tls(ca: &TestCa) -> PostgresNode {
        assert!(
            Path::new(BIN).join("initdb").exists(),
            "this test needs PostgreSQL 15's server binaries under {BIN}"
        );
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = PathBuf::from(ROOT).join(format!(
            "p{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let port = free_port();
        let data = dir.join("data");
        chown_to_postgres(Path::new(ROOT));
        let init = as_postgres(&format!(
            "{BIN}/initdb -D {} -A trust -U postgres --no-sync",
            data.display()
        ));
        assert!(init.status.success(), "initdb: {}", text(&init));
        for (from, to) in [
            (&ca.server_cert, "server.pem"),
            (&ca.server_key, "server.key"),
        ] {
            std::fs::copy(from, data.join(to)).unwrap();
        }
        let conf = format!(
            "port = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
             ssl = on\nssl_cert_file = 'server.pem'\nssl_key_file = 'server.key'\nfsync = off\n",
            dir.display()
        );
        append(&data.join("postgresql.conf"), &conf);
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostnossl all all 127.0.0.1/32 reject\n",
        )
        .unwrap();
        chown_to_postgres(&dir);
        as_postgres(&format!("chmod 600 {}/server.key", data.display()));
        let started = as_postgres(&format!(
            "{BIN}/pg_ctl -D {} -l {}/log -w -t 30 start",
            data.display(),
            dir.display()
        ));
        assert!(
            started.status.success(),
            "pg_ctl start: {}{}",
            text(&started),
            std::fs::read_to_string(dir.join("log")).unwrap_or_default()
        );
        PostgresNode { port, dir }
    }

    /// A URL for `database` that verifies the server against `ca_file`.
    pub fn verify_full_url(&self, ca_file: &Path) -> String {
        format!(
            "postgres://postgres@localhost:{}/postgres?sslmode=verify-full&sslrootcert={}",
            self.port,
            ca_file.display()
        )
    }
}

impl Drop for PostgresNode {
    fn drop(&mut self) {
        as_postgres(&format!(
            "{BIN}/pg_ctl -D {}/data -m immediate -w stop",
            self.dir.display()
        ));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn as_postgres(script: &str) -> Output {
    Command::new("runuser")
        .args(["-u", "postgres", "--", "sh", "-c", script])
        .output()
        .expect("runuser runs (PostgreSQL tests run as root, to start a server as postgres)")
}

fn chown_to_postgres(path: &Path) {
    let status = Command::new("chown")
        .args(["-R", "postgres:postgres"])
        .arg(path)
        .status()
        .unwrap();
    assert!(status.success(), "chown {} to postgres", path.display());
}

fn append(path: &Path, text: &str) {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    file.write_all(text.as_bytes()).unwrap();
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}
