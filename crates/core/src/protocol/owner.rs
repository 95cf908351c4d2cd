//! The protocol of the owner Durable Objects (`GastownUserDO` and `GastownOrgDO` speak the same
//! one): an owner's towns and rigs. Creating and deleting a town or a rig is one operation of
//! the owner's DO, which writes its own record, the town's DO and the D1 rig index in order and
//! undoes what it wrote when a later step fails: a handler makes one call.

use super::{Ack, Json};
use crate::ids::{RigId, TownId, UserId};
use crate::model::{Rig, Town, TownStatus};
use crate::page::Page;
use crate::rig_patch::RigChange;
use serde::{Deserialize, Serialize};

crate::do_protocol! {
    /// Operations of an owner DO.
    pub enum OwnerOp: OwnerOps {
        /// Records a new town (409 if the id is taken, or at the owner's town quota), gives the
        /// town's DO its identity, and arms the watchdog.
        CreateTown(CreateTown) -> Town => create_town;
        /// The owner's towns, oldest first.
        ListTowns(ListTowns) -> Json<Vec<Town>> => list_towns;
        /// 404 when this owner has no such town.
        GetTown(GetTown) -> Json<Town> => get_town;
        /// 404 for a town this owner lacks; else destroys the town's DO (its state, alarm and
        /// container), then forgets the town, its rigs and their index rows.
        DeleteTown(DeleteTown) -> RemovedTown => delete_town;
        /// 404 for a town this owner lacks, 409 for a rig name taken in that town or at the
        /// rig quota; else records the rig, registers it with the town's DO and indexes it.
        CreateRig(CreateRig) -> Rig => create_rig;
        /// 404 for a rig this owner lacks (or not in `town_id` when given), 409 for a name
        /// taken in its town or a source changed since the change was decided; else changes
        /// the record, then the town's DO, and answers the rig as it now is. A failed town
        /// step takes the record back.
        PatchRig(PatchRig) -> Rig => patch_rig;
        /// A town's rigs, oldest first; 404 for a town this owner lacks.
        ListRigs(ListRigs) -> Json<Vec<Rig>> => list_rigs;
        /// 404 when this owner has no such rig.
        GetRig(GetRig) -> Json<Rig> => get_rig;
        /// 404 for a rig this owner lacks; else removes it from the town's DO (its work fails),
        /// forgets it and its index row; answers it as it was.
        DeleteRig(DeleteRig) -> Rig => delete_rig;
        /// After `user_id`'s account was deleted: the town, if it acts as that user, stops and
        /// acts as no one (`creator_deleted`); answers the town as it now is. 404 for a town
        /// this owner lacks.
        ForgetTownUser(ForgetTownUser) -> Town => forget_town_user;
        /// An org owner takes over a `creator_deleted` town: it acts as `user_id` and is
        /// `stopped`. 404 for a town this owner lacks, 409 for one whose creator is not deleted.
        ClaimTown(ClaimTown) -> Town => claim_town;
        /// Records a town's status as its TownDO now has it (after a stop or start); 404 for
        /// a town this owner lacks.
        SetTownStatus(SetTownStatus) -> Ack => set_town_status;
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateTown {
    pub town: Town,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListTowns {
    #[serde(default)]
    pub page: Page,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetTown {
    pub town_id: TownId,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteTown {
    pub town_id: TownId,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateRig {
    pub rig: Rig,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PatchRig {
    pub rig_id: RigId,
    /// The town the route names, when it names one (`/api/towns/:townId/rigs/:rigId`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub town_id: Option<TownId>,
    pub change: RigChange,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListRigs {
    pub town_id: TownId,
    #[serde(default)]
    pub page: Page,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetRig {
    pub rig_id: RigId,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteRig {
    pub rig_id: RigId,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForgetTownUser {
    pub town_id: TownId,
    pub user_id: UserId,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimTown {
    pub town_id: TownId,
    pub user_id: UserId,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetTownStatus {
    pub town_id: TownId,
    pub status: TownStatus,
}

/// What removing a town took with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemovedTown {
    pub town: Town,
    pub rig_ids: Vec<RigId>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::fixtures::{rig, town};
    use crate::protocol::pin::{all, pinned};

    #[test]
    fn every_operation_is_pinned() {
        let t = town("t1", "u1");
        let r = rig("r1", "t1");
        let town_json = serde_json::to_string(&t).unwrap();
        let rig_json = serde_json::to_string(&r).unwrap();
        let cases: Vec<(OwnerOp, String)> = vec![
            (
                SetTownStatus {
                    town_id: t.id.clone(),
                    status: TownStatus::Stopped,
                }
                .into(),
                r#"{"op":"set_town_status","town_id":"t1","status":"stopped"}"#.into(),
            ),
            (
                ForgetTownUser {
                    town_id: t.id.clone(),
                    user_id: UserId::parse("u1").unwrap(),
                }
                .into(),
                r#"{"op":"forget_town_user","town_id":"t1","user_id":"u1"}"#.into(),
            ),
            (
                ClaimTown {
                    town_id: t.id.clone(),
                    user_id: UserId::parse("u2").unwrap(),
                }
                .into(),
                r#"{"op":"claim_town","town_id":"t1","user_id":"u2"}"#.into(),
            ),
            (
                CreateTown { town: t.clone() }.into(),
                format!(r#"{{"op":"create_town","town":{town_json}}}"#),
            ),
            (
                ListTowns::default().into(),
                r#"{"op":"list_towns","page":{"limit":500,"after":null}}"#.into(),
            ),
            (
                GetTown {
                    town_id: t.id.clone(),
                }
                .into(),
                r#"{"op":"get_town","town_id":"t1"}"#.into(),
            ),
            (
                DeleteTown {
                    town_id: t.id.clone(),
                }
                .into(),
                r#"{"op":"delete_town","town_id":"t1"}"#.into(),
            ),
            (
                CreateRig { rig: r.clone() }.into(),
                format!(r#"{{"op":"create_rig","rig":{rig_json}}}"#),
            ),
            (
                ListRigs {
                    town_id: t.id.clone(),
                    page: Page {
                        limit: 50,
                        after: Some("r0".into()),
                    },
                }
                .into(),
                r#"{"op":"list_rigs","town_id":"t1","page":{"limit":50,"after":"r0"}}"#.into(),
            ),
            (
                GetRig {
                    rig_id: r.id.clone(),
                }
                .into(),
                r#"{"op":"get_rig","rig_id":"r1"}"#.into(),
            ),
            (
                DeleteRig {
                    rig_id: r.id.clone(),
                }
                .into(),
                r#"{"op":"delete_rig","rig_id":"r1"}"#.into(),
            ),
            (
                PatchRig {
                    rig_id: r.id.clone(),
                    town_id: Some(t.id.clone()),
                    change: RigChange {
                        default_branch: Some("dev".into()),
                        ..RigChange::default()
                    },
                }
                .into(),
                r#"{"op":"patch_rig","rig_id":"r1","town_id":"t1","change":{"default_branch":"dev"}}"#
                    .into(),
            ),
        ];
        all(&OwnerOp::ops(), &cases);
        // A request written before `page` existed still reads.
        let old: OwnerOp = serde_json::from_str(r#"{"op":"list_towns"}"#).unwrap();
        assert_eq!(old, ListTowns::default().into());
    }

    #[test]
    fn replies_are_pinned() {
        let removed = RemovedTown {
            town: town("t1", "u1"),
            rig_ids: vec![RigId::parse("r1").unwrap()],
        };
        let json = serde_json::to_string(&removed).unwrap();
        assert!(json.ends_with(r#","rig_ids":["r1"]}"#), "{json}");
        pinned(&removed, &json);
    }
}
