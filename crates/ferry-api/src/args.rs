//! Raw arguments (`key=value` words or a JSON `CommandArgs` object) and their
//! conversion into typed values, with errors that name the key.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use ferry_core::{Jname, NameSelector};

/// Why arguments could not be turned into a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArgError {
    #[error("unknown command {0:?}; `ferry help` lists the commands")]
    UnknownCommand(String),
    #[error("{command} has no argument {key:?}; `ferry {command} --help` lists its arguments")]
    UnknownKey { command: &'static str, key: String },
    #[error("{key} is required")]
    Missing { key: &'static str },
    #[error("{key} is given twice")]
    Duplicate { key: String },
    #[error("invalid value {value:?} for {key}: {reason}")]
    Invalid {
        key: String,
        value: String,
        reason: String,
    },
    #[error("{0:?} is not a key=value argument")]
    NotKeyValue(String),
    #[error("{command} takes no trailing words (got {word:?})")]
    UnexpectedWords { command: &'static str, word: String },
    #[error("CommandArgs must be a JSON object")]
    NotAnObject,
}

impl ArgError {
    pub fn invalid(key: &str, value: &str, reason: impl ToString) -> Self {
        ArgError::Invalid {
            key: key.to_owned(),
            value: value.to_owned(),
            reason: reason.to_string(),
        }
    }
}

/// Arguments before typing: `key=value` pairs plus the words after `--`
/// (or after the first word that is not `key=value`, for `jexec`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RawArgs {
    pairs: BTreeMap<String, String>,
    rest: Vec<String>,
}

/// Longest value accepted for any key.
pub const MAX_VALUE_LEN: usize = 64 * 1024;

impl RawArgs {
    /// From command-line words: `key=value ...` then optional trailing words.
    /// Values are taken literally; quoting is the caller's shell's business.
    pub fn from_words<I, S>(words: I) -> Result<RawArgs, ArgError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut raw = RawArgs::default();
        let mut words = words.into_iter().map(Into::into);
        while let Some(w) = words.next() {
            if w == "--" {
                raw.rest.extend(words.by_ref());
                break;
            }
            match w.split_once('=') {
                Some((k, v)) if is_key(k) => raw.insert(k, v.to_owned())?,
                _ => {
                    raw.rest.push(w);
                    raw.rest.extend(words.by_ref());
                    break;
                }
            }
        }
        Ok(raw)
    }

    /// From `(key, value)` pairs, e.g. the entries of a definition file.
    pub fn from_pairs<I: IntoIterator<Item = (String, String)>>(
        pairs: I,
    ) -> Result<RawArgs, ArgError> {
        let mut raw = RawArgs::default();
        for (k, v) in pairs {
            raw.insert(&k, v)?;
        }
        Ok(raw)
    }

    /// From a broker job's `CommandArgs`: values may be strings, numbers or
    /// booleans (a list of strings only for `cmd`).
    pub fn from_json(args: &serde_json::Value) -> Result<RawArgs, ArgError> {
        let mut raw = RawArgs::default();
        let obj = match args {
            serde_json::Value::Object(o) => o,
            serde_json::Value::Null => return Ok(raw),
            _ => return Err(ArgError::NotAnObject),
        };
        for (k, v) in obj {
            if !is_key(k) {
                return Err(ArgError::invalid(k, "", "not a valid key"));
            }
            let text = match v {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Number(n) => n.to_string(),
                serde_json::Value::Bool(b) => if *b { "1" } else { "0" }.to_owned(),
                serde_json::Value::Array(items) if k == "cmd" => {
                    let words: Option<Vec<String>> = items
                        .iter()
                        .map(|i| i.as_str().map(str::to_owned))
                        .collect();
                    raw.rest = words.ok_or_else(|| {
                        ArgError::invalid(k, "[...]", "must be a list of strings")
                    })?;
                    continue;
                }
                _ => {
                    return Err(ArgError::invalid(
                        k,
                        &v.to_string(),
                        "must be a string or a number",
                    ))
                }
            };
            raw.insert(k, text)?;
        }
        Ok(raw)
    }

    fn insert(&mut self, k: &str, v: String) -> Result<(), ArgError> {
        if v.len() > MAX_VALUE_LEN {
            return Err(ArgError::invalid(
                k,
                &v.chars().take(32).collect::<String>(),
                format!("longer than {MAX_VALUE_LEN} bytes"),
            ));
        }
        if self.pairs.insert(k.to_owned(), v).is_some() {
            return Err(ArgError::Duplicate { key: k.to_owned() });
        }
        Ok(())
    }
}

fn is_key(k: &str) -> bool {
    let mut c = k.chars();
    c.next()
        .is_some_and(|f| f.is_ascii_alphabetic() || f == '_')
        && c.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && k.len() <= 64
}

/// Typed access to raw arguments; remembers what was read so that leftover
/// (unknown) keys can be reported.
#[derive(Debug)]
pub struct ArgReader {
    command: &'static str,
    raw: RawArgs,
    rest_taken: bool,
}

impl ArgReader {
    pub fn new(command: &'static str, raw: RawArgs) -> Self {
        ArgReader {
            command,
            raw,
            rest_taken: false,
        }
    }

    fn take(&mut self, key: &'static str) -> Option<String> {
        self.raw.pairs.remove(key)
    }

    /// Whether `key` was given (as a pair, or as the trailing words; a
    /// family key ending in `_`, as any key of the family).
    pub fn has(&self, key: &str) -> bool {
        self.raw.pairs.contains_key(key)
            || (key == "cmd" && !self.raw.rest.is_empty())
            || (key.ends_with('_')
                && self
                    .raw
                    .pairs
                    .keys()
                    .any(|k| k.len() > key.len() && k.starts_with(key)))
    }

    /// The trailing words, or `cmd=` split into words (never evaluated).
    pub fn take_rest(&mut self, key: &'static str) -> Result<Vec<String>, ArgError> {
        self.rest_taken = true;
        let mut words = std::mem::take(&mut self.raw.rest);
        if let Some(cmd) = self.take(key) {
            if !words.is_empty() {
                return Err(ArgError::Duplicate {
                    key: key.to_owned(),
                });
            }
            words = shell_words::split(&cmd).map_err(|e| ArgError::invalid(key, &cmd, e))?;
        }
        Ok(words)
    }

    /// Every `prefix<suffix>=value` pair (a family of keys such as CBSD's
    /// `ci_user_pubkey_<user>`), by suffix.
    pub fn take_prefixed(&mut self, prefix: &str) -> BTreeMap<String, String> {
        let keys: Vec<String> = self
            .raw
            .pairs
            .keys()
            .filter(|k| k.len() > prefix.len() && k.starts_with(prefix))
            .cloned()
            .collect();
        keys.into_iter()
            .filter_map(|k| {
                let v = self.raw.pairs.remove(&k)?;
                Some((k[prefix.len()..].to_owned(), v))
            })
            .collect()
    }

    /// Fail if any argument was not consumed.
    pub fn finish(self) -> Result<(), ArgError> {
        if let Some(key) = self.raw.pairs.into_keys().next() {
            return Err(ArgError::UnknownKey {
                command: self.command,
                key,
            });
        }
        if !self.rest_taken {
            if let Some(word) = self.raw.rest.into_iter().next() {
                return Err(if word.contains('=') || word.starts_with('-') {
                    ArgError::NotKeyValue(word)
                } else {
                    ArgError::UnexpectedWords {
                        command: self.command,
                        word,
                    }
                });
            }
        }
        Ok(())
    }
}

/// The keys a command was given explicitly; the others took their
/// defaults. (A command built in code has none.)
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Given(Vec<&'static str>);

impl Given {
    /// Which of `keys` the reader holds.
    pub fn of(r: &ArgReader, keys: &[&'static str]) -> Given {
        Given(keys.iter().copied().filter(|k| r.has(k)).collect())
    }

    /// Whether `key` was given (a key of a given family too).
    pub fn contains(&self, key: &str) -> bool {
        self.0
            .iter()
            .any(|g| *g == key || (g.ends_with('_') && key.len() > g.len() && key.starts_with(g)))
    }
}

pub use crate::values::{Ip4Error, Ip4List, Size, SizeError};

/// A type an argument value converts into.
pub trait FromArg: Sized {
    /// How the type shows in help.
    const TYPE: &'static str;
    fn from_arg(key: &str, value: &str) -> Result<Self, ArgError>;
    /// The value as an argument reads it back.
    fn to_arg(&self) -> String;
}

/// How a field is filled: required, optional, defaulted, or trailing words.
pub trait Rule<T> {
    fn take(&self, r: &mut ArgReader, key: &'static str) -> Result<T, ArgError>;
    /// Type and requiredness, for help.
    fn describe(&self) -> (&'static str, String);
    /// Write `v` back as words: `key=value` into `pairs`, trailing words
    /// into `rest`.
    fn render(&self, v: &T, key: &str, pairs: &mut Vec<String>, rest: &mut Vec<String>);
}

/// The key must be given.
#[derive(Debug)]
pub struct Required;
/// The key may be omitted (field is `Option<T>`).
#[derive(Debug)]
pub struct Optional;
/// The key may be omitted; the text is parsed as if it had been given.
#[derive(Debug)]
pub struct Default(pub &'static str);
/// The trailing words of the command line, or `cmd=` in a broker job.
#[derive(Debug)]
pub struct Rest;
/// A family of keys: the field's name (ending in `_`) followed by a
/// suffix, e.g. `ci_user_pubkey_centos=` (field `ci_user_pubkey_`, by
/// suffix `centos`).
#[derive(Debug)]
pub struct Suffixed;

impl Rule<BTreeMap<String, String>> for Suffixed {
    fn take(
        &self,
        r: &mut ArgReader,
        key: &'static str,
    ) -> Result<BTreeMap<String, String>, ArgError> {
        let all = r.take_prefixed(key);
        for (suffix, v) in &all {
            String::from_arg(&format!("{key}{suffix}"), v)?;
        }
        Ok(all)
    }
    fn describe(&self) -> (&'static str, String) {
        ("TEXT", "a family of keys: one per suffix".into())
    }
    fn render(
        &self,
        v: &BTreeMap<String, String>,
        key: &str,
        pairs: &mut Vec<String>,
        _: &mut Vec<String>,
    ) {
        for (suffix, value) in v {
            pairs.push(format!("{key}{suffix}={value}"));
        }
    }
}

impl<T: FromArg> Rule<T> for Required {
    fn take(&self, r: &mut ArgReader, key: &'static str) -> Result<T, ArgError> {
        let v = r.take(key).ok_or(ArgError::Missing { key })?;
        T::from_arg(key, &v)
    }
    fn describe(&self) -> (&'static str, String) {
        (T::TYPE, "required".into())
    }
    fn render(&self, v: &T, key: &str, pairs: &mut Vec<String>, _: &mut Vec<String>) {
        pairs.push(format!("{key}={}", v.to_arg()));
    }
}

impl<T: FromArg> Rule<Option<T>> for Optional {
    fn take(&self, r: &mut ArgReader, key: &'static str) -> Result<Option<T>, ArgError> {
        r.take(key).map(|v| T::from_arg(key, &v)).transpose()
    }
    fn describe(&self) -> (&'static str, String) {
        (T::TYPE, "optional".into())
    }
    fn render(&self, v: &Option<T>, key: &str, pairs: &mut Vec<String>, _: &mut Vec<String>) {
        if let Some(v) = v {
            pairs.push(format!("{key}={}", v.to_arg()));
        }
    }
}

impl<T: FromArg> Rule<T> for Default {
    fn take(&self, r: &mut ArgReader, key: &'static str) -> Result<T, ArgError> {
        let v = r.take(key);
        T::from_arg(key, v.as_deref().unwrap_or(self.0))
    }
    fn describe(&self) -> (&'static str, String) {
        (
            T::TYPE,
            format!(
                "default {}",
                if self.0.is_empty() { "\"\"" } else { self.0 }
            ),
        )
    }
    fn render(&self, v: &T, key: &str, pairs: &mut Vec<String>, _: &mut Vec<String>) {
        pairs.push(format!("{key}={}", v.to_arg()));
    }
}

impl Rule<Vec<String>> for Rest {
    fn take(&self, r: &mut ArgReader, key: &'static str) -> Result<Vec<String>, ArgError> {
        r.take_rest(key)
    }
    fn describe(&self) -> (&'static str, String) {
        (
            "WORDS",
            "trailing words after the arguments, or cmd=\"...\"".into(),
        )
    }
    fn render(&self, v: &Vec<String>, _: &str, _: &mut Vec<String>, rest: &mut Vec<String>) {
        rest.extend(v.iter().cloned());
    }
}

impl FromArg for String {
    const TYPE: &'static str = "TEXT";
    fn from_arg(key: &str, v: &str) -> Result<Self, ArgError> {
        if v.contains('\0') {
            return Err(ArgError::invalid(key, v, "contains a NUL byte"));
        }
        Ok(v.to_owned())
    }
    fn to_arg(&self) -> String {
        self.clone()
    }
}

impl FromArg for u32 {
    const TYPE: &'static str = "NUMBER";
    fn from_arg(key: &str, v: &str) -> Result<Self, ArgError> {
        v.parse()
            .map_err(|_| ArgError::invalid(key, v, "not a whole number"))
    }
    fn to_arg(&self) -> String {
        self.to_string()
    }
}

impl FromArg for u64 {
    const TYPE: &'static str = "NUMBER";
    fn from_arg(key: &str, v: &str) -> Result<Self, ArgError> {
        v.parse()
            .map_err(|_| ArgError::invalid(key, v, "not a whole number"))
    }
    fn to_arg(&self) -> String {
        self.to_string()
    }
}

impl FromArg for u16 {
    const TYPE: &'static str = "NUMBER";
    fn from_arg(key: &str, v: &str) -> Result<Self, ArgError> {
        v.parse()
            .map_err(|_| ArgError::invalid(key, v, "not a whole number from 0 to 65535"))
    }
    fn to_arg(&self) -> String {
        self.to_string()
    }
}

/// A plain token (a CPU model, a machine type, a checkpoint name): the
/// grammar of a name, so it is safe as a path component and an argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Word(pub String);

impl FromArg for Word {
    const TYPE: &'static str = "WORD";
    fn from_arg(key: &str, v: &str) -> Result<Self, ArgError> {
        Jname::new(v)
            .map(|j| Word(j.as_str().to_owned()))
            .map_err(|e| ArgError::invalid(key, v, e))
    }
    fn to_arg(&self) -> String {
        self.0.clone()
    }
}

impl FromArg for bool {
    const TYPE: &'static str = "0|1";
    fn from_arg(key: &str, v: &str) -> Result<Self, ArgError> {
        match v {
            "1" | "yes" | "true" | "on" => Ok(true),
            "0" | "no" | "false" | "off" | "" => Ok(false),
            _ => Err(ArgError::invalid(key, v, "expected 0 or 1")),
        }
    }
    fn to_arg(&self) -> String {
        if *self { "1" } else { "0" }.to_owned()
    }
}

impl FromArg for Jname {
    const TYPE: &'static str = "NAME";
    fn from_arg(key: &str, v: &str) -> Result<Self, ArgError> {
        Jname::new(v).map_err(|e| ArgError::invalid(key, v, e))
    }
    fn to_arg(&self) -> String {
        self.to_string()
    }
}

impl FromArg for NameSelector {
    const TYPE: &'static str = "NAME|GLOB";
    fn from_arg(key: &str, v: &str) -> Result<Self, ArgError> {
        NameSelector::new(v).map_err(|e| ArgError::invalid(key, v, e))
    }
    fn to_arg(&self) -> String {
        self.to_string()
    }
}

impl FromArg for PathBuf {
    const TYPE: &'static str = "PATH";
    fn from_arg(key: &str, v: &str) -> Result<Self, ArgError> {
        let p = PathBuf::from(v);
        if !p.is_absolute() {
            return Err(ArgError::invalid(key, v, "must be an absolute path"));
        }
        if v.contains('\0')
            || p.components()
                .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            return Err(ArgError::invalid(key, v, "must not contain '..' or NUL"));
        }
        Ok(p)
    }
    fn to_arg(&self) -> String {
        self.to_string_lossy().into_owned()
    }
}

/// A mount hook setting: `0` (none) or an absolute path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookPath(pub Option<PathBuf>);

impl FromArg for HookPath {
    const TYPE: &'static str = "0|PATH";
    fn from_arg(key: &str, v: &str) -> Result<Self, ArgError> {
        if v.is_empty() || v == "0" {
            return Ok(HookPath(None));
        }
        PathBuf::from_arg(key, v).map(|p| HookPath(Some(p)))
    }
    fn to_arg(&self) -> String {
        self.0
            .as_ref()
            .map_or_else(|| "0".to_owned(), |p| p.to_string_lossy().into_owned())
    }
}

impl FromArg for Ipv4Addr {
    const TYPE: &'static str = "ADDR";
    fn from_arg(key: &str, v: &str) -> Result<Self, ArgError> {
        v.parse()
            .map_err(|_| ArgError::invalid(key, v, "not an IPv4 address"))
    }
    fn to_arg(&self) -> String {
        self.to_string()
    }
}

/// Declare an enum of keyword values usable as an argument type.
#[macro_export]
macro_rules! keyword_enum {
    ($(#[$m:meta])* $vis:vis enum $name:ident { $($variant:ident = $word:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        $vis enum $name { $($variant),+ }
        impl $name {
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $word),+ }
            }
        }
        impl $crate::args::FromArg for $name {
            const TYPE: &'static str = concat!($($word, "|"),+);
            fn from_arg(key: &str, v: &str) -> Result<Self, $crate::args::ArgError> {
                match v {
                    $($word => Ok($name::$variant),)+
                    _ => Err($crate::args::ArgError::invalid(
                        key, v, concat!("expected one of:", $(" ", $word),+))),
                }
            }
            fn to_arg(&self) -> String {
                self.as_str().to_owned()
            }
        }
    };
}

#[cfg(test)]
mod tests;
