//! Environment names (`jname`) and the glob patterns that select them.
//!
//! A name is `[A-Za-z0-9][A-Za-z0-9_.-]{0,63}`: it can never hold a path
//! separator, start with `-` or `.`, or carry shell metacharacters, so it is
//! safe to use as one path component and as a process argument.

use std::fmt;

use serde::{Serialize, Serializer};

/// Longest allowed name, in bytes.
pub const MAX_LEN: usize = 64;

/// Why a string is not a valid name or pattern.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("name is empty")]
    Empty,
    #[error("name is {0} characters long; at most {MAX_LEN} are allowed")]
    TooLong(usize),
    #[error("name must start with a letter or digit, not {0:?}")]
    BadStart(char),
    #[error("name contains {0:?}; only letters, digits, '_', '.' and '-' are allowed")]
    BadChar(char),
    #[error("pattern contains {0:?}; only name characters and the wildcards '*', '?', '[', ']' are allowed")]
    BadPatternChar(char),
    #[error("invalid pattern: {0}")]
    BadPattern(String),
}

/// A validated environment name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Jname(String);

impl Jname {
    /// Validate `s` as a name.
    pub fn new(s: &str) -> Result<Self, NameError> {
        let mut chars = s.chars();
        let first = chars.next().ok_or(NameError::Empty)?;
        let len = s.chars().count();
        if len > MAX_LEN {
            return Err(NameError::TooLong(len));
        }
        if !first.is_ascii_alphanumeric() {
            return Err(NameError::BadStart(first));
        }
        if let Some(c) = chars.find(|c| !is_name_char(*c)) {
            return Err(NameError::BadChar(c));
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')
}

impl fmt::Display for Jname {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for Jname {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Serialize for Jname {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

/// A name or a glob (`jail*`, `web[12]`), matched by ferry, never by a shell.
#[derive(Debug, Clone)]
pub enum NameSelector {
    One(Jname),
    Glob(glob::Pattern),
}

impl NameSelector {
    pub fn new(s: &str) -> Result<Self, NameError> {
        if !s.contains(['*', '?', '[', ']']) {
            return Jname::new(s).map(Self::One);
        }
        if s.is_empty() {
            return Err(NameError::Empty);
        }
        if s.chars().count() > MAX_LEN * 2 {
            return Err(NameError::TooLong(s.chars().count()));
        }
        if let Some(c) = s
            .chars()
            .find(|c| !is_name_char(*c) && !matches!(c, '*' | '?' | '[' | ']' | '!'))
        {
            return Err(NameError::BadPatternChar(c));
        }
        glob::Pattern::new(s)
            .map(Self::Glob)
            .map_err(|e| NameError::BadPattern(e.msg.to_owned()))
    }

    pub fn matches(&self, name: &str) -> bool {
        match self {
            Self::One(j) => j.as_str() == name,
            Self::Glob(p) => p.matches(name),
        }
    }

    /// Whether this selects by pattern (and so may select zero or many).
    pub fn is_glob(&self) -> bool {
        matches!(self, Self::Glob(_))
    }
}

impl fmt::Display for NameSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::One(j) => j.fmt(f),
            Self::Glob(p) => p.as_str().fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_cbsd_style_names() {
        for ok in ["jail1", "web-01", "a", "A.b_c-d", &"x".repeat(64)] {
            assert!(Jname::new(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn refuses_hostile_names() {
        assert_eq!(Jname::new(""), Err(NameError::Empty));
        assert_eq!(Jname::new("../x"), Err(NameError::BadStart('.')));
        assert_eq!(Jname::new("-rf"), Err(NameError::BadStart('-')));
        assert_eq!(Jname::new(".hidden"), Err(NameError::BadStart('.')));
        assert_eq!(Jname::new("a;rm -rf /"), Err(NameError::BadChar(';')));
        assert_eq!(Jname::new("a/b"), Err(NameError::BadChar('/')));
        assert_eq!(Jname::new("a$(x)"), Err(NameError::BadChar('$')));
        assert_eq!(Jname::new(&"x".repeat(200)), Err(NameError::TooLong(200)));
        assert_eq!(Jname::new("é"), Err(NameError::BadStart('é')));
    }

    #[test]
    fn selectors_match_by_glob() {
        let s = NameSelector::new("jail*").unwrap();
        assert!(s.is_glob());
        assert!(s.matches("jail1") && s.matches("jail") && !s.matches("web1"));
        let one = NameSelector::new("jail1").unwrap();
        assert!(one.matches("jail1") && !one.matches("jail10"));
        assert!(NameSelector::new("../*").is_err());
        assert!(NameSelector::new("a/*").is_err());
        assert!(NameSelector::new("*;ls").is_err());
    }
}
