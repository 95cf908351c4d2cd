//! The published API description, `GET /openapi.json`. It is written by hand (it carries the
//! bodies and responses the route table does not), so a test holds it to the route table: every
//! route is documented with its principal, and every documented operation is a route.

/// The OpenAPI 3.1 document, served as is.
pub const DOCUMENT: &str = include_str!("../openapi.json");

#[cfg(test)]
mod tests {
    use super::DOCUMENT;
    use crate::routes::{Method, Principal, ROUTES};
    use serde_json::Value;
    use std::collections::BTreeSet;

    fn principal_name(p: Principal) -> &'static str {
        match p {
            Principal::Public => "public",
            Principal::User => "user",
            Principal::Container => "container",
            Principal::Internal => "internal",
            Principal::StreamTicket => "stream_ticket",
        }
    }

    fn security_scheme(p: Principal) -> Option<&'static str> {
        match p {
            Principal::Public => None,
            Principal::User => Some("userToken"),
            Principal::Container => Some("containerToken"),
            Principal::Internal => Some("internalKey"),
            Principal::StreamTicket => Some("streamTicket"),
        }
    }

    /// `/api/users/:userId/towns` → `/api/users/{userId}/towns`
    fn openapi_path(path: &str) -> String {
        path.split('/')
            .map(|seg| match seg.strip_prefix(':') {
                Some(name) => format!("{{{name}}}"),
                None => seg.to_owned(),
            })
            .collect::<Vec<_>>()
            .join("/")
    }

    #[test]
    fn document_and_router_agree() {
        let doc: Value = serde_json::from_str(DOCUMENT).expect("openapi.json is JSON");
        let paths = doc["paths"].as_object().expect("paths");
        let mut documented = BTreeSet::new();
        for (path, ops) in paths {
            for (method, op) in ops.as_object().expect("operations") {
                documented.insert((
                    method.to_uppercase(),
                    path.clone(),
                    op["x-principal"].as_str().unwrap_or("?").to_owned(),
                ));
            }
        }
        let routed: BTreeSet<_> = ROUTES
            .iter()
            .map(|r| {
                (
                    r.method.as_str().to_owned(),
                    openapi_path(r.path),
                    principal_name(r.principal).to_owned(),
                )
            })
            .collect();
        let missing_from_doc: Vec<_> = routed.difference(&documented).collect();
        let missing_from_router: Vec<_> = documented.difference(&routed).collect();
        assert!(
            missing_from_doc.is_empty(),
            "routes not documented (or with another principal): {missing_from_doc:?}"
        );
        assert!(
            missing_from_router.is_empty(),
            "documented operations the router lacks: {missing_from_router:?}"
        );
    }

    #[test]
    fn security_matches_principal() {
        let doc: Value = serde_json::from_str(DOCUMENT).unwrap();
        for r in ROUTES {
            let method = match r.method {
                Method::Get => "get",
                Method::Post => "post",
                Method::Patch => "patch",
                Method::Delete => "delete",
                Method::Other => unreachable!("no route uses another method"),
            };
            let op = &doc["paths"][openapi_path(r.path)][method];
            let security = op["security"].as_array().expect("security listed");
            match security_scheme(r.principal) {
                None => assert!(security.is_empty(), "{} is public", r.path),
                Some(scheme) => {
                    assert_eq!(security.len(), 1, "{}: exactly one principal", r.path);
                    assert!(security[0].get(scheme).is_some(), "{}: {scheme}", r.path);
                    // A ticket names its user, town and scope: it is valid (401 otherwise)
                    // or it was issued to someone the town admitted, so no 403.
                    let statuses: &[&str] = match r.principal {
                        Principal::StreamTicket => &["401"],
                        _ => &["401", "403"],
                    };
                    for status in statuses {
                        assert!(
                            op["responses"].get(status).is_some(),
                            "{} documents {status}",
                            r.path
                        );
                    }
                }
            }
        }
    }
}
