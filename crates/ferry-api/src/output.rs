//! What a command returns, before it is printed or put on a reply tube.

use serde::Serialize;
use serde_json::{Map, Value};

/// The result of a command that did not fail as a whole.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Outcome {
    /// A one-line report.
    Message { message: String },
    /// Rows of a listing.
    Listing(Listing),
    /// One result per env (commands that take a glob).
    PerEnv { results: Vec<EnvResult> },
    /// A command run inside an env finished with this status.
    Exited { status: i32 },
}

impl Outcome {
    pub fn message(m: impl Into<String>) -> Outcome {
        Outcome::Message { message: m.into() }
    }

    /// The exit code this outcome maps to.
    pub fn exit_code(&self) -> i32 {
        match self {
            Outcome::Message { .. } | Outcome::Listing(_) => crate::exit::OK,
            Outcome::Exited { status } => *status,
            Outcome::PerEnv { results } => {
                let mut codes = results
                    .iter()
                    .map(|r| r.code)
                    .filter(|c| *c != crate::exit::OK);
                match codes.next() {
                    None => crate::exit::OK,
                    Some(first) if codes.all(|c| c == first) => first,
                    Some(_) => crate::exit::FAILED,
                }
            }
        }
    }
}

/// A table: column names in display order and one JSON object per row.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Listing {
    pub columns: Vec<String>,
    pub rows: Vec<Map<String, Value>>,
}

impl Listing {
    /// An empty listing with these columns, narrowed to a CBSD-style
    /// `display=` list when one is given.
    pub fn new(columns: &[&str], display: Option<&str>) -> Result<Listing, String> {
        let mut l = Listing {
            columns: columns.iter().map(|c| (*c).to_owned()).collect(),
            rows: Vec::new(),
        };
        if let Some(d) = display {
            l.select(d)?;
        }
        Ok(l)
    }

    /// Add a row; `row` must be a JSON object (anything else is skipped).
    pub fn push(&mut self, row: Value) {
        if let Value::Object(m) = row {
            self.rows.push(m);
        }
    }

    /// Keep only the columns named in a CBSD-style `display=` list.
    pub fn select(&mut self, display: &str) -> Result<(), String> {
        let wanted: Vec<String> = display.split(',').map(|c| c.trim().to_owned()).collect();
        if let Some(bad) = wanted.iter().find(|w| !self.columns.contains(w)) {
            return Err(format!(
                "no column {bad:?}; columns are {}",
                self.columns.join(",")
            ));
        }
        self.columns = wanted;
        Ok(())
    }

    /// Render as an aligned text table.
    pub fn to_text(&self, header: bool) -> String {
        let cell = |v: Option<&Value>| match v {
            None | Some(Value::Null) => "-".to_owned(),
            Some(Value::String(s)) if s.is_empty() => "-".to_owned(),
            Some(Value::String(s)) => s.clone(),
            Some(Value::Bool(b)) => if *b { "1" } else { "0" }.to_owned(),
            Some(v) => v.to_string(),
        };
        let mut grid: Vec<Vec<String>> = Vec::with_capacity(self.rows.len() + 1);
        if header {
            grid.push(self.columns.iter().map(|c| c.to_uppercase()).collect());
        }
        for row in &self.rows {
            grid.push(self.columns.iter().map(|c| cell(row.get(c))).collect());
        }
        let widths: Vec<usize> = (0..self.columns.len())
            .map(|i| grid.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
            .collect();
        let mut out = String::new();
        for r in grid {
            let line: Vec<String> = r
                .iter()
                .zip(&widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect();
            out.push_str(line.join("  ").trim_end());
            out.push('\n');
        }
        out
    }

    /// Render as a JSON array of objects holding the selected columns.
    pub fn to_json(&self) -> Value {
        Value::Array(
            self.rows
                .iter()
                .map(|r| {
                    Value::Object(
                        self.columns
                            .iter()
                            .map(|c| (c.clone(), r.get(c).cloned().unwrap_or(Value::Null)))
                            .collect(),
                    )
                })
                .collect(),
        )
    }
}

/// What happened to one env of a glob.
#[derive(Debug, Clone, Serialize)]
pub struct EnvResult {
    pub jname: String,
    /// The exit code this env alone would have given.
    pub code: i32,
    pub message: String,
}
