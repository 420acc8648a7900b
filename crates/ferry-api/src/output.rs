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

    /// The outcome as the command line shows it, in `format`: what goes to
    /// stdout, and the lines about envs that failed, for stderr.
    pub fn render(&self, format: Format) -> Rendered {
        let mut r = Rendered::default();
        match (self, format) {
            (Outcome::Listing(l), Format::Json) => r.stdout = format!("{}\n", l.to_json()),
            (Outcome::Listing(l), Format::Text) => r.stdout = l.to_text(l.header),
            (Outcome::Exited { .. }, _) => {}
            (o, Format::Json) => {
                r.stdout = format!("{}\n", serde_json::to_string(o).unwrap_or_default());
            }
            (Outcome::Message { message }, Format::Text) => r.stdout = format!("{message}\n"),
            (Outcome::PerEnv { results }, Format::Text) => {
                for res in results {
                    if res.code == crate::exit::OK {
                        r.stdout.push_str(&res.message);
                        r.stdout.push('\n');
                    } else {
                        r.errors.push(format!("{}: {}", res.jname, res.message));
                    }
                }
            }
        }
        r
    }

    /// The outcome as one text, failures of single envs included: the
    /// message of a broker reply, the end of a task's log.
    pub fn to_text(&self) -> String {
        match self {
            Outcome::Exited { status } => format!("exit status {status}"),
            o => {
                let r = o.render(Format::Text);
                let mut lines: Vec<&str> = r.stdout.lines().collect();
                lines.extend(r.errors.iter().map(String::as_str));
                lines.join("\n")
            }
        }
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

/// How the command line prints an outcome (`--json` or not).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

/// An outcome rendered for the command line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rendered {
    /// For stdout, newline-terminated.
    pub stdout: String,
    /// One line per env that failed (`jname: why`), for stderr.
    pub errors: Vec<String>,
}

/// A `display=` column the listing does not have.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no column {column:?}; columns are {columns}")]
pub struct ColumnError {
    pub column: String,
    pub columns: String,
}

pub use ferry_core::model::Columns;

/// How a listing is asked for: CBSD's `display=` and `header=`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct View {
    /// Comma-separated columns, in the order to show them.
    pub display: Option<String>,
    /// Print the header line (text only; CBSD's `header=0` leaves it out).
    pub header: bool,
}

/// A table: column names in display order and one JSON object per row.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Listing {
    pub columns: Vec<String>,
    pub rows: Vec<Map<String, Value>>,
    /// Whether the text form starts with a header line.
    #[serde(skip)]
    pub header: bool,
}

impl Listing {
    /// An empty listing with these columns, narrowed to a CBSD-style
    /// `display=` list when one is given.
    pub fn new(columns: &[&str], display: Option<&str>) -> Result<Listing, ColumnError> {
        let mut l = Listing {
            columns: columns.iter().map(|c| (*c).to_owned()).collect(),
            rows: Vec::new(),
            header: true,
        };
        if let Some(d) = display {
            l.select(d)?;
        }
        Ok(l)
    }

    /// An empty listing of `columns` as `view` asks for it: its default
    /// columns, or those `display=` names (any of all it has), with or
    /// without a header.
    pub fn of(columns: Columns, view: &View) -> Result<Listing, ColumnError> {
        let every: Vec<&str> = columns.every().collect();
        let mut l = Listing::new(&every, None)?;
        match &view.display {
            Some(d) => l.select(d)?,
            None => l.columns = columns.default.iter().map(|c| (*c).to_owned()).collect(),
        }
        l.header = view.header;
        Ok(l)
    }

    /// Add a row; `row` must be a JSON object (anything else is skipped).
    pub fn push(&mut self, row: Value) {
        if let Value::Object(m) = row {
            self.rows.push(m);
        }
    }

    /// Keep only the columns named in a CBSD-style `display=` list.
    pub fn select(&mut self, display: &str) -> Result<(), ColumnError> {
        let wanted: Vec<String> = display.split(',').map(|c| c.trim().to_owned()).collect();
        if let Some(bad) = wanted.iter().find(|w| !self.columns.contains(w)) {
            return Err(ColumnError {
                column: bad.clone(),
                columns: self.columns.join(","),
            });
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

#[cfg(test)]
mod tests {
    use super::*;

    fn per_env() -> Outcome {
        let r = |j: &str, code, m: &str| EnvResult {
            jname: j.into(),
            code,
            message: m.into(),
        };
        Outcome::PerEnv {
            results: vec![r("a", 0, "a started"), r("b", 4, "b is running")],
        }
    }

    #[test]
    fn per_env_failures_go_apart_on_the_command_line_and_together_in_a_reply() {
        let r = per_env().render(Format::Text);
        assert_eq!(r.stdout, "a started\n");
        assert_eq!(r.errors, ["b: b is running"]);
        assert_eq!(per_env().to_text(), "a started\nb: b is running");
        assert_eq!(per_env().exit_code(), 4);
        let json = per_env().render(Format::Json).stdout;
        assert!(
            json.starts_with(r#"{"type":"perenv","results":["#),
            "{json}"
        );
    }

    #[test]
    fn a_view_shows_the_default_columns_or_any_it_names_and_leaves_the_header_out_when_asked() {
        const COLS: Columns = Columns {
            default: &["jname", "status"],
            more: &["jid", "ip4_addr", "node"],
        };
        let row = serde_json::json!({"jname": "j1", "jid": 7, "ip4_addr": "", "status": "running", "node": "n1"});
        let mut l = Listing::of(
            COLS,
            &View {
                display: None,
                header: true,
            },
        )
        .unwrap();
        l.push(row.clone());
        assert_eq!(
            Outcome::Listing(l).to_text(),
            "JNAME  STATUS\nj1     running"
        );
        let view = View {
            display: Some("jname,jid,ip4_addr,status".into()),
            header: false,
        };
        let mut l = Listing::of(COLS, &view).unwrap();
        l.push(row);
        assert_eq!(
            l.to_json(),
            serde_json::json!([{"jname": "j1", "jid": 7, "ip4_addr": "", "status": "running"}])
        );
        assert_eq!(Outcome::Listing(l).to_text(), "j1  7  -  running");
        let e = Listing::of(
            COLS,
            &View {
                display: Some("jname,colour".into()),
                header: true,
            },
        )
        .unwrap_err();
        assert_eq!(e.column, "colour");
    }

    #[test]
    fn a_command_run_in_an_env_prints_nothing_of_its_own_but_its_reply_says_how_it_ended() {
        let o = Outcome::Exited { status: 3 };
        assert_eq!(o.render(Format::Text), Rendered::default());
        assert_eq!(o.to_text(), "exit status 3");
        assert_eq!(o.exit_code(), 3);
        assert_eq!(Outcome::message("hi").render(Format::Text).stdout, "hi\n");
    }
}
