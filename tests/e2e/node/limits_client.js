// An official SDK (openai or anthropic, argv[2]) making one call with
// maxRetries argv[3] against https://inference.local; every HTTP attempt the
// SDK makes is timed through its own fetch, so a test sees its retry pacing.
// argv[4] "after-one": a first call (which must succeed) right before, so the
// measured call meets a limit whose window has only just started.
const sdk = process.argv[2];
const maxRetries = Number(process.argv[3]);
const afterOne = process.argv[4] === "after-one";
const Client = require(sdk === "anthropic" ? "@anthropic-ai/sdk" : "openai");
const shims = require(sdk === "anthropic" ? "@anthropic-ai/sdk/_shims/index" : "openai/_shims/index");
const attempts = [];
const timedFetch = async (url, init) => {
  const at = Date.now() / 1000;
  const r = await shims.fetch(url, init);
  attempts.push({ at, status: r.status, retry_after: r.headers.get("retry-after"),
                  should_retry: r.headers.get("x-should-retry") });
  return r;
};
const call = (retries) => {
  if (sdk === "anthropic") {
    const c = new Client({ apiKey: "sk-ant-dummy", baseURL: process.env.ANTHROPIC_BASE_URL, maxRetries: retries, fetch: timedFetch });
    return c.messages.create({ model: "m", max_tokens: 16, messages: [{ role: "user", content: "hi" }] });
  }
  const c = new Client({ apiKey: "sk-dummy", baseURL: process.env.OPENAI_BASE_URL, maxRetries: retries, fetch: timedFetch });
  return c.chat.completions.create({ model: "m", messages: [{ role: "user", content: "hi" }] });
};
(async () => {
  const out = { attempts };
  if (afterOne) {
    await call(0);
    out.first = attempts.splice(0);
  }
  try {
    await call(maxRetries);
    out.ok = true;
  } catch (e) {
    out.ok = false;
    out.error = { status: e.status, name: e.constructor.name, body: e.error, message: String(e.message) };
  }
  console.log(JSON.stringify(out));
})();
