//! The evaluation report's charts as SVG files, drawn by `plotters`: panels on a grid under a
//! figure title, and one legend for the whole figure underneath.

use std::ops::Range;
use std::path::Path;

use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint};
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::element::DashedPathElement;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// Colours that stay apart for up to ten series.
pub const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

const GRID: RGBColor = RGBColor(225, 225, 225);
const FONT: &str = "sans-serif";

const PANEL_W: u32 = 440;
const PANEL_H: u32 = 330;
const TITLE_H: u32 = 40;
const LEGEND_COL_W: u32 = 260;
const LEGEND_ROW_H: u32 = 22;

/// An axis: range, scale and labelled ticks.
#[derive(Clone, Debug)]
pub struct Axis {
    /// Lowest value shown.
    pub min: f64,
    /// Highest value shown.
    pub max: f64,
    /// Logarithmic (base 10).
    pub log: bool,
    /// Ticks (with a grid line each): value and label.
    pub ticks: Vec<(f64, String)>,
    /// Axis title.
    pub label: String,
}

/// One line of a chart.
#[derive(Clone, Debug)]
pub struct Series {
    /// Legend text.
    pub label: String,
    /// Colour.
    pub color: RGBColor,
    /// Dashed.
    pub dashed: bool,
    /// (x, y) points; a non-finite coordinate breaks the line.
    pub points: Vec<(f64, f64)>,
    /// Error bar (low, high) per point, with a marker at the point; none: a plain line.
    pub errors: Option<Vec<(f64, f64)>>,
}

/// One chart of a figure.
#[derive(Clone, Debug)]
pub struct Panel {
    /// Title above the plot area.
    pub title: String,
    /// Horizontal axis.
    pub x: Axis,
    /// Vertical axis.
    pub y: Axis,
    /// Lines.
    pub series: Vec<Series>,
}

/// Draws panels on a grid of `cols` columns, with a figure title and a legend of every
/// distinct series label underneath; returns the SVG document.
pub fn figure(title: &str, panels: &[Panel], cols: usize) -> anyhow::Result<String> {
    let cols = cols.max(1);
    let rows = panels.len().div_ceil(cols);
    let mut legend: Vec<&Series> = Vec::new();
    for s in panels.iter().flat_map(|p| &p.series) {
        if !legend.iter().any(|l| l.label == s.label) {
            legend.push(s);
        }
    }
    let width = cols as u32 * PANEL_W;
    let per_row = ((width - 40) / LEGEND_COL_W).max(1) as usize;
    let plots_h = rows as u32 * PANEL_H;
    let height = TITLE_H + plots_h + 20 + legend.len().div_ceil(per_row) as u32 * LEGEND_ROW_H;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (width, height)).into_drawing_area();
        root.fill(&WHITE)?;
        let (head, rest) = root.split_vertically(TITLE_H);
        head.titled(title, (FONT, 20))?;
        let (plots, foot) = rest.split_vertically(plots_h);
        for (p, area) in panels.iter().zip(plots.split_evenly((rows, cols))) {
            if p.x.log {
                let x: LogCoord<f64> = (p.x.min..p.x.max).log_scale().into();
                draw_panel(&area, p, Ticked::new(x, &p.x))?;
            } else {
                let x: RangedCoordf64 = (p.x.min..p.x.max).into();
                draw_panel(&area, p, Ticked::new(x, &p.x))?;
            }
        }
        draw_legend(&foot, &legend, per_row)?;
        root.present()?;
    }
    Ok(svg)
}

/// Writes [`figure`] to `path`.
pub fn save_figure(path: &Path, title: &str, panels: &[Panel], cols: usize) -> anyhow::Result<()> {
    crate::state::write_atomic(path, figure(title, panels, cols)?.as_bytes())
}

/// A plotters scale with the axis' own ticks. (plotters' `WithKeyPoints` does the same but
/// leaves the mesh without a label formatter.)
struct Ticked<S> {
    scale: S,
    ticks: Vec<f64>,
}

impl<S> Ticked<S> {
    fn new(scale: S, axis: &Axis) -> Self {
        Ticked {
            scale,
            ticks: axis.ticks.iter().map(|t| t.0).collect(),
        }
    }
}

impl<S: Ranged<ValueType = f64>> Ranged for Ticked<S> {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn range(&self) -> Range<f64> {
        self.scale.range()
    }

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        self.scale.map(value, limit)
    }

    fn key_points<H: KeyPointHint>(&self, _: H) -> Vec<f64> {
        self.ticks.clone()
    }
}

fn tick_label(ticks: &[(f64, String)], v: f64) -> String {
    ticks
        .iter()
        .find(|(t, _)| (t - v).abs() <= 1e-9 * t.abs().max(1.0))
        .map_or_else(String::new, |(_, label)| label.clone())
}

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;

fn draw_panel<X: Ranged<ValueType = f64>>(
    area: &Area<'_>,
    p: &Panel,
    x: Ticked<X>,
) -> anyhow::Result<()> {
    let y = Ticked::new(RangedCoordf64::from(p.y.min..p.y.max), &p.y);
    let mut chart = ChartBuilder::on(area)
        .caption(&p.title, (FONT, 15))
        .margin(8)
        .margin_right(16)
        .x_label_area_size(44)
        .y_label_area_size(56)
        .build_cartesian_2d(x, y)?;
    let x_label = |v: &f64| tick_label(&p.x.ticks, *v);
    let y_label = |v: &f64| tick_label(&p.y.ticks, *v);
    chart
        .configure_mesh()
        .bold_line_style(GRID)
        .light_line_style(TRANSPARENT)
        .x_label_formatter(&x_label)
        .y_label_formatter(&y_label)
        .label_style((FONT, 14))
        .x_desc(p.x.label.as_str())
        .y_desc(p.y.label.as_str())
        .axis_desc_style((FONT, 14))
        .draw()?;
    // The mesh draws the left and bottom axes; close the frame.
    chart.draw_series(std::iter::once(Rectangle::new(
        [(p.x.min, p.y.min), (p.x.max, p.y.max)],
        BLACK,
    )))?;
    for s in &p.series {
        draw_series(&mut chart, p, s)?;
    }
    Ok(())
}

type Chart<'a, 'b, X> =
    ChartContext<'a, SVGBackend<'b>, Cartesian2d<Ticked<X>, Ticked<RangedCoordf64>>>;

fn draw_series<X: Ranged<ValueType = f64>>(
    chart: &mut Chart<'_, '_, X>,
    p: &Panel,
    s: &Series,
) -> anyhow::Result<()> {
    // Points off the axis ranges are drawn on their edge, as the line leaves the plot.
    let clamp = |x: f64, y: f64| (x.clamp(p.x.min, p.x.max), y.clamp(p.y.min, p.y.max));
    let style = s.color.stroke_width(2);
    for run in s
        .points
        .split(|(x, y)| !(x.is_finite() && y.is_finite()))
        .filter(|run| run.len() > 1)
    {
        let points = run.iter().map(|&(x, y)| clamp(x, y));
        if s.dashed {
            chart.draw_series(DashedLineSeries::new(points, 6, 6, style))?;
        } else {
            chart.draw_series(LineSeries::new(points, style))?;
        }
    }
    let Some(errors) = &s.errors else {
        return Ok(());
    };
    let bars = s
        .points
        .iter()
        .zip(errors)
        .filter(|((x, y), _)| x.is_finite() && y.is_finite())
        .map(|(&(x, y), &(lo, hi))| {
            let (lo, hi) = if lo.is_finite() && hi.is_finite() {
                (lo, hi)
            } else {
                (y, y)
            };
            let (x, y) = clamp(x, y);
            let (lo, hi) = (clamp(x, lo).1, clamp(x, hi).1);
            ErrorBar::new_vertical(x, lo, y, hi, s.color.filled().stroke_width(1), 8)
        });
    chart.draw_series(bars)?;
    Ok(())
}

fn draw_legend(area: &Area<'_>, legend: &[&Series], per_row: usize) -> anyhow::Result<()> {
    let text = TextStyle::from((FONT, 15).into_font()).pos(Pos::new(HPos::Left, VPos::Center));
    for (i, s) in legend.iter().enumerate() {
        let x = 20 + (i % per_row) as i32 * LEGEND_COL_W as i32;
        let y = 14 + (i / per_row) as i32 * LEGEND_ROW_H as i32;
        let line = [(x, y), (x + 30, y)];
        let style = s.color.stroke_width(3);
        if s.dashed {
            area.draw(&DashedPathElement::new(line, 6, 6, style))?;
        } else {
            area.draw(&PathElement::new(line, style))?;
        }
        area.draw(&Text::new(s.label.as_str(), (x + 38, y), &text))?;
    }
    Ok(())
}

/// Ticks 0, 0.2, …, 1.
pub fn unit_ticks() -> Vec<(f64, String)> {
    (0..=5)
        .map(|i| (i as f64 / 5.0, format!("{:.1}", i as f64 / 5.0)))
        .collect()
}

/// Ticks at the powers of ten from 10^`lo` to 10^`hi`.
pub fn log_ticks(lo: i32, hi: i32) -> Vec<(f64, String)> {
    (lo..=hi)
        .map(|e| {
            let label = match e {
                0 => "1".to_string(),
                -1 => "0.1".to_string(),
                _ => format!("1e{e}"),
            };
            (10f64.powi(e), label)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The contents of the `<text>` elements.
    fn texts(svg: &str) -> Vec<&str> {
        svg.split("<text ")
            .skip(1)
            .filter_map(|t| Some(t[t.find('>')? + 1..t.find("</text>")?].trim()))
            .collect()
    }

    /// Every element is closed, in order.
    fn well_formed(svg: &str) -> bool {
        let mut open: Vec<&str> = Vec::new();
        let mut rest = svg;
        while let Some(i) = rest.find('<') {
            let Some(j) = rest[i..].find('>') else {
                return false;
            };
            let tag = &rest[i + 1..i + j];
            rest = &rest[i + j + 1..];
            if tag.starts_with('?') || tag.starts_with('!') || tag.ends_with('/') {
                continue;
            }
            let name = tag.split_whitespace().next().unwrap_or("");
            if let Some(closing) = name.strip_prefix('/') {
                if open.pop() != Some(closing) {
                    return false;
                }
            } else {
                open.push(name);
            }
        }
        open.is_empty()
    }

    fn panel(series: Vec<Series>) -> Panel {
        Panel {
            title: "K = 5".into(),
            x: Axis {
                min: 1e-4,
                max: 1.0,
                log: true,
                ticks: log_ticks(-4, 0),
                label: "false-positive rate".into(),
            },
            y: Axis {
                min: 0.0,
                max: 1.0,
                log: false,
                ticks: unit_ticks(),
                label: "true-positive rate".into(),
            },
            series,
        }
    }

    #[test]
    fn a_figure_is_an_svg_with_its_lines_ticks_and_legend() {
        let solid = Series {
            label: "meta".into(),
            color: PALETTE[1],
            dashed: false,
            // The NaN breaks the line in two.
            points: vec![
                (1e-4, 0.2),
                (1e-3, 0.5),
                (1e-2, f64::NAN),
                (0.1, 0.8),
                (1.0, 1.0),
            ],
            errors: None,
        };
        let dashed = Series {
            label: "zero-shot".into(),
            color: PALETTE[0],
            dashed: true,
            points: vec![(1e-4, 0.1), (1.0, 0.9)],
            errors: Some(vec![(0.05, 0.15), (f64::NAN, f64::NAN)]),
        };
        let svg = figure(
            "ROC & co",
            &[panel(vec![solid.clone(), dashed]), panel(vec![solid])],
            2,
        )
        .unwrap();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(well_formed(&svg), "{svg}");
        let texts = texts(&svg);
        assert!(texts.contains(&"ROC &amp; co"), "the title is escaped");
        let red = r##"stroke="#D62728" stroke-width="2""##;
        assert_eq!(
            svg.matches(red).count(),
            4,
            "two panels × two runs of the solid line"
        );
        let blue_dashes = svg
            .matches(r##"stroke="#1F77B4" stroke-width="2""##)
            .count();
        assert!(blue_dashes > 10, "{blue_dashes} dashes");
        // Both error bars' markers (the second at its point, the bar being unknown).
        assert_eq!(svg.matches(r##"<circle"##).count(), 2);
        let count = |t: &str| texts.iter().filter(|x| **x == t).count();
        // Each panel: its title, both axis titles, every tick.
        for t in ["K = 5", "false-positive rate", "true-positive rate"] {
            assert_eq!(count(t), 2, "{t}");
        }
        for t in [
            "1e-4", "1e-3", "1e-2", "0.1", "1", "0.0", "0.2", "0.4", "0.6", "0.8", "1.0",
        ] {
            assert_eq!(count(t), 2, "tick {t}");
        }
        // The legend names each series once, under the panels.
        assert_eq!(count("meta"), 1);
        assert_eq!(count("zero-shot"), 1);
        assert_eq!(texts.len(), 1 + 2 * (3 + 11) + 2, "{texts:?}");
        assert!(
            svg.contains(r#"width="880" height="412""#),
            "{}",
            &svg[..200]
        );
    }

    #[test]
    fn log_ticks_are_labelled_as_in_the_report() {
        let t = log_ticks(-4, 0);
        assert_eq!(t.len(), 5);
        assert_eq!(t[0].1, "1e-4");
        assert_eq!(t[3].1, "0.1");
        assert_eq!(tick_label(&t, 1e-3), "1e-3");
        assert_eq!(tick_label(&t, 0.5), "");
    }
}
