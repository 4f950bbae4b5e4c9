//! The benchmark report: a Markdown table of figures, the machine it ran on,
//! and its section of BENCHMARKS.md.

/// Replaces (or appends) the section `name` of a Markdown file, between
/// `<!-- name:start -->` and `<!-- name:end -->`.
pub fn write_section(path: &str, name: &str, content: &str) {
    let start = format!("<!-- {name}:start -->");
    let end = format!("<!-- {name}:end -->");
    let block = format!("{start}\n{}\n{end}", content.trim_end());
    let text = std::fs::read_to_string(path).unwrap_or_else(|_| "# Benchmarks\n".to_string());
    let text = match (text.find(&start), text.find(&end)) {
        (Some(a), Some(b)) if a < b => format!("{}{}{}", &text[..a], block, &text[b + end.len()..]),
        _ => format!("{}\n\n{}\n", text.trim_end(), block),
    };
    std::fs::write(path, text).unwrap();
}

/// A two-column Markdown table of a benchmark's figures.
pub fn markdown_table(rows: &[(String, String)]) -> String {
    let mut table = String::from("| figure | value |\n|---|---|\n");
    for (figure, value) in rows {
        table.push_str(&format!("| {figure} | {value} |\n"));
    }
    table
}

/// The machine a benchmark ran on, in one line.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0 / 1024.0);
    let rabbit = std::process::Command::new("rabbitmqctl")
        .arg("version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "unknown".into());
    format!("{cores} cores ({cpu}), {mem_gib:.0} GiB, RabbitMQ {rabbit} and PostgreSQL on the same machine, release build")
}

/// Today's date (UTC) without a date crate.
pub fn today() -> String {
    let days = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        / 86_400;
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}
