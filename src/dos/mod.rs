//! The Durable Objects and the one typed way to call them.
//!
//! - `owner/`: what `GastownUserDO` (`user.rs`) and `GastownOrgDO` (`org.rs`) share.
//! - `town/`: `TownDO`, a town's identity, config, rigs, agents and main loop.
//! - `container/`: `TownContainerDO` and the backend that reaches the container.
//!
//! A caller holds a [`DoStub<P>`] for protocol `P` and calls `stub.call(op)`: the reply type is
//! the operation's (`gastown_core::protocol::Op::Reply`), and an operation of another protocol
//! does not compile.
//!
//! The call travels as one JS RPC call, `call(body)`: the request's JSON in, the reply out as
//! JSON text behind a three-digit status (`200{...}`, `404{"error":...}`). RPC reaches a DO
//! without building a `Request`, headers or a `Response` on either side; `worker/entry.mjs`
//! makes the DO classes RPC targets. Every DO answers it with [`answer`], declared once per
//! class by [`rpc_entry!`]. A DO's `fetch` answers 404: nothing reaches a DO over HTTP.

pub mod container;
pub mod org;
pub mod owner;
pub mod town;
pub mod user;

use crate::http::error_response;
use gastown_core::body::json_error_summary;
use gastown_core::error::ApiError;
use gastown_core::protocol::{Dispatch, Op};
use std::marker::PhantomData;
use worker::js_sys::futures::JsFuture;
use worker::js_sys::Promise;
use worker::wasm_bindgen::prelude::wasm_bindgen;
use worker::wasm_bindgen::{JsCast, JsValue};
use worker::{console_error, Env, Response};

#[wasm_bindgen]
extern "C" {
    /// A DO stub seen as an RPC target (`worker/entry.mjs`).
    #[wasm_bindgen(extends = worker::js_sys::Object)]
    type RpcStub;

    #[wasm_bindgen(method, catch, js_name = call)]
    fn rpc_call(this: &RpcStub, body: String) -> Result<Promise, JsValue>;
}

/// A stub of a Durable Object that speaks protocol `P`.
pub struct DoStub<P> {
    stub: RpcStub,
    protocol: PhantomData<P>,
}

impl<P> DoStub<P> {
    /// The DO named `name` in namespace `binding`.
    ///
    /// # Errors
    /// Internal, when the binding is missing.
    pub fn get(env: &Env, binding: &str, name: &str) -> Result<Self, ApiError> {
        let stub = env
            .durable_object(binding)
            .and_then(|ns| ns.get_by_name(name))
            .map_err(ApiError::internal)?;
        Ok(DoStub {
            stub: stub.into_rpc(),
            protocol: PhantomData,
        })
    }

    /// Runs one operation on the DO and reads its typed reply.
    ///
    /// # Errors
    /// The DO's own error (404, 409, ...) as [`ApiError::from_wire`] rebuilds it; anything else
    /// is internal.
    pub async fn call<O>(&self, op: O) -> Result<O::Reply, ApiError>
    where
        O: Op<Protocol = P>,
        P: serde::Serialize + From<O>,
    {
        let body = serde_json::to_string(&P::from(op)).map_err(ApiError::internal)?;
        let promise = self.stub.rpc_call(body).map_err(js_error)?;
        let answer = JsFuture::from(promise).await.map_err(js_error)?;
        let text = answer
            .as_string()
            .ok_or_else(|| ApiError::internal("durable object answered a non-string"))?;
        let (status, body) = split_status(&text)
            .ok_or_else(|| ApiError::internal("durable object answered without a status"))?;
        if status == 200 {
            serde_json::from_str(body).map_err(|e| {
                ApiError::internal(format!("durable object answer: {}", json_error_summary(&e)))
            })
        } else {
            Err(ApiError::from_wire(status, body))
        }
    }
}

fn js_error(e: JsValue) -> ApiError {
    let text = e
        .dyn_ref::<worker::js_sys::Error>()
        .map_or_else(|| format!("{e:?}"), |e| String::from(e.message()));
    ApiError::internal(format!("durable object call: {text}"))
}

/// `"404{...}"` → `(404, "{...}")`.
fn split_status(text: &str) -> Option<(u16, &str)> {
    let status = text.get(..3)?.parse().ok()?;
    Some((status, &text[3..]))
}

/// A DO's answer to one RPC call: decode the request, run it on `handler`, and encode the reply
/// (`200` + JSON) or the error (its status + its JSON body; internal details only to the log).
pub async fn answer<P: Dispatch<H>, H>(handler: &H, body: String) -> String {
    let result = match serde_json::from_str::<P>(&body) {
        Ok(request) => request.dispatch(handler).await,
        // Only the worker calls a DO, so an undecodable request is our bug, not a client's.
        Err(e) => Err(ApiError::internal(format!(
            "bad durable object request: {}",
            json_error_summary(&e)
        ))),
    };
    match result {
        Ok(reply) => {
            let mut out = String::with_capacity(reply.len() + 3);
            out.push_str("200");
            out.push_str(&reply);
            out
        }
        Err(err) => {
            if let ApiError::Internal(detail) = &err {
                console_error!("internal error: {detail}");
            }
            let body = serde_json::to_string(&err.body()).unwrap_or_default();
            format!("{}{body}", err.status())
        }
    }
}

/// Declares a DO class's RPC method `call(body)`, answered by [`answer`] with protocol `$P` on
/// the class itself or on one of its fields; optionally with code run on the class just before
/// and just after each call (the town's streams).
macro_rules! rpc_entry {
    ($Class:ident, $P:ty) => {
        $crate::dos::rpc_entry!($Class, $P, this => this, before => {}, after => {});
    };
    ($Class:ident, $P:ty, $this:ident => $handler:expr) => {
        $crate::dos::rpc_entry!($Class, $P, $this => $handler, before => {}, after => {});
    };
    ($Class:ident, $P:ty, $this:ident => $handler:expr, before => $before:block, after => $after:block) => {
        #[worker::wasm_bindgen::prelude::wasm_bindgen(wasm_bindgen = worker::wasm_bindgen)]
        impl $Class {
            #[wasm_bindgen(js_name = call)]
            pub fn rpc(&self, body: String) -> worker::js_sys::Promise {
                // SAFETY: as in `#[durable_object]`'s own `fetch`: the runtime keeps a Durable
                // Object alive while a promise it returned is pending, so `self` outlives the
                // future.
                let $this: &'static Self = unsafe { &*(self as *const Self) };
                let () = $before;
                worker::js_sys::futures::future_to_promise(std::panic::AssertUnwindSafe(
                    async move {
                        let text = $crate::dos::answer::<$P, _>($handler, body).await;
                        let () = $after;
                        Ok(worker::wasm_bindgen::JsValue::from(text))
                    },
                ))
            }
        }
    };
}
pub(crate) use rpc_entry;

/// The `fetch` of every Durable Object but the town's (whose sockets arrive by `fetch`): they
/// are called over RPC only.
pub fn no_fetch() -> worker::Result<Response> {
    Ok(error_response(&ApiError::NotFound(
        "durable objects are called over RPC".into(),
    )))
}
