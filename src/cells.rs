//! The optional cell map: `cell,area,class` CSV with a header, `class` = `metro` | `county`.
//! Read with [`crate::sheet`], so a spreadsheet's file works as it is: columns in any order,
//! extra columns ignored, `class` in any case.
//!
//! Loaded and validated now so a bad file fails at start with every bad row named; the
//! movement detector that will use it (runners between city and town) comes later.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use crate::sheet::Sheet;

/// Whether a cell serves the exporting city or a county town.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CellClass {
    Metro,
    County,
}

/// One cell's area and class.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CellInfo {
    pub area: String,
    pub class: CellClass,
}

/// Cell id → area and class.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CellMap {
    cells: HashMap<String, CellInfo>,
}

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
            Ok(CellMap { cells })
        } else {
            Err(CellMapError { problems })
        }
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
    fn header_is_required() {
        assert!(CellMap::parse("c1,Leeds,metro\n").is_err());
    }
}
