//! The optional cell map: `cell,area,class` CSV with a header, `class` = `metro` | `county`.
//! Read with [`crate::sheet`], so a spreadsheet's file works as it is: columns in any order,
//! extra columns ignored, `class` in any case.
//!
//! Loaded and validated at start so a bad file fails with every bad row named. The engine
//! resolves each record's `cell` through it ([`CellMap::resolve`]: one hash lookup) for
//! `runner_movement`, which follows handsets between metro and county areas.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use crate::ids;
use crate::probemap::ProbeMap;
use crate::sheet::Sheet;

/// Whether a cell serves the exporting city or a county town.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum CellClass {
    #[default]
    Metro,
    County,
}

/// One cell's area and class.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CellInfo {
    pub area: String,
    pub class: CellClass,
}

/// Where a known cell is, compactly: its area's index in the map and its class.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CellPlace {
    pub area: u32,
    pub class: CellClass,
}

/// Cell id → area and class.
#[derive(Debug, Clone, Default)]
pub struct CellMap {
    cells: HashMap<String, CellInfo>,
    /// Hash of the cell id → place: the lookup made for every record, without hashing the
    /// string twice or comparing it (a 64-bit collision among a few hundred thousand cells
    /// is a one-in-10^8 event, and would only misplace one cell).
    ///
    /// A [`ProbeMap`]: the slot is found from the key alone, in one array, without `std`'s
    /// control bytes (the lookup was 0.8 % of the engine's samples with `runner_movement`,
    /// `perf`, `runner_cost`). Its `get` is still called out of line in the release build
    /// (see [`crate::probemap`]).
    by_id: ProbeMap<CellPlace>,
    /// Area names, indexed by [`CellPlace::area`].
    areas: Vec<String>,
}

/// Two maps are equal when they hold the same cells (the lookup table and the areas are
/// derived from them).
impl PartialEq for CellMap {
    fn eq(&self, other: &Self) -> bool {
        self.cells == other.cells
    }
}

impl Eq for CellMap {}

/// A cell map that could not be used: every bad row, with its line number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CellMapError {
    pub problems: Vec<String>,
}

impl fmt::Display for CellMapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.problems.join("; "))
    }
}

impl std::error::Error for CellMapError {}

impl CellMap {
    pub fn load(path: &Path) -> Result<CellMap, CellMapError> {
        let text = std::fs::read(path).map_err(|e| CellMapError {
            problems: vec![format!("cannot read cell map {}: {e}", path.display())],
        })?;
        CellMap::parse(&text).map_err(|mut e| {
            for p in &mut e.problems {
                *p = format!("{}: {p}", path.display());
            }
            e
        })
    }

    /// Reads the map as [`crate::sheet`] does (a spreadsheet's file works as it is); every bad
    /// row is reported.
    pub fn parse(data: impl AsRef<[u8]>) -> Result<CellMap, CellMapError> {
        let sheet = Sheet::parse(data.as_ref(), &["cell", "area", "class"])
            .map_err(|e| CellMapError { problems: vec![e] })?;
        // All three found by `Sheet::parse`, which checks required columns.
        let col = |n: &str| sheet.column(n).unwrap_or(0);
        let (ci, ai, ki) = (col("cell"), col("area"), col("class"));
        let mut problems = Vec::new();
        let mut cells = HashMap::new();
        let mut line_of = HashMap::new();
        for row in &sheet.rows {
            let (cell, area, class) = match (
                sheet.required(row, ci),
                sheet.required(row, ai),
                sheet.required(row, ki),
            ) {
                (Ok(c), Ok(a), Ok(k)) => (c, a, k),
                (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
                    problems.push(e);
                    continue;
                }
            };
            let class = match class.to_ascii_lowercase().as_str() {
                "metro" => CellClass::Metro,
                "county" => CellClass::County,
                _ => {
                    problems.push(format!(
                        "{}: class must be metro or county, got {class:?}",
                        sheet.at(row, ki)
                    ));
                    continue;
                }
            };
            let info = CellInfo {
                area: area.to_string(),
                class,
            };
            if cells.insert(cell.to_string(), info).is_some() {
                // `line_of` has every cell inserted before.
                problems.push(format!(
                    "{}: cell {cell:?} listed twice (first on line {})",
                    sheet.at(row, ci),
                    line_of[cell]
                ));
            }
            line_of.entry(cell.to_string()).or_insert(row.line);
        }
        if problems.is_empty() {
            Ok(CellMap::from_cells(cells))
        } else {
            Err(CellMapError { problems })
        }
    }

    fn from_cells(cells: HashMap<String, CellInfo>) -> CellMap {
        let mut areas: Vec<String> = cells.values().map(|c| c.area.clone()).collect();
        areas.sort_unstable();
        areas.dedup();
        let by_id = cells
            .iter()
            .map(|(cell, info)| {
                // `areas` holds every area of `cells`, sorted.
                let area = areas.binary_search(&info.area).unwrap_or(0) as u32;
                let place = CellPlace {
                    area,
                    class: info.class,
                };
                (ids::id(cell), place)
            })
            .collect();
        CellMap {
            cells,
            by_id,
            areas,
        }
    }

    /// The place of a cell, if the map has it.
    #[inline]
    pub fn resolve(&self, cell: &str) -> Option<CellPlace> {
        self.by_id.get(&ids::id(cell)).copied()
    }

    /// The name of an area index from [`CellMap::resolve`].
    pub fn area_name(&self, area: u32) -> &str {
        self.areas.get(area as usize).map_or("", String::as_str)
    }

    /// Whether any cell of the map has this class. A map without one of the two classes
    /// cannot show movement between them: usable, but `runner_movement` will never fire.
    pub fn has_class(&self, class: CellClass) -> bool {
        self.cells.values().any(|c| c.class == class)
    }

    /// A warning for a map that lacks a class, naming the class; `None` when it has both.
    pub fn missing_class_warning(&self) -> Option<String> {
        let missing: Vec<&str> = [(CellClass::Metro, "metro"), (CellClass::County, "county")]
            .into_iter()
            .filter(|(c, _)| !self.has_class(*c))
            .map(|(_, n)| n)
            .collect();
        (!missing.is_empty()).then(|| {
            format!(
                "linewatch: warning: the cell map has no {} cells, so runner_movement cannot see \
                 movement between metro and county areas (every other detector works as usual)",
                missing.join(" or ")
            )
        })
    }

    pub fn get(&self, cell: &str) -> Option<&CellInfo> {
        self.cells.get(cell)
    }

    pub fn len(&self) -> usize {
        self.cells.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cells.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_good_map() {
        let m = CellMap::parse("cell,area,class\nc1,Leeds,metro\nc2,Harrogate,county\n").unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m.get("c2").unwrap().class, CellClass::County);
    }

    #[test]
    fn reports_every_bad_row_with_line_numbers() {
        let e = CellMap::parse(
            "cell,area,class\nc1,Leeds,city\nc2,x\nc1,Leeds,metro\nc1,Leeds,metro\n",
        )
        .unwrap_err();
        assert_eq!(e.problems.len(), 3, "{e}");
        assert!(
            e.problems[0].starts_with("line 2, column 3 (class): "),
            "{e}"
        );
        assert!(
            e.problems[1].starts_with("line 3, column 3 (class): missing"),
            "{e}"
        );
        assert!(
            e.problems[2].starts_with("line 5, column 1 (cell): "),
            "{e}"
        );
        assert!(e.problems[2].ends_with("(first on line 4)"), "{e}");
    }

    /// What a spreadsheet program saves: BOM, every field quoted, CRLF, columns reordered,
    /// an extra column, a trailing all-empty row and blank lines. Before the `csv` crate
    /// this was refused (`header must be cell,area,class`, then `got "\"metro\""`).
    #[test]
    fn reads_a_spreadsheet_saved_file() {
        let text = "\u{feff}\"Class\",\"Cell\",\"Notes\",\"Area\"\r\n\
            \"metro\",\"c1\",\"north, by the \"\"ring road\"\"\",\"Leeds\"\r\n\
            \"County\",\"c2\",\"\",\"Harrogate, North Yorks\"\r\n\
            \"\",\"\",\"\",\"\"\r\n\r\n";
        let m = CellMap::parse(text).unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m.get("c1").unwrap().class, CellClass::Metro);
        let c2 = m.get("c2").unwrap();
        assert_eq!(
            (c2.area.as_str(), c2.class),
            ("Harrogate, North Yorks", CellClass::County)
        );
    }

    #[test]
    fn resolves_cells_to_areas_and_warns_of_a_missing_class() {
        let m = CellMap::parse(
            "cell,area,class\nc1,Leeds,metro\nc2,Harrogate,county\nc3,Leeds,metro\n",
        )
        .unwrap();
        let (a, b, c) = (
            m.resolve("c1").unwrap(),
            m.resolve("c2").unwrap(),
            m.resolve("c3").unwrap(),
        );
        assert_eq!(a.area, c.area);
        assert_ne!(a.area, b.area);
        assert_eq!((m.area_name(a.area), b.class), ("Leeds", CellClass::County));
        assert!(m.resolve("c9").is_none());
        assert!(m.missing_class_warning().is_none());
        let metro_only = CellMap::parse("cell,area,class\nc1,Leeds,metro\n").unwrap();
        let w = metro_only.missing_class_warning().unwrap();
        assert!(w.contains("no county cells"), "{w}");
    }

    #[test]
    fn header_is_required() {
        assert!(CellMap::parse("c1,Leeds,metro\n").is_err());
    }
}
