//! Decisions the Durable Objects act on, as plain functions over plain values: what a town's
//! alarm does on each tick, and when a container token is due. The DOs gather the inputs from
//! storage, call these, and apply the effects in the order given.

/// What a town's DO knows when its alarm fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TickInput {
    /// The town is initialised and not destroyed.
    pub town_exists: bool,
    /// The town's container has been started and accepted a token.
    pub container_started: bool,
    /// When the container last accepted a pushed token (ms since the epoch).
    pub token_accepted_at_ms: Option<u64>,
    pub now_ms: u64,
    /// Least time between two tokens pushed by the alarm.
    pub token_refresh_ms: u64,
}

/// One thing a tick does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TickEffect {
    /// The town is gone: delete the alarm (which the DO re-armed before anything else, so that
    /// no failure can end the loop of a live town) and do nothing else.
    DeleteAlarm,
    /// Count the run and record when it happened.
    RecordRun,
    /// Mint a container token and push it; the throttle moves only if the container accepts.
    RefreshContainerToken,
}

/// The effects of one tick, in the order to apply them.
pub fn tick(input: &TickInput) -> Vec<TickEffect> {
    if !input.town_exists {
        return vec![TickEffect::DeleteAlarm];
    }
    let mut effects = vec![TickEffect::RecordRun];
    if input.container_started
        && token_refresh_due(
            input.token_accepted_at_ms,
            input.now_ms,
            input.token_refresh_ms,
        )
    {
        effects.push(TickEffect::RefreshContainerToken);
    }
    effects
}

/// The container token is refreshed at most once per `throttle_ms`, counted from the last time
/// the container *accepted* one; a town that never had one accepted is due at once.
pub fn token_refresh_due(last_accepted_ms: Option<u64>, now_ms: u64, throttle_ms: u64) -> bool {
    last_accepted_ms.is_none_or(|last| now_ms.saturating_sub(last) >= throttle_ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use TickEffect::*;

    fn input() -> TickInput {
        TickInput {
            town_exists: true,
            container_started: true,
            token_accepted_at_ms: Some(1_000),
            now_ms: 1_000 + 3_600_000,
            token_refresh_ms: 3_600_000,
        }
    }

    #[test]
    fn refresh_throttle() {
        assert!(token_refresh_due(None, 0, 3_600_000));
        assert!(!token_refresh_due(
            Some(1_000),
            1_000 + 3_599_999,
            3_600_000
        ));
        assert!(token_refresh_due(Some(1_000), 1_000 + 3_600_000, 3_600_000));
        assert!(
            !token_refresh_due(Some(5_000), 1_000, 3_600_000),
            "a clock that went back does not refresh early"
        );
    }

    #[test]
    fn ticks() {
        assert_eq!(tick(&input()), [RecordRun, RefreshContainerToken]);
        let gone = TickInput {
            town_exists: false,
            ..input()
        };
        assert_eq!(tick(&gone), [DeleteAlarm]);
        let stopped = TickInput {
            container_started: false,
            ..input()
        };
        assert_eq!(tick(&stopped), [RecordRun]);
        let fresh = TickInput {
            now_ms: 2_000,
            ..input()
        };
        assert_eq!(tick(&fresh), [RecordRun]);
        let never = TickInput {
            token_accepted_at_ms: None,
            ..input()
        };
        assert_eq!(tick(&never), [RecordRun, RefreshContainerToken]);
    }
}
