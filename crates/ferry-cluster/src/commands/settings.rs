//! `jset`/`bset` and `jget`/`bget` (CBSD's words): the settings of
//! registered envs, changed with the create command's validation, or read
//! back.

use ferry_api::{exit, Command, EnvResult, Outcome};
use ferry_core::{envdef, EnvKind, Error, Jname, NameSelector, Result};

use crate::context::{error_chain, select, Context};
use crate::engines;

/// The definition keys a `jset`/`bset`/`jrename` was given, as `key=value`
/// pairs (not the names, nor `restart`).
pub(super) fn changes(cmd: &Command) -> Vec<(String, String)> {
    let given = match cmd {
        Command::Jset(a) => &a.given,
        Command::Bset(a) => &a.given,
        Command::Jrename(a) => &a.given,
        _ => return Vec::new(),
    };
    cmd.to_words()
        .into_iter()
        .skip(1)
        .filter_map(|w| {
            let (k, v) = w.split_once('=')?;
            let setting = !matches!(k, "jname" | "old" | "new" | "restart");
            (setting && given.contains(k)).then(|| (k.to_owned(), v.to_owned()))
        })
        .collect()
}

/// Change the settings of every env of `kind` the selector names, each
/// under its lock. One env's refusal does not stop the others.
pub(super) fn set(
    ctx: &Context,
    kind: EnvKind,
    sel: &NameSelector,
    changes: &[(String, String)],
) -> Result<Outcome> {
    if changes.is_empty() {
        return Err(Error::bad_value(
            "jname",
            &sel.to_string(),
            "nothing to set: name a key, e.g. astart=1",
        ));
    }
    let (wd, reg) = ctx.open()?;
    let engine = engines::of(kind);
    let keys: Vec<&str> = changes.iter().map(|(k, _)| k.as_str()).collect();
    let results = select(&reg, kind, sel)?
        .into_iter()
        .map(|j| {
            let r = ferry_core::lock::EnvLock::acquire(&wd, &j)
                .and_then(|_lock| engine.set(&wd, &reg, &j, changes));
            match r {
                Ok(later) => EnvResult {
                    jname: j.to_string(),
                    code: 0,
                    message: said(&j, &keys, &later),
                },
                Err(e) => EnvResult {
                    jname: j.to_string(),
                    code: exit::for_kind(e.kind()),
                    message: error_chain(&e),
                },
            }
        })
        .collect();
    Ok(Outcome::PerEnv { results })
}

/// `j: set a, b` and which of them wait for the next start.
fn said(j: &Jname, keys: &[&str], later: &[String]) -> String {
    let mut m = format!("{j}: set {}", keys.join(", "));
    if !later.is_empty() {
        m.push_str(&format!(
            "; {} take{} effect at the next start ({j} is running)",
            later.join(", "),
            if later.len() == 1 { "s" } else { "" }
        ));
    }
    m
}

/// `key: value` lines of the definition of `j`: the keys named, or all.
pub(super) fn get(ctx: &Context, kind: EnvKind, j: &Jname, keys: &[String]) -> Result<Outcome> {
    let (wd, reg) = ctx.open()?;
    select(&reg, kind, &NameSelector::One(j.clone()))?;
    let def = envdef::load_registered(&wd, j)?;
    let lines: Vec<String> = if keys.is_empty() {
        def.iter()
            .map(|(k, v)| format!("{k}: {}", shown(k, v)))
            .collect()
    } else {
        keys.iter()
            .map(|k| {
                def.get(k)
                    .map(|v| format!("{k}: {}", shown(k, v)))
                    .ok_or_else(|| Error::bad_value("key", k, format!("{j} has no setting {k}")))
            })
            .collect::<Result<_>>()?
    };
    Ok(Outcome::message(lines.join("\n")))
}

/// A setting as `jget`/`bget` print it: a password (kept as a hash) never.
fn shown<'a>(key: &str, value: &'a str) -> &'a str {
    match (key.starts_with("ci_user_pw"), value) {
        (false, v) | (true, v @ "*") => v,
        (true, _) => "(set, hidden)",
    }
}
