//! `gt`: the agents' tool, usable from any agent runtime's shell. Each town's `bin/gt` shim
//! (first on every agent's `PATH`, beside the `gh` shim) runs `gastown-control gt …`.
//!
//! An agent working a bead calls back for it:
//!
//! ```text
//! gt done --summary TEXT [--branch NAME] [--pr-url URL]   the bead is done
//! gt status TEXT…                                        a line for the bead's log
//! gt heartbeat                                           the agent is alive
//! gt git-token                                           the rig's current git token
//! ```
//!
//! That session comes from the agent's environment (`GASTOWN_WORKER_URL`, `GASTOWN_TOWN_ID`,
//! `GASTOWN_RIG_ID`, `GASTOWN_AGENT_ID`), and the town's container token is read from
//! `GASTOWN_CONTAINER_TOKEN_FILE` on every call, never kept: see [`crate::callbacks`].
//!
//! The mayor (town-wide, on no rig) uses its tools, each a route of the worker
//! ([`crate::mayor_tools`], which needs `GASTOWN_MAYOR_KEY` instead of a rig and an agent):
//!
//! ```text
//! gt rigs                                                GET   /rigs
//! gt beads [--status S] [--type T] [--rig R] [--limit N] GET   /beads?status=&type=&rig_id=&limit=
//! gt bead ID                                             GET   /beads/ID
//! gt create-bead --title T [--body B] [--rig R] [--type T] [--priority N]
//!                                                        POST  /beads
//! gt update-bead ID JSON                                 PATCH /beads/ID
//! gt sling --rig R --title T [--body B] [--priority N]   POST  /sling
//! gt sling-batch JSON|-                                  POST  /sling-batch (`-`: from stdin)
//! gt agents                                              GET   /agents
//! gt reset-agent ID                                      POST  /agents/ID/reset
//! gt ack ID                                              POST  /escalations/ID/ack
//! gt reply TEXT…                                         POST  /reply
//! ```
//!
//! A tool's answer of 2xx is printed on stdout as it is (with a newline when it has none);
//! another is one line on stderr, `gt: the worker answered <status>: <error.message>`.
//!
//! Exit 0 on success; 1 when the worker refused or was not reached (one line on stderr, never
//! a token or the mayor's key); 2 for a usage error or a session the environment does not name.

use crate::callbacks::{callback_text, plain_segment, Callbacks};
use crate::cli::Args;
use crate::git_credential::{self, GIT_TOKEN_SUBCOMMAND};
use crate::mayor_tools::MayorTools;
use gastown_core::control::AgentDoneCallback;
use serde_json::{Map, Value};
use std::io::{Read, Write};

/// The subcommand of `gastown-control` the `gt` shim runs.
pub const GT_SUBCOMMAND: &str = "gt";

pub const USAGE: &str = "usage: gt <command>
  gt done --summary TEXT [--branch NAME] [--pr-url URL]   the bead is done (closed, or in
                                                          review with a pull request)
  gt status TEXT...                                       a status line for the bead's log
  gt heartbeat                                            the agent is alive
  gt git-token                                            prints the rig's current git token
  The session is the agent's (GASTOWN_WORKER_URL, GASTOWN_TOWN_ID, GASTOWN_RIG_ID,
  GASTOWN_AGENT_ID); the town's container token is read from GASTOWN_CONTAINER_TOKEN_FILE on
  every call.
The mayor's tools (each prints the worker's JSON answer):
  gt rigs                                                 the town's rigs
  gt beads [--status S] [--type T] [--rig R] [--limit N]  the town's beads
  gt bead ID                                              one bead
  gt create-bead --title T [--body B] [--rig R] [--type T] [--priority N]
                                                          a new bead
  gt update-bead ID JSON                                  changes a bead (a JSON object)
  gt sling --rig R --title T [--body B] [--priority N]    a bead for the rig, dispatched
  gt sling-batch JSON|-                                   a batch of slung beads (a JSON object;
                                                          - reads it from stdin)
  gt agents                                               the town's agents
  gt reset-agent ID                                       resets an agent
  gt ack ID                                               acknowledges an escalation
  gt reply TEXT...                                        a reply to the user
  The session is the mayor's (GASTOWN_WORKER_URL, GASTOWN_TOWN_ID, GASTOWN_MAYOR_KEY, and the
  container token as above).";

/// What one run asks.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Command {
    Done(AgentDoneCallback),
    Status(String),
    Heartbeat,
    GitToken,
    Tool(ToolCall),
}

/// A call to one of the mayor's tools: a method, the path after `/api/mayor/:townId/tools`
/// (with its query) and the body.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ToolCall {
    method: &'static str,
    path: String,
    body: Option<ToolBody>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum ToolBody {
    Json(Value),
    /// A JSON object, read from stdin when the call is made.
    Stdin,
}

impl ToolCall {
    fn get(path: String) -> ToolCall {
        ToolCall {
            method: "GET",
            path,
            body: None,
        }
    }

    fn send(method: &'static str, path: String, body: Value) -> ToolCall {
        ToolCall {
            method,
            path,
            body: Some(ToolBody::Json(body)),
        }
    }
}

/// Runs `gt <args>` (the arguments after `gt`) with the process's environment; the exit code.
pub fn cli_main(args: &[String]) -> i32 {
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let mut stderr = std::io::stderr().lock();
    let command = match parse(args) {
        Ok(Some(command)) => command,
        Ok(None) => {
            println!("{USAGE}");
            return 0;
        }
        Err(e) => {
            let _ = writeln!(stderr, "gt: {e}\n{USAGE}");
            return 2;
        }
    };
    let command = match command {
        Command::GitToken => return git_credential::cli_main(GIT_TOKEN_SUBCOMMAND, &[]),
        Command::Tool(call) => return use_tool(call, &env, &mut stderr),
        command => command,
    };
    let session = match Callbacks::from_env(&env, "gt") {
        Ok(s) => s,
        Err(e) => {
            let _ = writeln!(stderr, "gt: not in an agent session: {e}");
            return 2;
        }
    };
    let outcome = match &command {
        Command::Done(done) => serde_json::to_string(done)
            .map_err(|e| e.to_string())
            .and_then(|body| session.call("done", &body)),
        Command::Status(message) => session.status(message),
        Command::Heartbeat => session.call("heartbeat", "{}"),
        Command::GitToken | Command::Tool(_) => unreachable!("handled above"),
    };
    match outcome {
        Ok(()) => 0,
        Err(e) => {
            let _ = writeln!(stderr, "gt: {e}");
            1
        }
    }
}

/// Makes the mayor's tool call and says how it went: the body on stdout for a 2xx answer, one
/// line on stderr otherwise; the exit code.
fn use_tool(call: ToolCall, env: &dyn Fn(&str) -> Option<String>, stderr: &mut dyn Write) -> i32 {
    let body = match call.body {
        None => None,
        Some(ToolBody::Json(value)) => Some(value.to_string()),
        Some(ToolBody::Stdin) => {
            let mut text = String::new();
            let read = std::io::stdin().read_to_string(&mut text);
            match read
                .map_err(|e| e.to_string())
                .and_then(|_| json_object(&text))
            {
                Ok(value) => Some(value.to_string()),
                Err(e) => {
                    let _ = writeln!(stderr, "gt: stdin: {e}\n{USAGE}");
                    return 2;
                }
            }
        }
    };
    let tools = match MayorTools::from_env(env) {
        Ok(tools) => tools,
        Err(e) => {
            let _ = writeln!(stderr, "gt: not in a mayor session: {e}");
            return 2;
        }
    };
    match tools.request(call.method, &call.path, body.as_deref()) {
        Ok((200..=299, answer)) => {
            let mut stdout = std::io::stdout().lock();
            let newline = if answer.ends_with('\n') { "" } else { "\n" };
            match write!(stdout, "{answer}{newline}").and_then(|()| stdout.flush()) {
                Ok(()) => 0,
                Err(_) => 1,
            }
        }
        Ok((status, answer)) => {
            let _ = writeln!(stderr, "gt: {}", refusal(status, &answer));
            1
        }
        Err(e) => {
            let _ = writeln!(stderr, "gt: {e}");
            1
        }
    }
}

/// The line for an answer other than 2xx: its status, and the `error.message` of its JSON body
/// when there is one (on one line).
fn refusal(status: u16, body: &str) -> String {
    let message = serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
        .map(|m| m.replace(|c: char| c.is_control(), " "))
        .filter(|m| !m.trim().is_empty());
    match message {
        Some(message) => format!("the worker answered {status}: {message}"),
        None => format!("the worker answered {status}"),
    }
}

/// `text` as a JSON object.
fn json_object(text: &str) -> Result<Value, String> {
    match serde_json::from_str::<Value>(text) {
        Ok(value) if value.is_object() => Ok(value),
        Ok(_) => Err("must be a JSON object".to_owned()),
        Err(e) => Err(format!("must be a JSON object: {e}")),
    }
}

/// `id` when it can be a segment of a tool's path as it is.
fn tool_id(command: &str, id: &str) -> Result<String, String> {
    if plain_segment(id) {
        Ok(id.to_owned())
    } else {
        Err(format!("{command}: {id:?} is not an id"))
    }
}

/// The one argument of `command`, which must be an id.
fn one_id(command: &str, rest: &[String]) -> Result<String, String> {
    match rest {
        [id] => tool_id(command, id),
        _ => Err(format!("{command} needs one id")),
    }
}

/// `--priority`'s value.
fn priority(value: &str) -> Result<Value, String> {
    value
        .parse::<u8>()
        .map(Value::from)
        .map_err(|_| "--priority needs a number from 0 to 255".to_owned())
}

/// A JSON object of the fields that are set.
fn fields<const N: usize>(fields: [(&str, Option<Value>); N]) -> Value {
    let map: Map<String, Value> = fields
        .into_iter()
        .filter_map(|(name, value)| Some((name.to_owned(), value?)))
        .collect();
    Value::Object(map)
}

/// `value` percent-encoded for a query string: every byte but the unreserved ones.
fn query_value(value: &str) -> String {
    value
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// A flag's value that must say something.
fn not_blank(flag: &str, value: String) -> Result<String, String> {
    if value.trim().is_empty() {
        Err(format!("{flag} cannot be empty"))
    } else {
        Ok(value)
    }
}

/// `gt beads …`: its filters, in a fixed order, as the query.
fn beads(rest: &[String]) -> Result<ToolCall, String> {
    let (mut status, mut kind, mut rig, mut limit) = (None, None, None, None);
    let mut it = Args::new(rest);
    while let Some(arg) = it.next() {
        match arg {
            "--status" => status = Some(it.value(arg)?),
            "--type" => kind = Some(it.value(arg)?),
            "--rig" => rig = Some(it.value(arg)?),
            "--limit" => {
                let value = it.value(arg)?;
                value
                    .parse::<u32>()
                    .map_err(|_| "--limit needs a number".to_owned())?;
                limit = Some(value);
            }
            other => return Err(format!("beads: unexpected argument {other:?}")),
        }
    }
    let query: Vec<String> = [
        ("status", status),
        ("type", kind),
        ("rig_id", rig),
        ("limit", limit),
    ]
    .into_iter()
    .filter_map(|(name, value)| Some(format!("{name}={}", query_value(&value?))))
    .collect();
    let path = if query.is_empty() {
        "/beads".to_owned()
    } else {
        format!("/beads?{}", query.join("&"))
    };
    Ok(ToolCall::get(path))
}

/// `gt create-bead …`.
fn create_bead(rest: &[String]) -> Result<ToolCall, String> {
    let (mut title, mut body, mut rig, mut kind, mut prio) = (None, None, None, None, None);
    let mut it = Args::new(rest);
    while let Some(arg) = it.next() {
        match arg {
            "--title" => title = Some(not_blank(arg, it.value(arg)?)?),
            "--body" => body = Some(it.value(arg)?),
            "--rig" => rig = Some(it.value(arg)?),
            "--type" => kind = Some(it.value(arg)?),
            "--priority" => prio = Some(priority(&it.value(arg)?)?),
            other => return Err(format!("create-bead: unexpected argument {other:?}")),
        }
    }
    let title = title.ok_or("create-bead needs --title")?;
    Ok(ToolCall::send(
        "POST",
        "/beads".to_owned(),
        fields([
            ("title", Some(title.into())),
            ("body", body.map(Value::from)),
            ("rig_id", rig.map(Value::from)),
            ("type", kind.map(Value::from)),
            ("priority", prio),
        ]),
    ))
}

/// `gt sling …`.
fn sling(rest: &[String]) -> Result<ToolCall, String> {
    let (mut rig, mut title, mut body, mut prio) = (None, None, None, None);
    let mut it = Args::new(rest);
    while let Some(arg) = it.next() {
        match arg {
            "--rig" => rig = Some(not_blank(arg, it.value(arg)?)?),
            "--title" => title = Some(not_blank(arg, it.value(arg)?)?),
            "--body" => body = Some(it.value(arg)?),
            "--priority" => prio = Some(priority(&it.value(arg)?)?),
            other => return Err(format!("sling: unexpected argument {other:?}")),
        }
    }
    let rig = rig.ok_or("sling needs --rig")?;
    let title = title.ok_or("sling needs --title")?;
    Ok(ToolCall::send(
        "POST",
        "/sling".to_owned(),
        fields([
            ("rig_id", Some(rig.into())),
            ("title", Some(title.into())),
            ("body", body.map(Value::from)),
            ("priority", prio),
        ]),
    ))
}

/// The command; `None` for `--help` or no command.
fn parse(args: &[String]) -> Result<Option<Command>, String> {
    let Some((first, rest)) = args.split_first() else {
        return Ok(None);
    };
    let command = match first.as_str() {
        "-h" | "--help" | "help" => return Ok(None),
        "done" => {
            let (mut summary, mut branch, mut pr_url) = (None, None, None);
            let mut it = Args::new(rest);
            while let Some(arg) = it.next() {
                match arg {
                    "--summary" => summary = Some(it.value(arg)?),
                    "--branch" => branch = Some(it.value(arg)?),
                    "--pr-url" => pr_url = Some(it.value(arg)?),
                    other => return Err(format!("done: unexpected argument {other:?}")),
                }
            }
            let summary = summary
                .filter(|s| !s.trim().is_empty())
                .ok_or("done needs --summary")?;
            Command::Done(AgentDoneCallback {
                summary: callback_text(&summary),
                branch,
                pr_url,
            })
        }
        "status" => {
            let message = rest.join(" ");
            if message.trim().is_empty() {
                return Err("status needs a message".to_owned());
            }
            Command::Status(message)
        }
        "heartbeat" if rest.is_empty() => Command::Heartbeat,
        "git-token" if rest.is_empty() => Command::GitToken,
        "rigs" if rest.is_empty() => Command::Tool(ToolCall::get("/rigs".to_owned())),
        "beads" => Command::Tool(beads(rest)?),
        "bead" => Command::Tool(ToolCall::get(format!("/beads/{}", one_id(first, rest)?))),
        "create-bead" => Command::Tool(create_bead(rest)?),
        "update-bead" => {
            let [id, changes] = rest else {
                return Err("update-bead needs an id and a JSON object".to_owned());
            };
            let id = tool_id(first, id)?;
            let changes = json_object(changes).map_err(|e| format!("update-bead: {e}"))?;
            Command::Tool(ToolCall::send("PATCH", format!("/beads/{id}"), changes))
        }
        "sling" => Command::Tool(sling(rest)?),
        "sling-batch" => {
            let body = match rest {
                [stdin] if stdin == "-" => ToolBody::Stdin,
                [batch] => {
                    ToolBody::Json(json_object(batch).map_err(|e| format!("sling-batch: {e}"))?)
                }
                _ => return Err("sling-batch needs a JSON object, or - to read it".to_owned()),
            };
            Command::Tool(ToolCall {
                method: "POST",
                path: "/sling-batch".to_owned(),
                body: Some(body),
            })
        }
        "agents" if rest.is_empty() => Command::Tool(ToolCall::get("/agents".to_owned())),
        "reset-agent" => Command::Tool(ToolCall::send(
            "POST",
            format!("/agents/{}/reset", one_id(first, rest)?),
            Value::Object(Map::new()),
        )),
        "ack" => Command::Tool(ToolCall::send(
            "POST",
            format!("/escalations/{}/ack", one_id(first, rest)?),
            Value::Object(Map::new()),
        )),
        "reply" => {
            let text = rest.join(" ");
            if text.trim().is_empty() {
                return Err("reply needs a text".to_owned());
            }
            Command::Tool(ToolCall::send(
                "POST",
                "/reply".to_owned(),
                serde_json::json!({ "text": text }),
            ))
        }
        other => return Err(format!("unknown command {other:?}")),
    };
    Ok(Some(command))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn args(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn commands() {
        assert_eq!(
            parse(&args(&[
                "done",
                "--summary",
                "all of it",
                "--branch",
                "gastown/a/b"
            ]))
            .unwrap(),
            Some(Command::Done(AgentDoneCallback {
                summary: "all of it".into(),
                branch: Some("gastown/a/b".into()),
                pr_url: None,
            }))
        );
        assert_eq!(
            parse(&args(&["status", "cloning", "the", "repo"])).unwrap(),
            Some(Command::Status("cloning the repo".into()))
        );
        assert_eq!(
            parse(&args(&["heartbeat"])).unwrap(),
            Some(Command::Heartbeat)
        );
        assert_eq!(
            parse(&args(&["git-token"])).unwrap(),
            Some(Command::GitToken)
        );
        assert_eq!(parse(&args(&[])).unwrap(), None);
        assert_eq!(parse(&args(&["--help"])).unwrap(), None);
        for bad in [
            &["done"][..],
            &["done", "--summary", " "],
            &["done", "--summary", "x", "--force"],
            &["done", "--branch"],
            &["status"],
            &["heartbeat", "now"],
            &["sling"],
        ] {
            assert!(parse(&args(bad)).is_err(), "{bad:?}");
        }
    }

    fn tool(v: &[&str]) -> ToolCall {
        match parse(&args(v)) {
            Ok(Some(Command::Tool(call))) => call,
            other => panic!("{v:?}: {other:?}"),
        }
    }

    fn call(method: &'static str, path: &str, body: Option<Value>) -> ToolCall {
        ToolCall {
            method,
            path: path.to_owned(),
            body: body.map(ToolBody::Json),
        }
    }

    #[test]
    fn the_mayors_tools() {
        assert_eq!(tool(&["rigs"]), call("GET", "/rigs", None));
        assert_eq!(tool(&["agents"]), call("GET", "/agents", None));
        assert_eq!(tool(&["beads"]), call("GET", "/beads", None));
        assert_eq!(
            tool(&[
                "beads", "--limit", "5", "--rig", "r 1", "--type", "issue", "--status", "a&b=c"
            ]),
            call(
                "GET",
                "/beads?status=a%26b%3Dc&type=issue&rig_id=r%201&limit=5",
                None
            )
        );
        assert_eq!(tool(&["bead", "b-1"]), call("GET", "/beads/b-1", None));
        assert_eq!(
            tool(&["create-bead", "--title", "Fix it"]),
            call("POST", "/beads", Some(json!({ "title": "Fix it" })))
        );
        assert_eq!(
            tool(&[
                "create-bead",
                "--title",
                "Fix it",
                "--body",
                "all of it",
                "--rig",
                "r1",
                "--type",
                "issue",
                "--priority",
                "2"
            ]),
            call(
                "POST",
                "/beads",
                Some(json!({
                    "title": "Fix it", "body": "all of it", "rig_id": "r1", "type": "issue",
                    "priority": 2,
                }))
            )
        );
        assert_eq!(
            tool(&["update-bead", "b1", r#"{"status":"closed"}"#]),
            call("PATCH", "/beads/b1", Some(json!({ "status": "closed" })))
        );
        assert_eq!(
            tool(&["sling", "--title", "T", "--rig", "r1"]),
            call(
                "POST",
                "/sling",
                Some(json!({ "rig_id": "r1", "title": "T" }))
            )
        );
        assert_eq!(
            tool(&[
                "sling",
                "--rig",
                "r1",
                "--title",
                "T",
                "--body",
                "B",
                "--priority",
                "0"
            ]),
            call(
                "POST",
                "/sling",
                Some(json!({ "rig_id": "r1", "title": "T", "body": "B", "priority": 0 }))
            )
        );
        assert_eq!(
            tool(&["sling-batch", r#"{"title":"x","beads":[]}"#]),
            call(
                "POST",
                "/sling-batch",
                Some(json!({ "title": "x", "beads": [] }))
            )
        );
        assert_eq!(
            tool(&["sling-batch", "-"]),
            ToolCall {
                method: "POST",
                path: "/sling-batch".into(),
                body: Some(ToolBody::Stdin),
            }
        );
        assert_eq!(
            tool(&["reset-agent", "a1"]),
            call("POST", "/agents/a1/reset", Some(json!({})))
        );
        assert_eq!(
            tool(&["ack", "e1"]),
            call("POST", "/escalations/e1/ack", Some(json!({})))
        );
        assert_eq!(
            tool(&["reply", "on", "it"]),
            call("POST", "/reply", Some(json!({ "text": "on it" })))
        );
        for bad in [
            &["rigs", "now"][..],
            &["agents", "all"],
            &["beads", "--limit"],
            &["beads", "--limit", "ten"],
            &["beads", "--rig", "r1", "--owner", "me"],
            &["bead"],
            &["bead", "a/b"],
            &["bead", ".."],
            &["bead", "b1", "b2"],
            &["create-bead"],
            &["create-bead", "--title", " "],
            &["create-bead", "--body", "B"],
            &["create-bead", "--title", "T", "--priority", "high"],
            &["create-bead", "--title", "T", "--priority", "256"],
            &["create-bead", "--title", "T", "--force"],
            &["update-bead", "b1"],
            &["update-bead", "b1", "[1]"],
            &["update-bead", "b1", "{"],
            &["update-bead", "a/b", "{}"],
            &["update-bead", "b1", "{}", "{}"],
            &["sling", "--rig", "r1"],
            &["sling", "--title", "T"],
            &["sling", "--rig", "r1", "--title", "T", "--priority", "-1"],
            &["sling", "--rig", "r1", "--title", "T", "--type", "issue"],
            &["sling-batch"],
            &["sling-batch", "[]"],
            &["sling-batch", "-", "-"],
            &["reset-agent"],
            &["reset-agent", "a b"],
            &["ack"],
            &["ack", "e/1"],
            &["reply"],
            &["reply", " "],
        ] {
            assert!(parse(&args(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_refusal_is_its_status_and_message_on_one_line() {
        let body =
            r#"{"error":{"code":"forbidden","message":"only the town's mayor may use its tools"}}"#;
        assert_eq!(
            refusal(403, body),
            "the worker answered 403: only the town's mayor may use its tools"
        );
        assert_eq!(
            refusal(400, r#"{"error":{"message":"a\nb"}}"#),
            "the worker answered 400: a b"
        );
        for no_message in [
            "",
            "<html>",
            r#"{"error":"x"}"#,
            r#"{"error":{"message":""}}"#,
        ] {
            assert_eq!(refusal(502, no_message), "the worker answered 502");
        }
    }
}
