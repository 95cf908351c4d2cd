//! The scripted model behind the stand-in gateway ([`crate::gateway`]): what it answers a chat
//! request, decided from that request alone (no state between calls), so that a test can drive
//! a real agent (the Kilo CLI) through a known sequence of tool calls. How the answer is sent
//! (a JSON completion or a stream of chunks) is the gateway's business.
//!
//! # The script
//!
//! The first rule that applies answers:
//!
//! * A request with no `tools` (or an empty list), such as a session's title generation, gets
//!   [`REPLY_TEXT`].
//! * [`REPLY_DIRECTIVE`] in the last user message, when it is not the first, is answered with
//!   the text `reply: <what follows the directive on its line, trimmed>`.
//! * [`MAYOR_DIRECTIVE`] in the last user message plays the mayor script: a user's chat
//!   partner that acts through the `gt` command line in the `bash` tool, each call
//!   `{"command": …, "description": …}`. What follows the directive on its line is `<verb>
//!   <argument>`. The step is the number of `role: "tool"` messages after the last user
//!   message ([`ChatRequest::steps_since_last_user`]), so what a session did for its earlier
//!   messages does not count:
//!   * `reply <text>`: 0. `gt reply '<text>'` ("Answer the user"; no text is `ok`); 1. and
//!     later: the text `replied`.
//!   * `convoy <rig>`: 0. `gt sling-batch '<batch>'` ("Sling the plan"), the batch (compact
//!     JSON) `{"title":"Greeting convoy","beads":[{"rig_id":<rig>,"title":"First
//!     greeting","body":"[script:agent]\nWrite the first greeting."},{"rig_id":<rig>,
//!     "title":"Second greeting","body":"[script:agent]\nWrite the second
//!     greeting.","depends_on":[0]}]}`; 1. `gt reply 'Slung a convoy of 2 beads: <the first
//!     line of the tool's output, at most [`MAX_ECHOED_OUTPUT_CHARS`] characters>'` ("Tell
//!     the user"); 2. and later: the text `planned`.
//!   * `remember`: 0. `gt reply 'I remember: <the user messages of the request, without the
//!     lines holding "[script:", whitespace collapsed, at most [`MAX_REMEMBERED_CHARS`]
//!     characters>'` ("Answer the user"), which shows whether a resumed session was given
//!     its earlier conversation; 1. and later: the text `remembered`.
//!   * `ack <bead>`: 0. `gt ack <bead>` ("Acknowledge the bead"); 1. `gt reply 'Acknowledged
//!     <bead>'` ("Tell the user"); 2. and later: the text `acknowledged`.
//!   * Any other verb: the text `cannot: unknown mayor verb`.
//!
//!   A rig outside `[A-Za-z0-9_-]{1,64}` gets `cannot: bad rig`, a bead outside it
//!   `cannot: bad bead`, at every step.
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
//! A directive counts wherever it appears in a line of the message; the first line holding it
//! wins (a message may hold several the worker delivered together). Invariant: the shell
//! commands quote every text taken from a message or a tool's output (a title, a reply) in
//! single quotes with every `'` and control character removed, and take a branch, rig or bead
//! only once it has passed its check above, so nothing in a message can run as a command of
//! its own.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// The answer to every request the script does not cover.
pub const REPLY_TEXT: &str = "stand-in gateway reply";
/// In the first user message: play the agent script.
pub const AGENT_DIRECTIVE: &str = "[script:agent]";
/// In a later user message: answer `reply: <the rest of the line>`.
pub const REPLY_DIRECTIVE: &str = "[script:reply]";
/// In the last user message: play the mayor script's `<verb> <argument>` (the rest of the
/// line).
pub const MAYOR_DIRECTIVE: &str = "[script:mayor]";
/// In the last user message: a text answer is streamed slowly.
pub const SLOW_DIRECTIVE: &str = "[script:slow]";
/// Longest pause the agent script takes before committing.
pub const MAX_PAUSE_SECS: u64 = 60;
/// Longest tool output kept by [`ChatRequest::tool_outputs`], in characters.
pub const MAX_TOOL_OUTPUT_CHARS: usize = 2000;
/// Longest part of a tool's output the mayor script repeats to the user, in characters.
pub const MAX_ECHOED_OUTPUT_CHARS: usize = 200;
/// Longest conversation the mayor script's `remember` repeats to the user, in characters.
pub const MAX_REMEMBERED_CHARS: usize = 300;
/// Longest rig or bead id the mayor script puts in a command.
const MAX_SHELL_ID_LEN: usize = 64;

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

    /// The step of the mayor script: how many tool results follow the last user message (all
    /// of them when there is none), so a session's turns for earlier messages do not count.
    pub fn steps_since_last_user(&self) -> usize {
        let start = self
            .messages
            .iter()
            .rposition(|m| m.role == "user")
            .map_or(0, |i| i + 1);
        self.messages[start..]
            .iter()
            .filter(|m| m.role == "tool")
            .count()
    }

    fn tool_results(&self) -> impl Iterator<Item = &Message> {
        self.messages.iter().filter(|m| m.role == "tool")
    }

    /// The user messages' text, oldest first.
    pub fn user_texts(&self) -> Vec<String> {
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
    let say = if let Some(rest) = directive(last, REPLY_DIRECTIVE).filter(|_| follow_up) {
        Say::Text(format!("reply: {rest}"))
    } else if let Some(command) = directive(last, MAYOR_DIRECTIVE) {
        mayor(request, command)
    } else if directive(first, AGENT_DIRECTIVE).is_some() {
        agent(first, request.step())
    } else {
        text(REPLY_TEXT)
    };
    Turn {
        say,
        slow: directive(last, SLOW_DIRECTIVE).is_some(),
    }
}

fn text(t: &str) -> Say {
    Say::Text(t.to_owned())
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
            .map(|t| quote_safe(&t))
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

/// `text` made safe to put in single quotes: every `'` and control character removed, trimmed.
fn quote_safe(text: &str) -> String {
    text.chars()
        .filter(|c| *c != '\'' && !c.is_control())
        .collect::<String>()
        .trim()
        .to_owned()
}

/// The first `max` characters of `text`, without the whitespace the cut leaves at the end.
fn cut(text: &str, max: usize) -> String {
    text.chars()
        .take(max)
        .collect::<String>()
        .trim_end()
        .to_owned()
}

/// The mayor script for `command` (`<verb> <argument>`) in the last user message of
/// `request`.
fn mayor(request: &ChatRequest, command: &str) -> Say {
    let step = request.steps_since_last_user();
    let (verb, argument) = command
        .split_once(char::is_whitespace)
        .map_or((command, ""), |(v, a)| (v, a.trim()));
    match verb {
        "reply" => match step {
            0 => {
                let reply = quote_safe(argument);
                let reply = if reply.is_empty() { "ok" } else { &reply };
                gt_reply(reply, "Answer the user")
            }
            _ => text("replied"),
        },
        "convoy" if !is_shell_id(argument) => text("cannot: bad rig"),
        "convoy" => match step {
            0 => bash(
                format!("gt sling-batch '{}'", Convoy::greetings(argument).json()),
                "Sling the plan",
            ),
            1 => {
                let outputs = request.tool_outputs();
                let first_line = outputs.last().and_then(|o| o.lines().next()).unwrap_or("");
                let slung = cut(&quote_safe(first_line), MAX_ECHOED_OUTPUT_CHARS);
                gt_reply(
                    &format!("Slung a convoy of 2 beads: {slung}"),
                    "Tell the user",
                )
            }
            _ => text("planned"),
        },
        "remember" => match step {
            0 => {
                let said = cut(&remembered(request), MAX_REMEMBERED_CHARS);
                gt_reply(&format!("I remember: {said}"), "Answer the user")
            }
            _ => text("remembered"),
        },
        "ack" if !is_shell_id(argument) => text("cannot: bad bead"),
        "ack" => match step {
            0 => bash(format!("gt ack {argument}"), "Acknowledge the bead"),
            1 => gt_reply(&format!("Acknowledged {argument}"), "Tell the user"),
            _ => text("acknowledged"),
        },
        _ => text("cannot: unknown mayor verb"),
    }
}

/// A call of the `bash` tool.
fn bash(command: String, description: &str) -> Say {
    Say::Call {
        name: "bash",
        arguments: json!({ "command": command, "description": description }),
    }
}

/// `gt reply '<reply>'`, for a `reply` already safe to quote.
fn gt_reply(reply: &str, description: &str) -> Say {
    bash(format!("gt reply '{reply}'"), description)
}

/// What the user said in `request`: every user message without the lines holding a
/// directive, the whitespace collapsed to single spaces, safe to quote.
fn remembered(request: &ChatRequest) -> String {
    request
        .user_texts()
        .iter()
        .flat_map(|t| t.lines())
        .filter(|line| !line.contains("[script:"))
        .flat_map(str::split_whitespace)
        .map(quote_safe)
        .filter(|word| !word.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The body of `gt sling-batch` the mayor script's `convoy` sends, its fields in the order
/// the module's documentation shows.
#[derive(Debug, Serialize)]
struct Convoy<'a> {
    title: &'static str,
    beads: [ConvoyBead<'a>; 2],
}

#[derive(Debug, Serialize)]
struct ConvoyBead<'a> {
    rig_id: &'a str,
    title: &'static str,
    body: &'static str,
    #[serde(skip_serializing_if = "<[usize]>::is_empty")]
    depends_on: &'static [usize],
}

impl<'a> Convoy<'a> {
    /// Two greetings for `rig`, the second after the first, each briefed for the agent
    /// script.
    fn greetings(rig: &'a str) -> Convoy<'a> {
        Convoy {
            title: "Greeting convoy",
            beads: [
                ConvoyBead {
                    rig_id: rig,
                    title: "First greeting",
                    body: "[script:agent]\nWrite the first greeting.",
                    depends_on: &[],
                },
                ConvoyBead {
                    rig_id: rig,
                    title: "Second greeting",
                    body: "[script:agent]\nWrite the second greeting.",
                    depends_on: &[0],
                },
            ],
        }
    }

    /// Compact JSON, with no `'` as long as the rig is a checked id.
    fn json(&self) -> String {
        serde_json::to_string(self).expect("a convoy serializes")
    }
}

/// A rig or bead id safe to put unquoted in a shell command and in a JSON string.
fn is_shell_id(id: &str) -> bool {
    (1..=MAX_SHELL_ID_LEN).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
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

    fn assistant() -> Value {
        json!({ "role": "assistant", "content": null, "tool_calls": [] })
    }

    /// What the mayor says for `earlier` messages, the last user message `last`, then `steps`
    /// tool results each answering `output`.
    fn mayor_says(earlier: &[Value], last: &str, steps: usize, output: &str) -> Say {
        let mut messages = earlier.to_vec();
        messages.push(user(last));
        for _ in 0..steps {
            messages.push(assistant());
            messages.push(tool_result(output));
        }
        say(Value::Array(messages))
    }

    fn bash_call(command: &str, description: &str) -> Say {
        Say::Call {
            name: "bash",
            arguments: json!({ "command": command, "description": description }),
        }
    }

    const CONVOY_JSON: &str = r#"{"title":"Greeting convoy","beads":[{"rig_id":"r1","title":"First greeting","body":"[script:agent]\nWrite the first greeting."},{"rig_id":"r1","title":"Second greeting","body":"[script:agent]\nWrite the second greeting.","depends_on":[0]}]}"#;

    #[test]
    fn steps_are_counted_from_the_last_user_message() {
        let r = request(
            json!([
                { "role": "system", "content": "s" },
                user("a"),
                assistant(),
                tool_result("1"),
                tool_result("2"),
                user("b"),
                assistant(),
                tool_result("3"),
            ]),
            true,
        );
        assert_eq!((r.step(), r.steps_since_last_user()), (3, 1));
        let ends_with_user = request(json!([user("a"), tool_result("1"), user("b")]), true);
        assert_eq!(ends_with_user.steps_since_last_user(), 0);
        let no_user = request(json!([tool_result("1"), tool_result("2")]), true);
        assert_eq!(no_user.steps_since_last_user(), 2);
        assert_eq!(request(json!([]), true).steps_since_last_user(), 0);
    }

    #[test]
    fn the_mayor_replies_then_says_so() {
        let hi = "[script:mayor] reply  hello there ";
        assert_eq!(
            mayor_says(&[], hi, 0, ""),
            bash_call("gt reply 'hello there'", "Answer the user")
        );
        for steps in 1..3 {
            assert_eq!(
                mayor_says(&[], hi, steps, "ok"),
                Say::Text("replied".to_owned())
            );
        }
        for empty in ["[script:mayor] reply", "[script:mayor] reply  '' \u{7}"] {
            assert_eq!(
                command(&mayor_says(&[], empty, 0, "")),
                "gt reply 'ok'",
                "{empty:?}"
            );
        }
    }

    #[test]
    fn the_mayors_replies_are_safe_to_quote() {
        let hostile = "please [script:mayor] reply it's; $(rm -rf ~) `id`\u{1b}[0m\u{0}\nrm -rf /";
        let said = mayor_says(&[], hostile, 0, "");
        assert_eq!(command(&said), "gt reply 'its; $(rm -rf ~) `id`[0m'");
        assert_eq!(command(&said).matches('\'').count(), 2);
        // A text in parts still ends at its line.
        let parts = json!([{ "role": "user", "content": [
            { "type": "text", "text": "[script:mayor] reply a'b" },
            { "type": "text", "text": "'; rm -rf /" },
        ] }]);
        assert_eq!(command(&say(parts)), "gt reply 'ab'");
    }

    #[test]
    fn the_mayor_slings_a_convoy_and_reports_it() {
        let convoy = "[script:mayor] convoy r1";
        let step0 = mayor_says(&[], convoy, 0, "");
        assert_eq!(
            step0,
            bash_call(&format!("gt sling-batch '{CONVOY_JSON}'"), "Sling the plan")
        );
        // What the CLI is given is a batch the town takes.
        let json = command(&step0)
            .strip_prefix("gt sling-batch '")
            .and_then(|c| c.strip_suffix('\''))
            .unwrap();
        let batch = gastown_core::beads::SlingBatch::parse(json.as_bytes()).unwrap();
        assert_eq!(batch.title, "Greeting convoy");
        assert_eq!(
            batch.beads[0].bead.body,
            "[script:agent]\nWrite the first greeting."
        );
        assert_eq!(batch.beads[1].depends_on, [0]);

        let output = "{\"convoy_id\":\"c-1\",\"it's\":1}\nsecond line";
        assert_eq!(
            mayor_says(&[], convoy, 1, output),
            bash_call(
                "gt reply 'Slung a convoy of 2 beads: {\"convoy_id\":\"c-1\",\"its\":1}'",
                "Tell the user"
            )
        );
        let long = "x ".repeat(MAX_ECHOED_OUTPUT_CHARS);
        let echoed = command(&mayor_says(&[], convoy, 1, &long)).to_owned();
        let echo = echoed
            .strip_prefix("gt reply 'Slung a convoy of 2 beads: ")
            .and_then(|c| c.strip_suffix('\''))
            .unwrap();
        assert_eq!(
            echo.chars().count(),
            MAX_ECHOED_OUTPUT_CHARS - 1,
            "{echo:?}"
        );
        for steps in 2..4 {
            assert_eq!(
                mayor_says(&[], convoy, steps, "ok"),
                Say::Text("planned".to_owned())
            );
        }
    }

    #[test]
    fn the_mayor_remembers_every_user_message() {
        let earlier = [
            json!({ "role": "system", "content": "You are the mayor." }),
            user("My name is\n  Ada.\n[script:mayor] reply hi"),
            assistant(),
            tool_result("sent"),
            json!({ "role": "assistant", "content": "replied" }),
            user("I like 'tea';\t$(cake)"),
        ];
        let last = "What do I like?\nx [script:mayor] remember";
        assert_eq!(
            mayor_says(&earlier, last, 0, ""),
            bash_call(
                "gt reply 'I remember: My name is Ada. I like tea; $(cake) What do I like?'",
                "Answer the user"
            )
        );
        assert_eq!(
            mayor_says(&earlier, last, 1, "ok"),
            Say::Text("remembered".to_owned())
        );
        let long = format!("{}\n[script:mayor] remember", "word ".repeat(100));
        let said = command(&mayor_says(&[], &long, 0, "")).to_owned();
        let remembered = said
            .strip_prefix("gt reply 'I remember: ")
            .and_then(|c| c.strip_suffix('\''))
            .unwrap();
        assert!(remembered.chars().count() <= MAX_REMEMBERED_CHARS);
        assert!(remembered.starts_with("word word") && remembered.ends_with("word"));
    }

    #[test]
    fn the_mayor_acks_a_bead_then_tells_the_user() {
        let ack = "[script:mayor] ack gt-1_a";
        assert_eq!(
            mayor_says(&[], ack, 0, ""),
            bash_call("gt ack gt-1_a", "Acknowledge the bead")
        );
        assert_eq!(
            mayor_says(&[], ack, 1, "ok"),
            bash_call("gt reply 'Acknowledged gt-1_a'", "Tell the user")
        );
        assert_eq!(
            mayor_says(&[], ack, 2, "ok"),
            Say::Text("acknowledged".to_owned())
        );
    }

    #[test]
    fn bad_rigs_and_beads_and_verbs_are_refused() {
        let long = "a".repeat(65);
        for bad in ["", "r1 r2", "r'1", "r;1", "$(id)", "a.b", "a/b", "ü", &long] {
            for steps in 0..3 {
                for (verb, refusal) in [("convoy", "cannot: bad rig"), ("ack", "cannot: bad bead")]
                {
                    assert_eq!(
                        mayor_says(&[], &format!("[script:mayor] {verb} {bad}"), steps, "ok"),
                        Say::Text(refusal.to_owned()),
                        "{verb} {bad:?} at {steps}"
                    );
                }
            }
        }
        assert!(is_shell_id(&"a".repeat(64)));
        for unknown in [
            "[script:mayor] dance",
            "[script:mayor]",
            "[script:mayor] Reply x",
        ] {
            assert_eq!(
                mayor_says(&[], unknown, 0, ""),
                Say::Text("cannot: unknown mayor verb".to_owned()),
                "{unknown:?}"
            );
        }
    }

    #[test]
    fn a_mayor_turn_ignores_the_sessions_earlier_turns() {
        let earlier = [
            user("[script:mayor] convoy r1"),
            assistant(),
            tool_result("slung"),
            assistant(),
            tool_result("sent"),
            json!({ "role": "assistant", "content": "planned" }),
        ];
        assert_eq!(
            mayor_says(&earlier, "[script:mayor] reply hi", 0, ""),
            bash_call("gt reply 'hi'", "Answer the user")
        );
        assert_eq!(
            mayor_says(&earlier, "[script:mayor] reply hi", 1, "ok"),
            Say::Text("replied".to_owned())
        );
        // Messages delivered together: the first line with the directive wins.
        let batched = "first\n[script:mayor] ack b-1\nsecond\n[script:mayor] reply no";
        assert_eq!(command(&mayor_says(&earlier, batched, 0, "")), "gt ack b-1");
        // Without the directive in the last message, the mayor script does not play.
        assert_eq!(
            mayor_says(&earlier, "thanks", 0, ""),
            Say::Text(REPLY_TEXT.to_owned())
        );
    }

    #[test]
    fn the_mayor_comes_after_the_reply_rule_and_before_the_agent() {
        // No tools: the fixed text.
        let r = request(json!([user("[script:mayor] reply hi")]), false);
        assert_eq!(r.tools, None);
        assert_eq!(turn(&r).say, Say::Text(REPLY_TEXT.to_owned()));
        // A follow-up reply directive wins over the mayor's in the same message.
        let both = "[script:mayor] reply hi\n[script:reply] there";
        assert_eq!(
            mayor_says(&[user("a")], both, 0, ""),
            Say::Text("reply: there".to_owned())
        );
        // In the only message the reply directive is no follow-up, so the mayor plays.
        assert_eq!(command(&mayor_says(&[], both, 0, "")), "gt reply 'hi'");
        // The mayor in the last message wins over the agent in the first.
        assert_eq!(
            command(&mayor_says(
                &[user(BRIEF)],
                "[script:mayor] reply hi",
                0,
                ""
            )),
            "gt reply 'hi'"
        );
        // The mayor in an earlier message only: not played.
        assert_eq!(
            mayor_says(&[user("[script:mayor] reply hi")], "more", 0, ""),
            Say::Text(REPLY_TEXT.to_owned())
        );
        let agent_then_mayor = format!("{BRIEF}\n[script:mayor] reply hi");
        assert_eq!(
            command(&mayor_says(&[], &agent_then_mayor, 0, "")),
            "gt reply 'hi'"
        );
        // The slow flag is read as before.
        let slow = request(
            json!([user("[script:mayor] reply hi\n[script:slow]")]),
            true,
        );
        assert!(turn(&slow).slow);
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
