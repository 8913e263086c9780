//! Precision, recall and F1 against the swept parameter, as PNG and SVG, ready for a
//! briefing: titled with the detector, the data and the date, axes labelled, the recommended
//! value marked.
//!
//! The first parameter is the x axis. With one parameter, one chart holds the three
//! metrics. With more, three panels (precision, recall, F1) side by side each hold one line
//! per value of the other parameters: nine or more lines in one chart cannot be read.

use std::error::Error;
use std::path::{Path, PathBuf};

use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint, Ranged};
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::param::{Param, ParamValue};
use super::{Recommendation, Row, TuneError};

/// Everything a plot shows besides the rows.
#[derive(Debug, Clone)]
pub struct Spec<'a> {
    pub detector: &'a str,
    /// Name of the events file, for the title.
    pub input: &'a str,
    /// Name of the labels file, for the title.
    pub labels: &'a str,
    /// Date line of the title (the day the sweep ran).
    pub date: &'a str,
    pub params: &'a [Param],
    pub recommendation: Option<&'a Recommendation>,
}

/// Colours that stay apart on screen, on paper and for the common colour blindnesses
/// (Okabe-Ito).
const PALETTE: [RGBColor; 8] = [
    RGBColor(0, 114, 178),
    RGBColor(213, 94, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(230, 159, 0),
    RGBColor(86, 180, 233),
    RGBColor(0, 0, 0),
    RGBColor(240, 228, 66),
];

const FONT: &str = "sans-serif";

/// Top of the y axis: room above 1.0 for the recommended-value label.
const Y_TOP: f64 = 1.1;

/// `PREFIX.png` and `PREFIX.svg`; a `.png` or `.svg` ending on the prefix is dropped.
pub fn paths(prefix: &Path) -> (PathBuf, PathBuf) {
    let base = match prefix.extension().and_then(|e| e.to_str()) {
        Some("png" | "svg") => prefix.with_extension(""),
        _ => prefix.to_path_buf(),
    };
    let with = |ext: &str| {
        let mut s = base.clone().into_os_string();
        s.push(ext);
        PathBuf::from(s)
    };
    (with(".png"), with(".svg"))
}

/// Draws the plot twice, PNG and SVG; returns the two paths.
pub fn write(
    prefix: &Path,
    rows: &[Row],
    spec: &Spec<'_>,
) -> Result<(PathBuf, PathBuf), TuneError> {
    if rows.is_empty() || spec.params.is_empty() {
        return Err(TuneError("nothing to plot".into()));
    }
    let (png, svg) = paths(prefix);
    if let Some(dir) = png.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.is_dir() {
            return Err(TuneError(format!(
                "cannot write plot {}: directory {} does not exist",
                png.display(),
                dir.display()
            )));
        }
    }
    let size = if spec.params.len() == 1 {
        (1150, 620)
    } else {
        (1650, 580)
    };
    let fail =
        |p: &Path, e: Box<dyn Error>| TuneError(format!("cannot write plot {}: {e}", p.display()));
    {
        let root = BitMapBackend::new(&png, size).into_drawing_area();
        draw(&root, rows, spec)
            .and_then(|()| root.present().map_err(Into::into))
            .map_err(|e| fail(&png, e))?;
    }
    {
        let root = SVGBackend::new(&svg, size).into_drawing_area();
        draw(&root, rows, spec)
            .and_then(|()| root.present().map_err(Into::into))
            .map_err(|e| fail(&svg, e))?;
    }
    Ok((png, svg))
}

/// The three metrics of one row for the detector, or `None` if it was not scored.
fn metric(row: &Row, detector: &str, m: usize) -> Option<f64> {
    row.score(detector)
        .map(|s| [s.precision, s.recall, s.f1][m])
}

const METRICS: [&str; 3] = ["precision", "recall", "F1"];

/// One line: the label and its points, sorted along x.
struct Line {
    label: String,
    /// (x, row index).
    points: Vec<(f64, usize)>,
}

/// Rows grouped by the values of every parameter but the first.
fn lines(rows: &[Row], params: &[Param]) -> Vec<Line> {
    let mut out: Vec<(Vec<String>, Line)> = Vec::new();
    for (i, r) in rows.iter().enumerate() {
        let key: Vec<String> = r.values[1..].iter().map(ToString::to_string).collect();
        let x = r.values[0].as_f64();
        match out.iter_mut().find(|(k, _)| *k == key) {
            Some((_, l)) => l.points.push((x, i)),
            None => {
                let label = params[1..]
                    .iter()
                    .zip(&r.values[1..])
                    .map(|(p, v)| format!("{}={v}", p.key))
                    .collect::<Vec<_>>()
                    .join(", ");
                out.push((
                    key,
                    Line {
                        label,
                        points: vec![(x, i)],
                    },
                ));
            }
        }
    }
    for (_, l) in &mut out {
        l.points.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    out.into_iter().map(|(_, l)| l).collect()
}

/// The x-axis ticks: swept values, each labelled as the parameter value is written, so no two
/// labels are equal (ticks placed between values and rounded repeated, e.g. `0.8 0.8`). With
/// more values than fit, every k-th from the first.
fn x_ticks(p: &Param, max: usize) -> Vec<(f64, String)> {
    let mut values: Vec<ParamValue> = p.values.clone();
    values.sort_by(|a, b| a.as_f64().total_cmp(&b.as_f64()));
    values.dedup_by(|a, b| a.as_f64() == b.as_f64());
    let step = values.len().div_ceil(max.max(1)).max(1);
    values
        .iter()
        .step_by(step)
        .map(|v| (v.as_f64(), v.to_string()))
        .collect()
}

/// How many x labels fit across `width_px`: about 9 px a character at the 15 px label font,
/// and three characters of gap between labels.
fn ticks_that_fit(p: &Param, width_px: u32) -> usize {
    let widest = p
        .values
        .iter()
        .map(|v| v.to_string().len())
        .max()
        .unwrap_or(1);
    ((width_px as usize) / ((widest + 3) * 9)).clamp(2, 15)
}

fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    rows: &[Row],
    spec: &Spec<'_>,
) -> Result<(), Box<dyn Error>>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE)?;
    let (head, body) = root.split_vertically(92);
    let xp = &spec.params[0];
    head.draw(&Text::new(
        format!("{}: precision and recall against {}", spec.detector, xp.key),
        (24, 12),
        (FONT, 26).into_font().style(FontStyle::Bold).color(&BLACK),
    ))?;
    head.draw(&Text::new(
        format!(
            "data: {}   ·   labels: {}   ·   {} combinations   ·   {}",
            spec.input,
            spec.labels,
            rows.len(),
            spec.date
        ),
        (24, 46),
        (FONT, 17).into_font().color(&RGBColor(70, 70, 70)),
    ))?;
    let picked = match spec.recommendation {
        Some(Recommendation::Pick { index, target, .. }) => {
            head.draw(&Text::new(
                format!(
                    "recommended (best recall at precision ≥ {target}): {}{}",
                    super::param::describe(spec.params, &rows[*index].values),
                    rows[*index]
                        .score(spec.detector)
                        .map_or(String::new(), |s| format!(
                            "   (precision {:.2}, recall {:.2})",
                            s.precision, s.recall
                        ))
                ),
                (24, 68),
                (FONT, 17).into_font().color(&BLACK),
            ))?;
            Some(*index)
        }
        Some(Recommendation::NoneReaches { target, best }) => {
            let most = best.map_or(String::new(), |i| {
                format!(
                    "; the most precise is {}",
                    super::param::describe(spec.params, &rows[i].values)
                )
            });
            head.draw(&Text::new(
                format!("no setting reaches precision {target}{most}"),
                (24, 68),
                (FONT, 17).into_font().color(&RGBColor(180, 0, 0)),
            ))?;
            None
        }
        None => None,
    };

    let xs: Vec<f64> = xp.values.iter().map(|v| v.as_f64()).collect();
    let (lo, hi) = xs
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| {
            (a.min(x), b.max(x))
        });
    let pad = if hi > lo { (hi - lo) * 0.04 } else { 1.0 };
    let x_range = (lo - pad)..(hi + pad);
    let groups = lines(rows, spec.params);
    // The legend gets its own strip: inside the chart it always covers some line.
    let width = body.dim_in_pixel().0;
    let (body, key_area) = body.split_horizontally(width.saturating_sub(LEGEND_W));

    if spec.params.len() == 1 {
        let ticks = x_ticks(
            xp,
            ticks_that_fit(xp, body.dim_in_pixel().0.saturating_sub(120)),
        );
        let mut chart = chart(&body, x_range, &xp.key, "precision / recall / F1", &ticks)?;
        let only = &groups[0];
        for (m, &color) in PALETTE.iter().enumerate().take(METRICS.len()) {
            let pts: Vec<(f64, f64)> = only
                .points
                .iter()
                .filter_map(|&(x, i)| metric(&rows[i], spec.detector, m).map(|y| (x, y)))
                .collect();
            series(&mut chart, &pts, color, m == 2, width_of(m, METRICS.len()))?;
        }
        mark(&mut chart, picked, rows, spec, &[0, 1, 2])?;
        let entries: Vec<(String, RGBColor, bool)> = METRICS
            .iter()
            .enumerate()
            .map(|(m, name)| (name.to_string(), PALETTE[m], m == 2))
            .collect();
        legend(&key_area, "", &entries, picked.is_some())?;
    } else {
        let panels = body.split_evenly((1, 3));
        let ticks = x_ticks(
            xp,
            ticks_that_fit(xp, panels[0].dim_in_pixel().0.saturating_sub(120)),
        );
        for (m, panel) in panels.iter().enumerate() {
            let mut chart = chart(panel, x_range.clone(), &xp.key, METRICS[m], &ticks)?;
            for (g, line) in groups.iter().enumerate() {
                let pts: Vec<(f64, f64)> = line
                    .points
                    .iter()
                    .filter_map(|&(x, i)| metric(&rows[i], spec.detector, m).map(|y| (x, y)))
                    .collect();
                series(
                    &mut chart,
                    &pts,
                    PALETTE[g % PALETTE.len()],
                    g >= PALETTE.len(),
                    width_of(g, groups.len()),
                )?;
            }
            mark(&mut chart, picked, rows, spec, &[m])?;
        }
        // With two parameters the legend is titled with the second and lists its values;
        // with more, each line is named in full.
        let (title, short) = if spec.params.len() == 2 {
            (format!("{}:", spec.params[1].key), true)
        } else {
            (String::new(), false)
        };
        let entries: Vec<(String, RGBColor, bool)> = groups
            .iter()
            .enumerate()
            .map(|(g, line)| {
                let label = if short {
                    rows[line.points[0].1].values[1].to_string()
                } else {
                    line.label.clone()
                };
                (label, PALETTE[g % PALETTE.len()], g >= PALETTE.len())
            })
            .collect();
        legend(&key_area, &title, &entries, picked.is_some())?;
    }
    Ok(())
}

type Chart<'a, DB> = ChartContext<'a, DB, Cartesian2d<Ticked, RangedCoordf64>>;

/// The x axis: a linear axis whose ticks are the given values (plotters' own
/// `WithKeyPoints` cannot take a label formatter).
struct Ticked {
    axis: RangedCoordf64,
    ticks: Vec<f64>,
}

impl Ranged for Ticked {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        self.axis.map(value, limit)
    }

    fn key_points<Hint: KeyPointHint>(&self, _hint: Hint) -> Vec<f64> {
        self.ticks.clone()
    }

    fn range(&self) -> std::ops::Range<f64> {
        self.axis.range()
    }
}

fn chart<'a, DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    x_range: std::ops::Range<f64>,
    x_label: &str,
    y_label: &str,
    ticks: &[(f64, String)],
) -> Result<Chart<'a, DB>, Box<dyn Error>>
where
    DB::ErrorType: 'static,
{
    let mut chart = ChartBuilder::on(area)
        .margin(18)
        .x_label_area_size(52)
        .y_label_area_size(62)
        .build_cartesian_2d(
            Ticked {
                axis: x_range.into(),
                ticks: ticks.iter().map(|t| t.0).collect(),
            },
            0.0..Y_TOP,
        )?;
    let label = |x: &f64| {
        ticks
            .iter()
            .find(|t| t.0 == *x)
            .map_or_else(|| format!("{x}"), |t| t.1.clone())
    };
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .axis_desc_style((FONT, 18))
        .label_style((FONT, 15))
        .x_label_formatter(&label)
        .y_label_formatter(&|y| format!("{y:.1}"))
        .x_labels(ticks.len())
        .y_labels(11)
        .light_line_style(TRANSPARENT)
        .bold_line_style(RGBColor(222, 222, 222))
        .draw()?;
    Ok(chart)
}

fn series<DB: DrawingBackend>(
    chart: &mut Chart<'_, DB>,
    pts: &[(f64, f64)],
    color: RGBColor,
    dashed: bool,
    width: u32,
) -> Result<(), Box<dyn Error>>
where
    DB::ErrorType: 'static,
{
    let style = color.stroke_width(width);
    if dashed {
        chart.draw_series(DashedLineSeries::new(pts.iter().copied(), 10, 6, style))?;
    } else {
        chart.draw_series(LineSeries::new(pts.iter().copied(), style))?;
    }
    chart.draw_series(
        pts.iter()
            .map(|&p| Circle::new(p, 3 + width / 2, color.filled())),
    )?;
    Ok(())
}

/// Line width of series `i` of `n`: earlier series are drawn wider, so where lines
/// coincide (common: a parameter that changes nothing over a range) the ones underneath
/// still show as a coloured edge instead of vanishing.
fn width_of(i: usize, n: usize) -> u32 {
    let below = n.saturating_sub(1 + i) as u32;
    // Steps of 2 px while that stays within 8 px, else 1 px (and the last few alike).
    let step = if n > 4 { 1 } else { 2 };
    (2 + below * step).min(8)
}

/// A dashed vertical line at the recommended x, and a ring on each recommended point.
fn mark<DB: DrawingBackend>(
    chart: &mut Chart<'_, DB>,
    picked: Option<usize>,
    rows: &[Row],
    spec: &Spec<'_>,
    metrics: &[usize],
) -> Result<(), Box<dyn Error>>
where
    DB::ErrorType: 'static,
{
    let Some(i) = picked else {
        return Ok(());
    };
    let x = rows[i].values[0].as_f64();
    let grey = RGBColor(90, 90, 90);
    chart.draw_series(DashedLineSeries::new(
        [(x, 0.0), (x, Y_TOP)],
        8,
        6,
        grey.stroke_width(2),
    ))?;
    // The label goes on whichever side of the line has room.
    let (x_lo, x_hi) = (chart.x_range().start, chart.x_range().end);
    let right_half = x > (x_lo + x_hi) / 2.0;
    let (hpos, nudge) = if right_half {
        (HPos::Right, -(x_hi - x_lo) * 0.01)
    } else {
        (HPos::Left, (x_hi - x_lo) * 0.01)
    };
    chart.draw_series(std::iter::once(Text::new(
        format!("recommended {}", rows[i].values[0]),
        (x + nudge, Y_TOP - 0.005),
        (FONT, 15)
            .into_font()
            .color(&grey)
            .pos(Pos::new(hpos, VPos::Top)),
    )))?;
    for &m in metrics {
        if let Some(y) = metric(&rows[i], spec.detector, m) {
            chart.draw_series(std::iter::once(Circle::new(
                (x, y),
                9,
                BLACK.stroke_width(2),
            )))?;
        }
    }
    Ok(())
}

/// Width of the legend strip right of the charts.
const LEGEND_W: u32 = 250;

/// A legend drawn by hand in its own strip: a sample line and a label per entry, and the
/// recommended-value marks if there are any.
fn legend<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    title: &str,
    entries: &[(String, RGBColor, bool)],
    recommended: bool,
) -> Result<(), Box<dyn Error>>
where
    DB::ErrorType: 'static,
{
    let text = (FONT, 15).into_font().color(&BLACK);
    let mut y = 40;
    if !title.is_empty() {
        area.draw(&Text::new(title.to_string(), (8, y), text.clone()))?;
        y += 26;
    }
    for (label, color, dashed) in entries {
        let mid = y + 9;
        if *dashed {
            for (a, b) in [(8, 18), (24, 34)] {
                area.draw(&PathElement::new(
                    vec![(a, mid), (b, mid)],
                    color.stroke_width(3),
                ))?;
            }
        } else {
            area.draw(&PathElement::new(
                vec![(8, mid), (34, mid)],
                color.stroke_width(3),
            ))?;
        }
        area.draw(&Circle::new((21, mid), 4, color.filled()))?;
        area.draw(&Text::new(label.clone(), (44, y), text.clone()))?;
        y += 24;
    }
    if recommended {
        y += 12;
        let grey = RGBColor(90, 90, 90);
        area.draw(&PathElement::new(
            vec![(21, y), (21, y + 18)],
            grey.stroke_width(2),
        ))?;
        area.draw(&Circle::new((21, y + 9), 8, BLACK.stroke_width(2)))?;
        area.draw(&Text::new("recommended", (44, y), text))?;
    }
    Ok(())
}
