//! The benchmark floors: the least a request can cost in this architecture. The worker forwards
//! every request to one SQLite-backed Durable Object, which answers JSON after one statement:
//! `GET` reads one row (the read floor), any other method upserts one row (the write floor). No
//! auth, no routing, no validation: `npm run bench` reports our read routes against the read
//! floor and our write routes against the write floor.

use serde::{Deserialize, Serialize};
use worker::{
    durable_object, event, Context, Date, DurableObject, Env, Method, Request, Response, Result,
    State,
};

#[event(fetch)]
async fn fetch(req: Request, env: Env, _ctx: Context) -> Result<Response> {
    let stub = env.durable_object("FLOOR")?.get_by_name("floor")?;
    stub.fetch_with_request(req).await
}

#[durable_object]
pub struct FloorDO {
    state: State,
}

#[derive(Deserialize, Serialize)]
struct Row {
    id: f64,
    name: String,
}

#[derive(Deserialize, Serialize)]
struct Beat {
    id: String,
    at: f64,
}

impl DurableObject for FloorDO {
    fn new(state: State, _env: Env) -> Self {
        let sql = state.storage().sql();
        let _ = sql.exec(
            "CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, name TEXT NOT NULL)",
            None,
        );
        let _ = sql.exec(
            "INSERT OR IGNORE INTO t (id, name) VALUES (1, 'floor')",
            None,
        );
        let _ = sql.exec(
            "CREATE TABLE IF NOT EXISTS beats (id TEXT PRIMARY KEY, at REAL NOT NULL)",
            None,
        );
        Self { state }
    }

    async fn fetch(&self, req: Request) -> Result<Response> {
        let sql = self.state.storage().sql();
        if req.method() == Method::Get {
            let rows: Vec<Row> = sql
                .exec("SELECT id, name FROM t WHERE id = ?", vec![1.into()])?
                .to_array()?;
            return Response::from_json(&rows.first());
        }
        // One write, shaped like a heartbeat: upsert one row keyed by a fixed id.
        let beat = Beat {
            id: "floor".into(),
            at: Date::now().as_millis() as f64,
        };
        sql.exec(
            "INSERT INTO beats (id, at) VALUES (?, ?) ON CONFLICT (id) DO UPDATE SET at = excluded.at",
            vec![beat.id.as_str().into(), beat.at.into()],
        )?;
        Response::from_json(&beat)
    }
}
