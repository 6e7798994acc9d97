//! The run report: a terminal table with the original's numbers beside ours, and under
//! `<dir>/` a self-contained `report.html` (inline SVG charts, no network resources), the main
//! chart as `throughput.png`, and `summary.json` with everything measured.
//!
//! Chart text needs a TrueType font (Debian `fonts-dejavu-core`); without one the charts are
//! drawn without axis labels and the HTML still names every series.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::Context as _;
use plotters::coord::Shift;
use plotters::prelude::*;
use serde::{Deserialize, Serialize};

use crate::stats::{LoadSummary, group};
use crate::verify::Verification;

/// The original's published result (Python prototype, k6, v5 architecture).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Original {
    /// Events stored.
    pub events: u64,
    /// Load duration, seconds.
    pub duration_s: f64,
    /// Requests per second.
    pub rps: f64,
    /// Success, percent.
    pub success_pct: f64,
    /// HTTP p95, ms.
    pub p95_ms: f64,
    /// Duplicates.
    pub duplicates: u64,
    /// End-to-end median, seconds.
    pub e2e_median_s: f64,
}

/// The numbers the original reported.
pub const ORIGINAL: Original = Original {
    events: 1_952_643,
    duration_s: 210.0,
    rps: 9_282.0,
    success_pct: 100.0,
    p95_ms: 418.0,
    duplicates: 0,
    e2e_median_s: 476.0,
};

/// One sample of the pipeline taken while the run goes on and drains.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Sample {
    /// Seconds since the load started.
    pub t: f64,
    /// Rows of the run in ClickHouse (when this sample read them).
    pub stored: Option<u64>,
    /// Consumer lag of the sinks' group, messages (when it could be read).
    pub lag: Option<i64>,
}

/// Everything a report shows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReportData {
    /// One line saying what ran where.
    pub title: String,
    /// The machine (cores, memory, OS).
    pub machine: String,
    /// The pipeline as run (ingest, sinks, ClickHouse, broker).
    pub setup: String,
    /// The load generator's summary.
    pub load: LoadSummary,
    /// The verifier's verdict.
    pub verification: Option<Verification>,
    /// Pipeline samples (stored rows, lag) over time.
    pub samples: Vec<Sample>,
    /// Seconds from the end of the load until every accepted event was stored.
    pub drain_s: Option<f64>,
}

/// Files a report was written to.
#[derive(Debug, Clone)]
pub struct ReportPaths {
    /// The HTML report.
    pub html: PathBuf,
    /// The throughput chart.
    pub png: PathBuf,
    /// All numbers.
    pub json: PathBuf,
}

impl ReportData {
    /// Whether the run proves what the demo promises: every request accepted and every
    /// accepted event stored exactly once.
    pub fn passed(&self) -> bool {
        self.load.requests > 0
            && self.load.requests_failed == 0
            && self.verification.as_ref().is_some_and(|v| v.ok)
    }
}

/// Writes `report.html`, `throughput.png` and `summary.json` under `dir`.
pub fn write(dir: &Path, data: &ReportData) -> anyhow::Result<ReportPaths> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let paths = ReportPaths {
        html: dir.join("report.html"),
        png: dir.join("throughput.png"),
        json: dir.join("summary.json"),
    };
    std::fs::write(&paths.json, serde_json::to_vec_pretty(data)?)
        .with_context(|| format!("write {}", paths.json.display()))?;
    let charts = charts(data);
    {
        let root = BitMapBackend::new(&paths.png, (1200, 500)).into_drawing_area();
        draw(root, &charts[0]).map_err(|e| anyhow::anyhow!("draw {}: {e}", paths.png.display()))?;
    }
    let mut svgs = Vec::new();
    for chart in &charts {
        let mut svg = String::new();
        {
            let root = SVGBackend::with_string(&mut svg, (960, 380)).into_drawing_area();
            draw(root, chart).map_err(|e| anyhow::anyhow!("draw {}: {e}", chart.title))?;
        }
        svgs.push(svg);
    }
    std::fs::write(&paths.html, html(data, &charts, &svgs))
        .with_context(|| format!("write {}", paths.html.display()))?;
    Ok(paths)
}

/// A named series of (seconds, value) points in one colour.
pub type Series = (String, RGBColor, Vec<(f64, f64)>);

/// One line chart.
#[derive(Debug, Clone)]
pub struct Chart {
    /// Title (also the HTML heading).
    pub title: String,
    /// What the y axis counts.
    pub y_desc: String,
    /// Named series of (seconds, value).
    pub series: Vec<Series>,
    /// Named horizontal reference lines.
    pub references: Vec<(String, RGBColor, f64)>,
}

const C_REQ: RGBColor = RGBColor(31, 119, 180);
const C_EVT: RGBColor = RGBColor(44, 160, 44);
const C_STORE: RGBColor = RGBColor(255, 127, 14);
const C_ORIG: RGBColor = RGBColor(150, 150, 150);
const C_P99: RGBColor = RGBColor(214, 39, 40);
const C_LAG: RGBColor = RGBColor(148, 103, 189);

/// The report's three charts: throughput, latency percentiles, consumer lag.
pub fn charts(data: &ReportData) -> Vec<Chart> {
    let tl = &data.load.timeline;
    let span = tl
        .last()
        .map(|s| s.t as f64 + 1.0)
        .into_iter()
        .chain(data.samples.last().map(|s| s.t))
        .fold(1.0, f64::max);
    // Long runs are drawn in bins of several seconds (at most ~400 points per line).
    let bin = (span / 400.0).ceil().max(1.0);
    let binned = |points: &mut dyn Iterator<Item = (f64, f64)>, mean: bool| -> Vec<(f64, f64)> {
        let mut sums: std::collections::BTreeMap<u64, (f64, u32)> = Default::default();
        for (t, v) in points {
            let e = sums.entry((t / bin) as u64).or_default();
            e.0 += v;
            e.1 += 1;
        }
        sums.into_iter()
            .map(|(k, (sum, n))| {
                let x = (k as f64 + 0.5) * bin;
                (x, if mean { sum / f64::from(n) } else { sum / bin })
            })
            .collect()
    };
    let requests = binned(
        &mut tl.iter().map(|s| (s.t as f64, s.requests as f64)),
        false,
    );
    let events = binned(
        &mut tl.iter().map(|s| (s.t as f64, s.events_ok as f64)),
        false,
    );
    let stored: Vec<(f64, u64)> = data
        .samples
        .iter()
        .filter_map(|s| s.stored.map(|n| (s.t, n)))
        .collect();
    // Rows stored per second: the growth of the stored count between samples, spread over
    // the bins; the count only grows, so a replica answering a little behind counts as 0.
    let mut stored_points = Vec::new();
    let mut high = 0u64;
    for w in stored.windows(2) {
        let dt = w[1].0 - w[0].0;
        if dt > 0.0 {
            let now = w[1].1.max(high);
            let grown = now.saturating_sub(w[0].1.max(high).min(now));
            high = now;
            stored_points.push((w[1].0, grown as f64));
        }
    }
    let stored_rate = binned(&mut stored_points.into_iter(), false);
    let pct = |f: fn(&crate::stats::SecondStats) -> f64| {
        binned(
            &mut tl
                .iter()
                .filter(|s| s.requests > 0)
                .map(|s| (s.t as f64, f(s))),
            true,
        )
    };
    let lag_points = binned(
        &mut data
            .samples
            .iter()
            .filter_map(|s| s.lag.map(|l| (s.t, l as f64))),
        true,
    );
    let mut throughput = Chart {
        title: "Throughput".into(),
        y_desc: "per second".into(),
        series: vec![("HTTP requests/s".into(), C_REQ, requests)],
        references: vec![("original: 9,282 requests/s".into(), C_ORIG, ORIGINAL.rps)],
    };
    if data.load.batch > 1 {
        throughput
            .series
            .push(("events accepted/s".into(), C_EVT, events));
    }
    throughput
        .series
        .push(("rows stored/s (ClickHouse)".into(), C_STORE, stored_rate));
    let latency = Chart {
        title: if bin > 1.0 {
            format!("HTTP latency percentiles (each second's, averaged over {bin:.0} s)")
        } else {
            "HTTP latency percentiles per second".to_owned()
        },
        y_desc: "milliseconds".into(),
        series: vec![
            ("p50".into(), C_EVT, pct(|s| s.latency.p50)),
            ("p95".into(), C_REQ, pct(|s| s.latency.p95)),
            ("p99".into(), C_P99, pct(|s| s.latency.p99)),
        ],
        references: Vec::new(),
    };
    let lag = Chart {
        title: "Consumer lag and rows stored".into(),
        y_desc: "messages / rows".into(),
        series: vec![
            ("consumer lag (messages)".into(), C_LAG, lag_points),
            (
                "rows stored (cumulative)".into(),
                C_STORE,
                stored.iter().map(|&(t, n)| (t, n as f64)).collect(),
            ),
        ],
        references: Vec::new(),
    };
    vec![throughput, latency, lag]
}

fn font_available() -> bool {
    static FONT: OnceLock<bool> = OnceLock::new();
    *FONT.get_or_init(|| {
        const PATHS: [&str; 4] = [
            "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
            "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
            "/usr/share/fonts/truetype/freefont/FreeSans.ttf",
            "/usr/share/fonts/truetype/noto/NotoSans-Regular.ttf",
        ];
        for path in PATHS {
            if let Ok(bytes) = std::fs::read(path) {
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return true;
                }
            }
        }
        false
    })
}

fn draw<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, chart: &Chart) -> Result<(), String>
where
    DB::ErrorType: 'static,
{
    let text = font_available();
    let e = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    root.fill(&WHITE).map_err(e)?;
    let points = chart.series.iter().flat_map(|(_, _, p)| p.iter());
    let x_max = points.clone().map(|p| p.0).fold(1.0, f64::max).ceil();
    let y_max = points
        .map(|p| p.1)
        .chain(chart.references.iter().map(|r| r.2))
        .fold(1.0, f64::max)
        * 1.1;
    let mut builder = ChartBuilder::on(&root);
    builder.margin(14);
    if text {
        builder
            .caption(&chart.title, ("sans-serif", 20))
            .x_label_area_size(36)
            .y_label_area_size(70);
    }
    let mut ctx = builder
        .build_cartesian_2d(0f64..x_max, 0f64..y_max)
        .map_err(e)?;
    let mut mesh = ctx.configure_mesh();
    mesh.light_line_style(RGBColor(235, 235, 235));
    if text {
        mesh.x_desc("seconds since the load started")
            .y_desc(chart.y_desc.as_str())
            .label_style(("sans-serif", 13))
            .y_label_formatter(&|v| short(*v));
    } else {
        mesh.x_labels(0).y_labels(0);
    }
    mesh.draw().map_err(e)?;
    for (name, color, value) in &chart.references {
        let s = ctx
            .draw_series(DashedLineSeries::new(
                vec![(0.0, *value), (x_max, *value)],
                8,
                6,
                color.stroke_width(2),
            ))
            .map_err(e)?;
        let color = *color;
        s.label(name.as_str()).legend(move |(x, y)| {
            PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
        });
    }
    for (name, color, points) in &chart.series {
        let s = ctx
            .draw_series(LineSeries::new(
                points.iter().copied(),
                color.stroke_width(2),
            ))
            .map_err(e)?;
        let color = *color;
        s.label(name.as_str()).legend(move |(x, y)| {
            PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3))
        });
    }
    if text {
        ctx.configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(200, 200, 200))
            .label_font(("sans-serif", 13))
            .draw()
            .map_err(e)?;
    }
    root.present().map_err(e)?;
    Ok(())
}

fn short(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if v >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

fn secs(s: f64) -> String {
    if s >= 120.0 {
        format!("{}m{:02}s", (s / 60.0) as u64, (s % 60.0) as u64)
    } else if s >= 10.0 {
        format!("{s:.0} s")
    } else {
        format!("{s:.2} s")
    }
}

/// Rows of the comparison: (what, original, ours).
pub fn comparison(data: &ReportData) -> Vec<(String, String, String)> {
    let l = &data.load;
    let v = data.verification.as_ref();
    let na = || "—".to_owned();
    vec![
        (
            "events stored (unique)".into(),
            group(ORIGINAL.events),
            v.map(|v| group(v.unique_ids)).unwrap_or_else(na),
        ),
        (
            "events accepted (2xx)".into(),
            group(ORIGINAL.events),
            group(l.events_accepted),
        ),
        (
            "load duration".into(),
            secs(ORIGINAL.duration_s),
            secs(l.duration_s),
        ),
        (
            "HTTP requests/s".into(),
            group(ORIGINAL.rps as u64),
            group(l.rps.round() as u64),
        ),
        (
            "events/s".into(),
            group(ORIGINAL.rps as u64),
            group(l.events_per_s.round() as u64),
        ),
        (
            "success".into(),
            format!("{:.0}%", ORIGINAL.success_pct),
            format!("{:.2}%", l.success_pct),
        ),
        (
            "HTTP p95".into(),
            format!("{:.0} ms", ORIGINAL.p95_ms),
            format!("{:.1} ms", l.latency.p95),
        ),
        (
            "HTTP p99 / max".into(),
            na(),
            format!("{:.1} / {:.1} ms", l.latency.p99, l.latency.max),
        ),
        (
            "duplicates".into(),
            group(ORIGINAL.duplicates),
            v.map(|v| group(v.duplicates)).unwrap_or_else(na),
        ),
        (
            "lost (accepted, not stored)".into(),
            "not measured".into(),
            v.map(|v| group(v.lost)).unwrap_or_else(na),
        ),
        (
            "e2e median (ingest → stored)".into(),
            format!("~{:.0} s", ORIGINAL.e2e_median_s),
            v.map(|v| secs(v.e2e_ms.p50 / 1000.0)).unwrap_or_else(na),
        ),
        (
            "e2e p99 (ingest → stored)".into(),
            na(),
            v.map(|v| secs(v.e2e_ms.p99 / 1000.0)).unwrap_or_else(na),
        ),
        (
            "replicas consistent".into(),
            na(),
            v.map(|v| if v.replicas_consistent { "yes" } else { "NO" }.to_owned())
                .unwrap_or_else(na),
        ),
    ]
}

/// The terminal table: the original's numbers beside ours.
pub fn table(data: &ReportData) -> String {
    let rows = comparison(data);
    let w0 = rows
        .iter()
        .map(|r| r.0.chars().count())
        .max()
        .unwrap_or(0)
        .max(6);
    let w1 = rows
        .iter()
        .map(|r| r.1.chars().count())
        .max()
        .unwrap_or(0)
        .max(24);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "  {:<w0$}  {:>w1$}  ess (this run)",
        "", "original (Python, k6)"
    );
    let _ = writeln!(s, "  {}", "─".repeat(w0 + w1 + 20));
    for (what, orig, ours) in rows {
        let pad0 = w0 - what.chars().count();
        let pad1 = w1 - orig.chars().count();
        let _ = writeln!(
            s,
            "  {what}{}  {}{orig}  {ours}",
            " ".repeat(pad0),
            " ".repeat(pad1)
        );
    }
    let _ = writeln!(
        s,
        "  result: {}",
        if data.passed() {
            "PASS — 100% accepted, stored = unique = accepted"
        } else {
            "FAIL — see the verification above"
        }
    );
    s
}

fn esc(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The HTML report: the head and verdict, the key figures, the comparison, the charts, the
/// load and the verification.
fn html(data: &ReportData, charts: &[Chart], svgs: &[String]) -> String {
    let mut h = String::new();
    html_head(&mut h, data);
    html_kpis(&mut h, data);
    html_comparison(&mut h, data);
    html_charts(&mut h, charts, svgs);
    html_load(&mut h, &data.load);
    if let Some(v) = &data.verification {
        html_verification(&mut h, v, data.drain_s);
    }
    h.push_str("<p class=\"legend\">Written by <code>ess demo</code>. All numbers are also in <code>summary.json</code> beside this file.</p>\n</body></html>\n");
    h
}

/// The document head, title and verdict.
fn html_head(h: &mut String, data: &ReportData) {
    let pass = data.passed();
    let _ = write!(
        h,
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>ess run {run}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:2rem auto;max-width:1000px;color:#222;padding:0 1rem}}
h1{{font-size:1.5rem;margin-bottom:.2rem}} h2{{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #ddd;padding-bottom:.2rem}}
.sub{{color:#666;margin-top:0}} table{{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums}}
td,th{{padding:.35rem .6rem;border-bottom:1px solid #eee;text-align:right}} td:first-child,th:first-child{{text-align:left}}
th{{background:#f6f6f6}} .verdict{{display:inline-block;padding:.4rem .9rem;border-radius:6px;font-weight:600;color:#fff;background:{color}}}
.kpis{{display:flex;flex-wrap:wrap;gap:.8rem;margin:1rem 0}} .kpi{{flex:1 1 150px;border:1px solid #e3e3e3;border-radius:8px;padding:.6rem .8rem}}
.kpi b{{display:block;font-size:1.4rem}} .kpi span{{color:#666;font-size:.85rem}} svg{{max-width:100%;height:auto}}
code{{background:#f3f3f3;padding:.1rem .3rem;border-radius:3px}} .legend{{color:#555;font-size:.9rem}}
</style></head><body>
<h1>ess run {run}</h1>
<p class="sub">{title}<br>{machine}<br>{setup}</p>
<p><span class="verdict">{verdict}</span></p>
"#,
        run = data.load.run,
        title = esc(&data.title),
        machine = esc(&data.machine),
        setup = esc(&data.setup),
        color = if pass { "#2c9f45" } else { "#c62828" },
        verdict = if pass {
            "PASS: 100% accepted, stored = unique = accepted"
        } else {
            "FAIL"
        },
    );
}

/// The key figures as boxes.
fn html_kpis(h: &mut String, data: &ReportData) {
    let v = data.verification.as_ref();
    let kpis = [
        (group(data.load.events_accepted), "events accepted"),
        (
            v.map(|v| group(v.unique_ids)).unwrap_or_else(|| "—".into()),
            "unique ids stored",
        ),
        (format!("{:.0}", data.load.rps), "HTTP requests/s"),
        (format!("{:.1} ms", data.load.latency.p95), "HTTP p95"),
        (
            v.map(|v| secs(v.e2e_ms.p50 / 1000.0))
                .unwrap_or_else(|| "—".into()),
            "e2e median",
        ),
        (
            v.map(|v| group(v.lost + v.duplicates))
                .unwrap_or_else(|| "—".into()),
            "lost + duplicated",
        ),
    ];
    h.push_str("<div class=\"kpis\">");
    for (value, what) in kpis {
        let _ = write!(
            h,
            "<div class=\"kpi\"><b>{}</b><span>{}</span></div>",
            esc(&value),
            what
        );
    }
    h.push_str("</div>\n");
}

/// The original's figures beside this run's.
fn html_comparison(h: &mut String, data: &ReportData) {
    h.push_str("<h2>Beside the original</h2>\n<table><tr><th></th><th>original (Python, k6)</th><th>ess (this run)</th></tr>\n");
    for (what, orig, ours) in comparison(data) {
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&what),
            esc(&orig),
            esc(&ours)
        );
    }
    h.push_str("</table>\n");
}

/// Each chart with its legend.
fn html_charts(h: &mut String, charts: &[Chart], svgs: &[String]) {
    for (chart, svg) in charts.iter().zip(svgs) {
        let _ = write!(
            h,
            "<h2>{}</h2>\n<div>{svg}</div>\n<p class=\"legend\">",
            esc(&chart.title)
        );
        let names: Vec<String> = chart
            .series
            .iter()
            .map(|(n, c, _)| {
                format!(
                    "<span style=\"color:rgb({},{},{})\">■</span> {}",
                    c.0,
                    c.1,
                    c.2,
                    esc(n)
                )
            })
            .chain(
                chart
                    .references
                    .iter()
                    .map(|(n, _, _)| format!("┄ {}", esc(n))),
            )
            .collect();
        h.push_str(&names.join(" &nbsp; "));
        h.push_str("</p>\n");
    }
}

/// The load generator's figures.
fn html_load(h: &mut String, l: &LoadSummary) {
    let _ = write!(
        h,
        "<h2>Load</h2>\n<p>Target <code>{}</code>, {} model: {}. Latency is measured {}.</p>\n<table>",
        esc(&l.target),
        match l.model {
            crate::plan::Model::Open => "open",
            crate::plan::Model::Closed => "closed",
        },
        esc(&l.shape),
        if l.corrected_for_coordinated_omission {
            "from each request's scheduled start (corrected for coordinated omission)"
        } else {
            "from each request's actual start"
        }
    );
    let lat = &l.latency;
    for (k, val) in [
        ("requests", group(l.requests)),
        ("requests answered 2xx", group(l.requests_ok)),
        ("requests failed", group(l.requests_failed)),
        ("events sent (re-sends included)", group(l.events_sent)),
        ("distinct events sent", group(l.unique_events)),
        ("events re-sent on purpose", group(l.resent)),
        ("duration", secs(l.duration_s)),
        (
            "latency min / mean / p50 / p90 / p95 / p99 / max",
            format!(
                "{:.2} / {:.2} / {:.2} / {:.2} / {:.2} / {:.2} / {:.2} ms",
                lat.min, lat.mean, lat.p50, lat.p90, lat.p95, lat.p99, lat.max
            ),
        ),
    ] {
        let _ = writeln!(h, "<tr><td>{k}</td><td>{}</td></tr>", esc(&val));
    }
    for (k, n) in &l.outcomes {
        let _ = writeln!(
            h,
            "<tr><td>outcome {}</td><td>{}</td></tr>",
            esc(k),
            group(*n)
        );
    }
    h.push_str("</table>\n");
}

/// The verifier's figures, per node, and every problem.
fn html_verification(h: &mut String, v: &Verification, drain_s: Option<f64>) {
    {
        let _ = write!(
            h,
            "<h2>Verification</h2>\n<p>{} on ClickHouse {}{}</p>\n<table>",
            esc(&v.table),
            esc(&v.server),
            drain_s
                .map(|d| format!(
                    "; the sinks finished storing {} after the load ended",
                    secs(d)
                ))
                .unwrap_or_default()
        );
        let e = &v.e2e_ms;
        for (k, val) in [
            ("accepted (2xx)", group(v.accepted)),
            ("stored rows", group(v.stored_rows)),
            ("unique ids", group(v.unique_ids)),
            (
                "duplicates (after FINAL)",
                format!("{} ({})", group(v.duplicates), group(v.duplicates_final)),
            ),
            ("duplicates counted", v.raw_count.describe()),
            ("lost", group(v.lost)),
            ("stored without a 2xx", group(v.stored_without_ack)),
            (
                "e2e ingest → stored p50 / p90 / p95 / p99 / max",
                format!(
                    "{:.0} / {:.0} / {:.0} / {:.0} / {:.0} ms",
                    e.p50, e.p90, e.p95, e.p99, e.max
                ),
            ),
            (
                "shards sum = table",
                format!("{} = {}", group(v.shard_sum), group(v.stored_rows)),
            ),
        ] {
            let _ = writeln!(h, "<tr><td>{k}</td><td>{}</td></tr>", esc(&val));
        }
        for n in &v.nodes {
            let _ = writeln!(
                h,
                "<tr><td>shard {} replica {} <code>{}</code></td><td>{}</td></tr>",
                n.shard,
                n.replica,
                esc(&n.url),
                group(n.rows)
            );
        }
        for l in &v.lost_first {
            let _ = writeln!(
                h,
                "<tr><td>lost</td><td>seq {} id {}</td></tr>",
                l.seq, l.id
            );
        }
        for p in &v.problems {
            let _ = writeln!(h, "<tr><td>problem</td><td>{}</td></tr>", esc(p));
        }
        h.push_str("</table>\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::RunId;
    use crate::plan::Model;
    use crate::stats::{LatencyMs, SecondStats};

    fn data() -> ReportData {
        let timeline: Vec<SecondStats> = (0..20)
            .map(|t| SecondStats {
                t,
                requests: 1000 + t * 10,
                ok: 1000 + t * 10,
                failed: 0,
                events_ok: 1000 + t * 10,
                latency: LatencyMs {
                    p50: 2.0,
                    p95: 5.0 + t as f64,
                    p99: 9.0,
                    ..LatencyMs::default()
                },
            })
            .collect();
        ReportData {
            title: "test <run>".into(),
            machine: "2 cores".into(),
            setup: "1 ingest, 2 sinks".into(),
            load: LoadSummary {
                run: RunId::from_u64(0xabc).unwrap(),
                target: "http://127.0.0.1:1".into(),
                model: Model::Closed,
                shape: "64 connections".into(),
                batch: 1,
                started_ms: 0,
                duration_s: 20.0,
                requests: 21_900,
                requests_ok: 21_900,
                requests_failed: 0,
                events_sent: 21_900,
                unique_events: 21_900,
                events_accepted: 21_900,
                resent: 0,
                rps: 1095.0,
                events_per_s: 1095.0,
                success_pct: 100.0,
                latency: LatencyMs::default(),
                corrected_for_coordinated_omission: false,
                outcomes: [("202".to_owned(), 21_900)].into_iter().collect(),
                interrupted: false,
                timeline,
            },
            verification: None,
            samples: (0..25u32)
                .map(|i| Sample {
                    t: f64::from(i),
                    stored: Some(u64::from(i) * 900),
                    lag: Some(100 - i64::from(i)),
                })
                .collect(),
            drain_s: Some(1.5),
        }
    }

    #[test]
    fn the_report_is_self_contained_and_has_every_chart() {
        let dir = tempfile::tempdir().unwrap();
        let paths = write(dir.path(), &data()).unwrap();
        let html = std::fs::read_to_string(&paths.html).unwrap();
        assert!(html.contains("<svg"));
        assert_eq!(html.matches("<svg").count(), 3);
        assert!(html.contains("test &lt;run&gt;"));
        assert!(!html.contains("src=\"http"), "no network resources");
        assert!(!html.contains("<script src") && !html.contains("<link"));
        assert!(
            html.contains("21,900"),
            "this run's accepted events are shown"
        );
        let png = std::fs::read(&paths.png).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        let back: ReportData =
            serde_json::from_slice(&std::fs::read(&paths.json).unwrap()).unwrap();
        assert_eq!(back.load.requests, 21_900);
    }

    #[test]
    fn the_table_shows_this_run_beside_the_original_and_fails_without_a_verification() {
        let table = table(&data());
        let line = |what: &str| {
            table
                .lines()
                .find(|l| l.trim_start().starts_with(what))
                .unwrap_or_else(|| panic!("no {what:?} line in\n{table}"))
                .trim_end()
                .to_owned()
        };
        let rps = line("HTTP requests/s");
        assert!(rps.contains("9,282") && rps.ends_with("1,095"), "{rps}");
        let accepted = line("events accepted (2xx)");
        assert!(
            accepted.contains("1,952,643") && accepted.ends_with("21,900"),
            "{accepted}"
        );
        assert!(line("success").ends_with("100.00%"));
        assert!(
            line("events stored (unique)").ends_with('—'),
            "nothing verified"
        );
        assert!(
            line("result:").contains("FAIL"),
            "unverified runs do not pass"
        );
    }
}
