//! Renders a report again from its `summary.json` (e.g. after the report's look changed):
//! `cargo run --release -p ess-load --example render_report -- .ess/reports/RUN/summary.json [OUT_DIR]`

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let Some(input) = args.next() else {
        anyhow::bail!("usage: render_report SUMMARY_JSON [OUT_DIR]");
    };
    let input = std::path::PathBuf::from(input);
    let out = args
        .next()
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            input
                .parent()
                .map(std::path::Path::to_path_buf)
                .unwrap_or_default()
        });
    let data: ess_load::report::ReportData = serde_json::from_slice(&std::fs::read(&input)?)?;
    let paths = ess_load::report::write(&out, &data)?;
    print!("{}", ess_load::report::table(&data));
    println!("  report: {}", paths.html.display());
    Ok(())
}
