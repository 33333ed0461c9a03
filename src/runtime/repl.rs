//! The `kvnode client` command language, as in the original: `set key=value`,
//! `get key`, plus `del key`, `help` and `quit`. One line of output per
//! command; errors start with `error:`.

use super::client::{describe_error, SyncClient};
use crate::msg::Reply;
use crate::types::{Op, OpError};
use std::io::{self, BufRead, Write};

pub const HELP: &str = "commands: set KEY=VALUE | get KEY | del KEY | status | help | quit";

/// How much of an unknown command is shown back.
const ECHO_CHARS: usize = 40;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    Op(Op),
    /// The balancer's view of the cluster, as a table.
    Status,
    Help,
    Quit,
}

/// Parses one line. `Ok(None)` for a blank line; `Err` is the message to
/// print after `error: `. The value of `set` is everything after the first
/// `=`, spaces and further `=` included.
pub fn parse(line: &str) -> Result<Option<Command>, String> {
    let line = line.trim();
    if line.is_empty() {
        return Ok(None);
    }
    let (word, rest) = match line.split_once(char::is_whitespace) {
        Some((w, r)) => (w, r.trim_start()),
        None => (line, ""),
    };
    let single_key = |usage: &str| -> Result<String, String> {
        if rest.is_empty() || rest.contains(char::is_whitespace) {
            return Err(format!("usage: {usage}"));
        }
        Ok(rest.to_string())
    };
    let cmd = match word.to_ascii_lowercase().as_str() {
        "set" => {
            let Some((key, value)) = rest.split_once('=') else {
                return Err("usage: set KEY=VALUE".into());
            };
            Command::Op(Op::Set { key: key.to_string(), value: value.to_string() })
        }
        "get" => Command::Op(Op::Get { key: single_key("get KEY")? }),
        "del" | "delete" => Command::Op(Op::Del { key: single_key("del KEY")? }),
        "status" if rest.is_empty() => Command::Status,
        "status" => return Err("usage: status".into()),
        "help" | "?" => Command::Help,
        "quit" | "exit" => Command::Quit,
        _ => return Err(format!("unknown command '{}' ({HELP})", echo(word))),
    };
    Ok(Some(cmd))
}

/// A piece of what the user typed, as shown back: at most [`ECHO_CHARS`]
/// characters, control characters escaped (never rung or interpreted).
fn echo(s: &str) -> String {
    let shown: String = s.chars().take(ECHO_CHARS).collect();
    let more = if shown.len() < s.len() { format!("... ({} bytes)", s.len()) } else { String::new() };
    format!("{}{more}", super::status::printable(&shown))
}

/// The line printed for an operation's outcome.
pub fn render(op: &Op, result: &Result<Reply, OpError>) -> String {
    match (op, result) {
        (Op::Set { key, value }, Ok(_)) => {
            format!("Successfully set key '{key}' with value '{}'", super::status::printable(value))
        }
        // The store does not say whether the key was there: deleting a
        // missing key is not an error, and nothing claims it existed.
        (Op::Del { key }, Ok(_)) => format!("Deleted key '{key}' (if it was there)"),
        (Op::Get { .. }, Ok(Reply { value: Some(v), .. })) => v.clone(),
        (Op::Get { .. }, Ok(Reply { value: None, .. })) => "(nil)".to_string(),
        (op, Err(e)) => format!("error: {}", describe_error(op, e)),
    }
}

/// What running one line did.
pub enum Outcome {
    Blank,
    Ok,
    Failed,
    Quit,
}

/// Runs one line against the cluster and prints its one line of output.
pub fn run_line(client: &mut SyncClient, line: &str, out: &mut impl Write) -> io::Result<Outcome> {
    match parse(line) {
        Ok(None) => Ok(Outcome::Blank),
        Err(e) => {
            writeln!(out, "error: {e}")?;
            Ok(Outcome::Failed)
        }
        Ok(Some(Command::Help)) => {
            writeln!(out, "{HELP}")?;
            Ok(Outcome::Ok)
        }
        Ok(Some(Command::Quit)) => Ok(Outcome::Quit),
        Ok(Some(Command::Status)) => match client.status(STATUS_TIMEOUT) {
            Ok(view) => {
                write!(out, "{}", super::status::table(&view))?;
                Ok(Outcome::Ok)
            }
            Err(e) => {
                writeln!(out, "error: {e}")?;
                Ok(Outcome::Failed)
            }
        },
        Ok(Some(Command::Op(op))) => {
            let done = client.call(op);
            if client.take_interrupt() && done.result.is_err() {
                let what =
                    if done.op.is_write() { " (the write may or may not have been applied)" } else { "" };
                writeln!(out, "error: interrupted{what}")?;
                return Ok(Outcome::Failed);
            }
            writeln!(out, "{}", render(&done.op, &done.result))?;
            Ok(if done.result.is_ok() { Outcome::Ok } else { Outcome::Failed })
        }
    }
}

/// How long `status` waits for the balancer's answer.
pub const STATUS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Reads commands until end of input or `quit`. With `prompt`, shows `> `
/// before each (only for a terminal: piped output stays one line per
/// command), and ends the prompt's line at end of input, so the shell's
/// prompt starts on a line of its own. An interrupt (Ctrl-C) during a
/// command gives up on that command only.
pub fn run(
    client: &mut SyncClient,
    input: impl BufRead,
    out: &mut impl Write,
    prompt: bool,
) -> io::Result<()> {
    let mut input = input;
    let mut raw = Vec::new();
    loop {
        if prompt {
            write!(out, "> ")?;
        }
        out.flush()?;
        raw.clear();
        let read = match input.read_until(b'\n', &mut raw) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if read == 0 {
            if prompt {
                writeln!(out)?;
            }
            break;
        }
        while raw.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            raw.pop();
        }
        // A line that is not UTF-8 is one bad command, not the end of the
        // session.
        let Ok(line) = std::str::from_utf8(&raw) else {
            writeln!(out, "error: that line is not valid UTF-8; keys and values are text")?;
            continue;
        };
        if let Outcome::Quit = run_line(client, line, out)? {
            break;
        }
    }
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Lsn;

    fn op(line: &str) -> Op {
        match parse(line) {
            Ok(Some(Command::Op(op))) => op,
            other => panic!("{line:?} parsed as {other:?}"),
        }
    }

    #[test]
    fn parses_the_original_commands() {
        assert_eq!(op("set stephen=zerfas"), Op::Set { key: "stephen".into(), value: "zerfas".into() });
        assert_eq!(op("  get stephen  "), Op::Get { key: "stephen".into() });
        assert_eq!(op("del stephen"), Op::Del { key: "stephen".into() });
        assert_eq!(op("SET a=b"), Op::Set { key: "a".into(), value: "b".into() });
        assert_eq!(parse(""), Ok(None));
        assert_eq!(parse("   \t"), Ok(None));
        assert_eq!(parse("help"), Ok(Some(Command::Help)));
        assert_eq!(parse("quit"), Ok(Some(Command::Quit)));
    }

    #[test]
    fn values_keep_spaces_and_equals_signs() {
        assert_eq!(
            op("set greeting=hello world = a=b"),
            Op::Set { key: "greeting".into(), value: "hello world = a=b".into() }
        );
        assert_eq!(op("set k="), Op::Set { key: "k".into(), value: String::new() });
    }

    #[test]
    fn mistakes_are_errors_not_panics() {
        assert!(parse("set novalue").unwrap_err().starts_with("usage"));
        assert!(parse("get").unwrap_err().starts_with("usage"));
        assert!(parse("get a b").unwrap_err().starts_with("usage"));
        assert!(parse("frobnicate x").unwrap_err().starts_with("unknown command 'frobnicate'"));
        assert_eq!(parse("status"), Ok(Some(Command::Status)));
        assert!(parse("status now").unwrap_err().starts_with("usage: status"));
    }

    #[test]
    fn an_unknown_command_is_shown_back_short_and_harmless() {
        let huge = format!("x{}", "y".repeat(100_000));
        let e = parse(&huge).unwrap_err();
        assert!(e.len() < 200, "{} bytes", e.len());
        assert!(e.starts_with(&format!("unknown command '{}... (100001 bytes)'", &huge[..40])), "{e}");
        let e = parse("ding\u{7}\u{1b}[2J").unwrap_err();
        assert!(e.starts_with("unknown command 'ding\\u{7}\\u{1b}[2J'"), "{e}");
        assert!(!e.contains('\u{7}') && !e.contains('\u{1b}'), "{e:?}");
    }

    #[test]
    fn renders_like_the_original() {
        let set = Op::Set { key: "val".into(), value: "pal".into() };
        let get = Op::Get { key: "val".into() };
        let ok = |v: Option<&str>| Ok(Reply { value: v.map(String::from), lsn: Lsn(1) });
        assert_eq!(render(&set, &ok(None)), "Successfully set key 'val' with value 'pal'");
        assert_eq!(render(&get, &ok(Some("pal"))), "pal");
        assert_eq!(render(&get, &ok(None)), "(nil)");
        assert_eq!(render(&get, &Err(OpError::Timeout)), "error: timed out");
        assert!(render(&set, &Err(OpError::Timeout)).starts_with("error: timed out (a write may"));
    }
}
