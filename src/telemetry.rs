//! The metrics: every metric's name and description, and the process-wide
//! Prometheus recorder with its buckets. The names live here, so README's
//! table, the dashboards and the code cannot drift apart. No label ever
//! carries a secret: labels are the SDKAppID, outcomes, reasons and
//! ErrorCodes (so their number is bounded by the apps served). A leaf:
//! everything that counts imports it, and it imports nothing from the crate.

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const JOBS_RECEIVED: &str = "broadcast_jobs_received_total";
pub const JOBS_DELIVERED: &str = "broadcast_jobs_delivered_total";
pub const JOBS_ACKED_KNOWN: &str = "broadcast_jobs_already_settled_total";
pub const JOBS_SUPERSEDED: &str = "broadcast_jobs_superseded_total";
pub const RECEIPTS: &str = "broadcast_receipts_total";
pub const JOBS_DEAD_LETTERED: &str = "broadcast_jobs_dead_lettered_total";
pub const CALLS: &str = "broadcast_calls_total";
pub const CALL_SECONDS: &str = "broadcast_call_duration_seconds";
pub const CALL_BYTES: &str = "broadcast_call_bytes";
pub const CALL_JOBS: &str = "broadcast_call_jobs";
pub const PERMIT_WAIT_SECONDS: &str = "broadcast_permit_wait_seconds";
pub const RETRIES: &str = "broadcast_retries_total";
pub const OLDEST_UNSETTLED_SECONDS: &str = "broadcast_oldest_unsettled_job_age_seconds";
pub const APP_ACTIVE: &str = "broadcast_app_active";
pub const APP_SERVED: &str = "broadcast_app_served";
pub const CONNECTED: &str = "broadcast_broker_connected";
pub const HALTED: &str = "broadcast_halted";
pub const LEDGER_DOWN: &str = "broadcast_ledger_down";
pub const RATE: &str = "broadcast_rate_calls_per_second";
pub const LEDGER_ROUND_TRIPS: &str = "broadcast_ledger_round_trips_total";
pub const LEDGER_SECONDS: &str = "broadcast_ledger_seconds";
pub const BACKLOG_JOBS: &str = "broadcast_backlog_jobs";

/// The label every metric about one app carries.
pub const SDKAPPID: &str = "sdkappid";

/// Installs the process-wide Prometheus recorder. Call once, at start.
pub fn install_recorder() -> Result<PrometheusHandle, metrics_exporter_prometheus::BuildError> {
    let seconds = [
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    ];
    let bytes = [
        500.0, 1000.0, 2000.0, 4000.0, 8000.0, 10000.0, 11000.0, 11500.0, 12000.0,
    ];
    let jobs = [1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 150.0, 200.0];
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(CALL_SECONDS.into()), &seconds)?
        .set_buckets_for_metric(Matcher::Full(LEDGER_SECONDS.into()), &seconds)?
        .set_buckets_for_metric(Matcher::Full(PERMIT_WAIT_SECONDS.into()), &seconds)?
        .set_buckets_for_metric(Matcher::Full(CALL_BYTES.into()), &bytes)?
        .set_buckets_for_metric(Matcher::Full(CALL_JOBS.into()), &jobs)?
        .install_recorder()
}

/// Describes every metric, for the `# HELP` lines.
pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        JOBS_RECEIVED,
        "Jobs received from the jobs queue (redeliveries included)"
    );
    describe_counter!(
        JOBS_DELIVERED,
        "Jobs acked after the service took their call"
    );
    describe_counter!(
        JOBS_SUPERSEDED,
        "Jobs a later job of their latest-wins key replaced before they were sent, acked unsent"
    );
    describe_counter!(
        RECEIPTS,
        "Receipts published to producers' reply_to, by result (confirmed, unroutable, failed)"
    );
    describe_counter!(
        JOBS_ACKED_KNOWN,
        "Redelivered jobs the ledger knew as settled, acked without a call"
    );
    describe_counter!(
        JOBS_DEAD_LETTERED,
        "Jobs dead-lettered, by reason and ErrorCode"
    );
    describe_counter!(CALLS, "Call attempts, by outcome and ErrorCode");
    describe_histogram!(CALL_SECONDS, Unit::Seconds, "Time of one call attempt");
    describe_histogram!(CALL_BYTES, Unit::Bytes, "Body size of each call");
    describe_histogram!(CALL_JOBS, "Jobs merged into each call");
    describe_histogram!(
        PERMIT_WAIT_SECONDS,
        Unit::Seconds,
        "Time the sender waited for a permit"
    );
    describe_counter!(RETRIES, "Attempts after the first, by kind");
    describe_gauge!(
        OLDEST_UNSETTLED_SECONDS,
        Unit::Seconds,
        "Age of the oldest job held and not yet settled"
    );
    describe_gauge!(
        APP_ACTIVE,
        "1 on the replica sending for the app (its session received the app's jobs), 0 elsewhere"
    );
    describe_gauge!(
        APP_SERVED,
        "1 while this process serves the app (it is in the apps file), 0 once it was removed"
    );
    describe_gauge!(CONNECTED, "1 while connected to the broker and consuming");
    describe_gauge!(HALTED, "1 while sending is stopped by an app-wide fault");
    describe_gauge!(
        LEDGER_DOWN,
        "1 while sending is stopped because the ledger is unreachable"
    );
    describe_gauge!(RATE, "The rate the token bucket runs at now");
    describe_gauge!(
        BACKLOG_JOBS,
        "Jobs ready in the app's jobs queue, as the broker counted them last (every few seconds)"
    );
    describe_counter!(
        LEDGER_ROUND_TRIPS,
        "Statements sent to the ledger database, each a round trip"
    );
    describe_histogram!(
        LEDGER_SECONDS,
        Unit::Seconds,
        "Time of each ledger operation, its round trips together"
    );
}
