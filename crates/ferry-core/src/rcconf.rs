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
mod tests {
    use super::*;
    use proptest::prelude::*;

    const WORKDIR: &str = "/usr/jails";

    fn parse(text: &str) -> Result<Definition, ParseError> {
        Definition::parse(text, Path::new(WORKDIR))
    }

    fn parsed(text: &str) -> Definition {
        parse(text).expect("valid definition")
    }

    fn render(d: &Definition) -> String {
        d.render(Path::new(WORKDIR))
    }

    /// The error `text` gives, as (line, kind).
    fn error(text: &str) -> (usize, ParseErrorKind) {
        let e = parse(text).expect_err("invalid definition");
        (e.line, e.kind)
    }

    fn key(k: &str) -> String {
        k.to_owned()
    }

    #[test]
    fn parses_a_cbsd_style_file() {
        let text = "# DO NOT EDIT THIS FILE. PLEASE USE INSTEAD:\n\
                    # cbsd jconfig jname=jail1\n\
                    \n\
                    jname=\"jail1\";\n\
                    path=\"${CBSDROOT}/jails/jail1\";\n\
                    host_hostname=\"jail1.example.org\";\n\
                    exec_start=\"/bin/sh /etc/rc\";\n\
                    ip4_addr=\"10.0.0.2/24\";\n\
                    mount_fstab=\"/usr/jails/jails-fstab/fstab.jail1\";\n\
                    astart=\"1\"\n\
                    emulator=\"jail\";   \n";
        let d = parsed(text);
        let pairs: Vec<_> = d.iter().collect();
        assert_eq!(
            pairs,
            [
                ("jname", "jail1"),
                ("path", "jails/jail1"),
                ("host_hostname", "jail1.example.org"),
                ("exec_start", "/bin/sh /etc/rc"),
                ("ip4_addr", "10.0.0.2/24"),
                ("mount_fstab", "jails-fstab/fstab.jail1"),
                ("astart", "1"),
                ("emulator", "jail"),
            ]
        );
        assert_eq!(d.len(), 8);
        assert_eq!(
            d.resolve_path("path", Path::new(WORKDIR)),
            Some(PathBuf::from("/usr/jails/jails/jail1"))
        );
    }

    #[test]
    fn renders_header_and_entries() {
        let mut d = Definition::new();
        d.set("jname", "jail1").expect("set");
        d.set("path", "/usr/jails/jails/jail1").expect("set");
        d.set("astart", "1").expect("set");
        assert_eq!(
            render(&d),
            "# ferry definition of jail1 (data: edit with ferry, never source this file)\n\
             jname=\"jail1\";\n\
             path=\"jails/jail1\";\n\
             astart=\"1\";\n"
        );
    }

    #[test]
    fn header_never_carries_an_unsafe_jname() {
        let mut d = Definition::new();
        d.set("jname", "x\nrm -rf /").expect("set");
        let text = render(&d);
        assert!(text.starts_with("# ferry definition (data:"), "{text}");
        assert_eq!(parsed(&text), d);
    }

    #[test]
    fn workdir_markers_and_absolute_paths_become_relative() {
        for value in [
            "${CBSDROOT}/jails/j1",
            "$CBSDROOT/jails/j1",
            "${workdir}/jails/j1",
            "$workdir/jails/j1",
            "/usr/jails/jails/j1",
            "/usr/jails//jails/j1",
            "${CBSDROOT}//jails/j1",
            "jails/j1",
        ] {
            let d = parsed(&format!("path=\"{value}\";"));
            assert_eq!(d.get("path"), Some("jails/j1"), "{value}");
        }
        // The workdir may be given with a trailing slash or in another form.
        for workdir in ["/usr/jails/", "/usr/./jails", "//usr/jails"] {
            let d = Definition::parse("data=\"/usr/jails/x\";", Path::new(workdir));
            assert_eq!(d.expect("valid").get("data"), Some("x"), "{workdir}");
        }
    }

    #[test]
    fn relativising_is_idempotent() {
        // A path that names the workdir twice must not shrink on every
        // round trip: `//` is dropped along with the prefix, once.
        for value in ["/usr/jails//usr/jails/x", "${CBSDROOT}//usr/jails/x"] {
            let d = parsed(&format!("path=\"{value}\";"));
            assert_eq!(d.get("path"), Some("usr/jails/x"), "{value}");
            assert_eq!(parsed(&render(&d)), d, "{value}");
        }
    }

    #[test]
    fn paths_outside_the_workdir_stay_absolute() {
        for value in ["/usr/jailsx/j1", "/usr/jails", "/var/db/j1", "jails/${x}"] {
            let text = format!("path=\"{}\";", value.replace('$', "\\$"));
            assert_eq!(parsed(&text).get("path"), Some(value), "{value}");
        }
        // An escaped marker is a literal value, not the workdir.
        let d = parsed("path=\"\\${CBSDROOT}/j1\";");
        assert_eq!(d.get("path"), Some("${CBSDROOT}/j1"));
        assert_eq!(parsed(&render(&d)), d);
    }

    #[test]
    fn a_relative_workdir_relativises_nothing() {
        let d = Definition::parse("path=\"jails/jails/j1\";", Path::new("jails"));
        assert_eq!(d.expect("valid").get("path"), Some("jails/jails/j1"));
    }

    #[test]
    fn workdir_marker_on_other_keys_is_shell_syntax() {
        for marker in WORKDIR_MARKERS {
            let (line, kind) = error(&format!("jname=\"j\";\nhost_hostname=\"{marker}x\";"));
            assert_eq!(line, 2);
            assert_eq!(
                kind,
                ParseErrorKind::ShellSyntax {
                    key: key("host_hostname"),
                    ch: '$'
                }
            );
        }
        // A marker anywhere but at the start is an error for path keys too.
        let (_, kind) = error("path=\"/x/${CBSDROOT}/y\";");
        assert_eq!(
            kind,
            ParseErrorKind::ShellSyntax {
                key: key("path"),
                ch: '$'
            }
        );
    }

    #[test]
    fn unknown_keys_are_kept_in_order_on_round_trip() {
        let text = "zzz_custom=\"1\";\njname=\"j\";\nAAA=\"two words\";\n_x=\"\";\n";
        let d = parsed(text);
        let keys: Vec<_> = d.iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["zzz_custom", "jname", "AAA", "_x"]);
        assert_eq!(parsed(&render(&d)), d);
    }

    #[test]
    fn each_escape_is_decoded_and_encoded() {
        for (escaped, plain) in [
            (r"a\\b", "a\\b"),
            (r#"a\"b"#, "a\"b"),
            (r"a\$b", "a$b"),
            (r"a\`b", "a`b"),
            (r"a\nb", "a\nb"),
        ] {
            let text = format!("k=\"{escaped}\";\n");
            let d = parsed(&text);
            assert_eq!(d.get("k"), Some(plain), "{escaped}");
            assert!(render(&d).ends_with(&text), "{escaped}");
        }
        // Everything else is written raw.
        let raw = "tab\there, cr\r, bell\u{7}, 'single', ;=#, é€😀";
        let mut d = Definition::new();
        d.set("k", raw).expect("set");
        assert!(render(&d).contains(&format!("k=\"{raw}\";")));
        assert_eq!(parsed(&render(&d)), d);
    }

    #[test]
    fn unknown_escapes_are_errors() {
        for (text, ch) in [
            (r#"k="a\tb";"#, 't'),
            (r#"k="\'";"#, '\''),
            (r#"k="\ ";"#, ' '),
        ] {
            assert_eq!(
                error(text),
                (1, ParseErrorKind::BadEscape { key: key("k"), ch }),
                "{text}"
            );
        }
    }

    #[test]
    fn shell_syntax_in_values_is_an_error() {
        for (value, ch) in [
            ("$(rm -rf /)", '$'),
            ("`rm -rf /`", '`'),
            ("a$HOME", '$'),
            ("${x}", '$'),
            ("x`id`", '`'),
        ] {
            let text = format!("# c\nexec_start=\"{value}\";\n");
            assert_eq!(
                error(&text),
                (
                    2,
                    ParseErrorKind::ShellSyntax {
                        key: key("exec_start"),
                        ch
                    }
                ),
                "{value}"
            );
        }
    }

    #[test]
    fn each_error_kind_has_its_line() {
        use ParseErrorKind as K;
        let cases: [(&str, usize, K); 15] = [
            ("a=\"1\";\n9bad=\"x\";", 2, K::BadKey(key("9bad"))),
            ("=\"x\";", 1, K::BadKey(key(""))),
            ("a-b=\"x\";", 1, K::BadKey(key("a-b"))),
            ("export a=\"x\";", 1, K::BadKey(key("export a"))),
            ("\n\nk = \"x\";", 3, K::SpaceAroundEquals { key: key("k") }),
            ("k= \"x\";", 1, K::SpaceAroundEquals { key: key("k") }),
            (
                "k=\"1\";\n#\nk=\"2\";",
                3,
                K::DuplicateKey {
                    key: key("k"),
                    first_line: 1,
                },
            ),
            ("a=\"1\";\njust words", 2, K::MissingEquals),
            ("k=x;", 1, K::MissingQuote { key: key("k") }),
            ("k='x';", 1, K::MissingQuote { key: key("k") }),
            (
                "k=\"x;\nj=\"y\";",
                1,
                K::UnterminatedValue { key: key("k") },
            ),
            ("k=\"x\\", 1, K::UnterminatedValue { key: key("k") }),
            ("k=\"a\"b\";", 1, K::TrailingGarbage { key: key("k") }),
            ("k=\"a\";;", 1, K::TrailingGarbage { key: key("k") }),
            ("\nk=\"a\0b\";", 2, K::Nul { key: key("k") }),
        ];
        for (text, line, kind) in cases {
            assert_eq!(error(text), (line, kind), "{text:?}");
        }
        let more = [
            ("k=\"a\" ;", K::TrailingGarbage { key: key("k") }),
            ("k=\"a\"; # note", K::TrailingGarbage { key: key("k") }),
        ];
        for (text, kind) in more {
            assert_eq!(error(text), (1, kind), "{text:?}");
        }
    }

    #[test]
    fn long_keys_are_rejected_and_clipped_in_messages() {
        let ok = "k".repeat(MAX_KEY_LEN);
        assert_eq!(parsed(&format!("{ok}=\"1\"")).get(&ok), Some("1"));
        let long = "k".repeat(MAX_KEY_LEN + 1);
        assert_eq!(
            error(&format!("{long}=\"1\"")),
            (1, ParseErrorKind::BadKey(long))
        );
        let huge = "k".repeat(10_000);
        let (_, kind) = error(&format!("{huge}=\"1\""));
        assert!(kind.to_string().len() < 300, "{kind}");
    }

    #[test]
    fn bytes_are_checked_for_size_and_utf8() {
        let workdir = Path::new(WORKDIR);
        let e = Definition::parse_bytes(b"a=\"1\";\nb=\"\xff\";", workdir).expect_err("not UTF-8");
        assert_eq!((e.line, e.kind), (2, ParseErrorKind::NotUtf8));
        let big = vec![b'#'; MAX_SIZE + 1];
        let e = Definition::parse_bytes(&big, workdir).expect_err("too large");
        assert_eq!(
            (e.line, e.kind),
            (0, ParseErrorKind::TooLarge(MAX_SIZE + 1))
        );
        // Text in memory is not capped, so every rendering parses back.
        let text = String::from_utf8(big).expect("ASCII");
        assert!(parsed(&text).is_empty());
        let at_limit = vec![b'#'; MAX_SIZE];
        assert!(Definition::parse_bytes(&at_limit, workdir).is_ok());
    }

    #[test]
    fn tolerates_whitespace_comments_and_a_missing_semicolon() {
        let text = "  \t\r\n  # indented comment\n\ta=\"1\"\n  b=\"2\";  \r\nc=\"3\"\t\n";
        let d = parsed(text);
        assert_eq!(
            d.iter().collect::<Vec<_>>(),
            [("a", "1"), ("b", "2"), ("c", "3")]
        );
    }

    #[test]
    fn truncated_file_is_an_error() {
        let full = "jname=\"jail1\";\nexec_start=\"/bin/sh /etc/rc\";\n";
        let cut = &full[..full.len() - 6];
        assert_eq!(
            error(cut),
            (
                2,
                ParseErrorKind::UnterminatedValue {
                    key: key("exec_start")
                }
            )
        );
    }

    #[test]
    fn empty_file_is_an_empty_definition() {
        for text in ["", "\n", "# only a comment\n\n"] {
            assert!(parsed(text).is_empty(), "{text:?}");
        }
        assert_eq!(parsed(&render(&Definition::new())), Definition::new());
    }

    #[test]
    fn set_get_remove() {
        let mut d = Definition::new();
        d.set("a", "1").expect("set");
        d.set("b", String::from("2")).expect("set");
        d.set("a", "3").expect("set");
        assert_eq!(d.iter().collect::<Vec<_>>(), [("a", "3"), ("b", "2")]);
        assert_eq!(d.remove("a"), Some("3".to_owned()));
        assert_eq!(d.remove("a"), None);
        assert_eq!(d.get("b"), Some("2"));
        assert_eq!(d.len(), 1);
        let e = d.set("bad key", "x").expect_err("bad key");
        assert_eq!(
            (e.line, e.kind),
            (0, ParseErrorKind::BadKey(key("bad key")))
        );
        let e = d.set("k", "a\0b").expect_err("NUL");
        assert_eq!(e.kind, ParseErrorKind::Nul { key: key("k") });
        assert_eq!(e.to_string(), "value of k contains a NUL character");
    }

    #[test]
    fn messages_name_the_line_and_key() {
        let e = parse("a=\"1\";\nexec_start=\"$(rm -rf /)\";").expect_err("shell");
        assert_eq!(
            e.to_string(),
            "line 2: value of exec_start contains an unescaped '$'; this file is data, not shell"
        );
    }

    #[test]
    fn store_then_load_round_trips_without_temp_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let workdir = dir.path();
        let file = workdir.join("rc.conf_jail1");
        let mut d = Definition::new();
        d.set("jname", "jail1").expect("set");
        d.set("path", "jails/jail1").expect("set");
        d.set("exec_start", "/bin/sh -c \"echo $HOME `id`\"\n")
            .expect("set");
        d.store(&file, workdir).expect("store");
        assert_eq!(Definition::load(&file, workdir).expect("load"), d);
        d.set("astart", "1").expect("set");
        d.store(&file, workdir).expect("store again");
        assert_eq!(Definition::load(&file, workdir).expect("load"), d);
        let names: Vec<_> = std::fs::read_dir(workdir)
            .expect("read_dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, [std::ffi::OsString::from("rc.conf_jail1")]);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o644);
    }

    #[test]
    fn large_definitions_round_trip_in_memory_but_are_not_stored() {
        // Lines without `;` grow by one byte each on rendering: a file just
        // under the cap renders over it, and must still parse back.
        let mut text = String::new();
        for i in 0.. {
            if text.len() > MAX_SIZE - 20 {
                break;
            }
            text.push_str(&format!("k{i}=\"v\"\n"));
        }
        let d = Definition::parse_bytes(text.as_bytes(), Path::new(WORKDIR)).expect("valid");
        let rendered = render(&d);
        assert!(rendered.len() > MAX_SIZE);
        assert_eq!(parsed(&rendered), d);
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("rc.conf_big");
        let e = d.store(&file, dir.path()).expect_err("too large to store");
        assert_eq!(e.kind(), io::ErrorKind::FileTooLarge);
        assert!(!file.exists());
    }

    #[test]
    fn load_reports_the_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("nope");
        let e = Definition::load(&missing, dir.path()).expect_err("missing");
        assert!(matches!(e, LoadError::Io { .. }));
        assert_eq!(e.to_string(), format!("cannot read {}", missing.display()));
        let bad = dir.path().join("bad");
        std::fs::write(&bad, "k=\"`id`\";").expect("write");
        let e = Definition::load(&bad, dir.path()).expect_err("bad");
        assert!(matches!(&e, LoadError::Parse { source, .. } if source.line == 1));
        let big = dir.path().join("big");
        std::fs::write(&big, vec![b'#'; MAX_SIZE + 10]).expect("write");
        let e = Definition::load(&big, dir.path()).expect_err("big");
        let LoadError::Parse { source, .. } = e else {
            panic!("expected a parse error, got {e:?}");
        };
        assert_eq!(source.kind, ParseErrorKind::TooLarge(MAX_SIZE + 10));
    }

    /// `d` as parsing its rendering must give it: path values inside the
    /// workdir made relative.
    fn normalised(d: &Definition) -> Definition {
        let prefix = workdir_prefix(Path::new(WORKDIR)).expect("absolute workdir");
        let mut out = Definition::new();
        for (k, v) in d.iter() {
            let v = match is_path_key(k) {
                true => relativise(v, &prefix).unwrap_or(v),
                false => v,
            };
            out.set(k, v).expect("valid entry");
        }
        out
    }

    fn key_strategy() -> impl Strategy<Value = String> {
        prop_oneof![
            "[A-Za-z_][A-Za-z0-9_]{0,63}",
            proptest::sample::select(PATH_KEYS).prop_map(str::to_owned),
        ]
    }

    fn value_strategy() -> impl Strategy<Value = String> {
        let tricky = "[\"\\\\$`\n\r\t ;=#{}/a-zé€😀\u{7f}\u{2028}]{0,40}";
        let any = any::<String>().prop_map(|s| s.replace('\0', ""));
        let body = prop_oneof![tricky, any];
        let lead = proptest::sample::select(
            &[
                "",
                "/",
                "/usr/jails/",
                "/usr/jails//",
                "/usr/jails",
                "${CBSDROOT}/",
                "$workdir/",
            ][..],
        );
        (lead, body).prop_map(|(lead, body)| format!("{lead}{body}"))
    }

    fn definition_strategy() -> impl Strategy<Value = Definition> {
        proptest::collection::vec((key_strategy(), value_strategy()), 0..12).prop_map(|pairs| {
            let mut d = Definition::new();
            for (k, v) in pairs {
                d.set(&k, v).expect("valid key and value");
            }
            d
        })
    }

    proptest! {
        #[test]
        fn render_then_parse_round_trips(d in definition_strategy()) {
            let once = parse(&render(&d)).expect("rendered text parses");
            prop_assert_eq!(&once, &normalised(&d));
            let twice = parse(&render(&once)).expect("rendered text parses");
            prop_assert_eq!(twice, once);
        }

        #[test]
        fn parse_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = Definition::parse_bytes(&bytes, Path::new(WORKDIR));
        }

        #[test]
        fn parsed_text_round_trips(text in "([a-z_]{0,3}=?\"?([a-z/\\\\\"$`{}; \t\r#]|\\$\\{CBSDROOT\\}/|/usr/jails/){0,8}\"?;?\n?){0,6}") {
            if let Ok(d) = parse(&text) {
                prop_assert_eq!(parse(&render(&d)).expect("rendered text parses"), d);
            }
        }
    }
}
