// Stand-in GitHub + GitLab for the end-to-end tests: one loopback HTTP server that answers the
// calls the worker makes to both platforms, in their wire formats. GITHUB_API_URL, GITHUB_WEB_URL
// and GITLAB_URL may all point at it: GitLab's routes live under /api/v4 and /oauth, GitHub's
// under /app and /installation, so they do not clash.
//
// GitHub (App "gastown-dev"):
//   GET  /app/installations/{id}                (RS256 App JWT)     -> installation object | 404
//   POST /app/installations/{id}/access_tokens  (RS256 App JWT)     -> 201 ghs_ token | 403 | 404 | 422
//   GET  /installation/repositories             (installation token) -> repositories + Link header | 401
// GitHub App user-to-server OAuth ("Expire user authorization tokens" on):
//   POST   /login/oauth/access_token  code | grant_type=refresh_token -> ghu_/ghr_ pair (refresh tokens
//                                     rotate); errors are HTTP 200 + {error, error_description, error_uri}
//   GET    /user                      (user token)                     -> private-user | 401 | 403
//   GET    /user/installations        (user token)                     -> the App's installations the user
//                                     may access (+ Link header) | 401 | 403 for other tokens
//   GET    /repos/{owner}/{repo}      (user token, installation token or none) -> full-repository | 404
//   DELETE /applications/{client_id}/grant  (Basic client_id:client_secret) -> 204 | 404 | 401 | 422
// GitLab:
//   POST /oauth/token          authorization_code | refresh_token (refresh tokens rotate)
//   GET  /api/v4/user          (OAuth access token)
//   GET  /api/v4/projects      (OAuth access token) + X-Page/X-Total/... and Link headers
//
// Git (tests/e2e/standins/git_host.mjs): every repository's `clone_url` is on an HTTPS git host
// (smart HTTP, `git http-backend`, a self-signed certificate git trusts through `gitCaFile`) that
// wants `x-access-token` and a live installation token that can see the repository (contents:
// write to push), or a user token of a user with access (push to push), as GitHub does.
//
// Runtime dependencies: node:http and node:crypto, and git_host.mjs (git, openssl).
// `webhookPayload` loads the npm package @octokit/webhooks-examples (a devDependency) lazily.
import { createServer } from "node:http";
import { createHash, createHmac, createPublicKey, randomBytes, randomInt, verify as verifySignature } from "node:crypto";
import { createRequire } from "node:module";
import { startGitHost } from "./git_host.mjs";

const GITHUB_DOCS = "https://docs.github.com/rest";
const DOCS = {
  getInstallation: "https://docs.github.com/rest/apps/apps#get-an-installation-for-the-authenticated-app",
  accessTokens: "https://docs.github.com/rest/apps/apps#create-an-installation-access-token-for-an-app",
  installationRepos: "https://docs.github.com/rest/apps/installations#list-repositories-accessible-to-the-app-installation",
  authenticatedUser: "https://docs.github.com/rest/users/users#get-the-authenticated-user",
  getRepo: "https://docs.github.com/rest/repos/repos#get-a-repository",
  userInstallations: "https://docs.github.com/rest/apps/installations#list-app-installations-accessible-to-the-user-access-token",
  deleteGrant: "https://docs.github.com/rest/apps/oauth-applications#delete-an-app-authorization",
};
/** GitHub's OAuth token-endpoint errors (answered with HTTP 200), as GitHub words them. */
const OAUTH_TROUBLESHOOTING = "https://docs.github.com/apps/managing-oauth-apps/troubleshooting-oauth-app-access-token-request-errors";
const GITHUB_OAUTH_ERRORS = {
  incorrect_client_credentials: ["The client_id and/or client_secret passed are incorrect.", `${OAUTH_TROUBLESHOOTING}/#incorrect-client-credentials`],
  redirect_uri_mismatch: ["The redirect_uri MUST match the registered callback URL for this application.", `${OAUTH_TROUBLESHOOTING}/#redirect-uri-mismatch2`],
  bad_verification_code: ["The code passed is incorrect or expired.", `${OAUTH_TROUBLESHOOTING}/#bad-verification-code`],
  bad_refresh_token: ["The refresh token passed is incorrect or expired.", OAUTH_TROUBLESHOOTING],
  unsupported_grant_type: ["The grant type is not supported.", OAUTH_TROUBLESHOOTING],
};
const GITHUB_CODE_TTL_S = 600; // authorization codes expire after 10 minutes
const GITHUB_USER_TOKEN_TTL_S = 28800; // 8 h
const GITHUB_REFRESH_TOKEN_TTL_S = 15897600; // 6 months
const APP_SLUG = "gastown-dev";
/** Clock skew GitHub tolerates on `iat`, and the longest App JWT lifetime (10 min) plus that skew. */
const JWT_SKEW_S = 60;
const JWT_MAX_LIFETIME_S = 600 + JWT_SKEW_S;
const DEFAULT_PERMISSIONS = { contents: "write", metadata: "read", pull_requests: "write", issues: "write" };
const DEFAULT_EVENTS = ["push", "pull_request"];
const GITLAB_CODE_TTL_S = 600; // Doorkeeper's authorization_code_expires_in default

/** ISO 8601 in GitHub's style: whole seconds, `Z`. */
const isoSeconds = (ms) => new Date(Math.floor(ms / 1000) * 1000).toISOString().replace(".000Z", "Z");
const ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
const randomAlnum = (n) => Array.from({ length: n }, () => ALNUM[randomInt(ALNUM.length)]).join("");
const b64 = (s) => Buffer.from(s).toString("base64");
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function decodeJsonSegment(segment) {
  if (!/^[A-Za-z0-9_-]*$/.test(segment)) throw new Error("not base64url");
  const value = JSON.parse(Buffer.from(segment, "base64url").toString("utf8"));
  if (value === null || typeof value !== "object" || Array.isArray(value)) throw new Error("not a JSON object");
  return value;
}

/**
 * Verifies a GitHub App JWT as GitHub does: RS256 signature by the App's key, `iss` the App id,
 * `iat` not more than 60 s ahead, `exp` in the future and at most 10 min (+60 s skew) after `iat`.
 * Returns `{ header, claims }` or `{ error, reason }` (error: GitHub's message; reason: for the log).
 */
function verifyAppJwt(jwt, { appId, publicKey, nowS }) {
  const undecodable = (reason) => ({ error: "A JSON web token could not be decoded", reason });
  const parts = jwt.split(".");
  if (parts.length !== 3) return undecodable("jwt: not three segments");
  let header, claims;
  try {
    header = decodeJsonSegment(parts[0]);
    claims = decodeJsonSegment(parts[1]);
  } catch (e) {
    return undecodable(`jwt: ${e.message}`);
  }
  if (header.alg !== "RS256") return undecodable(`jwt: alg ${JSON.stringify(header.alg)} is not RS256`);
  if (!publicKey) return undecodable("jwt: the stand-in was started without publicKeyPem");
  const signature = Buffer.from(parts[2], "base64url");
  if (signature.length === 0 || !/^[A-Za-z0-9_-]+$/.test(parts[2])) return undecodable("jwt: no signature");
  let good = false;
  try {
    good = verifySignature("sha256", Buffer.from(`${parts[0]}.${parts[1]}`), publicKey, signature);
  } catch {
    good = false;
  }
  if (!good) return undecodable("jwt: bad RS256 signature");
  const { iss, iat, exp } = claims;
  if (!(typeof iss === "number" || typeof iss === "string") || String(iss) !== String(appId)) {
    return { error: "Integration not found", reason: `jwt: iss ${JSON.stringify(iss)} is not the App id ${appId}` };
  }
  if (typeof iat !== "number" || !Number.isFinite(iat) || iat > nowS + JWT_SKEW_S) {
    return {
      error: "'Issued at' claim ('iat') must be an Integer representing the time that the assertion was issued",
      reason: `jwt: iat ${JSON.stringify(iat)} missing or more than ${JWT_SKEW_S} s in the future (now ${nowS})`,
    };
  }
  if (typeof exp !== "number" || !Number.isFinite(exp) || exp <= nowS) {
    return {
      error: "'Expiration time' claim ('exp') must be a numeric value representing the future time at which the assertion expires",
      reason: `jwt: exp ${JSON.stringify(exp)} missing or not in the future (now ${nowS})`,
    };
  }
  if (exp - iat > JWT_MAX_LIFETIME_S || exp - nowS > JWT_MAX_LIFETIME_S) {
    return {
      error: "'Expiration time' claim ('exp') is too far in the future",
      reason: `jwt: exp - iat = ${exp - iat} s, exp - now = ${exp - nowS} s (max ${JWT_MAX_LIFETIME_S})`,
    };
  }
  return { header, claims };
}

/** RFC 8288 Link header over `page` of `pages`, keeping the request's other query parameters. */
function linkHeader(base, pathname, query, page, pages, order) {
  const at = (p) => {
    const q = new URLSearchParams(query);
    q.set("page", String(p));
    return `<${base}${pathname}?${q}>`;
  };
  const rels = {};
  if (page > 1) rels.prev = at(Math.min(page - 1, pages));
  if (page < pages) rels.next = at(page + 1);
  if (pages > 0 && page !== pages) rels.last = at(pages);
  if (page > 1) rels.first = at(1);
  return order.filter((r) => rels[r]).map((r) => `${rels[r]}; rel="${r}"`).join(", ");
}

function pageParams(query, { defaultPerPage, maxPerPage }) {
  const num = (v, d) => {
    const n = Number.parseInt(v ?? "", 10);
    return Number.isFinite(n) && n > 0 ? n : d;
  };
  return { perPage: Math.min(num(query.get("per_page"), defaultPerPage), maxPerPage), page: num(query.get("page"), 1) };
}

function bearer(req, schemes) {
  const h = req.headers.authorization;
  if (!h) return null;
  const m = /^(\S+)\s+(\S+)\s*$/.exec(h);
  if (!m || !schemes.includes(m[1].toLowerCase())) return null;
  return m[2];
}

async function readBody(req, limit = 1 << 20) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > limit) throw new Error("request body too large");
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString("utf8");
}

/**
 * Starts the stand-in on a free loopback port.
 * @param {{ appId?: number|string, publicKeyPem?: string, gitlabClientId?: string, gitlabClientSecret?: string,
 *   githubClientId?: string, githubClientSecret?: string }} options  githubClient*: the App's OAuth
 *   client credentials, for the user-to-server flow (/login/oauth/access_token, DELETE grant).
 */
export async function startGitPlatforms({ appId, publicKeyPem, gitlabClientId, gitlabClientSecret, githubClientId, githubClientSecret } = {}) {
  const publicKey = publicKeyPem ? createPublicKey(publicKeyPem) : null;
  const numericAppId = Number.isFinite(Number(appId)) ? Number(appId) : 0;
  let base = ""; // set once listening

  const state = {
    latencyMs: 0,
    ttl: { github: 3600, gitlab: 7200, githubUser: GITHUB_USER_TOKEN_TTL_S, githubRefresh: GITHUB_REFRESH_TOKEN_TTL_S },
    counts: new Map(),
    log: [],
    lastAppJwt: null,
    installations: new Map(), // id -> installation record
    githubTokens: new Map(), // token -> record
    githubUsers: new Map(), // user id -> { id, login, name, email, created_at, repos: Map(lower full name -> access) }
    githubUserCodes: new Map(), // code -> { user_id, redirect_uri, used, expiresAtMs }
    githubUserGrants: [], // user-to-server access/refresh token pairs, in issue order
    gitAuth: [], // every git request's credential: { owner, repo, service, as: "user:<id>"|"installation:<id>"|null, verdict }
    githubRepos: new Map(), // lower "owner/name" -> repo known only from users' access lists
    githubOwners: new Map(), // lower login -> generated account id for owners that are neither users nor installations
    gitlabUsers: new Map(), // user id -> { user, projects }
    gitlabCodes: new Map(), // code -> record
    gitlabGrants: [], // access/refresh token pairs, in issue order
    nextRepoId: 700_000_001,
    nextAccountId: 9_000_001,
    nextProjectId: 500_001,
    nextNamespaceId: 80_001,
  };
  const count = (key) => state.counts.set(key, (state.counts.get(key) ?? 0) + 1);

  // ---------------------------------------------------------------- GitHub objects

  function accountObject(inst) {
    const { login, accountId: id, type } = inst;
    const api = `${base}/users/${login}`;
    return {
      login,
      id,
      node_id: b64(type === "Organization" ? `012:Organization${id}` : `04:User${id}`),
      avatar_url: `${base}/avatars/u/${id}?v=4`,
      gravatar_id: "",
      url: api,
      html_url: `${base}/${login}`,
      followers_url: `${api}/followers`,
      following_url: `${api}/following{/other_user}`,
      gists_url: `${api}/gists{/gist_id}`,
      starred_url: `${api}/starred{/owner}{/repo}`,
      subscriptions_url: `${api}/subscriptions`,
      organizations_url: `${api}/orgs`,
      repos_url: `${api}/repos`,
      events_url: `${api}/events{/privacy}`,
      received_events_url: `${api}/received_events`,
      type,
      user_view_type: "public",
      site_admin: false,
    };
  }

  function repositoryObject(inst, repo) {
    const full = `${inst.login}/${repo.name}`;
    const api = `${base}/repos/${full}`;
    const host = new URL(base).host;
    return {
      id: repo.id,
      node_id: b64(`010:Repository${repo.id}`),
      name: repo.name,
      full_name: full,
      private: repo.private,
      owner: accountObject(inst),
      html_url: `${base}/${full}`,
      description: repo.description ?? null,
      fork: false,
      url: api,
      forks_url: `${api}/forks`,
      keys_url: `${api}/keys{/key_id}`,
      collaborators_url: `${api}/collaborators{/collaborator}`,
      teams_url: `${api}/teams`,
      hooks_url: `${api}/hooks`,
      issue_events_url: `${api}/issues/events{/number}`,
      events_url: `${api}/events`,
      assignees_url: `${api}/assignees{/user}`,
      branches_url: `${api}/branches{/branch}`,
      tags_url: `${api}/tags`,
      blobs_url: `${api}/git/blobs{/sha}`,
      git_tags_url: `${api}/git/tags{/sha}`,
      git_refs_url: `${api}/git/refs{/sha}`,
      trees_url: `${api}/git/trees{/sha}`,
      statuses_url: `${api}/statuses/{sha}`,
      languages_url: `${api}/languages`,
      stargazers_url: `${api}/stargazers`,
      contributors_url: `${api}/contributors`,
      subscribers_url: `${api}/subscribers`,
      subscription_url: `${api}/subscription`,
      commits_url: `${api}/commits{/sha}`,
      git_commits_url: `${api}/git/commits{/sha}`,
      comments_url: `${api}/comments{/number}`,
      issue_comment_url: `${api}/issues/comments{/number}`,
      contents_url: `${api}/contents/{+path}`,
      compare_url: `${api}/compare/{base}...{head}`,
      merges_url: `${api}/merges`,
      archive_url: `${api}/{archive_format}{/ref}`,
      downloads_url: `${api}/downloads`,
      issues_url: `${api}/issues{/number}`,
      pulls_url: `${api}/pulls{/number}`,
      milestones_url: `${api}/milestones{/number}`,
      notifications_url: `${api}/notifications{?since,all,participating}`,
      labels_url: `${api}/labels{/name}`,
      releases_url: `${api}/releases{/id}`,
      deployments_url: `${api}/deployments`,
      created_at: repo.created_at,
      updated_at: repo.created_at,
      pushed_at: repo.created_at,
      git_url: `git://${host}/${full}.git`,
      ssh_url: `git@${host}:${full}.git`,
      clone_url: `${gitHost.url}/${full}.git`,
      svn_url: `${base}/${full}`,
      homepage: null,
      size: 0,
      stargazers_count: 0,
      watchers_count: 0,
      language: null,
      has_issues: true,
      has_projects: true,
      has_downloads: true,
      has_wiki: true,
      has_pages: false,
      has_discussions: false,
      forks_count: 0,
      mirror_url: null,
      archived: false,
      disabled: false,
      open_issues_count: 0,
      license: null,
      allow_forking: true,
      is_template: false,
      web_commit_signoff_required: false,
      topics: [],
      visibility: repo.private ? "private" : "public",
      forks: 0,
      open_issues: 0,
      watchers: 0,
      default_branch: repo.default_branch,
      permissions: { admin: false, maintain: false, push: false, triage: false, pull: false },
    };
  }

  function installationObject(inst) {
    const account = accountObject(inst);
    return {
      id: inst.id,
      client_id: `Iv23li${String(numericAppId).padStart(14, "0")}`,
      account,
      repository_selection: inst.repository_selection,
      access_tokens_url: `${base}/app/installations/${inst.id}/access_tokens`,
      repositories_url: `${base}/installation/repositories`,
      html_url:
        inst.type === "Organization"
          ? `${base}/organizations/${inst.login}/settings/installations/${inst.id}`
          : `${base}/settings/installations/${inst.id}`,
      app_id: numericAppId,
      app_slug: APP_SLUG,
      target_id: inst.accountId,
      target_type: inst.type,
      permissions: { ...inst.permissions },
      events: [...inst.events],
      created_at: inst.created_at,
      updated_at: inst.updated_at,
      single_file_name: null,
      has_multiple_single_files: false,
      single_file_paths: [],
      suspended_by: inst.suspended_at ? account : null,
      suspended_at: inst.suspended_at,
    };
  }

  /** GET /user for a user-to-server token: GitHub's "private-user" shape (no `plan`: that needs the Plan permission). */
  function githubUserObject(user) {
    const owned = [...user.repos.keys()].filter((full) => full.split("/")[0] === user.login.toLowerCase());
    const ownedPrivate = owned.filter((full) => findRepo(...full.split("/"))?.repo.private !== false).length;
    return {
      ...accountObject({ login: user.login, accountId: user.id, type: "User" }),
      user_view_type: "private",
      name: user.name,
      company: null,
      blog: "",
      location: null,
      email: user.email,
      hireable: null,
      bio: null,
      twitter_username: null,
      notification_email: user.email,
      public_repos: owned.length - ownedPrivate,
      public_gists: 0,
      followers: 0,
      following: 0,
      created_at: user.created_at,
      updated_at: user.created_at,
      private_gists: 0,
      total_private_repos: ownedPrivate,
      owned_private_repos: ownedPrivate,
      disk_usage: 0,
      collaborators: 0,
      two_factor_authentication: true,
    };
  }

  /** The account owning `login`'s repositories: an installation's account, a registered user, or a generated organization. */
  function ownerAccount(login) {
    const lower = login.toLowerCase();
    const inst = [...state.installations.values()].find((i) => i.login.toLowerCase() === lower);
    if (inst) return { login: inst.login, accountId: inst.accountId, type: inst.type };
    const user = [...state.githubUsers.values()].find((u) => u.login.toLowerCase() === lower);
    if (user) return { login: user.login, accountId: user.id, type: "User" };
    if (!state.githubOwners.has(lower)) state.githubOwners.set(lower, state.nextAccountId++);
    return { login, accountId: state.githubOwners.get(lower), type: "Organization" };
  }

  /** A repository by owner and name (case-insensitive): `{ owner, repo, inst? }` or null. Installations win. */
  function findRepo(owner, name) {
    const o = owner.toLowerCase();
    const n = name.toLowerCase();
    for (const inst of state.installations.values()) {
      if (inst.login.toLowerCase() !== o) continue;
      const repo = inst.repos.find((r) => r.name.toLowerCase() === n);
      if (repo) return { owner: { login: inst.login, accountId: inst.accountId, type: inst.type }, repo, inst };
    }
    const known = state.githubRepos.get(`${o}/${n}`);
    return known ? { owner: ownerAccount(known.owner), repo: known } : null;
  }

  /** GET /repos/{owner}/{repo}: GitHub's "full-repository"; `permissions` only when given. */
  function fullRepositoryObject(owner, repo, permissions) {
    const out = {
      ...repositoryObject(owner, repo),
      network_count: 0,
      subscribers_count: 0,
      allow_rebase_merge: true,
      allow_squash_merge: true,
      allow_merge_commit: true,
      allow_auto_merge: false,
      delete_branch_on_merge: false,
      allow_update_branch: false,
    };
    if (owner.type === "Organization") out.organization = out.owner;
    if (permissions) out.permissions = { ...permissions };
    else delete out.permissions;
    return out;
  }

  // ---------------------------------------------------------------- GitLab objects

  function gitlabProjectObject(project, user, simple) {
    const segments = project.path_with_namespace.split("/");
    const path = segments.at(-1);
    const nsPath = segments.slice(0, -1).join("/");
    const nsIsUser = nsPath === user.username;
    const namespace = {
      id: project.namespace_id,
      name: nsIsUser ? user.name : segments.at(-2),
      path: segments.at(-2),
      kind: nsIsUser ? "user" : "group",
      full_path: nsPath,
      parent_id: null,
      avatar_url: null,
      web_url: nsIsUser ? `${base}/${user.username}` : `${base}/groups/${nsPath}`,
    };
    const web = `${base}/${project.path_with_namespace}`;
    const host = new URL(base).host;
    // GitLab's simple representation (BasicProjectDetails): no visibility, owner or permissions.
    const out = {
      id: project.id,
      description: project.description ?? null,
      name: project.name,
      name_with_namespace: segments.length > 1 ? `${namespace.name} / ${project.name}` : project.name,
      path,
      path_with_namespace: project.path_with_namespace,
      created_at: project.created_at,
      default_branch: project.default_branch,
      tag_list: [],
      topics: [],
      ssh_url_to_repo: `git@${host}:${project.path_with_namespace}.git`,
      http_url_to_repo: `${web}.git`,
      web_url: web,
      readme_url: null,
      forks_count: 0,
      avatar_url: null,
      star_count: 0,
      last_activity_at: project.created_at,
      namespace,
    };
    if (simple) return out;
    return {
      ...out,
      visibility: project.visibility,
      owner: nsIsUser ? gitlabUserObject(user, { public: true }) : undefined,
      archived: false,
      empty_repo: false,
      issues_enabled: true,
      merge_requests_enabled: true,
      wiki_enabled: true,
      jobs_enabled: true,
      snippets_enabled: true,
      repository_access_level: "enabled",
      creator_id: user.id,
      open_issues_count: 0,
      _links: {
        self: `${base}/api/v4/projects/${project.id}`,
        issues: `${base}/api/v4/projects/${project.id}/issues`,
        merge_requests: `${base}/api/v4/projects/${project.id}/merge_requests`,
        repo_branches: `${base}/api/v4/projects/${project.id}/repository/branches`,
        labels: `${base}/api/v4/projects/${project.id}/labels`,
        events: `${base}/api/v4/projects/${project.id}/events`,
        members: `${base}/api/v4/projects/${project.id}/members`,
      },
      permissions: { project_access: { access_level: 40, notification_level: 3 }, group_access: null },
    };
  }

  function gitlabUserObject(user, { public: publicOnly = false } = {}) {
    const basic = {
      id: user.id,
      username: user.username,
      name: user.name,
      state: "active",
      locked: false,
      avatar_url: `${base}/uploads/-/system/user/avatar/${user.id}/avatar.png`,
      web_url: `${base}/${user.username}`,
    };
    if (publicOnly) return basic;
    return {
      ...basic,
      created_at: user.created_at,
      bio: "",
      location: "",
      public_email: null,
      linkedin: "",
      twitter: "",
      discord: "",
      website_url: "",
      organization: "",
      job_title: "",
      pronouns: null,
      bot: false,
      work_information: null,
      local_time: null,
      last_sign_in_at: user.created_at,
      confirmed_at: user.created_at,
      last_activity_on: user.created_at.slice(0, 10),
      email: user.email,
      theme_id: 1,
      color_scheme_id: 1,
      projects_limit: 100000,
      current_sign_in_at: user.created_at,
      identities: [],
      can_create_group: true,
      can_create_project: true,
      two_factor_enabled: false,
      external: false,
      private_profile: false,
      commit_email: user.email,
    };
  }

  // ---------------------------------------------------------------- responses

  function send(res, status, body, headers = {}) {
    const text = body === undefined ? "" : JSON.stringify(body);
    res.writeHead(status, {
      "content-type": "application/json; charset=utf-8",
      "content-length": Buffer.byteLength(text),
      ...headers,
    });
    res.end(text);
  }

  const githubHeaders = () => {
    const reset = Math.floor(Date.now() / 1000) + 3600;
    return {
      "x-github-api-version-selected": "2022-11-28",
      "x-github-media-type": "github.v3; format=json",
      "x-github-request-id": randomBytes(8).toString("hex").toUpperCase(),
      "x-ratelimit-limit": "5000",
      "x-ratelimit-remaining": "4999",
      "x-ratelimit-reset": String(reset),
      "x-ratelimit-used": "1",
      "x-ratelimit-resource": "core",
    };
  };
  const githubError = (res, status, message, documentation_url = GITHUB_DOCS, extra = {}) =>
    send(res, status, { message, documentation_url, status: String(status), ...extra }, githubHeaders());

  const gitlabNoStore = { "cache-control": "no-store", pragma: "no-cache" };

  // ---------------------------------------------------------------- GitHub routes

  /** The App JWT of the request, verified; on failure answers 401 and returns null. */
  function requireAppJwt(req, res, ctx) {
    const token = bearer(req, ["bearer"]);
    const result = token
      ? verifyAppJwt(token, { appId, publicKey, nowS: Math.floor(Date.now() / 1000) })
      : { error: "A JSON web token could not be decoded", reason: "jwt: no Authorization: Bearer header" };
    if (result.error) {
      ctx.reason = result.reason;
      githubError(res, 401, result.error);
      return null;
    }
    state.lastAppJwt = { header: result.header, claims: result.claims };
    return result;
  }

  function githubGetInstallation(req, res, ctx, id) {
    if (!requireAppJwt(req, res, ctx)) return;
    const inst = state.installations.get(id);
    if (!inst) return githubError(res, 404, "Not Found", DOCS.getInstallation);
    send(res, 200, installationObject(inst), githubHeaders());
  }

  async function githubAccessTokens(req, res, ctx, id) {
    if (!requireAppJwt(req, res, ctx)) return;
    const inst = state.installations.get(id);
    if (!inst) return githubError(res, 404, "Not Found", DOCS.accessTokens);
    if (inst.suspended_at) {
      ctx.reason = "installation suspended";
      return githubError(res, 403, "This installation has been suspended", DOCS.accessTokens);
    }
    let body = {};
    const text = await readBody(req);
    if (text.trim()) {
      try {
        body = JSON.parse(text);
      } catch {
        return githubError(res, 400, "Problems parsing JSON", DOCS.accessTokens);
      }
      if (body === null || typeof body !== "object" || Array.isArray(body)) {
        return githubError(res, 400, "Problems parsing JSON", DOCS.accessTokens);
      }
    }
    const invalid = (message) => githubError(res, 422, message, DOCS.accessTokens);
    let scoped = null;
    if (body.repositories !== undefined || body.repository_ids !== undefined) {
      const names = body.repositories ?? [];
      const ids = body.repository_ids ?? [];
      if (!Array.isArray(names) || !names.every((n) => typeof n === "string")) return invalid("Invalid request.\n\nFor 'properties/repositories', is not an array of strings.");
      if (!Array.isArray(ids) || !ids.every((n) => Number.isInteger(n))) return invalid("Invalid request.\n\nFor 'properties/repository_ids', is not an array of integers.");
      const picked = [];
      for (const name of names) {
        // GitHub accepts bare names; tolerate "owner/name" of this installation's account too.
        const bare = name.includes("/") && name.split("/")[0].toLowerCase() === inst.login.toLowerCase() ? name.split("/")[1] : name;
        const repo = inst.repos.find((r) => r.name.toLowerCase() === bare.toLowerCase());
        if (!repo) {
          ctx.reason = `repository ${JSON.stringify(name)} not in installation`;
          return invalid("There is at least one repository that does not exist or is not accessible to the parent installation.");
        }
        picked.push(repo);
      }
      for (const rid of ids) {
        const repo = inst.repos.find((r) => r.id === rid);
        if (!repo) {
          ctx.reason = `repository id ${rid} not in installation`;
          return invalid("There is at least one repository that does not exist or is not accessible to the parent installation.");
        }
        picked.push(repo);
      }
      scoped = [...new Map(picked.map((r) => [r.id, r])).values()];
    }
    let permissions = { ...inst.permissions };
    if (body.permissions !== undefined) {
      if (body.permissions === null || typeof body.permissions !== "object") return invalid("Invalid request.\n\nFor 'properties/permissions', is not an object.");
      const rank = { read: 1, write: 2, admin: 3 };
      for (const [perm, level] of Object.entries(body.permissions)) {
        const granted = inst.permissions[perm];
        if (!granted || !rank[level] || rank[level] > rank[granted]) {
          ctx.reason = `permission ${perm}:${level} not granted`;
          return invalid("The permissions requested are not granted to this installation.");
        }
      }
      permissions = { ...body.permissions };
    }
    const now = Date.now();
    const token = `ghs_${randomAlnum(36)}`;
    const record = {
      token,
      installation_id: inst.id,
      repositories: scoped ? scoped.map((r) => r.name) : null,
      repository_ids: scoped ? scoped.map((r) => r.id) : null,
      repository_selection: scoped ? "selected" : inst.repository_selection,
      permissions,
      created_at: isoSeconds(now),
      expires_at: isoSeconds(now + state.ttl.github * 1000),
      expiresAtMs: now + state.ttl.github * 1000,
    };
    state.githubTokens.set(token, record);
    const out = {
      token,
      expires_at: record.expires_at,
      permissions,
      repository_selection: record.repository_selection,
    };
    if (scoped) out.repositories = scoped.map((r) => repositoryObject(inst, r));
    send(res, 201, out, githubHeaders());
  }

  function githubInstallationRepositories(req, res, ctx, url) {
    const token = bearer(req, ["bearer", "token"]);
    const record = token && state.githubTokens.get(token);
    const inst = record && state.installations.get(record.installation_id);
    if (!record || !inst || Date.now() >= record.expiresAtMs) {
      ctx.reason = !token ? "no installation token" : !record ? "unknown token" : !inst ? "installation deleted" : "token expired";
      return githubError(res, 401, "Bad credentials");
    }
    if (inst.suspended_at) {
      ctx.reason = "installation suspended";
      return githubError(res, 403, "This installation has been suspended", DOCS.installationRepos);
    }
    const visible = record.repository_ids ? inst.repos.filter((r) => record.repository_ids.includes(r.id)) : inst.repos;
    const { perPage, page } = pageParams(url.searchParams, { defaultPerPage: 30, maxPerPage: 100 });
    const pages = Math.ceil(visible.length / perPage);
    const slice = visible.slice((page - 1) * perPage, page * perPage);
    const headers = githubHeaders();
    const link = linkHeader(base, url.pathname, url.searchParams, page, pages, ["prev", "next", "last", "first"]);
    if (link) headers.link = link;
    send(res, 200, {
      total_count: visible.length,
      repository_selection: record.repository_selection,
      repositories: slice.map((r) => repositoryObject(inst, r)),
    }, headers);
  }

  // ---------------------------------------------------------------- GitHub user-to-server OAuth

  /** Current state of a user token pair (expiry is evaluated, not stored). */
  const accessState = (g, now = Date.now()) => (g.access_state === "active" && now >= g.expiresAtMs ? "expired" : g.access_state);
  const refreshState = (g, now = Date.now()) => (g.refresh_state === "active" && now >= g.refreshExpiresAtMs ? "expired" : g.refresh_state);

  /** Kills every token of `userId`'s grant (access and refresh). Returns how many pairs were touched. */
  function revokeGrant(userId, by) {
    let n = 0;
    for (const g of state.githubUserGrants) {
      if (g.user_id !== userId) continue;
      if (g.access_state !== "active" && g.refresh_state !== "active") continue;
      n++;
      if (g.access_state === "active") g.access_state = "revoked";
      if (g.refresh_state === "active") g.refresh_state = "revoked";
      g.revoked_by = by;
    }
    // Codes not yet exchanged belong to the grant too.
    for (const c of state.githubUserCodes.values()) if (c.user_id === userId) c.used = true;
    return n;
  }

  async function githubOAuthToken(req, res, ctx, url) {
    const text = await readBody(req);
    const type = (req.headers["content-type"] ?? "").split(";")[0].trim().toLowerCase();
    const wantsJson = /json/i.test(req.headers.accept ?? "");
    // GitHub answers JSON for Accept: application/json, else application/x-www-form-urlencoded.
    const answer = (body) => {
      if (wantsJson) return send(res, 200, body, { "cache-control": "no-store" });
      const form = new URLSearchParams(Object.entries(body).map(([k, v]) => [k, String(v)])).toString();
      res.writeHead(200, { "content-type": "application/x-www-form-urlencoded; charset=utf-8", "content-length": Buffer.byteLength(form), "cache-control": "no-store" });
      res.end(form);
    };
    const fail = (error, reason) => {
      ctx.key = "github.oauth.invalid";
      ctx.reason = `${ctx.attempt}: ${error}${reason ? ` (${reason})` : ""}`;
      const [error_description, error_uri] = GITHUB_OAUTH_ERRORS[error];
      return answer({ error, error_description, error_uri });
    };
    let params = {};
    ctx.attempt = "request";
    if (type === "application/json") {
      try {
        params = JSON.parse(text || "{}");
      } catch {
        ctx.key = "github.oauth.invalid";
        ctx.reason = "body is not JSON";
        return githubError(res, 400, "Problems parsing JSON");
      }
      if (params === null || typeof params !== "object" || Array.isArray(params)) params = {};
    } else {
      params = Object.fromEntries(new URLSearchParams(text));
    }
    for (const [k, v] of url.searchParams) params[k] ??= v; // GitHub also takes them from the query string
    const basic = /^Basic\s+(\S+)$/i.exec(req.headers.authorization ?? "");
    if (basic) {
      const decoded = Buffer.from(basic[1], "base64").toString("utf8");
      const i = decoded.indexOf(":");
      if (i >= 0) {
        params.client_id ??= decoded.slice(0, i);
        params.client_secret ??= decoded.slice(i + 1);
      }
    }
    const grant = params.grant_type === undefined || params.grant_type === "" ? "authorization_code" : String(params.grant_type);
    ctx.attempt = grant;
    if (grant !== "authorization_code" && grant !== "refresh_token") return fail("unsupported_grant_type", `grant_type ${JSON.stringify(grant)}`);
    if (githubClientId === undefined || String(params.client_id ?? "") !== githubClientId || String(params.client_secret ?? "") !== githubClientSecret) {
      return fail("incorrect_client_credentials", githubClientId === undefined ? "stand-in started without githubClientId" : "client_id/client_secret do not match");
    }
    const now = Date.now();
    let userId, parent = null;
    if (grant === "authorization_code") {
      const code = params.code === undefined ? undefined : state.githubUserCodes.get(String(params.code));
      if (!code) return fail("bad_verification_code", params.code === undefined ? "no code" : "unknown code");
      if (code.used) return fail("bad_verification_code", "code already used");
      if (now >= code.expiresAtMs) return fail("bad_verification_code", "code expired");
      if (code.redirect_uri !== undefined && params.redirect_uri !== code.redirect_uri) return fail("redirect_uri_mismatch", "redirect_uri differs from the one the code was issued for");
      if (!state.githubUsers.has(code.user_id)) return fail("bad_verification_code", "user no longer exists");
      code.used = true;
      userId = code.user_id;
    } else {
      parent = params.refresh_token === undefined ? undefined : state.githubUserGrants.find((g) => g.refresh_token === String(params.refresh_token));
      if (!parent) return fail("bad_refresh_token", params.refresh_token === undefined ? "no refresh_token" : "unknown refresh token");
      const rs = refreshState(parent, now);
      if (rs !== "active") return fail("bad_refresh_token", `refresh token ${rs}`);
      // Rotation: the used refresh token is dead, and so is the access token issued with it.
      parent.refresh_state = "used";
      if (parent.access_state === "active") parent.access_state = "revoked";
      userId = parent.user_id;
    }
    ctx.key = grant === "authorization_code" ? "github.oauth.code" : "github.oauth.refresh";
    const record = {
      access_token: `ghu_${randomAlnum(36)}`,
      refresh_token: `ghr_${randomAlnum(76)}`,
      user_id: userId,
      via: grant,
      parent_refresh_token: parent ? parent.refresh_token : null,
      access_state: "active",
      refresh_state: "active",
      created_at: isoSeconds(now),
      expires_in: state.ttl.githubUser,
      refresh_token_expires_in: state.ttl.githubRefresh,
      expires_at: isoSeconds(now + state.ttl.githubUser * 1000),
      refresh_token_expires_at: isoSeconds(now + state.ttl.githubRefresh * 1000),
      expiresAtMs: now + state.ttl.githubUser * 1000,
      refreshExpiresAtMs: now + state.ttl.githubRefresh * 1000,
    };
    state.githubUserGrants.push(record);
    if (parent) parent.replaced_by = record.refresh_token;
    answer({
      access_token: record.access_token,
      expires_in: record.expires_in,
      refresh_token: record.refresh_token,
      refresh_token_expires_in: record.refresh_token_expires_in,
      token_type: "bearer",
      scope: "",
    });
  }

  /**
   * Who is calling the REST API: `{ kind: "user", grant, user }`, `{ kind: "installation", record, inst }`,
   * or `{ kind: "anonymous" }`. On a bad token answers 401 (or 403 for a suspended installation) and returns null.
   */
  function githubCaller(req, res, ctx) {
    if (!req.headers.authorization) return { kind: "anonymous" };
    const token = bearer(req, ["bearer", "token"]);
    const unauthorized = (reason) => {
      ctx.reason = reason;
      githubError(res, 401, "Bad credentials");
      return null;
    };
    if (!token) return unauthorized("Authorization is not Bearer/token");
    if (token.startsWith("ghu_")) {
      const grant = state.githubUserGrants.find((g) => g.access_token === token);
      if (!grant) return unauthorized("unknown user token");
      const st = accessState(grant);
      if (st !== "active") return unauthorized(`user token ${st}`);
      const user = state.githubUsers.get(grant.user_id);
      if (!user) return unauthorized("user no longer exists");
      return { kind: "user", grant, user };
    }
    const record = state.githubTokens.get(token);
    const inst = record && state.installations.get(record.installation_id);
    if (!record || !inst || Date.now() >= record.expiresAtMs) {
      return unauthorized(!record ? "unknown token" : !inst ? "installation deleted" : "token expired");
    }
    if (inst.suspended_at) {
      ctx.reason = "installation suspended";
      githubError(res, 403, "This installation has been suspended");
      return null;
    }
    return { kind: "installation", record, inst };
  }

  function githubAuthenticatedUser(req, res, ctx) {
    const caller = githubCaller(req, res, ctx);
    if (!caller) return;
    if (caller.kind === "anonymous") {
      ctx.reason = "no Authorization";
      return githubError(res, 401, "Requires authentication", DOCS.authenticatedUser);
    }
    if (caller.kind === "installation") {
      ctx.reason = "installation token on /user";
      return githubError(res, 403, "Resource not accessible by integration", DOCS.authenticatedUser);
    }
    send(res, 200, githubUserObject(caller.user), githubHeaders());
  }

  /**
   * Whether GitHub user `user` may access installation `inst`: the account's own user for a
   * User installation, and whoever the installation was given to (`users`, `grantInstallationAccess`).
   */
  const canAccess = (user, inst) =>
    inst.users.has(user.id) || (inst.type === "User" && inst.login.toLowerCase() === user.login.toLowerCase());

  function githubUserInstallations(req, res, ctx, url) {
    const caller = githubCaller(req, res, ctx);
    if (!caller) return;
    if (caller.kind === "anonymous") {
      ctx.reason = "no Authorization";
      return githubError(res, 401, "Requires authentication", DOCS.userInstallations);
    }
    if (caller.kind === "installation") {
      ctx.reason = "installation token on /user/installations";
      return githubError(res, 403, "Resource not accessible by integration", DOCS.userInstallations);
    }
    const visible = [...state.installations.values()].filter((inst) => canAccess(caller.user, inst)).sort((a, b) => a.id - b.id);
    const { perPage, page } = pageParams(url.searchParams, { defaultPerPage: 30, maxPerPage: 100 });
    const pages = Math.ceil(visible.length / perPage);
    const headers = githubHeaders();
    const link = linkHeader(base, url.pathname, url.searchParams, page, pages, ["prev", "next", "last", "first"]);
    if (link) headers.link = link;
    send(res, 200, {
      total_count: visible.length,
      installations: visible.slice((page - 1) * perPage, page * perPage).map(installationObject),
    }, headers);
  }

  function githubGetRepo(req, res, ctx, owner, name) {
    const caller = githubCaller(req, res, ctx);
    if (!caller) return;
    const found = findRepo(owner, name);
    const notFound = (reason) => {
      ctx.reason = reason;
      return githubError(res, 404, "Not Found", DOCS.getRepo);
    };
    if (caller.kind === "user") {
      const access = caller.user.repos.get(`${owner}/${name}`.toLowerCase());
      if (!access || !found) return notFound(`user ${caller.user.login} has no access to ${owner}/${name}`);
      return send(res, 200, fullRepositoryObject(found.owner, found.repo, access), githubHeaders());
    }
    if (caller.kind === "installation") {
      const { record, inst } = caller;
      const visible = found && found.inst === inst && (!record.repository_ids || record.repository_ids.includes(found.repo.id));
      if (!visible) return notFound(`installation ${inst.id} token cannot see ${owner}/${name}`);
      return send(res, 200, fullRepositoryObject(found.owner, found.repo, null), githubHeaders());
    }
    if (!found || found.repo.private) return notFound(`anonymous request for ${found ? "private" : "unknown"} ${owner}/${name}`);
    send(res, 200, fullRepositoryObject(found.owner, found.repo, null), githubHeaders());
  }

  async function githubDeleteGrant(req, res, ctx, clientId) {
    const text = await readBody(req);
    const basic = /^Basic\s+(\S+)\s*$/i.exec(req.headers.authorization ?? "");
    let id = null, secret = null;
    if (basic) {
      const decoded = Buffer.from(basic[1], "base64").toString("utf8");
      const i = decoded.indexOf(":");
      if (i >= 0) [id, secret] = [decoded.slice(0, i), decoded.slice(i + 1)];
    }
    if (!basic) {
      ctx.reason = "no Basic client credentials";
      return githubError(res, 401, "Requires authentication", DOCS.deleteGrant);
    }
    if (githubClientId === undefined || id !== githubClientId || secret !== githubClientSecret) {
      ctx.reason = "bad Basic client credentials";
      return githubError(res, 401, "Bad credentials", DOCS.deleteGrant);
    }
    if (clientId !== githubClientId) {
      ctx.reason = "client_id in the path is not the authenticated client";
      return githubError(res, 404, "Not Found", DOCS.deleteGrant);
    }
    let body;
    try {
      body = JSON.parse(text || "null");
    } catch {
      ctx.reason = "body is not JSON";
      return githubError(res, 400, "Problems parsing JSON", DOCS.deleteGrant);
    }
    if (body === null || typeof body !== "object" || typeof body.access_token !== "string") {
      ctx.reason = "access_token missing";
      return githubError(res, 422, "Invalid request.\n\n\"access_token\" wasn't supplied.", DOCS.deleteGrant);
    }
    const grant = state.githubUserGrants.find((g) => g.access_token === body.access_token);
    // Only a valid token identifies the grant: unknown, revoked or expired tokens are 404.
    if (!grant || accessState(grant) !== "active") {
      ctx.reason = !grant ? "unknown access token" : `access token ${accessState(grant)}`;
      return githubError(res, 404, "Not Found", DOCS.deleteGrant);
    }
    revokeGrant(grant.user_id, "grant_delete");
    res.writeHead(204, githubHeaders());
    res.end();
  }

  // ---------------------------------------------------------------- GitLab routes

  const oauthError = (res, status, error, error_description) =>
    send(res, status, { error, error_description }, { ...gitlabNoStore, ...(status === 401 ? { "www-authenticate": `Bearer realm="Doorkeeper", error="${error}", error_description="${error_description}"` } : {}) });

  async function gitlabToken(req, res, ctx, url) {
    const text = await readBody(req);
    const type = (req.headers["content-type"] ?? "").split(";")[0].trim().toLowerCase();
    let params = {};
    if (type === "application/json") {
      try {
        params = JSON.parse(text || "{}");
      } catch {
        ctx.key = "gitlab.token.invalid";
        return oauthError(res, 400, "invalid_request", "The request is missing a required parameter, includes an unsupported parameter value, or is otherwise malformed.");
      }
      if (params === null || typeof params !== "object" || Array.isArray(params)) params = {};
    } else {
      params = Object.fromEntries(new URLSearchParams(text));
    }
    // Doorkeeper also reads parameters from the query string and client credentials from Basic auth.
    for (const [k, v] of url.searchParams) params[k] ??= v;
    const basic = /^Basic\s+(\S+)$/i.exec(req.headers.authorization ?? "");
    if (basic) {
      const decoded = Buffer.from(basic[1], "base64").toString("utf8");
      const i = decoded.indexOf(":");
      if (i >= 0) {
        params.client_id ??= decodeURIComponent(decoded.slice(0, i));
        params.client_secret ??= decodeURIComponent(decoded.slice(i + 1));
      }
    }
    const grant = String(params.grant_type ?? "");
    ctx.key = grant === "authorization_code" || grant === "refresh_token" ? `gitlab.token.${grant}` : "gitlab.token.invalid";
    if (!grant) {
      return oauthError(res, 400, "invalid_request", "Missing required parameter: grant_type.");
    }
    if (grant !== "authorization_code" && grant !== "refresh_token") {
      return oauthError(res, 400, "unsupported_grant_type", "The authorization grant type is not supported by the authorization server.");
    }
    if (gitlabClientId === undefined || params.client_id !== gitlabClientId || params.client_secret !== gitlabClientSecret) {
      ctx.reason = "bad client credentials";
      return oauthError(res, 401, "invalid_client", "Client authentication failed due to unknown client, no client authentication included, or unsupported authentication method.");
    }
    const invalidGrant = (reason) => {
      ctx.reason = reason;
      return oauthError(res, 400, "invalid_grant", "The provided authorization grant is invalid, expired, revoked, does not match the redirection URI used in the authorization request, or was issued to another client.");
    };
    const now = Date.now();
    let userId, scope, parent = null;
    if (grant === "authorization_code") {
      if (!params.code) return oauthError(res, 400, "invalid_request", "Missing required parameter: code.");
      const code = state.gitlabCodes.get(String(params.code));
      if (!code) return invalidGrant("unknown code");
      if (code.used) return invalidGrant("code already used");
      if (now > code.expiresAtMs) return invalidGrant("code expired");
      if (code.redirect_uri !== undefined && params.redirect_uri !== code.redirect_uri) return invalidGrant("redirect_uri does not match");
      if (code.code_challenge !== undefined) {
        const verifier = params.code_verifier;
        if (!verifier) return oauthError(res, 400, "invalid_request", "Missing required parameter: code_verifier.");
        const computed = code.code_challenge_method === "plain" ? verifier : createHash("sha256").update(String(verifier)).digest("base64url");
        if (computed !== code.code_challenge) return invalidGrant("code_verifier does not match code_challenge");
      }
      code.used = true;
      userId = code.user_id;
      scope = code.scope;
    } else {
      if (!params.refresh_token) return oauthError(res, 400, "invalid_request", "Missing required parameter: refresh_token.");
      parent = state.gitlabGrants.find((g) => g.refresh_token === String(params.refresh_token));
      if (!parent) return invalidGrant("unknown refresh token");
      if (parent.refresh_state !== "active") return invalidGrant(`refresh token already ${parent.refresh_state}`);
      // Rotation: the used refresh token is dead, and so is the access token issued with it.
      parent.refresh_state = "used";
      parent.access_state = "revoked";
      userId = parent.user_id;
      scope = parent.scope;
    }
    const grantRecord = {
      access_token: randomBytes(32).toString("hex"),
      refresh_token: randomBytes(32).toString("hex"),
      user_id: userId,
      scope,
      via: grant,
      parent_refresh_token: parent ? parent.refresh_token : null,
      access_state: "active",
      refresh_state: "active",
      created_at: Math.floor(now / 1000),
      expires_in: state.ttl.gitlab,
      expiresAtMs: now + state.ttl.gitlab * 1000,
    };
    state.gitlabGrants.push(grantRecord);
    if (parent) parent.replaced_by = grantRecord.refresh_token;
    send(res, 200, {
      access_token: grantRecord.access_token,
      token_type: "Bearer",
      expires_in: grantRecord.expires_in,
      refresh_token: grantRecord.refresh_token,
      scope,
      created_at: grantRecord.created_at,
    }, gitlabNoStore);
  }

  /** The user of the request's OAuth access token; on failure answers 401 and returns null. */
  function requireGitlabUser(req, res, ctx, url) {
    const token = bearer(req, ["bearer"]) ?? url.searchParams.get("access_token");
    const g = token && state.gitlabGrants.find((x) => x.access_token === token);
    const unauthorized = (reason, body = { message: "401 Unauthorized" }) => {
      ctx.reason = reason;
      send(res, 401, body, body.error ? { "www-authenticate": `Bearer realm="", error="invalid_token", error_description="${body.error_description}"` } : {});
      return null;
    };
    if (!token) return unauthorized("no access token");
    if (!g) return unauthorized("unknown access token");
    // GitLab's own answers for a revoked or an expired OAuth token (still 401).
    if (g.access_state === "revoked") {
      return unauthorized("access token revoked", { error: "invalid_token", error_description: "Token was revoked. You have to re-authorize from the user." });
    }
    if (Date.now() >= g.expiresAtMs) {
      return unauthorized("access token expired", { error: "invalid_token", error_description: "Token is expired. You can either do re-authorization or token refresh." });
    }
    return state.gitlabUsers.get(g.user_id);
  }

  function gitlabUser(req, res, ctx, url) {
    const entry = requireGitlabUser(req, res, ctx, url);
    if (entry) send(res, 200, gitlabUserObject(entry.user));
  }

  function gitlabProjects(req, res, ctx, url) {
    const entry = requireGitlabUser(req, res, ctx, url);
    if (!entry) return;
    const q = url.searchParams;
    const truthy = (v) => v === "true" || v === "1";
    let list = [...entry.projects];
    const search = q.get("search");
    if (search) {
      const s = search.toLowerCase();
      const inNamespaces = truthy(q.get("search_namespaces"));
      list = list.filter((p) =>
        p.name.toLowerCase().includes(s) ||
        p.path_with_namespace.split("/").at(-1).toLowerCase().includes(s) ||
        (inNamespaces && p.path_with_namespace.toLowerCase().includes(s)));
    }
    if (q.get("visibility")) list = list.filter((p) => p.visibility === q.get("visibility"));
    const orderBy = q.get("order_by") ?? "created_at";
    const key = { id: (p) => p.id, name: (p) => p.name.toLowerCase(), path: (p) => p.path_with_namespace.split("/").at(-1).toLowerCase() }[orderBy] ?? ((p) => p.id);
    const dir = (q.get("sort") ?? (orderBy === "name" || orderBy === "path" ? "asc" : "desc")) === "asc" ? 1 : -1;
    list.sort((a, b) => (key(a) < key(b) ? -dir : key(a) > key(b) ? dir : 0));
    const { perPage, page } = pageParams(q, { defaultPerPage: 20, maxPerPage: 100 });
    const pages = Math.max(1, Math.ceil(list.length / perPage));
    const slice = list.slice((page - 1) * perPage, page * perPage);
    const headers = {
      "x-page": String(page),
      "x-per-page": String(perPage),
      "x-next-page": page < pages ? String(page + 1) : "",
      "x-prev-page": page > 1 ? String(Math.min(page - 1, pages)) : "",
      "x-total": String(list.length),
      "x-total-pages": String(pages),
    };
    const lq = new URLSearchParams(q);
    lq.delete("access_token");
    const at = (p) => {
      const x = new URLSearchParams(lq);
      x.set("page", String(p));
      x.set("per_page", String(perPage));
      return `<${base}${url.pathname}?${x}>`;
    };
    const links = [];
    if (page > 1) links.push(`${at(Math.min(page - 1, pages))}; rel="prev"`);
    if (page < pages) links.push(`${at(page + 1)}; rel="next"`);
    links.push(`${at(1)}; rel="first"`, `${at(pages)}; rel="last"`);
    headers.link = links.join(", ");
    send(res, 200, slice.map((p) => gitlabProjectObject(p, entry.user, truthy(q.get("simple")))), headers);
  }

  // ---------------------------------------------------------------- dispatch

  async function route(req, res, ctx) {
    const url = new URL(req.url, base);
    const p = url.pathname.replace(/\/+$/, "") || "/";
    let m;
    if (req.method === "GET" && (m = /^\/app\/installations\/(\d+)$/.exec(p))) {
      ctx.key = "github.installation";
      return githubGetInstallation(req, res, ctx, Number(m[1]));
    }
    if (req.method === "POST" && (m = /^\/app\/installations\/(\d+)\/access_tokens$/.exec(p))) {
      ctx.key = "github.access_tokens";
      return githubAccessTokens(req, res, ctx, Number(m[1]));
    }
    if (req.method === "GET" && p === "/installation/repositories") {
      ctx.key = "github.installation_repositories";
      return githubInstallationRepositories(req, res, ctx, url);
    }
    if (req.method === "POST" && p === "/login/oauth/access_token") {
      ctx.key = "github.oauth.invalid"; // github.oauth.code / github.oauth.refresh once a token is issued
      return githubOAuthToken(req, res, ctx, url);
    }
    if (req.method === "GET" && p === "/user") {
      ctx.key = "github.user";
      return githubAuthenticatedUser(req, res, ctx);
    }
    if (req.method === "GET" && p === "/user/installations") {
      ctx.key = "github.user_installations";
      return githubUserInstallations(req, res, ctx, url);
    }
    if (req.method === "GET" && (m = /^\/repos\/([^/]+)\/([^/]+)$/.exec(p))) {
      ctx.key = "github.repo";
      return githubGetRepo(req, res, ctx, decodeURIComponent(m[1]), decodeURIComponent(m[2]));
    }
    if (req.method === "DELETE" && (m = /^\/applications\/([^/]+)\/grant$/.exec(p))) {
      ctx.key = "github.grant_delete";
      return githubDeleteGrant(req, res, ctx, decodeURIComponent(m[1]));
    }
    if (req.method === "POST" && p === "/oauth/token") {
      ctx.key = "gitlab.token.invalid"; // refined to gitlab.token.<grant_type> once the body is read
      return gitlabToken(req, res, ctx, url); // counts under gitlab.token.<grant_type>
    }
    if (req.method === "GET" && p === "/api/v4/user") {
      ctx.key = "gitlab.user";
      return gitlabUser(req, res, ctx, url);
    }
    if (req.method === "GET" && p === "/api/v4/projects") {
      ctx.key = "gitlab.projects";
      return gitlabProjects(req, res, ctx, url);
    }
    ctx.key = "unknown";
    if (p.startsWith("/api/v4/") || p.startsWith("/oauth/")) return send(res, 404, { error: "404 Not Found" });
    return githubError(res, 404, "Not Found");
  }

  /** The git host's verdict on a request: GitHub's rules for installation and user tokens. */
  function authorizeGit(request) {
    const verdict = decideGit(request);
    const { owner, repo, service, password } = request;
    // Whose credential it was, for tests to read (never the token itself).
    const grant = password?.startsWith("ghu_") && state.githubUserGrants.find((g) => g.access_token === password);
    const record = !grant && password && state.githubTokens.get(password);
    const as = grant ? `user:${grant.user_id}` : record ? `installation:${record.installation_id}` : null;
    state.gitAuth.push({ owner, repo, service, as, verdict });
    return verdict;
  }
  function decideGit({ owner, repo, service, username, password }) {
    const found = findRepo(owner, repo);
    if (!found || !password) return false;
    const push = service === "git-receive-pack";
    if (password.startsWith("ghu_")) {
      const grant = state.githubUserGrants.find((g) => g.access_token === password);
      const user = grant && accessState(grant) === "active" && state.githubUsers.get(grant.user_id);
      const access = user && user.repos.get(`${owner}/${repo}`.toLowerCase());
      if (!access) return false;
      return !push || access.push ? true : "forbidden";
    }
    const record = state.githubTokens.get(password);
    const inst = record && state.installations.get(record.installation_id);
    if (username !== "x-access-token" || !record || !inst || Date.now() >= record.expiresAtMs) return false;
    if (inst.suspended_at) return "forbidden";
    if (found.inst !== inst || (record.repository_ids && !record.repository_ids.includes(found.repo.id))) return false;
    return !push || record.permissions.contents === "write" ? true : "forbidden";
  }
  const gitHost = await startGitHost({
    authorize: authorizeGit,
    defaultBranch: (owner, repo) => findRepo(owner, repo)?.repo.default_branch ?? null,
  });

  const server = createServer(async (req, res) => {
    const started = Date.now();
    const ctx = { key: null, reason: undefined };
    // One request per connection: a pooled connection the worker reuses just as this server
    // times it out fails the worker's call with "connection lost" (a one-time OAuth code is
    // then spent on nothing), a race of the test rig, not of GitHub.
    res.setHeader("connection", "close");
    try {
      if (state.latencyMs > 0) await sleep(state.latencyMs);
      await route(req, res, ctx);
    } catch (e) {
      ctx.reason = `stand-in error: ${e.message}`;
      if (!res.headersSent) send(res, 500, { message: "Server Error" });
      else res.destroy();
    }
    count(ctx.key ?? "unknown");
    state.log.push({
      at: new Date(started).toISOString(),
      method: req.method,
      path: new URL(req.url, "http://x").pathname,
      key: ctx.key ?? "unknown",
      status: res.statusCode,
      ms: Date.now() - started,
      ...(ctx.reason ? { reason: ctx.reason } : {}),
    });
  });
  await new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", resolve);
  });
  base = `http://127.0.0.1:${server.address().port}`;

  // ---------------------------------------------------------------- control API

  return {
    url: base,
    /** The git host's origin (`https://127.0.0.1:<port>`), its certificate, and its log. */
    gitUrl: gitHost.url,
    gitCaFile: gitHost.caFile,
    gitLog: () => gitHost.log(),
    /** Whose credential each git request carried: { owner, repo, service, as, verdict } (no token). */
    gitAuth: () => state.gitAuth.slice(),
    /** The bare repository of owner/name on the git host (made on first use). */
    gitRepoPath: (owner, name) => gitHost.ensureRepo(owner, name, findRepo(owner, name)?.repo.default_branch ?? "main"),
    async stop() {
      server.closeAllConnections?.();
      await new Promise((r) => server.close(() => r()));
      await gitHost.stop();
    },

    /** Calls per route key (one number with `key`, else an object of all counts). */
    calls(key) {
      if (key !== undefined) return state.counts.get(key) ?? 0;
      return Object.fromEntries(state.counts);
    },
    resetCalls() {
      state.counts.clear();
    },
    /** Every request: { at, method, path, key, status, ms, reason? } (no query strings, no secrets). */
    log() {
      return state.log.map((e) => ({ ...e }));
    },

    /**
     * Adds (or replaces) an installation of the App. Repositories get GitHub-like ids.
     * @param {{ id: number, login: string, type?: "User"|"Organization", repos?: {name: string, private?: boolean, default_branch?: string, id?: number, description?: string}[],
     *   repository_selection?: "all"|"selected", permissions?: object, events?: string[], account_id?: number,
     *   users?: number[] }} inst  users: GitHub user ids (addGithubUser) that may access it, as an org's
     *   admins may; a User installation is always accessible to the user whose login it carries.
     */
    addInstallation({ id, login, type = "User", repos = [], repository_selection = "selected", permissions = DEFAULT_PERMISSIONS, events = DEFAULT_EVENTS, account_id, users = [] }) {
      if (!Number.isInteger(id) || id <= 0) throw new TypeError("addInstallation: id must be a positive integer");
      if (!login) throw new TypeError("addInstallation: login is required");
      if (type !== "User" && type !== "Organization") throw new TypeError('addInstallation: type must be "User" or "Organization"');
      const created = isoSeconds(Date.now());
      const record = {
        id,
        login,
        type,
        accountId: account_id ?? state.nextAccountId++,
        repository_selection,
        permissions: { ...permissions },
        events: [...events],
        created_at: created,
        updated_at: created,
        suspended_at: null,
        users: new Set(users),
        repos: repos.map((r) => ({
          id: r.id ?? state.nextRepoId++,
          name: r.name,
          private: r.private ?? true,
          default_branch: r.default_branch ?? "main",
          description: r.description ?? null,
          created_at: created,
        })),
      };
      state.installations.set(id, record);
      return installationObject(record);
    },
    /** Lets GitHub user `userId` access installation `id` (it then shows in their GET /user/installations). */
    grantInstallationAccess(id, userId) {
      const inst = state.installations.get(id);
      if (!inst) throw new Error(`no installation ${id}`);
      inst.users.add(userId);
    },
    suspendInstallation(id) {
      const inst = state.installations.get(id);
      if (!inst) throw new Error(`no installation ${id}`);
      inst.suspended_at = isoSeconds(Date.now());
      inst.updated_at = inst.suspended_at;
    },
    unsuspendInstallation(id) {
      const inst = state.installations.get(id);
      if (!inst) throw new Error(`no installation ${id}`);
      inst.suspended_at = null;
      inst.updated_at = isoSeconds(Date.now());
    },
    /** Removes the installation; its tokens stop working (401). */
    deleteInstallation(id) {
      return state.installations.delete(id);
    },

    /**
     * Adds (or replaces; tokens survive) a GitHub user for the App's user-to-server flow. `repos` maps
     * "owner/name" to that user's access: { admin?, maintain?, push?, triage?, pull? } (a listed repo
     * is always pullable; admin implies maintain, maintain push, push triage), plus optional repo
     * attributes { private? (true), default_branch? ("main"), id?, description? } used when no
     * installation holds that repository. Unlisted repositories are 404 for the user.
     * Returns the user as GET /user shows it.
     * @param {{ id: number, login: string, name?: string|null, email?: string|null, repos?: Record<string, object> }} user
     */
    addGithubUser({ id, login, name = null, email = null, repos = {} }) {
      if (!Number.isInteger(id) || id <= 0) throw new TypeError("addGithubUser: id must be a positive integer");
      if (!login || typeof login !== "string") throw new TypeError("addGithubUser: login is required");
      if (repos === null || typeof repos !== "object" || Array.isArray(repos)) throw new TypeError('addGithubUser: repos must be an object like { "owner/name": { push: true } }');
      const access = new Map();
      for (const [full, r = {}] of Object.entries(repos)) {
        const parts = full.split("/");
        if (parts.length !== 2 || !parts[0] || !parts[1]) throw new TypeError(`addGithubUser: repo key ${JSON.stringify(full)} is not "owner/name"`);
        const admin = r.admin === true;
        const maintain = admin || r.maintain === true;
        const push = maintain || r.push === true;
        const triage = push || r.triage === true;
        access.set(full.toLowerCase(), { admin, maintain, push, triage, pull: true });
        const key = full.toLowerCase();
        if (!state.githubRepos.has(key)) {
          state.githubRepos.set(key, {
            id: r.id ?? state.nextRepoId++,
            owner: parts[0],
            name: parts[1],
            private: r.private ?? true,
            default_branch: r.default_branch ?? "main",
            description: r.description ?? null,
            created_at: isoSeconds(Date.now()),
          });
        }
      }
      const existing = state.githubUsers.get(id);
      const user = { id, login, name, email, created_at: existing?.created_at ?? isoSeconds(Date.now()), repos: access };
      state.githubUsers.set(id, user);
      return githubUserObject(user);
    },
    /**
     * Registers an authorization code for `user_id` (added with addGithubUser), as GitHub's
     * authorize step would have redirected with. Single use; expires after `expires_in` seconds
     * (default 600). With `redirect_uri`, the token request must send the same one. Returns the code.
     * @param {{ code?: string, user_id: number, redirect_uri?: string, expires_in?: number }} opts
     */
    issueGithubUserCode({ code = randomBytes(10).toString("hex"), user_id, redirect_uri, expires_in = GITHUB_CODE_TTL_S }) {
      if (!state.githubUsers.has(user_id)) throw new TypeError(`issueGithubUserCode: no GitHub user ${user_id} (call addGithubUser first)`);
      state.githubUserCodes.set(code, { user_id, redirect_uri, used: false, expiresAtMs: Date.now() + expires_in * 1000 });
      return code;
    },
    /**
     * Lifetime in seconds of user access tokens issued from now on (default 28800), and optionally
     * of their refresh tokens (default 15897600).
     */
    setUserTokenTtl(seconds, refreshSeconds) {
      if (seconds !== undefined) state.ttl.githubUser = seconds;
      if (refreshSeconds !== undefined) state.ttl.githubRefresh = refreshSeconds;
    },
    /**
     * As if the user revoked the App in their GitHub settings: every access and refresh token of
     * theirs dies (and unexchanged codes). Returns how many token pairs were still alive.
     */
    revokeUserGrant(user_id) {
      return revokeGrant(user_id, "user");
    },
    /**
     * Issued user-to-server tokens, in issue order: [{ access_token, refresh_token, user_id,
     * via ("authorization_code"|"refresh_token"), parent_refresh_token, replaced_by?,
     * access_state ("active"|"revoked"|"expired"), refresh_state ("active"|"used"|"revoked"|"expired"),
     * revoked_by? ("grant_delete"|"user"), created_at, expires_in, refresh_token_expires_in,
     * expires_at, refresh_token_expires_at }].
     */
    githubUserTokens() {
      const now = Date.now();
      return state.githubUserGrants.map(({ expiresAtMs, refreshExpiresAtMs, ...g }) => ({
        ...g,
        access_state: accessState({ ...g, expiresAtMs }, now),
        refresh_state: refreshState({ ...g, refreshExpiresAtMs }, now),
      }));
    },

    /**
     * Registers a GitLab authorization code, as the authorize step would have redirected with.
     * `projects` (if given) replaces the user's project list. Optional: `redirect_uri` (then the
     * token call must send the same), `code_challenge` + `code_challenge_method` ("S256" default,
     * or "plain") for PKCE, `scope` (default "api").
     */
    issueGitlabCode({ code = randomBytes(32).toString("hex"), user, projects, redirect_uri, code_challenge, code_challenge_method = "S256", scope = "api" }) {
      if (!user || !Number.isInteger(user.id) || !user.username) throw new TypeError("issueGitlabCode: user {id, username} is required");
      const existing = state.gitlabUsers.get(user.id);
      const created = existing?.user.created_at ?? isoSeconds(Date.now());
      const u = {
        id: user.id,
        username: user.username,
        name: user.name ?? user.username,
        email: user.email ?? `${user.username}@example.com`,
        created_at: created,
      };
      let list = existing?.projects ?? [];
      if (projects) {
        list = projects.map((p) => {
          if (!p.path_with_namespace || !p.path_with_namespace.includes("/")) throw new TypeError("issueGitlabCode: each project needs path_with_namespace like group/name");
          return {
            id: p.id ?? state.nextProjectId++,
            name: p.name ?? p.path_with_namespace.split("/").at(-1),
            path_with_namespace: p.path_with_namespace,
            default_branch: p.default_branch ?? "main",
            visibility: p.visibility ?? "private",
            description: p.description ?? null,
            namespace_id: state.nextNamespaceId++,
            created_at: isoSeconds(Date.now()),
          };
        });
      }
      state.gitlabUsers.set(user.id, { user: u, projects: list });
      state.gitlabCodes.set(code, {
        user_id: user.id,
        redirect_uri,
        code_challenge,
        code_challenge_method,
        scope,
        used: false,
        expiresAtMs: Date.now() + GITLAB_CODE_TTL_S * 1000,
      });
      return code;
    },

    /** Lifetimes of tokens issued from now on, in seconds (GitHub default 3600, GitLab 7200). */
    setTokenTtl({ github, gitlab } = {}) {
      if (github !== undefined) state.ttl.github = github;
      if (gitlab !== undefined) state.ttl.gitlab = gitlab;
    },
    /** Delays every answer by `ms`. */
    setLatency(ms) {
      state.latencyMs = ms;
    },

    /** The last App JWT that passed verification: { header, claims }, or null. */
    lastAppJwt() {
      return state.lastAppJwt && structuredClone(state.lastAppJwt);
    },
    /**
     * Issued tokens. github: [{ token, installation_id, repositories (names, null = unscoped),
     * repository_ids, repository_selection, permissions, created_at, expires_at, expired }].
     * gitlab: [{ access_token, refresh_token, user_id, scope, via, parent_refresh_token,
     * replaced_by?, access_state ("active"|"revoked"|"expired"), refresh_state ("active"|"used"),
     * created_at, expires_in }], in issue order.
     */
    tokens() {
      const now = Date.now();
      return {
        github: [...state.githubTokens.values()].map(({ expiresAtMs, ...t }) => ({ ...structuredClone(t), expired: now >= expiresAtMs })),
        gitlab: state.gitlabGrants.map(({ expiresAtMs, ...g }) => ({
          ...g,
          access_state: g.access_state === "active" && now >= expiresAtMs ? "expired" : g.access_state,
        })),
      };
    },
  };
}

let examples;
/**
 * A real example payload from @octokit/webhooks-examples, e.g. ("installation", "deleted"),
 * ("installation", "suspend"), ("github_app_authorization", "revoked"); a fresh copy each call.
 * `action` may be omitted for events without one (e.g. "push"). `index` picks among several.
 */
export function webhookPayload(name, action, { index = 0 } = {}) {
  examples ??= createRequire(import.meta.url)("@octokit/webhooks-examples");
  const event = examples.find((e) => e.name === name);
  if (!event) throw new Error(`no webhook example for event ${JSON.stringify(name)}`);
  const matching = event.examples.filter((e) => action === undefined || e.action === action);
  if (!matching[index]) throw new Error(`no webhook example for ${name}${action ? `.${action}` : ""} (#${index}); actions: ${event.actions?.join(", ")}`);
  return structuredClone(matching[index]);
}

/** GitHub's X-Hub-Signature-256 value for a webhook body: `sha256=<hex HMAC-SHA256>`. */
export function signWebhook(secret, body) {
  return `sha256=${createHmac("sha256", secret).update(body).digest("hex")}`;
}
