// The worker's entry module. It re-exports what worker-build generated (build/index.js) and
// wraps each Durable Object class in a class that extends `DurableObject`, which is what lets
// workerd deliver JS RPC calls to it (a class that does not extend it can only be fetched).
// The worker calls its DOs through one RPC method, `call(body)`, implemented in Rust
// (src/dos/mod.rs): a JSON request in, a status-prefixed JSON reply out. `fetch` and `alarm`
// go to the Rust class unchanged.
import { DurableObject } from "cloudflare:workers";
import worker, * as rust from "../build/index.js";

function withRpc(Rust) {
  return class extends DurableObject {
    constructor(ctx, env) {
      super(ctx, env);
      this.rust = new Rust(ctx, env);
    }
    fetch(request) {
      return this.rust.fetch(request);
    }
    alarm(info) {
      return this.rust.alarm(info);
    }
    call(body) {
      return this.rust.call(body);
    }
  };
}

export const GastownUserDO = withRpc(rust.GastownUserDO);
export const GastownOrgDO = withRpc(rust.GastownOrgDO);
// The town also holds its streams' WebSockets (hibernation API): workerd delivers their events
// to these methods, waking the DO only then.
export const TownDO = class extends withRpc(rust.TownDO) {
  webSocketMessage(ws, message) {
    return this.rust.webSocketMessage(ws, message);
  }
  webSocketClose(ws, code, reason, wasClean) {
    return this.rust.webSocketClose(ws, code, reason, wasClean);
  }
  webSocketError(ws, error) {
    return this.rust.webSocketError(ws, error);
  }
};
export const TownContainerDO = withRpc(rust.TownContainerDO);
export default worker;
