//! Help text, generated from the command declarations.

use std::fmt::Write;

use crate::command::{Area, CommandSpec, COMMANDS};

/// `ferry help`: every command by area, then the exit codes.
pub fn overview() -> String {
    let mut out = String::from(
        "ferry: jails and VMs on shared storage, CBSD-style.\n\n\
         Usage: ferry [--workdir DIR] [--json] <command> [key=value ...]\n\n",
    );
    for area in [
        Area::Setup,
        Area::Jails,
        Area::Vms,
        Area::Shared,
        Area::Cluster,
    ] {
        let _ = writeln!(out, "{}:", area.title());
        for c in COMMANDS.iter().filter(|c| c.area == area) {
            let _ = writeln!(out, "  {:<10} {}", c.name, c.summary());
        }
        out.push('\n');
    }
    out.push_str("`ferry <command> --help` describes a command's arguments.\n\nExit codes:\n");
    for (code, what) in crate::exit::TABLE {
        let _ = writeln!(out, "  {code}  {what}");
    }
    out
}

/// The arguments section of `ferry <command> --help`.
pub fn arguments(spec: &CommandSpec) -> String {
    let mut out = String::new();
    for line in spec.doc.iter().skip(1) {
        let _ = writeln!(out, "{}", line.trim());
    }
    let args = (spec.args)();
    if args.is_empty() {
        out.push_str("\nThis command takes no arguments.\n");
    } else {
        out.push_str("\nArguments (key=value):\n");
        for a in args {
            let _ = writeln!(out, "  {}={}  ({})", a.key, a.ty, a.rule);
            for d in a.doc {
                let _ = writeln!(out, "      {}", d.trim());
            }
        }
    }
    if spec.listing {
        out.push_str("\nWith --json the listing is printed as a JSON array.\n");
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn help_mentions_every_command_and_key() {
        let all = super::overview();
        for c in super::COMMANDS {
            assert!(all.contains(c.name));
            let text = super::arguments(c);
            for a in (c.args)() {
                assert!(
                    text.contains(&format!("{}=", a.key)),
                    "{} {}",
                    c.name,
                    a.key
                );
            }
        }
    }
}
