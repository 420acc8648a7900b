//! The `ferry` command: parses `ferry [--workdir DIR] [--json] <command>
//! key=value ...`, hands the typed command to the dispatcher, prints the
//! outcome and exits with the documented code.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Arg, ArgAction};
use ferry_api::{exit, help, Command, CommandSpec, Outcome, RawArgs, COMMANDS};
use ferry_dispatch::{dispatch, error_chain, Context};

fn cli() -> clap::Command {
    let mut app = clap::Command::new("ferry")
        .version(ferry_dispatch::VERSION)
        .about("Jails (runc) and VMs (QEMU) on shared storage, with CBSD's command words")
        .after_help(exit_codes())
        .subcommand_required(true)
        .arg(
            Arg::new("workdir")
                .long("workdir")
                .global(true)
                .value_name("DIR")
                .value_parser(clap::value_parser!(PathBuf))
                .help("The workdir (default: $workdir, else /usr/jails)"),
        )
        .arg(
            Arg::new("json")
                .long("json")
                .global(true)
                .action(ArgAction::SetTrue)
                .help("Print the result as JSON"),
        );
    for spec in COMMANDS {
        app = app.subcommand(
            clap::Command::new(spec.name)
                .about(spec.summary())
                .after_help(help::arguments(spec))
                .arg(
                    Arg::new("args")
                        .value_name("key=value")
                        .num_args(0..)
                        .trailing_var_arg(true)
                        .allow_hyphen_values(true),
                ),
        );
    }
    app
}

fn exit_codes() -> String {
    let mut s = String::from("Exit codes:\n");
    for (code, what) in exit::TABLE {
        s.push_str(&format!("  {code}  {what}\n"));
    }
    s
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FERRY_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let code = run();
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

fn run() -> i32 {
    let matches = match cli().try_get_matches() {
        Ok(m) => m,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            };
        }
    };
    let Some((name, sub)) = matches.subcommand() else {
        return exit::USAGE;
    };
    let Some(spec) = CommandSpec::find(name) else {
        return exit::USAGE;
    };
    let mut words: Vec<String> = sub
        .get_many::<String>("args")
        .into_iter()
        .flatten()
        .cloned()
        .collect();
    let mut json = matches.get_flag("json");
    // After the first key=value, clap hands every word over as an argument;
    // the global flags are still honoured there, except in a command's own
    // trailing words (jexec, task): those start at the first word that is
    // neither key=value nor a flag.
    let takes_words = (spec.args)().iter().any(|a| a.ty == "WORDS");
    let own = if takes_words {
        words
            .iter()
            .position(|w| !(w.starts_with("--") || w.contains('=')) || w == "--")
            .unwrap_or(words.len())
    } else {
        words.len()
    };
    if words[..own].iter().any(|w| w == "--help" || w == "-h") {
        let _ = cli().find_subcommand_mut(name).map(|c| c.print_help());
        return exit::OK;
    }
    let trailing = words.split_off(own);
    let before = words.len();
    words.retain(|w| w != "--json");
    json |= words.len() != before;
    words.extend(trailing);
    let workdir = matches
        .get_one::<PathBuf>("workdir")
        .cloned()
        .or_else(|| std::env::var_os("workdir").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(ferry_core::workdir::DEFAULT_ROOT));
    let cmd = match RawArgs::from_words(words).and_then(|raw| Command::parse(name, raw)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ferry {name}: {e}");
            return exit::USAGE;
        }
    };
    match dispatch(&Context::new(workdir), cmd) {
        Ok(outcome) => print(&outcome, json),
        Err(e) => {
            eprintln!("ferry {name}: {}", error_chain(&e));
            exit::for_kind(e.kind())
        }
    }
}

fn print(outcome: &Outcome, json: bool) -> i32 {
    let mut out = std::io::stdout().lock();
    let r = match (outcome, json) {
        (Outcome::Listing(l), true) => writeln!(out, "{}", l.to_json()),
        (Outcome::Listing(l), false) => write!(out, "{}", l.to_text(true)),
        (Outcome::Exited { .. }, _) => Ok(()),
        (o, true) => writeln!(out, "{}", serde_json::to_string(o).unwrap_or_default()),
        (Outcome::Message { message }, false) => writeln!(out, "{message}"),
        (Outcome::PerEnv { results }, false) => {
            let mut r = Ok(());
            for res in results {
                if res.code == exit::OK {
                    r = r.and(writeln!(out, "{}", res.message));
                } else {
                    eprintln!("ferry: {}: {}", res.jname, res.message);
                }
            }
            r
        }
    };
    if r.is_err() {
        return exit::FAILED;
    }
    outcome.exit_code()
}
