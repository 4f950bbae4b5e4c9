//! The files under `deploy/` that operators import (the Grafana dashboard,
//! the Prometheus alerts and their unit tests) name only metrics the worker
//! exports, and the dashboard is one Grafana can import. No broker needed.

use std::collections::BTreeSet;
use std::path::Path;

use broadcast_worker::telemetry;

const DASHBOARD: &str = "deploy/grafana/broadcast-worker.json";
const ALERTS: &str = "deploy/prometheus/alerts.yml";
const ALERTS_TEST: &str = "deploy/prometheus/alerts_test.yml";

/// The jobs waiting in an app's queue as the broker counts them.
const BACKLOG_JOBS: &str = "broadcast_backlog_jobs";

/// Every series name the worker exports: each metric's name, and for a
/// histogram its `_bucket`, `_sum` and `_count` (a query of the histogram's
/// own name finds nothing). With `families`, histograms' own names too, as
/// descriptions name them.
fn exported(families: bool) -> BTreeSet<String> {
    let plain = [
        telemetry::JOBS_RECEIVED,
        telemetry::JOBS_DELIVERED,
        telemetry::JOBS_ACKED_KNOWN,
        telemetry::JOBS_DEAD_LETTERED,
        telemetry::CALLS,
        telemetry::RETRIES,
        telemetry::OLDEST_UNSETTLED_SECONDS,
        telemetry::APP_ACTIVE,
        telemetry::APP_SERVED,
        telemetry::CONNECTED,
        telemetry::HALTED,
        telemetry::LEDGER_DOWN,
        telemetry::RATE,
        telemetry::LEDGER_ROUND_TRIPS,
        BACKLOG_JOBS,
    ];
    let histograms = [
        telemetry::CALL_SECONDS,
        telemetry::CALL_BYTES,
        telemetry::CALL_JOBS,
        telemetry::PERMIT_WAIT_SECONDS,
        telemetry::LEDGER_SECONDS,
    ];
    let mut names: BTreeSet<String> = plain.iter().map(|n| n.to_string()).collect();
    for histogram in histograms {
        if families {
            names.insert(histogram.to_string());
        }
        for suffix in ["_bucket", "_sum", "_count"] {
            names.insert(format!("{histogram}{suffix}"));
        }
    }
    names
}

/// Every word of `text` that starts with `broadcast_`: a metric name in
/// PromQL, in a series of a promtool test, or in a description.
fn metric_names(text: &str) -> BTreeSet<String> {
    let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut names = BTreeSet::new();
    for (at, _) in text.match_indices("broadcast_") {
        if text[..at].chars().next_back().is_some_and(is_name) {
            continue;
        }
        let end = text[at..]
            .find(|c| !is_name(c))
            .map_or(text.len(), |n| at + n);
        // A colon may be in a name, not at its end ("... seconds: near").
        names.insert(text[at..end].trim_end_matches(':').to_string());
    }
    names
}

/// The series names in `text` the worker does not export.
fn unknown(text: &str) -> Vec<String> {
    unknown_of(text, false)
}

/// The names in `text` the worker does not export, histograms' own names
/// allowed when `families`.
fn unknown_of(text: &str, families: bool) -> Vec<String> {
    let exported = exported(families);
    metric_names(text)
        .into_iter()
        .filter(|name| !exported.contains(name))
        .collect()
}

fn read(path: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn dashboard() -> serde_json::Value {
    serde_json::from_str(&read(DASHBOARD)).unwrap_or_else(|e| panic!("{DASHBOARD}: {e}"))
}

/// Every panel, those inside collapsed rows too.
fn panels(dashboard: &serde_json::Value) -> Vec<&serde_json::Value> {
    let mut all = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        all.push(panel);
        if let Some(inner) = panel["panels"].as_array() {
            all.extend(inner);
        }
    }
    all
}

#[test]
fn the_scan_finds_a_misspelled_metric() {
    let expr = "sum by (sdkappid) (rate(broadcast_calls_totl{outcome=\"rate_limited\"}[5m])) \
                / max by (sdkappid) (broadcast_rate_calls_per_second)";
    assert_eq!(unknown(expr), ["broadcast_calls_totl"]);
    assert_eq!(
        unknown("broadcast_call_bytes_sum / broadcast_call_bytes_count / broadcast_call_bytes_max"),
        ["broadcast_call_bytes_max"]
    );
    assert!(unknown("up{job=\"broadcast-worker\"} and broadcast_halted == 1").is_empty());
    // A histogram's own name is a family, not a series a query finds.
    assert_eq!(
        unknown("rate(broadcast_call_bytes[5m])"),
        ["broadcast_call_bytes"]
    );
    assert!(unknown_of("the body bytes (broadcast_call_bytes): near", true).is_empty());
}

#[test]
fn the_dashboard_uses_only_exported_metrics() {
    let dashboard = dashboard();
    let mut exprs = Vec::new();
    for panel in panels(&dashboard) {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap_or_else(|| {
                panic!("panel {:?}: a target without a PromQL expr", panel["title"])
            });
            exprs.push(expr.to_string());
        }
    }
    assert!(exprs.len() >= 10, "{} queries", exprs.len());
    for expr in &exprs {
        assert!(
            !metric_names(expr).is_empty(),
            "a query without a broadcast metric: {expr}"
        );
        assert_eq!(unknown(expr), Vec::<String>::new(), "in {expr}");
    }
    // The variable's query and every description too.
    assert_eq!(unknown_of(&read(DASHBOARD), true), Vec::<String>::new());
}

#[test]
fn the_dashboard_is_importable_with_a_row_per_app() {
    let dashboard = dashboard();
    assert!(dashboard["schemaVersion"].as_u64().expect("schemaVersion") >= 36);
    let inputs = dashboard["__inputs"].as_array().expect("__inputs");
    assert!(
        inputs
            .iter()
            .any(|i| i["name"] == "DS_PROMETHEUS" && i["pluginId"] == "prometheus"),
        "no DS_PROMETHEUS input: {inputs:?}"
    );

    let variables = dashboard["templating"]["list"]
        .as_array()
        .expect("templating");
    let app = variables
        .iter()
        .find(|v| v["name"] == "sdkappid")
        .expect("the sdkappid variable");
    assert_eq!(app["type"], "query");
    assert_eq!(
        (app["multi"].clone(), app["includeAll"].clone()),
        (true.into(), true.into())
    );
    let query = "label_values(broadcast_rate_calls_per_second, sdkappid)";
    assert_eq!(app["definition"], query);
    assert_eq!(app["query"]["query"], query);

    let all = panels(&dashboard);
    let repeated: Vec<_> = all
        .iter()
        .filter(|p| p["type"] == "row" && p["repeat"] == "sdkappid")
        .collect();
    assert_eq!(repeated.len(), 1, "one row repeated per app");

    let mut ids = BTreeSet::new();
    for panel in &all {
        let id = panel["id"].as_u64().expect("a panel id");
        assert!(ids.insert(id), "panel id {id} twice");
        let grid = &panel["gridPos"];
        for key in ["x", "y", "w", "h"] {
            assert!(grid[key].is_u64(), "panel {id}: gridPos.{key}");
        }
        if panel["type"] != "row" {
            assert_eq!(panel["datasource"]["uid"], "${DS_PROMETHEUS}", "panel {id}");
            for target in panel["targets"].as_array().expect("targets") {
                assert_eq!(
                    target["datasource"]["uid"], "${DS_PROMETHEUS}",
                    "panel {id}"
                );
            }
        }
    }
    let titles: Vec<&str> = all.iter().filter_map(|p| p["title"].as_str()).collect();
    for title in [
        "Quota used",
        "Mean fill of calls",
        "Backlog",
        "Calls by outcome",
        "Dead letters by reason",
        "Status",
    ] {
        assert!(titles.contains(&title), "no panel {title:?}: {titles:?}");
    }
}

#[test]
fn the_alerts_use_only_exported_metrics() {
    for path in [ALERTS, ALERTS_TEST] {
        let text = read(path);
        assert!(!metric_names(&text).is_empty(), "{path}: no metric");
        assert_eq!(unknown(&text), Vec::<String>::new(), "in {path}");
    }
}

#[test]
fn every_alert_waits_names_its_app_and_has_a_severity() {
    let text = read(ALERTS);
    let alerts: Vec<&str> = text.split("- alert: ").skip(1).collect();
    assert_eq!(alerts.len(), 6, "the six alerts of issue 14");
    for alert in alerts {
        let name = alert.lines().next().unwrap_or_default().trim();
        for key in ["expr:", "for:", "severity:", "summary:", "description:"] {
            assert!(alert.contains(key), "alert {name}: no {key}");
        }
        assert!(
            alert.matches("{{ $labels.sdkappid }}").count() >= 2,
            "alert {name}: the summary and the description name the app"
        );
        assert!(
            read(ALERTS_TEST).contains(&format!("alertname: {name}\n")),
            "alert {name}: no unit test"
        );
    }
}

/// The compose file's workers are given every node of its cluster, in the
/// form the worker parses, and the nodes' peer discovery lists the same
/// nodes (`docker-compose config` checks the file's syntax in CI).
#[test]
fn compose_runs_a_three_node_cluster_and_the_workers_know_every_node() {
    let compose = read("docker-compose.yml");
    let cluster = read("deploy/rabbitmq/cluster.conf");
    let url = compose
        .lines()
        .find_map(|line| line.trim().strip_prefix("AMQP_URL: "))
        .expect("the workers' AMQP_URL");
    let nodes = broadcast_worker::broker::Nodes::parse(url).expect("a list the worker parses");
    assert_eq!(nodes.labels().len(), 3, "{url}");
    for n in 1..=3 {
        let host = format!("rabbitmq-{n}");
        assert!(
            compose.contains(&format!("\n  {host}:\n")),
            "service {host}"
        );
        assert!(
            compose.contains(&format!("hostname: {host}\n")),
            "{host}'s node name"
        );
        assert!(
            url.contains(&format!("@{host}:5672/")),
            "{host} in AMQP_URL"
        );
        assert!(
            cluster.contains(&format!("= rabbit@{host}\n")),
            "{host} in peer discovery"
        );
    }
}
