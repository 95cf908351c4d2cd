// The refinery, end to end: a bead finished on a branch under `merge_strategy: pull_request`
// gets a pull request (GitHub) or merge request (GitLab) opened by the town through the rig's
// integration, followed by webhooks and by the poll, to merge (the bead closes, a convoy's next
// bead goes), to a close without merge (the bead fails; a reopen opens a new one), and through
// review: a request for changes or a failing check becomes a feedback bead on the same branch,
// until the rounds are spent and a human is asked. Against the GitHub and GitLab stand-ins,
// with the demo agent pushing real commits to the stand-in's git host.
import { describe, it, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { secrets, sleep, until, not, startOwnWorker } from "./harness.mjs";
import { freshUser, tokenFor, githubWebhook, installedTownWithRig, createTown } from "./fixtures.mjs";

const git = (...args) => execFileSync("git", args, { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] }).trim();

export default function refinery(ctx) {
  const p = () => ctx.platforms;
  let nextInstallation = 93_000_000 + (process.pid % 1000) * 1000;

  /** A world of its own: a worker whose poll is `pollMs`, and its helpers. */
  async function ownWorld({ pollMs, rounds = 2, idleMs = 600_000 }) {
    const world = await startOwnWorker(ctx, {
      controlArgs: ["--git-ca-file", ctx.platforms.gitCaFile],
      // An idle town's loop runs only every 10 minutes here: whatever the refinery does must
      // wake the town itself (a feedback bead, a merge that frees a convoy's next bead).
      vars: { PR_POLL_MS: String(pollMs), PR_FEEDBACK_ROUNDS: String(rounds), AGENT_STALL_MS: "60000", TOWN_ALARM_INTERVAL_MS: String(idleMs) },
    });
    const { call } = world;
    const as = (user, method, path, body) => call(method, path, { token: tokenFor(user), body });
    const bead = async (user, townId, id) => (await as(user, "GET", `/api/towns/${townId}/beads/${id}`)).body;
    const beads = async (user, townId) => (await as(user, "GET", `/api/towns/${townId}/beads?limit=200`)).body;
    /** A personal town on a GitHub installation's repo `<login>/app`, under `strategy`. */
    async function town(label, strategy = "pull_request") {
      const user = freshUser(label);
      const installation = ++nextInstallation;
      const w = await installedTownWithRig({ call, workerUrl: world.worker.url, platforms: p(), user, installation, label });
      const set = await as(user, "PATCH", `/api/towns/${w.town.id}/config`, { merge_strategy: strategy });
      assert.equal(set.status, 200, set.text);
      return { ...w, user };
    }
    /** Waits for the bead to reach `status` (and `pr` state, if given). */
    const reach = (w, id, status, pr) =>
      until(`bead ${id} ${status}${pr ? `/${pr}` : ""}`, async () => {
        const b = await bead(w.user, w.town.id, id);
        return b.status === status && (!pr || b.pull_request?.state === pr) ? b : not({ status: b.status, pr: b.pull_request, reason: b.failure_reason });
      }, 90_000);
    const sling = async (w, title, body = "Say hello.") => {
      const res = await as(w.user, "POST", `/api/towns/${w.town.id}/sling`, { rig_id: w.rig.id, title, body });
      assert.equal(res.status, 201, res.text);
      return res.body;
    };
    const hook = (event, payload, secret) => githubWebhook(world.worker.url, event, payload, secret);
    /** The branch the bead in progress was dispatched on: the only one the refinery takes. */
    const assigned = async (user, townId, working) => {
      const agent = (await as(user, "GET", `/api/towns/${townId}/agents`)).body.find((a) => a.id === working.assignee_agent_id);
      return `gastown/${agent.name}/${working.id.slice(0, 8)}`;
    };
    return { world, call, as, bead, beads, town, reach, sling, hook, assigned };
  }

  describe("refinery: pull requests on GitHub", () => {
    let w;
    before(async () => {
      w = await ownWorld({ pollMs: 600_000, rounds: 1 });
    });
    after(async () => {
      await w?.world.stop();
    });

    it("a slung bead's branch becomes the App's pull request; in review until the merge webhook closes it; GET shows the PR", async () => {
      const t = await w.town("pr");
      const slung = await w.sling(t, "Add a greeting");
      const review = await w.reach(t, slung.id, "in_review", "open");
      const branch = review.metadata.branch;
      assert.match(branch, /^gastown\/polecat-\d+\/[0-9a-f]{8}$/);
      const pulls = p().pulls(t.login, "app");
      assert.equal(pulls.length, 1, JSON.stringify(pulls));
      const [pr] = pulls;
      assert.deepEqual([pr.state, pr.head, pr.base, pr.title], ["open", branch, "main", "Add a greeting"]);
      assert.deepEqual(pr.author, { login: "gastown-dev[bot]", type: "Bot" }, "opened as the App");
      const info = review.pull_request;
      assert.deepEqual(
        [info.platform, info.number, info.url, info.state, info.branch, info.base, info.author],
        ["github", pr.number, pr.html_url, "open", branch, "main", "gastown-dev[bot]"],
      );
      assert.ok(info.last_synced_at);
      assert.equal(review.metadata.pr_url, pr.html_url);
      assert.ok(review.events.some((e) => e.kind === "pull_request" && e.message.includes(`#${pr.number}`)));
      // The merge request bead follows it.
      const mr = await w.bead(t.user, t.town.id, info.bead_id);
      assert.deepEqual([mr.type, mr.status, mr.pull_request.number, mr.metadata.source_bead_id], ["merge_request", "open", pr.number, slung.id]);

      // Nothing polls meanwhile (the poll is 10 minutes here).
      const reads = p().calls("github.pulls.get");
      await sleep(2_000);
      assert.equal(p().calls("github.pulls.get"), reads, "no read without a webhook or the poll");

      // A forged delivery and one from another installation change nothing.
      const merged = p().mergePull(t.login, "app", pr.number);
      assert.equal((await w.hook("pull_request", merged, "not-the-secret")).status, 401);
      const stranger = structuredClone(merged);
      stranger.installation.id = t.installation + 999_999;
      const refused = await w.hook("pull_request", stranger);
      assert.equal(refused.status, 403, await refused.text());
      assert.equal((await w.bead(t.user, t.town.id, slung.id)).status, "in_review");

      const res = await w.hook("pull_request", merged);
      assert.equal(res.status, 200);
      assert.deepEqual(await res.json(), { refreshed: 1 });
      const closed = await w.bead(t.user, t.town.id, slung.id);
      assert.deepEqual([closed.status, closed.pull_request.state], ["closed", "merged"], "closed by the webhook's read, at once");
      assert.ok(closed.closed_at);
      assert.ok(closed.events.some((e) => e.kind === "merged"));
      assert.equal((await w.bead(t.user, t.town.id, info.bead_id)).status, "closed");
      // The code is on main.
      const bare = p().gitRepoPath(t.login, "app");
      assert.match(git("--git-dir", bare, "show", `main:gastown/${slung.id}.md`), /Add a greeting/);
      // A merged pull request is no longer read.
      const after = p().calls("github.pulls.get");
      await sleep(1_500);
      assert.equal(p().calls("github.pulls.get"), after);
    });

    it("with commit_as_user, the pull request is the user's, opened with their token", async () => {
      const t = await w.town("pruser");
      const githubId = 880_000_000 + (t.installation % 1_000_000);
      const ghLogin = `octo-${githubId}`;
      p().addGithubUser({ id: githubId, login: ghLogin, repos: { [`${t.login}/app`]: { push: true } } });
      const start = await w.as(t.user, "POST", "/api/integrations/github/user-connect");
      assert.equal(start.status, 200, start.text);
      const url = new URL(start.body.authorize_url);
      const code = p().issueGithubUserCode({ user_id: githubId, redirect_uri: url.searchParams.get("redirect_uri") });
      const back = await fetch(`${w.world.worker.url}/api/integrations/github/user-connect/callback?code=${code}&state=${encodeURIComponent(url.searchParams.get("state"))}`, { redirect: "manual" });
      assert.equal(new URL(back.headers.get("location")).searchParams.get("result"), "success");
      assert.equal((await w.as(t.user, "PATCH", `/api/towns/${t.town.id}/config`, { commit_as_user: true })).status, 200);
      const slung = await w.sling(t, "As myself");
      const review = await w.reach(t, slung.id, "in_review", "open");
      const [pr] = p().pulls(t.login, "app");
      assert.deepEqual(pr.author, { login: ghLogin, type: "User" });
      assert.equal(review.pull_request.author, ghLogin);
    });

    it("closing the merge request bead by hand abandons the review: the bead fails, the pull request is no longer followed", async () => {
      const t = await w.town("prabandon");
      const slung = await w.sling(t, "Abandon me");
      const info = (await w.reach(t, slung.id, "in_review", "open")).pull_request;
      const closed = await w.as(t.user, "PATCH", `/api/towns/${t.town.id}/beads/${info.bead_id}`, { status: "closed" });
      assert.equal(closed.status, 200, closed.text);
      const source = await w.bead(t.user, t.town.id, slung.id);
      assert.equal(source.status, "failed");
      assert.match(source.failure_reason, /merge request was closed by hand/);
      assert.equal(source.pull_request.state, "detached");
      const reads = p().calls("github.pulls.get");
      assert.equal((await w.hook("pull_request", p().mergePull(t.login, "app", info.number))).status, 200);
      assert.equal(p().calls("github.pulls.get"), reads, "a detached pull request is not read");
      assert.equal((await w.bead(t.user, t.town.id, slung.id)).status, "failed");
    });

    it("closed without merging: the bead fails with the reason; a reopen opens a new pull request", async () => {
      const t = await w.town("prclose");
      const slung = await w.sling(t, "Try something");
      const first = (await w.reach(t, slung.id, "in_review", "open")).pull_request;
      const res = await w.hook("pull_request", p().closePull(t.login, "app", first.number));
      assert.equal(res.status, 200);
      const failed = await w.bead(t.user, t.town.id, slung.id);
      assert.equal(failed.status, "failed");
      assert.match(failed.failure_reason, new RegExp(`pull request #${first.number} was closed without merging`));
      assert.equal(failed.pull_request.state, "closed");
      const reopened = await w.as(t.user, "PATCH", `/api/towns/${t.town.id}/beads/${slung.id}`, { status: "open" });
      assert.equal(reopened.status, 200, reopened.text);
      const again = await until("a new pull request", async () => {
        const b = await w.bead(t.user, t.town.id, slung.id);
        return b.status === "in_review" && b.pull_request?.state === "open" && b.pull_request.number !== first.number
          ? b
          : not({ status: b.status, reason: b.failure_reason, pr: b.pull_request, events: b.events.map((e) => `${e.kind} ${e.message ?? ""}`) });
      }, 90_000);
      const pulls = p().pulls(t.login, "app");
      assert.deepEqual(pulls.map((x) => x.state).sort(), ["closed", "open"]);
      assert.equal(again.pull_request.url, pulls.find((x) => x.state === "open").html_url);
    });

    it("changes requested → a feedback bead on the same branch → its new commit on the PR → a failing check past the rounds escalates → merged", async () => {
      const t = await w.town("prreview");
      const slung = await w.sling(t, "Add a farewell", "Say goodbye.");
      const open = (await w.reach(t, slung.id, "in_review", "open")).pull_request;
      const headBefore = p().pulls(t.login, "app")[0].head_sha;
      const review = p().addReview(t.login, "app", open.number, {
        login: "alice",
        state: "CHANGES_REQUESTED",
        body: "Please also say goodnight.",
        comments: [{ path: `gastown/${slung.id}.md`, line: 1, body: "Capitalise the title." }],
      });
      assert.equal((await w.hook("pull_request_review", review)).status, 200);
      const list = await w.beads(t.user, t.town.id);
      const feedback = list.find((b) => b.labels.includes("gt:pr-feedback"));
      assert.ok(feedback, JSON.stringify(list.map((b) => [b.type, b.title, b.labels])));
      assert.match(feedback.body, /Please also say goodnight\./);
      assert.match(feedback.body, /Capitalise the title\./);
      assert.ok(feedback.body.includes(open.branch), "names the branch");
      assert.deepEqual([feedback.type, feedback.rig_id, feedback.metadata.branch, feedback.metadata.source_bead_id], ["issue", t.rig.id, open.branch, slung.id]);
      // A redelivered review makes no second round.
      assert.equal((await w.hook("pull_request_review", review)).status, 200);
      assert.equal((await w.beads(t.user, t.town.id)).filter((b) => b.labels.includes("gt:pr-feedback")).length, 1);
      // A polecat works it on the same branch; the pull request gets the commit.
      const done = await w.reach(t, feedback.id, "closed");
      assert.ok(done.events.some((e) => e.kind === "done"));
      // The review delivered again once its round is over: answered already, no second round.
      assert.equal((await w.hook("pull_request_review", review)).status, 200);
      assert.equal((await w.beads(t.user, t.town.id)).filter((b) => b.labels.includes("gt:pr-feedback")).length, 1);
      const pr = p().pulls(t.login, "app");
      assert.equal(pr.length, 1, "no second pull request");
      assert.notEqual(pr[0].head_sha, headBefore, "the branch moved");
      const bare = p().gitRepoPath(t.login, "app");
      assert.equal(git("--git-dir", bare, "merge-base", "--is-ancestor", headBefore, open.branch) , "", "a fast-forward of the same branch");
      assert.match(git("--git-dir", bare, "show", `${open.branch}:gastown/${feedback.id}.md`), /Feedback on #/);
      const source = await w.bead(t.user, t.town.id, slung.id);
      assert.equal(source.status, "in_review", "still waiting for the merge");
      assert.equal(source.pull_request.feedback_rounds, 1);
      // A failing check on the new head: the one round is spent, so a human is asked instead.
      const check = p().setCheckRun(t.login, "app", open.number, { name: "ci/test", conclusion: "failure" });
      assert.equal((await w.hook("check_run", check)).status, 200);
      const after = await w.beads(t.user, t.town.id);
      assert.equal(after.filter((b) => b.labels.includes("gt:pr-feedback")).length, 1, "no second feedback bead");
      const escalation = after.find((b) => b.type === "escalation");
      assert.ok(escalation, "escalated");
      assert.ok(escalation.labels.includes("gt:pr-feedback-limit"));
      assert.match(escalation.body, /ci\/test/);
      const state = (await w.bead(t.user, t.town.id, slung.id)).pull_request;
      assert.deepEqual([state.checks, state.failing_check, state.review_decision], ["failure", "ci/test", "changes_requested"]);
      // The reviewer merges anyway.
      assert.equal((await w.hook("pull_request", p().mergePull(t.login, "app", open.number))).status, 200);
      const closed = await w.bead(t.user, t.town.id, slung.id);
      assert.deepEqual([closed.status, closed.pull_request.state], ["closed", "merged"]);
      assert.match(git("--git-dir", bare, "show", `main:gastown/${feedback.id}.md`), /Feedback on #/, "the feedback's commit landed too");
    });

    it("a convoy's second bead waits for the first one's pull request to merge, not for its done", async () => {
      const t = await w.town("prconvoy");
      const slung = await w.as(t.user, "POST", `/api/towns/${t.town.id}/sling-batch`, {
        title: "Two steps",
        beads: [
          { rig_id: t.rig.id, title: "Step one", body: "First." },
          { rig_id: t.rig.id, title: "Step two", body: "Second.", depends_on: [0] },
        ],
      });
      assert.equal(slung.status, 201, slung.text);
      const [one, two] = slung.body.beads;
      const first = (await w.reach(t, one.id, "in_review", "open")).pull_request;
      await sleep(3_000);
      const waiting = await w.bead(t.user, t.town.id, two.id);
      assert.equal(waiting.status, "open", "not dispatched while the first is only in review");
      assert.ok(!waiting.events.some((e) => e.kind === "dispatched"));
      assert.equal((await w.hook("pull_request", p().mergePull(t.login, "app", first.number))).status, 200);
      const second = await w.reach(t, two.id, "in_review", "open");
      // The second's branch starts from main, which now has the first's work.
      const bare = p().gitRepoPath(t.login, "app");
      assert.match(git("--git-dir", bare, "show", `${second.metadata.branch}:gastown/${one.id}.md`), /Step one/);
      const convoy = (await w.as(t.user, "GET", `/api/towns/${t.town.id}/convoys/${slung.body.id}`)).body;
      assert.deepEqual(convoy.progress, { closed: 1, total: 2 });
    });

    it("a branch the repository lacks fails the bead with a readable reason; a branch that already has a PR adopts it", async () => {
      const t = await w.town("prfail");
      const container = await w.as(t.user, "POST", `/api/towns/${t.town.id}/container/start`);
      assert.equal(container.status, 200, container.text);
      const ct = (await w.world.control.town(t.town.id)).body.token;
      const speakFor = async (title) => {
        const slung = await w.sling(t, title, "[demo:hang]");
        const working = await until("the dispatch", async () => {
          const b = await w.bead(t.user, t.town.id, slung.id);
          return b.status === "in_progress" ? b : not(b.status);
        });
        const path = `/api/towns/${t.town.id}/rigs/${t.rig.id}/agents/${working.assignee_agent_id}`;
        const branch = await w.assigned(t.user, t.town.id, working);
        return { slung, branch, done: (body) => w.call("POST", `${path}/done`, { token: ct, body }) };
      };
      const missing = await speakFor("Nothing pushed");
      // Only the branch the bead was dispatched on goes to review.
      const other = await missing.done({ summary: "done", branch: "someone/elses-branch" });
      assert.equal(other.status, 422, other.text);
      assert.equal(other.body.error.field, "branch");
      assert.equal((await w.bead(t.user, t.town.id, missing.slung.id)).status, "in_progress", "nothing written");
      assert.equal((await missing.done({ summary: "done", branch: missing.branch })).status, 200);
      const failed = await w.reach(t, missing.slung.id, "failed");
      assert.ok(failed.failure_reason.includes(`no pull request: the branch ${missing.branch} is not on the repository`), failed.failure_reason);
      assert.equal(failed.pull_request.state, "failed");

      // Someone already opened a PR for the branch: it is adopted, not duplicated.
      const tokenRes = await w.call("POST", `/api/towns/${t.town.id}/rigs/${t.rig.id}/git-token`, { token: ct });
      assert.equal(tokenRes.status, 200, tokenRes.text);
      const adopt = await speakFor("Adopt it");
      const bare = p().gitRepoPath(t.login, "app");
      git("--git-dir", bare, "branch", "-f", adopt.branch, "main");
      const work = execFileSync("mktemp", ["-d"], { encoding: "utf8" }).trim();
      git("clone", "--quiet", bare, work);
      git("-C", work, "checkout", "--quiet", adopt.branch);
      execFileSync("sh", ["-c", `echo hi > "${work}/hand.txt"`]);
      git("-C", work, "add", "hand.txt");
      git("-C", work, "-c", "user.name=H", "-c", "user.email=h@example.com", "commit", "--quiet", "-m", "by hand");
      git("-C", work, "push", "--quiet", "origin", adopt.branch);
      const opened = await fetch(`${p().url}/repos/${t.login}/app/pulls`, {
        method: "POST",
        headers: { authorization: `Bearer ${tokenRes.body.token}`, "content-type": "application/json" },
        body: JSON.stringify({ title: "By hand", head: adopt.branch, base: "main" }),
      });
      assert.equal(opened.status, 201, await opened.text());
      const existing = p().pulls(t.login, "app").find((x) => x.head === adopt.branch);
      assert.equal((await adopt.done({ summary: "done", branch: adopt.branch })).status, 200);
      const adopted = await w.reach(t, adopt.slung.id, "in_review", "open");
      assert.equal(adopted.pull_request.number, existing.number);
      assert.equal(p().pulls(t.login, "app").filter((x) => x.head === adopt.branch).length, 1);
    });
  });

  describe("refinery: the poll", () => {
    let w;
    before(async () => {
      w = await ownWorld({ pollMs: 1_000 });
    });
    after(async () => {
      await w?.world.stop();
    });

    it("with no webhook, the poll sees the merge; a town with no open PR makes no call", async () => {
      const t = await w.town("poll");
      const slung = await w.sling(t, "Poll me");
      const open = (await w.reach(t, slung.id, "in_review", "open")).pull_request;
      const reads = p().calls("github.pulls.get");
      await sleep(2_500);
      assert.ok(p().calls("github.pulls.get") > reads, "read by the poll while open");
      p().mergePull(t.login, "app", open.number); // no webhook sent
      const closed = await w.reach(t, slung.id, "closed");
      assert.equal(closed.pull_request.state, "merged");
      const idle = p().calls("github.pulls.get");
      await sleep(3_000);
      assert.equal(p().calls("github.pulls.get"), idle, "nothing polled once merged");
    });
  });

  describe("refinery: merge requests on GitLab", () => {
    let w;
    before(async () => {
      w = await ownWorld({ pollMs: 600_000 });
    });
    after(async () => {
      await w?.world.stop();
    });

    it("a finished branch becomes the connection's merge request; the merge hook (with its token) closes the bead", async () => {
      const user = freshUser("gl");
      const glUser = { id: 700_000 + (nextInstallation % 100_000), username: `gl-${user}` };
      const project = `grp-${user}/svc`;
      const start = await w.as(user, "POST", "/api/integrations/gitlab/connect", {});
      assert.equal(start.status, 200, start.text);
      const q = new URL(start.body.authorize_url).searchParams;
      const code = p().issueGitlabCode({
        user: glUser,
        projects: [{ path_with_namespace: project, default_branch: "main", visibility: "private" }],
        redirect_uri: q.get("redirect_uri"),
        code_challenge: q.get("code_challenge"),
      });
      const back = await fetch(`${w.world.worker.url}/api/integrations/gitlab/callback?code=${code}&state=${encodeURIComponent(q.get("state"))}`, { redirect: "manual" });
      assert.equal(new URL(back.headers.get("location")).searchParams.get("result"), "success");
      const integration = (await w.as(user, "GET", `/api/users/${user}/integrations`)).body[0];
      const town = await createTown(w.call, user, "gl");
      const rig = (await w.as(user, "POST", `/api/users/${user}/rigs`, { town_id: town.id, name: "svc", platform_integration_id: integration.id, repo: project })).body;
      assert.ok(rig?.id, JSON.stringify(rig));
      assert.equal((await w.as(user, "PATCH", `/api/towns/${town.id}/config`, { merge_strategy: "pull_request" })).status, 200);
      assert.equal((await w.as(user, "POST", `/api/towns/${town.id}/container/start`)).status, 200);
      const ct = (await w.world.control.town(town.id)).body.token;
      // The agent cannot clone from the stand-in: the test speaks for it, and pushes the branch.
      const slung = (await w.as(user, "POST", `/api/towns/${town.id}/sling`, { rig_id: rig.id, title: "Tune the service", body: "[demo:hang]" })).body;
      const working = await until("the dispatch", async () => {
        const b = (await w.as(user, "GET", `/api/towns/${town.id}/beads/${slung.id}`)).body;
        return b.status === "in_progress" ? b : not(b.status);
      });
      const projectId = project; // the controls take the path too
      const branch = await w.assigned(user, town.id, working);
      p().pushGitlabBranch(projectId, branch);
      const done = await w.call("POST", `/api/towns/${town.id}/rigs/${rig.id}/agents/${working.assignee_agent_id}/done`, { token: ct, body: { summary: "tuned", branch } });
      assert.equal(done.status, 200, done.text);
      const t = { user, town };
      const review = await w.reach(t, slung.id, "in_review", "open");
      const [mr] = p().gitlabMergeRequests(projectId);
      assert.deepEqual([mr.state, mr.source_branch, mr.target_branch, mr.title, mr.author.username], ["opened", branch, "main", "Tune the service", glUser.username]);
      assert.deepEqual([review.pull_request.platform, review.pull_request.number, review.pull_request.url], ["gitlab", mr.iid, mr.web_url]);
      const send = (token, payload) =>
        fetch(`${w.world.worker.url}/api/webhooks/gitlab`, {
          method: "POST",
          headers: { "content-type": "application/json", "x-gitlab-event": "Merge Request Hook", ...(token ? { "x-gitlab-token": token } : {}) },
          body: payload,
        });
      // A reviewer asks for changes: the hook makes the town read the reviewers and notes.
      const asked = JSON.stringify(p().reviewGitlabMergeRequest(projectId, mr.iid, { username: "bob", note: "Rename the flag." }));
      const reviewed = await send(secrets.GITLAB_WEBHOOK_SECRET, asked);
      assert.equal(reviewed.status, 200);
      const feedback = (await w.beads(user, town.id)).find((b) => b.labels.includes("gt:pr-feedback"));
      assert.ok(feedback, "a feedback bead");
      assert.match(feedback.body, /bob: Rename the flag\./);
      assert.equal(feedback.metadata.branch, branch);
      assert.equal((await w.as(user, "GET", `/api/towns/${town.id}/beads/${slung.id}`)).body.pull_request.review_decision, "changes_requested");
      const payload = JSON.stringify(p().mergeGitlabMergeRequest(projectId, mr.iid));
      assert.equal((await send("wrong", payload)).status, 401);
      assert.equal((await send(null, payload)).status, 401);
      assert.equal((await w.as(user, "GET", `/api/towns/${town.id}/beads/${slung.id}`)).body.status, "in_review");
      const res = await send(secrets.GITLAB_WEBHOOK_SECRET, payload);
      assert.equal(res.status, 200);
      assert.deepEqual(await res.json(), { refreshed: 1 });
      const closed = (await w.as(user, "GET", `/api/towns/${town.id}/beads/${slung.id}`)).body;
      assert.deepEqual([closed.status, closed.pull_request.state], ["closed", "merged"]);
    });
  });

  describe("refinery: direct merges", () => {
    let w;
    before(async () => {
      w = await ownWorld({ pollMs: 1_000, rounds: 1 });
    });
    after(async () => {
      await w?.world.stop();
    });

    it("merge_strategy direct: the refinery merges the branch with --no-ff and pushes; the bead closes only then", async () => {
      const t = await w.town("direct", "direct");
      const slung = await w.sling(t, "Merge me directly");
      const closed = await w.reach(t, slung.id, "closed");
      const branch = closed.metadata.branch;
      assert.ok(closed.events.some((e) => e.kind === "in_review"), "in review until merged");
      assert.ok(closed.events.some((e) => e.kind === "merged" && e.message === `${branch} merged into main`));
      assert.equal(closed.pull_request.state, "merged");
      assert.equal(closed.pull_request.platform, "direct");
      assert.equal(p().pulls(t.login, "app").length, 0, "no pull request");
      const bare = p().gitRepoPath(t.login, "app");
      const parents = git("--git-dir", bare, "log", "-1", "--format=%P", "main").split(" ");
      assert.equal(parents.length, 2, "a merge commit");
      assert.equal(parents[1], git("--git-dir", bare, "rev-parse", branch));
      assert.match(git("--git-dir", bare, "log", "-1", "--format=%s|%an", "main"), new RegExp(`^Merge branch '${branch.replace(/\//g, "\\/")}' into main\\|Town Author$`));
      assert.match(git("--git-dir", bare, "show", `main:gastown/${slung.id}.md`), /Merge me directly/);
      // Pushed as the App, through the credential helper.
      assert.ok(p().gitAuth().some((a) => a.service === "git-receive-pack" && a.as === `installation:${t.installation}` && a.verdict === true));
    });

    it("a conflicting branch becomes a conflict bead on the branch; past the rounds a human is asked and the bead fails", async () => {
      const t = await w.town("conflict", "direct");
      const bare = p().gitRepoPath(t.login, "app");
            const work = execFileSync("mktemp", ["-d"], { encoding: "utf8" }).trim();
      git("clone", "--quiet", bare, work);
      const commit = (file, text, message) => {
        execFileSync("sh", ["-c", `printf '%s\\n' "${text}" > "${work}/${file}"`]);
        git("-C", work, "add", file);
        git("-C", work, "-c", "user.name=H", "-c", "user.email=h@example.com", "commit", "--quiet", "-m", message);
      };
      const container = await w.as(t.user, "POST", `/api/towns/${t.town.id}/container/start`);
      assert.equal(container.status, 200, container.text);
      const ct = (await w.world.control.town(t.town.id)).body.token;
      const slung = await w.sling(t, "Conflicts", "[demo:hang]");
      const working = await until("the dispatch", async () => {
        const b = await w.bead(t.user, t.town.id, slung.id);
        return b.status === "in_progress" ? b : not(b.status);
      });
      // Its (hanging) agent's branch, written here: it and main change the same line.
      const branch = await w.assigned(t.user, t.town.id, working);
      git("-C", work, "checkout", "--quiet", "-b", branch);
      commit("shared.txt", "from the branch", "branch side");
      git("-C", work, "push", "--quiet", "origin", branch);
      git("-C", work, "checkout", "--quiet", "main");
      commit("shared.txt", "from main", "main side");
      git("-C", work, "push", "--quiet", "origin", "main");
      const mainBefore = git("--git-dir", bare, "rev-parse", "main");
      // The conflict bead quotes the bead's body: the hang directive goes (its agent already runs).
      const edited = await w.as(t.user, "PATCH", `/api/towns/${t.town.id}/beads/${slung.id}`, { body: "Change shared.txt." });
      assert.equal(edited.status, 200, edited.text);
      const done = await w.call("POST", `/api/towns/${t.town.id}/rigs/${t.rig.id}/agents/${working.assignee_agent_id}/done`, { token: ct, body: { summary: "done", branch } });
      assert.equal(done.status, 200, done.text);
      const conflict = await until("a conflict bead", async () => {
        const list = await w.beads(t.user, t.town.id);
        return list.find((b) => b.labels.includes("gt:conflict")) ?? not(list.map((b) => [b.title, b.status]));
      });
      assert.deepEqual([conflict.type, conflict.metadata.branch, conflict.metadata.source_bead_id], ["issue", branch, slung.id]);
      assert.match(conflict.body, /conflicts in: shared\.txt/);
      assert.equal(git("--git-dir", bare, "rev-parse", "main"), mainBefore, "nothing pushed");
      // A polecat works the conflict bead on the branch (the demo agent does not resolve it):
      // the merge conflicts again, the one round is spent, and a human is asked.
      await until("the conflict bead worked", async () => {
        const b = await w.bead(t.user, t.town.id, conflict.id);
        return b.status === "closed" ? b : not({ status: b.status, events: b.events.map((e) => `${e.kind} ${e.message ?? ""}`) });
      }, 60_000);
      const failed = await w.reach(t, slung.id, "failed");
      assert.match(failed.failure_reason, /merging into main conflicts in shared\.txt, after 1 rounds; escalated/);
      const list = await w.beads(t.user, t.town.id);
      const escalation = list.find((b) => b.type === "escalation");
      assert.ok(escalation?.labels.includes("gt:pr-feedback-limit"), JSON.stringify(list.map((b) => [b.type, b.labels])));
      const worked = list.find((b) => b.id === conflict.id);
      assert.equal(worked.status, "closed");
      assert.ok(git("--git-dir", bare, "log", "--format=%s", branch).includes("Conflict merging"), "the conflict bead's commit is on the branch");
      assert.equal(git("--git-dir", bare, "rev-parse", "main"), mainBefore, "still nothing pushed to main");
    });
  });
}
