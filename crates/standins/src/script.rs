//! The scripted model behind the stand-in gateway ([`crate::gateway`]): what it answers a chat
//! request, decided from that request alone (no state between calls), so that a test can drive
//! a real agent (the Kilo CLI) through a known sequence of tool calls. How the answer is sent
//! (a JSON completion or a stream of chunks) is the gateway's business.
//!
//! # The script
//!
//! * A request with no `tools` (or an empty list), such as a session's title generation, gets
//!   [`REPLY_TEXT`].
//! * [`REPLY_DIRECTIVE`] in the last user message, when it is not the first, is answered with
//!   the text `reply: <what follows the directive on its line, trimmed>`.
//! * [`AGENT_DIRECTIVE`] in the first user message plays the agent script, which reads the
//!   lines `Bead: <id>` (default `bead`), `Title: <text>` (default the bead), `Branch: <name>`
//!   (required), `File: <path>` (default `gastown/<bead>.md`) and `Pause: <seconds>` (default
//!   none, at most [`MAX_PAUSE_SECS`]) of that message; the key
//!   ignores case, the first line with a key wins. The step is the number of `role: "tool"`
//!   messages in the request, whatever they say (a failed tool still advances the script):
//!   0. `write` with `{"filePath": <file>, "content": "# <title>\n\nWritten by the scripted model
//!      for bead <bead>.\n"}`;
//!   1. `bash` with `{"command": "git add -A && git commit -q -m '<title>' && git push -q origin
//!      HEAD:refs/heads/<branch>", "description": "Commit and push the work"}`, preceded by
//!      `sleep <seconds> && ` with a pause (a window for tests to change things mid-session);
//!   2. `bash` with `{"command": "gt done --summary '<title>' --branch <branch>", "description":
//!      "Report the bead done"}`;
//!   3. and later: the text `done: <bead>`.
//!
//!   Without a branch the answer is the text `cannot: no branch`; a branch outside
//!   `[A-Za-z0-9._/-]+`, or starting with `-`, gets `cannot: bad branch`.
//! * Anything else gets [`REPLY_TEXT`].
//!
//! [`SLOW_DIRECTIVE`] in the last user message (the first, when it is the only one) marks a
//! text answer as slow: the gateway streams it in pieces with pauses, for abort tests.
//!
//! A directive counts wherever it appears in a line of the message. Invariant: the shell
//! commands quote the title in single quotes with every `'` and control character removed,
//! and take the branch only once it has passed the check above, so nothing in a message can
//! run as a command of its own.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// The answer to every request the script does not cover.
pub const REPLY_TEXT: &str = "stand-in gateway reply";
/// In the first user message: play the agent script.
pub const AGENT_DIRECTIVE: &str = "[script:agent]";
/// In a later user message: answer `reply: <the rest of the line>`.
pub const REPLY_DIRECTIVE: &str = "[script:reply]";
/// In the last user message: a text answer is streamed slowly.
pub const SLOW_DIRECTIVE: &str = "[script:slow]";
/// Longest pause the agent script takes before committing.
pub const MAX_PAUSE_SECS: u64 = 60;
/// Longest tool output kept by [`ChatRequest::tool_outputs`], in characters.
pub const MAX_TOOL_OUTPUT_CHARS: usize = 2000;

/// A chat completion request, as much of it as the gateway and the script read. Anything
/// else in the body is ignored.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<Message>,
    #[serde(default)]
    pub tools: Option<Vec<Tool>>,
    #[serde(default)]
    pub stream: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Message {
    #[serde(default)]
    pub role: String,
    #[serde(default)]
    pub content: Content,
}

/// A message's `content`: absent or `null` (an assistant's tool calls), a string, or parts.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum Content {
    #[default]
    Empty,
    Text(String),
    Parts(Vec<Part>),
    /// Any other shape, read as no text.
    Other(Value),
}

/// One part of an array `content`; only text parts carry text.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Part {
    #[serde(default)]
    pub text: Option<String>,
}

/// One entry of `tools`: `{"type": "function", "function": {"name": …, …}}`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Tool {
    #[serde(default)]
    pub function: Option<ToolFunction>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ToolFunction {
    #[serde(default)]
    pub name: String,
}

impl Content {
    /// The text: the string, or the text parts joined by newlines.
    pub fn text(&self) -> String {
        match self {
            Content::Text(s) => s.clone(),
            Content::Parts(parts) => parts
                .iter()
                .filter_map(|p| p.text.as_deref())
                .collect::<Vec<_>>()
                .join("\n"),
            Content::Empty | Content::Other(_) => String::new(),
        }
    }

    /// The characters of the text, without the newlines [`Content::text`] joins parts with.
    pub fn chars(&self) -> usize {
        match self {
            Content::Text(s) => s.chars().count(),
            Content::Parts(parts) => parts
                .iter()
                .filter_map(|p| p.text.as_deref())
                .map(|t| t.chars().count())
                .sum(),
            Content::Empty | Content::Other(_) => 0,
        }
    }
}

impl ChatRequest {
    /// Whether the answer is to be streamed (`"stream": true`).
    pub fn streams(&self) -> bool {
        self.stream == Some(true)
    }

    /// The names of the tools offered, in order.
    pub fn tool_names(&self) -> Vec<String> {
        self.tools
            .iter()
            .flatten()
            .filter_map(|t| t.function.as_ref().map(|f| f.name.clone()))
            .collect()
    }

    /// The step of the agent script: how many tool results the conversation holds.
    pub fn step(&self) -> usize {
        self.tool_results().count()
    }

    /// The tool results' text, each cut to [`MAX_TOOL_OUTPUT_CHARS`] characters.
    pub fn tool_outputs(&self) -> Vec<String> {
        self.tool_results()
            .map(|m| {
                m.content
                    .text()
                    .chars()
                    .take(MAX_TOOL_OUTPUT_CHARS)
                    .collect()
            })
            .collect()
    }

    fn tool_results(&self) -> impl Iterator<Item = &Message> {
        self.messages.iter().filter(|m| m.role == "tool")
    }

    fn user_texts(&self) -> Vec<String> {
        self.messages
            .iter()
            .filter(|m| m.role == "user")
            .map(|m| m.content.text())
            .collect()
    }
}

/// What the model says in one turn.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Say {
    Text(String),
    /// A call of the tool `name` with `arguments` (sent as a JSON string).
    Call {
        name: &'static str,
        arguments: Value,
    },
}

/// The script's answer to one request.
#[derive(Debug, Clone, PartialEq)]
pub struct Turn {
    pub say: Say,
    /// Stream a text answer slowly ([`SLOW_DIRECTIVE`]).
    pub slow: bool,
}

/// The script's answer to `request` (see the module's documentation).
pub fn turn(request: &ChatRequest) -> Turn {
    let text = |t: &str| Say::Text(t.to_owned());
    if request.tools.as_ref().is_none_or(Vec::is_empty) {
        return Turn {
            say: text(REPLY_TEXT),
            slow: false,
        };
    }
    let users = request.user_texts();
    let first = users.first().map_or("", String::as_str);
    let last = users.last().map_or("", String::as_str);
    let follow_up = users.len() > 1;
    let say = match directive(last, REPLY_DIRECTIVE) {
        Some(rest) if follow_up => Say::Text(format!("reply: {rest}")),
        _ if directive(first, AGENT_DIRECTIVE).is_some() => agent(first, request.step()),
        _ => text(REPLY_TEXT),
    };
    Turn {
        say,
        slow: directive(last, SLOW_DIRECTIVE).is_some(),
    }
}

/// What follows `name` on the first line of `text` holding it, trimmed.
fn directive<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|line| line.split_once(name).map(|(_, rest)| rest.trim()))
}

/// The agent script at `step` for the brief in `message`.
fn agent(message: &str, step: usize) -> Say {
    let brief = Brief::read(message);
    let branch = match brief.branch.as_deref() {
        None => return Say::Text("cannot: no branch".to_owned()),
        Some(b) if !is_branch(b) => return Say::Text("cannot: bad branch".to_owned()),
        Some(b) => b,
    };
    let Brief {
        bead,
        title,
        file,
        pause,
        ..
    } = &brief;
    let sleep = pause.map_or_else(String::new, |s| format!("sleep {s} && "));
    match step {
        0 => Say::Call {
            name: "write",
            arguments: json!({
                "filePath": file,
                "content": format!("# {title}\n\nWritten by the scripted model for bead {bead}.\n"),
            }),
        },
        1 => Say::Call {
            name: "bash",
            arguments: json!({
                "command": format!(
                    "{sleep}git add -A && git commit -q -m '{title}' && git push -q origin \
                     HEAD:refs/heads/{branch}"
                ),
                "description": "Commit and push the work",
            }),
        },
        2 => Say::Call {
            name: "bash",
            arguments: json!({
                "command": format!("gt done --summary '{title}' --branch {branch}"),
                "description": "Report the bead done",
            }),
        },
        _ => Say::Text(format!("done: {bead}")),
    }
}

/// The agent script's `key: value` lines, defaults filled in, the title made safe to quote.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Brief {
    bead: String,
    title: String,
    branch: Option<String>,
    file: String,
    pause: Option<u64>,
}

impl Brief {
    fn read(message: &str) -> Brief {
        let value = |key: &str| {
            message.lines().find_map(|line| {
                let (k, v) = line.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case(key)
                    .then(|| v.trim().to_owned())
            })
        };
        let bead = value("bead")
            .filter(|b| !b.is_empty())
            .unwrap_or_else(|| "bead".to_owned());
        let title = value("title")
            .map(|t| {
                t.chars()
                    .filter(|c| *c != '\'' && !c.is_control())
                    .collect::<String>()
                    .trim()
                    .to_owned()
            })
            .filter(|t| !t.is_empty())
            .unwrap_or_else(|| bead.clone());
        let file = value("file")
            .filter(|f| !f.is_empty())
            .unwrap_or_else(|| format!("gastown/{bead}.md"));
        let pause = value("pause")
            .and_then(|p| p.parse::<u64>().ok())
            .map(|p| p.min(MAX_PAUSE_SECS));
        Brief {
            branch: value("branch"),
            pause,
            bead,
            title,
            file,
        }
    }
}

/// A branch name safe to put unquoted in a shell command and after `git push … HEAD:`.
fn is_branch(branch: &str) -> bool {
    !branch.is_empty()
        && !branch.starts_with('-')
        && branch
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._/-".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(messages: Value, tools: bool) -> ChatRequest {
        let mut body = json!({ "model": "m", "messages": messages });
        if tools {
            body["tools"] = json!([
                { "type": "function", "function": { "name": "write", "parameters": {} } },
                { "type": "function", "function": { "name": "bash", "parameters": {} } },
            ]);
        }
        serde_json::from_value(body).unwrap()
    }

    fn user(text: &str) -> Value {
        json!({ "role": "user", "content": text })
    }

    fn tool_result(text: &str) -> Value {
        json!({ "role": "tool", "tool_call_id": "call_1", "content": text })
    }

    const BRIEF: &str = "[script:agent]\nBead: gt-1\nTitle: Add it\nBranch: gastown/a/gt-1";

    fn say(messages: Value) -> Say {
        turn(&request(messages, true)).say
    }

    fn command(say: &Say) -> &str {
        match say {
            Say::Call { arguments, .. } => arguments["command"].as_str().unwrap(),
            Say::Text(t) => panic!("a text: {t}"),
        }
    }

    #[test]
    fn content_reads_strings_parts_and_nothing() {
        let messages: Vec<Message> = serde_json::from_value(json!([
            { "role": "assistant", "content": null, "tool_calls": [] },
            { "role": "assistant" },
            { "role": "user", "content": "abc" },
            { "role": "user", "content": [
                { "type": "text", "text": "ab" },
                { "type": "image_url", "image_url": { "url": "x" } },
                { "type": "text", "text": "cd" },
            ] },
            { "role": "user", "content": 7 },
        ]))
        .unwrap();
        let texts: Vec<_> = messages
            .iter()
            .map(|m| (m.content.text(), m.content.chars()))
            .collect();
        let expected = [("", 0), ("", 0), ("abc", 3), ("ab\ncd", 4), ("", 0)];
        assert_eq!(
            texts,
            expected.map(|(t, n)| (t.to_owned(), n)).to_vec(),
            "{messages:?}"
        );
    }

    #[test]
    fn without_tools_the_fixed_text() {
        for tools in [None, Some(json!([]))] {
            let mut body = json!({ "model": "m", "messages": [user(BRIEF)] });
            if let Some(t) = tools {
                body["tools"] = t;
            }
            let request: ChatRequest = serde_json::from_value(body).unwrap();
            assert_eq!(
                turn(&request),
                Turn {
                    say: Say::Text(REPLY_TEXT.to_owned()),
                    slow: false
                }
            );
        }
        assert_eq!(
            say(json!([user("hello")])),
            Say::Text(REPLY_TEXT.to_owned())
        );
    }

    #[test]
    fn the_agent_script_follows_the_tool_results() {
        let mut messages = vec![
            json!({ "role": "system", "content": "be good" }),
            user(BRIEF),
        ];
        let mut said = Vec::new();
        for _ in 0..5 {
            said.push(say(Value::Array(messages.clone())));
            messages.push(json!({ "role": "assistant", "content": null, "tool_calls": [] }));
            messages.push(tool_result("Error: whatever happened"));
        }
        assert_eq!(
            said[0],
            Say::Call {
                name: "write",
                arguments: json!({
                    "filePath": "gastown/gt-1.md",
                    "content": "# Add it\n\nWritten by the scripted model for bead gt-1.\n",
                }),
            }
        );
        assert_eq!(
            command(&said[1]),
            "git add -A && git commit -q -m 'Add it' && git push -q origin \
             HEAD:refs/heads/gastown/a/gt-1"
        );
        assert_eq!(
            command(&said[2]),
            "gt done --summary 'Add it' --branch gastown/a/gt-1"
        );
        assert_eq!(said[3], Say::Text("done: gt-1".to_owned()));
        assert_eq!(said[4], said[3]);
    }

    #[test]
    fn a_pause_delays_the_commit_and_is_capped() {
        let step1 = |brief: &str| command(&say(json!([user(brief), tool_result("ok")]))).to_owned();
        assert!(step1(&format!("{BRIEF}\nPause: 7")).starts_with("sleep 7 && git add -A"));
        assert!(step1(&format!("{BRIEF}\nPause: 9999")).starts_with("sleep 60 && git add"));
        for bad in ["Pause: soon", "Pause: -1", "Pause: 1; rm -rf /"] {
            assert!(
                step1(&format!("{BRIEF}\n{bad}")).starts_with("git add -A"),
                "{bad}"
            );
        }
    }

    #[test]
    fn the_brief_is_read_from_parts_with_defaults() {
        let parts = json!([{ "role": "user", "content": [
            { "type": "text", "text": "please [script:agent] now" },
            { "type": "text", "text": "branch:  b-1 \nFILE: notes/x.txt" },
        ] }]);
        match say(parts) {
            Say::Call { arguments, .. } => assert_eq!(
                arguments,
                json!({
                    "filePath": "notes/x.txt",
                    "content": "# bead\n\nWritten by the scripted model for bead bead.\n",
                })
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn titles_lose_their_quotes_and_bad_branches_are_refused() {
        let brief = "[script:agent]\nBead: b\nTitle: it's 'quoted'\u{7}\nBranch: main";
        let step1 = say(json!([user(brief), tool_result("ok")]));
        assert_eq!(
            command(&step1),
            "git add -A && git commit -q -m 'its quoted' && git push -q origin HEAD:refs/heads/main"
        );
        let only_quotes = "[script:agent]\nBead: b-2\nTitle: '''\nBranch: main";
        assert!(command(&say(json!([user(only_quotes), tool_result("ok")]))).contains("-m 'b-2'"));
        for branch in ["x;rm -rf /", "a b", "it's", "-f", "$(id)", "a`b`"] {
            let brief = format!("[script:agent]\nBead: b\nBranch: {branch}");
            for step in 0..4 {
                let mut messages = vec![user(&brief)];
                messages.extend((0..step).map(|_| tool_result("ok")));
                assert_eq!(
                    say(Value::Array(messages)),
                    Say::Text("cannot: bad branch".to_owned()),
                    "{branch:?} at {step}"
                );
            }
        }
        assert_eq!(
            say(json!([user("[script:agent]\nBead: b\nBranch:")])),
            Say::Text("cannot: bad branch".to_owned())
        );
        assert_eq!(
            say(json!([user("[script:agent]\nBead: b")])),
            Say::Text("cannot: no branch".to_owned())
        );
    }

    #[test]
    fn a_follow_up_reply_directive_is_answered() {
        let follow_up = user("more\n[script:reply]  all good  \nthanks");
        assert_eq!(
            say(json!([user(BRIEF), tool_result("ok"), follow_up])),
            Say::Text("reply: all good".to_owned())
        );
        assert_eq!(
            say(json!([user("hi"), user("[script:reply]")])),
            Say::Text("reply: ".to_owned())
        );
        // In the first message, it is no follow-up.
        assert_eq!(
            say(json!([user("[script:reply] x")])),
            Say::Text(REPLY_TEXT.to_owned())
        );
        // A later message without it leaves the agent script playing.
        assert_eq!(
            say(json!([
                user(BRIEF),
                tool_result("ok"),
                tool_result("ok"),
                tool_result("ok"),
                user("and?")
            ])),
            Say::Text("done: gt-1".to_owned())
        );
    }

    #[test]
    fn slow_is_read_from_the_last_user_message() {
        let slow = |messages: Value| turn(&request(messages, true)).slow;
        assert!(slow(json!([user("[script:slow]")])));
        assert!(slow(json!([user("a"), user("x [script:slow]")])));
        assert!(!slow(json!([user("[script:slow]"), user("a")])));
        assert!(!turn(&request(json!([user("[script:slow]")]), false)).slow);
    }

    #[test]
    fn tool_outputs_and_names() {
        let long = "é".repeat(MAX_TOOL_OUTPUT_CHARS + 5);
        let r = request(
            json!([
                user("x"),
                tool_result("exit code 1"),
                { "role": "tool", "content": [{ "type": "text", "text": long }] },
            ]),
            true,
        );
        assert_eq!(r.step(), 2);
        assert_eq!(r.tool_names(), ["write", "bash"]);
        let outputs = r.tool_outputs();
        assert_eq!(outputs[0], "exit code 1");
        assert_eq!(outputs[1].chars().count(), MAX_TOOL_OUTPUT_CHARS);
        assert!(!r.streams());
    }

    #[test]
    fn only_good_branches_pass() {
        for good in ["main", "gastown/a/gt-1", "v1.2_x"] {
            assert!(is_branch(good), "{good}");
        }
        for bad in ["", "-x", "a b", "a'b", "a\nb", "a;b", "ü"] {
            assert!(!is_branch(bad), "{bad:?}");
        }
    }
}
