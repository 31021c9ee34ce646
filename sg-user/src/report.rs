//! `slowgate report [--since 24h] [--html FILE]`: the traffic report an operator sends on.
//! Top limited senders and networks, drops per hour, limited senders over time, events per
//! kind, countries; the HTML version draws the two time series as inline SVG (no external
//! assets, one file to mail).

use std::{collections::BTreeMap, fmt::Write as _};

use crate::{
    domain::{format_duration, format_time},
    history::Record,
};

#[derive(Debug, Default, Clone, PartialEq)]
pub struct SenderRow {
    pub sender: String,
    pub kind: String,
    pub max_level: usize,
    pub first_limited: Option<u64>,
    pub limited_secs: u64,
    pub country: Option<String>,
    since: Option<u64>,
}

#[derive(Debug, Default)]
pub struct Report {
    pub from: u64,
    pub to: u64,
    /// Limited senders, most severe first.
    pub senders: Vec<SenderRow>,
    /// Hour (Unix seconds) -> drops.
    pub drops_per_hour: BTreeMap<u64, u64>,
    /// Hour -> the most senders limited at once.
    pub limited_per_hour: BTreeMap<u64, u64>,
    pub events: BTreeMap<String, u64>,
    /// Country -> limited senders.
    pub countries: BTreeMap<String, u64>,
}

pub fn build(records: &[Record]) -> Report {
    let mut report = Report {
        from: records.first().map_or(0, Record::time),
        to: records.last().map_or(0, Record::time),
        ..Report::default()
    };
    let mut senders: BTreeMap<String, SenderRow> = BTreeMap::new();
    for r in records {
        match r {
            Record::Change {
                t,
                sender,
                sender_kind,
                from,
                to,
                country,
                ..
            } => {
                if sender_kind == "user" || sender_kind == "country" {
                    continue;
                }
                let row = senders.entry(sender.clone()).or_insert_with(|| SenderRow {
                    sender: sender.clone(),
                    kind: sender_kind.clone(),
                    ..SenderRow::default()
                });
                row.max_level = row.max_level.max(*to);
                if row.country.is_none() {
                    row.country = country.clone();
                }
                if *from == 0 && *to > 0 {
                    row.first_limited.get_or_insert(*t);
                    row.since = Some(*t);
                }
                if *to == 0
                    && let Some(since) = row.since.take()
                {
                    row.limited_secs += t - since;
                }
            }
            Record::Minute {
                t,
                drops,
                events,
                limited,
            } => {
                let hour = t - t % 3600;
                *report.drops_per_hour.entry(hour).or_default() += drops;
                let l = report.limited_per_hour.entry(hour).or_default();
                *l = (*l).max(*limited);
                for (k, n) in events {
                    *report.events.entry(k.clone()).or_default() += n;
                }
            }
        }
    }
    for row in senders.values_mut() {
        if let Some(since) = row.since.take() {
            row.limited_secs += report.to.saturating_sub(since);
        }
        if row.max_level > 0
            && let Some(c) = &row.country
        {
            *report.countries.entry(c.clone()).or_default() += 1;
        }
    }
    let mut rows: Vec<SenderRow> = senders.into_values().filter(|r| r.max_level > 0).collect();
    rows.sort_by(|a, b| {
        b.max_level
            .cmp(&a.max_level)
            .then(b.limited_secs.cmp(&a.limited_secs))
            .then(a.sender.cmp(&b.sender))
    });
    report.senders = rows;
    report
}

/// The plain-text report.
pub fn text(report: &Report, top: usize) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "slowgate report, {} to {} (UTC)\n",
        format_time(report.from * 1_000_000_000),
        format_time(report.to * 1_000_000_000)
    );
    let drops: u64 = report.drops_per_hour.values().sum();
    let _ = writeln!(
        out,
        "{} senders and networks limited; {drops} new connections dropped\n",
        report.senders.len()
    );
    let _ = writeln!(out, "Top limited senders and networks:");
    let _ = writeln!(
        out,
        "  {:<28} {:<8} {:>5} {:<19} {:>10} country",
        "sender", "kind", "level", "first limited", "limited"
    );
    for r in report.senders.iter().take(top) {
        let _ = writeln!(
            out,
            "  {:<28} {:<8} {:>5} {:<19} {:>10} {}",
            r.sender,
            r.kind,
            r.max_level,
            r.first_limited
                .map_or("-".into(), |t| format_time(t * 1_000_000_000)),
            format_duration(std::time::Duration::from_secs(r.limited_secs)),
            r.country.as_deref().unwrap_or("-")
        );
    }
    drops_over_time(&mut out, report);
    let _ = writeln!(out, "\nEvents per kind:");
    for (k, n) in &report.events {
        let _ = writeln!(out, "  {k:<20} {n:>8}");
    }
    if !report.countries.is_empty() {
        let _ = writeln!(out, "\nLimited senders per country:");
        for (c, n) in &report.countries {
            let _ = writeln!(out, "  {c}  {n}");
        }
    }
    out
}

/// Hourly rows up to this many hours; beyond, a roll-up per day, the busiest hours and a
/// sparkline per day, so two weeks fit a terminal (the HTML form keeps every hour).
const HOURLY_ROWS: usize = 48;
/// The busiest hours listed in the roll-up.
const BUSIEST: usize = 5;

/// Drops over time: one row per hour for short reports, else the roll-up.
fn drops_over_time(out: &mut String, report: &Report) {
    let limited = |hour: &u64| report.limited_per_hour.get(hour).copied().unwrap_or(0);
    if report.drops_per_hour.len() <= HOURLY_ROWS {
        let _ = writeln!(out, "\nDrops per hour (most senders limited at once):");
        for (hour, n) in &report.drops_per_hour {
            let _ = writeln!(
                out,
                "  {}  {n:>8}  ({} limited)",
                format_time(hour * 1_000_000_000),
                limited(hour)
            );
        }
        return;
    }
    // Day (Unix seconds at 00:00 UTC) -> (drops, most limited at once, 24 hourly drops).
    let mut days: BTreeMap<u64, (u64, u64, [u64; 24])> = BTreeMap::new();
    for (hour, n) in &report.drops_per_hour {
        let day = days.entry(hour - hour % 86_400).or_default();
        day.0 += n;
        day.1 = day.1.max(limited(hour));
        day.2[(hour % 86_400 / 3600) as usize] = *n;
    }
    let peak = report
        .drops_per_hour
        .values()
        .copied()
        .max()
        .unwrap_or(0)
        .max(1);
    let _ = writeln!(
        out,
        "\nDrops per day (most senders limited at once), and per hour 00-23 UTC:"
    );
    for (day, (drops, most, hours)) in &days {
        let spark: String = hours.iter().map(|n| spark(*n, peak)).collect();
        let _ = writeln!(
            out,
            "  {}  {drops:>9}  ({most:>3} limited)  {spark}",
            &format_time(day * 1_000_000_000)[..10]
        );
    }
    let mut busiest: Vec<(&u64, &u64)> = report.drops_per_hour.iter().collect();
    busiest.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let _ = writeln!(out, "\nBusiest hours:");
    for (hour, n) in busiest.into_iter().take(BUSIEST) {
        let _ = writeln!(
            out,
            "  {}  {n:>8}  ({} limited)",
            format_time(hour * 1_000_000_000),
            limited(hour)
        );
    }
}

/// One character of a sparkline: `n` against the largest value.
fn spark(n: u64, peak: u64) -> char {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    if n == 0 {
        return ' ';
    }
    BARS[((n * 8 - 1) / peak).min(7) as usize]
}

/// The HTML report: the same tables, and SVG bar charts of drops and of limited senders per
/// hour. Self-contained.
pub fn html(report: &Report, top: usize) -> String {
    let esc = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
    };
    let mut out = String::from(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>slowgate report</title>\
         <style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}\
         td,th{padding:2px 8px;border-bottom:1px solid #ddd;text-align:left}\
         .n{text-align:right}</style></head><body>\n",
    );
    let _ = writeln!(
        out,
        "<h1>slowgate report</h1><p>{} to {} (UTC)</p>",
        format_time(report.from * 1_000_000_000),
        format_time(report.to * 1_000_000_000)
    );
    out += &chart(
        "New connections dropped per hour",
        &report.drops_per_hour,
        "#c0392b",
    );
    out += &chart(
        "Senders limited at once, per hour",
        &report.limited_per_hour,
        "#2c3e50",
    );
    out += "<h2>Top limited senders and networks</h2><table><tr><th>sender</th><th>kind</th>\
            <th>level</th><th>first limited</th><th>limited</th><th>country</th></tr>\n";
    for r in report.senders.iter().take(top) {
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td>{}</td><td class=\"n\">{}</td><td>{}</td><td class=\"n\">{}</td>\
             <td>{}</td></tr>",
            esc(&r.sender),
            esc(&r.kind),
            r.max_level,
            r.first_limited
                .map_or("-".into(), |t| format_time(t * 1_000_000_000)),
            format_duration(std::time::Duration::from_secs(r.limited_secs)),
            esc(r.country.as_deref().unwrap_or("-"))
        );
    }
    out += "</table>\n<h2>Events per kind</h2><table>\n";
    for (k, n) in &report.events {
        let _ = writeln!(out, "<tr><td>{}</td><td class=\"n\">{n}</td></tr>", esc(k));
    }
    out += "</table>\n";
    if !report.countries.is_empty() {
        out += "<h2>Limited senders per country</h2><table>\n";
        for (c, n) in &report.countries {
            let _ = writeln!(out, "<tr><td>{}</td><td class=\"n\">{n}</td></tr>", esc(c));
        }
        out += "</table>\n";
    }
    out += "</body></html>\n";
    out
}

/// A bar chart, one bar per hour, as inline SVG.
fn chart(title: &str, series: &BTreeMap<u64, u64>, color: &str) -> String {
    const W: f64 = 720.0;
    const H: f64 = 180.0;
    let max = series.values().copied().max().unwrap_or(0).max(1) as f64;
    let n = series.len().max(1) as f64;
    let bar = (W - 60.0) / n;
    let mut svg = format!(
        "<h2>{title}</h2><svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{}\" \
         role=\"img\" aria-label=\"{title}\"><line x1=\"50\" y1=\"{H}\" x2=\"{W}\" y2=\"{H}\" \
         stroke=\"#999\"/><text x=\"0\" y=\"12\" font-size=\"11\">{}</text>\
         <text x=\"0\" y=\"{H}\" font-size=\"11\">0</text>\n",
        H + 30.0,
        max as u64
    );
    for (i, (hour, v)) in series.iter().enumerate() {
        let h = (*v as f64 / max) * (H - 10.0);
        let x = 55.0 + i as f64 * bar;
        let _ = write!(
            svg,
            "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{h:.1}\" fill=\"{color}\">\
             <title>{}: {v}</title></rect>",
            H - h,
            (bar - 2.0).max(1.0),
            format_time(hour * 1_000_000_000)
        );
        // Both ends of the time axis carry their date and hour; the right one ends at the
        // chart's edge instead of running past it.
        let label = &format_time(hour * 1_000_000_000)[..16];
        if i == 0 {
            let _ = write!(
                svg,
                "<text x=\"{x:.1}\" y=\"{}\" font-size=\"10\">{label}</text>",
                H + 14.0
            );
        }
        if i + 1 == series.len() && series.len() > 1 {
            let _ = write!(
                svg,
                "<text x=\"{W}\" y=\"{}\" font-size=\"10\" text-anchor=\"end\">{label}</text>",
                H + 28.0
            );
        }
    }
    svg += "</svg>\n";
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report_of(hours: u64) -> Report {
        let start = 1_763_769_600; // 2025-11-22 00:00 UTC
        let mut report = Report {
            from: start,
            to: start + hours * 3600,
            ..Report::default()
        };
        for h in 0..hours {
            let t = start + h * 3600;
            report
                .drops_per_hour
                .insert(t, (h % 24) * 10 + u64::from(h == 200) * 5000);
            report.limited_per_hour.insert(t, h % 7);
        }
        report
    }

    #[test]
    fn two_weeks_fit_a_terminal_and_short_reports_keep_their_hours() {
        let text = text(&report_of(14 * 24), 10);
        assert!(text.lines().count() < 60, "{text}");
        assert!(text.contains("Drops per day"), "{text}");
        // The busiest hour is named, with its date.
        assert!(
            text.contains("Busiest hours:\n  2025-11-30 08:00:00      5080"),
            "{text}"
        );
        assert_eq!(text.matches("  2025-1").count(), 14 + BUSIEST, "{text}");
        let short = super::text(&report_of(24), 10);
        assert!(short.contains("Drops per hour"), "{short}");
        assert_eq!(short.matches(" limited)").count(), 24);
        assert_eq!(spark(0, 10), ' ');
        assert_eq!(spark(10, 10), '█');
        assert_eq!(spark(1, 10), '▁');
    }

    #[test]
    fn the_charts_label_both_ends_of_the_time_axis_with_dates() {
        let page = html(&report_of(14 * 24), 10);
        assert!(page.contains(">2025-11-22 00:00</text>"), "no left date");
        assert!(
            page.contains("text-anchor=\"end\">2025-12-05 23:00</text>"),
            "no right date"
        );
    }
}
