//! The command line of every binary the container's code builds: `gastown-control`,
//! `gastown-control-debug`, their `git-credential`, `git-token` and `gh` subcommands (`gh` reads
//! only what comes before its `--`), and the stand-ins' `gastown-gateway` and
//! `gastown-demo-agent` (crate `gastown-standins`). One reader of flags and their values
//! ([`Args`]), one handling of `--help` and of a bad argument ([`read`]), one rule for an option
//! that falls back to a variable ([`or_env`]), and the values more than one binary takes
//! ([`port`], [`read_timeout`]).
//!
//! Rules, the same for every binary:
//!
//! * `--help` or `-h` anywhere prints the usage on stdout (exit 0), whatever else is there;
//! * a flag takes the next argument as its value, whatever it looks like (`--host --port`
//!   names the host `--port`), and `<flag> needs a value` when there is none; given twice, the
//!   last wins unless the binary collects them;
//! * a bad argument prints `<program>: <why>` and the usage on stderr (exit 2);
//! * an option left unset, or empty, falls back to its variable; an empty variable counts as
//!   unset too.

use std::io::{self, Write};
use std::time::Duration;

/// The arguments after the program name, read in order: each binary matches the words it
/// knows and asks for a flag's value with [`Args::value`].
pub struct Args<'a> {
    rest: std::slice::Iter<'a, String>,
}

impl<'a> Args<'a> {
    #[must_use]
    pub fn new(args: &'a [String]) -> Args<'a> {
        Args { rest: args.iter() }
    }

    /// The value of `flag`, just read: the argument after it.
    ///
    /// # Errors
    /// `<flag> needs a value` when `flag` was the last argument.
    pub fn value(&mut self, flag: &str) -> Result<String, String> {
        self.rest
            .next()
            .cloned()
            .ok_or_else(|| format!("{flag} needs a value"))
    }
}

impl<'a> Iterator for Args<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        self.rest.next().map(String::as_str)
    }
}

/// The refusal of a word a binary does not take.
#[must_use]
pub fn unknown(arg: &str) -> String {
    format!("unknown argument {arg:?}")
}

/// The arguments after the program name, as the process was given them.
#[must_use]
pub fn args() -> Vec<String> {
    std::env::args().skip(1).collect()
}

/// What `program`'s command line comes to: `parse`'s answer, or the exit code when there is
/// nothing to run, its output written: 0 with `usage` on stdout for `--help` or `-h`, 2 with
/// `<program>: <why>` and `usage` on stderr for a bad argument.
///
/// # Errors
/// The exit code, as above.
pub fn read<T>(
    program: &str,
    usage: &str,
    args: &[String],
    parse: impl FnOnce(&[String]) -> Result<T, String>,
) -> Result<T, i32> {
    read_to(
        program,
        usage,
        args,
        parse,
        &mut io::stdout(),
        &mut io::stderr(),
    )
}

/// [`read`], writing to `out` and `err`.
///
/// # Errors
/// The exit code, as for [`read`].
pub fn read_to<T>(
    program: &str,
    usage: &str,
    args: &[String],
    parse: impl FnOnce(&[String]) -> Result<T, String>,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<T, i32> {
    if args.iter().any(|a| a == "--help" || a == "-h") {
        let _ = writeln!(out, "{usage}");
        return Err(0);
    }
    parse(args).map_err(|e| {
        let _ = writeln!(err, "{program}: {e}\n{usage}");
        2
    })
}

/// An option's value with the name it came from, for a message that names it: the flag's
/// `value`, else the variable `var` of `env`. Empty counts as unset.
pub fn or_env<'n>(
    flag: &'n str,
    value: Option<String>,
    var: &'n str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Option<(&'n str, String)> {
    let set = |v: Option<String>| v.filter(|s| !s.is_empty());
    set(value)
        .map(|v| (flag, v))
        .or_else(|| set(env(var)).map(|v| (var, v)))
}

/// `--port`'s value.
///
/// # Errors
/// A message for the operator.
pub fn port(value: &str) -> Result<u16, String> {
    value
        .parse()
        .map_err(|_| "--port needs a port number".to_owned())
}

/// `--read-timeout-ms`'s value: positive milliseconds.
///
/// # Errors
/// A message for the operator.
pub fn read_timeout(value: &str) -> Result<Duration, String> {
    match value.parse::<u64>() {
        Ok(0) => Err("--read-timeout-ms must be positive".to_owned()),
        Ok(ms) => Ok(Duration::from_millis(ms)),
        Err(_) => Err("--read-timeout-ms needs milliseconds".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn a_flag_takes_the_next_argument_whatever_it_is() {
        let argv = args(&["--host", "--port", "x", "--workdir"]);
        let mut it = Args::new(&argv);
        assert_eq!(it.next(), Some("--host"));
        assert_eq!(it.value("--host").as_deref(), Ok("--port"));
        assert_eq!(it.next(), Some("x"));
        assert_eq!(it.next(), Some("--workdir"));
        assert_eq!(
            it.value("--workdir").unwrap_err(),
            "--workdir needs a value"
        );
        assert_eq!(it.next(), None);
    }

    #[test]
    fn help_wins_and_a_bad_argument_exits_2_with_the_usage() {
        let run = |argv: &[&str]| {
            let (mut out, mut err) = (Vec::new(), Vec::new());
            let code = read_to(
                "prog",
                "usage: prog",
                &args(argv),
                |a| match Args::new(a).next() {
                    Some(arg) => Err(unknown(arg)),
                    None => Ok(()),
                },
                &mut out,
                &mut err,
            );
            (
                code,
                String::from_utf8(out).unwrap(),
                String::from_utf8(err).unwrap(),
            )
        };
        assert_eq!(run(&[]), (Ok(()), String::new(), String::new()));
        assert_eq!(
            run(&["--bogus", "-h"]),
            (Err(0), "usage: prog\n".to_owned(), String::new())
        );
        assert_eq!(
            run(&["--bogus"]),
            (
                Err(2),
                String::new(),
                "prog: unknown argument \"--bogus\"\nusage: prog\n".to_owned()
            )
        );
    }

    #[test]
    fn an_option_falls_back_to_its_variable_and_empty_is_unset() {
        let env = |name: &str| (name == "VAR").then(|| "from-env".to_owned());
        let of = |value: Option<&str>, env: &dyn Fn(&str) -> Option<String>| {
            or_env("--flag", value.map(str::to_owned), "VAR", env)
        };
        assert_eq!(of(Some("x"), &env), Some(("--flag", "x".to_owned())));
        assert_eq!(of(None, &env), Some(("VAR", "from-env".to_owned())));
        assert_eq!(of(Some(""), &env), Some(("VAR", "from-env".to_owned())));
        assert_eq!(of(None, &|_| Some(String::new())), None);
    }

    #[test]
    fn ports_and_read_timeouts() {
        assert_eq!(port("8080"), Ok(8080));
        assert!(port("x").is_err());
        assert!(port("65536").is_err());
        assert_eq!(read_timeout("250"), Ok(Duration::from_millis(250)));
        assert!(read_timeout("0").is_err());
        assert!(read_timeout("-1").is_err());
    }
}
