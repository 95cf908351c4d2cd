//! `GastownOrgDO`: one per organisation id, holding the org-owned towns (each with its creator)
//! and their rigs, with the watchdog alarm. All behaviour is in `OwnerCore`, shared with
//! `GastownUserDO`.

pub const BINDING: &str = "GASTOWN_ORG";

super::owner::owner_do!(
    /// An organisation's towns and rigs.
    GastownOrgDO
);
