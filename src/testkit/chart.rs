//! Line charts as SVG (plotters), for the benchmark's figures against message size and the
//! launcher's forwards per second: one look for both.

use std::error::Error;
use std::path::Path;

use plotters::coord::{CoordTranslate, Shift};
use plotters::prelude::*;

/// Draws the legend of `chart`'s labelled series in its upper right corner, as every chart
/// here has it.
pub fn legend<'a, DB, CT>(chart: &mut ChartContext<'a, DB, CT>) -> Result<(), Box<dyn Error>>
where
    DB: DrawingBackend + 'a,
    DB::ErrorType: 'static,
    CT: CoordTranslate,
{
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

/// One line of a chart.
pub struct Line {
    /// Its name in the legend.
    pub name: String,
    /// Its points, `(x, y)`.
    pub points: Vec<(f64, f64)>,
    /// Its colour, red, green and blue.
    pub color: (u8, u8, u8),
}

/// A chart of lines.
pub struct Lines {
    /// The caption.
    pub title: String,
    /// What the horizontal axis shows.
    pub x: String,
    /// What the vertical axis shows.
    pub y: String,
    /// Both axes on log scales (with a dot at each point), else linear from 0.
    pub log: bool,
    /// The lines.
    pub lines: Vec<Line>,
}

impl Lines {
    /// Draws the chart into `area`.
    pub fn draw<DB: DrawingBackend>(
        &self,
        area: &DrawingArea<DB, Shift>,
    ) -> Result<(), Box<dyn Error>>
    where
        DB::ErrorType: 'static,
    {
        let points = || self.lines.iter().flat_map(|l| l.points.iter().copied());
        let (x_max, y_max) = points().fold((1.0f64, 1.0f64), |(x, y), p| (x.max(p.0), y.max(p.1)));
        let mut builder = ChartBuilder::on(area);
        builder
            .caption(&self.title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(42)
            .y_label_area_size(80);
        if self.log {
            let (x_min, y_min) =
                points().fold((f64::MAX, f64::MAX), |(x, y), p| (x.min(p.0), y.min(p.1)));
            let mut chart = builder.build_cartesian_2d(
                (x_min.min(x_max) / 1.5..x_max * 1.5).log_scale(),
                (y_min.min(y_max) / 2.0..y_max * 2.0).log_scale(),
            )?;
            chart
                .configure_mesh()
                .x_desc(&self.x)
                .y_desc(&self.y)
                .x_label_formatter(&|x| format!("{x:.0}"))
                .y_label_formatter(&|y| format!("{y:.0}"))
                .draw()?;
            for line in &self.lines {
                let color = RGBColor(line.color.0, line.color.1, line.color.2);
                chart.draw_series(
                    line.points
                        .iter()
                        .map(|p| Circle::new(*p, 4, color.filled())),
                )?;
            }
            self.series(&mut chart)
        } else {
            let mut chart = builder.build_cartesian_2d(0f64..x_max * 1.15, 0f64..y_max * 1.1)?;
            chart
                .configure_mesh()
                .x_desc(&self.x)
                .y_desc(&self.y)
                .draw()?;
            self.series(&mut chart)
        }
    }

    /// The lines and their legend on a chart built either way.
    fn series<'a, DB, X, Y>(
        &self,
        chart: &mut ChartContext<'a, DB, Cartesian2d<X, Y>>,
    ) -> Result<(), Box<dyn Error>>
    where
        DB: DrawingBackend + 'a,
        DB::ErrorType: 'static,
        X: Ranged<ValueType = f64>,
        Y: Ranged<ValueType = f64>,
    {
        for line in &self.lines {
            let color = RGBColor(line.color.0, line.color.1, line.color.2);
            chart
                .draw_series(LineSeries::new(line.points.clone(), color.stroke_width(2)))?
                .label(line.name.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 15, y)], color));
        }
        legend(chart)
    }

    /// Writes the chart to `path` as an SVG of `size` pixels.
    pub fn save(&self, path: &Path, size: (u32, u32)) -> Result<(), Box<dyn Error>> {
        let root = SVGBackend::new(path, size).into_drawing_area();
        root.fill(&WHITE)?;
        self.draw(&root)?;
        root.present()?;
        Ok(())
    }
}
