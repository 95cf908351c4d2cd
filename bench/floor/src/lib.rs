//! The benchmark floor: the least a request can cost in this architecture. The worker forwards
//! every request to one SQLite-backed Durable Object, which reads one row and answers JSON. No
//! auth, no routing, no validation: `npm run bench` reports our routes as ratios to this.

use serde::Deserialize;
use worker::{
    durable_object, event, Context, DurableObject, Env, Request, Response, Result, State,
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

#[derive(Deserialize, serde::Serialize)]
struct Row {
    id: f64,
    name: String,
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
        Self { state }
    }

    async fn fetch(&self, _req: Request) -> Result<Response> {
        let rows: Vec<Row> = self
            .state
            .storage()
            .sql()
            .exec("SELECT id, name FROM t WHERE id = ?", vec![1.into()])?
            .to_array()?;
        Response::from_json(&rows.first())
    }
}
