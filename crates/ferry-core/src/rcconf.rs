//! The env definition codec: CBSD-compatible `rc.conf_<jname>` files.
//!
//! A definition file is a header comment followed by one `key="value";` per
//! line. It is data: this module parses it strictly and never lets a shell
//! near it. Values escape `\\`, `\"`, `\$`, `` \` `` and newline (`\n`); any
//! other character except NUL is written raw, so every [`Definition`] that
//! [`Definition::set`] accepts survives a render and parse unchanged.
//!
//! Path keys ([`PATH_KEYS`]) inside the workdir are stored relative to it, so
//! a definition registers on a node whose workdir path differs. On reading,
//! CBSD's `${CBSDROOT}/` prefix (and `$CBSDROOT/`, `${workdir}/`,
//! `$workdir/`) and the absolute workdir path are both turned into relative
//! paths; on writing, absolute paths inside the workdir are made relative.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};

use crate::atomic::write_atomic;

/// Keys whose values are paths, relative to the workdir when inside it.
pub const PATH_KEYS: &[&str] = &[
    "path",
    "data",
    "rcconf",
    "mount_fstab",
    "vm_kernel",
    "vm_initrd",
    "mnt_start",
    "mnt_stop",
];

/// Largest definition file accepted, in bytes (1 MiB).
pub const MAX_SIZE: usize = 1 << 20;

/// Longest key, in bytes.
pub const MAX_KEY_LEN: usize = 64;

/// Prefixes CBSD writes for "the workdir" at the start of a path value.
const WORKDIR_MARKERS: &[&str] = &["${CBSDROOT}/", "$CBSDROOT/", "${workdir}/", "$workdir/"];

/// Longest key quoted in an error message; longer ones are cut.
const MAX_QUOTED_KEY: usize = 80;

/// Whether values of `key` are paths that are stored relative to the workdir.
pub fn is_path_key(key: &str) -> bool {
    PATH_KEYS.contains(&key)
}

/// One env definition: ordered key/value pairs, unknown keys kept.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Definition {
    /// In file order. Keys are valid and unique, values hold no NUL.
    entries: Vec<(String, String)>,
}

/// What is wrong with a definition file, with the 1-based line number.
///
/// Line 0 means the error is not tied to a line: the whole file (too large)
/// or a value given to [`Definition::set`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{kind}", LinePrefix(*.line))]
pub struct ParseError {
    pub line: usize,
    pub kind: ParseErrorKind,
}

/// Displays `line N: ` for a real line and nothing for line 0.
struct LinePrefix(usize);

impl std::fmt::Display for LinePrefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            0 => Ok(()),
            n => write!(f, "line {n}: "),
        }
    }
}

/// The ways a definition file can be malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseErrorKind {
    #[error(
        "invalid key {0:?}; a key is a letter or '_' followed by letters, digits or '_', \
         at most {MAX_KEY_LEN} characters"
    )]
    BadKey(String),
    #[error("spaces around '=' after {key} are not allowed; write {key}=\"value\";")]
    SpaceAroundEquals { key: String },
    #[error("key {key} is already defined on line {first_line}")]
    DuplicateKey { key: String, first_line: usize },
    #[error("no '=' found; expected key=\"value\";")]
    MissingEquals,
    #[error("value of {key} must be in double quotes")]
    MissingQuote { key: String },
    #[error("value of {key} has no closing quote")]
    UnterminatedValue { key: String },
    #[error("value of {key} contains an unknown escape: a backslash before {ch:?}")]
    BadEscape { key: String, ch: char },
    #[error("value of {key} contains an unescaped {ch:?}; this file is data, not shell")]
    ShellSyntax { key: String, ch: char },
    #[error("unexpected text after the closing quote of {key}'s value")]
    TrailingGarbage { key: String },
    #[error("value of {key} contains a NUL character")]
    Nul { key: String },
    #[error("file is not valid UTF-8")]
    NotUtf8,
    #[error("file is {0} bytes; at most {MAX_SIZE} are allowed")]
    TooLarge(usize),
}

/// Why [`Definition::load`] failed.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("invalid definition {path}")]
    Parse {
        path: PathBuf,
        #[source]
        source: ParseError,
    },
}

impl Definition {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The value of path key `key` as a path: relative values are resolved
    /// against `workdir`, absolute ones are returned as they are.
    pub fn resolve_path(&self, key: &str, workdir: &Path) -> Option<PathBuf> {
        let value = Path::new(self.get(key)?);
        Some(if value.is_absolute() {
            value.to_path_buf()
        } else {
            workdir.join(value)
        })
    }

    /// Insert or replace (keeping position on replace). Returns Err on an
    /// invalid key or a value containing NUL; the error's line is 0.
    pub fn set(&mut self, key: &str, value: impl Into<String>) -> Result<(), ParseError> {
        let value = value.into();
        let fail = |kind| ParseError { line: 0, kind };
        check_key(key).map_err(fail)?;
        if value.contains('\0') {
            return Err(fail(ParseErrorKind::Nul {
                key: key.to_owned(),
            }));
        }
        match self.entries.iter_mut().find(|(k, _)| k == key) {
            Some((_, v)) => *v = value,
            None => self.entries.push((key.to_owned(), value)),
        }
        Ok(())
    }

    pub fn remove(&mut self, key: &str) -> Option<String> {
        let at = self.entries.iter().position(|(k, _)| k == key)?;
        Some(self.entries.remove(at).1)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        self.entries.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Parse file text. `workdir` is the absolute workdir root used to
    /// relativise path keys.
    ///
    /// Text already in memory is not size-checked, so that every rendering
    /// parses back; [`Definition::parse_bytes`] and [`Definition::load`],
    /// which take untrusted input, cap it at [`MAX_SIZE`].
    pub fn parse(text: &str, workdir: &Path) -> Result<Definition, ParseError> {
        let prefix = workdir_prefix(workdir);
        let mut entries = Vec::new();
        let mut seen: HashMap<String, usize> = HashMap::new();
        for (index, raw) in text.split('\n').enumerate() {
            let line = index + 1;
            let fail = |kind| ParseError { line, kind };
            let Some((key, value)) = parse_line(raw, prefix.as_deref()).map_err(fail)? else {
                continue;
            };
            if let Some(&first_line) = seen.get(&key) {
                return Err(fail(ParseErrorKind::DuplicateKey {
                    key: clip(&key),
                    first_line,
                }));
            }
            seen.insert(key.clone(), line);
            entries.push((key, value));
        }
        Ok(Definition { entries })
    }

    /// Parse raw bytes (checks size and UTF-8 first) — this is the fuzz
    /// entry point.
    pub fn parse_bytes(bytes: &[u8], workdir: &Path) -> Result<Definition, ParseError> {
        if bytes.len() > MAX_SIZE {
            return Err(ParseError {
                line: 0,
                kind: ParseErrorKind::TooLarge(bytes.len()),
            });
        }
        let text = std::str::from_utf8(bytes).map_err(|e| ParseError {
            line: 1 + bytes[..e.valid_up_to()]
                .iter()
                .filter(|&&b| b == b'\n')
                .count(),
            kind: ParseErrorKind::NotUtf8,
        })?;
        Self::parse(text, workdir)
    }

    /// The file text: a header comment, then `key="value";` per entry in
    /// stored order, path keys inside `workdir` made relative.
    pub fn render(&self, workdir: &Path) -> String {
        let prefix = workdir_prefix(workdir);
        let mut out = match self.get("jname").filter(|n| is_safe_name(n)) {
            Some(jname) => format!("# ferry definition of {jname}"),
            None => "# ferry definition".to_owned(),
        };
        out.push_str(" (data: edit with ferry, never source this file)\n");
        for (key, value) in &self.entries {
            let value = match prefix.as_deref() {
                Some(prefix) if is_path_key(key) => relativise(value, prefix).unwrap_or(value),
                _ => value,
            };
            out.push_str(key);
            out.push_str("=\"");
            escape_into(&mut out, value);
            out.push_str("\";\n");
        }
        out
    }

    /// Read and parse a file.
    pub fn load(path: &Path, workdir: &Path) -> Result<Definition, LoadError> {
        Self::load_raw(path, workdir).map(|(_, def)| def)
    }

    /// Read and parse a file, keeping its bytes (to copy it exactly).
    pub fn load_raw(path: &Path, workdir: &Path) -> Result<(Vec<u8>, Definition), LoadError> {
        let io_err = |source| LoadError::Io {
            path: path.to_owned(),
            source,
        };
        let parse_err = |source| LoadError::Parse {
            path: path.to_owned(),
            source,
        };
        let mut file = File::open(path).map_err(io_err)?;
        let mut bytes = Vec::new();
        (&mut file)
            .take(MAX_SIZE as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(io_err)?;
        if bytes.len() > MAX_SIZE {
            // Report the real size, not how far we read.
            let size = file.metadata().map_or(0, |m| m.len());
            let size = usize::try_from(size).unwrap_or(usize::MAX).max(bytes.len());
            return Err(parse_err(ParseError {
                line: 0,
                kind: ParseErrorKind::TooLarge(size),
            }));
        }
        let def = Self::parse_bytes(&bytes, workdir).map_err(parse_err)?;
        Ok((bytes, def))
    }

    /// Render and write atomically (mode 0644). Refuses, writing nothing, a
    /// definition whose rendering exceeds [`MAX_SIZE`]: it could not be
    /// loaded again.
    pub fn store(&self, path: &Path, workdir: &Path) -> io::Result<()> {
        let text = self.render(workdir);
        if text.len() > MAX_SIZE {
            return Err(io::Error::new(
                io::ErrorKind::FileTooLarge,
                ParseErrorKind::TooLarge(text.len()),
            ));
        }
        write_atomic(path, text.as_bytes(), 0o644)
    }
}

/// Parse one line: `None` for a blank or comment line.
fn parse_line(raw: &str, prefix: Option<&str>) -> Result<Option<(String, String)>, ParseErrorKind> {
    let line = raw.trim_start_matches([' ', '\t']);
    if line.trim_end_matches([' ', '\t', '\r']).is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    let (key, rest) = line.split_once('=').ok_or(ParseErrorKind::MissingEquals)?;
    if key != key.trim_end_matches([' ', '\t']) || rest.starts_with([' ', '\t']) {
        let bare = key.trim_end_matches([' ', '\t']);
        if check_key(bare).is_ok() {
            return Err(ParseErrorKind::SpaceAroundEquals {
                key: bare.to_owned(),
            });
        }
    }
    check_key(key)?;
    let body = rest
        .strip_prefix('"')
        .ok_or_else(|| ParseErrorKind::MissingQuote {
            key: key.to_owned(),
        })?;
    let marker = WORKDIR_MARKERS
        .iter()
        .find(|m| is_path_key(key) && body.starts_with(**m));
    let body = &body[marker.map_or(0, |m| m.len())..];
    let (mut value, after) = unescape(key, body)?;
    let after = after.strip_prefix(';').unwrap_or(after);
    if !after.trim_end_matches([' ', '\t', '\r']).is_empty() {
        return Err(ParseErrorKind::TrailingGarbage {
            key: key.to_owned(),
        });
    }
    if is_path_key(key) {
        let relative = match (marker, prefix) {
            (Some(_), _) => Some(value.trim_start_matches('/')),
            (None, Some(prefix)) => relativise(&value, prefix),
            (None, None) => None,
        };
        if let Some(relative) = relative {
            value = relative.to_owned();
        }
    }
    Ok(Some((key.to_owned(), value)))
}

/// Unescape a quoted value up to its closing quote; returns the value and
/// the text after the quote.
fn unescape<'a>(key: &str, body: &'a str) -> Result<(String, &'a str), ParseErrorKind> {
    let mut value = String::with_capacity(body.len());
    let mut chars = body.char_indices();
    while let Some((at, ch)) = chars.next() {
        match ch {
            '"' => return Ok((value, &body[at + 1..])),
            '\\' => match chars.next() {
                Some((_, c @ ('\\' | '"' | '$' | '`'))) => value.push(c),
                Some((_, 'n')) => value.push('\n'),
                Some((_, ch)) => {
                    return Err(ParseErrorKind::BadEscape {
                        key: key.to_owned(),
                        ch,
                    })
                }
                None => break,
            },
            '$' | '`' => {
                return Err(ParseErrorKind::ShellSyntax {
                    key: key.to_owned(),
                    ch,
                })
            }
            '\0' => {
                return Err(ParseErrorKind::Nul {
                    key: key.to_owned(),
                })
            }
            c => value.push(c),
        }
    }
    Err(ParseErrorKind::UnterminatedValue {
        key: key.to_owned(),
    })
}

/// Append `value` with `\`, `"`, `$`, `` ` `` and newline escaped.
fn escape_into(out: &mut String, value: &str) {
    for ch in value.chars() {
        match ch {
            '\\' | '"' | '$' | '`' => {
                out.push('\\');
                out.push(ch);
            }
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

fn check_key(key: &str) -> Result<(), ParseErrorKind> {
    let mut chars = key.chars();
    let valid = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && key.len() <= MAX_KEY_LEN;
    if valid {
        Ok(())
    } else {
        Err(ParseErrorKind::BadKey(clip(key)))
    }
}

/// `s`, cut to a length fit for an error message.
fn clip(s: &str) -> String {
    match s.char_indices().nth(MAX_QUOTED_KEY) {
        Some((at, _)) => format!("{}...", &s[..at]),
        None => s.to_owned(),
    }
}

/// Whether a jname is harmless inside the header comment.
fn is_safe_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_KEY_LEN
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// `<workdir>/` in normal form, if `workdir` is an absolute UTF-8 path
/// without `..`; otherwise absolute paths are never made relative.
fn workdir_prefix(workdir: &Path) -> Option<String> {
    if !workdir.is_absolute() {
        return None;
    }
    let mut prefix = String::from("/");
    for component in workdir.components() {
        match component {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(part) => {
                prefix.push_str(part.to_str()?);
                prefix.push('/');
            }
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(prefix)
}

/// `value` relative to the workdir whose normal form is `prefix`, if it lies
/// inside it. Extra slashes after the prefix are dropped, so the result never
/// starts with `/` and relativising is idempotent.
fn relativise<'a>(value: &'a str, prefix: &str) -> Option<&'a str> {
    value
        .strip_prefix(prefix)
        .map(|rest| rest.trim_start_matches('/'))
}

#[cfg(test)]
mod tests;
