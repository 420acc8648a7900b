//! A task's command: ferry command words, checked by the command line's
//! own parser and the command's declared policy, and shown to people.

use ferry_api::Command;
use ferry_core::{Error, Result};

/// The command `words` name, if a task may run it: parsed by the command
/// line's own parser, and not one its policy keeps from the queue.
pub fn check(words: &[String]) -> Result<Command> {
    let joined = show(words);
    if words.is_empty() {
        return Err(Error::bad_value(
            "cmd",
            "",
            "mode=new needs the ferry command to queue, e.g. `task mode=new jstart jname=web1`",
        ));
    }
    let cmd =
        Command::parse_words(words).map_err(|e| Error::bad_value("cmd", &joined, e.to_string()))?;
    if let Some(why) = cmd.policy().not_queueable {
        return Err(Error::bad_value(
            "cmd",
            &joined,
            format!("a task cannot run `{}`: {why}", cmd.name()),
        ));
    }
    Ok(cmd)
}

/// A command line for people: words joined by spaces, quoted only where
/// a word would otherwise read wrongly.
pub fn show(words: &[String]) -> String {
    let plain = |w: &str| {
        !w.is_empty()
            && !w
                .chars()
                .any(|c| c.is_whitespace() || "'\"\\$`;&|<>()*?[]#~".contains(c))
    };
    words
        .iter()
        .map(|w| {
            if plain(w) {
                w.clone()
            } else {
                shell_words::quote(w).into_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(w: &[&str]) -> Vec<String> {
        w.iter().map(|w| (*w).to_owned()).collect()
    }

    #[test]
    fn a_task_runs_what_the_command_line_runs_but_not_the_queue_s_own() {
        assert!(matches!(
            check(&words(&["jstart", "jname=web1"])),
            Ok(Command::Jstart(_))
        ));
        for bad in [
            &["task", "mode=list"][..],
            &["taskls"],
            &["daemon"],
            &["task", "mode=run", "id=1", "run=1"],
        ] {
            let e = check(&words(bad)).unwrap_err().to_string();
            assert!(e.contains("cannot run"), "{bad:?}: {e}");
        }
        assert!(check(&[]).is_err());
        let e = check(&words(&["jstart", "jname=a", "colour=red"])).unwrap_err();
        assert!(e.to_string().contains("colour"), "{e}");
    }

    #[test]
    fn words_are_quoted_only_where_they_would_read_wrongly() {
        assert_eq!(
            show(&words(&["jstart", "jname=web*"])),
            "jstart 'jname=web*'"
        );
        assert_eq!(
            show(&words(&["jexec", "jname=a", "echo", "a b"])),
            "jexec jname=a echo 'a b'"
        );
        assert_eq!(show(&words(&["jls"])), "jls");
    }
}
