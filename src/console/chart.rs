//! The app page's chart, drawn on the server as SVG (no script): calls per
//! minute over the last hour as bars against the quota's line (rate x 60),
//! and the mean fill of each minute's calls as a line on a 0-100 % scale.
//! Colours come from the stylesheet's classes.

use maud::{html, Markup};

use crate::status::history::MinutePoint;

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 170.0;
const LEFT: f64 = 44.0;
const RIGHT: f64 = 40.0;
const TOP: f64 = 12.0;
const BOTTOM: f64 = 24.0;

fn plot_width() -> f64 {
    WIDTH - LEFT - RIGHT
}

fn plot_height() -> f64 {
    HEIGHT - TOP - BOTTOM
}

/// The x of the `i`-th of `n` minutes' left edge.
fn x_of(i: usize, n: usize) -> f64 {
    LEFT + plot_width() * i as f64 / n.max(1) as f64
}

/// The y of `value` on a scale from 0 to `max`.
fn y_of(value: f64, max: f64) -> f64 {
    TOP + plot_height() * (1.0 - (value / max).clamp(0.0, 1.0))
}

fn r1(v: f64) -> String {
    format!("{v:.1}")
}

/// The polyline segments of the fill line: runs of minutes with calls.
fn fill_segments(points: &[MinutePoint]) -> Vec<String> {
    let n = points.len();
    let step = plot_width() / n.max(1) as f64;
    let mut segments = Vec::new();
    let mut current = Vec::new();
    for (i, point) in points.iter().enumerate() {
        match point.fill {
            Some(fill) => current.push(format!(
                "{},{}",
                r1(x_of(i, n) + step / 2.0),
                r1(y_of(fill, 1.0))
            )),
            None if !current.is_empty() => segments.push(std::mem::take(&mut current).join(" ")),
            None => {}
        }
    }
    if !current.is_empty() {
        segments.push(current.join(" "));
    }
    segments
}

/// The chart of `points` (oldest first) for an app at `rate` calls per second.
pub fn chart(points: &[MinutePoint], rate: f64) -> Markup {
    let n = points.len();
    let quota = (rate * 60.0).max(0.0);
    let busiest = points.iter().map(|p| p.calls).max().unwrap_or(0) as f64;
    let max = busiest.max(quota).max(1.0);
    let step = plot_width() / n.max(1) as f64;
    let bar = (step * 0.7).max(1.0);
    let base = TOP + plot_height();
    let label = format!(
        "Calls per minute over the last hour (at most {quota:.0} at the rate in force) and the mean fill of each minute's calls"
    );
    html! {
        svg xmlns="http://www.w3.org/2000/svg" class="chart" id="app-chart" data-test="app-chart"
            viewBox=(format!("0 0 {WIDTH} {HEIGHT}")) role="img" aria-label=(label) {
            line class="axis" x1=(LEFT) y1=(r1(base)) x2=(WIDTH - RIGHT) y2=(r1(base)) {}
            @if quota > 0.0 {
                line class="quota" x1=(LEFT) x2=(WIDTH - RIGHT)
                    y1=(r1(y_of(quota, max))) y2=(r1(y_of(quota, max))) {}
                text class="tick" x=(LEFT - 4.0) y=(r1(y_of(quota, max) + 4.0)) text-anchor="end" { (format!("{quota:.0}")) }
            }
            text class="tick" x=(LEFT - 4.0) y=(r1(base)) text-anchor="end" { "0" }
            @if max > quota {
                text class="tick" x=(LEFT - 4.0) y=(r1(TOP + 8.0)) text-anchor="end" { (format!("{max:.0}")) }
            }
            text class="tick fill-tick" x=(WIDTH - RIGHT + 4.0) y=(r1(TOP + 8.0)) { "100%" }
            text class="tick fill-tick" x=(WIDTH - RIGHT + 4.0) y=(r1(base)) { "0%" }
            @for (i, point) in points.iter().enumerate() {
                @if point.calls > 0 {
                    @let top = y_of(f64::from(point.calls), max);
                    rect class="bar" x=(r1(x_of(i, n) + (step - bar) / 2.0)) y=(r1(top))
                        width=(r1(bar)) height=(r1(base - top)) {
                        title { (format!("{} min ago: {} call(s), fill {}", n - 1 - i, point.calls,
                            point.fill.map_or("-".into(), |f| format!("{:.0}%", f * 100.0)))) }
                    }
                }
            }
            @for segment in fill_segments(points) {
                polyline class="fill-line" points=(segment) {}
            }
            @for (i, point) in points.iter().enumerate() {
                @if let Some(fill) = point.fill {
                    circle class="fill-dot" r="2.5" cx=(r1(x_of(i, n) + step / 2.0)) cy=(r1(y_of(fill, 1.0))) {}
                }
            }
            text class="tick" x=(LEFT) y=(HEIGHT - 6.0) { "60 min ago" }
            text class="tick" x=(r1(LEFT + plot_width() / 2.0)) y=(HEIGHT - 6.0) text-anchor="middle" { "30 min ago" }
            text class="tick" x=(WIDTH - RIGHT) y=(HEIGHT - 6.0) text-anchor="end" { "now" }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn points(calls: &[(u32, u64)]) -> Vec<MinutePoint> {
        let mut out: Vec<MinutePoint> = (0..60)
            .map(|i| MinutePoint {
                start_ms: i * 60_000,
                calls: 0,
                bytes: 0,
                fill: None,
            })
            .collect();
        for (i, (c, b)) in calls.iter().enumerate() {
            out[59 - i] = MinutePoint {
                calls: *c,
                bytes: *b,
                fill: (*c > 0).then(|| *b as f64 / f64::from(*c) / 12_000.0),
                ..out[59 - i]
            };
        }
        out
    }

    #[test]
    fn an_empty_hour_draws_axes_and_no_bars() {
        let svg = chart(&points(&[]), 1.0).into_string();
        assert!(svg.starts_with("<svg"), "{svg}");
        assert!(svg.contains("id=\"app-chart\""));
        assert_eq!(svg.matches("class=\"bar\"").count(), 0);
        assert!(!svg.contains("polyline"));
        assert!(!svg.contains("NaN") && !svg.contains("inf"));
    }

    #[test]
    fn bars_scale_to_the_quota_and_fill_is_a_line() {
        // Now: 60 calls (the quota at rate 1) at 12,000 bytes; a minute
        // before: 30 calls half full; then a minute without calls.
        let svg = chart(
            &points(&[(60, 720_000), (30, 180_000), (0, 0), (6, 72_000)]),
            1.0,
        )
        .into_string();
        assert_eq!(svg.matches("class=\"bar\"").count(), 3);
        // The full bar reaches the top of the plot, the half one half way.
        let base = TOP + plot_height();
        assert!(svg.contains(&format!("y=\"{}\"", r1(TOP))), "{svg}");
        assert!(svg.contains(&format!("height=\"{}\"", r1(plot_height() / 2.0))));
        assert!(
            svg.contains(&format!("y1=\"{}\"", r1(TOP))),
            "the quota line"
        );
        // The minute without calls splits the fill line in two.
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert_eq!(svg.matches("class=\"fill-dot\"").count(), 3);
        assert!(svg.contains("0 min ago: 60 call(s), fill 100%"));
        assert!(svg.contains("1 min ago: 30 call(s), fill 50%"));
        assert!(base > TOP);
    }

    #[test]
    fn more_calls_than_the_quota_raise_the_scale() {
        let svg = chart(&points(&[(120, 0)]), 1.0).into_string();
        assert!(
            svg.contains(">120<"),
            "the top tick says the busiest minute"
        );
        assert!(svg.contains(&format!("y1=\"{}\"", r1(y_of(60.0, 120.0)))));
    }
}
