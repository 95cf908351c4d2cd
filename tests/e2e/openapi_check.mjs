// Checks the worker's answers against the OpenAPI document it serves (GET /openapi.json) with
// ajv: the operation is found from the request's method and the path template its URL matches;
// a status the operation does not document, or a JSON body its schema refuses, fails the call.
// `checker.fetch` is a fetch that does this on every response (the typed client's `fetch`).
import assert from "node:assert/strict";
import Ajv2020 from "ajv/dist/2020.js";
import addFormats from "ajv-formats";

/** The base URI ajv resolves the document's `#/components/...` references against. */
const DOC_ID = "https://gastown.test/openapi.json";

/** The document the worker at `baseUrl` serves. */
export async function loadOpenApi(baseUrl) {
  const res = await fetch(`${baseUrl}/openapi.json`);
  assert.equal(res.status, 200, "GET /openapi.json");
  return res.json();
}

/** A JSON pointer (as a URI fragment) to `parts` in the document. */
const pointer = (...parts) => `#/${parts.map((p) => String(p).replace(/~/g, "~0").replace(/\//g, "~1")).join("/")}`;

/** `{template, re, params}` for each path, the most literal first (so `/a/b` wins over `/a/{x}`). */
function routesOf(doc) {
  const escape = (s) => s.replace(/[.*+?^$()|[\]\\]/g, "\\$&");
  return Object.keys(doc.paths)
    .map((template) => ({
      template,
      re: new RegExp(`^${template.split("/").map((seg) => (/^\{[^}]+\}$/.test(seg) ? "[^/]+" : escape(seg))).join("/")}$`),
      params: (template.match(/\{/g) ?? []).length,
    }))
    .sort((a, b) => a.params - b.params);
}

export function openApiChecker(doc) {
  // Not strict: the document also holds OpenAPI's own keywords (discriminator, x-principal…).
  const ajv = new Ajv2020({ strict: false, allErrors: true });
  addFormats(ajv);
  ajv.addSchema(doc, DOC_ID);
  const validators = new Map();
  const validator = (ref) => {
    if (!validators.has(ref)) validators.set(ref, ajv.compile({ $ref: DOC_ID + ref }));
    return validators.get(ref);
  };
  const routes = routesOf(doc);
  /** `METHOD template status` of every response checked, for the suites to assert coverage. */
  const seen = new Set();

  const validate = (ref, value, what) => {
    const v = validator(ref);
    assert.ok(v(value), `${what} does not match ${ref}:\n${ajv.errorsText(v.errors, { separator: "\n" })}\n${JSON.stringify(value).slice(0, 1500)}`);
  };

  /** Checks one answer: `method` and `pathname` of the request, the response's status, type and text. */
  function check(method, pathname, status, contentType, text) {
    const route = routes.find((r) => r.re.test(pathname) && doc.paths[r.template][method.toLowerCase()]);
    assert.ok(route, `${method} ${pathname} is not an operation of the document`);
    const op = doc.paths[route.template][method.toLowerCase()];
    const what = `${method} ${route.template} → ${status}`;
    const key = [String(status), `${String(status)[0]}XX`, "default"].find((k) => op.responses[k]);
    assert.ok(key, `${what}: the document lists only ${Object.keys(op.responses).join(", ")}\n${text.slice(0, 500)}`);
    let ref = pointer("paths", route.template, method.toLowerCase(), "responses", key);
    let response = op.responses[key];
    if (response.$ref) {
      ref = response.$ref;
      response = response.$ref.slice(2).split("/").reduce((node, part) => node[part.replace(/~1/g, "/").replace(/~0/g, "~")], doc);
    }
    seen.add(`${method} ${route.template} ${status}`);
    const documented = Boolean(response.content?.["application/json"]);
    const json = /^application\/json\b/i.test(contentType ?? "");
    if (!documented && !json) return;
    assert.ok(json, `${what}: the document has a JSON body, the response is ${contentType ?? "without a type"}`);
    assert.ok(documented, `${what}: a JSON body the document does not describe\n${text.slice(0, 500)}`);
    let body;
    try {
      body = JSON.parse(text);
    } catch {
      assert.fail(`${what}: the body is not JSON: ${text.slice(0, 500)}`);
    }
    validate(`${ref}/content/application~1json/schema`, body, what);
  }

  /** Wraps `inner` (global fetch by default): every response it gives is checked before it is returned. */
  const wrap =
    (inner = (request) => globalThis.fetch(request)) =>
    async (input, init) => {
      const request = input instanceof Request && init === undefined ? input : new Request(input, init);
      const { method } = request;
      const { pathname } = new URL(request.url);
      const response = await inner(request);
      check(method, pathname, response.status, response.headers.get("content-type"), await response.clone().text());
      return response;
    };

  return {
    doc,
    seen,
    check,
    wrap,
    fetch: wrap(),
    /** Checks `value` against the document's schema `name` (a stream frame, say). */
    schema: (name, value) => validate(pointer("components", "schemas", name), value, name),
  };
}
