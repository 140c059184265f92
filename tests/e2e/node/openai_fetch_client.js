// Official OpenAI SDK asking the provider to fetch for it (MCP, web search,
// images by URL) and choosing its billed organisation: one request per mode,
// the outcome printed as JSON ({ok, status, message}).
const OpenAI = require("openai");
const mode = process.argv[2];
const client = new OpenAI({
  apiKey: "sk-client-should-be-dropped",
  baseURL: process.env.OPENAI_BASE_URL,
  organization: "org-sandbox-choice",
  project: "proj-sandbox-choice",
  maxRetries: 0,
});
const user = (content) => [{ role: "user", content }];
const requests = {
  mcp: () => client.responses.create({
    model: "m", input: "hi",
    tools: [{ type: "mcp", server_label: "x", server_url: "https://203.0.113.77/mcp", require_approval: "never" }],
  }),
  web_search: () => client.responses.create({ model: "m", input: "hi", tools: [{ type: "web_search_preview" }] }),
  input_image_url: () => client.responses.create({
    model: "m",
    input: [{ role: "user", content: [{ type: "input_image", image_url: "https://203.0.113.77/a.png", detail: "auto" }] }],
  }),
  chat_image_url: () => client.chat.completions.create({
    model: "m",
    messages: user([{ type: "text", text: "look" }, { type: "image_url", image_url: { url: "https://203.0.113.77/a.png" } }]),
  }),
  chat_image_data: () => client.chat.completions.create({
    model: "m",
    messages: user([{ type: "image_url", image_url: { url: "data:image/png;base64,iVBORw0KGgo=" } }]),
  }),
  chat: () => client.chat.completions.create({ model: "m", messages: user("hi") }),
};
(async () => {
  try {
    await requests[mode]();
    console.log(JSON.stringify({ ok: true }));
  } catch (e) {
    console.log(JSON.stringify({ ok: false, status: e.status ?? null, message: String(e.message) }));
  }
})();
