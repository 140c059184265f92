// Official Anthropic SDK against https://inference.local.
const Anthropic = require("@anthropic-ai/sdk");
const mode = process.argv[2] || "plain";
(async () => {
  const client = new Anthropic({ apiKey: "sk-ant-client-should-be-dropped", baseURL: process.env.ANTHROPIC_BASE_URL });
  const req = { model: "client-model", max_tokens: 64, messages: [{ role: "user", content: "hi" }] };
  if (mode === "stream") {
    const stream = await client.messages.create({ ...req, stream: true });
    let text = "";
    const types = [];
    for await (const ev of stream) {
      types.push(ev.type);
      if (ev.type === "content_block_delta") text += ev.delta.text;
    }
    console.log(JSON.stringify({ text, types }));
  } else {
    const r = await client.messages.create(req);
    console.log(JSON.stringify({ content: r.content[0].text, model: r.model, usage: r.usage }));
  }
})().catch((e) => { console.error(String(e)); process.exit(1); });
