//! Every Durable Object schema, in one place. Each DO applies its list in order and records the
//! versions it applied; an applied migration is never edited, only followed by a new one.
//! (D1's schema lives in `migrations/d1/` and is applied by `wrangler d1 migrations apply`.)

/// One append-only schema step.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub version: u32,
    pub name: &'static str,
    pub sql: &'static str,
}

/// `GastownUserDO` and `GastownOrgDO` hold the same kind of data: an owner's towns and rigs.
pub const OWNER_DO: &[Migration] = &[Migration {
    version: 1,
    name: "init",
    sql: include_str!("../../../migrations/owner_do/0001_init.sql"),
}];

pub const TOWN_DO: &[Migration] = &[
    Migration {
        version: 1,
        name: "init",
        sql: include_str!("../../../migrations/town_do/0001_init.sql"),
    },
    Migration {
        version: 2,
        name: "config",
        sql: include_str!("../../../migrations/town_do/0002_config.sql"),
    },
    Migration {
        version: 3,
        name: "agents",
        sql: include_str!("../../../migrations/town_do/0003_agents.sql"),
    },
    Migration {
        version: 4,
        name: "agent_registry",
        sql: include_str!("../../../migrations/town_do/0004_agent_registry.sql"),
    },
    Migration {
        version: 5,
        name: "beads",
        sql: include_str!("../../../migrations/town_do/0005_beads.sql"),
    },
    Migration {
        version: 6,
        name: "git_identity",
        sql: include_str!("../../../migrations/town_do/0006_git_identity.sql"),
    },
    Migration {
        version: 7,
        name: "convoys",
        sql: include_str!("../../../migrations/town_do/0007_convoys.sql"),
    },
    Migration {
        version: 8,
        name: "mayor",
        sql: include_str!("../../../migrations/town_do/0008_mayor.sql"),
    },
    Migration {
        version: 9,
        name: "agent events",
        sql: include_str!("../../../migrations/town_do/0009_agent_events.sql"),
    },
    Migration {
        version: 10,
        name: "streams",
        sql: include_str!("../../../migrations/town_do/0010_streams.sql"),
    },
    Migration {
        version: 11,
        name: "refinery",
        sql: include_str!("../../../migrations/town_do/0011_refinery.sql"),
    },
];

pub const CONTAINER_DO: &[Migration] = &[
    Migration {
        version: 1,
        name: "init",
        sql: include_str!("../../../migrations/container_do/0001_init.sql"),
    },
    Migration {
        version: 2,
        name: "state_row",
        sql: include_str!("../../../migrations/container_do/0002_state_row.sql"),
    },
    Migration {
        version: 3,
        name: "settings",
        sql: include_str!("../../../migrations/container_do/0003_settings.sql"),
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_contiguous_from_one() {
        for list in [OWNER_DO, TOWN_DO, CONTAINER_DO] {
            for (i, m) in list.iter().enumerate() {
                assert_eq!(m.version as usize, i + 1, "{}", m.name);
                assert!(
                    ["CREATE", "INSERT", "ALTER TABLE"]
                        .iter()
                        .any(|statement| m.sql.contains(statement)),
                    "{}",
                    m.name
                );
            }
        }
    }
}
