// Git over HTTPS for the GitHub stand-in: the smart HTTP protocol served by git's own
// `git http-backend` (CGI), behind HTTP Basic authentication as GitHub does it (a 401 with
// `WWW-Authenticate: Basic` makes git ask its credential helper). TLS, because the container's
// credential helper answers only for https: the certificate is a throwaway self-signed one for
// 127.0.0.1 made with the `openssl` CLI, and git trusts it through `http.sslCAInfo`
// (`caFile`). Repositories are bare repositories under a temporary folder, made on first use
// (for a repository `defaultBranch` knows) with one commit on their default branch.
//
// Runtime dependencies: node:https, node:child_process, the `git` and `openssl` executables.
import { createServer } from "node:https";
import { spawn, execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, existsSync, mkdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const SERVICES = new Set(["git-upload-pack", "git-receive-pack"]);
/** `/{owner}/{repo}.git/{info/refs | git-upload-pack | git-receive-pack}` */
const GIT_PATH = /^\/([A-Za-z0-9_.-]+)\/([A-Za-z0-9_.-]+?)(?:\.git)?\/(info\/refs|git-upload-pack|git-receive-pack)$/;

function git(args, options = {}) {
  return execFileSync("git", args, { encoding: "utf8", ...options }).trim();
}

/** A self-signed certificate for 127.0.0.1, valid for a day: `{ key, cert, caFile }`. */
function selfSigned(dir) {
  const keyFile = join(dir, "key.pem");
  const caFile = join(dir, "cert.pem");
  execFileSync("openssl", [
    "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
    "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
    "-keyout", keyFile, "-out", caFile,
  ], { stdio: "ignore" });
  return { key: readFileSync(keyFile), cert: readFileSync(caFile), caFile };
}

/**
 * Starts the git host on a free loopback port.
 * @param {{ authorize: (req: { owner: string, repo: string, service: string, username: string|null,
 *   password: string|null }) => boolean|"forbidden" }} options  `authorize` decides each request:
 *   true lets it through, "forbidden" answers 403, anything else 401 (git then asks for credentials).
 *   `service` is "git-upload-pack" (fetch) or "git-receive-pack" (push). `defaultBranch(owner, repo)`
 *   names the branch of a repository the host serves, or null for one it does not know (404).
 */
export async function startGitHost({ authorize, defaultBranch, port = 0 }) {
  const dir = mkdtempSync(join(tmpdir(), "gastown-git-host-"));
  const root = join(dir, "repos");
  mkdirSync(root);
  const tls = selfSigned(dir);
  const log = [];

  const pathOf = (owner, repo) => join(root, owner.toLowerCase(), `${repo.toLowerCase()}.git`);

  /** The bare repository of owner/repo, made with one commit on `branch` if it is new. */
  function ensureRepo(owner, repo, branch = "main") {
    const path = pathOf(owner, repo);
    if (existsSync(path)) return path;
    git(["init", "--quiet", "--bare", `--initial-branch=${branch}`, path]);
    const identity = { GIT_AUTHOR_NAME: "Stand-in", GIT_AUTHOR_EMAIL: "standin@example.com", GIT_COMMITTER_NAME: "Stand-in", GIT_COMMITTER_EMAIL: "standin@example.com" };
    const blob = git(["--git-dir", path, "hash-object", "-w", "--stdin"], { input: `# ${repo}\n` });
    const tree = git(["--git-dir", path, "mktree"], { input: `100644 blob ${blob}\tREADME.md\n` });
    const commit = git(["--git-dir", path, "commit-tree", tree, "-m", "Initial commit"], { env: { ...process.env, ...identity } });
    git(["--git-dir", path, "update-ref", `refs/heads/${branch}`, commit]);
    return path;
  }

  function credentials(req) {
    const m = /^Basic\s+(\S+)\s*$/i.exec(req.headers.authorization ?? "");
    if (!m) return { username: null, password: null };
    const decoded = Buffer.from(m[1], "base64").toString("utf8");
    const i = decoded.indexOf(":");
    return i < 0 ? { username: decoded, password: null } : { username: decoded.slice(0, i), password: decoded.slice(i + 1) };
  }

  function refuse(res, status, message) {
    const headers = { "content-type": "text/plain; charset=utf-8" };
    if (status === 401) headers["www-authenticate"] = 'Basic realm="GitHub"';
    res.writeHead(status, headers);
    res.end(`${message}\n`);
  }

  /** Runs `git http-backend` for the request (CGI: headers on stdout, then the body). */
  function backend(req, res, url, path) {
    const child = spawn("git", ["http-backend"], {
      env: {
        PATH: process.env.PATH,
        GIT_PROJECT_ROOT: root,
        GIT_HTTP_EXPORT_ALL: "1",
        // Pushes are allowed to whoever `authorize` let through.
        REMOTE_USER: "x-access-token",
        PATH_INFO: path,
        REQUEST_METHOD: req.method,
        QUERY_STRING: url.searchParams.toString(),
        CONTENT_TYPE: req.headers["content-type"] ?? "",
        HTTP_CONTENT_ENCODING: req.headers["content-encoding"] ?? "",
        GIT_PROTOCOL: req.headers["git-protocol"] ?? "",
      },
    });
    req.pipe(child.stdin);
    let head = Buffer.alloc(0);
    let headersDone = false;
    child.stdout.on("data", (chunk) => {
      if (headersDone) return res.write(chunk);
      head = Buffer.concat([head, chunk]);
      const end = head.indexOf("\r\n\r\n");
      if (end < 0) return;
      headersDone = true;
      let status = 200;
      const headers = {};
      for (const line of head.subarray(0, end).toString("latin1").split("\r\n")) {
        const i = line.indexOf(":");
        const name = line.slice(0, i).trim().toLowerCase();
        const value = line.slice(i + 1).trim();
        if (name === "status") status = Number.parseInt(value, 10);
        else headers[name] = value;
      }
      res.writeHead(status, headers);
      res.write(head.subarray(end + 4));
    });
    child.on("close", (code) => {
      if (!headersDone) refuse(res, 500, `git http-backend exited ${code}`);
      else res.end();
    });
  }

  const server = createServer({ key: tls.key, cert: tls.cert }, (req, res) => {
    const url = new URL(req.url, "https://127.0.0.1");
    const m = GIT_PATH.exec(url.pathname);
    const service = m && (m[3] === "info/refs" ? url.searchParams.get("service") : m[3]);
    if (!m || !SERVICES.has(service)) return refuse(res, 404, "Not Found");
    const [, owner, repo] = m;
    const { username, password } = credentials(req);
    const verdict = authorize({ owner, repo, service, username, password });
    log.push({ owner, repo, service, username, status: verdict === true ? "ok" : verdict === "forbidden" ? 403 : 401 });
    if (verdict === "forbidden") return refuse(res, 403, "Permission denied");
    if (verdict !== true) return refuse(res, 401, "Invalid username or token. Password authentication is not supported for Git operations.");
    const branch = defaultBranch(owner, repo);
    if (branch === null) return refuse(res, 404, "Repository not found.");
    ensureRepo(owner, repo, branch);
    backend(req, res, url, `/${owner.toLowerCase()}/${repo.toLowerCase()}.git/${m[3]}`);
  });
  await new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, "127.0.0.1", resolve);
  });
  const url = `https://127.0.0.1:${server.address().port}`;

  return {
    url,
    /** The certificate git must trust (`git -c http.sslCAInfo=<caFile>`). */
    caFile: tls.caFile,
    ensureRepo,
    /** The bare repository's path, for tests that read it with git. */
    repoPath: pathOf,
    /** Every request: { owner, repo, service, username, status } (no passwords). */
    log: () => log.map((e) => ({ ...e })),
    async stop() {
      server.closeAllConnections?.();
      await new Promise((r) => server.close(() => r()));
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
