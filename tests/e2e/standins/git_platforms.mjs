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
// GitHub pull requests (REST 2022-11-28; any token that GET /repos/{owner}/{repo} lets see the
// repository, 404 otherwise, 401 for a bad token; writes: an installation token needs
// pull_requests: write to create and contents: write to merge, else 403 "Resource not accessible
// by integration"; a user token needs push access, else 403; anonymous writes are 401):
//   GET  /repos/{o}/{r}/pulls ?state=open|closed|all&head=<owner>:<branch>&base=&sort=&direction=&per_page=&page=
//                                             -> [pull-request-simple] newest first (+ Link header)
//   POST /repos/{o}/{r}/pulls {title, head ("branch" | "owner:branch"), base, body?, draft?}
//                                             -> 201 pull-request | 422 Validation Failed (head/base
//                                                invalid, "A pull request already exists for o:b.",
//                                                "No commits between <base> and <head>", title missing)
//   GET  /repos/{o}/{r}/pulls/{n}             -> pull-request (head.sha: the branch's tip while open)
//   GET  /repos/{o}/{r}/pulls/{n}/reviews     -> [pull-request-review]
//   GET  /repos/{o}/{r}/pulls/{n}/comments    -> [pull-request-review-comment]
//   PUT  /repos/{o}/{r}/pulls/{n}/merge {commit_title?, commit_message?, merge_method?, sha?}
//                                             -> {sha, merged, message} (a real merge in the bare
//                                                repository) | 405 not mergeable | 409 head moved
//   GET  /repos/{o}/{r}/commits/{ref}/check-runs  (ref: sha, branch or tag) -> {total_count, check_runs}
// GitLab:
//   POST /oauth/token          authorization_code | refresh_token (refresh tokens rotate)
//   GET  /api/v4/user          (OAuth access token)
//   GET  /api/v4/projects      (OAuth access token) + X-Page/X-Total/... and Link headers
// GitLab merge requests (OAuth access token of a user who has the project, else 404 "404 Project
// Not Found"; {id}: numeric id or URL-encoded "namespace%2Fproject"; branches are in memory):
//   GET  /api/v4/projects/{id}/merge_requests ?state=opened|closed|merged|locked|all&source_branch=&target_branch=
//                                             -> [merge request] newest first (+ X-Total/Link headers)
//   POST /api/v4/projects/{id}/merge_requests {source_branch, target_branch, title, description?}
//        (JSON or form)                       -> 201 merge request | 400 {"error":"title is missing"}
//                                                | 409 another open MR | 422 branch does not exist
//   GET  /api/v4/projects/{id}/merge_requests/{iid}            -> merge request (with head_pipeline)
//   GET  /api/v4/projects/{id}/merge_requests/{iid}/reviewers  -> [{user, state, created_at}]
//   GET  /api/v4/projects/{id}/merge_requests/{iid}/notes      -> [note] newest first
//
// Controls for pull requests and merge requests (see the returned object): pulls, mergePull,
// closePull, reopenPull, addReview, setCheckRun (each but pulls returns the webhook payload GitHub
// would deliver to the App, built on the @octokit/webhooks-examples example of that event and
// action: its keys, this stand-in's objects; `installation` is always there, as in every App
// delivery, even where the example, a repository webhook's (check_run), has none), and
// pushGitlabBranch, gitlabMergeRequests, mergeGitlabMergeRequest, closeGitlabMergeRequest,
// reviewGitlabMergeRequest, setGitlabPipeline (each but the first two returns GitLab's merge
// request hook payload).
//
// Git (tests/e2e/standins/git_host.mjs): every repository's `clone_url` is on an HTTPS git host
// (smart HTTP, `git http-backend`, a self-signed certificate git trusts through `gitCaFile`) that
// wants `x-access-token` and a live installation token that can see the repository (contents:
// write to push), or a user token of a user with access (push to push), as GitHub does.
//
// Runtime dependencies: node:http, node:crypto, node:child_process (git, no shell), node:fs, and
// git_host.mjs (git, openssl).
// `webhookPayload` loads the npm package @octokit/webhooks-examples (a devDependency) lazily.
import { createServer } from "node:http";
import { createHash, createHmac, createPublicKey, randomBytes, randomInt, verify as verifySignature } from "node:crypto";
import { createRequire } from "node:module";
import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
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
  listPulls: "https://docs.github.com/rest/pulls/pulls#list-pull-requests",
  createPull: "https://docs.github.com/rest/pulls/pulls#create-a-pull-request",
  getPull: "https://docs.github.com/rest/pulls/pulls#get-a-pull-request",
  mergePull: "https://docs.github.com/rest/pulls/pulls#merge-a-pull-request",
  listReviews: "https://docs.github.com/rest/pulls/reviews#list-reviews-for-a-pull-request",
  listReviewComments: "https://docs.github.com/rest/pulls/comments#list-review-comments-on-a-pull-request",
  checkRunsForRef: "https://docs.github.com/rest/checks/runs#list-check-runs-for-a-git-reference",
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
/** Who GitHub's own merge commits are by (author and committer). */
const GITHUB_MERGE_IDENTITY = { GIT_AUTHOR_NAME: "GitHub", GIT_AUTHOR_EMAIL: "noreply@github.com", GIT_COMMITTER_NAME: "GitHub", GIT_COMMITTER_EMAIL: "noreply@github.com" };
const MERGE_METHODS = ["merge", "squash", "rebase"];
const REVIEW_STATES = ["APPROVED", "CHANGES_REQUESTED", "COMMENTED", "DISMISSED"];
const CHECK_STATUSES = ["queued", "in_progress", "completed", "waiting", "requested", "pending"];
const CHECK_CONCLUSIONS = ["action_required", "cancelled", "failure", "neutral", "success", "skipped", "stale", "timed_out"];
const GITLAB_REVIEWER_STATES = ["unreviewed", "reviewed", "requested_changes", "approved", "unapproved"];
const GITLAB_PIPELINE_STATUSES = ["created", "waiting_for_resource", "preparing", "pending", "running", "success", "failed", "canceled", "skipped", "manual", "scheduled"];
/** MergeRequest#state_id, as GitLab's hooks carry it. */
const GITLAB_STATE_IDS = { opened: 1, closed: 2, merged: 3, locked: 4 };
const GITLAB_VISIBILITY_LEVELS = { private: 0, internal: 10, public: 20 };

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

// ---------------------------------------------------------------- git (no shell)

/** Runs git with `args`; returns its trimmed stdout, throws (with `status`) when it fails. */
function git(args, options = {}) {
  return execFileSync("git", args, { encoding: "utf8", stdio: ["pipe", "pipe", "pipe"], ...options }).trim();
}

/** The commit `rev` (a sha, branch or tag) names in the bare repository `gitDir`, or null. */
function resolveCommit(gitDir, rev) {
  if (!rev || rev.startsWith("-")) return null;
  try {
    return git(["--git-dir", gitDir, "rev-parse", "--verify", "--quiet", `${rev}^{commit}`]) || null;
  } catch {
    return null;
  }
}

/** The tip of branch `ref` in the bare repository `gitDir`, or null. */
const branchTip = (gitDir, ref) => (ref ? resolveCommit(gitDir, `refs/heads/${ref}`) : null);

/** Whether `head` merges into `base` without conflicts (`git merge-tree`): true, false, or null if git cannot tell. */
function mergesCleanly(gitDir, baseSha, headSha) {
  if (!baseSha || !headSha) return null;
  try {
    git(["--git-dir", gitDir, "merge-tree", "--write-tree", baseSha, headSha]);
    return true;
  } catch (e) {
    return e.status === 1 ? false : null;
  }
}

/** What a pull request of `headSha` into `baseSha` brings: commits, and the diff's additions, deletions and files. */
function compareStats(gitDir, baseSha, headSha) {
  const none = { commits: 0, additions: 0, deletions: 0, changed_files: 0 };
  if (!baseSha || !headSha) return none;
  try {
    const commits = Number(git(["--git-dir", gitDir, "rev-list", "--count", `${baseSha}..${headSha}`]));
    let additions = 0, deletions = 0, changed_files = 0;
    for (const line of git(["--git-dir", gitDir, "diff", "--numstat", `${baseSha}...${headSha}`]).split("\n").filter(Boolean)) {
      const [a, d] = line.split("\t");
      additions += Number(a) || 0; // "-" for binary files
      deletions += Number(d) || 0;
      changed_files++;
    }
    return { commits, additions, deletions, changed_files };
  } catch {
    return none;
  }
}

/**
 * Merges `headSha` into branch `base` of the bare repository `gitDir` as GitHub's merge button
 * does, in a temporary clone that is pushed back and removed: "merge" (`git merge --no-ff`),
 * "squash" (one commit) or "rebase" (the head's commits replayed, then fast-forwarded). Commits
 * are by GITHUB_MERGE_IDENTITY. Returns `{ sha }` (the new tip of `base`) or `{ conflict: message }`.
 */
function gitMerge(gitDir, { base, headSha, method = "merge", title, message }) {
  const dir = mkdtempSync(join(tmpdir(), "gastown-merge-"));
  const env = { ...process.env, GIT_CONFIG_GLOBAL: "/dev/null", GIT_CONFIG_NOSYSTEM: "1", GIT_TERMINAL_PROMPT: "0", ...GITHUB_MERGE_IDENTITY };
  const run = (args) => git(["-C", dir, ...args], { env });
  const messages = ["-m", title, ...(message ? ["-m", message] : [])];
  try {
    git(["clone", "--quiet", "--no-checkout", gitDir, dir], { env });
    run(["checkout", "--quiet", "-B", base, `origin/${base}`]);
    try {
      if (method === "squash") {
        run(["merge", "--squash", "--quiet", headSha]);
        run(["commit", "--quiet", ...messages]);
      } else if (method === "rebase") {
        run(["checkout", "--quiet", "-B", "gastown-rebase", headSha]);
        run(["rebase", "--quiet", base]);
        run(["checkout", "--quiet", base]);
        run(["merge", "--quiet", "--ff-only", "gastown-rebase"]);
      } else {
        run(["merge", "--no-ff", "--quiet", headSha, ...messages]);
      }
    } catch (e) {
      return { conflict: String(e.stdout || e.stderr || e.message).trim() };
    }
    run(["push", "--quiet", "origin", `HEAD:refs/heads/${base}`]);
    return { sha: run(["rev-parse", "HEAD"]) };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/**
 * Starts the stand-in on loopback: `port` for the API and `gitPort` for the git host (0, the
 * default: free ports).
 * @param {{ appId?: number|string, publicKeyPem?: string, gitlabClientId?: string, gitlabClientSecret?: string,
 *   githubClientId?: string, githubClientSecret?: string }} options  githubClient*: the App's OAuth
 *   client credentials, for the user-to-server flow (/login/oauth/access_token, DELETE grant).
 */
export async function startGitPlatforms({ appId, publicKeyPem, gitlabClientId, gitlabClientSecret, githubClientId, githubClientSecret, port = 0, gitPort = 0 } = {}) {
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
    pulls: new Map(), // lower "owner/name" -> { nextNumber, list: [pull request record] }
    checkRuns: new Map(), // lower "owner/name" -> [check run record]
    nextPullId: 1_900_000_001,
    nextReviewId: 2_100_000_001,
    nextReviewCommentId: 1_600_000_001,
    nextCheckRunId: 28_000_000_001,
    nextCheckSuiteId: 26_000_000_001,
    gitlabRepos: new Map(), // project id -> { branches: Map(name -> commit), mrs: [merge request record], nextIid }
    gitlabActors: new Map(), // lower username -> generated GitLab user (reviewers, mergers) not issued a code
    nextMergeRequestId: 300_000_001,
    nextNoteId: 1_800_000_001,
    nextPipelineId: 1_200_000_001,
    nextGitlabUserId: 7_000_001,
  };
  const count = (key) => state.counts.set(key, (state.counts.get(key) ?? 0) + 1);

  // ---------------------------------------------------------------- GitHub objects

  function accountObject(inst) {
    const { login, accountId: id, type } = inst;
    const api = `${base}/users/${encodeURIComponent(login)}`;
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

  // ---------------------------------------------------------------- GitHub pull request objects

  const botLogin = `${APP_SLUG}[bot]`;
  const botUserId = 150_000_000 + (numericAppId % 50_000_000); // stable for the App, like a real bot account's id
  const repoKey = (found) => `${found.owner.login}/${found.repo.name}`.toLowerCase();
  const fullName = (found) => `${found.owner.login}/${found.repo.name}`;
  /** The bare repository of `found` on the git host (made with its first commit on first use). */
  const repoGitDir = (found) => gitHost.ensureRepo(found.owner.login, found.repo.name, found.repo.default_branch);

  /** A GitHub actor: `{ login, id, type: "User"|"Bot" }`; registered users keep their id, others get a stable one. */
  function githubActor(login) {
    if (login === botLogin) return { login, id: botUserId, type: "Bot" };
    const lower = login.toLowerCase();
    const user = [...state.githubUsers.values()].find((u) => u.login.toLowerCase() === lower);
    if (user) return { login: user.login, id: user.id, type: "User" };
    if (!state.githubOwners.has(lower)) state.githubOwners.set(lower, state.nextAccountId++);
    return { login, id: state.githubOwners.get(lower), type: "User" };
  }
  /** Whoever a REST caller is, as the author of what it creates: the App's bot for installation tokens. */
  const callerActor = (caller) =>
    caller.kind === "user" ? { login: caller.user.login, id: caller.user.id, type: "User" } : { login: botLogin, id: botUserId, type: "Bot" };

  /** GitHub's simple-user for an actor; the App's bot as GitHub shows bots (`/apps/<slug>`, node id `03:Bot`). */
  function actorObject(actor) {
    if (actor.type !== "Bot") return accountObject({ login: actor.login, accountId: actor.id, type: "User" });
    return {
      ...accountObject({ login: actor.login, accountId: actor.id, type: "Bot" }),
      node_id: b64(`03:Bot${actor.id}`),
      avatar_url: `${base}/avatars/in/${numericAppId}?v=4`,
      html_url: `${base}/apps/${APP_SLUG}`,
    };
  }

  /** author_association of `actor` on `found`: OWNER, COLLABORATOR (push access), CONTRIBUTOR, or NONE for bots. */
  function authorAssociation(found, actor) {
    if (actor.type === "Bot") return "NONE";
    if (actor.login.toLowerCase() === found.owner.login.toLowerCase()) return "OWNER";
    const access = state.githubUsers.get(actor.id)?.repos.get(repoKey(found));
    return access?.push ? "COLLABORATOR" : "CONTRIBUTOR";
  }

  /** The `repository` object inside a pull request (no `permissions`); webhooks add `custom_properties`. */
  function pullRepositoryObject(found, { webhook = false } = {}) {
    const out = repositoryObject(found.owner, found.repo);
    delete out.permissions;
    if (webhook) out.custom_properties = {};
    return out;
  }

  /** The pull requests of a repository: `{ nextNumber, list }`. */
  function pullsOf(found) {
    const key = repoKey(found);
    if (!state.pulls.has(key)) state.pulls.set(key, { nextNumber: 1, list: [] });
    return state.pulls.get(key);
  }
  const findPull = (found, number) => pullsOf(found).list.find((pr) => pr.number === number) ?? null;

  /**
   * The head and base commits of a pull request: the branches' tips while it is open (the last
   * ones seen if a branch is gone), frozen when it is closed or merged.
   */
  function pullShas(found, pr) {
    if (pr.frozen) return pr.frozen;
    const gitDir = repoGitDir(found);
    pr.lastHeadSha = branchTip(gitDir, pr.headRef) ?? pr.lastHeadSha;
    pr.lastBaseSha = branchTip(gitDir, pr.baseRef) ?? pr.lastBaseSha;
    return { head: pr.lastHeadSha, base: pr.lastBaseSha };
  }

  /** Check runs recorded for `sha` in `found`. */
  const checkRunsFor = (found, sha) => (state.checkRuns.get(repoKey(found)) ?? []).filter((r) => r.head_sha === sha);

  /**
   * GitHub's pull request: "pull-request-simple" (lists), or with `full` the "pull-request" of a
   * single read (merged, mergeable, counts). `webhook`: repositories as webhooks show them.
   */
  function pullObject(found, pr, { full = false, webhook = false } = {}) {
    const name = fullName(found);
    const api = `${base}/repos/${name}`;
    const html = `${base}/${name}/pull/${pr.number}`;
    const shas = pullShas(found, pr);
    const repo = pullRepositoryObject(found, { webhook });
    const owner = accountObject(found.owner);
    const side = (ref, sha) => ({ label: `${found.owner.login}:${ref}`, ref, sha, user: owner, repo });
    const out = {
      url: `${api}/pulls/${pr.number}`,
      id: pr.id,
      node_id: b64(`011:PullRequest${pr.id}`),
      html_url: html,
      diff_url: `${html}.diff`,
      patch_url: `${html}.patch`,
      issue_url: `${api}/issues/${pr.number}`,
      number: pr.number,
      state: pr.state,
      locked: false,
      title: pr.title,
      user: actorObject(pr.author),
      body: pr.body,
      created_at: pr.created_at,
      updated_at: pr.updated_at,
      closed_at: pr.closed_at,
      merged_at: pr.merged_at,
      merge_commit_sha: pr.merge_commit_sha,
      assignee: null,
      assignees: [],
      requested_reviewers: [],
      requested_teams: [],
      labels: [],
      milestone: null,
      draft: pr.draft,
      commits_url: `${api}/pulls/${pr.number}/commits`,
      review_comments_url: `${api}/pulls/${pr.number}/comments`,
      review_comment_url: `${api}/pulls/comments{/number}`,
      comments_url: `${api}/issues/${pr.number}/comments`,
      statuses_url: `${api}/statuses/${shas.head}`,
      head: side(pr.headRef, shas.head),
      base: side(pr.baseRef, shas.base),
      _links: {
        self: { href: `${api}/pulls/${pr.number}` },
        html: { href: html },
        issue: { href: `${api}/issues/${pr.number}` },
        comments: { href: `${api}/issues/${pr.number}/comments` },
        review_comments: { href: `${api}/pulls/${pr.number}/comments` },
        review_comment: { href: `${api}/pulls/comments{/number}` },
        commits: { href: `${api}/pulls/${pr.number}/commits` },
        statuses: { href: `${api}/statuses/${shas.head}` },
      },
      author_association: authorAssociation(found, pr.author),
      auto_merge: null,
      active_lock_reason: null,
    };
    if (!full) return out;
    const gitDir = repoGitDir(found);
    const open = pr.state === "open";
    const mergeable = open ? mergesCleanly(gitDir, shas.base, shas.head) : null;
    const failing = checkRunsFor(found, shas.head).some((r) => r.status === "completed" && ["failure", "timed_out", "cancelled", "action_required"].includes(r.conclusion));
    const mergeable_state = !open ? "unknown" : pr.draft ? "draft" : mergeable === false ? "dirty" : mergeable === null ? "unknown" : failing ? "unstable" : "clean";
    return {
      ...out,
      merged: pr.merged,
      mergeable,
      rebaseable: mergeable,
      mergeable_state,
      merged_by: pr.merged_by ? actorObject(pr.merged_by) : null,
      comments: 0,
      review_comments: pr.comments.length,
      maintainer_can_modify: false,
      ...compareStats(gitDir, shas.base, shas.head),
    };
  }

  /** GitHub's "pull-request-minimal" (check runs' pull_requests). */
  function pullMinimalObject(found, pr) {
    const api = `${base}/repos/${fullName(found)}`;
    const shas = pullShas(found, pr);
    const repo = { id: found.repo.id, url: api, name: found.repo.name };
    return {
      url: `${api}/pulls/${pr.number}`,
      id: pr.id,
      number: pr.number,
      head: { ref: pr.headRef, sha: shas.head, repo },
      base: { ref: pr.baseRef, sha: shas.base, repo },
    };
  }

  /** GitHub's "pull-request-review"; `webhook`: as the pull_request_review event shows it (lowercase state, null empty body). */
  function reviewObject(found, pr, review, { webhook = false } = {}) {
    const name = fullName(found);
    const html = `${base}/${name}/pull/${pr.number}#pullrequestreview-${review.id}`;
    const prUrl = `${base}/repos/${name}/pulls/${pr.number}`;
    return {
      id: review.id,
      node_id: b64(`017:PullRequestReview${review.id}`),
      user: actorObject(review.user),
      body: webhook && review.body === "" ? null : review.body,
      commit_id: review.commit_id,
      submitted_at: review.submitted_at,
      state: webhook ? review.state.toLowerCase() : review.state,
      html_url: html,
      pull_request_url: prUrl,
      author_association: authorAssociation(found, review.user),
      _links: { html: { href: html }, pull_request: { href: prUrl } },
    };
  }

  /** GitHub's "pull-request-review-comment" (a single-line comment on the RIGHT side). */
  function reviewCommentObject(found, pr, c) {
    const name = fullName(found);
    const api = `${base}/repos/${name}`;
    const html = `${base}/${name}/pull/${pr.number}#discussion_r${c.id}`;
    return {
      url: `${api}/pulls/comments/${c.id}`,
      pull_request_review_id: c.review_id,
      id: c.id,
      node_id: b64(`024:PullRequestReviewComment${c.id}`),
      diff_hunk: c.diff_hunk,
      path: c.path,
      position: c.line,
      original_position: c.line,
      commit_id: c.commit_id,
      original_commit_id: c.commit_id,
      user: actorObject(c.user),
      body: c.body,
      created_at: c.created_at,
      updated_at: c.created_at,
      html_url: html,
      pull_request_url: `${api}/pulls/${pr.number}`,
      author_association: authorAssociation(found, c.user),
      _links: { self: { href: `${api}/pulls/comments/${c.id}` }, html: { href: html }, pull_request: { href: `${api}/pulls/${pr.number}` } },
      start_line: null,
      original_start_line: null,
      start_side: null,
      line: c.line,
      original_line: c.line,
      side: "RIGHT",
      subject_type: "line",
    };
  }

  /** The GitHub Actions App, which the stand-in's check runs come from (GitHub's real id and slug). */
  const actionsApp = () => ({
    id: 15368,
    client_id: "Iv1.05c79e9ad1f6bdfa",
    slug: "github-actions",
    node_id: b64("03:App15368"),
    owner: accountObject({ login: "github", accountId: 9919, type: "Organization" }),
    name: "GitHub Actions",
    description: "Automate your workflow from idea to production",
    external_url: "https://help.github.com/en/actions",
    html_url: `${base}/apps/github-actions`,
    created_at: "2018-07-30T09:30:17Z",
    updated_at: "2024-04-10T20:33:16Z",
    permissions: { actions: "write", checks: "write", contents: "write", metadata: "read", pull_requests: "write", statuses: "write" },
    events: ["check_run", "check_suite", "pull_request", "push"],
  });

  /** GitHub's "check-run"; `webhook`: with the full check_suite the check_run event carries. */
  function checkRunObject(found, run, { webhook = false } = {}) {
    const name = fullName(found);
    const api = `${base}/repos/${name}`;
    const pulls = pullsOf(found).list.filter((pr) => pr.state === "open" && pullShas(found, pr).head === run.head_sha).map((pr) => pullMinimalObject(found, pr));
    const suite = { id: run.suite_id };
    if (webhook) {
      Object.assign(suite, {
        node_id: b64(`010:CheckSuite${run.suite_id}`),
        head_branch: run.head_branch,
        head_sha: run.head_sha,
        status: run.status,
        conclusion: run.conclusion,
        url: `${api}/check-suites/${run.suite_id}`,
        before: null,
        after: run.head_sha,
        pull_requests: pulls,
        app: actionsApp(),
        created_at: run.started_at,
        updated_at: run.completed_at ?? run.started_at,
      });
    }
    return {
      id: run.id,
      name: run.name,
      node_id: b64(`08:CheckRun${run.id}`),
      head_sha: run.head_sha,
      external_id: "",
      url: `${api}/check-runs/${run.id}`,
      html_url: `${base}/${name}/runs/${run.id}`,
      details_url: `${base}/${name}/runs/${run.id}`,
      status: run.status,
      conclusion: run.conclusion,
      started_at: run.started_at,
      completed_at: run.completed_at,
      output: { title: null, summary: null, text: null, annotations_count: 0, annotations_url: `${api}/check-runs/${run.id}/annotations` },
      check_suite: suite,
      app: actionsApp(),
      pull_requests: pulls,
    };
  }

  /** A webhook payload's `organization` object (GitHub's organization-simple). */
  function organizationObject(account) {
    const api = `${base}/orgs/${account.login}`;
    return {
      login: account.login,
      id: account.accountId,
      node_id: b64(`012:Organization${account.accountId}`),
      url: api,
      repos_url: `${api}/repos`,
      events_url: `${api}/events`,
      hooks_url: `${api}/hooks`,
      issues_url: `${api}/issues`,
      members_url: `${api}/members{/member}`,
      public_members_url: `${api}/public_members{/member}`,
      avatar_url: `${base}/avatars/u/${account.accountId}?v=4`,
      description: null,
    };
  }

  /** Keeps exactly `example`'s keys, with this stand-in's values (null where it has none). */
  const shapedLike = (example, ours) => Object.fromEntries(Object.keys(example).map((k) => [k, k in ours ? ours[k] : null]));

  /**
   * A webhook payload GitHub would deliver for `found`: the @octokit/webhooks-examples example of
   * event.action (the one with `organization` for an organization's repository) with this stand-in's
   * objects. `installation` ({id, node_id} of the installation holding the repository) is always
   * there when one does, as in every delivery to an App, and left out when none does.
   */
  function githubWebhook(event, action, found, values) {
    const example = webhookExample(event, action, { organization: found.owner.type === "Organization" });
    const all = {
      action,
      repository: shapedLike(example.repository, pullRepositoryObject(found, { webhook: true })),
      organization: found.owner.type === "Organization" ? organizationObject(found.owner) : undefined,
      installation: found.inst ? { id: found.inst.id, node_id: b64(`023:IntegrationInstallation${found.inst.id}`) } : undefined,
      ...values,
    };
    const out = {};
    for (const key of Object.keys(example)) {
      if (all[key] === undefined) {
        if (key === "installation") continue;
        throw new Error(`stand-in: no value for ${key} of the ${event}.${action} payload`);
      }
      out[key] = all[key];
    }
    if (all.installation && !out.installation) out.installation = all.installation;
    return out;
  }

  /** For the controls: the repository (and pull request `number`, when given); throws for unknown ones. */
  function requirePull(what, owner, repo, number) {
    const found = findRepo(owner, repo);
    if (!found) throw new Error(`${what}: no repository ${owner}/${repo} (addInstallation or addGithubUser first)`);
    if (number === undefined) return { found };
    const pr = findPull(found, number);
    if (!pr) throw new Error(`${what}: no pull request #${number} in ${owner}/${repo}`);
    return { found, pr };
  }

  /** A review comment's diff_hunk: the commented line of `path` at `sha` as an added line. */
  function diffHunk(found, sha, path, line) {
    let text = "";
    try {
      text = git(["--git-dir", repoGitDir(found), "show", `${sha}:${path}`]).split("\n")[line - 1] ?? "";
    } catch {
      text = "";
    }
    return `@@ -${Math.max(0, line - 1)},0 +${line},1 @@\n+${text}`;
  }

  /** The pull_request event's payload for `pr` (`sender`: who did it). */
  function pullRequestWebhook(found, pr, action, sender) {
    const example = webhookExample("pull_request", action, { organization: found.owner.type === "Organization" });
    return githubWebhook("pull_request", action, found, {
      number: pr.number,
      pull_request: shapedLike(example.pull_request, pullObject(found, pr, { full: true, webhook: true })),
      sender: actorObject(sender),
    });
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

  // ---------------------------------------------------------------- GitLab merge request objects

  /** Any user's record of project `id` (for the controls): `{ project, user }` or null. */
  /** A project by numeric id or by its `namespace/project` path (the controls take either). */
  function gitlabProjectById(id) {
    for (const { user, projects } of state.gitlabUsers.values()) {
      const project = projects.find((p) => p.id === id || (typeof id === "string" && p.path_with_namespace === id));
      if (project) return { project, user };
    }
    return null;
  }
  /** One of `entry`'s projects by numeric id or (URL-decoded) path, or null. */
  function gitlabProjectOf(entry, idOrPath) {
    let raw;
    try {
      raw = decodeURIComponent(idOrPath);
    } catch {
      return null; // a malformed %-sequence names no project
    }
    if (/^\d+$/.test(raw)) return entry.projects.find((p) => p.id === Number(raw)) ?? null;
    return entry.projects.find((p) => p.path_with_namespace.toLowerCase() === raw.toLowerCase()) ?? null;
  }
  /** A made-up commit on a GitLab branch: `{ id, message, title, timestamp, author }`. */
  function gitlabCommit(message, author) {
    return { id: randomBytes(20).toString("hex"), message: `${message}\n`, title: message, timestamp: isoSeconds(Date.now()), author };
  }
  /** Branches and merge requests of a GitLab project, made on first use with its default branch. */
  function gitlabRepo(project) {
    if (!state.gitlabRepos.has(project.id)) {
      const branches = new Map([[project.default_branch, gitlabCommit("Initial commit", { name: "Administrator", email: "admin@example.com" })]]);
      state.gitlabRepos.set(project.id, { branches, mrs: [], nextIid: 1 });
    }
    return state.gitlabRepos.get(project.id);
  }
  /** A GitLab user by username: a registered one (issueGitlabCode), else a generated one with a stable id. */
  function gitlabActor(username) {
    const lower = username.toLowerCase();
    for (const { user } of state.gitlabUsers.values()) if (user.username.toLowerCase() === lower) return user;
    if (!state.gitlabActors.has(lower)) {
      state.gitlabActors.set(lower, { id: state.nextGitlabUserId++, username, name: username, email: `${username}@example.com`, created_at: isoSeconds(Date.now()) });
    }
    return state.gitlabActors.get(lower);
  }
  /** The commit a merge request is at: its source branch's tip while open (the last one seen if the branch is gone), frozen after. */
  function gitlabMrCommit(project, mr) {
    if (mr.frozen) return mr.frozen;
    mr.lastCommit = gitlabRepo(project).branches.get(mr.source_branch) ?? mr.lastCommit;
    return mr.lastCommit;
  }
  /** The merge request's head pipeline: the latest one for its current commit, or null. */
  const gitlabHeadPipeline = (project, mr) => mr.pipelines.filter((p) => p.sha === gitlabMrCommit(project, mr).id).at(-1) ?? null;

  /**
   * detailed_merge_status as GitLab words it. The stand-in's projects behave as if "Pipelines must
   * succeed" were on and changes requested blocked merging, so the worker sees every reason.
   */
  function gitlabDetailedStatus(project, mr) {
    if (mr.state !== "opened") return "not_open";
    if (mr.draft) return "draft_status";
    const pipeline = gitlabHeadPipeline(project, mr);
    if (pipeline && ["created", "waiting_for_resource", "preparing", "pending", "running"].includes(pipeline.status)) return "ci_still_running";
    if (pipeline && ["failed", "canceled"].includes(pipeline.status)) return "ci_must_pass";
    if ([...mr.reviewers.values()].some((r) => r.state === "requested_changes")) return "requested_changes";
    return "mergeable";
  }

  /** GitLab's pipeline (Entities::Ci::PipelineBasic, or with `full` Entities::Ci::Pipeline). */
  function gitlabPipelineObject(project, pipeline, { full = false } = {}) {
    const out = {
      id: pipeline.id,
      iid: pipeline.iid,
      project_id: project.id,
      sha: pipeline.sha,
      ref: pipeline.ref,
      status: pipeline.status,
      source: "push",
      created_at: pipeline.created_at,
      updated_at: pipeline.updated_at,
      web_url: `${base}/${project.path_with_namespace}/-/pipelines/${pipeline.id}`,
    };
    if (!full) return out;
    const done = !["created", "waiting_for_resource", "preparing", "pending", "running"].includes(pipeline.status);
    return {
      ...out,
      before_sha: "0000000000000000000000000000000000000000",
      tag: false,
      yaml_errors: null,
      user: gitlabUserObject(pipeline.user, { public: true }),
      started_at: pipeline.created_at,
      finished_at: done ? pipeline.updated_at : null,
      committed_at: null,
      duration: done ? Math.max(0, Math.round((Date.parse(pipeline.updated_at) - Date.parse(pipeline.created_at)) / 1000)) : null,
      queued_duration: 0,
      coverage: null,
      detailed_status: {
        icon: `status_${pipeline.status}`,
        text: pipeline.status,
        label: pipeline.status,
        group: pipeline.status,
        tooltip: pipeline.status,
        has_details: true,
        details_path: `/${project.path_with_namespace}/-/pipelines/${pipeline.id}`,
        illustration: null,
        favicon: `/assets/ci_favicons/favicon_status_${pipeline.status}.png`,
      },
    };
  }

  /**
   * GitLab's merge request: Entities::MergeRequestBasic (lists), or with `full` Entities::MergeRequest
   * (single reads and creation: head_pipeline, diff_refs, …).
   */
  function gitlabMrObject(project, mr, { full = false } = {}) {
    const user = (u) => (u ? gitlabUserObject(u, { public: true }) : null);
    const commit = gitlabMrCommit(project, mr);
    const pipeline = gitlabHeadPipeline(project, mr);
    const out = {
      id: mr.id,
      iid: mr.iid,
      project_id: project.id,
      title: mr.title,
      description: mr.description,
      state: mr.state,
      created_at: mr.created_at,
      updated_at: mr.updated_at,
      merged_by: user(mr.merged_by), // deprecated in favour of merge_user
      merge_user: user(mr.merged_by),
      merged_at: mr.merged_at,
      merge_after: null,
      prepared_at: mr.created_at,
      closed_by: user(mr.closed_by),
      closed_at: mr.closed_at,
      target_branch: mr.target_branch,
      source_branch: mr.source_branch,
      user_notes_count: mr.notes.length,
      upvotes: 0,
      downvotes: 0,
      author: user(mr.author),
      assignees: [],
      assignee: null,
      reviewers: [...mr.reviewers.values()].map((r) => user(r.user)),
      source_project_id: project.id,
      target_project_id: project.id,
      labels: [],
      draft: mr.draft,
      imported: false,
      imported_from: "none",
      work_in_progress: mr.draft,
      milestone: null,
      merge_when_pipeline_succeeds: false,
      merge_status: "can_be_merged",
      detailed_merge_status: gitlabDetailedStatus(project, mr),
      sha: commit.id,
      merge_commit_sha: mr.merge_commit_sha,
      squash_commit_sha: null,
      discussion_locked: null,
      should_remove_source_branch: null,
      force_remove_source_branch: false,
      reference: `!${mr.iid}`,
      references: { short: `!${mr.iid}`, relative: `!${mr.iid}`, full: `${project.path_with_namespace}!${mr.iid}` },
      web_url: `${base}/${project.path_with_namespace}/-/merge_requests/${mr.iid}`,
      time_stats: { time_estimate: 0, total_time_spent: 0, human_time_estimate: null, human_total_time_spent: null },
      squash: false,
      squash_on_merge: false,
      task_completion_status: { count: 0, completed_count: 0 },
      has_conflicts: false,
      blocking_discussions_resolved: true,
      approvals_before_merge: null,
    };
    if (!full) return out;
    return {
      ...out,
      subscribed: true,
      changes_count: "1",
      latest_build_started_at: pipeline?.created_at ?? null,
      latest_build_finished_at: pipeline && gitlabPipelineObject(project, pipeline, { full: true }).finished_at,
      first_deployed_to_production_at: null,
      pipeline: pipeline && gitlabPipelineObject(project, pipeline),
      head_pipeline: pipeline && gitlabPipelineObject(project, pipeline, { full: true }),
      diff_refs: { base_sha: mr.base_sha, head_sha: commit.id, start_sha: mr.base_sha },
      merge_error: null,
      first_contribution: false,
      user: { can_merge: true },
    };
  }

  /** GitLab's note on a merge request (Entities::Note). */
  function gitlabNoteObject(project, mr, note) {
    return {
      id: note.id,
      type: null,
      body: note.body,
      author: gitlabUserObject(note.author, { public: true }),
      created_at: note.created_at,
      updated_at: note.created_at,
      system: false,
      noteable_id: mr.id,
      noteable_type: "MergeRequest",
      project_id: project.id,
      resolvable: false,
      confidential: false,
      internal: false,
      imported: false,
      imported_from: "none",
      noteable_iid: mr.iid,
      commands_changes: {},
    };
  }

  /** For the controls: GitLab project `projectId` (and merge request `iid`, when given); throws for unknown ones. */
  function requireGitlab(what, projectId, iid) {
    const hit = gitlabProjectById(projectId);
    if (!hit) throw new Error(`${what}: no GitLab project ${projectId} (issueGitlabCode with projects first)`);
    if (iid === undefined) return hit;
    const mr = gitlabRepo(hit.project).mrs.find((m) => m.iid === iid);
    if (!mr) throw new Error(`${what}: no merge request !${iid} in ${hit.project.path_with_namespace}`);
    return { ...hit, mr };
  }

  /** User#hook_attrs: no email in hooks unless public. */
  const gitlabHookUser = (u) => ({ id: u.id, name: u.name, username: u.username, avatar_url: `${base}/uploads/-/system/user/avatar/${u.id}/avatar.png`, email: "[REDACTED]" });

  /** Project#hook_attrs. */
  function gitlabHookProject(project) {
    const web = `${base}/${project.path_with_namespace}`;
    const host = new URL(base).host;
    const segments = project.path_with_namespace.split("/");
    return {
      id: project.id,
      name: project.name,
      description: project.description ?? null,
      web_url: web,
      avatar_url: null,
      git_ssh_url: `git@${host}:${project.path_with_namespace}.git`,
      git_http_url: `${web}.git`,
      namespace: segments.at(-2) ?? "",
      visibility_level: GITLAB_VISIBILITY_LEVELS[project.visibility] ?? 0,
      path_with_namespace: project.path_with_namespace,
      default_branch: project.default_branch,
      ci_config_path: null,
      homepage: web,
      url: `git@${host}:${project.path_with_namespace}.git`,
      ssh_url: `git@${host}:${project.path_with_namespace}.git`,
      http_url: `${web}.git`,
    };
  }

  /**
   * GitLab's merge request hook ("Merge request events") for `mr`: `action` (open, close, reopen,
   * update, approved, unapproved, merge, …), `actor` who did it, `changes` of attributes
   * ({ attr: { previous, current } }). `reviewers` only when there are some, as GitLab sends it.
   */
  function gitlabMrHook(project, mr, { action, actor, changes = {} }) {
    const hookProject = gitlabHookProject(project);
    const commit = gitlabMrCommit(project, mr);
    const pipeline = gitlabHeadPipeline(project, mr);
    const web = `${base}/${project.path_with_namespace}`;
    const hook = {
      object_kind: "merge_request",
      event_type: "merge_request",
      user: gitlabHookUser(actor),
      project: hookProject,
      object_attributes: {
        assignee_id: null,
        author_id: mr.author.id,
        created_at: isoSeconds(Date.parse(mr.created_at)),
        description: mr.description,
        draft: mr.draft,
        head_pipeline_id: pipeline?.id ?? null,
        id: mr.id,
        iid: mr.iid,
        last_edited_at: null,
        last_edited_by_id: null,
        merge_commit_sha: mr.merge_commit_sha,
        merge_error: null,
        merge_params: { force_remove_source_branch: "0" },
        merge_status: "can_be_merged",
        merge_user_id: mr.merged_by?.id ?? null,
        merge_when_pipeline_succeeds: false,
        milestone_id: null,
        source_branch: mr.source_branch,
        source_project_id: project.id,
        state_id: GITLAB_STATE_IDS[mr.state],
        target_branch: mr.target_branch,
        target_project_id: project.id,
        time_estimate: 0,
        title: mr.title,
        updated_at: isoSeconds(Date.parse(mr.updated_at)),
        updated_by_id: null,
        prepared_at: isoSeconds(Date.parse(mr.created_at)),
        assignee_ids: [],
        blocking_discussions_resolved: true,
        detailed_merge_status: gitlabDetailedStatus(project, mr),
        first_contribution: false,
        human_time_change: null,
        human_time_estimate: null,
        human_total_time_spent: null,
        labels: [],
        last_commit: {
          id: commit.id,
          message: commit.message,
          title: commit.title,
          timestamp: commit.timestamp,
          url: `${web}/-/commit/${commit.id}`,
          author: { name: commit.author.name, email: commit.author.email },
        },
        reviewer_ids: [...mr.reviewers.values()].map((r) => r.user.id),
        source: hookProject,
        state: mr.state,
        system: false,
        target: hookProject,
        time_change: 0,
        total_time_spent: 0,
        url: `${web}/-/merge_requests/${mr.iid}`,
        work_in_progress: mr.draft,
        action,
      },
      labels: [],
      changes,
      repository: { name: project.name, url: hookProject.url, description: hookProject.description, homepage: web },
    };
    if (mr.reviewers.size) hook.reviewers = [...mr.reviewers.values()].map((r) => gitlabHookUser(r.user));
    return hook;
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

  // ---------------------------------------------------------------- GitHub pull requests

  /** Answers one page of `items` (per_page 30 by default, at most 100) with GitHub's Link header; `wrap` shapes the body. */
  function sendGithubPage(res, url, items, render, wrap = (page) => page) {
    const { perPage, page } = pageParams(url.searchParams, { defaultPerPage: 30, maxPerPage: 100 });
    const pages = Math.ceil(items.length / perPage);
    const headers = githubHeaders();
    const link = linkHeader(base, url.pathname, url.searchParams, page, pages, ["prev", "next", "last", "first"]);
    if (link) headers.link = link;
    send(res, 200, wrap(items.slice((page - 1) * perPage, page * perPage).map(render)), headers);
  }

  /** The request's JSON object body ({} when empty); on anything else answers 400 and returns null. */
  async function githubJsonBody(req, res, ctx, docs) {
    const text = await readBody(req);
    if (!text.trim()) return {};
    let body;
    try {
      body = JSON.parse(text);
    } catch {
      body = undefined;
    }
    if (body === null || typeof body !== "object" || Array.isArray(body)) {
      ctx.reason = "body is not a JSON object";
      githubError(res, 400, "Problems parsing JSON", docs);
      return null;
    }
    return body;
  }

  /**
   * The caller and repository of a pull request route, by GET /repos/{owner}/{repo}'s rule (404
   * when the caller cannot see it). `write`: the installation permission the change needs
   * ("pull_requests" to create, "contents" to merge, as GitHub documents them); a user token needs
   * push access (and the installation holding the repository that permission); anonymous callers
   * cannot write (401). Answers the error itself and returns null.
   */
  function pullsAccess(req, res, ctx, owner, name, docs, { write } = {}) {
    const caller = githubCaller(req, res, ctx);
    if (!caller) return null;
    const found = findRepo(owner, name);
    const refuse = (status, message, reason) => {
      ctx.reason = reason;
      githubError(res, status, message, docs);
      return null;
    };
    if (caller.kind === "user") {
      const access = caller.user.repos.get(`${owner}/${name}`.toLowerCase());
      if (!access || !found) return refuse(404, "Not Found", `user ${caller.user.login} has no access to ${owner}/${name}`);
      if (write && !access.push) return refuse(403, "Must have push access to repository", `user ${caller.user.login} cannot push to ${owner}/${name}`);
      if (write && found.inst && found.inst.permissions[write] !== "write") {
        return refuse(403, "Resource not accessible by integration", `installation ${found.inst.id} lacks ${write}: write`);
      }
    } else if (caller.kind === "installation") {
      const { record, inst } = caller;
      const visible = found && found.inst === inst && (!record.repository_ids || record.repository_ids.includes(found.repo.id));
      if (!visible) return refuse(404, "Not Found", `installation ${inst.id} token cannot see ${owner}/${name}`);
      if (write && record.permissions[write] !== "write") return refuse(403, "Resource not accessible by integration", `installation token lacks ${write}: write`);
    } else {
      if (!found || found.repo.private) return refuse(404, "Not Found", `anonymous request for ${found ? "private" : "unknown"} ${owner}/${name}`);
      if (write) return refuse(401, "Requires authentication", "anonymous write");
    }
    return { caller, found };
  }

  function githubListPulls(req, res, ctx, url, owner, name) {
    const access = pullsAccess(req, res, ctx, owner, name, DOCS.listPulls);
    if (!access) return;
    const { found } = access;
    const q = url.searchParams;
    const wanted = q.get("state") ?? "open";
    if (!["open", "closed", "all"].includes(wanted)) {
      ctx.reason = `state ${JSON.stringify(wanted)}`;
      return githubError(res, 422, "Validation Failed", DOCS.listPulls, { errors: [{ value: wanted, resource: "Issue", field: "state", code: "invalid" }] });
    }
    let list = pullsOf(found).list.filter((pr) => wanted === "all" || pr.state === wanted);
    // GitHub filters by head only in the "owner:branch" form, and ignores a bare branch name.
    const head = q.get("head");
    if (head?.includes(":")) {
      const i = head.indexOf(":");
      const [who, ref] = [head.slice(0, i), head.slice(i + 1)];
      list = list.filter((pr) => who.toLowerCase() === found.owner.login.toLowerCase() && pr.headRef === ref);
    }
    if (q.get("base")) list = list.filter((pr) => pr.baseRef === q.get("base"));
    const sort = q.get("sort") ?? "created";
    const direction = q.get("direction") ?? (sort === "created" ? "desc" : "asc");
    const key = sort === "updated" ? (pr) => `${pr.updated_at}|${String(pr.id).padStart(16, "0")}` : (pr) => String(pr.id).padStart(16, "0");
    list = [...list].sort((a, b) => (key(a) < key(b) ? -1 : key(a) > key(b) ? 1 : 0) * (direction === "asc" ? 1 : -1));
    sendGithubPage(res, url, list, (pr) => pullObject(found, pr));
  }

  async function githubCreatePull(req, res, ctx, owner, name) {
    const access = pullsAccess(req, res, ctx, owner, name, DOCS.createPull, { write: "pull_requests" });
    if (!access) return;
    const { found, caller } = access;
    const body = await githubJsonBody(req, res, ctx, DOCS.createPull);
    if (!body) return;
    const missing = ["base", "head"].filter((k) => typeof body[k] !== "string" || body[k] === "");
    if (missing.length) {
      ctx.reason = `${missing.join(", ")} not supplied`;
      const names = missing.map((k) => `"${k}"`).join(", ");
      return githubError(res, 422, `Invalid request.\n\n${names} ${missing.length === 1 ? "wasn't" : "weren't"} supplied.`, DOCS.createPull);
    }
    const validation = (errors, reason) => {
      ctx.reason = reason;
      return githubError(res, 422, "Validation Failed", DOCS.createPull, { errors });
    };
    // The title lives on the pull request's issue, hence GitHub's resource "Issue".
    if (typeof body.title !== "string" || !body.title.trim()) return validation([{ resource: "Issue", code: "missing_field", field: "title" }], "title missing");
    const i = body.head.indexOf(":");
    const headOwner = i < 0 ? found.owner.login : body.head.slice(0, i);
    const headRef = i < 0 ? body.head : body.head.slice(i + 1);
    const gitDir = repoGitDir(found);
    const headSha = headOwner.toLowerCase() === found.owner.login.toLowerCase() ? branchTip(gitDir, headRef) : null;
    const baseSha = branchTip(gitDir, body.base);
    const invalid = [];
    if (!headSha) invalid.push({ resource: "PullRequest", field: "head", code: "invalid" });
    if (!baseSha) invalid.push({ resource: "PullRequest", field: "base", code: "invalid" });
    if (invalid.length) return validation(invalid, `${invalid.map((e) => e.field).join(" and ")} not a branch of ${fullName(found)}`);
    const label = `${found.owner.login}:${headRef}`;
    const pulls = pullsOf(found);
    const open = pulls.list.find((pr) => pr.state === "open" && pr.headRef === headRef && pr.baseRef === body.base);
    if (open) return validation([{ resource: "PullRequest", code: "custom", message: `A pull request already exists for ${label}.` }], `#${open.number} is open for ${label}`);
    if (compareStats(gitDir, baseSha, headSha).commits === 0) {
      return validation([{ resource: "PullRequest", code: "custom", message: `No commits between ${body.base} and ${body.head}` }], `${body.head} has no commits over ${body.base}`);
    }
    const now = isoSeconds(Date.now());
    const pr = {
      id: state.nextPullId++,
      number: pulls.nextNumber++,
      title: body.title,
      body: typeof body.body === "string" ? body.body : null,
      draft: body.draft === true,
      state: "open",
      merged: false,
      headRef,
      baseRef: body.base,
      author: callerActor(caller),
      created_at: now,
      updated_at: now,
      closed_at: null,
      merged_at: null,
      merged_by: null,
      merge_commit_sha: null,
      frozen: null, // { head, base } once closed
      lastHeadSha: headSha,
      lastBaseSha: baseSha,
      reviews: [],
      comments: [],
    };
    pulls.list.push(pr);
    send(res, 201, pullObject(found, pr, { full: true }), { ...githubHeaders(), location: `${base}/repos/${fullName(found)}/pulls/${pr.number}` });
  }

  /** GET of pull request `number`: `what` is "pull", "reviews" or "comments". */
  function githubGetPull(req, res, ctx, url, owner, name, number, what) {
    const docs = { pull: DOCS.getPull, reviews: DOCS.listReviews, comments: DOCS.listReviewComments }[what];
    const access = pullsAccess(req, res, ctx, owner, name, docs);
    if (!access) return;
    const { found } = access;
    const pr = findPull(found, number);
    if (!pr) {
      ctx.reason = `no pull request #${number} in ${owner}/${name}`;
      return githubError(res, 404, "Not Found", docs);
    }
    if (what === "pull") return send(res, 200, pullObject(found, pr, { full: true }), githubHeaders());
    if (what === "reviews") return sendGithubPage(res, url, pr.reviews, (r) => reviewObject(found, pr, r));
    sendGithubPage(res, url, pr.comments, (c) => reviewCommentObject(found, pr, c));
  }

  /**
   * Merges `pr` into its base branch for real (gitMerge) and marks it merged by `by`, with GitHub's
   * default commit title ("Merge pull request #N from owner/branch", the PR title as the body).
   * Returns `{ sha }` or `{ conflict }` (then nothing changes).
   */
  function landPull(found, pr, { method = "merge", title, message, by }) {
    const shas = pullShas(found, pr);
    const squash = method === "squash";
    const result = gitMerge(repoGitDir(found), {
      base: pr.baseRef,
      headSha: shas.head,
      method,
      title: typeof title === "string" && title ? title : squash ? `${pr.title} (#${pr.number})` : `Merge pull request #${pr.number} from ${found.owner.login}/${pr.headRef}`,
      message: typeof message === "string" ? message : squash ? "" : pr.title,
    });
    if (result.conflict) return result;
    const now = isoSeconds(Date.now());
    Object.assign(pr, { state: "closed", merged: true, merged_at: now, closed_at: now, updated_at: now, merged_by: by, merge_commit_sha: result.sha, frozen: shas });
    return result;
  }

  async function githubMergePull(req, res, ctx, owner, name, number) {
    const access = pullsAccess(req, res, ctx, owner, name, DOCS.mergePull, { write: "contents" });
    if (!access) return;
    const { found, caller } = access;
    const pr = findPull(found, number);
    if (!pr) {
      ctx.reason = `no pull request #${number} in ${owner}/${name}`;
      return githubError(res, 404, "Not Found", DOCS.mergePull);
    }
    const body = await githubJsonBody(req, res, ctx, DOCS.mergePull);
    if (!body) return;
    const method = body.merge_method ?? "merge";
    if (!MERGE_METHODS.includes(method)) {
      ctx.reason = `merge_method ${JSON.stringify(method)}`;
      return githubError(res, 422, `Invalid request.\n\n${JSON.stringify(method)} is not a member of ${JSON.stringify(MERGE_METHODS).replaceAll(",", ", ")}.`, DOCS.mergePull);
    }
    const notMergeable = (reason, message = "Pull Request is not mergeable") => {
      ctx.reason = reason;
      return githubError(res, 405, message, DOCS.mergePull);
    };
    if (pr.state !== "open") return notMergeable(pr.merged ? "already merged" : "closed");
    if (pr.draft) return notMergeable("draft", "Pull Request is still a draft");
    const shas = pullShas(found, pr);
    if (body.sha !== undefined && body.sha !== shas.head) {
      ctx.reason = `sha ${body.sha} is not the head ${shas.head}`;
      return githubError(res, 409, "Head branch was modified. Review and try the merge again.", DOCS.mergePull);
    }
    const result = landPull(found, pr, { method, title: body.commit_title, message: body.commit_message, by: callerActor(caller) });
    if (result.conflict) return notMergeable(`conflict: ${result.conflict.split("\n").at(-1)}`);
    send(res, 200, { sha: result.sha, merged: true, message: "Pull Request successfully merged" }, githubHeaders());
  }

  function githubCheckRuns(req, res, ctx, url, owner, name, ref) {
    const access = pullsAccess(req, res, ctx, owner, name, DOCS.checkRunsForRef);
    if (!access) return;
    const { found } = access;
    const sha = resolveCommit(repoGitDir(found), ref);
    if (!sha) {
      ctx.reason = `ref ${JSON.stringify(ref)} names no commit`;
      return githubError(res, 422, `No commit found for SHA: ${ref}`, DOCS.checkRunsForRef);
    }
    const q = url.searchParams;
    let runs = checkRunsFor(found, sha).sort((a, b) => b.id - a.id);
    if (q.get("check_name")) runs = runs.filter((r) => r.name === q.get("check_name"));
    if (q.get("status")) runs = runs.filter((r) => r.status === q.get("status"));
    sendGithubPage(res, url, runs, (r) => checkRunObject(found, r), (page) => ({ total_count: runs.length, check_runs: page }));
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
    const { slice, headers } = gitlabPage(url, list);
    send(res, 200, slice.map((p) => gitlabProjectObject(p, entry.user, truthy(q.get("simple")))), headers);
  }

  /** One page of `list` (per_page 20 by default, at most 100) and GitLab's X-Page/X-Total/… and Link headers. */
  function gitlabPage(url, list) {
    const q = url.searchParams;
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
    return { slice, headers };
  }

  // ---------------------------------------------------------------- GitLab merge requests

  /** The token's user and the project of a merge request route; answers 401/404 itself and returns null. */
  function gitlabProjectAccess(req, res, ctx, url, idOrPath) {
    const entry = requireGitlabUser(req, res, ctx, url);
    if (!entry) return null;
    const project = gitlabProjectOf(entry, idOrPath);
    if (!project) {
      ctx.reason = `user ${entry.user.username} has no project ${JSON.stringify(idOrPath)}`;
      send(res, 404, { message: "404 Project Not Found" });
      return null;
    }
    return { entry, project, repo: gitlabRepo(project) };
  }

  function gitlabListMergeRequests(req, res, ctx, url, idOrPath) {
    const access = gitlabProjectAccess(req, res, ctx, url, idOrPath);
    if (!access) return;
    const { project, repo } = access;
    const q = url.searchParams;
    const wanted = q.get("state") ?? "all";
    if (!["opened", "closed", "locked", "merged", "all"].includes(wanted)) {
      ctx.reason = `state ${JSON.stringify(wanted)}`;
      return send(res, 400, { error: "state does not have a valid value" });
    }
    let list = repo.mrs.filter((mr) => wanted === "all" || mr.state === wanted);
    if (q.get("source_branch")) list = list.filter((mr) => mr.source_branch === q.get("source_branch"));
    if (q.get("target_branch")) list = list.filter((mr) => mr.target_branch === q.get("target_branch"));
    const key = q.get("order_by") === "updated_at" ? (mr) => `${mr.updated_at}|${String(mr.id).padStart(12, "0")}` : (mr) => String(mr.id).padStart(12, "0");
    const dir = q.get("sort") === "asc" ? 1 : -1;
    list = [...list].sort((a, b) => (key(a) < key(b) ? -dir : key(a) > key(b) ? dir : 0));
    const { slice, headers } = gitlabPage(url, list);
    send(res, 200, slice.map((mr) => gitlabMrObject(project, mr)), headers);
  }

  async function gitlabCreateMergeRequest(req, res, ctx, url, idOrPath) {
    const access = gitlabProjectAccess(req, res, ctx, url, idOrPath);
    if (!access) return;
    const { entry, project, repo } = access;
    const text = await readBody(req);
    const type = (req.headers["content-type"] ?? "").split(";")[0].trim().toLowerCase();
    let params = {};
    if (type === "application/json") {
      try {
        params = JSON.parse(text || "{}");
      } catch {
        ctx.reason = "body is not JSON";
        return send(res, 400, { error: "The provided content-type 'application/json' is not supported or the request body is malformed" });
      }
      if (params === null || typeof params !== "object" || Array.isArray(params)) params = {};
    } else {
      params = Object.fromEntries(new URLSearchParams(text));
    }
    for (const [k, v] of url.searchParams) if (k !== "access_token") params[k] ??= v; // Grape merges the query string
    // Grape's `requires` (declared in this order), then the model's validations.
    const missing = ["title", "source_branch", "target_branch"].filter((k) => params[k] === undefined || params[k] === null);
    if (missing.length) {
      ctx.reason = `${missing.join(", ")} missing`;
      return send(res, 400, { error: missing.map((k) => `${k} is missing`).join(", ") });
    }
    const [title, source, target] = [String(params.title), String(params.source_branch), String(params.target_branch)];
    if (!title.trim()) {
      ctx.reason = "title blank";
      return send(res, 400, { message: { title: ["can't be blank"] } });
    }
    if (source === target) {
      ctx.reason = "source and target are the same branch";
      return send(res, 422, { message: ["You can't use same project/branch for source and target"] });
    }
    const absent = [];
    if (!repo.branches.has(source)) absent.push(`Source branch "${source}" does not exist`);
    if (!repo.branches.has(target)) absent.push(`Target branch "${target}" does not exist`);
    if (absent.length) {
      ctx.reason = absent.join("; ");
      return send(res, 422, { message: absent });
    }
    const other = repo.mrs.find((mr) => mr.state === "opened" && mr.source_branch === source && mr.target_branch === target);
    if (other) {
      ctx.reason = `!${other.iid} is open for ${source} -> ${target}`;
      return send(res, 409, { message: [`Another open merge request already exists for this source branch: !${other.iid}`] });
    }
    const now = new Date().toISOString();
    const mr = {
      id: state.nextMergeRequestId++,
      iid: repo.nextIid++,
      title,
      description: params.description === undefined || params.description === null ? null : String(params.description),
      state: "opened",
      draft: /^\s*(\[draft\]|\(draft\)|draft:)/i.test(title),
      source_branch: source,
      target_branch: target,
      author: entry.user,
      created_at: now,
      updated_at: now,
      merged_at: null,
      closed_at: null,
      merged_by: null,
      closed_by: null,
      merge_commit_sha: null,
      base_sha: repo.branches.get(target).id,
      frozen: null, // the commit, once merged or closed
      lastCommit: repo.branches.get(source),
      reviewers: new Map(), // user id -> { user, state, created_at }
      notes: [],
      pipelines: [],
    };
    repo.mrs.push(mr);
    send(res, 201, gitlabMrObject(project, mr, { full: true }));
  }

  /** GET of merge request `iid`: `what` is "mr", "reviewers" or "notes". */
  function gitlabGetMergeRequest(req, res, ctx, url, idOrPath, iid, what) {
    const access = gitlabProjectAccess(req, res, ctx, url, idOrPath);
    if (!access) return;
    const { project, repo } = access;
    const mr = repo.mrs.find((m) => m.iid === iid);
    if (!mr) {
      ctx.reason = `no merge request !${iid} in ${project.path_with_namespace}`;
      return send(res, 404, { message: "404 Not found" });
    }
    if (what === "mr") return send(res, 200, gitlabMrObject(project, mr, { full: true }));
    if (what === "reviewers") {
      return send(res, 200, [...mr.reviewers.values()].map((r) => ({ user: gitlabUserObject(r.user, { public: true }), state: r.state, created_at: r.created_at })));
    }
    const dir = url.searchParams.get("sort") === "asc" ? 1 : -1; // notes: created_at desc by default
    const notes = [...mr.notes].sort((a, b) => (a.id - b.id) * dir);
    const { slice, headers } = gitlabPage(url, notes);
    send(res, 200, slice.map((n) => gitlabNoteObject(project, mr, n)), headers);
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
    if ((req.method === "GET" || req.method === "POST") && (m = /^\/repos\/([^/]+)\/([^/]+)\/pulls$/.exec(p))) {
      const [owner, name] = [decodeURIComponent(m[1]), decodeURIComponent(m[2])];
      if (req.method === "GET") {
        ctx.key = "github.pulls.list";
        return githubListPulls(req, res, ctx, url, owner, name);
      }
      ctx.key = "github.pulls.create";
      return githubCreatePull(req, res, ctx, owner, name);
    }
    if (req.method === "GET" && (m = /^\/repos\/([^/]+)\/([^/]+)\/pulls\/(\d+)(?:\/(reviews|comments))?$/.exec(p))) {
      ctx.key = m[4] ? `github.pulls.${m[4]}` : "github.pulls.get";
      return githubGetPull(req, res, ctx, url, decodeURIComponent(m[1]), decodeURIComponent(m[2]), Number(m[3]), m[4] ?? "pull");
    }
    if (req.method === "PUT" && (m = /^\/repos\/([^/]+)\/([^/]+)\/pulls\/(\d+)\/merge$/.exec(p))) {
      ctx.key = "github.pulls.merge";
      return githubMergePull(req, res, ctx, decodeURIComponent(m[1]), decodeURIComponent(m[2]), Number(m[3]));
    }
    if (req.method === "GET" && (m = /^\/repos\/([^/]+)\/([^/]+)\/commits\/(.+)\/check-runs$/.exec(p))) {
      ctx.key = "github.check_runs";
      return githubCheckRuns(req, res, ctx, url, decodeURIComponent(m[1]), decodeURIComponent(m[2]), decodeURIComponent(m[3]));
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
    if ((req.method === "GET" || req.method === "POST") && (m = /^\/api\/v4\/projects\/([^/]+)\/merge_requests$/.exec(p))) {
      if (req.method === "GET") {
        ctx.key = "gitlab.mrs.list";
        return gitlabListMergeRequests(req, res, ctx, url, m[1]);
      }
      ctx.key = "gitlab.mrs.create";
      return gitlabCreateMergeRequest(req, res, ctx, url, m[1]);
    }
    if (req.method === "GET" && (m = /^\/api\/v4\/projects\/([^/]+)\/merge_requests\/(\d+)(?:\/(reviewers|notes))?$/.exec(p))) {
      ctx.key = m[3] ? `gitlab.mrs.${m[3]}` : "gitlab.mrs.get";
      return gitlabGetMergeRequest(req, res, ctx, url, m[1], Number(m[2]), m[3] ?? "mr");
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
    port: gitPort,
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
    server.listen(port, "127.0.0.1", resolve);
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
    // ------------------------------------------------------------ pull requests (GitHub)

    /**
     * The pull requests of owner/repo, in creation order: [{ number, state ("open"|"closed"), merged,
     * title, body, head, base (branch names), head_sha (the head branch's tip while open, frozen
     * once closed), author: { login, type ("User"|"Bot") }, html_url }].
     */
    pulls(owner, repo) {
      const { found } = requirePull("pulls", owner, repo);
      return pullsOf(found).list.map((pr) => ({
        number: pr.number,
        state: pr.state,
        merged: pr.merged,
        title: pr.title,
        body: pr.body,
        head: pr.headRef,
        base: pr.baseRef,
        head_sha: pullShas(found, pr).head,
        author: { login: pr.author.login, type: pr.author.type },
        html_url: `${base}/${fullName(found)}/pull/${pr.number}`,
      }));
    },
    /**
     * Merges open pull request `number` as GitHub's merge button does (a `--no-ff` merge commit
     * "Merge pull request #N from owner/branch" by GitHub <noreply@github.com> pushed to the base
     * branch of the bare repository; `method` "squash" or "rebase" as GitHub does them), by GitHub
     * user `by`. Throws if it is not open or does not merge cleanly. Returns the pull_request
     * `closed` webhook payload (merged: true).
     */
    mergePull(owner, repo, number, { by = "octocat", method = "merge" } = {}) {
      const { found, pr } = requirePull("mergePull", owner, repo, number);
      if (pr.state !== "open") throw new Error(`mergePull: #${number} is ${pr.merged ? "already merged" : "closed"}`);
      if (!MERGE_METHODS.includes(method)) throw new TypeError(`mergePull: method must be one of ${MERGE_METHODS.join(", ")}`);
      const actor = githubActor(by);
      const result = landPull(found, pr, { method, by: actor });
      if (result.conflict) throw new Error(`mergePull: #${number} is not mergeable (${result.conflict.split("\n").at(-1)})`);
      return pullRequestWebhook(found, pr, "closed", actor);
    },
    /** Closes open pull request `number` without merging (by `by`); its shas freeze. Returns the pull_request `closed` payload (merged: false). */
    closePull(owner, repo, number, { by = "octocat" } = {}) {
      const { found, pr } = requirePull("closePull", owner, repo, number);
      if (pr.state !== "open") throw new Error(`closePull: #${number} is already closed`);
      const frozen = pullShas(found, pr);
      const now = isoSeconds(Date.now());
      Object.assign(pr, { state: "closed", closed_at: now, updated_at: now, frozen });
      return pullRequestWebhook(found, pr, "closed", githubActor(by));
    },
    /** Reopens closed (not merged) pull request `number`; head.sha follows its branch again. Returns the pull_request `reopened` payload. */
    reopenPull(owner, repo, number, { by = "octocat" } = {}) {
      const { found, pr } = requirePull("reopenPull", owner, repo, number);
      if (pr.state === "open" || pr.merged) throw new Error(`reopenPull: #${number} is ${pr.merged ? "merged" : "open"}`);
      Object.assign(pr, { state: "open", closed_at: null, updated_at: isoSeconds(Date.now()), frozen: null });
      return pullRequestWebhook(found, pr, "reopened", githubActor(by));
    },
    /**
     * Records a review of pull request `number` by GitHub user `login` on its current head commit:
     * `state` APPROVED|CHANGES_REQUESTED|COMMENTED|DISMISSED, and review comments `{ path, line, body }`
     * (single lines, linked by pull_request_review_id). Returns the pull_request_review `submitted` payload.
     */
    addReview(owner, repo, number, { login = "reviewer", state: reviewState = "CHANGES_REQUESTED", body = "", comments = [] } = {}) {
      const { found, pr } = requirePull("addReview", owner, repo, number);
      if (!REVIEW_STATES.includes(reviewState)) throw new TypeError(`addReview: state must be one of ${REVIEW_STATES.join(", ")}`);
      for (const c of comments) {
        if (typeof c?.path !== "string" || !Number.isInteger(c.line) || c.line < 1 || typeof c.body !== "string") {
          throw new TypeError("addReview: each comment is { path: string, line: positive integer, body: string }");
        }
      }
      const actor = githubActor(login);
      const head = pullShas(found, pr).head;
      const now = isoSeconds(Date.now());
      const review = { id: state.nextReviewId++, user: actor, body, state: reviewState, commit_id: head, submitted_at: now };
      pr.reviews.push(review);
      for (const c of comments) {
        pr.comments.push({
          id: state.nextReviewCommentId++,
          review_id: review.id,
          path: c.path,
          line: c.line,
          body: c.body,
          user: actor,
          commit_id: head,
          created_at: now,
          diff_hunk: diffHunk(found, head, c.path, c.line),
        });
      }
      pr.updated_at = now;
      const example = webhookExample("pull_request_review", "submitted", { organization: found.owner.type === "Organization" });
      return githubWebhook("pull_request_review", "submitted", found, {
        review: shapedLike(example.review, reviewObject(found, pr, review, { webhook: true })),
        pull_request: shapedLike(example.pull_request, pullObject(found, pr, { full: true, webhook: true })),
        sender: actorObject(actor),
      });
    },
    /**
     * Records (or replaces, by `name`) a GitHub Actions check run on pull request `number`'s current
     * head commit: `status` queued|in_progress|completed|…, `conclusion` (when completed) failure|
     * success|…. Returns the check_run webhook payload: `completed` (or `created` while not completed),
     * with check_run.pull_requests the open pull requests at that commit.
     */
    setCheckRun(owner, repo, number, { name, status = "completed", conclusion = "failure" } = {}) {
      const { found, pr } = requirePull("setCheckRun", owner, repo, number);
      if (typeof name !== "string" || !name) throw new TypeError("setCheckRun: name is required");
      if (!CHECK_STATUSES.includes(status)) throw new TypeError(`setCheckRun: status must be one of ${CHECK_STATUSES.join(", ")}`);
      const done = status === "completed";
      if (done && !CHECK_CONCLUSIONS.includes(conclusion)) throw new TypeError(`setCheckRun: conclusion must be one of ${CHECK_CONCLUSIONS.join(", ")}`);
      const head = pullShas(found, pr).head;
      const key = repoKey(found);
      if (!state.checkRuns.has(key)) state.checkRuns.set(key, []);
      const runs = state.checkRuns.get(key);
      const now = isoSeconds(Date.now());
      let run = runs.find((r) => r.head_sha === head && r.name === name);
      if (!run) {
        run = { id: state.nextCheckRunId++, suite_id: state.nextCheckSuiteId++, name, head_sha: head, head_branch: pr.headRef, started_at: now };
        runs.push(run);
      }
      Object.assign(run, { status, conclusion: done ? conclusion : null, completed_at: done ? now : null });
      const action = done ? "completed" : "created";
      const example = webhookExample("check_run", action, { organization: found.owner.type === "Organization" });
      return githubWebhook("check_run", action, found, {
        check_run: shapedLike(example.check_run, checkRunObject(found, run, { webhook: true })),
        sender: actorObject(pr.author),
      });
    },

    // ------------------------------------------------------------ merge requests (GitLab)

    /**
     * Pushes a new (made-up) commit to `branch` of GitLab project `projectId` (creating the branch);
     * a project's default branch exists from the start, other branches only once pushed. Returns the
     * new 40-hex sha. `message`, `author` ({ name, email }) describe the commit.
     */
    pushGitlabBranch(projectId, branch, { message = `Update ${branch}`, author } = {}) {
      const { project, user } = requireGitlab("pushGitlabBranch", projectId);
      if (typeof branch !== "string" || !branch) throw new TypeError("pushGitlabBranch: branch is required");
      const commit = gitlabCommit(message, author ?? { name: user.name, email: user.email });
      gitlabRepo(project).branches.set(branch, commit);
      return commit.id;
    },
    /** The merge requests of project `projectId`, in creation order: [{ iid, state, title, description, source_branch, target_branch, author: { username }, sha, web_url }]. */
    gitlabMergeRequests(projectId) {
      const { project } = requireGitlab("gitlabMergeRequests", projectId);
      return gitlabRepo(project).mrs.map((mr) => ({
        iid: mr.iid,
        state: mr.state,
        title: mr.title,
        description: mr.description,
        source_branch: mr.source_branch,
        target_branch: mr.target_branch,
        author: { username: mr.author.username },
        sha: gitlabMrCommit(project, mr).id,
        web_url: `${base}/${project.path_with_namespace}/-/merge_requests/${mr.iid}`,
      }));
    },
    /**
     * Merges open merge request `iid` (a merge commit on the target branch), by `username` (default:
     * its author). Returns the merge request hook payload, action "merge".
     */
    mergeGitlabMergeRequest(projectId, iid, { username } = {}) {
      const { project, mr } = requireGitlab("mergeGitlabMergeRequest", projectId, iid);
      if (mr.state !== "opened") throw new Error(`mergeGitlabMergeRequest: !${iid} is ${mr.state}`);
      const actor = username ? gitlabActor(username) : mr.author;
      const frozen = gitlabMrCommit(project, mr);
      const merge = gitlabCommit(`Merge branch '${mr.source_branch}' into '${mr.target_branch}'`, { name: actor.name, email: actor.email });
      gitlabRepo(project).branches.set(mr.target_branch, merge);
      const before = mr.updated_at;
      const now = new Date().toISOString();
      Object.assign(mr, { state: "merged", merged_at: now, updated_at: now, merged_by: actor, merge_commit_sha: merge.id, frozen });
      return gitlabMrHook(project, mr, {
        action: "merge",
        actor,
        changes: { state_id: { previous: GITLAB_STATE_IDS.opened, current: GITLAB_STATE_IDS.merged }, updated_at: { previous: isoSeconds(Date.parse(before)), current: isoSeconds(Date.parse(now)) } },
      });
    },
    /** Closes open merge request `iid` without merging, by `username` (default: its author). Returns the hook payload, action "close". */
    closeGitlabMergeRequest(projectId, iid, { username } = {}) {
      const { project, mr } = requireGitlab("closeGitlabMergeRequest", projectId, iid);
      if (mr.state !== "opened") throw new Error(`closeGitlabMergeRequest: !${iid} is ${mr.state}`);
      const actor = username ? gitlabActor(username) : mr.author;
      const frozen = gitlabMrCommit(project, mr);
      const before = mr.updated_at;
      const now = new Date().toISOString();
      Object.assign(mr, { state: "closed", closed_at: now, updated_at: now, closed_by: actor, frozen });
      return gitlabMrHook(project, mr, {
        action: "close",
        actor,
        changes: { state_id: { previous: GITLAB_STATE_IDS.opened, current: GITLAB_STATE_IDS.closed }, updated_at: { previous: isoSeconds(Date.parse(before)), current: isoSeconds(Date.parse(now)) } },
      });
    },
    /**
     * Sets reviewer `username`'s state on merge request `iid` (unreviewed|reviewed|requested_changes|
     * approved|unapproved; adds them as a reviewer if new) and adds `note` as their comment when
     * given. Returns the hook payload: action "approved"/"unapproved" for those states, else "update"
     * (with `changes.reviewers` when the reviewer is new).
     */
    reviewGitlabMergeRequest(projectId, iid, { username = "reviewer", state: reviewState = "requested_changes", note = "" } = {}) {
      const { project, mr } = requireGitlab("reviewGitlabMergeRequest", projectId, iid);
      if (!GITLAB_REVIEWER_STATES.includes(reviewState)) throw new TypeError(`reviewGitlabMergeRequest: state must be one of ${GITLAB_REVIEWER_STATES.join(", ")}`);
      const actor = gitlabActor(username);
      const now = new Date().toISOString();
      const previous = [...mr.reviewers.values()].map((r) => gitlabHookUser(r.user));
      const existing = mr.reviewers.get(actor.id);
      mr.reviewers.set(actor.id, { user: actor, state: reviewState, created_at: existing?.created_at ?? now });
      if (note) mr.notes.push({ id: state.nextNoteId++, body: note, author: actor, created_at: now });
      const before = mr.updated_at;
      mr.updated_at = now;
      const changes = existing ? {} : { reviewers: { previous, current: [...mr.reviewers.values()].map((r) => gitlabHookUser(r.user)) } };
      changes.updated_at = { previous: isoSeconds(Date.parse(before)), current: isoSeconds(Date.parse(now)) };
      const action = reviewState === "approved" ? "approved" : reviewState === "unapproved" ? "unapproved" : "update";
      return gitlabMrHook(project, mr, { action, actor, changes });
    },
    /**
     * Sets the status ("success", "failed", "running", … any GitLab pipeline status) of the pipeline
     * for merge request `iid`'s current commit, making one if there is none (it becomes the head
     * pipeline). Returns the hook payload, action "update" (`changes.head_pipeline_id` when new).
     */
    setGitlabPipeline(projectId, iid, status) {
      const { project, mr } = requireGitlab("setGitlabPipeline", projectId, iid);
      if (!GITLAB_PIPELINE_STATUSES.includes(status)) throw new TypeError(`setGitlabPipeline: status must be one of ${GITLAB_PIPELINE_STATUSES.join(", ")}`);
      const commit = gitlabMrCommit(project, mr);
      const now = new Date().toISOString();
      let pipeline = gitlabHeadPipeline(project, mr);
      const changes = {};
      if (pipeline) {
        Object.assign(pipeline, { status, updated_at: now });
      } else {
        const repo = gitlabRepo(project);
        repo.nextPipelineIid ??= 1;
        pipeline = { id: state.nextPipelineId++, iid: repo.nextPipelineIid++, sha: commit.id, ref: mr.source_branch, status, created_at: now, updated_at: now, user: mr.author };
        changes.head_pipeline_id = { previous: mr.pipelines.at(-1)?.id ?? null, current: pipeline.id };
        mr.pipelines.push(pipeline);
      }
      return gitlabMrHook(project, mr, { action: "update", actor: mr.author, changes });
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

/**
 * The @octokit/webhooks-examples example of `name`.`action` whose repository owner matches: one
 * with `organization` for an organization's repository, one without for a user's (preferring
 * examples that carry `installation`, as App deliveries do). A fresh copy.
 */
function webhookExample(name, action, { organization }) {
  examples ??= createRequire(import.meta.url)("@octokit/webhooks-examples");
  const matching = examples.find((e) => e.name === name)?.examples.filter((e) => e.action === action) ?? [];
  if (!matching.length) throw new Error(`no webhook example for ${name}.${action}`);
  const score = (e) => (("organization" in e) === organization ? 2 : 0) + ("installation" in e ? 1 : 0);
  return structuredClone(matching.reduce((best, e) => (score(e) > score(best) ? e : best)));
}

/** GitHub's X-Hub-Signature-256 value for a webhook body: `sha256=<hex HMAC-SHA256>`. */
export function signWebhook(secret, body) {
  return `sha256=${createHmac("sha256", secret).update(body).digest("hex")}`;
}
