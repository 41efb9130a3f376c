//! The details chart as SVG: an API's count per minute, the detector's expected level, and each
//! Insight of the API in the window as a band from its start to its end. Drawn on the server
//! (no JavaScript charting library to ship or keep up to date), so the page, the API and
//! `prism insights graph` all show the same picture.
//!
//! Styles are attributes, not CSS classes alone, so a saved file (or its PNG, rendered by
//! [`png`]) looks the same outside the console. Every text is escaped; bands carry their Insight's ID and minutes as `data-`
//! attributes for tests and scripts.

use std::fmt::Write;

use super::data::Series;
use super::{ServeError, escape};

const WIDTH: f64 = 960.0;
const HEIGHT: f64 = 320.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 36.0;
const BOTTOM: f64 = 44.0;

/// Draws `s` as a standalone SVG document.
pub fn svg(s: &Series) -> String {
    let n = s.values.len().max(1);
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    // Many minutes per pixel (a week is 10,080 minutes on 880 pixels): each drawn step is the
    // largest count of its minutes, so a one-minute spike stays visible.
    let step = n.div_ceil(plot_w as usize).max(1);
    let reduce = |v: &[f64]| -> Vec<f64> { v.chunks(step).map(|c| c.iter().cloned().fold(0.0, f64::max)).collect() };
    let (values, expected) = (reduce(&s.values), reduce(&s.expected));
    let top = values.iter().chain(&expected).cloned().fold(0.0, f64::max);
    let y_max = nice_ceiling(top.max(1.0) * 1.1);
    let x = |minute: f64| LEFT + minute / n as f64 * plot_w;
    let y = |v: f64| TOP + plot_h - (v / y_max).clamp(0.0, 1.0) * plot_h;

    let mut o = String::with_capacity(64 * 1024);
    let _ = write!(
        o,
        r##"<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="11" role="img" aria-label="{title}">"##,
        title = escape(&s.title)
    );
    let _ = write!(o, r##"<rect width="{WIDTH}" height="{HEIGHT}" fill="#ffffff"/>"##);
    let _ = write!(o, r##"<text x="{LEFT}" y="16" font-size="13" font-weight="bold" fill="#16191f">{}</text>"##, escape(&s.title));
    let unit = if step > 1 { format!("{} (largest of each {step} minutes)", s.unit) } else { s.unit.clone() };
    let _ = write!(o, r##"<text x="{LEFT}" y="30" fill="#5f6b7a">{}</text>"##, escape(&unit));

    // Bands under the lines.
    for b in &s.bands {
        let (b0, b1) = ((b.start - s.lo).max(0) as f64, ((b.end - s.lo) as f64).min(n as f64));
        if b1 <= 0.0 || b0 >= n as f64 {
            continue;
        }
        let current = b.sharedeventid == s.current;
        let fill = if b.insightdirection == "drop" { "#7d8998" } else { "#f89256" };
        let opacity = if current { 0.45 } else { 0.25 };
        let _ = write!(
            o,
            r##"<rect class="band{cur}" data-shared-id="{id}" data-start="{start}" data-end="{end}" data-direction="{dir}" x="{x0:.1}" y="{TOP}" width="{w:.1}" height="{plot_h}" fill="{fill}" fill-opacity="{opacity}"><title>Insight {dir} from {start} to {end_shown}</title></rect>"##,
            cur = if current { " current" } else { "" },
            id = escape(&b.sharedeventid),
            start = escape(&b.starttime),
            end = escape(b.endtime.as_deref().unwrap_or("")),
            end_shown = escape(b.endtime.as_deref().unwrap_or("now (open)")),
            dir = escape(&b.insightdirection),
            x0 = x(b0),
            w = (x(b1) - x(b0)).max(1.0),
        );
    }

    // Axes and grid.
    for i in 0..=4 {
        let v = y_max * i as f64 / 4.0;
        let _ = write!(
            o,
            r##"<line x1="{LEFT}" x2="{x2}" y1="{yy:.1}" y2="{yy:.1}" stroke="#e9ebed"/><text x="{tx}" y="{ty:.1}" text-anchor="end" fill="#5f6b7a">{label}</text>"##,
            x2 = WIDTH - RIGHT,
            yy = y(v),
            tx = LEFT - 6.0,
            ty = y(v) + 4.0,
            label = format_count(v),
        );
    }
    let (tick, label_day) = time_tick(n as i64);
    let first = (s.lo + tick - 1).div_euclid(tick) * tick;
    let mut t = first;
    while t < s.lo + n as i64 {
        let xx = x((t - s.lo) as f64);
        let time = chrono::DateTime::<chrono::Utc>::from_timestamp(t * 60, 0).unwrap_or_default();
        let label = if label_day || t.rem_euclid(1440) == 0 { time.format("%m-%d %H:%M") } else { time.format("%H:%M") };
        let _ = write!(
            o,
            r##"<line x1="{xx:.1}" x2="{xx:.1}" y1="{TOP}" y2="{yb}" stroke="#e9ebed"/><text x="{xx:.1}" y="{ty}" text-anchor="middle" fill="#5f6b7a">{label}</text>"##,
            yb = TOP + plot_h,
            ty = TOP + plot_h + 16.0,
        );
        t += tick;
    }
    let _ = write!(o, r##"<text x="{}" y="{}" text-anchor="end" fill="#5f6b7a">UTC</text>"##, WIDTH - RIGHT, HEIGHT - 6.0);

    // Lines: expected (dashed) under the observed counts.
    let points = |v: &[f64]| -> String {
        let mut p = String::with_capacity(v.len() * 14);
        for (i, value) in v.iter().enumerate() {
            let _ = write!(p, "{:.1},{:.1} ", x(((i * step) as f64 + step as f64 / 2.0).min(n as f64)), y(*value));
        }
        p
    };
    let _ =
        write!(o, r##"<polyline class="expected" points="{}" fill="none" stroke="#687078" stroke-width="1.5" stroke-dasharray="5 3"/>"##, points(&expected));
    let _ = write!(o, r##"<polyline class="values" points="{}" fill="none" stroke="#0972d3" stroke-width="1.5"/>"##, points(&values));

    // Legend, under the time axis (the title may fill the top line).
    let _ = write!(
        o,
        r##"<g transform="translate({LEFT},{ly})" fill="#16191f"><line x1="0" x2="18" y1="4" y2="4" stroke="#0972d3" stroke-width="2"/><text x="22" y="8">{unit_short}</text><line x1="90" x2="108" y1="4" y2="4" stroke="#687078" stroke-width="1.5" stroke-dasharray="5 3"/><text x="112" y="8">expected</text><rect x="172" y="-2" width="14" height="12" fill="#f89256" fill-opacity="0.45"/><text x="190" y="8">Insight (spike)</text><rect x="270" y="-2" width="14" height="12" fill="#7d8998" fill-opacity="0.45"/><text x="288" y="8">drop</text></g>"##,
        unit_short = if s.unit.starts_with("errors") { "errors" } else { "calls" },
        ly = HEIGHT - 14.0,
    );
    o.push_str("</svg>");
    o
}

/// Renders a chart's SVG as PNG at twice its size, with the machine's fonts (resvg: pure Rust,
/// the same drawing as the SVG). The chart names `sans-serif`; the first of DejaVu Sans,
/// Liberation Sans, Arial or Helvetica found stands for it, else any installed face.
pub fn png(svg: &str) -> Result<Vec<u8>, ServeError> {
    let mut options = resvg::usvg::Options::default();
    let db = options.fontdb_mut();
    db.load_system_fonts();
    let families: Vec<String> = db.faces().flat_map(|f| f.families.iter().map(|(name, _)| name.clone())).collect();
    let Some(family) = ["DejaVu Sans", "Liberation Sans", "Arial", "Helvetica"]
        .iter()
        .map(|f| f.to_string())
        .find(|f| families.contains(f))
        .or_else(|| families.first().cloned())
    else {
        return Err(ServeError::Data(
            "no fonts are installed, so the chart's text cannot be drawn into a PNG: install a font package (e.g. fonts-dejavu-core) or write SVG".into(),
        ));
    };
    db.set_sans_serif_family(family);
    let tree = resvg::usvg::Tree::from_str(svg, &options).map_err(|e| ServeError::Data(format!("the chart's SVG does not parse: {e}")))?;
    let size = tree.size().to_int_size();
    let mut pixmap = resvg::tiny_skia::Pixmap::new(size.width() * 2, size.height() * 2).ok_or_else(|| ServeError::Data("the chart has no size".into()))?;
    resvg::render(&tree, resvg::tiny_skia::Transform::from_scale(2.0, 2.0), &mut pixmap.as_mut());
    pixmap.encode_png().map_err(|e| ServeError::Data(format!("encoding the PNG: {e}")))
}

/// Minutes between time labels for a window of `n` minutes, and whether labels need the day.
fn time_tick(n: i64) -> (i64, bool) {
    for (tick, day) in [(10, false), (15, false), (30, false), (60, false), (120, false), (180, true), (360, true), (720, true), (1440, true)] {
        if n / tick <= 8 {
            return (tick, day);
        }
    }
    (1440 * ((n / 1440) / 8 + 1), true)
}

/// The smallest 1, 2 or 5 times a power of ten at or above `v`.
fn nice_ceiling(v: f64) -> f64 {
    let p = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 5.0, 10.0] {
        if m * p >= v {
            return m * p;
        }
    }
    10.0 * p
}

fn format_count(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.0}k", v / 1000.0)
    } else if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::data::Band;

    fn series(bands: Vec<Band>) -> Series {
        Series {
            title: "ec2:RunInstances <script>".into(),
            unit: "calls per minute".into(),
            from: String::new(),
            to: String::new(),
            lo: 1000,
            values: (0..120).map(|i| if (60..70).contains(&i) { 50.0 } else { 5.0 }).collect(),
            expected: vec![5.0; 120],
            bands,
            current: "a".into(),
        }
    }

    fn band(id: &str, start: i64, end: i64) -> Band {
        Band { sharedeventid: id.into(), starttime: format!("s{start}"), endtime: Some(format!("e{end}")), insightdirection: "spike".into(), start, end }
    }

    #[test]
    fn one_band_per_insight_at_its_minutes_and_text_escaped() {
        let svg = svg(&series(vec![band("a", 1060, 1070), band("b", 900, 1010), band("c", 2000, 2100)]));
        assert_eq!(svg.matches("<rect class=\"band").count(), 2, "the band outside the window is left out");
        assert!(svg.contains(r#"class="band current" data-shared-id="a" data-start="s1060" data-end="e1070""#));
        // Minute 60 of 120 on an 880-pixel plot starting at 64.
        assert!(svg.contains(r#"x="504.0" y="36" width="73.3""#), "{svg}");
        assert!(svg.contains("&lt;script&gt;") && !svg.contains("<script"));
    }

    #[test]
    fn long_windows_keep_their_peaks() {
        let mut s = series(vec![]);
        s.values = vec![1.0; 10_080];
        s.values[5000] = 400.0;
        s.expected = vec![1.0; 10_080];
        let svg = svg(&s);
        assert!(svg.contains("largest of each 12 minutes"));
        assert!(svg.contains(">500<"), "the axis reaches the peak");
    }

    #[test]
    fn png_is_the_same_drawing() {
        let png = png(&svg(&series(vec![band("a", 1060, 1070)]))).unwrap();
        assert_eq!(&png[1..4], b"PNG");
        // 1920 x 640: the SVG's 960 x 320 at twice the size.
        assert_eq!(u32::from_be_bytes(png[16..20].try_into().unwrap()), 1920);
        assert_eq!(u32::from_be_bytes(png[20..24].try_into().unwrap()), 640);
    }

    #[test]
    fn ticks_and_ceilings() {
        assert_eq!(time_tick(120), (15, false));
        assert_eq!(time_tick(10_080), (1440, true));
        assert_eq!(nice_ceiling(55.0), 100.0);
        assert_eq!(nice_ceiling(1.1), 2.0);
    }
}
