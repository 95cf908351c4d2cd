//! A child process run with a deadline, and signals to a process or its group: what the
//! merges' git (`merges`), the eviction drain's git (`drain`) and the agents ([`crate::agents`])
//! share.
//!
//! Rules of [`run`]:
//!
//! * the caller prepares the [`Command`] (program, arguments, environment, directory, uid and
//!   gid); [`run`] gives it `/dev/null` for stdin, pipes for stdout and stderr, and makes it
//!   lead a process group of its own, so that at the deadline the whole group goes with it
//!   (whatever it started that did not leave the group: git's `remote-https`, `upload-pack`,
//!   a hook);
//! * nothing starts once the deadline has passed ([`RunError::Late`]);
//! * one thread waits for the child and reads its stdout, another its stderr, so neither pipe
//!   can fill up and stall it; each keeps the first [`MAX_OUTPUT`] bytes and reads the rest
//!   into nothing. Both are named and have a stack of [`STACK`];
//! * at the deadline the group gets `SIGKILL` ([`RunError::Killed`]), unless the child was
//!   reaped meanwhile (one that ended right at the deadline is taken as ended: the kernel may
//!   have given its pid to another group by then). The caller then waits at most
//!   [`AFTER_KILL`] for the threads: a process that left the group may hold the pipes open;
//! * nothing panics: a thread that cannot start, a failed wait or read is a
//!   [`RunError::Spawn`] (nothing ran) or a [`RunError::Wait`] (the group killed first when
//!   the child had started and is not reaped).
//!
//! [`signal`] and [`kill_group`] never signal pid 0 or 1 (which would reach this server's group
//! or every process); a process or group that is gone already is no error.

use std::io::{self, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

/// Bytes of a child's stdout, and of its stderr, kept.
pub(crate) const MAX_OUTPUT: u64 = 1024 * 1024;
/// The stack of each thread that waits for a child or reads its output.
pub(crate) const STACK: usize = 64 * 1024;
/// How long [`run`] waits for its threads once it killed the group.
pub(crate) const AFTER_KILL: Duration = Duration::from_secs(1);

/// How a child ended, and what it wrote (each stream cut at [`MAX_OUTPUT`] bytes).
#[derive(Debug)]
pub(crate) struct Ran {
    pub(crate) status: ExitStatus,
    pub(crate) stdout: Vec<u8>,
    /// Lossy UTF-8.
    pub(crate) stderr: String,
}

/// Why [`run`] gave no [`Ran`].
#[derive(Debug)]
pub(crate) enum RunError {
    /// The deadline had passed before the child could start: nothing ran.
    Late,
    /// The deadline passed while it ran: its process group was killed.
    Killed,
    /// It could not be started (nor a thread to wait for it): nothing ran.
    Spawn(io::Error),
    /// It could not be waited for or read.
    Wait(io::Error),
}

/// Runs `cmd` (see the module docs) until it ends or `deadline` passes.
///
/// # Errors
/// Past the deadline, before or after the start; when it cannot be started or waited for.
pub(crate) fn run(cmd: &mut Command, deadline: Instant) -> Result<Ran, RunError> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
    }
    // The waiter starts first: once the child runs, nothing is left that could fail to start
    // and leave it unwaited for.
    let (give, given) = mpsc::channel::<Child>();
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("gastown-control-child".into())
        .stack_size(STACK)
        .spawn(move || {
            if let Ok(child) = given.recv() {
                let _ = tx.send(collect(child));
            }
        })
        .map_err(RunError::Spawn)?;
    if Instant::now() >= deadline {
        return Err(RunError::Late);
    }
    let child = cmd.spawn().map_err(RunError::Spawn)?;
    let leader = child.id();
    if let Err(mpsc::SendError(mut child)) = give.send(child) {
        // The waiter is gone (it cannot be): the child is ours to end.
        kill_group(leader);
        let _ = child.wait();
        return Err(RunError::Wait(io::Error::other("its waiter went away")));
    }
    let left = deadline.saturating_duration_since(Instant::now());
    match rx.recv_timeout(left) {
        Ok(ran) => ran.map_err(RunError::Wait),
        Err(RecvTimeoutError::Timeout) => {
            // Reaped right at the deadline: ended, and its pid no longer its own.
            if let Ok(ran) = rx.try_recv() {
                return ran.map_err(RunError::Wait);
            }
            // Not reaped yet (the waiter has sent nothing), so the group is still the child's.
            kill_group(leader);
            let _ = rx.recv_timeout(AFTER_KILL);
            Err(RunError::Killed)
        }
        Err(RecvTimeoutError::Disconnected) => {
            Err(RunError::Wait(io::Error::other("its waiter went away")))
        }
    }
}

/// Reads what `child` writes (stderr on a thread of its own), then waits for it.
fn collect(mut child: Child) -> io::Result<Ran> {
    let stderr = child.stderr.take();
    let reader = std::thread::Builder::new()
        .name("gastown-control-child-err".into())
        .stack_size(STACK)
        .spawn(move || stderr.map(read_capped).unwrap_or_default());
    let reader = match reader {
        Ok(reader) => reader,
        Err(e) => {
            // Unread, it could stall on a full pipe: it ends now.
            kill_group(child.id());
            let _ = child.wait();
            return Err(e);
        }
    };
    let stdout = child.stdout.take().map(read_capped).unwrap_or_default();
    let status = child.wait();
    let stderr = reader.join().unwrap_or_default();
    Ok(Ran {
        status: status?,
        stdout,
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    })
}

/// The first [`MAX_OUTPUT`] bytes of `from`, the rest read into nothing (up to its end or an
/// error).
fn read_capped(mut from: impl Read) -> Vec<u8> {
    let mut bytes = Vec::new();
    let _ = from.by_ref().take(MAX_OUTPUT).read_to_end(&mut bytes);
    let _ = io::copy(&mut from, &mut io::sink());
    bytes
}

/// Which signal [`signal`] sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sig {
    Kill,
    Terminate,
}

/// `SIGKILL` (or `SIGTERM`) to the process `pid` (`one`), or to the group it leads.
pub(crate) fn signal(pid: u32, one: bool, sig: Sig) {
    #[cfg(unix)]
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        if pid > 1 {
            let target = if one { pid } else { -pid };
            let number = match sig {
                Sig::Kill => libc::SIGKILL,
                Sig::Terminate => libc::SIGTERM,
            };
            // SAFETY: kill(2) takes plain integers and touches no memory of ours.
            unsafe {
                libc::kill(target, number);
            }
        }
    }
    #[cfg(not(unix))]
    let _ = (pid, one, sig);
}

/// `SIGKILL` to every process of the group `leader` leads (none left is no error).
pub(crate) fn kill_group(leader: u32) {
    signal(leader, false, Sig::Kill);
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    fn sh(script: &str) -> Command {
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", script]);
        cmd
    }

    fn soon(ms: u64) -> Instant {
        Instant::now() + Duration::from_millis(ms)
    }

    #[test]
    fn a_child_that_ends_gives_its_status_and_output() {
        let ran = run(&mut sh("echo out; echo err >&2; exit 3"), soon(10_000)).unwrap();
        assert_eq!(ran.status.code(), Some(3));
        assert_eq!(ran.stdout, b"out\n");
        assert_eq!(ran.stderr, "err\n");
    }

    #[test]
    fn output_past_the_cap_is_read_and_dropped_without_a_stall() {
        // Twice the cap on each stream: a reader that stopped at the cap would stall it.
        let script = "head -c 2097152 /dev/zero; head -c 2097152 /dev/zero >&2";
        let ran = run(&mut sh(script), soon(20_000)).unwrap();
        assert!(ran.status.success());
        assert_eq!(ran.stdout.len() as u64, MAX_OUTPUT);
        assert_eq!(ran.stderr.len() as u64, MAX_OUTPUT);
    }

    #[test]
    fn past_the_deadline_nothing_starts() {
        let dir = std::env::temp_dir().join(format!("gastown-child-late-{}", std::process::id()));
        let mut cmd = sh("touch \"$0\"");
        cmd.arg(&dir);
        let err = run(&mut cmd, Instant::now()).unwrap_err();
        assert!(matches!(err, RunError::Late), "{err:?}");
        assert!(!dir.exists());
    }

    #[test]
    fn at_the_deadline_the_whole_group_is_killed() {
        let pid_file =
            std::env::temp_dir().join(format!("gastown-child-group-{}", std::process::id()));
        // A grandchild in the group, holding the pipes.
        let mut cmd = sh("sleep 30 & echo $! > \"$0\"; wait");
        cmd.arg(&pid_file);
        let began = Instant::now();
        let err = run(&mut cmd, soon(300)).unwrap_err();
        assert!(matches!(err, RunError::Killed), "{err:?}");
        assert!(
            began.elapsed() < Duration::from_secs(5),
            "{:?}",
            began.elapsed()
        );
        let pid: libc::pid_t = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let _ = std::fs::remove_file(&pid_file);
        let gone = (0..100).any(|_| {
            // SAFETY: kill(2) with signal 0 only asks whether the process exists.
            let alive = unsafe { libc::kill(pid, 0) } == 0
                && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .is_ok_and(|s| s.contains(") Z "));
            if alive {
                std::thread::sleep(Duration::from_millis(20));
            }
            !alive
        });
        assert!(gone, "the grandchild {pid} outlived the deadline");
    }

    #[test]
    fn a_program_that_cannot_start_is_a_spawn_error() {
        let mut cmd = Command::new("/nonexistent/gastown-child-test");
        let err = run(&mut cmd, soon(10_000)).unwrap_err();
        assert!(matches!(err, RunError::Spawn(_)), "{err:?}");
    }
}
