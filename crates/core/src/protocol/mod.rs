//! The typed boundary between the worker and its Durable Objects.
//!
//! Each Durable Object speaks one protocol, declared once with [`do_protocol!`]: every operation
//! names its request struct, its reply type and the handler method that serves it. From that one
//! declaration come
//! - the wire enum (`{"op": "<method>", ...fields}`), shared by caller and callee;
//! - an [`Op`] impl per request, so `stub.call(req)` returns `Result<Reply, ApiError>` with the
//!   reply type chosen by the compiler, and a request cannot be sent to the wrong kind of DO;
//! - the handler trait the DO implements, one `async fn` per operation;
//! - [`Dispatch`], which runs a decoded request on a handler and encodes its reply.
//!
//! DOs trust these requests: the router has already checked the caller's credential and claims.

use crate::error::ApiError;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::future::Future;
use std::marker::PhantomData;

pub mod container;
pub mod owner;
pub mod town;

/// One operation of one Durable Object's protocol.
pub trait Op: Sized {
    /// The wire enum of the DO this operation belongs to.
    type Protocol: Serialize + From<Self>;
    /// What the DO answers.
    type Reply: Serialize + DeserializeOwned;
}

/// A decoded request that can run on handler `H`.
pub trait Dispatch<H>: DeserializeOwned {
    /// Runs the operation and encodes its reply as JSON text.
    ///
    /// # Errors
    /// Whatever the handler answers.
    fn dispatch(self, handler: &H) -> impl Future<Output = Result<String, ApiError>>;
}

/// The JSON text of a reply.
///
/// # Errors
/// Internal, if the reply cannot be encoded (never expected for these types).
pub fn encode_reply<T: Serialize>(reply: &T) -> Result<String, ApiError> {
    serde_json::to_string(reply).map_err(ApiError::internal)
}

/// JSON text known to encode a `T`: a reply the worker passes through to its client without
/// decoding it into a `T` and encoding it again. The type still binds the operation to its
/// reply; [`Json::parse`] gives the `T` where a caller needs its fields.
pub struct Json<T> {
    raw: Box<serde_json::value::RawValue>,
    of: PhantomData<T>,
}

impl<T> Json<T> {
    /// Text a Durable Object built itself (SQLite's `json_object`, say), trusted to encode a
    /// `T`: tests pin each such query's shape to `T`'s.
    ///
    /// # Errors
    /// Internal, when the text is not JSON at all.
    pub fn from_text(text: String) -> Result<Self, ApiError> {
        serde_json::value::RawValue::from_string(text)
            .map(|raw| Json {
                raw,
                of: PhantomData,
            })
            .map_err(ApiError::internal)
    }

    pub fn as_str(&self) -> &str {
        self.raw.get()
    }

    /// The text, for a response body.
    pub fn into_string(self) -> String {
        String::from(Box::<str>::from(self.raw))
    }
}

impl<T: Serialize> Json<T> {
    /// # Errors
    /// Internal, if `value` cannot be encoded (never expected for these types).
    pub fn encode(value: &T) -> Result<Self, ApiError> {
        Self::from_text(serde_json::to_string(value).map_err(ApiError::internal)?)
    }
}

impl<T: DeserializeOwned> Json<T> {
    /// # Errors
    /// Internal: a DO answered text that is not a `T`.
    pub fn parse(&self) -> Result<T, ApiError> {
        serde_json::from_str(self.as_str()).map_err(|e| {
            ApiError::internal(format!(
                "durable object reply: {}",
                crate::body::json_error_summary(&e)
            ))
        })
    }
}

impl<T> Serialize for Json<T> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.raw.serialize(serializer)
    }
}

impl<'de, T> serde::Deserialize<'de> for Json<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(Json {
            raw: Box::<serde_json::value::RawValue>::deserialize(deserializer)?,
            of: PhantomData,
        })
    }
}

impl<T> std::fmt::Debug for Json<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The empty reply of operations that only act.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, Default)]
pub struct Ack {
    pub ok: bool,
}

impl Ack {
    pub const OK: Ack = Ack { ok: true };
}

/// Declares a Durable Object's protocol (see the module docs).
///
/// ```ignore
/// do_protocol! {
///     /// Operations of a `TownDO`.
///     pub enum TownOp: TownOps {
///         /// Doc of the operation.
///         Get(Get) -> Town => get;
///     }
/// }
/// ```
/// The serde tag of each variant is its name in snake_case, which by convention is also the
/// handler method's name; a test in each protocol module pins both.
#[macro_export]
macro_rules! do_protocol {
    (
        $(#[$emeta:meta])*
        pub enum $Enum:ident: $Handler:ident {
            $(
                $(#[$vmeta:meta])*
                $Variant:ident($Req:ty) -> $Reply:ty => $method:ident;
            )*
        }
    ) => {
        $(#[$emeta])*
        #[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
        #[serde(tag = "op", rename_all = "snake_case")]
        // Decoded once per call and consumed at once: a large variant costs nothing.
        #[allow(clippy::large_enum_variant)]
        pub enum $Enum {
            $( $(#[$vmeta])* $Variant($Req), )*
        }

        impl $Enum {
            /// Every operation's tag, in declaration order (those compiled in).
            // Statements, not a `vec![]`, so an operation's `#[cfg]` can leave its tag out.
            #[allow(unused_doc_comments, clippy::vec_init_then_push)]
            #[must_use]
            pub fn ops() -> Vec<&'static str> {
                let mut ops = Vec::new();
                $( $(#[$vmeta])* ops.push(stringify!($method)); )*
                ops
            }
        }

        $(
            $(#[$vmeta])*
            impl $crate::protocol::Op for $Req {
                type Protocol = $Enum;
                type Reply = $Reply;
            }

            $(#[$vmeta])*
            impl From<$Req> for $Enum {
                fn from(req: $Req) -> Self {
                    $Enum::$Variant(req)
                }
            }
        )*

        /// What the Durable Object implements: one method per operation, each answering the
        /// operation's reply type.
        #[allow(async_fn_in_trait)]
        pub trait $Handler {
            /// Runs before every operation (schema migrations, for example).
            ///
            /// # Errors
            /// Internal, when the DO cannot serve at all.
            fn prepare(&self) -> Result<(), $crate::ApiError> {
                Ok(())
            }
            $(
                $(#[$vmeta])*
                async fn $method(&self, req: $Req) -> Result<$Reply, $crate::ApiError>;
            )*
        }

        impl<H: $Handler> $crate::protocol::Dispatch<H> for $Enum {
            #[allow(unused_doc_comments)]
            async fn dispatch(self, handler: &H) -> Result<String, $crate::ApiError> {
                handler.prepare()?;
                match self {
                    $( $(#[$vmeta])* $Enum::$Variant(req) => {
                        $crate::protocol::encode_reply(&handler.$method(req).await?)
                    } )*
                }
            }
        }
    };
}

#[cfg(test)]
pub(crate) mod pin {
    //! Helpers for the per-protocol tests that pin every operation's JSON.
    use serde::de::DeserializeOwned;
    use serde::Serialize;
    use std::fmt::Debug;

    /// `value` encodes to exactly `json` and decodes back to itself.
    pub fn pinned<T: Serialize + DeserializeOwned + PartialEq + Debug>(value: &T, json: &str) {
        assert_eq!(serde_json::to_string(value).unwrap(), json);
        assert_eq!(&serde_json::from_str::<T>(json).unwrap(), value, "{json}");
    }

    /// The `op` tag of an encoded request.
    fn tag<T: Serialize>(value: &T) -> String {
        serde_json::to_value(value).unwrap()["op"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// Each case's JSON is pinned, and the cases cover every tag in `ops` exactly once.
    pub fn all<T: Serialize + DeserializeOwned + PartialEq + Debug>(
        ops: &[&str],
        cases: &[(T, impl AsRef<str>)],
    ) {
        for (op, json) in cases {
            pinned(op, json.as_ref());
        }
        covers(
            ops,
            &cases.iter().map(|(op, _)| tag(op)).collect::<Vec<_>>(),
        );
    }

    /// Every tag in `ops` was pinned, and nothing else.
    fn covers(ops: &[&str], pinned: &[String]) {
        let mut a: Vec<&str> = ops.to_vec();
        let mut b: Vec<&str> = pinned.iter().map(String::as_str).collect();
        a.sort_unstable();
        b.sort_unstable();
        assert_eq!(a, b, "every operation has exactly one pinned request");
    }
}
