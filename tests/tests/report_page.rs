//! The HTML report as a browser draws it: two weeks of hourly data rendered by headless
//! Chromium (Debian's package), its screenshot decoded and checked: not blank, the bars of both
//! charts drawn, and the time axis labelled with dates at both ends (in the page's text).

use std::{path::Path, process::Command};

use slowgate::report::{Report, html};

/// Two weeks of hours, with a busy hour.
fn two_weeks() -> Report {
    let start = 1_763_769_600; // 2025-11-22 00:00 UTC
    let mut report = Report {
        from: start,
        to: start + 14 * 24 * 3600,
        ..Report::default()
    };
    for h in 0..14 * 24u64 {
        let t = start + h * 3600;
        report
            .drops_per_hour
            .insert(t, (h % 24) * 10 + u64::from(h == 200) * 500);
        report.limited_per_hour.insert(t, h % 7);
    }
    report
}

/// (width, height, RGBA pixels) of a PNG.
fn decode(path: &Path) -> (u32, u32, Vec<u8>) {
    let decoder = png::Decoder::new(std::fs::File::open(path).expect("the screenshot"));
    let mut reader = decoder.read_info().expect("a PNG");
    let mut pixels = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut pixels).expect("a frame");
    pixels.truncate(info.buffer_size());
    let rgba = match info.color_type {
        png::ColorType::Rgba => pixels,
        png::ColorType::Rgb => pixels
            .chunks(3)
            .flat_map(|p| [p[0], p[1], p[2], 255])
            .collect(),
        other => panic!("a {other:?} screenshot"),
    };
    (info.width, info.height, rgba)
}

#[test]
fn the_html_report_renders_in_a_browser_with_both_charts_and_dated_axes() {
    let dir = std::env::temp_dir().join(format!("sg-report-page-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let page = html(&two_weeks(), 10);
    assert!(page.contains(">2025-11-22 00:00</text>") && page.contains(">2025-12-05 23:00</text>"));
    let file = dir.join("report.html");
    std::fs::write(&file, &page).unwrap();
    let shot = dir.join("shot.png");
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--window-size=900,700",
        ])
        .arg(format!("--user-data-dir={}", dir.join("profile").display()))
        .arg(format!("--screenshot={}", shot.display()))
        .arg(format!("file://{}", file.display()))
        .output()
        .expect("run chromium (apt install chromium; `cargo xtask test` does)");
    assert!(
        shot.exists(),
        "no screenshot: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (w, h, rgba) = decode(&shot);
    assert_eq!((w, h), (900, 700));
    let pixels: Vec<&[u8]> = rgba.chunks(4).collect();
    let white = pixels.iter().filter(|p| p[..3] == [255, 255, 255]).count();
    let close = |p: &[u8], c: [u8; 3]| p.iter().zip(c).all(|(a, b)| a.abs_diff(b) < 24);
    // The drops chart's red (#c0392b) and the limited chart's blue-grey (#2c3e50) bars.
    let red = pixels
        .iter()
        .filter(|p| close(p, [0xc0, 0x39, 0x2b]))
        .count();
    let blue = pixels
        .iter()
        .filter(|p| close(p, [0x2c, 0x3e, 0x50]))
        .count();
    assert!(white < pixels.len() * 98 / 100, "the page is blank");
    assert!(red > 2000, "the drops chart has {red} red pixels");
    assert!(blue > 2000, "the limited chart has {blue} blue-grey pixels");
    let _ = std::fs::remove_dir_all(&dir);
}
