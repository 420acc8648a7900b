//! The `ferry` command: parses `ferry [--workdir DIR] [--json] <command>
//! key=value ...`, hands the typed command to the dispatcher, prints the
//! outcome and exits with the documented code. `agent` and `client`, the
//! broker's front doors, take bs_router's flags instead (`-config FILE`).

use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use clap::{Arg, ArgAction};
use ferry_agent::{Client, ClientError, Config};
use ferry_api::{exit, help, Command, CommandSpec, Format, Outcome, Progress, RawArgs, COMMANDS};
use ferry_cluster::{dispatch, error_chain, Context};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// The flags of `agent` and `client`; bs_router spells them with one dash.
const BROKER_FLAGS: [&str; 3] = ["config", "body", "timeout"];

fn cli() -> clap::Command {
    let mut app = clap::Command::new("ferry")
        .version(ferry_cluster::VERSION)
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
    let config = || {
        Arg::new("config")
            .long("config")
            .value_name("FILE")
            .required(true)
            .value_parser(clap::value_parser!(PathBuf))
            .help("bs_router's config.json; the workdir is its cbsdenv")
    };
    app.subcommand(
        clap::Command::new("agent")
            .about("Serve the config's broker tube (bs_router): run each job, reply, until SIGTERM")
            .after_help("Flags take one dash or two (-config FILE). See docs/broker.md.")
            .arg(config()),
    )
    .subcommand(
        clap::Command::new("client")
            .about(
                "Put one job on the config's broker tube and wait for its reply (bs_router-client)",
            )
            .after_help(client_exit_codes())
            .arg(config())
            .arg(
                Arg::new("body")
                    .long("body")
                    .value_name("JSON")
                    .required(true)
                    .help(r#"The job: {"Command": "jstart", "CommandArgs": {"jname": "j1"}}"#),
            )
            .arg(
                Arg::new("timeout")
                    .long("timeout")
                    .value_name("SECONDS")
                    .default_value("600")
                    .value_parser(clap::value_parser!(u64))
                    .help("Give up waiting for the final reply after this long"),
            ),
    )
}

fn client_exit_codes() -> String {
    format!(
        "Flags take one dash or two (-config FILE). Progress goes to stderr, the final \
         message to stdout (stderr on failure); --json prints every reply as a JSON line.\n\n\
         Exit codes: the job's ErrCode (0-6, as for the command line), or\n  \
         {}  no final reply within -timeout (the job may still run)\n  \
         {}  the broker could not be reached, or the put was lost",
        ferry_agent::exit::TIMED_OUT,
        ferry_agent::exit::BROKER
    )
}

/// bs_router's tools take Go-style flags (`-config FILE`); clap wants two
/// dashes. Only the flags of `agent` and `client`, after that word, are
/// rewritten.
fn go_flags(args: Vec<OsString>) -> Vec<OsString> {
    let mut cmd = 1;
    while let Some(a) = args.get(cmd).and_then(|a| a.to_str()) {
        match a {
            "--workdir" => cmd += 2,
            _ if a.starts_with('-') => cmd += 1,
            _ => break,
        }
    }
    if !matches!(
        args.get(cmd).and_then(|a| a.to_str()),
        Some("agent" | "client")
    ) {
        return args;
    }
    let is_go_flag = |t: &str| {
        t.strip_prefix('-')
            .filter(|n| !n.starts_with('-'))
            .and_then(|n| n.split('=').next())
            .is_some_and(|f| f == "json" || BROKER_FLAGS.contains(&f))
    };
    args.into_iter()
        .enumerate()
        .map(|(n, a)| match a.to_str() {
            Some(t) if n > cmd && is_go_flag(t) => OsString::from(format!("-{t}")),
            _ => a,
        })
        .collect()
}

fn exit_codes() -> String {
    let mut s = String::from("Exit codes:\n");
    for (code, what) in exit::TABLE {
        s.push_str(&format!("  {code}  {what}\n"));
    }
    s
}

fn main() -> ExitCode {
    let code = run();
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

/// Log to stderr, or to `file`, at `FERRY_LOG`'s level (else `default`).
fn init_logging(default: &str, file: Option<std::fs::File>) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("FERRY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let fmt = tracing_subscriber::fmt().with_env_filter(filter);
    match file {
        Some(f) => fmt
            .with_ansi(false)
            .with_writer(std::sync::Mutex::new(f))
            .init(),
        None => fmt.with_writer(std::io::stderr).init(),
    }
}

fn run() -> i32 {
    let matches = match cli().try_get_matches_from(go_flags(std::env::args_os().collect())) {
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
    if name == "agent" || name == "client" {
        return broker_door(name, sub);
    }
    init_logging("warn", None);
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
    let bar = progress_bar();
    let shown = bar.clone();
    let ctx = Context::new(workdir).with_progress(Arc::new(move |p: &Progress| show(&shown, p)));
    let result = dispatch(&ctx, cmd);
    bar.finish_and_clear();
    match result {
        Ok(outcome) => print(&outcome, json),
        Err(e) => {
            eprintln!("ferry {name}: {}", error_chain(&e));
            exit::for_kind(e.kind())
        }
    }
}

/// The bar long commands draw on stderr; hidden unless stderr is a
/// terminal (indicatif draws nothing then).
fn progress_bar() -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(100), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("[{bar:30}] {pos:>2}% {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("#> "),
    );
    bar
}

fn show(bar: &ProgressBar, p: &Progress) {
    bar.set_position(u64::from(p.percent()));
    bar.set_message(p.message());
}

fn print(outcome: &Outcome, json: bool) -> i32 {
    let r = outcome.render(if json { Format::Json } else { Format::Text });
    for line in &r.errors {
        eprintln!("ferry: {line}");
    }
    let mut out = std::io::stdout().lock();
    if out.write_all(r.stdout.as_bytes()).is_err() {
        return exit::FAILED;
    }
    outcome.exit_code()
}

/// `agent` or `client`: load the config, then serve or send.
fn broker_door(name: &str, sub: &clap::ArgMatches) -> i32 {
    let misfit = if sub.get_one::<PathBuf>("workdir").is_some() {
        Some("the workdir is the config's cbsdenv, not --workdir")
    } else if name == "agent" && sub.get_flag("json") {
        Some("--json does not apply: the agent prints no result")
    } else {
        None
    };
    if let Some(why) = misfit {
        init_logging("warn", None);
        eprintln!("ferry {name}: {why}");
        return exit::USAGE;
    }
    let path = sub
        .get_one::<PathBuf>("config")
        .cloned()
        .unwrap_or_default();
    let cfg = match Config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            init_logging("warn", None);
            eprintln!("ferry {name}: {}", error_chain(&e));
            return exit::USAGE;
        }
    };
    if name == "agent" {
        agent(&cfg)
    } else {
        init_logging("warn", None);
        client(&cfg, sub)
    }
}

fn agent(cfg: &Config) -> i32 {
    let log = match &cfg.logfile {
        None => None,
        Some(p) => match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
        {
            Ok(f) => Some(f),
            Err(e) => {
                eprintln!("ferry agent: cannot open the logfile {}: {e}", p.display());
                return exit::USAGE;
            }
        },
    };
    init_logging("info", log);
    let stop = Arc::new(AtomicBool::new(false));
    match ferry_agent::agent::serve_until_signalled(cfg, stop) {
        Ok(()) => exit::OK,
        Err(e) => {
            eprintln!("ferry agent: {}", error_chain(&e));
            e.exit_code()
        }
    }
}

fn client(cfg: &Config, sub: &clap::ArgMatches) -> i32 {
    let json = sub.get_flag("json");
    let body = sub.get_one::<String>("body").cloned().unwrap_or_default();
    let timeout = Duration::from_secs(sub.get_one::<u64>("timeout").copied().unwrap_or(600));
    let mut c = match Client::connect(cfg) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ferry client: {}", error_chain(&e));
            return ferry_agent::exit::BROKER;
        }
    };
    let shown = |r: &ferry_agent::Reply| {
        if json {
            println!("{}", r.to_json());
        } else {
            eprintln!("[{:>3}%] {}", r.progress, r.message);
        }
    };
    match c.call(body.as_bytes(), timeout, shown) {
        Ok(r) => {
            if json {
                println!("{}", r.to_json());
            } else if r.err_code == exit::OK {
                println!("{}", r.message.trim_end_matches('\n'));
            } else {
                eprintln!("ferry client: {}", r.message);
            }
            if (0..=255).contains(&r.err_code) {
                r.err_code
            } else {
                exit::FAILED
            }
        }
        Err(e) => {
            eprintln!("ferry client: {}", error_chain(&e));
            match e {
                ClientError::TimedOut { .. } => ferry_agent::exit::TIMED_OUT,
                ClientError::NotAnObject => exit::USAGE,
                ClientError::Broker(_) => ferry_agent::exit::BROKER,
            }
        }
    }
}
