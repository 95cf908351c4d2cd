// The typed client of the Gastown Cloud HTTP API: an openapi-fetch client over the generated
// `paths` (schema.ts, from crates/core/openapi.json), with the caller's bearer token on every
// request. Live streams are in stream.ts (`@gastown/client/stream`).
import createClient, { type Client } from "openapi-fetch";
import type { components, paths } from "./schema.ts";

export type { components, operations, paths } from "./schema.ts";

/** A bearer token, or a function giving the current one (called before every request). */
export type Token = string | (() => string | Promise<string>);

export interface GastownClientOptions {
  /** The worker's origin, e.g. `https://gastown.example.com` (no trailing `/api`). */
  baseUrl: string;
  token: Token;
  /** Replaces `globalThis.fetch` (tests wrap it to check every response). */
  fetch?: (input: Request) => Promise<Response>;
}

/** An openapi-fetch client typed by the API's paths, remembering its base URL for streams. */
export type GastownClient = Client<paths> & { readonly baseUrl: string };

export function createGastownClient({ baseUrl, token, fetch }: GastownClientOptions): GastownClient {
  const base = baseUrl.replace(/\/+$/, "");
  const client = createClient<paths>({ baseUrl: base, fetch });
  client.use({
    async onRequest({ request }) {
      const value = typeof token === "string" ? token : await token();
      request.headers.set("authorization", `Bearer ${value}`);
      return request;
    },
  });
  return Object.assign(client, { baseUrl: base });
}

/** Every schema of the document, by name: `Schema<"Town">`. */
export type Schemas = components["schemas"];
export type Schema<Name extends keyof Schemas> = Schemas[Name];

// The dashboard's bodies, by their names in the document.
export type ApiError = Schemas["Error"];
export type Town = Schemas["Town"];
export type NewTown = Schemas["NewTown"];
export type Rig = Schemas["Rig"];
export type NewRig = Schemas["NewRig"];
export type RigPatch = Schemas["RigPatch"];
export type RigWithIntegration = Schemas["RigWithIntegration"];
export type Deleted = Schemas["Deleted"];
export type TownConfig = Schemas["TownConfig"];
export type ConfigPatch = Schemas["ConfigPatch"];
export type RoleModels = Schemas["RoleModels"];
export type ContainerStatus = Schemas["ContainerStatus"];
export type TownStarted = Schemas["TownStarted"];
export type Agent = Schemas["Agent"];
export type AgentEvent = Schemas["AgentEvent"];
export type EventPage = Schemas["EventPage"];
export type Bead = Schemas["Bead"];
export type BeadDetail = Schemas["BeadDetail"];
export type BeadEvent = Schemas["BeadEvent"];
export type NewBead = Schemas["NewBead"];
export type BeadPatch = Schemas["BeadPatch"];
export type Sling = Schemas["Sling"];
export type SlingBatch = Schemas["SlingBatch"];
export type ConvoySummary = Schemas["ConvoySummary"];
export type ConvoyDetail = Schemas["ConvoyDetail"];
export type MayorView = Schemas["MayorView"];
export type MayorMessage = Schemas["MayorMessage"];
export type Transcript = Schemas["Transcript"];
export type Integration = Schemas["Integration"];
export type Repository = Schemas["Repository"];
export type StreamTicket = Schemas["StreamTicket"];
