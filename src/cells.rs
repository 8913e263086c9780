//! The optional cell map: `cell,area,class` CSV with a header, `class` = `metro` | `county`.
//!
//! Loaded and validated now so a bad file fails at start with every bad row named; the
//! movement detector that will use it (runners between city and town) comes later.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

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
        let text = std::fs::read_to_string(path).map_err(|e| CellMapError {
            problems: vec![format!("cannot read cell map {}: {e}", path.display())],
        })?;
        CellMap::parse(&text).map_err(|mut e| {
            for p in &mut e.problems {
                *p = format!("{}: {p}", path.display());
            }
            e
        })
    }

    pub fn parse(text: &str) -> Result<CellMap, CellMapError> {
        let mut problems = Vec::new();
        let mut cells = HashMap::new();
        let mut lines = text.lines().enumerate();
        match lines.next() {
            Some((_, h))
                if h.trim()
                    .split(',')
                    .map(str::trim)
                    .eq(["cell", "area", "class"]) => {}
            _ => problems.push("line 1: header must be `cell,area,class`".to_string()),
        }
        for (i, line) in lines {
            let n = i + 1;
            if line.trim().is_empty() {
                continue;
            }
            let f: Vec<&str> = line.split(',').map(str::trim).collect();
            if f.len() != 3 {
                problems.push(format!("line {n}: expected 3 fields, found {}", f.len()));
                continue;
            }
            if f[0].is_empty() {
                problems.push(format!("line {n}: empty cell id"));
                continue;
            }
            let class = match f[2] {
                "metro" => CellClass::Metro,
                "county" => CellClass::County,
                other => {
                    problems.push(format!(
                        "line {n}: class must be metro or county, got {other:?}"
                    ));
                    continue;
                }
            };
            let info = CellInfo {
                area: f[1].to_string(),
                class,
            };
            if cells.insert(f[0].to_string(), info).is_some() {
                problems.push(format!("line {n}: cell {:?} listed twice", f[0]));
            }
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
        assert!(e.problems[0].starts_with("line 2:"));
        assert!(e.problems[1].starts_with("line 3:"));
        assert!(e.problems[2].starts_with("line 5:"));
    }

    #[test]
    fn header_is_required() {
        assert!(CellMap::parse("c1,Leeds,metro\n").is_err());
    }
}
