//! Inline SVG charts (plotters' SVG backend): learning curves and grouped per-class bars.
//! Every chart on a page also has its numbers in a table next to it.

use plotters::prelude::*;

/// Colours that stay apart for up to 20 series.
const COLORS: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

pub fn color(i: usize) -> RGBColor {
    COLORS[i % COLORS.len()]
}

/// A line chart of `series` (name, points by epoch), with axis labels and a legend.
pub fn lines(title: &str, y_label: &str, series: &[(String, Vec<(f64, f64)>)]) -> String {
    lines_over(title, "epoch", y_label, series)
}

/// A line chart of `series` over `x_label` (whole numbers on the x axis).
pub fn lines_over(title: &str, x_label: &str, y_label: &str, series: &[(String, Vec<(f64, f64)>)]) -> String {
    let points = series.iter().flat_map(|(_, p)| p.iter());
    let (mut x_max, mut y_min, mut y_max) = (1.0f64, f64::INFINITY, f64::NEG_INFINITY);
    for &(x, y) in points {
        x_max = x_max.max(x);
        y_min = y_min.min(y);
        y_max = y_max.max(y);
    }
    if !y_min.is_finite() {
        (y_min, y_max) = (0.0, 1.0);
    }
    let pad = ((y_max - y_min) * 0.08).max(1e-3);
    // Headroom above the data for the legend.
    let top = (y_max - y_min).max(1e-3) * 0.4;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (560, 300)).into_drawing_area();
        let _ = root.fill(&WHITE);
        let chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 16))
            .margin(10)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d(0.0..x_max, (y_min - pad)..(y_max + top));
        let Ok(mut chart) = chart else { return String::new() };
        let _ = chart
            .configure_mesh()
            .x_labels((x_max as usize + 1).min(12))
            .x_label_formatter(&|x| if (x - x.round()).abs() < 1e-6 { format!("{x:.0}") } else { String::new() })
            .x_desc(x_label)
            .y_desc(y_label)
            .light_line_style(RGBColor(235, 235, 235))
            .draw();
        for (i, (name, pts)) in series.iter().enumerate() {
            let c = color(i);
            if let Ok(drawn) = chart.draw_series(LineSeries::new(pts.iter().copied(), c.stroke_width(2))) {
                drawn.label(name.clone()).legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], c.stroke_width(2)));
            }
            let _ = chart.draw_series(pts.iter().map(|&p| Circle::new(p, 3, c.filled())));
        }
        let _ = chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperRight)
            .draw();
        let _ = root.present();
    }
    svg
}

/// Grouped horizontal bars: for each class (a row, labelled on the left), one bar per
/// series (run); values in 0..1.
pub fn grouped_bars(title: &str, x_label: &str, classes: &[String], series: &[(String, Vec<f64>)]) -> String {
    let n = series.len().max(1) as f64;
    let rows = classes.len().max(1);
    let mut svg = String::new();
    {
        let height = (90 + rows * (8 + 7 * series.len()).max(22)).clamp(300, 1600) as u32;
        let root = SVGBackend::with_string(&mut svg, (620, height)).into_drawing_area();
        let _ = root.fill(&WHITE);
        let chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 16))
            .margin(10)
            .x_label_area_size(36)
            .y_label_area_size(170)
            .build_cartesian_2d(0.0..1.45, 0.0..rows as f64);
        let Ok(mut chart) = chart else { return String::new() };
        let names = classes.to_vec();
        let _ = chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(rows * 2 + 1)
            .y_label_formatter(&|y| {
                // Row i (from the top) is centred at rows - i - 0.5.
                let from_top = rows as f64 - y - 0.5;
                if (from_top - from_top.round()).abs() < 0.01 {
                    names.get(from_top.round() as usize).cloned().unwrap_or_default()
                } else {
                    String::new()
                }
            })
            .x_labels(8)
            .x_label_formatter(&|x| if *x <= 1.0 + 1e-9 { format!("{x:.1}") } else { String::new() })
            .x_desc(x_label)
            .light_line_style(RGBColor(235, 235, 235))
            .draw();
        for (s, (name, values)) in series.iter().enumerate() {
            let c = color(s);
            let bars = values.iter().enumerate().map(move |(i, &v)| {
                let top = rows as f64 - i as f64 - 0.1 - 0.8 * s as f64 / n;
                Rectangle::new([(0.0, top - 0.8 / n), (v, top)], c.filled())
            });
            if let Ok(drawn) = chart.draw_series(bars) {
                drawn.label(name.clone()).legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], c.filled()));
            }
        }
        let _ = chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperRight)
            .draw();
        let _ = root.present();
    }
    svg
}

/// One axis of a parallel-coordinates chart: its name and the labels of its bottom and top.
pub struct Axis {
    pub name: String,
    pub low: String,
    pub high: String,
}

/// Parallel coordinates: one vertical axis per hyperparameter, one line per run through its
/// values (each scaled to 0..1 on its axis), darker and bluer the better the run's objective
/// (`shade`, 0 worst .. 1 best); the best run drawn last, on top.
pub fn parallel_coordinates(title: &str, axes: &[Axis], runs: &[(Vec<f64>, f64)]) -> String {
    let d = axes.len().max(2);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (120 + 150 * d as u32, 320)).into_drawing_area();
        let _ = root.fill(&WHITE);
        let chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 16))
            .margin(20)
            .x_label_area_size(30)
            .y_label_area_size(10)
            .build_cartesian_2d(-0.3..(d as f64 - 0.7), -0.08..1.08);
        let Ok(mut chart) = chart else { return String::new() };
        let names: Vec<String> = axes.iter().map(|a| a.name.clone()).collect();
        let _ = chart
            .configure_mesh()
            .disable_mesh()
            .disable_y_axis()
            .x_labels(d * 2 + 1)
            .x_label_formatter(&|x| {
                if (x - x.round()).abs() < 0.01 { names.get(x.round() as usize).cloned().unwrap_or_default() } else { String::new() }
            })
            .draw();
        for (i, axis) in axes.iter().enumerate() {
            let x = i as f64;
            let _ = chart.draw_series(std::iter::once(PathElement::new(vec![(x, 0.0), (x, 1.0)], BLACK.stroke_width(1))));
            let _ = chart.draw_series([
                Text::new(axis.low.clone(), (x + 0.04, -0.05), ("sans-serif", 11)),
                Text::new(axis.high.clone(), (x + 0.04, 1.06), ("sans-serif", 11)),
            ]);
        }
        let mut ordered: Vec<&(Vec<f64>, f64)> = runs.iter().collect();
        ordered.sort_by(|a, b| a.1.total_cmp(&b.1));
        for (coords, shade) in ordered {
            let s = shade.clamp(0.0, 1.0);
            let c = RGBColor((200.0 - 170.0 * s) as u8, (200.0 - 120.0 * s) as u8, (210.0 - 30.0 * s) as u8);
            let points: Vec<(f64, f64)> = coords.iter().enumerate().map(|(i, &y)| (i as f64, y.clamp(0.0, 1.0))).collect();
            let _ = chart.draw_series(std::iter::once(PathElement::new(points, c.stroke_width(if s > 0.999 { 3 } else { 1 }))));
        }
        let _ = root.present();
    }
    svg
}

/// A reliability diagram: for each confidence bin, the share predicted right (bars) against
/// the diagonal of perfect calibration; `series` are (name, bins) drawn side by side.
pub fn reliability(title: &str, series: &[(String, Vec<protocol::evidence::ReliabilityBin>)]) -> String {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (420, 360)).into_drawing_area();
        let _ = root.fill(&WHITE);
        let chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 16))
            .margin(10)
            .x_label_area_size(36)
            .y_label_area_size(48)
            .build_cartesian_2d(0.0..1.0, 0.0..1.25);
        let Ok(mut chart) = chart else { return String::new() };
        let _ = chart
            .configure_mesh()
            .x_labels(6)
            .y_labels(6)
            .y_label_formatter(&|y| if *y <= 1.0 + 1e-9 { format!("{y:.1}") } else { String::new() })
            .x_desc("confidence (top label)")
            .y_desc("share right")
            .light_line_style(RGBColor(235, 235, 235))
            .draw();
        if let Ok(drawn) = chart.draw_series(LineSeries::new([(0.0, 0.0), (1.0, 1.0)], BLACK.mix(0.5).stroke_width(1))) {
            drawn.label("perfect calibration").legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], BLACK.mix(0.5)));
        }
        let n = series.len().max(1) as f64;
        for (s, (name, bins)) in series.iter().enumerate() {
            let c = color(s);
            let width = 0.1 / n;
            let bars = bins.iter().filter(|b| b.images > 0).map(move |b| {
                let left = b.lower + width * s as f64;
                Rectangle::new([(left + 0.005, 0.0), (left + width - 0.005, b.accuracy)], c.mix(0.75).filled())
            });
            if let Ok(drawn) = chart.draw_series(bars) {
                drawn.label(name.clone()).legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], c.filled()));
            }
        }
        let _ = chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperLeft)
            .draw();
        let _ = root.present();
    }
    svg
}
