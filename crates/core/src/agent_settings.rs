//! Which model each agent runs with, and the settings files that carry it to new agent sessions.
//!
//! # Precedence
//!
//! For a role in a rig, the first of these that is set wins:
//!
//! 1. the rig override's model for that role (`rig_overrides.<rig>.role_models.<role>`);
//! 2. the rig override's default (`rig_overrides.<rig>.default_model`);
//! 3. the town's model for that role (`role_models.<role>`);
//! 4. the town's default (`default_model`).
//!
//! Outside any rig (the town-level file) only 3 and 4 apply. If none is set the role has no
//! model and the agent uses its own default; the role is then absent from the files, so a
//! cleared setting disappears instead of lingering. `small_model` is town-wide.
//!
//! # Files
//!
//! The control server writes, under the town's work directory, `settings/config.json` (the
//! town) and `<rig id>/settings/config.json` (one per rig of the town), each an
//! [`AgentSettings`]: `{"role_agents": {"mayor": {"model": "…"}, …}, "small_model": "…"}`.
//! They are rewritten on every config change and read by each new agent session.

use crate::town_config::{RoleModels, TownConfig};
// Defined in `vocab` so that `model` need not import this module; the old path stays.
pub use crate::vocab::Role;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The model `role` runs with in `rig` (or town-wide for `None`), per the precedence above.
#[must_use]
pub fn effective_model<'a>(
    config: &'a TownConfig,
    role: Role,
    rig: Option<&str>,
) -> Option<&'a str> {
    let pick = |models: &'a RoleModels| match role {
        Role::Mayor => models.mayor.as_deref(),
        Role::Polecat => models.polecat.as_deref(),
        Role::Refinery => models.refinery.as_deref(),
    };
    let rig_override = rig.and_then(|id| config.rig_overrides.get(id));
    rig_override
        .and_then(|o| pick(&o.role_models).or(o.default_model.as_deref()))
        .or_else(|| pick(&config.role_models))
        .or(config.default_model.as_deref())
}

/// One role's entry in a settings file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleAgent {
    pub model: String,
}

/// The content of one `settings/config.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentSettings {
    /// Only roles that have a model.
    pub role_agents: BTreeMap<Role, RoleAgent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub small_model: Option<String>,
}

/// Every settings file of a town: the town's, and one per rig keyed by rig id.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettingsFiles {
    pub town: AgentSettings,
    pub rigs: BTreeMap<String, AgentSettings>,
}

fn settings_for(config: &TownConfig, rig: Option<&str>) -> AgentSettings {
    AgentSettings {
        role_agents: Role::ALL
            .into_iter()
            .filter_map(|role| {
                effective_model(config, role, rig).map(|m| {
                    (
                        role,
                        RoleAgent {
                            model: m.to_owned(),
                        },
                    )
                })
            })
            .collect(),
        small_model: config.small_model.clone(),
    }
}

/// The settings files of a town with `config` and the rigs `rig_ids`.
#[must_use]
pub fn settings_files<'r>(
    config: &TownConfig,
    rig_ids: impl IntoIterator<Item = &'r str>,
) -> SettingsFiles {
    SettingsFiles {
        town: settings_for(config, None),
        rigs: rig_ids
            .into_iter()
            .map(|id| (id.to_owned(), settings_for(config, Some(id))))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::town_config::RigOverride;

    fn models(mayor: Option<&str>, polecat: Option<&str>, refinery: Option<&str>) -> RoleModels {
        RoleModels {
            mayor: mayor.map(Into::into),
            polecat: polecat.map(Into::into),
            refinery: refinery.map(Into::into),
        }
    }

    /// Each row: town default, town polecat model, rig default, rig polecat model → the
    /// polecat's model in that rig.
    #[test]
    fn precedence_table() {
        type Row = (
            Option<&'static str>,
            Option<&'static str>,
            Option<&'static str>,
            Option<&'static str>,
            Option<&'static str>,
        );
        let rows: &[Row] = &[
            (None, None, None, None, None),
            (Some("td"), None, None, None, Some("td")),
            (Some("td"), Some("tp"), None, None, Some("tp")),
            (Some("td"), Some("tp"), Some("rd"), None, Some("rd")),
            (Some("td"), Some("tp"), Some("rd"), Some("rp"), Some("rp")),
            (None, None, None, Some("rp"), Some("rp")),
            (None, None, Some("rd"), None, Some("rd")),
            (Some("td"), None, None, Some("rp"), Some("rp")),
            (None, Some("tp"), Some("rd"), None, Some("rd")),
        ];
        for &(town_default, town_polecat, rig_default, rig_polecat, want) in rows {
            let mut config = TownConfig {
                default_model: town_default.map(Into::into),
                role_models: models(None, town_polecat, None),
                ..TownConfig::default()
            };
            config.rig_overrides.insert(
                "r1".into(),
                RigOverride {
                    default_model: rig_default.map(Into::into),
                    role_models: models(None, rig_polecat, None),
                    ..RigOverride::default()
                },
            );
            let row = (town_default, town_polecat, rig_default, rig_polecat);
            assert_eq!(
                effective_model(&config, Role::Polecat, Some("r1")),
                want,
                "{row:?}"
            );
            // Another rig, and the town level, never see r1's override.
            let town_level = town_polecat.or(town_default);
            assert_eq!(
                effective_model(&config, Role::Polecat, Some("r2")),
                town_level,
                "{row:?}"
            );
            assert_eq!(
                effective_model(&config, Role::Polecat, None),
                town_level,
                "{row:?}"
            );
        }
    }

    #[test]
    fn roles_do_not_borrow_each_others_models() {
        let mut config = TownConfig {
            role_models: models(Some("m"), None, None),
            ..TownConfig::default()
        };
        config.rig_overrides.insert(
            "r1".into(),
            RigOverride {
                role_models: models(None, None, Some("rr")),
                ..RigOverride::default()
            },
        );
        assert_eq!(effective_model(&config, Role::Mayor, Some("r1")), Some("m"));
        assert_eq!(effective_model(&config, Role::Polecat, Some("r1")), None);
        assert_eq!(
            effective_model(&config, Role::Refinery, Some("r1")),
            Some("rr")
        );
        assert_eq!(effective_model(&config, Role::Refinery, None), None);
    }

    #[test]
    fn files_hold_only_set_roles_and_one_per_rig() {
        let mut config = TownConfig {
            default_model: Some("d".into()),
            role_models: models(None, Some("p"), None),
            small_model: Some("s".into()),
            ..TownConfig::default()
        };
        config.rig_overrides.insert(
            "r1".into(),
            RigOverride {
                role_models: models(Some("rm"), None, None),
                ..RigOverride::default()
            },
        );
        let files = settings_files(&config, ["r1", "r2"]);
        assert_eq!(
            serde_json::to_value(&files).unwrap(),
            serde_json::json!({
                "town": {"role_agents": {"mayor": {"model": "d"}, "polecat": {"model": "p"}, "refinery": {"model": "d"}}, "small_model": "s"},
                "rigs": {
                    "r1": {"role_agents": {"mayor": {"model": "rm"}, "polecat": {"model": "p"}, "refinery": {"model": "d"}}, "small_model": "s"},
                    "r2": {"role_agents": {"mayor": {"model": "d"}, "polecat": {"model": "p"}, "refinery": {"model": "d"}}, "small_model": "s"}
                }
            })
        );
        // Cleared: nothing left, and the keys are gone rather than null.
        let empty = settings_files(&TownConfig::default(), ["r1"]);
        assert_eq!(
            serde_json::to_value(&empty).unwrap(),
            serde_json::json!({"town": {"role_agents": {}}, "rigs": {"r1": {"role_agents": {}}}})
        );
    }
}
