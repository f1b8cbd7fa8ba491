//! Small line charts as PNG files, with no system dependency: an RGB canvas, lines, markers
//! and error bars, text from an embedded 8×8 bitmap font (`font8x8`), and a PNG encoder
//! (deflate by `miniz_oxide`, CRC by `crc32fast`).

use std::path::Path;

use anyhow::Context;

/// An RGB colour.
pub type Rgb = [u8; 3];

/// Colours that stay apart for up to ten series.
pub const PALETTE: [Rgb; 10] = [
    [31, 119, 180],
    [214, 39, 40],
    [44, 160, 44],
    [255, 127, 14],
    [148, 103, 189],
    [140, 86, 75],
    [227, 119, 194],
    [127, 127, 127],
    [188, 189, 34],
    [23, 190, 207],
];

const WHITE: Rgb = [255, 255, 255];
const BLACK: Rgb = [0, 0, 0];
const GRID: Rgb = [225, 225, 225];

/// An RGB image.
pub struct Canvas {
    w: usize,
    h: usize,
    px: Vec<u8>,
}

impl Canvas {
    /// A white canvas.
    pub fn new(w: usize, h: usize) -> Self {
        Canvas {
            w,
            h,
            px: vec![255; w * h * 3],
        }
    }

    fn set(&mut self, x: i64, y: i64, c: Rgb) {
        if x >= 0 && y >= 0 && (x as usize) < self.w && (y as usize) < self.h {
            let i = (y as usize * self.w + x as usize) * 3;
            self.px[i..i + 3].copy_from_slice(&c);
        }
    }

    /// The colour at (x, y) (white outside).
    pub fn get(&self, x: usize, y: usize) -> Rgb {
        if x < self.w && y < self.h {
            let i = (y * self.w + x) * 3;
            [self.px[i], self.px[i + 1], self.px[i + 2]]
        } else {
            WHITE
        }
    }

    /// Fills the rectangle [x0, x1] × [y0, y1].
    pub fn fill(&mut self, x0: i64, y0: i64, x1: i64, y1: i64, c: Rgb) {
        for y in y0.min(y1)..=y0.max(y1) {
            for x in x0.min(x1)..=x0.max(x1) {
                self.set(x, y, c);
            }
        }
    }

    /// A line `width` pixels wide; `dash`: on/off lengths in pixels (0: solid).
    pub fn line(&mut self, a: (f64, f64), b: (f64, f64), c: Rgb, width: i64, dash: i64) {
        let (dx, dy) = (b.0 - a.0, b.1 - a.1);
        let steps = dx.abs().max(dy.abs()).ceil().max(1.0) as i64;
        if steps > 100_000 {
            return;
        }
        let r = (width - 1) / 2;
        for s in 0..=steps {
            if dash > 0 && (s / dash) % 2 == 1 {
                continue;
            }
            let t = s as f64 / steps as f64;
            let (x, y) = ((a.0 + dx * t).round() as i64, (a.1 + dy * t).round() as i64);
            self.fill(x - r, y - r, x - r + width - 1, y - r + width - 1, c);
        }
    }

    /// Text with its top-left corner at (x, y), `scale` pixels per font pixel.
    pub fn text(&mut self, x: i64, y: i64, s: &str, c: Rgb, scale: i64) {
        for (k, ch) in s.chars().enumerate() {
            let g = glyph(ch);
            for (row, bits) in g.iter().enumerate() {
                for col in 0..8 {
                    if (bits >> col) & 1 == 1 {
                        let px = x + (k as i64 * 8 + col) * scale;
                        let py = y + row as i64 * scale;
                        self.fill(px, py, px + scale - 1, py + scale - 1, c);
                    }
                }
            }
        }
    }

    /// Text turned 90° anticlockwise (read bottom to top), its baseline end at (x, y).
    pub fn text_up(&mut self, x: i64, y: i64, s: &str, c: Rgb, scale: i64) {
        for (k, ch) in s.chars().enumerate() {
            let g = glyph(ch);
            for (row, bits) in g.iter().enumerate() {
                for col in 0..8 {
                    if (bits >> col) & 1 == 1 {
                        let px = x + row as i64 * scale;
                        let py = y - (k as i64 * 8 + col) * scale;
                        self.fill(px, py, px + scale - 1, py + scale - 1, c);
                    }
                }
            }
        }
    }

    /// The image as a PNG file (8-bit RGB, no interlace).
    pub fn png(&self) -> Vec<u8> {
        let mut raw = Vec::with_capacity((self.w * 3 + 1) * self.h);
        for row in self.px.chunks_exact(self.w * 3) {
            raw.push(0); // filter: none
            raw.extend_from_slice(row);
        }
        let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
        let mut ihdr = Vec::new();
        ihdr.extend_from_slice(&(self.w as u32).to_be_bytes());
        ihdr.extend_from_slice(&(self.h as u32).to_be_bytes());
        ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
        chunk(&mut out, b"IHDR", &ihdr);
        chunk(
            &mut out,
            b"IDAT",
            &miniz_oxide::deflate::compress_to_vec_zlib(&raw, 9),
        );
        chunk(&mut out, b"IEND", &[]);
        out
    }

    /// Writes the PNG file.
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        std::fs::write(path, self.png()).with_context(|| format!("cannot write {}", path.display()))
    }
}

fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let mut h = crc32fast::Hasher::new();
    h.update(kind);
    h.update(data);
    out.extend_from_slice(&h.finalize().to_be_bytes());
}

fn glyph(c: char) -> [u8; 8] {
    let i = c as usize;
    if i < 128 {
        font8x8::legacy::BASIC_LEGACY[i]
    } else {
        font8x8::legacy::BASIC_LEGACY[b'?' as usize]
    }
}

/// Width in pixels of `s` at `scale`.
pub fn text_width(s: &str, scale: i64) -> i64 {
    s.chars().count() as i64 * 8 * scale
}

/// An axis: range, scale and labelled ticks.
#[derive(Clone, Debug)]
pub struct Axis {
    /// Lowest value shown.
    pub min: f64,
    /// Highest value shown.
    pub max: f64,
    /// Logarithmic (base 10).
    pub log: bool,
    /// Ticks: value and label.
    pub ticks: Vec<(f64, String)>,
    /// Axis title.
    pub label: String,
}

impl Axis {
    fn frac(&self, v: f64) -> f64 {
        if self.log {
            (v.max(self.min).log10() - self.min.log10()) / (self.max.log10() - self.min.log10())
        } else {
            (v - self.min) / (self.max - self.min)
        }
    }
}

/// One line of a chart.
#[derive(Clone, Debug)]
pub struct Series {
    /// Legend text.
    pub label: String,
    /// Colour.
    pub color: Rgb,
    /// Dashed.
    pub dashed: bool,
    /// (x, y) points; non-finite y breaks the line.
    pub points: Vec<(f64, f64)>,
    /// Error bar (low, high) per point, if any.
    pub errors: Option<Vec<(f64, f64)>>,
    /// Draw a marker at every point.
    pub markers: bool,
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

const PANEL_W: i64 = 440;
const PANEL_H: i64 = 330;

/// Draws panels on a grid of `cols` columns, with a figure title and a legend of every
/// distinct series label underneath.
pub fn figure(title: &str, panels: &[Panel], cols: usize) -> Canvas {
    let cols = cols.max(1) as i64;
    let rows = (panels.len() as i64 + cols - 1) / cols;
    let mut legend: Vec<(String, Rgb, bool)> = Vec::new();
    for p in panels {
        for s in &p.series {
            if !legend.iter().any(|l| l.0 == s.label) {
                legend.push((s.label.clone(), s.color, s.dashed));
            }
        }
    }
    let per_row = ((cols * PANEL_W - 40) / 260).max(1);
    let legend_rows = (legend.len() as i64 + per_row - 1) / per_row;
    let w = cols * PANEL_W;
    let h = 40 + rows * PANEL_H + 20 + legend_rows * 22;
    let mut c = Canvas::new(w as usize, h as usize);
    let scale = if text_width(title, 2) + 20 <= w { 2 } else { 1 };
    c.text(
        ((w - text_width(title, scale)) / 2).max(4),
        10,
        title,
        BLACK,
        scale,
    );
    for (i, p) in panels.iter().enumerate() {
        let (col, row) = (i as i64 % cols, i as i64 / cols);
        draw_panel(&mut c, p, col * PANEL_W, 40 + row * PANEL_H);
    }
    let y0 = 40 + rows * PANEL_H + 10;
    for (i, (label, color, dashed)) in legend.iter().enumerate() {
        let (lc, lr) = (i as i64 % per_row, i as i64 / per_row);
        let x = 20 + lc * 260;
        let y = y0 + lr * 22;
        c.line(
            (x as f64, (y + 4) as f64),
            ((x + 30) as f64, (y + 4) as f64),
            *color,
            3,
            if *dashed { 6 } else { 0 },
        );
        c.text(x + 38, y, label, BLACK, 1);
    }
    c
}

fn draw_panel(c: &mut Canvas, p: &Panel, ox: i64, oy: i64) {
    // Plot area inside the panel.
    let (l, t, r, b) = (ox + 62, oy + 24, ox + PANEL_W - 14, oy + PANEL_H - 46);
    c.text(
        ox + (PANEL_W - text_width(&p.title, 1)) / 2,
        oy + 8,
        &p.title,
        BLACK,
        1,
    );
    let px = |v: f64| l as f64 + p.x.frac(v) * (r - l) as f64;
    let py = |v: f64| b as f64 - p.y.frac(v) * (b - t) as f64;
    for (v, label) in &p.x.ticks {
        let x = px(*v).round() as i64;
        c.line((x as f64, t as f64), (x as f64, b as f64), GRID, 1, 0);
        c.line(
            (x as f64, b as f64),
            (x as f64, (b + 4) as f64),
            BLACK,
            1,
            0,
        );
        c.text(x - text_width(label, 1) / 2, b + 8, label, BLACK, 1);
    }
    for (v, label) in &p.y.ticks {
        let y = py(*v).round() as i64;
        c.line((l as f64, y as f64), (r as f64, y as f64), GRID, 1, 0);
        c.line(
            ((l - 4) as f64, y as f64),
            (l as f64, y as f64),
            BLACK,
            1,
            0,
        );
        c.text(l - 8 - text_width(label, 1), y - 4, label, BLACK, 1);
    }
    c.line((l as f64, t as f64), (l as f64, b as f64), BLACK, 1, 0);
    c.line((l as f64, b as f64), (r as f64, b as f64), BLACK, 1, 0);
    c.line((r as f64, t as f64), (r as f64, b as f64), BLACK, 1, 0);
    c.line((l as f64, t as f64), (r as f64, t as f64), BLACK, 1, 0);
    c.text(
        l + (r - l - text_width(&p.x.label, 1)) / 2,
        b + 24,
        &p.x.label,
        BLACK,
        1,
    );
    c.text_up(
        ox + 6,
        t + (b - t + text_width(&p.y.label, 1)) / 2,
        &p.y.label,
        BLACK,
        1,
    );
    let inside = |x: f64, y: f64| x.is_finite() && y.is_finite();
    for s in &p.series {
        let dash = if s.dashed { 6 } else { 0 };
        let pts: Vec<Option<(f64, f64)>> = s
            .points
            .iter()
            .map(|&(x, y)| inside(x, y).then(|| (px(x), py(y.clamp(p.y.min, p.y.max)))))
            .collect();
        for w in pts.windows(2) {
            if let (Some(a), Some(b)) = (w[0], w[1]) {
                c.line(a, b, s.color, 2, dash);
            }
        }
        if let Some(err) = &s.errors {
            for (pt, &(lo, hi)) in pts.iter().zip(err) {
                if let (Some((x, _)), true) = (pt, lo.is_finite() && hi.is_finite()) {
                    let (ylo, yhi) = (
                        py(lo.clamp(p.y.min, p.y.max)),
                        py(hi.clamp(p.y.min, p.y.max)),
                    );
                    c.line((*x, ylo), (*x, yhi), s.color, 1, 0);
                    c.line((*x - 4.0, ylo), (*x + 4.0, ylo), s.color, 1, 0);
                    c.line((*x - 4.0, yhi), (*x + 4.0, yhi), s.color, 1, 0);
                }
            }
        }
        if s.markers {
            for (x, y) in pts.iter().flatten() {
                let (x, y) = (x.round() as i64, y.round() as i64);
                c.fill(x - 3, y - 3, x + 3, y + 3, s.color);
            }
        }
    }
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

    #[test]
    fn a_figure_is_a_valid_png_with_the_lines_drawn() {
        let panel = Panel {
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
            series: vec![Series {
                label: "meta".into(),
                color: PALETTE[1],
                dashed: false,
                points: vec![(1e-4, 0.2), (1e-2, 0.8), (1.0, 1.0)],
                errors: Some(vec![(0.1, 0.3), (0.7, 0.9), (1.0, 1.0)]),
                markers: true,
            }],
        };
        let c = figure("ROC", &[panel.clone(), panel], 2);
        let png = c.png();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        assert_eq!(&png[12..16], b"IHDR");
        assert_eq!(&png[png.len() - 8..png.len() - 4], b"IEND");
        // The deflate stream decodes back to the image rows.
        let idat_len = u32::from_be_bytes(png[33..37].try_into().unwrap()) as usize;
        assert_eq!(&png[37..41], b"IDAT");
        let raw = miniz_oxide::inflate::decompress_to_vec_zlib(&png[41..41 + idat_len]).unwrap();
        assert_eq!(raw.len(), (c.w * 3 + 1) * c.h);
        // Some pixels carry the series' colour.
        let red = (0..c.h)
            .flat_map(|y| (0..c.w).map(move |x| (x, y)))
            .filter(|&(x, y)| c.get(x, y) == PALETTE[1])
            .count();
        assert!(red > 100, "{red} red pixels");
        // Text is drawn.
        let mut t = Canvas::new(40, 10);
        t.text(0, 0, "AB", BLACK, 1);
        assert!((0..16).any(|x| (0..8).any(|y| t.get(x, y) == BLACK)));
    }
}
