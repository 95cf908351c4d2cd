//! `GastownUserDO`: one per user id, holding the user's personal towns and their rigs, with the
//! watchdog alarm. All behaviour is in `OwnerCore`, shared with `GastownOrgDO`.

pub const BINDING: &str = "GASTOWN_USER";

super::owner::owner_do!(
    /// A user's personal towns and rigs.
    GastownUserDO
);
